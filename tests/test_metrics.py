"""Tests for nla_repro.metrics: mse_nrm, baselines, fve conventions, summaries, doc bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nla_repro.metrics import (
    PER_VECTOR_DENOMINATOR,
    PUBLISHED_TRAIN_RAWVAR,
    Denominator,
    FVEResult,
    cos,
    doc_bootstrap_ci,
    fve_nrm,
    fve_per_sample,
    fve_with,
    meannorm_baseline,
    meannorm_from_rawvar,
    mse_nrm,
    per_vector_variance,
    rawvar_from_meannorm,
    summary,
    variance_baseline,
)

# --------------------------------------------------------------------------- strategies

_KINDS = ["normal", "shared_direction", "duplicates", "sparse", "heavy_tailed"]


def _make(rng: np.random.Generator, kind: str, n: int, d: int) -> np.ndarray:
    """Float32 [n, d] test vectors with varied geometry and per-row scales over 1e-2..1e3."""
    if kind == "shared_direction":  # Gemma-like: large common component, small V
        x = rng.normal(size=d) * 10.0 + rng.normal(size=(n, d)) * rng.uniform(0.01, 3.0)
    elif kind == "duplicates":
        x = np.repeat(rng.normal(size=(1, d)), n, axis=0) * rng.choice([-1.0, 1.0], size=(n, 1))
    elif kind == "sparse":
        x = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) < 0.3)
        x[:, 0] += 0.5
    elif kind == "heavy_tailed":
        x = rng.standard_cauchy(size=(n, d))
    else:
        x = rng.normal(size=(n, d))
    return (x * 10.0 ** rng.uniform(-2, 3, size=(n, 1))).astype(np.float32)


@st.composite
def matrices(draw, n=None, d=None):
    n = draw(st.integers(1, 8)) if n is None else n
    d = draw(st.integers(1, 16)) if d is None else d
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = _make(rng, draw(st.sampled_from(_KINDS)), n, d)
    assume(np.all(np.isfinite(arr)) and np.all(np.linalg.norm(arr.astype(np.float64), axis=1) > 1e-6))
    return arr


@st.composite
def pairs(draw):
    n, d = draw(st.integers(1, 8)), draw(st.integers(1, 16))
    return draw(matrices(n=n, d=d)), draw(matrices(n=n, d=d))


_positive = st.floats(1e-3, 1e3, allow_nan=False)
PROPS = settings(max_examples=100, deadline=None)

# --------------------------------------------------------------------------- property tests


@PROPS
@given(pairs(), _positive, _positive)
def test_scale_invariance(pg, a, b):
    p, g = pg
    np.testing.assert_allclose(mse_nrm(a * p.astype(np.float64), b * g.astype(np.float64)),
                               mse_nrm(p, g), atol=1e-9)


@PROPS
@given(pairs())
def test_mse_equals_two_one_minus_cos_and_bounds(pg):
    p, g = pg
    m, c = mse_nrm(p, g), cos(p, g)
    np.testing.assert_allclose(m, 2.0 * (1.0 - c), atol=1e-6)
    assert np.all(m >= 0.0) and np.all(m <= 4.0 + 1e-12)
    assert m.dtype == np.float64 and m.shape == (p.shape[0],)


@PROPS
@given(matrices())
def test_baseline_identity_and_ranges(x):
    v, m = variance_baseline(x), meannorm_baseline(x)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert 0.0 <= m <= 2.0 + 1e-12
    assert m >= v - 1e-12  # the best unit-norm constant is never better than the raw mean
    # dM/dV = 1/sqrt(1-V) blows up as V -> 1 (near-antipodal sets): float64 rounding of V near 1
    # costs up to ~2*sqrt(eps) ~ 3e-8 in M, hence the tolerance.
    assert m == pytest.approx(meannorm_from_rawvar(min(v, 1.0)), abs=1e-7)
    assert v == pytest.approx(rawvar_from_meannorm(m), abs=1e-9)


@PROPS
@given(matrices())
def test_rawvar_is_pooled_population_variance_of_sqrtd_normalised_vectors(x):
    x64 = x.astype(np.float64)
    n = math.sqrt(x.shape[1]) * x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    pooled = float(((n - n.mean(axis=0)) ** 2).mean())  # mean over all N*d elements, divide by N
    unit_mean = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).mean(axis=0)
    assert variance_baseline(x) == pytest.approx(pooled, abs=1e-12)
    assert variance_baseline(x) == pytest.approx(1.0 - float(unit_mean @ unit_mean), abs=1e-12)


@PROPS
@given(matrices(), _positive)
def test_perfect_prediction_gives_fve_one_under_every_convention(x, a):
    assume(variance_baseline(x) > 1e-6)
    mse = mse_nrm(a * x.astype(np.float64), x)
    assert np.all(mse < 1e-12)
    for conv in Denominator:
        res = fve_with(mse, x, conv, train_value=0.5)
        assert res.value == pytest.approx(1.0, abs=1e-9)


@PROPS
@given(matrices())
def test_predicting_mean_direction(x):
    """Constant prediction = mean unit direction: mean mse_nrm is exactly M, so fve_M = 0 and
    fve_V = 1 - M/V <= 0 (the normalised mean is worse than the raw mean the V baseline uses)."""
    x64 = x.astype(np.float64)
    mean_dir = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).mean(axis=0)
    assume(np.linalg.norm(mean_dir) > 1e-3)
    v = variance_baseline(x)
    assume(v > 1e-6)
    mse = mse_nrm(np.broadcast_to(mean_dir, x.shape), x)
    m = meannorm_baseline(x)
    assert float(mse.mean()) == pytest.approx(m, abs=1e-9)
    assert fve_with(mse, x, Denominator.MEANNORM).value == pytest.approx(0.0, abs=1e-7)
    own = fve_with(mse, x, Denominator.OWN)
    assert own.value == pytest.approx(1.0 - m / v, abs=1e-7)
    assert own.value <= 1e-9


@PROPS
@given(pairs())
def test_per_vector_convention_is_two_cos_minus_one(pg):
    p, g = pg
    mse = mse_nrm(p, g)
    np.testing.assert_allclose(fve_per_sample(mse, PER_VECTOR_DENOMINATOR), 2.0 * cos(p, g) - 1.0, atol=1e-9)
    res = fve_with(mse, None, Denominator.PER_VECTOR)
    assert res.value == pytest.approx(float(np.mean(2.0 * cos(p, g) - 1.0)), abs=1e-9)
    assert res.denominator_value == 1.0


@PROPS
@given(st.lists(st.floats(0.0, 4.0), min_size=1, max_size=30), st.floats(0.01, 2.0))
def test_ratio_of_means_equals_mean_of_per_sample(mse, den):
    assert fve_nrm(mse, den) == pytest.approx(float(np.mean(fve_per_sample(mse, den))), abs=1e-12)


# --------------------------------------------------------------------------- numeric goldens


def test_mse_and_cos_goldens():
    assert mse_nrm([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2.0)  # orthogonal
    assert cos([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert mse_nrm([3.0, 0.0], [-1.0, 0.0]) == pytest.approx(4.0)  # opposite
    assert mse_nrm([1.0, 1.0], [1.0, 0.0]) == pytest.approx(2.0 - math.sqrt(2.0))
    assert cos([1.0, 1.0], [5.0, 0.0]) == pytest.approx(1.0 / math.sqrt(2.0))
    # literal mean_d (s p_hat - s x_hat)^2 with s = 1, d = 2: ((1-0)^2 + (0-1)^2)/2 = 1
    assert mse_nrm([1.0, 0.0], [0.0, 1.0], scale=1.0) == pytest.approx(1.0)
    assert mse_nrm([1.0, 0.0], [0.0, 1.0], scale=math.sqrt(2.0)) == pytest.approx(2.0)
    out = mse_nrm([[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(out, [2.0, 0.0], atol=1e-15)


def test_baseline_goldens():
    # x_hat = e1, e2: mean (0.5, 0.5), m^2 = 0.5; n = sqrt2*e_i, deviations +-0.7071 -> V = 0.5
    x = [[2.0, 0.0], [0.0, 7.0]]
    assert variance_baseline(x) == pytest.approx(0.5)
    assert meannorm_baseline(x) == pytest.approx(2.0 - math.sqrt(2.0))
    assert variance_baseline([[3.0, 4.0], [6.0, 8.0]]) == pytest.approx(0.0, abs=1e-15)
    assert meannorm_baseline([[3.0, 4.0], [6.0, 8.0]]) == pytest.approx(0.0, abs=1e-15)
    assert variance_baseline([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(1.0)
    assert meannorm_baseline([[1.0, 0.0], [-1.0, 0.0]]) == pytest.approx(2.0)
    # only the first rows are used when max_rows is set (training keeps the first 50k)
    assert variance_baseline([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], max_rows=2) == pytest.approx(0.0)
    np.testing.assert_allclose(per_vector_variance([[1.0, -1.0], [1.0, 1.0]]), [1.0, 0.0])


@pytest.mark.parametrize("v, m", [(0.7335, 0.9675), (0.0302, 0.0304), (0.0579, 0.0588), (0.9169, 1.4235)])
def test_published_rawvar_meannorm_relation(v, m):
    """Recipe 4.2: 'Qwen V 0.7335 <-> M 0.9675; Gemma-12B 0.0302 <-> 0.0304; Gemma-27B 0.0579 <->
    0.0588; Llama-70B 0.9169 <-> 1.4235'."""
    assert meannorm_from_rawvar(v) == pytest.approx(m, abs=5e-5)
    assert v in PUBLISHED_TRAIN_RAWVAR.values()


def test_published_numbers_recomputed():
    train = PUBLISHED_TRAIN_RAWVAR
    # worked examples (recipe 0 / 7.1): fve from mean mse with the training V
    assert fve_nrm([0.220], train["qwen2.5-7b-L20"]) == pytest.approx(0.700, abs=1e-3)
    assert fve_nrm([0.236], train["llama3.3-70b-L53"]) == pytest.approx(0.742, abs=1e-3)
    # trap 16: M instead of V inflates Qwen 0.700 -> ~0.77, Llama 0.742 -> ~0.83
    assert fve_nrm([0.220], meannorm_from_rawvar(0.7335)) == pytest.approx(0.77, abs=5e-3)
    assert fve_nrm([0.236], meannorm_from_rawvar(0.9169)) == pytest.approx(0.83, abs=5e-3)
    # 4.5 sensitivity: delta fve per +0.001 mse
    for key, delta in [("qwen2.5-7b-L20", -0.0014), ("gemma3-12b-L32", -0.033),
                       ("gemma3-27b-L41", -0.017), ("llama3.3-70b-L53", -0.0011)]:
        assert fve_nrm([0.101], train[key]) - fve_nrm([0.100], train[key]) == pytest.approx(delta, abs=1e-4 + 0.03 * abs(delta))
    # one failure charged at mse 2.0 in 100 samples moves Gemma-12B by -0.66
    base = [0.008] * 100
    assert fve_nrm(base[:-1] + [2.0], 0.0302) - fve_nrm(base, 0.0302) == pytest.approx(-0.66, abs=5e-3)
    # TRAINING_NOTES critic SFT: FVE = 1 - 0.586/0.938 = 37.5 %; schema: V ~0.72 <-> M ~0.94
    assert fve_nrm([0.586], 0.938) == pytest.approx(0.375, abs=1e-3)
    assert meannorm_from_rawvar(0.72) == pytest.approx(0.94, abs=5e-3)


def test_fve_with_conventions_golden():
    gold = np.array([[2.0, 0.0], [0.0, 7.0]])  # V = 0.5, M = 2 - sqrt2
    mse = np.array([0.1, 0.3])
    assert fve_with(mse, gold, Denominator.OWN) == FVEResult(value=pytest.approx(0.6), denominator_name="own",
                                                            denominator_value=pytest.approx(0.5), n=2)
    assert fve_with(mse, gold, "meannorm").value == pytest.approx(1.0 - 0.2 / (2.0 - math.sqrt(2.0)))
    assert fve_with(mse, None, Denominator.TRAIN, train_value=0.7335).value == pytest.approx(1 - 0.2 / 0.7335)
    assert fve_with(mse, None, Denominator.PER_VECTOR).value == pytest.approx(0.8)
    np.testing.assert_allclose(fve_per_sample(mse, 0.5), [0.8, 0.4])


def test_float64_internally_for_near_identical_vectors():
    """Gemma regime (mse ~1e-3 on top of a large shared component): float32 maths would lose digits."""
    rng = np.random.default_rng(0)
    d = 3840
    base = rng.normal(size=d) * 10.0
    gold = (base + rng.normal(size=(4, d)) * 0.3).astype(np.float32)
    pred = (base + rng.normal(size=(4, d)) * 0.3).astype(np.float32)
    g, p = gold.astype(np.float64), pred.astype(np.float64)
    ref = np.sum((p / np.linalg.norm(p, axis=1, keepdims=True) - g / np.linalg.norm(g, axis=1, keepdims=True)) ** 2, axis=1)
    np.testing.assert_allclose(mse_nrm(pred, gold), ref, rtol=1e-12)
    c32 = np.sum(pred * gold, axis=1, dtype=np.float32) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(gold, axis=1))
    assert np.max(np.abs(2.0 * (1.0 - c32.astype(np.float64)) - ref) / ref) > 1e-6  # the float32 path is worse
    assert isinstance(variance_baseline(gold), float) and isinstance(fve_nrm(ref, 0.03), float)
    np.testing.assert_allclose(mse_nrm(pred.astype(np.float16), gold.astype(np.float16)),
                               mse_nrm(pred.astype(np.float16).astype(np.float64), gold.astype(np.float16).astype(np.float64)))


def test_summary_golden():
    s = summary([-0.1, 0.3, 0.6, 0.9, 0.5])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(0.44) and s["median"] == pytest.approx(0.5)
    assert (s["n_gt_0_5"], s["n_gt_0_8"], s["n_lt_0"]) == (2, 1, 1)  # strict: 0.5 is not > 0.5
    assert s["frac_gt_0_5"] == pytest.approx(0.4) and s["frac_gt_0_8"] == pytest.approx(0.2)
    assert s["frac_lt_0"] == pytest.approx(0.2)


# --------------------------------------------------------------------------- bootstrap


def _clustered(n_docs=40, per_doc=5, seed=1):
    rng = np.random.default_rng(seed)
    doc_level = rng.gamma(2.0, 0.05, size=n_docs)
    mse = np.repeat(doc_level, per_doc) + rng.gamma(2.0, 0.005, size=n_docs * per_doc)
    doc_ids = np.repeat([f"c:en:{i}" for i in range(n_docs)], per_doc)
    return mse, doc_ids


def test_doc_bootstrap_deterministic_and_contains_point():
    mse, docs = _clustered()
    stat = lambda m: fve_nrm(m, 0.7335)  # noqa: E731
    point = stat(mse)
    lo, hi = doc_bootstrap_ci(mse, docs, stat, n_boot=500, seed=0)
    assert lo < point < hi
    assert (lo, hi) == doc_bootstrap_ci(mse, docs, stat, n_boot=500, seed=0)
    assert (lo, hi) != doc_bootstrap_ci(mse, docs, stat, n_boot=500, seed=1)
    lo90, hi90 = doc_bootstrap_ci(mse, docs, stat, n_boot=500, seed=0, alpha=0.10)
    assert lo <= lo90 <= hi90 <= hi


def test_doc_bootstrap_resamples_documents_not_samples():
    """Strongly clustered data: the cluster CI must be much wider than the per-sample CI, and a
    single-document set has no between-document variance (degenerate CI at the point)."""
    mse, docs = _clustered()
    stat = lambda m: fve_nrm(m, 0.7335)  # noqa: E731
    lo_d, hi_d = doc_bootstrap_ci(mse, docs, stat, n_boot=400, seed=0)
    lo_s, hi_s = doc_bootstrap_ci(mse, np.arange(mse.size), stat, n_boot=400, seed=0)
    assert (hi_d - lo_d) > 1.5 * (hi_s - lo_s)
    one = doc_bootstrap_ci(mse, ["c:en:0"] * mse.size, stat, n_boot=50)
    assert one == (pytest.approx(stat(mse)), pytest.approx(stat(mse)))


def test_doc_bootstrap_multicolumn_values():
    """Rows may carry several columns (e.g. mse and a flag); the statistic sees whole rows."""
    mse, docs = _clustered(n_docs=10, per_doc=3)
    rows = np.stack([mse, np.ones_like(mse)], axis=1)
    lo, hi = doc_bootstrap_ci(rows, docs, lambda r: float(r[:, 0].mean() / r[:, 1].mean()), n_boot=100)
    assert lo <= float(mse.mean()) <= hi


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("pred, gold, match", [
    (np.ones((2, 3)), np.ones((2, 4)), "shape mismatch"),
    (np.ones(3), np.ones((1, 3)), "shape mismatch"),
    ([1.0, np.nan], [1.0, 0.0], "pred: expected finite"),
    ([1.0, 0.0], [np.inf, 0.0], "gold: expected finite"),
    ([0.0, 0.0], [1.0, 0.0], "pred: expected non-zero"),
    ([[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]], r"gold: expected non-zero .*\[1\]"),
    (np.ones((1, 2, 3)), np.ones((1, 2, 3)), r"expected shape \[d\] or \[n, d\]"),
])
def test_mse_nrm_bad_input(pred, gold, match):
    with pytest.raises(ValueError, match=match):
        mse_nrm(pred, gold)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        mse_nrm([1.0, 0.0], [0.0, 1.0], scale=0.0)
    with pytest.raises(ValueError, match="train_value"):
        fve_with([0.1], None, Denominator.TRAIN)
    with pytest.raises(ValueError, match="gold"):
        fve_with([0.1], None, Denominator.OWN)
    with pytest.raises(ValueError, match="denominator"):
        fve_with([0.1], [[1.0, 0.0], [2.0, 0.0]], Denominator.OWN)  # V = 0
    with pytest.raises(ValueError, match="non-negative"):
        fve_nrm([-0.1], 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        fve_nrm([], 0.5)
    with pytest.raises(ValueError):
        Denominator("raw")
    with pytest.raises(ValueError, match="rawvar"):
        meannorm_from_rawvar(1.5)
    with pytest.raises(ValueError, match="doc_ids"):
        doc_bootstrap_ci([0.1, 0.2], ["a"], np.mean)
    with pytest.raises(ValueError, match="per_sample_fve"):
        summary([])


def test_metrics_module_is_pure_numpy():
    """The metric maths must not depend on torch (the package __init__ may import it; this module not)."""
    import ast
    import nla_repro.metrics as metrics_module

    tree = ast.parse(open(metrics_module.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported and "numpy" in imported


def test_torch_bf16_tensors_are_widened_not_rejected():
    torch = pytest.importorskip("torch")
    p = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    g = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.bfloat16)
    np.testing.assert_allclose(mse_nrm(p, g), mse_nrm([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]), rtol=1e-15)
