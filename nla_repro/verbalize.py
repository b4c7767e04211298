"""AV side: canonical prompt, injected embeddings, batched decoding.

Inputs are built exactly as the release's rollout path does: one-step chat template, the model's own
embedding lookup (Gemma sqrt(d) included), the activation rescaled in fp32 to `injection_scale`
and written at the neighbour-checked marker position. Batches are left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .decoding import Decoding
from .inject import inject_rows, normalize_to_scale, validate_vectors
from .prompts import av_prompt_ids, find_injection_position


@dataclass
class AVInputs:
    input_ids: torch.Tensor        # [B, T] (the marker id at the injection position)
    inputs_embeds: torch.Tensor    # [B, T, d] in the model dtype, injected
    attention_mask: torch.Tensor   # [B, T], left padded
    injection_positions: list[int]  # per row, in padded coordinates
    injected_vectors: torch.Tensor  # [B, d] fp32, norm == injection_scale


@dataclass(frozen=True)
class Verbalization:
    text: str              # generated text up to (excluding) EOS
    token_ids: tuple[int, ...]
    truncated: bool        # hit the token budget before EOS
    n_new_tokens: int


def build_av_inputs(av, vectors, prompt_ids: list[list[int]] | None = None) -> AVInputs:
    sc = av.sidecar
    v = torch.from_numpy(validate_vectors(vectors, sc.d_model))
    if prompt_ids is None:
        ids, _ = av_prompt_ids(av.tokenizer, sc)
        prompt_ids = [ids] * v.shape[0]
    if len(prompt_ids) != v.shape[0]:
        raise ValueError(f"{len(prompt_ids)} prompts for {v.shape[0]} vectors")
    width = max(len(p) for p in prompt_ids)
    pad = av.tokenizer.pad_token_id if av.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    positions = []
    for b, p in enumerate(prompt_ids):
        off = width - len(p)
        ids[b, off:] = torch.tensor(p)
        mask[b, off:] = 1
        positions.append(off + find_injection_position(p, sc))
    scaled = normalize_to_scale(v, sc.injection_scale)
    with torch.no_grad():
        emb = av.embed(ids)
    emb = inject_rows(emb, positions, scaled.to(emb.device))
    return AVInputs(ids, emb, mask.to(emb.device), positions, scaled)


class BanTokens(LogitsProcessor):
    """Additive logit bias (e.g. -1e9 on every vocabulary token containing a quote character)."""

    def __init__(self, token_ids, bias: float = -1e9):
        self.ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)
        self.bias = bias

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.ids.to(scores.device)] += self.bias
        return scores


def _eos_ids(av) -> list[int]:
    e = av.model.generation_config.eos_token_id
    ids = set(e if isinstance(e, (list, tuple)) else ([] if e is None else [e]))
    if av.tokenizer.eos_token_id is not None:
        ids.add(av.tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{av.path}: no EOS token id known; generation could never stop")
    return sorted(ids)


@torch.no_grad()
def verbalize(av, vectors, decoding: Decoding = Decoding(), *, batch_size: int = 16,
              banned_token_ids=None) -> list[Verbalization]:
    """Decode one explanation per vector. Sampled decodes are seeded per batch with
    (decoding.seed, batch start), so they are reproducible for a fixed batch composition."""
    v = validate_vectors(vectors, av.sidecar.d_model)
    eos = _eos_ids(av)
    pad = av.tokenizer.pad_token_id if av.tokenizer.pad_token_id is not None else eos[0]
    procs = LogitsProcessorList([BanTokens(banned_token_ids)]) if banned_token_ids else None
    results: list[Verbalization] = []
    for start in range(0, len(v), batch_size):
        inputs = build_av_inputs(av, v[start:start + batch_size])
        budget = decoding.budget(inputs.input_ids.shape[1])
        kwargs = dict(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                      max_new_tokens=budget, eos_token_id=eos, pad_token_id=pad,
                      logits_processor=procs)
        if decoding.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(decoding.seed * 1_000_003 + start)
            kwargs.update(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p,
                          top_k=decoding.top_k or None)
        out = av.model.generate(**kwargs).cpu().tolist()
        for row in out:
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            toks = row if stop is None else row[:stop]
            results.append(Verbalization(
                text=av.tokenizer.decode(toks, skip_special_tokens=False),
                token_ids=tuple(toks), truncated=stop is None,
                n_new_tokens=len(row) if stop is None else stop + 1))
    return results
