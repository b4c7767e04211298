"""Variance baseline (seeds 000 §1, 001 §1): eval-set Var(v_nrm) vs the training value.

Figures: var_nrm.own (rawvar V on the eval gold), var_nrm.train (pair's training V or NaN),
var_nrm.own_minus_train, meannorm.own (M), meannorm.identity (2-2sqrt(1-V)), meannorm.identity_abs_error,
norm.raw_mean / norm.raw_median (mean / median raw L2 norm of the gold rows, fp64).
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from .base import experiment
from .corroboration import train_denominator
from .runner import eval_rows

NAME = "variance_baseline"


@experiment(NAME, default_n=64, decoding="none (no decoding)",
            denominator="rawvar V = 1-||mean unit vector||^2 (own = eval gold; train = sidecar metrics.train_rawvar)",
            failure_convention="none (no decoding)")
def variance_baseline(ctx, pair_name):
    handle = ctx.pairs[pair_name]
    es = eval_rows(ctx, NAME, pair_name)
    v = metrics.variance_baseline(es.vectors)
    m = metrics.meannorm_baseline(es.vectors)
    v_train, src = train_denominator(handle)
    if v_train is None:  # the sidecar value needs the pair's files, not the models
        from ..sidecar import load_sidecar
        v_train = load_sidecar(handle.ar_dir).train_denominator or load_sidecar(handle.av_dir).train_denominator
        src = "sidecar metrics.train_rawvar" if v_train is not None else "missing"
    ident = metrics.meannorm_from_rawvar(v)
    norms = np.linalg.norm(es.vectors.astype(np.float64), axis=1)
    return {
        "var_nrm.own": v,
        "var_nrm.train": float(v_train) if v_train is not None else float("nan"),
        "var_nrm.own_minus_train": v - float(v_train) if v_train is not None else float("nan"),
        "meannorm.own": m,
        "meannorm.identity": ident,
        "meannorm.identity_abs_error": abs(ident - m),
        "norm.raw_mean": float(norms.mean()),
        "norm.raw_median": float(np.median(norms)),
        "_n": len(es),
        "_protocol": {"eval_set": es.name, "manifest_hash": es.manifest_hash, "train_denominator_source": src},
    }
