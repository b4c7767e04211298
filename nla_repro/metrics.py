"""NLA reconstruction metrics: mse_nrm, cos, variance baselines, fve_nrm, bootstrap CIs.

Pure numpy (no torch import).  Every computation runs in float64 internally whatever the
input dtype (float32, float16, or bf16-origin values already widened to float32); every
scalar output is a Python ``float``.

Notation (recipe section 4): ``x`` = raw gold vector, ``p`` = raw AR prediction, ``d`` = width,
``s`` = mse_scale (sqrt(d) in every released sidecar), ``x̂ = x/‖x‖``, ``n_i = sqrt(d)·x̂_i``,
``μ = mean_i n_i``, ``m = ‖mean_i x̂_i‖``.

* per sample ``mse_nrm = mean_d (s·p̂ − s·x̂)² = (s²/d)·‖p̂ − x̂‖²``; with s = sqrt(d) this is
  ``‖p̂ − x̂‖² = 2(1 − cos)`` in [0, 4] (orthogonal = 2).
* rawvar ``V = mean over N×d of (n_i − μ)² = 1 − m²`` (population variance; MSE of predicting
  the un-renormalised mean μ).  This is the training fve_nrm denominator.
* meannorm ``M = 2(1 − m) = 2 − 2·sqrt(1 − V)`` (MSE of the best *unit-norm* constant
  prediction, i.e. the mean direction).  M ≥ V always.
* ``fve_nrm = 1 − mean(mse_nrm)/denominator`` (ratio of means, as logged in training).

Denominator conventions (:class:`Denominator`):

* ``TRAIN``      – V computed once on the training set, supplied by the caller (sidecar
  ``metrics.train_rawvar`` or the published table :data:`PUBLISHED_TRAIN_RAWVAR`).
* ``OWN``        – the same V formula on the evaluation set's own gold vectors.  Seeds 000/001/003
  call this the "own" / "raw-mean" denominator (predict the *raw*, un-renormalised mean).
* ``MEANNORM``   – M on the evaluation set's gold (TRAINING_NOTES' "predict-the-mean baseline").
* ``PER_VECTOR`` – seed 002's convention ``fve = 1 − mse/var(g)`` with the variance taken over
  the d coordinates of each normalised gold vector ``g = sqrt(d)·x̂``.  Since
  ``mean_d g² = 1``, ``var_d(g) = 1 − mean_d(g)²`` which is 1 for a zero-mean vector, so the
  denominator is 1.0 and ``fve_i = 1 − 2(1 − cos_i) = 2·cos_i − 1``.  This explains the
  0.88–0.99 figures of seed 002 (e.g. Gemma-12B cos 0.996 → 0.992) against ≈0.75 elsewhere.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "Denominator",
    "FVEResult",
    "PUBLISHED_TRAIN_RAWVAR",
    "TRAIN_BASELINE_ROWS",
    "PER_VECTOR_DENOMINATOR",
    "as_float64",
    "unit_rows",
    "mse_nrm",
    "cos",
    "variance_baseline",
    "meannorm_baseline",
    "meannorm_from_rawvar",
    "rawvar_from_meannorm",
    "per_vector_variance",
    "fve_nrm",
    "fve_per_sample",
    "denominator_value",
    "fve_with",
    "summary",
    "doc_bootstrap_ci",
]

#: Training-set rawvar V quoted in the released examples (examples/*.txt:31, recipe section 0).
PUBLISHED_TRAIN_RAWVAR: Mapping[str, float] = {
    "qwen2.5-7b-L20": 0.7335,
    "gemma3-12b-L32": 0.0302,
    "gemma3-27b-L41": 0.0579,
    "llama3.3-70b-L53": 0.9169,
}

#: The training code estimates V on the first 50,000 rows of the parquet (schema.py:178-200).
TRAIN_BASELINE_ROWS = 50_000

#: Seed 002's per-vector convention: per-dimension variance of a vector normalised to sqrt(d).
PER_VECTOR_DENOMINATOR = 1.0


class Denominator(str, enum.Enum):
    """Which baseline divides mean(mse_nrm) in fve_nrm.  See the module docstring."""

    TRAIN = "train"
    OWN = "own"
    MEANNORM = "meannorm"
    PER_VECTOR = "per_vector"


@dataclass(frozen=True)
class FVEResult:
    """An fve_nrm value together with the convention that produced it."""

    value: float
    denominator_name: str
    denominator_value: float
    n: int

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return (f"fve_nrm={self.value:.4f} (denominator {self.denominator_name}="
                f"{self.denominator_value:.4f}, ratio of means, n={self.n})")


# --------------------------------------------------------------------------- input handling

def as_float64(a, name: str = "array") -> np.ndarray:
    """Return ``a`` as a float64 numpy array; torch tensors (any dtype, any device) via ``.float()``.

    Raises ValueError naming ``name`` if the values are not finite.
    """
    if hasattr(a, "detach") and hasattr(a, "float"):  # torch.Tensor, without importing torch
        a = a.detach().float().cpu().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric array, found {type(a).__name__}") from exc
    if arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/Inf entries")
    return arr


def _as_rows(a, name: str) -> np.ndarray:
    """float64 [n, d] view of a [d] or [n, d] input."""
    arr = as_float64(a, name)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape [d] or [n, d], found {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: expected d >= 1, found shape {arr.shape}")
    return arr


def unit_rows(a, name: str = "vectors") -> np.ndarray:
    """Rows divided by their L2 norm (float64).  Raises ValueError on zero rows."""
    rows = _as_rows(a, name)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    if zero.size:
        raise ValueError(f"{name}: expected non-zero vectors, found zero L2 norm at rows "
                         f"{zero[:10].tolist()}")
    return rows / norms


def _pair(pred, gold) -> tuple[np.ndarray, np.ndarray, bool]:
    """Unit-normalised (pred, gold) rows with matching shapes, and whether the input was 1-D."""
    p_arr, g_arr = as_float64(pred, "pred"), as_float64(gold, "gold")
    if p_arr.shape != g_arr.shape:
        raise ValueError(f"pred/gold shape mismatch: pred {p_arr.shape} vs gold {g_arr.shape}")
    return unit_rows(p_arr, "pred"), unit_rows(g_arr, "gold"), p_arr.ndim == 1


def _out(per_sample: np.ndarray, single: bool):
    return float(per_sample[0]) if single else per_sample


# --------------------------------------------------------------------------- per-sample metrics

def mse_nrm(pred, gold, scale: float | None = None):
    """Per-sample normalised MSE: ``mean_d (s·p/‖p‖ − s·x/‖x‖)²``.

    ``scale`` is the sidecar's mse_scale; ``None`` means sqrt(d), giving
    ``‖p̂ − x̂‖² = 2(1 − cos)`` in [0, 4] — independent of the raw norms of p and x.
    Accepts [d] (returns float) or [n, d] (returns float64 array [n]).
    """
    p_hat, g_hat, single = _pair(pred, gold)
    d = p_hat.shape[1]
    if scale is None:
        factor = 1.0
    else:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale (mse_scale): expected a positive finite number, found {scale}")
        factor = scale * scale / d
    per = factor * np.sum((p_hat - g_hat) ** 2, axis=1)
    return _out(per, single)


def cos(pred, gold):
    """Per-sample cosine similarity (float64).  [d] -> float, [n, d] -> array [n]."""
    p_hat, g_hat, single = _pair(pred, gold)
    return _out(np.clip(np.sum(p_hat * g_hat, axis=1), -1.0, 1.0), single)


# --------------------------------------------------------------------------- baselines

def _mean_unit_vector(vectors, max_rows: int | None) -> np.ndarray:
    rows = _as_rows(vectors, "vectors")
    if max_rows is not None:
        rows = rows[:max_rows]
    return unit_rows(rows, "vectors").mean(axis=0)


def variance_baseline(vectors, *, max_rows: int | None = None) -> float:
    """rawvar V: population variance of ``n_i = sqrt(d)·x̂_i`` pooled over all N×d entries.

    ``V = mean_{i,j} (n_ij − μ_j)² = 1 − ‖mean_i x̂_i‖²`` in [0, 1].  Used as the TRAIN
    (on training vectors; the repo uses the first ``TRAIN_BASELINE_ROWS`` rows) and OWN
    (on the evaluation gold) denominators.  ``max_rows`` keeps only the first rows.
    """
    rows = _as_rows(vectors, "vectors")
    if max_rows is not None:
        rows = rows[:max_rows]
    n = math.sqrt(rows.shape[1]) * unit_rows(rows, "vectors")
    return float(np.var(n, axis=0).mean())


def meannorm_baseline(vectors, *, max_rows: int | None = None) -> float:
    """meannorm M = 2(1 − m), m = ‖mean_i x̂_i‖: mse_nrm of predicting the mean direction."""
    m = float(np.linalg.norm(_mean_unit_vector(vectors, max_rows)))
    return 2.0 * (1.0 - min(m, 1.0))


def meannorm_from_rawvar(rawvar: float) -> float:
    """Exact identity M = 2 − 2·sqrt(1 − V) (both computed on the same set)."""
    v = float(rawvar)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"rawvar: expected a value in [0, 1], found {v}")
    return 2.0 - 2.0 * math.sqrt(1.0 - v)


def rawvar_from_meannorm(meannorm: float) -> float:
    """Inverse identity V = 1 − (1 − M/2)²."""
    mn = float(meannorm)
    if not (0.0 <= mn <= 2.0):
        raise ValueError(f"meannorm: expected a value in [0, 2], found {mn}")
    return 1.0 - (1.0 - mn / 2.0) ** 2


def per_vector_variance(gold) -> np.ndarray:
    """Per-sample ``var_d(sqrt(d)·x̂) = 1 − mean_d(sqrt(d)·x̂)²`` (seed 002's literal ``var(g)``).

    Shown for diagnostics only: the PER_VECTOR convention uses its zero-mean value 1.0
    (:data:`PER_VECTOR_DENOMINATOR`), which is what makes ``fve_i = 2·cos_i − 1``.
    """
    rows = _as_rows(gold, "gold")
    n = math.sqrt(rows.shape[1]) * unit_rows(rows, "gold")
    return np.var(n, axis=1)


# --------------------------------------------------------------------------- fve

def _check_denominator(denominator: float) -> float:
    den = float(denominator)
    if not (math.isfinite(den) and den > 0):
        raise ValueError(f"denominator: expected a positive finite number, found {den}")
    return den


def _mse_vector(mse) -> np.ndarray:
    arr = np.atleast_1d(as_float64(mse, "mse"))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"mse: expected a non-empty 1-D array of per-sample mse_nrm, found shape {arr.shape}")
    if np.any(arr < 0):
        raise ValueError(f"mse: expected non-negative values, found min {arr.min()}")
    return arr


def fve_nrm(mse, denominator: float) -> float:
    """``1 − mean(mse_nrm)/denominator`` — ratio of means (the training logger's estimator)."""
    return 1.0 - float(_mse_vector(mse).mean()) / _check_denominator(denominator)


def fve_per_sample(mse, denominator: float) -> np.ndarray:
    """Per-sample ``1 − mse_i/denominator`` (the examples' per-position fve_nrm_i)."""
    return 1.0 - _mse_vector(mse) / _check_denominator(denominator)


def denominator_value(convention: Denominator | str, gold=None, train_value: float | None = None) -> float:
    """The denominator of ``convention``: TRAIN -> train_value, OWN -> V(gold), MEANNORM -> M(gold),
    PER_VECTOR -> 1.0."""
    conv = Denominator(convention)
    if conv is Denominator.TRAIN:
        if train_value is None:
            raise ValueError("train_value: expected the training rawvar V for Denominator.TRAIN "
                             "(sidecar metrics.train_rawvar or PUBLISHED_TRAIN_RAWVAR), found None")
        return _check_denominator(train_value)
    if conv is Denominator.PER_VECTOR:
        return PER_VECTOR_DENOMINATOR
    if gold is None:
        raise ValueError(f"gold: expected the evaluation gold vectors for Denominator.{conv.name}, found None")
    if conv is Denominator.OWN:
        return _check_denominator(variance_baseline(gold))
    return _check_denominator(meannorm_baseline(gold))


def fve_with(mse, gold, convention: Denominator | str, train_value: float | None = None) -> FVEResult:
    """fve_nrm (ratio of means) of per-sample ``mse`` under a named denominator convention.

    ``gold`` is the set the OWN/MEANNORM baseline is computed on (ignored for TRAIN/PER_VECTOR).
    """
    conv = Denominator(convention)
    arr = _mse_vector(mse)
    den = denominator_value(conv, gold=gold, train_value=train_value)
    return FVEResult(value=fve_nrm(arr, den), denominator_name=conv.value,
                     denominator_value=float(den), n=int(arr.size))


def summary(per_sample_fve) -> dict:
    """Summary in the examples' style: mean, median, fractions/counts > 0.5, > 0.8, < 0 (strict)."""
    arr = np.atleast_1d(as_float64(per_sample_fve, "per_sample_fve"))
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"per_sample_fve: expected a non-empty 1-D array, found shape {arr.shape}")
    n = int(arr.size)
    counts = {"n_gt_0_5": int(np.sum(arr > 0.5)), "n_gt_0_8": int(np.sum(arr > 0.8)),
              "n_lt_0": int(np.sum(arr < 0.0))}
    return {
        "n": n,
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "frac_gt_0_5": counts["n_gt_0_5"] / n,
        "frac_gt_0_8": counts["n_gt_0_8"] / n,
        "frac_lt_0": counts["n_lt_0"] / n,
        **counts,
    }


# --------------------------------------------------------------------------- bootstrap

def doc_bootstrap_ci(values_or_mse, doc_ids: Sequence, statistic: Callable[[np.ndarray], float],
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of ``statistic`` under a document-level (cluster) bootstrap.

    Each replicate draws as many documents as there are, with replacement
    (``numpy.random.default_rng(seed)``), concatenates all samples of the drawn documents
    (rows of ``values_or_mse`` along axis 0) and evaluates ``statistic`` on them — e.g.
    ``lambda m: fve_nrm(m, V)`` for the ratio-of-means fve.  Deterministic for a given seed.
    """
    values = np.asarray(values_or_mse)
    ids = np.asarray(doc_ids)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError(f"values_or_mse: expected a non-empty array, found shape {values.shape}")
    if ids.ndim != 1 or ids.shape[0] != values.shape[0]:
        raise ValueError(f"doc_ids: expected one id per sample ({values.shape[0]}), found shape {ids.shape}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha: expected 0 < alpha < 1, found {alpha}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot: expected >= 1, found {n_boot}")
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n_boot), dtype=np.float64)
    for b in range(int(n_boot)):
        draw = rng.integers(0, len(groups), size=len(groups))
        stats[b] = float(statistic(values[np.concatenate([groups[j] for j in draw])]))
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)
