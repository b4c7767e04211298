"""Token-level AV and AR prompts, and the sidecar's checks against the live tokenizer (recipe §1.4).

AV: ONE-step `apply_chat_template(tokenize=True, add_generation_prompt=True)`. The two-step path
(render to text, then encode with add_special_tokens=True) prepends a second BOS on Gemma/Llama
(trap #4), so it is not offered.
AR: `tokenizer(prompt, add_special_tokens=True)`: BOS is part of the AR input wherever the
tokenizer has one (trap #3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .sidecar import Sidecar, SidecarError, render_ar_prompt, render_av_message


class PromptError(ValueError):
    """A tokenised prompt violates the recipe (marker count, neighbours, BOS, suffix)."""


def _as_id_list(out) -> list[int]:
    """transformers >= 5 returns a BatchEncoding from apply_chat_template (trap #21): unwrap it."""
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], (list, tuple)):
        if len(out) != 1:
            raise PromptError(f"expected one sequence, got a batch of {len(out)}")
        out = out[0]
    ids = [int(i) for i in out]
    if not ids:
        raise PromptError("tokenizer returned an empty sequence")
    return ids


def chat_ids(tokenizer, user_message: str) -> list[int]:
    """One-step chat templating of a single user turn with the generation prompt appended."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise PromptError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                          "the AV prompt needs one (save chat_template.jinja next to the tokenizer)")
    out = tokenizer.apply_chat_template([{"role": "user", "content": user_message}],
                                        tokenize=True, add_generation_prompt=True, return_dict=False)
    return _as_id_list(out)


def find_injection_position(ids: Sequence[int], sc: Sidecar) -> int:
    """Index of the single marker whose neighbours match the sidecar; raises otherwise.

    Mirrors the release's scan: skip the first and last position, require both neighbours,
    and require exactly one accepted site per prompt.
    """
    hits = [p for p, t in enumerate(ids) if t == sc.injection_token_id]
    accepted = [p for p in hits if 0 < p < len(ids) - 1
                and ids[p - 1] == sc.left_neighbor_id and ids[p + 1] == sc.right_neighbor_id]
    if len(accepted) != 1:
        around = [(p, ids[p - 1] if p > 0 else None, ids[p + 1] if p + 1 < len(ids) else None)
                  for p in hits]
        raise PromptError(
            f"{sc.path}: expected exactly one marker id {sc.injection_token_id} between neighbours "
            f"({sc.left_neighbor_id}, {sc.right_neighbor_id}); found {len(hits)} marker(s) "
            f"at (position, left, right) = {around}, {len(accepted)} accepted")
    return accepted[0]


def av_prompt_ids(tokenizer, sc: Sidecar) -> tuple[list[int], int]:
    """Token ids of the canonical AV prompt and the injection position."""
    ids = chat_ids(tokenizer, render_av_message(sc))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise PromptError(f"AV prompt starts with two BOS tokens (id {bos}): double BOS (trap #4)")
    return ids, find_injection_position(ids, sc)


def ar_prompt_ids(tokenizer, sc: Sidecar, explanation: str) -> list[int]:
    """AR input ids: sidecar template, stripped explanation, add_special_tokens=True."""
    ids = _as_id_list(tokenizer(render_ar_prompt(sc, explanation), add_special_tokens=True)["input_ids"])
    return ids


def check_sidecar_against_tokenizer(sc: Sidecar, tokenizer) -> None:
    """Recipe §1.4: the checks the release's loaders ran, plus suffix and BOS for the AR."""
    enc = tokenizer.encode(sc.injection_char, add_special_tokens=False)
    if list(enc) != [sc.injection_token_id]:
        raise SidecarError(sc.path, "tokens.injection_token_id",
                           f"marker {sc.injection_char!r} does not tokenise to that single id",
                           expected=[sc.injection_token_id], found=list(enc))
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and sc.injection_token_id == unk:
        raise SidecarError(sc.path, "tokens.injection_token_id", "marker is the UNK token", found=unk)
    vocab = len(tokenizer)
    for name, tid in (("injection_left_neighbor_id", sc.left_neighbor_id),
                      ("injection_right_neighbor_id", sc.right_neighbor_id)):
        if not 0 <= tid < vocab:
            raise SidecarError(sc.path, f"tokens.{name}", "id outside the vocabulary",
                               expected=f"0..{vocab - 1}", found=tid)
    if sc.av_template is not None:
        ids = chat_ids(tokenizer, render_av_message(sc))
        hits = [p for p, t in enumerate(ids) if t == sc.injection_token_id]
        if len(hits) != 1:
            raise SidecarError(sc.path, "prompt_templates.av",
                               "marker must occur exactly once in the chat-templated AV prompt",
                               expected=1, found=len(hits))
        p = hits[0]
        if p == 0 or p == len(ids) - 1:
            raise SidecarError(sc.path, "prompt_templates.av", "marker is the first or last token",
                               found=p)
        if ids[p - 1] != sc.left_neighbor_id:
            raise SidecarError(sc.path, "tokens.injection_left_neighbor_id",
                               "does not match the live tokenizer", expected=ids[p - 1],
                               found=sc.left_neighbor_id)
        if ids[p + 1] != sc.right_neighbor_id:
            raise SidecarError(sc.path, "tokens.injection_right_neighbor_id",
                               "does not match the live tokenizer", expected=ids[p + 1],
                               found=sc.right_neighbor_id)
    if sc.role == "ar":
        check_ar_tokenizer(sc, tokenizer)


def check_ar_tokenizer(sc: Sidecar, tokenizer) -> None:
    """AR prompts start with BOS when the tokenizer has one, and end with the stored suffix ids."""
    bos = getattr(tokenizer, "bos_token_id", None)
    probe = ar_prompt_ids(tokenizer, sc, "x")
    adds_bos = bool(getattr(tokenizer, "add_bos_token", True))
    if bos is not None and adds_bos and probe[0] != bos:
        raise SidecarError(sc.path, "<tokenizer>", "AR tokenizer does not prepend BOS "
                           "(AR inputs without BOS: Gemma fve 0.31 vs 0.77)", expected=bos, found=probe[0])
    if sc.critic_suffix_ids is not None:
        n = len(sc.critic_suffix_ids)
        tail = probe[-n:]
        if tuple(tail) != sc.critic_suffix_ids:
            raise SidecarError(sc.path, "tokens.critic_suffix_ids",
                               "AR prompt does not end with the stored suffix ids",
                               expected=list(sc.critic_suffix_ids), found=tail)


def check_ar_matches_base_tokenizer(ar_sc: Sidecar, ar_tok, base_tok) -> None:
    """The AR must tokenise exactly like stage-0 extraction did (base tokenizer, add_special_tokens=True).

    This is what catches a lost BOS (trap #3: Gemma fve 0.31 vs 0.77) even where the tokenizer's
    `add_bos_token` attribute misreports what its post-processor does (Gemma's says False and adds BOS).
    The AV directory ships the base tokenizer, so it serves as the reference.
    """
    probe = render_ar_prompt(ar_sc, "The quick brown fox.")
    a = _as_id_list(ar_tok(probe, add_special_tokens=True)["input_ids"])
    b = _as_id_list(base_tok(probe, add_special_tokens=True)["input_ids"])
    if a != b:
        bos = getattr(base_tok, "bos_token_id", None)
        hint = " (BOS differs)" if bos is not None and (a[0] == bos) != (b[0] == bos) else ""
        raise SidecarError(ar_sc.path, "<tokenizer>",
                           "AR tokenizer does not tokenise like the base/AV tokenizer" + hint,
                           expected=b[:8], found=a[:8])
