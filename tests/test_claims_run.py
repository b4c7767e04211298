"""Claim evaluation wiring (nla_repro.claims.run, nla_repro.pairs): planning and skips, judge wiring,
ClaimResults in the cache, experiments computed once and served from cache on a second session, and a
deliberately broken pipeline stage making the relevant claim fail through the real experiment code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nla_repro.claims import RELEASED_PAIRS, get_claim, load_claims
from nla_repro.claims.run import ClaimCase, ClaimRunner, failure_message, plan_cases
from nla_repro.pairs import DEFAULT_PAIR_NAME, PairRegistry, PairUnavailable, provide_hint

GEMMA27, QWEN = "gemma3-27b-L41", "qwen2.5-7b-L20"


# ------------------------------------------------------------------------------------------------ planning

def test_plan_default_pair_runs_any_pair_claims_and_skips_released_ones():
    claims = load_claims()
    cases = plan_cases(claims, [DEFAULT_PAIR_NAME])
    by_id = {c.claim.id: c for c in cases}
    assert len(cases) == len(claims)  # one pair -> one case per claim
    run = [c for c in cases if c.status is None]
    assert {c.claim.id for c in run} == {c.id for c in claims if c.any_pair and c.testable}
    assert all(c.pair == DEFAULT_PAIR_NAME and not c.gpu for c in run)
    # a released-pair claim: skipped, reason names the pair and how to provide it; marked gpu
    c = by_id["s000-gemma27-var-eval-vs-train"]
    assert c.status == "skipped" and c.gpu and c.pair == GEMMA27
    assert GEMMA27 in c.reason and f"--pair {GEMMA27}=AV_DIR,AR_DIR" in c.reason
    # not_testable: skipped with the registry's reason
    nt = [c for c in cases if not c.claim.testable]
    assert nt and all(c.status == "not_testable" and c.claim.reason in c.reason for c in nt)
    assert f"{cases[0].claim.id}-{cases[0].pair}" == cases[0].id


def test_plan_partial_released_pairs_and_cross_family():
    cases = plan_cases(load_claims(), [GEMMA27])
    by_id = {c.claim.id: c for c in cases}
    assert by_id["s000-gemma27-var-eval-vs-train"].status is None  # provided -> runs
    xf = by_id["s000-xf-gemma27-to-qwen"]                           # cross-family needs both
    assert xf.status == "skipped" and xf.pair == f"{GEMMA27}+{QWEN}" and xf.pairs == (GEMMA27, QWEN)
    assert "not provided: " + QWEN + " " in xf.reason and f"--pair {QWEN}=" in xf.reason
    assert f"--pair {GEMMA27}=" not in xf.reason
    # any_pair claims on a released pair are checkpoint runs -> gpu
    assert by_id["s000-greedy-bit-reproducible"].gpu
    # an all-pairs experiment's any_pair claim: ONE case over every provided pair
    two = [c for c in plan_cases(load_claims(), [GEMMA27, QWEN]) if c.claim.id == "s000-shuffled-null-negative"]
    assert [c.pair for c in two] == [f"{GEMMA27}+{QWEN}"] and two[0].status is None
    per_pair = [c.pair for c in plan_cases(load_claims(), [GEMMA27, QWEN])
                if c.claim.id == "s000-greedy-bit-reproducible"]
    assert per_pair == [GEMMA27, QWEN]


def test_registry_refuses_absent_pair_with_hint():
    reg = PairRegistry(dirs={"mine": ("/nonexistent/av", "/nonexistent/ar")})
    with pytest.raises(PairUnavailable, match=f"{GEMMA27}.*--pair {GEMMA27}="):
        reg.get(GEMMA27)
    assert provide_hint(QWEN).count("--pair") == 1


# ------------------------------------------------------------------------------------------------ a probe experiment

PROBE = "_claims_run_probe"
PROBE_FIGURES: dict = {}


def _register_probe():
    from nla_repro.experiments.base import EXPERIMENTS, experiment

    if PROBE in EXPERIMENTS:
        return

    @experiment(PROBE, default_n=4, decoding="none (probe)", denominator="none (probe)",
                failure_convention="none (probe)")
    def _probe(ctx, pair_name):  # figures chosen by the test; the runner wraps, keys and caches them
        return dict(PROBE_FIGURES)


@pytest.fixture(scope="module")
def probe_handle(pair_dirs):
    """A fixture pair's real directories (hashed into cache keys) with a small synthetic eval set."""
    from nla_repro.experiments.base import EvalSet, PairHandle

    _register_probe()
    d = pair_dirs("llama")
    rng = np.random.default_rng(0)
    es = EvalSet("probe:eval", rng.standard_normal((4, 64)).astype(np.float32), ["a", "a", "b", "c"],
                 [50, 60, 51, 52], ["x"] * 4, ["y"] * 4, d.layer_index, "probe-base", "probe-manifest-1")
    return PairHandle(name="tiny", av_dir=d.av, ar_dir=d.ar, eval_set=lambda n: es.subset(range(min(n, 4))))


def _probe_case(claim_id: str, figure: str | None = None, pair="tiny") -> ClaimCase:
    c = get_claim(claim_id)
    c = dataclasses.replace(c, experiment=PROBE, figure=figure or c.figure)
    return ClaimCase(c, pair, (pair,))


def _runner(handle, cache, **kw):
    return ClaimRunner(PairRegistry(factories={"tiny": lambda: handle}), cache=cache, **kw)


def test_judge_wiring_pass_fail_error_and_records(probe_handle, tmp_path):
    from nla_repro.cache import ResultsCache
    from nla_repro.report import collect_records

    cache = ResultsCache(tmp_path / "results")
    PROBE_FIGURES.clear()
    PROBE_FIGURES.update({"cross_family.null": [-0.9, -0.7], "fve_nrm.train": 0.30,
                          "fve_nrm.train_ci95": [0.25, 0.35], "bad.null": [-0.9, 0.1]})
    r = _runner(probe_handle, cache)
    # any_pair claim, generalised form on a non-released pair: null <= -0.5
    ok = r.evaluate(_probe_case("s000-shuffled-null-negative"))
    assert ok.status == "pass" and ok.measured == -0.7 and ok.comparator == "le"
    assert ok.conventions["judged_form"] == "generalised" and "max of 2 values" in ok.protocol_note
    bad = r.evaluate(_probe_case("s000-shuffled-null-negative", figure="bad.null"))
    assert bad.status == "fail" and bad.measured == pytest.approx(0.1)
    msg = failure_message(bad)
    for needle in ("published -0.66", "measured", "criterion value <= -0.5", "comparator: le",
                   "source 000_", "§5", "s000-shuffled-null-negative"):
        assert needle in msg, (needle, msg)
    # CI picked up from the experiment's <figure>_ci95
    fve = r.evaluate(_probe_case(_first_with_figure("fve_nrm.train")))
    assert fve.ci == (0.25, 0.35) and fve.status in ("pass", "fail")
    # a figure the experiment does not report: error naming it, never a silent pass
    err = r.evaluate(_probe_case("s000-shuffled-null-negative", figure="no.such.figure"))
    assert err.status == "error" and "no figure 'no.such.figure'" in err.message
    # results are in the cache for the report: one record per (claim, pair, checkpoint), the latest wins
    _, claims, _ = collect_records(cache)
    got = [(c.claim_id, c.status) for c in claims]
    assert got.count(("s000-shuffled-null-negative", "error")) == 1
    assert not [g for g in got if g[0] == "s000-shuffled-null-negative" and g[1] != "error"]
    assert (fve.claim_id, fve.status) in got


def _first_with_figure(fig: str) -> str:
    return next(c.id for c in load_claims() if c.figure == fig and c.testable)


def test_experiment_computed_once_per_session_and_served_from_cache(probe_handle, tmp_path):
    from nla_repro.cache import ResultsCache
    from nla_repro.experiments.runner import COMPUTE_CALLS

    cache = ResultsCache(tmp_path / "results")
    PROBE_FIGURES.clear()
    PROBE_FIGURES.update({"cross_family.null": [-0.9, -0.7], "cross_family.real_minus_null": [1.2]})
    start = COMPUTE_CALLS.get(PROBE, 0)
    cases = [_probe_case("s000-shuffled-null-negative"), _probe_case("s000-real-minus-null-gap")]
    s1 = _runner(probe_handle, cache)                       # "first pytest --claims session"
    first = [s1.evaluate(c).status for c in cases]
    assert first == ["pass", "pass"] and COMPUTE_CALLS[PROBE] - start == 1  # two claims, one computation
    s2 = _runner(probe_handle, cache)                       # "second session": fresh runner, same cache
    assert [s2.evaluate(c).status for c in cases] == first
    assert COMPUTE_CALLS[PROBE] - start == 1                # served from the results cache
    s3 = _runner(probe_handle, cache, refresh=True)         # --refresh recomputes (once)
    [s3.evaluate(c) for c in cases]
    assert COMPUTE_CALLS[PROBE] - start == 2
    s4 = _runner(probe_handle, None)                        # no cache: every session computes
    s4.evaluate(cases[0])
    assert COMPUTE_CALLS[PROBE] - start == 3


def test_untested_records_and_supersession(probe_handle, tmp_path):
    from nla_repro.cache import ResultsCache
    from nla_repro.report import collect_records

    cache = ResultsCache(tmp_path / "results")
    planned = {c.claim.id: c for c in plan_cases(load_claims(), [DEFAULT_PAIR_NAME])}
    nt = next(c for c in planned.values() if c.status == "not_testable")
    sk = planned["s000-gemma27-var-eval-vs-train"]
    r = ClaimRunner(None, cache=cache)
    assert r.record_untested(nt).status == "not_testable"
    assert r.record_untested(sk).status == "skipped"
    _, claims, _ = collect_records(cache)
    got = {(c.claim_id, c.status, c.pair) for c in claims}
    assert (nt.claim.id, "not_testable", nt.pair) in got and (sk.claim.id, "skipped", GEMMA27) in got
    # the same claim later tested on that pair label replaces the "skipped" record
    PROBE_FIGURES.clear()
    PROBE_FIGURES["var_nrm.own"] = 0.0579
    case = dataclasses.replace(_probe_case(sk.claim.id, pair="tiny"), pair=GEMMA27, pairs=("tiny",))
    assert _runner(probe_handle, cache).evaluate(case).status == "pass"
    _, claims, _ = collect_records(cache)
    assert [(c.claim_id, c.status) for c in claims if c.claim_id == sk.claim.id] == [(sk.claim.id, "pass")]


# ------------------------------------------------------------------------------------------------ broken pipeline

@pytest.fixture(scope="module")
def fixture_handle(pair_dirs, tmp_path_factory):
    from nla_repro.cache import ResultsCache
    from nla_repro.evalset import make_pair_handle

    d = pair_dirs("llama")
    cache = ResultsCache(tmp_path_factory.mktemp("claims-run-cache"))
    return lambda name: make_pair_handle(name, d.av, d.ar, base="fixture", n_docs=3, adjacent=False,
                                         cache=cache), cache


class _NondeterministicAR:
    """Broken AR stage: its readout differs run to run (unseeded perturbation of the predictions, as a
    non-deterministic reduction order would cause). Wraps the real AR; everything else is untouched."""

    def __init__(self, ar):
        self._ar = ar
        self._rng = np.random.default_rng()  # deliberately unseeded

    def predict(self, ids, batch_size=32):
        out = self._ar.predict(ids, batch_size=batch_size)
        return out * (1 + 1e-4 * self._rng.standard_normal(out.shape).astype(out.dtype))

    def __getattr__(self, k):
        return getattr(self._ar, k)


def test_broken_ar_stage_makes_bit_reproducibility_claim_fail(fixture_handle):
    """Real experiment code (greedy_reproducibility) on a tiny fixture pair: intact -> the any-pair claim
    s000-greedy-bit-reproducible passes; the same pair with a non-deterministic AR readout -> it fails."""
    make, cache = fixture_handle
    claim = get_claim("s000-greedy-bit-reproducible")
    # random fixture AVs never write <explanation> tags: score the raw text (mechanics convention)
    # and, for speed only, 12 new tokens instead of 150 (the random fixture AV writes "\n" forever)
    opts = {"greedy_reproducibility": {"failure_convention": "client_raw", "batch_size": 4, "max_new_tokens": 12}}

    intact = make("tiny-intact")
    res = ClaimRunner(PairRegistry(factories={"tiny-intact": lambda: intact}), cache=None, eval_size=3,
                      options=opts).evaluate(ClaimCase(claim, "tiny-intact", ("tiny-intact",)))
    assert res.status == "pass", res.message

    broken = make("tiny-broken-ar")
    pair = broken.load()
    pair.ar = _NondeterministicAR(pair.ar)
    res = ClaimRunner(PairRegistry(factories={"tiny-broken-ar": lambda: broken}), cache=None, eval_size=3,
                      options=opts).evaluate(ClaimCase(claim, "tiny-broken-ar", ("tiny-broken-ar",)))
    assert res.status == "fail", res.message
    assert "differs from run 1" in res.message and "bits" in failure_message(res)


def test_released_names_are_the_registry_names():
    assert set(RELEASED_PAIRS) == {GEMMA27, QWEN, "gemma3-12b-L32", "llama3.3-70b-L53"}
