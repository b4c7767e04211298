"""Which final tokens are hard to reconstruct (seed 004).

Each scored greedy decode's final token (``EvalSet.final_tokens``) is classed by
:func:`textops.token_type` (whitespace / punctuation / digits / word / mixed). Samples are bucketed by
per-sample reconstruction error mse_nrm into ``n_buckets`` equal-count quantile buckets (bucket 0 = lowest
error; ranks split with ``numpy.array_split`` over a stable argsort). Figures: token-type composition per
bucket, mean NMSE / fve[train] (ratio of means) / count per token type, the whitespace/word and
punctuation/word NMSE ratios (as (num, den) pairs), and the whitespace-or-punctuation share per bucket,
low -> high error.
"""

from __future__ import annotations

import numpy as np

from . import textops as T
from .base import experiment
from .quote_ban import decoding_from, score_texts, standard_decodes, train_denominator
from .runner import params

NAME = "token_type_buckets"


@experiment(NAME, default_n=1000, decoding="greedy", denominator="train", failure_convention="training_drop")
def token_type_buckets(ctx, pair_name: str) -> dict:
    pair, es, p, dec = standard_decodes(ctx, NAME, pair_name)
    n_buckets = int(params(ctx, NAME, {"n_buckets": 5})["n_buckets"])
    V = train_denominator(ctx, pair_name, pair)
    gold = np.asarray(es.vectors, dtype=np.float32)
    idx = dec.scored_idx
    if len(idx) < n_buckets:
        raise ValueError(f"token_type_buckets on {pair_name!r}: {len(idx)} scored decodes for {n_buckets} buckets")
    s = score_texts(pair, [dec.explanations[i] for i in idx], gold[idx], V)
    mse = s["mse"]
    types = np.array([T.token_type(es.final_tokens[i]) for i in idx])
    nan = float("nan")
    figs: dict = {"token_types.n_failed": dec.n_failed, "token_types.nmse": s["nmse"], "token_types.fve": s["fve"]}
    by_type_nmse = {}
    for t in T.TOKEN_TYPES:
        m = types == t
        by_type_nmse[t] = float(mse[m].mean()) if m.any() else nan
        figs[f"token_types.nmse.{t}"] = by_type_nmse[t]
        figs[f"token_types.fve.{t}"] = float(1 - mse[m].mean() / V) if m.any() else nan
        figs[f"token_types.n.{t}"] = int(m.sum())
    order = np.argsort(mse, kind="stable")
    buckets = np.array_split(order, n_buckets)
    comp, wp = {}, []
    for b, rows in enumerate(buckets):
        tb = types[rows]
        comp[str(b)] = {t: float(np.mean(tb == t)) for t in T.TOKEN_TYPES}
        comp[str(b)]["mse_max"] = float(mse[rows].max())
        wp.append(float(np.mean((tb == "whitespace") | (tb == "punctuation"))))
    figs["token_types.by_bucket"] = comp
    figs["token_types.bucket_composition"] = wp
    figs["token_types.whitespace_over_word"] = [by_type_nmse["whitespace"], by_type_nmse["word"]]
    figs["token_types.punct_over_word"] = [by_type_nmse["punctuation"], by_type_nmse["word"]]
    figs["_n"] = len(idx)
    figs["_conventions"] = {"failure_convention": str(p["failure_convention"]),
                            "decoding": decoding_from(p).name}
    figs["_protocol"] = {"buckets": f"{n_buckets} equal-count mse_nrm quantile buckets, 0 = lowest error",
                         "token_types": list(T.TOKEN_TYPES)}
    return figs
