"""Worked examples (recipe §0 and §7.1; the release repo's ``examples/<model>.txt``): every position of one
text through AV -> AR, greedy, plus 4 samples at T=1 at a named position, and the raw norms along the way.

Input.  The release's worked-example texts are not shipped with the harness.  The experiment reads
``<pair name>.txt`` or ``<base model>.txt`` (the last path component of the AV sidecar's
``base_checkpoint``, e.g. ``Qwen2.5-7B-Instruct.txt``) from the examples directory:
``ctx.options["worked_examples"]["examples_dir"]``, else the environment variable
``NLA_REPRO_EXAMPLES_DIR``.  The file holds the text exactly as the base model reads it (UTF-8, used
verbatim, no stripping: a trailing newline is a token); chat transcripts are written already rendered
through the chat template, special tokens as text, as section 1 of the release's examples shows them.
With no directory, or no file for the pair, the experiment raises :class:`ExperimentSkipped` naming the
files looked for and how to provide them (a claim about it is SKIPPED, never passed or measured on
something else).  The text's sha256 enters the results-cache key.

Tokenisation (recipe §5, "BOS counted in positions").  Stage-0's ``tokenizer(text,
add_special_tokens=True)`` (:func:`nla_repro.activations.tokenize_document`); when the text already
begins with the tokenizer's BOS string (a rendered Gemma / Llama transcript) the doubled BOS is dropped,
so there is exactly one, as the one-step chat template gives (trap #4).  A tokenizer "has a BOS" when it
prepends ``bos_token_id`` to ``"x"`` (Gemma, Llama; not Qwen, not SmolLM2).  Texts longer than
``max_length`` (4096, the stage-0 context cap) are an error, not truncated.

Gold.  Output of block K (HF ``hidden_states[K+1]``) of the pair's base model (``handle.base_spec``) at
every position, by :func:`nla_repro.activations.extract_layer`; raw, fp32.

Positions.  The first ``exclude_first`` positions (system prompt / chat scaffold) are decoded only where
a figure needs them (position 0) and are not scored.  Default: the recipe's table for the released pairs
(Qwen 24, Gemma-12B 4, Gemma-27B 4, Llama 30); for any other pair, the number of tokens the base
tokenizer's chat template puts before the first user message's content (the "system prompt" positions;
Gemma's template gives the recipe's 4), or 1 / 0 (BOS only / nothing) without a chat template.  The
count and where it came from are recorded in the protocol.

Decoding and scoring.  Greedy at every scored position and at position 0; the worked examples score raw
text where the tag is missing, so the failure convention defaults to CLIENT_RAW (``options.
failure_convention`` overrides; under TRAINING_DROP failed positions are dropped from every statistic).
Sampling: ``n_samples`` (4) decodes at T=1.0, top_p 1, top_k off, seed ``sample_seed`` (0) at each
sampling position (default: Qwen 99 and Llama 110 as the recipe names them; otherwise the
second-to-last position, which is where 99 and 110 fall in texts of 24+77 and 30+82 tokens: inferred).
mse_nrm: both vectors L2-normalised to sqrt(d), = 2(1-cos), fp64 maths (:mod:`nla_repro.metrics`);
fve_nrm per position = 1 - mse/V with V the TRAINING denominator (sidecar ``metrics.train_rawvar`` or the
handle's value; without it every fve figure is NaN, never a silent swap to the own-set V).

Figures (per pair; "scored" = positions exclude_first .. n_tokens-1 that have a score):
  examples.fve          [mean, median] of per-position fve_nrm (mean = 1 - mean(mse)/V)
  examples.mse          [mean, median] mse_nrm;  examples.mse_range [min, max];  examples.cos mean cos
  examples.counts       [#fve > 0.5, #fve > 0.8, #fve < 0]
  examples.{n_positions|n_tokens|exclude_first|n_failed}   scored count, tokens (BOS counted), excluded
                        leading positions, scored-range greedy decodes failing the training convention
  examples.pos0 / .pos0_fve   greedy mse_nrm / fve at position 0 (Qwen: <|im_start|>, Gemma/Llama: BOS)
  examples.bos / .bos_fve     the same at the BOS position (only when the tokenisation starts with a BOS)
  examples.table        per decoded position: position, token, scored, mse, fve, cos, norm, text_for_ar,
                        failed_training_convention
  examples.sampling.pos<P>.{greedy|samples|sampled|spread|spread_max|texts}   at sampling position P:
                        greedy mse, the n sample mses, [min, max] of them, |greedy - mean(samples)|,
                        max |greedy - sample|, the sampled texts the AR read
  examples.sampling.{spread|spread_max|position}   the same at the first sampling position
  norms.all             raw L2 norm of the gold at every position;  norms.range [min, max] over the
                        scored range;  norms.bos the BOS position's norm (when there is a BOS)
  norms.template_newline / .template_newline_position   norm at the first newline-only token inside the
                        excluded scaffold (Qwen: the "\\n" after "<|im_start|>system"); absent when none
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np

from .. import metrics
from ..activations import SamplerConfig, extract_layer, tokenize_document
from ..assets import sha256_file
from ..explanation import FailureConvention, parse
from .base import ExperimentSkipped, experiment
from .corroboration import convention_of, decode, decoding_for, train_denominator
from .runner import params

NAME = "worked_examples"
ENV_DIR = "NLA_REPRO_EXAMPLES_DIR"
#: recipe §0 table, "positions excluded from example summary (system prompt)"
RELEASED_EXCLUDE_FIRST = {"qwen2.5-7b-L20": 24, "gemma3-12b-L32": 4, "gemma3-27b-L41": 4, "llama3.3-70b-L53": 30}
#: recipe §7.1 sampling-variance sections name these positions
RELEASED_SAMPLING_POSITIONS = {"qwen2.5-7b-L20": [99], "llama3.3-70b-L53": [110]}
N_SAMPLES = 4
MAX_LENGTH = SamplerConfig().max_length  # stage-0's context cap (4096)
_SENTINEL = "NLAWORKEDEXAMPLESENTINEL"
DEFAULTS = {"examples_dir": None, "exclude_first": None, "sampling_positions": None, "n_samples": N_SAMPLES,
            "sample_seed": 0, "batch_size": 16, "max_length": MAX_LENGTH, "bos": "keep"}


# ------------------------------------------------------------------------------------------- the text

def candidate_files(handle) -> list[str]:
    """File names looked for, in order: ``<pair name>.txt``, ``<base model>.txt``."""
    from ..sidecar import load_sidecar

    names = [handle.name]
    try:
        bc = load_sidecar(handle.av_dir).raw.get("base_checkpoint")
    except Exception:  # the pair's own loading reports a broken sidecar; here it only names a file
        bc = None
    if isinstance(bc, str) and bc.strip():
        names.append(Path(bc.strip().rstrip("/")).name)
    return [f"{n}.txt" for n in dict.fromkeys(names)]


def examples_dir(ctx) -> tuple[Path | None, str]:
    """(directory, where it was given) from options, else ``$NLA_REPRO_EXAMPLES_DIR``; (None, "") if neither."""
    opt = params(ctx, NAME).get("examples_dir")
    if opt:
        return Path(str(opt)).expanduser(), f"options {NAME}.examples_dir"
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser(), f"${ENV_DIR}"
    return None, ""


def find_text(ctx, pair_name: str) -> tuple[Path, str]:
    """(path of the pair's worked-example text, how its directory was given); ExperimentSkipped if absent."""
    handle = ctx.pairs[pair_name]
    files = candidate_files(handle)
    d, how = examples_dir(ctx)
    want = " or ".join(files)
    if d is None:
        raise ExperimentSkipped(
            f"{NAME}: no worked-example text for pair {pair_name!r}: no examples directory given; set "
            f"{ENV_DIR}=DIR (or options {NAME}.examples_dir) to a directory holding {want} (the release repo's "
            f"examples/<model>.txt text, not shipped with the harness)")
    for f in files:
        if (d / f).is_file():
            return d / f, how
    raise ExperimentSkipped(
        f"{NAME}: no worked-example text for pair {pair_name!r}: missing file {want} in {d} (given by {how}); "
        f"put the release repo's examples/<model>.txt text there under one of those names")


def _inputs(ctx, pair_name: str) -> dict:
    path, _ = find_text(ctx, pair_name)
    spec = getattr(ctx.pairs[pair_name], "base_spec", None)
    return {"text_file": path.name, "text_sha256": sha256_file(path),
            "base_model": getattr(spec, "model_id", None)}


# ------------------------------------------------------------------------------------------- tokens

def prepends_bos(tok) -> bool:
    """Whether the tokenizer has a document BOS it prepends (probe, as prompts.py checks the AR)."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    ids = tok("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and int(ids[0]) == int(bos)


def tokenize_text(tok, text: str, max_length: int = MAX_LENGTH) -> tuple[list[int], bool]:
    """Stage-0 tokenisation with exactly one BOS: (ids, whether a BOS written in the text was de-doubled)."""
    ids = tokenize_document(tok, text, int(max_length) + 1)
    if len(ids) > int(max_length):
        raise ValueError(f"{NAME}: the text has more than {max_length} tokens (the stage-0 context cap); "
                         f"found at least {len(ids)}; shorten it or raise options {NAME}.max_length")
    bos, bos_str = getattr(tok, "bos_token_id", None), getattr(tok, "bos_token", None)
    if (bos is not None and bos_str and text.startswith(bos_str) and len(ids) > 1
            and ids[0] == bos and ids[1] == bos):
        return ids[1:], True
    return ids, False


def scaffold_count(tok, max_length: int = MAX_LENGTH) -> tuple[int, str]:
    """Tokens the chat template puts before the first user message's content (the default exclusion for a
    pair the recipe's table does not cover), with how it was obtained."""
    has_bos = prepends_bos(tok)
    if getattr(tok, "chat_template", None):
        try:
            rendered = tok.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                               add_generation_prompt=False)
        except Exception as e:  # a template that refuses a lone user turn: fall back, and say so
            rendered, why = None, f"chat template failed ({type(e).__name__}: {e})"
        if rendered is not None and _SENTINEL in rendered:
            prefix = rendered[:rendered.index(_SENTINEL)]
            ids, _ = tokenize_text(tok, prefix, max_length) if prefix else ([], False)
            return len(ids), "chat-template scaffold before the first user message's content"
        if rendered is not None:
            why = "chat template does not echo the user content"
    else:
        why = "tokenizer has no chat template"
    return (1 if has_bos else 0), f"{why}: {'the BOS only' if has_bos else 'nothing'}"


def _is_newline_token(s: str) -> bool:
    return bool(s) and not s.strip() and "\n" in s


# ------------------------------------------------------------------------------------------- gold

def load_base(handle):
    """(model, tokenizer) of the pair's base model (``handle.base_spec``, set by ``make_pair_handle``)."""
    spec = getattr(handle, "base_spec", None)
    if spec is None:
        raise ValueError(f"{NAME}: pair {handle.name!r}: the handle has no base_spec (nla_repro.evalset."
                         f"make_pair_handle sets it); the text is tokenised and its gold extracted by the base model")
    return spec.load()


def extract_gold(model, ids: list[int], layer_index: int) -> np.ndarray:
    """Block-K output (HF ``hidden_states[K+1]``) of ``model`` at every position of ``ids``: fp32 [T, d]."""
    import torch

    device = model.get_input_embeddings().weight.device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    gold = extract_layer(model, x, torch.ones_like(x), int(layer_index))[0].cpu().numpy()
    return np.ascontiguousarray(gold, dtype=np.float32)


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plan_positions(tok, text: str, pair_name: str, p: dict) -> dict:
    """Tokenise the text and resolve the excluded prefix and the sampling positions (with their sources)."""
    bos_mode = str(p["bos"])
    if bos_mode not in ("keep", "strip"):
        raise ValueError(f"{NAME}: options bos: expected 'keep' (recipe) or 'strip' (deliberately wrong), "
                         f"found {bos_mode!r}")
    max_length = int(p["max_length"])
    ids, dedoubled = tokenize_text(tok, text, max_length)
    has_bos = prepends_bos(tok)
    bos_present = has_bos and bool(ids) and ids[0] == tok.bos_token_id
    if bos_mode == "strip" and bos_present:
        ids, bos_present = ids[1:], False
    T = len(ids)
    if T < 2:
        raise ValueError(f"{NAME}: the text tokenises to {T} token(s); a worked example needs more")
    if p["exclude_first"] is not None:
        E, e_src = int(p["exclude_first"]), f"options {NAME}.exclude_first"
    elif pair_name in RELEASED_EXCLUDE_FIRST:
        E, e_src = RELEASED_EXCLUDE_FIRST[pair_name], f"recipe §0 table (system-prompt positions) for {pair_name}"
    else:
        E, how = scaffold_count(tok, max_length)
        e_src = f"default for a pair outside the recipe's table: {how}"
    if not 0 <= E < T:
        raise ValueError(f"{NAME}: exclude_first must satisfy 0 <= E < n_tokens = {T}, found {E} ({e_src})")
    if p["sampling_positions"] is not None:
        sp, s_src = [int(x) for x in p["sampling_positions"]], f"options {NAME}.sampling_positions"
    elif pair_name in RELEASED_SAMPLING_POSITIONS:
        sp, s_src = list(RELEASED_SAMPLING_POSITIONS[pair_name]), "recipe §7.1 sampling-variance sections"
    else:
        sp, s_src = [T - 2], ("second-to-last position (inferred: where the recipe's Qwen 99 / Llama 110 fall "
                              "in texts of 24+77 / 30+82 tokens)")
    if not sp or any(not E <= q < T for q in sp):
        raise ValueError(f"{NAME}: sampling positions must be scored positions in [{E}, {T}), found {sp} ({s_src})")
    if int(p["n_samples"]) < 1:
        raise ValueError(f"{NAME}: n_samples must be >= 1, found {p['n_samples']}")
    return {"ids": ids, "n_tokens": T, "exclude_first": E, "exclude_first_source": e_src,
            "sampling_positions": sp, "sampling_positions_source": s_src, "bos_present": bos_present,
            "bos": {"tokenizer_prepends_bos": has_bos, "bos_in_text_dedoubled": dedoubled,
                    "bos_position": 0 if bos_present else None, "mode": bos_mode},
            "max_length": max_length}


# ------------------------------------------------------------------------------------------- statistics

def _stats(mse: np.ndarray, v_train: float | None) -> dict:
    s = np.asarray(mse, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        nan = float("nan")
        return {"fve": [nan, nan], "mse": [nan, nan], "mse_range": [nan, nan], "cos": nan, "counts": [nan] * 3}
    out = {"mse": [float(s.mean()), float(np.median(s))], "mse_range": [float(s.min()), float(s.max())],
           "cos": float(np.mean(1.0 - s / 2.0))}   # mse_nrm = 2(1-cos) with mse_scale = sqrt(d)
    if v_train:
        f = metrics.fve_per_sample(s, v_train)
        out["fve"] = [float(f.mean()), float(np.median(f))]
        out["counts"] = [int(np.sum(f > 0.5)), int(np.sum(f > 0.8)), int(np.sum(f < 0))]
    else:
        out["fve"] = [float("nan")] * 2
        out["counts"] = [float("nan")] * 3
    return out


# ------------------------------------------------------------------------------------------- experiment

@experiment(NAME, default_n=2,
            decoding=f"greedy(max_new=150, context_cap=300) at every scored position and position 0; "
                     f"{N_SAMPLES} x sampled(T=1.0, top_p=1.0, top_k=off, seed 0) at the sampling positions",
            denominator="train (sidecar metrics.train_rawvar or the handle's value; fve figures NaN without it)",
            failure_convention="CLIENT_RAW (the worked examples score raw text on a tag miss; override: options)",
            needs=("no_eval_set",), inputs=_inputs)
def worked_examples(ctx, pair_name):
    p = params(ctx, NAME, DEFAULTS)
    handle = ctx.pairs[pair_name]
    path, given_by = find_text(ctx, pair_name)
    text = path.read_bytes().decode("utf-8")
    if not text:
        raise ValueError(f"{NAME}: {path} is empty")
    pair = handle.load()
    K = int(pair.layer_index)
    spec = getattr(handle, "base_spec", None)
    model, tok = load_base(handle)   # loaded once for this text, released after the forward
    try:
        plan = plan_positions(tok, text, pair_name, p)
        gold = extract_gold(model, plan["ids"], K)
    finally:
        del model
        _release_memory()
    ids, T, E, sp = plan["ids"], plan["n_tokens"], plan["exclude_first"], plan["sampling_positions"]
    bos_present, n_samples = plan["bos_present"], int(p["n_samples"])
    if gold.shape != (T, pair.d_model):
        raise ValueError(f"{NAME}: base model gold is {gold.shape}; expected ({T}, {pair.d_model}) "
                         f"(base model and pair disagree on d_model?)")
    norms = np.linalg.norm(gold.astype(np.float64), axis=1)
    tokens = [tok.decode([int(t)], skip_special_tokens=False) for t in ids]

    # greedy decodes: every scored position, plus position 0
    conv = convention_of(ctx, NAME, default=FailureConvention.CLIENT_RAW.value)
    v_train, v_src = train_denominator(handle, pair)
    bs = int(p["batch_size"])
    dec = decoding_for(ctx, NAME)
    pos = sorted(set(range(E, T)) | {0})
    verbs = decode(pair, gold[pos], dec, batch_size=bs)
    acc, texts = pair.score_verbalizations(verbs, gold[pos], conv)
    mse_at = {q: float(m) for q, m in zip(pos, acc.mse)}
    failed_train = {q: parse(v.text, v.truncated, FailureConvention.TRAINING_DROP).failed for q, v in zip(pos, verbs)}
    scored = np.array([mse_at[q] for q in range(E, T)], dtype=np.float64)
    st = _stats(scored, v_train)

    def fve_of(m: float) -> float:
        return float(1.0 - m / v_train) if (v_train and np.isfinite(m)) else float("nan")

    figs: dict = {
        "examples.fve": st["fve"], "examples.mse": st["mse"], "examples.mse_range": st["mse_range"],
        "examples.cos": st["cos"], "examples.counts": st["counts"],
        "examples.n_positions": int(np.sum(~np.isnan(scored))), "examples.n_tokens": T, "examples.exclude_first": E,
        "examples.n_failed": int(sum(failed_train[q] for q in range(E, T))),
        "examples.pos0": mse_at[0], "examples.pos0_fve": fve_of(mse_at[0]),
        "examples.table": {
            "position": pos, "token": [tokens[q] for q in pos], "scored": [int(q >= E) for q in pos],
            "mse": [mse_at[q] for q in pos], "fve": [fve_of(mse_at[q]) for q in pos],
            "cos": [1.0 - mse_at[q] / 2.0 for q in pos], "norm": [float(norms[q]) for q in pos],
            "text_for_ar": texts, "failed_training_convention": [int(failed_train[q]) for q in pos]},
        "norms.all": [float(x) for x in norms],
        "norms.range": [float(norms[E:].min()), float(norms[E:].max())],
    }
    if bos_present:
        figs.update({"examples.bos": mse_at[0], "examples.bos_fve": fve_of(mse_at[0]), "norms.bos": float(norms[0])})
    nl = next((q for q in range(E) if _is_newline_token(tokens[q])), None)
    if nl is not None:
        figs["norms.template_newline"] = float(norms[nl])
        figs["norms.template_newline_position"] = int(nl)

    # sampling: n_samples T=1 decodes at each sampling position, one batch
    sdec = decoding_for(ctx, NAME, greedy=False, temperature=1.0, top_p=1.0, top_k=0, seed=int(p["sample_seed"]))
    rows = np.repeat(gold[sp], n_samples, axis=0)
    sverbs = decode(pair, rows, sdec, batch_size=bs)
    sacc, stexts = pair.score_verbalizations(sverbs, rows, conv)
    for i, q in enumerate(sp):
        s = np.asarray(sacc.mse[i * n_samples:(i + 1) * n_samples], dtype=np.float64)
        ok = s[~np.isnan(s)]
        g = mse_at[q]
        k = f"examples.sampling.pos{q}"
        figs[f"{k}.greedy"] = g
        figs[f"{k}.samples"] = [float(x) for x in s]
        figs[f"{k}.sampled"] = [float(ok.min()), float(ok.max())] if ok.size else [float("nan")] * 2
        figs[f"{k}.spread"] = float(abs(g - ok.mean())) if ok.size else float("nan")
        figs[f"{k}.spread_max"] = float(np.max(np.abs(g - ok))) if ok.size else float("nan")
        figs[f"{k}.texts"] = list(stexts[i * n_samples:(i + 1) * n_samples])
    first = f"examples.sampling.pos{sp[0]}"
    figs["examples.sampling.spread"] = figs[f"{first}.spread"]
    figs["examples.sampling.spread_max"] = figs[f"{first}.spread_max"]
    figs["examples.sampling.position"] = int(sp[0])

    return {**figs, "_n": figs["examples.n_positions"],
            "_conventions": {"failure_convention": conv.name,
                             "denominator": f"train V={v_train} ({v_src})" if v_train else
                                            "train: MISSING (no sidecar metrics.train_rawvar): fve figures NaN"},
            "_protocol": {"eval_set": f"worked example {path.name}", "text_file": str(path),
                          "text_given_by": given_by, "text_sha256": sha256_file(path),
                          "n_tokens": T, "tokenisation": "stage-0 tokenizer(text, add_special_tokens=True), one BOS",
                          "bos": plan["bos"], "exclude_first": E, "exclude_first_source": plan["exclude_first_source"],
                          "sampling_positions": sp, "sampling_positions_source": plan["sampling_positions_source"],
                          "n_samples": n_samples,
                          "decoding": dec.name, "sample_decoding": sdec.name, "layer_index": K,
                          "hidden_states_index": K + 1, "train_denominator": v_train,
                          "train_denominator_source": v_src,
                          "base_model": getattr(spec, "model_id", None), "max_length": plan["max_length"]}}

