"""Best-of-N (seeds 000 §4, 001 §5): N temperature-1 samples per vector, best-of-prefix-N chosen by the
pair's own AR mse (the training reward as verifier), against greedy and the mean over samples.

Figures (N over ``n_grid``, default [1, 2, 3, 5, 10] on CUDA; CPU default [1, 2, 3]):
  best_of_n.fve.<N>, best_of_n.nmse.<N>, best_of_n.cos.<N>     (cos = 1 - nmse/2 of the selected samples)
  best_of_n.fve.mean<Nmax>, best_of_n.nmse.mean<Nmax>          mean over all samples (no selection)
  best_of_n.fve.greedy, best_of_n.fve_sequence [fve per N]
  best_of_n.gain_per_doubling [dFVE / log2(N2/N1) per grid step], best_of_n.per_doubling (their mean)
  best_of_n.total_gain (fve[Nmax] - fve[1]), best_of_n.residual (1 - fve[Nmax]),
  best_of_n.sample_vs_greedy |fve[greedy] - fve[1]|, best_of_n.tag_failure_rate (all sampled decodes),
  best_of_n (report schema {"n": [..], "fve": [..]}).
A sample that fails under the scoring convention is never selected; a vector whose N samples all
failed is dropped for that N (TRAINING_DROP) -- counted in best_of_n.n_dropped.<N>.
"""

from __future__ import annotations

import math

import numpy as np

from .. import metrics
from .base import experiment
from .corroboration import decoding_for, convention_of, decode, tag_failure_rate, train_denominator
from .runner import eval_rows, params

NAME = "best_of_n"


@experiment(NAME, default_n=16, decoding="sampled(T=1.0, top_p=1.0, top_k=off, seeds 0..Nmax-1) + greedy",
            denominator="train (sidecar metrics.train_rawvar); own eval-set V when the pair has none "
                        "(named in protocol.denominator_used)",
            failure_convention="TRAINING_DROP (failed samples never selected; override: options)")
def best_of_n(ctx, pair_name):
    on_gpu = str(ctx.pairs[pair_name].device).startswith("cuda")
    p = params(ctx, NAME, {"n_grid": [1, 2, 3, 5, 10] if on_gpu else [1, 2, 3], "batch_size": 16})
    grid = sorted(int(x) for x in p["n_grid"])
    if grid[0] != 1 or len(grid) < 2:
        raise ValueError(f"best_of_n: n_grid must start at 1 and have >= 2 entries, found {grid}")
    handle = ctx.pairs[pair_name]
    pair = handle.load()
    es = eval_rows(ctx, NAME, pair_name)
    gold = es.vectors
    conv = convention_of(ctx, NAME)
    v_train, src = train_denominator(handle, pair)
    den = v_train if v_train else metrics.variance_baseline(gold)
    den_name = "train" if v_train else "own (no training denominator available)"
    nmax = grid[-1]
    mse = np.full((len(gold), nmax), np.nan)
    all_verbs = []
    for s in range(nmax):
        verbs = decode(pair, gold, decoding_for(ctx, NAME, greedy=False, temperature=1.0, top_p=1.0, top_k=0, seed=s),
                       batch_size=int(p["batch_size"]))
        acc, _ = pair.score_verbalizations(verbs, gold, conv)
        mse[:, s] = acc.mse
        all_verbs += verbs
    gverbs = decode(pair, gold, decoding_for(ctx, NAME), batch_size=int(p["batch_size"]))
    gacc, _ = pair.score_verbalizations(gverbs, gold, conv)
    g = gacc.mse[~np.isnan(gacc.mse)]
    fve_greedy = metrics.fve_nrm(g, den) if g.size else float("nan")
    figs, seq = {}, []
    for n in grid:
        block = mse[:, :n]
        has = ~np.all(np.isnan(block), axis=1)
        best = np.nanmin(np.where(np.isnan(block), np.inf, block), axis=1)[has]
        f = metrics.fve_nrm(best, den) if best.size else float("nan")
        seq.append(f)
        figs[f"best_of_n.fve.{n}"] = f
        figs[f"best_of_n.nmse.{n}"] = float(best.mean()) if best.size else float("nan")
        figs[f"best_of_n.cos.{n}"] = float(np.mean(1.0 - best / 2.0)) if best.size else float("nan")
        figs[f"best_of_n.n_dropped.{n}"] = int((~has).sum())
    flat = mse[~np.isnan(mse)]
    figs[f"best_of_n.fve.mean{nmax}"] = metrics.fve_nrm(flat, den) if flat.size else float("nan")
    figs[f"best_of_n.nmse.mean{nmax}"] = float(flat.mean()) if flat.size else float("nan")
    gains = [(seq[i + 1] - seq[i]) / math.log2(grid[i + 1] / grid[i]) for i in range(len(grid) - 1)]
    figs.update({
        "best_of_n.fve.greedy": fve_greedy,
        "best_of_n.nmse.greedy": float(g.mean()) if g.size else float("nan"),
        "best_of_n.fve_sequence": seq,
        "best_of_n.n_grid": grid,
        "best_of_n.gain_per_doubling": gains,
        "best_of_n.per_doubling": float(np.mean(gains)),
        "best_of_n.total_gain": seq[-1] - seq[0],
        "best_of_n.residual": 1.0 - seq[-1],
        "best_of_n.sample_vs_greedy": abs(fve_greedy - seq[0]),
        "best_of_n.tag_failure_rate": tag_failure_rate(all_verbs),
        "best_of_n": {"n": grid, "fve": seq},
    })
    return {**figs, "_n": len(gold), "_conventions": {"failure_convention": conv.name},
            "_protocol": {"n_grid": grid, "denominator_used": den_name, "train_denominator_source": src,
                          "selection": "best-of-prefix-N by the pair's own AR mse_nrm", "eval_set": es.name,
                          "manifest_hash": es.manifest_hash}}
