"""Post-hoc redaction (seed 000 §3, seed 001 §4): the AV decodes normally (greedy, unconstrained);
the AR input is edited before scoring.

Variants (:func:`textops.redaction_variants`): ``full``; ``prose_only`` (spans and their marks deleted);
``empty`` / ``ellipsis`` / ``redacted`` (span content replaced by "", "…", "REDACTED", marks kept);
``spans_marks`` (only the quoted spans, marks kept, joined by spaces); ``spans_bare`` (only the span
contents). Per variant: NMSE, cos, fve_nrm[train] (ratio of means), share of samples with per-sample
fve < 0 (mse_i > V), and how many AR inputs were empty (scored as the empty template, never dropped, so
every variant is measured on the same samples). Also: mean quoted spans per scored decode and the share
of explanation characters inside spans (marks included; pooled = sum span chars / sum chars).
"""

from __future__ import annotations

import numpy as np

from . import textops as T
from .base import experiment
from .quote_ban import decoding_from, put, score_texts, standard_decodes, train_denominator

NAME = "redaction"
FILLERS = ("prose_only", "empty", "ellipsis", "redacted")


@experiment(NAME, default_n=1000, decoding="greedy", denominator="train", failure_convention="training_drop")
def redaction(ctx, pair_name: str) -> dict:
    pair, es, p, dec = standard_decodes(ctx, NAME, pair_name)
    V = train_denominator(ctx, pair_name, pair)
    gold = np.asarray(es.vectors, dtype=np.float32)
    idx = dec.scored_idx
    texts = [dec.explanations[i] for i in idx]
    spans = [T.find_quote_spans(t) for t in texts]
    variants = [T.redaction_variants(t, s) for t, s in zip(texts, spans)]
    figs: dict = {"redaction.train_denominator": V, "redaction.n_failed": dec.n_failed}
    fve = {}
    for v in T.REDACTION_VARIANTS:
        s = score_texts(pair, [x[v] for x in variants], gold[idx], V)
        put(figs, f"redaction.{v}", s)
        figs[f"redaction.{v}.n_empty"] = s["n_empty"]
        fve[v] = s["fve"]
    n_sp = np.array([len(s) for s in spans], dtype=np.float64)
    span_chars = np.array([sum(x.end - x.start for x in s) for s in spans], dtype=np.float64)
    chars = np.array([len(t) for t in texts], dtype=np.float64)
    figs["redaction.spans_per_decode"] = float(n_sp.mean()) if len(texts) else float("nan")
    figs["redaction.span_char_frac"] = float(span_chars.sum() / chars.sum()) if chars.sum() else float("nan")
    figs["redaction.span_char_frac.mean_per_decode"] = (float(np.mean(span_chars / np.maximum(chars, 1)))
                                                       if len(texts) else float("nan"))
    figs["redaction.frac_decodes_with_spans"] = float(np.mean(n_sp > 0)) if len(texts) else float("nan")
    figs["redaction.quote_marks_worth"] = float(fve["spans_marks"] - fve["spans_bare"])
    figs["redaction.prose_glue"] = float(fve["full"] - fve["spans_marks"])
    figs["redaction.filler_sequence"] = [fve[v] for v in FILLERS]
    figs["fve_by_variant"] = [[v, fve[v]] for v in T.REDACTION_VARIANTS]
    figs["_n"] = len(idx)
    figs["_conventions"] = {"failure_convention": str(p["failure_convention"]),
                            "decoding": decoding_from(p).name}
    figs["_protocol"] = {"variants": list(T.REDACTION_VARIANTS), "empty_inputs": "scored (AR template with "
                         "nothing inside), not dropped", "span_chars": "marks included; pooled over decodes"}
    return figs
