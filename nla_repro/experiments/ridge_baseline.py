"""Ridge baseline (seeds 000 §5, 001 §8): a supervised linear map between two models' activations vs the
zero-paired-data NLA text route.

Training pairs: positions sampled with the stage-0 sampler on TRAIN documents (disjoint from the eval
split) in the reference pair's base tokenisation, aligned by character offset to the other base; both
sides unit-normalised.  Ridge (closed form, numpy, with intercept): W = (X'X + alpha I)^-1 X'Y on centred
data; alpha picked from ``alphas`` on an internal 80/20 split of the training pairs (validation mse_nrm),
then refit on all of them.  Evaluated on the cross_family eval rows (same aligned positions), own
denominator of the target's gold.  Text route = cross_family cell fve (run through the runner, cached).

Figures, per ordered direction <i>.<j> (i != j, short names as in cross_family):
  ridge.fve.<i>.<j> [fve per n], ridge.gain_per_doubling.<i>.<j> [dFVE / log2(n2/n1)] (+ _first / _last scalars),
  ridge.text_route.<i>.<j>, ridge.crossover.<i>.<j> (log10 n where the log-linear fit of the last three
  grid points reaches the text route; clipped to [0, 12]; 12 = never), ridge.crossover_clipped.<i>.<j>,
  ridge.alpha.<i>.<j>; and ridge.n_grid, ridge.n_pairs (aligned training pairs available),
  ridge.text_minus_ridge [text - ridge at the largest n, per direction], ridge_scaling (report schema).
"""

from __future__ import annotations

import math

import numpy as np

from .. import metrics
from ..activations import sample_positions, tokenize_document
from .base import experiment
from .cross_family import aligned_gold, base_of, short
from .runner import all_pairs_label, params, resolve_n, run_experiment

NAME = "ridge_baseline"
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def ridge_fit(X, Y, alpha):
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ Yc)
    return W, mx, my


def ridge_predict(model, X):
    W, mx, my = model
    return (X - mx) @ W + my


def fit_with_internal_alpha(X, Y, alphas=ALPHAS, seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    cut = max(1, int(0.8 * len(X)))
    tr, va = perm[:cut], perm[cut:]
    if len(va) == 0:
        va = tr
    best = min(alphas, key=lambda a: float(metrics.mse_nrm(ridge_predict(ridge_fit(X[tr], Y[tr], a), X[va]),
                                                           Y[va]).mean()))
    return ridge_fit(X, Y, best), best


def crossover_log10(ns, fves, target, cap=12.0):
    x = np.log10(np.asarray(ns[-3:], float))
    y = np.asarray(fves[-3:], float)
    b, a = np.polyfit(x, y, 1)
    if fves[-1] >= target:
        # already matched inside the grid: first grid point at or above the target
        for n, f in zip(ns, fves):
            if f >= target:
                return math.log10(n), False
    if b <= 0:
        return cap, True
    v = (target - a) / b
    return float(min(max(v, 0.0), cap)), bool(v > cap)  # plain bool: numpy's is not a figure type


@experiment(NAME, default_n=16, decoding="none for ridge; text route: greedy (cross_family)",
            denominator="own (rawvar V of the target model's eval gold)",
            failure_convention="text route: as cross_family", needs=("all_pairs",))
def ridge_baseline(ctx, pair_name):
    p = params(ctx, NAME, {"n_grid": [16, 32, 64, 128], "n_train_docs": 120, "per_doc": 4})
    names = sorted(ctx.pairs)
    if len(names) < 2:
        raise ValueError(f"ridge_baseline needs at least two pairs in ctx.pairs, found {names}")
    n = resolve_n(ctx, NAME)
    ref = names[0]
    es_ref = ctx.pairs[ref].eval_set(n)
    sampler = es_ref.meta.get("sampler", {})
    from ..corpora import load_documents

    docs = load_documents("train", limit=int(p["n_train_docs"]))
    _, tok_ref = base_of(ctx.pairs[ref])
    rows_train = []
    for d in docs:
        ids = tokenize_document(tok_ref, d.text, int(sampler.get("max_length", 512)))
        for pos in sample_positions(ids, d.id, seed=int(sampler.get("seed", 42)), n=int(p["per_doc"]),
                                    min_position=int(sampler.get("min_position", 50)),
                                    special_ids=tok_ref.all_special_ids):
            rows_train.append((d.id, pos))
    train_gold, _, _ = aligned_gold(ctx, names, rows_train, ref, split="train")
    eval_gold, _, _ = aligned_gold(ctx, names, list(zip(es_ref.doc_ids, es_ref.positions)), ref, n_for_eval=n)
    xf = run_experiment("cross_family", ctx, all_pairs_label(ctx)).figures
    grid = [int(g) for g in p["n_grid"] if int(g) <= len(rows_train)]
    if len(grid) < 2:
        raise ValueError(f"ridge_baseline: only {len(rows_train)} training pairs; n_grid {p['n_grid']} needs more")
    figs, scaling, text = {}, {}, {}
    gaps = []
    for i in names:
        for j in names:
            if i == j:
                continue
            key = f"{short(i)}.{short(j)}"
            X, Y = metrics.unit_rows(train_gold[i]), metrics.unit_rows(train_gold[j])
            Xe, Ye = metrics.unit_rows(eval_gold[i]), eval_gold[j]
            v_own = metrics.variance_baseline(Ye)
            fves, alpha = [], None
            for g in grid:
                model, alpha = fit_with_internal_alpha(X[:g], Y[:g])
                fves.append(metrics.fve_nrm(metrics.mse_nrm(ridge_predict(model, Xe), Ye), v_own))
            gains = [(fves[k + 1] - fves[k]) / math.log2(grid[k + 1] / grid[k]) for k in range(len(grid) - 1)]
            t = float(xf.get(f"cross_family.fve.{key}", float("nan")))
            cx, clipped = crossover_log10(grid, fves, t) if np.isfinite(t) else (float("nan"), False)
            figs.update({f"ridge.fve.{key}": fves, f"ridge.gain_per_doubling.{key}": gains,
                         f"ridge.gain_per_doubling_first.{key}": gains[0],
                         f"ridge.gain_per_doubling_last.{key}": gains[-1],
                         f"ridge.text_route.{key}": t, f"ridge.crossover.{key}": cx,
                         f"ridge.crossover_clipped.{key}": clipped, f"ridge.alpha.{key}": alpha})
            gaps.append(t - fves[-1])
            scaling[f"{short(i)}->{short(j)}"] = fves
            text[f"{short(i)}->{short(j)}"] = t
    figs.update({"ridge.n_grid": grid, "ridge.n_pairs": len(rows_train), "ridge.text_minus_ridge": gaps,
                 "ridge_scaling": {"n_pairs": grid, "fve": scaling, "text_route": text}})
    return {**figs, "_n": len(es_ref),
            "_protocol": {"pairs": names, "reference_pair": ref, "train_split": "train",
                          "n_train_docs": int(p["n_train_docs"]), "alphas": list(ALPHAS),
                          "alpha_selection": "internal 80/20 split, validation mse_nrm",
                          "features": "unit-normalised source activations; targets unit-normalised"}}
