"""Adjacent layers (seeds 000 §4, 001 §6): gold from layers K-1 and K+1 fed to the layer-K pair.

Same documents and positions at every layer (one sampler plan).  For L in {K-1, K+1}:
  adjacent.L<L>.cos        mean cos(gold_L, gold_K) (geometry only)
  adjacent.L<L>.offset     inter-layer offset NMSE = mean 2(1 - cos(gold_L, gold_K))
  adjacent.L<L>.nmse       round trip of gold_L scored against gold_L (its own input)
  adjacent.L<L>.fve        own denominator (rawvar of gold_L)
  adjacent.L<L>.nmse_vs_K  the same reconstructions scored against gold_K
  adjacent.L<L>.bound      additive bound = intrinsic NMSE at K + offset_L
plus adjacent.L<K>.nmse / .fve (intrinsic), adjacent.offset (mean offset), adjacent.bound_ratio
(max_L nmse_L / bound_L), adjacent.within_additive_bound (1/0), adjacent.raw_norms [mean raw L2 norm at
K-1, K, K+1 (those present)].
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from .base import experiment
from .corroboration import decoding_for, convention_of, decode
from .runner import params, resolve_n

NAME = "adjacent_layers"


@experiment(NAME, default_n=16, decoding="greedy(max_new=150)",
            denominator="own (rawvar V of the fed layer's eval gold)",
            failure_convention="TRAINING_DROP (override: options)", needs=("adjacent",))
def adjacent_layers(ctx, pair_name):
    p = params(ctx, NAME, {"batch_size": 16})
    handle = ctx.pairs[pair_name]
    if not handle.adjacent_eval_sets:
        raise ValueError(f"pair {pair_name!r} has no adjacent-layer eval sets (handle.adjacent_eval_sets is empty)")
    n = resolve_n(ctx, NAME)
    pair = handle.load()
    conv = convention_of(ctx, NAME)
    es = handle.eval_set(n)
    K = es.layer_index

    def round_trip(vectors):
        verbs = decode(pair, vectors, decoding_for(ctx, NAME), batch_size=int(p["batch_size"]))
        acc, _ = pair.score_verbalizations(verbs, vectors, conv)
        return acc, verbs

    acc_k, verbs_k = round_trip(es.vectors)
    ok_k = ~np.isnan(acc_k.mse)
    intrinsic = float(acc_k.mse[ok_k].mean()) if ok_k.any() else float("nan")
    figs = {f"adjacent.L{K}.nmse": intrinsic,
            f"adjacent.L{K}.fve": metrics.fve_nrm(acc_k.mse[ok_k], metrics.variance_baseline(es.vectors))
            if ok_k.any() else float("nan")}
    norms = {K: float(np.linalg.norm(es.vectors, axis=1).mean())}
    ratios, offsets = [], []
    for L, get in sorted(handle.adjacent_eval_sets.items()):
        adj = get(n)
        if adj.doc_ids != es.doc_ids or adj.positions != es.positions:
            raise ValueError(f"adjacent eval set L{L} rows do not match L{K} rows (documents/positions differ)")
        cos_lk = metrics.cos(adj.vectors, es.vectors)
        offset = float(np.mean(2.0 * (1.0 - cos_lk)))
        acc, verbs = round_trip(adj.vectors)
        ok = ~np.isnan(acc.mse)
        nmse = float(acc.mse[ok].mean()) if ok.any() else float("nan")
        vs_k = float("nan")
        if ok.any():
            recon = pair.reconstruct([v for v, o in zip(_texts(verbs, conv), ok) if o],
                                     allow_empty=conv.value == "client_raw")
            vs_k = float(metrics.mse_nrm(recon, es.vectors[ok]).mean())
        bound = intrinsic + offset
        ratios.append(nmse / bound if bound > 0 else float("nan"))
        offsets.append(offset)
        norms[L] = float(np.linalg.norm(adj.vectors, axis=1).mean())
        figs.update({
            f"adjacent.L{L}.cos": float(cos_lk.mean()),
            f"adjacent.L{L}.offset": offset,
            f"adjacent.L{L}.nmse": nmse,
            f"adjacent.L{L}.fve": metrics.fve_nrm(acc.mse[ok], metrics.variance_baseline(adj.vectors))
            if ok.any() else float("nan"),
            f"adjacent.L{L}.nmse_vs_K": vs_k,
            f"adjacent.L{L}.bound": bound,
        })
    figs["adjacent.offset"] = float(np.mean(offsets))
    figs["adjacent.bound_ratio"] = float(np.max(ratios))
    figs["adjacent.within_additive_bound"] = bool(np.max(ratios) <= 1.0)
    figs["adjacent.raw_norms"] = [norms[L] for L in sorted(norms)]
    figs["adjacent.layers"] = sorted(norms)
    return {**figs, "_n": len(es), "_conventions": {"failure_convention": conv.name},
            "_protocol": {"layers": sorted(norms), "trained_layer": K, "eval_set": es.name,
                          "bound": "intrinsic NMSE at K + inter-layer offset NMSE(L vs K)"}}


def _texts(verbs, conv):
    from ..explanation import parse

    return [parse(v.text, v.truncated, conv).text_for_ar for v in verbs]
