"""Cross-family transfer (seeds 000 §5, 001 §7, 003): every ordered (AV pair i, AR pair j) in ctx.pairs.

Positions: the reference pair's eval-set rows (reference = first pair name in sorted order; its base
tokenisation), mapped onto every other base tokenizer by character offset
(:func:`nla_repro.activations.align_positions`); gold of every base model is extracted at the aligned
positions (block K_p output = HF hidden_states[K_p+1]).  Cell (i, j): AV_i decodes model-i gold (greedy),
AR_j reads the explanation, scored against model-j gold at the same position; own denominator = rawvar of
model-j gold; doc-bootstrap CI95 (1000 draws, seed 0); shuffled null = explanations rolled by one.

Pair labels in figure keys: released names map to the registry's short names (qwen2.5-7b-L20 -> qwen,
gemma3-12b-L32 -> gemma12, gemma3-27b-L41 -> gemma27, llama3.3-70b-L53 -> llama70); others keep their name.
Figures: cross_family.fve.<i>.<j>, .ci.<i>.<j> [lo, hi], .null.<i>.<j>, .real_minus_null.<i>.<j>,
.ratio.<i>.<j> (i != j: fve_ij / fve_jj), cross_family.null [every cell], cross_family.ratio [off-diagonal],
cross_family.real_minus_null [every cell], cross_family.alignment_error (mean |char error| over non-reference
pairs; 0.0 when every pair shares the reference tokenizer), cross_family.alignment_error.<p>,
cross_family.tag_failure_rate.<i>, transfer_matrix (report schema {"sources", "targets", "fve"}).
Seed 003's matrix vocabulary: matrix_summaries (cells, fractions of ceiling, row means, ...),
matrix.tag_failure_rate (failed / all AV decodes, every pair pooled), matrix.left_context.* (aligned left
context, :func:`left_context_figures`) and matrix.items.<best|typical|lost|digits>.* (per-item FVE of
seed 003 §4's sample rows, :func:`select_items`).
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from ..activations import align_positions, extract_layer, mean_alignment_error, tokenize_document
from .base import experiment
from .corroboration import decoding_for, convention_of, decode, shuffled_null_mse, tag_failure_rate
from .runner import params, resolve_n
from .textops import token_type

NAME = "cross_family"
SHORT_NAMES = {"qwen2.5-7b-L20": "qwen", "gemma3-12b-L32": "gemma12", "gemma3-27b-L41": "gemma27",
               "llama3.3-70b-L53": "llama70"}
_BASES: dict[str, tuple] = {}


def short(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def base_of(handle):
    spec = getattr(handle, "base_spec", None)
    if spec is None:
        raise ValueError(f"pair {handle.name!r}: handle has no base_spec (build it with "
                         f"nla_repro.evalset.make_pair_handle); cross-family gold needs the base model")
    if spec.model_id not in _BASES:
        _BASES[spec.model_id] = spec.load()
    return _BASES[spec.model_id]


def documents_by_id(ids, split: str = "eval") -> dict[str, str]:
    from ..corpora import load_documents

    want = set(ids)
    out = {d.id: d.text for d in load_documents(split) if d.id in want}
    missing = want - set(out)
    if missing:
        raise KeyError(f"documents not found in the {split} corpus: {sorted(missing)[:5]}")
    return out


def gold_at(handle, texts: dict, rows, layer_index: int, max_length: int) -> np.ndarray:
    """Block-``layer_index`` activations of the handle's base model at (doc_id, position) rows."""
    import torch

    model, tok = base_of(handle)
    out = np.zeros((len(rows), 0), np.float32)
    by_doc: dict[str, list[int]] = {}
    for r, (doc, _) in enumerate(rows):
        by_doc.setdefault(doc, []).append(r)
    vecs = {}
    for doc, idx in by_doc.items():
        ids = tokenize_document(tok, texts[doc], max_length)
        t = torch.tensor([ids], dtype=torch.long, device=model.get_input_embeddings().weight.device)
        h = extract_layer(model, t, torch.ones_like(t), layer_index)[0].cpu().numpy()
        for r in idx:
            vecs[r] = h[rows[r][1]]
    out = np.stack([vecs[r] for r in range(len(rows))]).astype(np.float32)
    return out


def aligned_gold(ctx, names, rows_ref, ref: str, split: str = "eval", n_for_eval: int | None = None):
    """({pair: gold [n, d]}, {pair: mean alignment error} for non-reference pairs, {pair: aligned rows}):
    the reference rows (doc_id, position) mapped onto every pair's base tokenisation by character offset."""
    texts = documents_by_id({d for d, _ in rows_ref}, split)
    ref_h = ctx.pairs[ref]
    _, tok_ref = base_of(ref_h)
    es_ref = ref_h.eval_set(n_for_eval) if n_for_eval is not None else None
    max_len = int((es_ref.meta.get("sampler", {}) if es_ref is not None else {}).get("max_length", 512))
    gold, err, rows = {}, {}, {ref: list(rows_ref)}
    for p in names:
        h = ctx.pairs[p]
        K = h.eval_set(1).layer_index
        if p == ref and es_ref is not None:
            gold[p] = es_ref.vectors
            continue
        _, tok_p = base_of(h)
        rows_p, errs = [], []
        for doc, pos in rows_ref:
            dst, e = align_positions(texts[doc], tok_ref, [pos], tok_p, max_length=max_len)
            rows_p.append((doc, dst[0]))
            errs.append(e[0])
        gold[p] = gold_at(h, texts, rows_p, K, max_len)
        rows[p] = rows_p
        if p != ref:
            err[p] = mean_alignment_error(errs)
    return gold, err, rows


def matrix_summaries(names: list[str], fve: np.ndarray, figs: dict) -> dict:
    """Seed 003's matrix vocabulary derived from the cells: `matrix.fve.<i>.<j>`, fraction of the
    target's own ceiling `matrix.frac.<i>.<j>` = fve[i,j] / fve[j,j], per-target fraction lists
    `matrix.frac.into_<j>`, row means over off-diagonal cells, worst off-diagonal cell, widest CI95
    half-width, and the null list `matrix.null` (own denominator of the AR-side model throughout)."""
    out: dict = {}
    off, fracs, halfwidths = [], [], []
    into: dict[str, list] = {short(j): [] for j in names}
    for a, i in enumerate(names):
        row = []
        for b, j in enumerate(names):
            key = f"{short(i)}.{short(j)}"
            out[f"matrix.fve.{key}"] = float(fve[a, b])
            if a == b:
                continue
            off.append(float(fve[a, b]))
            row.append(float(fve[a, b]))
            ci = figs.get(f"cross_family.ci.{key}")
            if ci is not None:
                halfwidths.append(max(fve[a, b] - ci[0], ci[1] - fve[a, b]))
            if np.isfinite(fve[b, b]) and fve[b, b] != 0:
                r = float(fve[a, b] / fve[b, b])
                out[f"matrix.frac.{key}"] = r
                fracs.append(r)
                into[short(j)].append(r)
        if row:
            out[f"matrix.row_mean.{short(i)}"] = float(np.mean(row))
    if off:
        out["matrix.fve.off_diagonal_min"] = float(np.nanmin(off))
    if fracs:
        out["matrix.frac"] = fracs
    if halfwidths:
        out["matrix.ci_halfwidth"] = float(np.max(halfwidths))
    out.update({f"matrix.frac.into_{j}": v for j, v in into.items() if v})
    out["matrix.null"] = [figs[k] for k in sorted(figs) if k.startswith("cross_family.null.")]
    return out


#: stage-0's minimum left context (recipe §7.1 _MIN_POSITION) that seed 003 §5 counts aligned rows against
LEFT_CONTEXT_MIN = 50


def left_context_figures(aligned: dict) -> dict:
    """Left context of every aligned row = its position index in the pair's base tokenisation (tokens
    before it, BOS counted; stage-0 enforces >= 50 in the reference tokenisation only). Per pair ``.<p>``
    and over all pairs: ``matrix.left_context.min`` (fewest tokens) and ``.n_below_50`` (rows whose left
    context is < 50 in at least one pair's tokenisation; per pair: rows < 50 there)."""
    pos = {q: np.array([r[1] for r in rows]) for q, rows in aligned.items()}
    below = np.zeros(len(next(iter(pos.values()))), dtype=bool)
    out: dict = {}
    for q, v in pos.items():
        out[f"matrix.left_context.min.{short(q)}"] = int(v.min())
        out[f"matrix.left_context.n_below_50.{short(q)}"] = int((v < LEFT_CONTEXT_MIN).sum())
        below |= v < LEFT_CONTEXT_MIN
    out["matrix.left_context.min"] = int(min(v.min() for v in pos.values()))
    out["matrix.left_context.n_below_50"] = int(below.sum())
    return out


ITEMS = ("best", "typical", "lost", "digits")


def select_items(item_fve: np.ndarray, final_tokens: list[str]) -> dict[str, int | None]:
    """Seed 003 §4's four sample rows among rows with a per-item FVE in every cell (``item_fve[a, b, row]``),
    ranked by their mean over all cells: ``best`` = highest mean; ``typical`` = the median row by that mean
    (the lower middle for an even count); ``lost`` = non-digit final token that decodes at home (diagonal
    mean > 0.7) with the largest diagonal-minus-off-diagonal mean gap (needs >= 2 pairs); ``digits`` = the
    lowest mean among digit final tokens (:func:`textops.token_type`). None where no row qualifies."""
    out: dict[str, int | None] = dict.fromkeys(ITEMS)
    ok = np.flatnonzero(np.all(np.isfinite(item_fve), axis=(0, 1)))
    if ok.size == 0:
        return out
    x = item_fve[:, :, ok]
    eye = np.eye(x.shape[0], dtype=bool)
    mean, diag = x.mean(axis=(0, 1)), x[eye].mean(axis=0)
    digit = np.array([token_type(final_tokens[k]) == "digits" for k in ok])
    order = np.argsort(mean, kind="stable")
    out["best"] = int(ok[np.argmax(mean)])
    out["typical"] = int(ok[order[(ok.size - 1) // 2]])
    if digit.any():
        d = np.flatnonzero(digit)
        out["digits"] = int(ok[d[np.argmin(mean[d])]])
    home = np.flatnonzero(~digit & (diag > 0.7))
    if x.shape[0] >= 2 and home.size:
        gap = diag - x[~eye].mean(axis=0)
        out["lost"] = int(ok[home[np.argmax(gap[home])]])
    return out


def item_figures(names: list[str], item_fve: np.ndarray, rows: list, final_tokens: list[str]) -> dict:
    """``matrix.items.<item>.<i>.<j>``: per-item FVE (1 - mse_nrm / V_own of the AR-side gold) of the
    selected row in cell (AV i -> AR j), NaN where no row qualifies; ``matrix.items.selected`` =
    {item: {"id": "<doc_id>#<row>" (row = index in the reference eval set), "token": final token}} (None
    where no row qualifies)."""
    out: dict = {"matrix.items.selected": {}}
    for item, k in select_items(item_fve, final_tokens).items():
        for a, i in enumerate(names):
            for b, j in enumerate(names):
                out[f"matrix.items.{item}.{short(i)}.{short(j)}"] = float(item_fve[a, b, k]) if k is not None \
                    else float("nan")
        out["matrix.items.selected"][item] = ({"id": f"{rows[k][0]}#{k}", "token": final_tokens[k]}
                                              if k is not None else None)
    return out


@experiment(NAME, default_n=16, decoding="greedy(max_new=150)",
            denominator="own (rawvar V of the AR-side model's gold at the aligned positions)",
            failure_convention="TRAINING_DROP (override: options)", needs=("all_pairs",))
def cross_family(ctx, pair_name):
    p = params(ctx, NAME, {"batch_size": 16, "n_boot": 1000})
    names = sorted(ctx.pairs)
    n = resolve_n(ctx, NAME)
    ref = names[0]
    es_ref = ctx.pairs[ref].eval_set(n)
    rows = list(zip(es_ref.doc_ids, es_ref.positions))
    gold, err, aligned = aligned_gold(ctx, names, rows, ref, n_for_eval=n)
    conv = convention_of(ctx, NAME)
    pairs = {q: ctx.pairs[q].load() for q in names}
    texts, verbs = {}, {}
    for i in names:
        verbs[i] = decode(pairs[i], gold[i], decoding_for(ctx, NAME), batch_size=int(p["batch_size"]))
        _, texts[i] = pairs[i].score_verbalizations(verbs[i], gold[i], conv)
    figs = {}
    fve = np.full((len(names), len(names)), np.nan)
    item_fve = np.full((len(names), len(names), len(rows)), np.nan)  # per-item fve[a, b, row], fp64
    nulls, rmn = [], []
    for a, i in enumerate(names):
        for b, j in enumerate(names):
            idx = [k for k, t in enumerate(texts[i]) if t is not None]
            key = f"{short(i)}.{short(j)}"
            v_own = metrics.variance_baseline(gold[j])
            if len(idx) < 2:
                figs[f"cross_family.fve.{key}"] = float("nan")
                continue
            mse = pairs[j].score([texts[i][k] for k in idx], gold[j][idx], allow_empty=True)
            f = metrics.fve_nrm(mse, v_own)
            ci = metrics.doc_bootstrap_ci(mse, [rows[k][0] for k in idx], lambda m: metrics.fve_nrm(m, v_own),
                                          n_boot=int(p["n_boot"]))
            null = metrics.fve_nrm(shuffled_null_mse(pairs[j], texts[i], gold[j]), v_own)
            fve[a, b] = f
            item_fve[a, b, idx] = metrics.fve_per_sample(mse, v_own)
            nulls.append(null)
            rmn.append(f - null)
            figs.update({f"cross_family.fve.{key}": f, f"cross_family.ci.{key}": list(ci),
                         f"cross_family.null.{key}": null, f"cross_family.real_minus_null.{key}": f - null,
                         f"cross_family.n_scored.{key}": len(idx)})
    summaries = matrix_summaries(names, fve, figs)
    # cross_family.ratio.<i>.<j> is seed 000/001's name for seed 003's matrix.frac.<i>.<j> (one computation)
    ratios = summaries.get("matrix.frac", [])
    figs.update({f"cross_family.ratio.{short(i)}.{short(j)}": summaries[f"matrix.frac.{short(i)}.{short(j)}"]
                 for i in names for j in names if f"matrix.frac.{short(i)}.{short(j)}" in summaries})
    figs.update(summaries)
    figs.update(item_figures(names, item_fve, rows, es_ref.final_tokens))
    figs.update(left_context_figures(aligned))
    figs.update({
        "cross_family.null": nulls,
        "cross_family.real_minus_null": rmn,
        "cross_family.ratio": ratios,
        "cross_family.alignment_error": float(np.mean(list(err.values()))) if err else 0.0,
        **{f"cross_family.alignment_error.{short(q)}": e for q, e in err.items()},
        **{f"cross_family.tag_failure_rate.{short(q)}": tag_failure_rate(v) for q, v in verbs.items()},
        "matrix.tag_failure_rate": tag_failure_rate([v for q in names for v in verbs[q]]),
        "transfer_matrix": {"sources": [short(q) for q in names], "targets": [short(q) for q in names],
                            "fve": fve.tolist()},
    })
    return {**figs, "_n": len(rows), "_conventions": {"failure_convention": conv.name},
            "_protocol": {"pairs": names, "reference_pair": ref, "reference_eval_set": es_ref.name,
                          "alignment": "character offset (activations.align_positions)",
                          "null": "explanations rolled by one (derangement)"}}
