"""Greedy reproducibility (seed 000 §1): the greedy round trip twice, compared bit for bit.

Both runs decode fresh (no cache) with the same batch composition.  Needle test: one vector decoded
alone vs inside its batch (token ids compared).  Negative control: sampled decoding (T=1) with two seeds
must differ somewhere, proving the comparison can fail.

Figures: greedy.nmse_runs [run1, run2] (float64 means over scored samples), greedy.nmse (run 1), greedy.nmse_hex [hex, hex],
greedy.bits_equal (1/0), greedy.token_ids_equal (1/0), greedy.needle_token_ids_equal (1/0),
greedy.needle_index, greedy.control_sampled_differ (1/0), greedy.control_n_rows_differing.
"""

from __future__ import annotations

import numpy as np

from .base import experiment
from .corroboration import decoding_for, convention_of, decode
from .runner import eval_rows, params

NAME = "greedy_reproducibility"


def _nmse(acc) -> np.float64:
    s = acc.mse[~np.isnan(acc.mse)]
    return np.float64(s.mean()) if s.size else np.float64(np.nan)


@experiment(NAME, default_n=16, decoding="greedy(max_new=150) twice; control: sampled T=1.0 seeds 1 and 2",
            denominator="none (NMSE = mean mse_nrm)", failure_convention="TRAINING_DROP (override: options)")
def greedy_reproducibility(ctx, pair_name):
    p = params(ctx, NAME, {"batch_size": 8})
    bs = int(p["batch_size"])
    pair = ctx.pairs[pair_name].load()
    es = eval_rows(ctx, NAME, pair_name)
    conv = convention_of(ctx, NAME)
    runs, verbs_runs = [], []
    for _ in range(2):
        verbs = decode(pair, es.vectors, decoding_for(ctx, NAME), batch_size=bs)
        acc, _ = pair.score_verbalizations(verbs, es.vectors, conv)
        runs.append(_nmse(acc))
        verbs_runs.append(verbs)
    needle = min(len(es) - 1, bs // 2)
    alone = decode(pair, es.vectors[needle:needle + 1], decoding_for(ctx, NAME), batch_size=1)[0]
    s1 = decode(pair, es.vectors, decoding_for(ctx, NAME, greedy=False, temperature=1.0, seed=1), batch_size=bs)
    s2 = decode(pair, es.vectors, decoding_for(ctx, NAME, greedy=False, temperature=1.0, seed=2), batch_size=bs)
    n_diff = sum(a.token_ids != b.token_ids for a, b in zip(s1, s2))
    return {
        "greedy.nmse_runs": [float(r) for r in runs],
        "greedy.nmse": float(runs[0]),
        "greedy.nmse_hex": [float(r).hex() for r in runs],
        "greedy.bits_equal": runs[0].tobytes() == runs[1].tobytes(),
        "greedy.token_ids_equal": all(a.token_ids == b.token_ids for a, b in zip(*verbs_runs)),
        "greedy.needle_token_ids_equal": alone.token_ids == verbs_runs[0][needle].token_ids,
        "greedy.needle_index": int(needle),
        "greedy.control_sampled_differ": n_diff > 0,
        "greedy.control_n_rows_differing": int(n_diff),
        "_n": len(es),
        "_conventions": {"failure_convention": conv.name},
        "_protocol": {"batch_size": bs, "eval_set": es.name, "manifest_hash": es.manifest_hash,
                      "runs": "two fresh decodes, same batch composition; cache not consulted"},
    }
