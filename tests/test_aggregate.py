"""Derived (cross-pair) claim figures (nla_repro.claims.aggregate), the figure vocabulary
(nla_repro.claims.figures), and the registry check that every testable claim names a figure something
produces.

Known answers are the seeds' own printed numbers (seed 002 §3.1 tables, seed 003's 4x4 matrix), judged
against the real registry claims; the failing cases must fail (or error naming the missing figure).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from nla_repro.claims import get_claim, judge, load_claims
from nla_repro.claims.aggregate import DERIVED, MissingFigure, derive, inputs_of, is_derived
from nla_repro.claims.figures import FIGURES, UNMEASURED, emits, matches, undeclared, unexercised
from nla_repro.claims.run import ClaimCase, ClaimRunner
from nla_repro.claims.schema import EXPERIMENTS
from nla_repro.experiments.cross_family import matrix_summaries, short
from nla_repro.pairs import PairRegistry

QWEN, GEMMA12, GEMMA27, LLAMA70 = "qwen2.5-7b-L20", "gemma3-12b-L32", "gemma3-27b-L41", "llama3.3-70b-L53"
SEED002 = {  # seed 002 §3.1 / §4.2: per-model figures as two_tier_controls names them
    QWEN: {"two_tier.fve.overall": 0.880, "two_tier.recall.overall": 0.336, "two_tier.recall.spread": 0.490,
           "two_tier.recall.by_category": [0.578, 0.351, 0.088, 0.325], "two_tier.norm.mean": 124.3,
           "two_tier.direction.top": {"agent_vs_other": "agent", "agent_minus_chat": "code"}},
    GEMMA12: {"two_tier.fve.overall": 0.992, "two_tier.recall.overall": 0.420, "two_tier.recall.spread": 0.649,
              "two_tier.recall.by_category": [0.782, 0.404, 0.133, 0.361], "two_tier.norm.mean": 76020.5,
              "two_tier.direction.top": {"agent_vs_other": "code", "agent_minus_chat": "code"}},
    GEMMA27: {"two_tier.fve.overall": 0.982, "two_tier.recall.overall": 0.474, "two_tier.recall.spread": 0.654,
              "two_tier.recall.by_category": [0.813, 0.492, 0.160, 0.432], "two_tier.norm.mean": 76000.0,
              "two_tier.direction.top": {"agent_vs_other": "chat", "agent_minus_chat": "agent"}},
}
ORDER003 = [QWEN, GEMMA12, GEMMA27, LLAMA70]  # seed 003's row/column order
FVE003 = np.array([[0.748, 0.587, 0.520, 0.543],
                   [0.560, 0.752, 0.607, 0.514],
                   [0.581, 0.680, 0.769, 0.580],
                   [0.638, 0.630, 0.602, 0.791]])


def per_pair(claim_id: str, figs: dict) -> dict:
    """{scope pair: figures} in the claim's scope order (what ClaimRunner hands to derive)."""
    return {p: figs[p] for p in get_claim(claim_id).pairs()}


def matrix_figs(order=ORDER003, fve=FVE003) -> dict:
    """cross_family's matrix figures (the real matrix_summaries) for a hand-built matrix."""
    return matrix_summaries(list(order), fve, {})


def judged(claim_id: str, figs: dict):
    c = get_claim(claim_id)
    value = derive(c.figure, per_pair(claim_id, figs))
    return value, judge(c, value)


# ------------------------------------------------------------------------------------------ seed 002

@pytest.mark.parametrize("claim_id, expected", [
    ("s002-fve-peaks-12b", GEMMA12),
    ("s002-recall-monotone", [0.336, 0.420, 0.474]),
    ("s002-chat-recall-monotone", [0.578, 0.782, 0.813]),
    ("s002-agent-recall-monotone", [0.088, 0.133, 0.160]),
    ("s002-recall-spread-saturates", 0.654 - 0.649),
    ("s002-v2v3-category-gains", [0.031, 0.088, 0.027, 0.071]),
    ("s002-norm-ratio-600x", 76020.5 / 124.3),
    ("s002-gemma12-agent-to-code", "code"),
    ("s002-gemma27-agent-to-chat", "chat"),
    ("s002-gemma27-cross-axis-agent", "agent"),
])
def test_seed002_derivations_reproduce_the_printed_numbers(claim_id, expected):
    value, v = judged(claim_id, SEED002)
    if isinstance(expected, str):
        assert value == expected
    else:
        np.testing.assert_allclose(value, expected, atol=1e-12)
    assert v.status == "pass", v.message


def test_var_ratio_is_last_over_first_in_scope_order():
    figs = {GEMMA27: {"var_nrm.own": 0.0575}, QWEN: {"var_nrm.own": 0.712}}
    value, v = judged("s000-var-ratio-12x", figs)            # scope [gemma27, qwen]: qwen / gemma27
    assert value == pytest.approx(0.712 / 0.0575) and v.status == "pass"


def test_trajectory_out_of_order_fails_the_monotone_claim():
    figs = {p: dict(f) for p, f in SEED002.items()}
    figs[GEMMA12]["two_tier.recall.overall"] = 0.30            # dips between qwen and gemma27
    value, v = judged("s002-recall-monotone", figs)
    assert value == [0.336, 0.30, 0.474] and v.status == "fail"
    figs[GEMMA27]["two_tier.fve.overall"] = 0.999              # 27B now peaks: the categorical claim fails
    assert judged("s002-fve-peaks-12b", figs)[1].status == "fail"


def test_missing_input_names_figure_and_pair():
    figs = {p: {k: v for k, v in f.items() if not (p == GEMMA12 and k == "two_tier.norm.mean")}
            for p, f in SEED002.items()}
    with pytest.raises(MissingFigure, match=r"'two_tier\.norm\.mean' is missing on pair 'gemma3-12b-L32'"):
        derive("two_tier.norm.ratio", per_pair("s002-norm-ratio-600x", figs))
    with pytest.raises(MissingFigure, match=r"no entry 'agent_minus_chat'"):
        derive("two_tier.direction.top.agent_minus_chat",
               {GEMMA27: {"two_tier.direction.top": {"chat_vs_other": "chat"}}})
    with pytest.raises(ValueError, match=r"not finite on \['gemma3-12b-L32'\]"):
        derive("two_tier.fve.argmax", {QWEN: {"two_tier.fve.overall": 0.9},
                                       GEMMA12: {"two_tier.fve.overall": float("nan")}})
    with pytest.raises(ValueError, match="needs >= 2 scope pairs"):
        derive("var_nrm.ratio", {QWEN: {"var_nrm.own": 0.7}})


# ------------------------------------------------------------------------------------------ seed 003

@pytest.mark.parametrize("claim_id, expected", [
    ("s003-best-relative-cell", f"{GEMMA27}->{GEMMA12}"),   # 0.680 / 0.752 = 90%
    ("s003-best-autoencoder", LLAMA70),                      # 0.791
    ("s003-source-tiers", (0.581 + 0.680 + 0.580) / 3 - (0.560 + 0.607 + 0.514) / 3),  # gemma27 - gemma12
    ("s003-qwen-punches-above", 0.587 - 0.560),
    ("s003-bigger-to-smaller", 0.602 - 0.580),               # llama->gemma27 vs gemma27->llama, the smallest
])
def test_seed003_matrix_reads_reproduce_the_printed_numbers(claim_id, expected):
    value, v = judged(claim_id, {p: matrix_figs() for p in ORDER003})
    if isinstance(expected, str):
        assert value == expected
    else:
        assert value == pytest.approx(expected, abs=1e-12)
    assert v.status == "pass", v.message


def test_matrix_reads_do_not_depend_on_the_experiments_pair_order():
    """cross_family orders its matrix by sorted names; derivations read cells by name."""
    perm = np.argsort(ORDER003)
    sorted_figs = matrix_figs([ORDER003[k] for k in perm], FVE003[np.ix_(perm, perm)])
    assert sorted_figs != matrix_figs()
    seed_figs = matrix_figs()
    for cid in ("s003-best-relative-cell", "s003-best-autoencoder", "s003-source-tiers", "s003-bigger-to-smaller"):
        assert judged(cid, dict.fromkeys(ORDER003, sorted_figs))[0] == judged(cid, dict.fromkeys(ORDER003, seed_figs))[0]


def test_reversed_asymmetry_and_diagonal_fail():
    fve = FVE003.copy()
    fve[1, 0], fve[0, 1] = 0.587, 0.560                       # gemma12->qwen now beats qwen->gemma12
    fve[3, 3] = 0.70                                          # llama no longer the best autoencoder
    figs = {p: matrix_figs(fve=fve) for p in ORDER003}
    assert judged("s003-qwen-punches-above", figs)[1].status == "fail"
    assert judged("s003-best-autoencoder", figs)[0] == GEMMA27
    assert judged("s003-best-autoencoder", figs)[1].status == "fail"
    with pytest.raises(MissingFigure, match=r"'matrix\.fve\.llama70\.llama70' is missing on pair 'llama3\.3-70b-L53'"):
        derive("matrix.diagonal.argmax", {p: matrix_figs(ORDER003[:3], FVE003[:3, :3]) for p in ORDER003})
    with pytest.raises(ValueError, match="no base-model size known"):
        derive("matrix.asym.size_order", {"tiny-a": {}, "tiny-b": {}})


def test_nan_matrix_cell_errors_instead_of_being_skipped():
    """A failed cell (NaN) must not vanish inside min/max: Python's min(0.6, nan) is 0.6."""
    fve = FVE003.copy()
    fve[3, 1] = np.nan                      # llama70 -> gemma12: llama's row mean and one size delta are NaN
    figs = {p: matrix_figs(fve=fve) for p in ORDER003}
    with pytest.raises(ValueError, match=r"matrix\.row_mean is not finite on \['llama3\.3-70b-L53'\]"):
        judged("s003-source-tiers", figs)
    with pytest.raises(ValueError, match=r"asymmetry is not finite on \['llama3\.3-70b-L53->gemma3-12b-L32'\]"):
        judged("s003-bigger-to-smaller", figs)


def test_item_matrix_is_in_scope_order():
    """matrix.items.<item>.<i>.<j> cells -> rows = AV, columns = AR, both in the claim's scope order."""
    pub = get_claim("s003-item-lost").published
    figs = {f"matrix.items.lost.{short(i)}.{short(j)}": pub[a][b]
            for a, i in enumerate(ORDER003) for b, j in enumerate(ORDER003)}
    value, v = judged("s003-item-lost", {p: figs for p in ORDER003})
    assert value == pub and v.status == "pass"
    figs[f"matrix.items.lost.{short(QWEN)}.{short(GEMMA27)}"] = -5.0   # -6.52 printed: off by 1.52
    assert judged("s003-item-lost", {p: figs for p in ORDER003})[1].status == "fail"


def test_tuple_figure_lists_emitted_facts():
    figs = {"recipe.base_layers": 28, "recipe.layer_index": 20, "recipe.gold_hidden_states_index": 21,
            "recipe.ar_num_hidden_layers": 21, "recipe.d_model": 3584, "recipe.injection_scale": 150.0,
            "recipe.injection_token_id": 149705}
    for cid in ("recipe-qwen-config", "s002-qwen-config", "s003-config-qwen"):
        c = get_claim(cid)
        assert is_derived(c.figure)
        value = derive(c.figure, {QWEN: figs})
        assert judge(c, value).status == "pass", (cid, value)
    c = get_claim("recipe-qwen-config")
    assert judge(c, derive(c.figure, {QWEN: {**figs, "recipe.ar_num_hidden_layers": 20}})).status == "fail"
    with pytest.raises(MissingFigure, match=r"'recipe\.base_layers' is missing on pair"):
        derive("recipe.base_layers,recipe.d_model", {QWEN: {"recipe.d_model": 1}})


# ------------------------------------------------------------------------------------------ vocabulary

def test_pattern_syntax():
    assert matches("matrix.fve.*.*", "matrix.fve.qwen.gemma12")
    assert not matches("matrix.fve.*.*", "matrix.fve.off_diagonal_min")   # * never spans a dot
    assert matches("matrix.frac.into_*", "matrix.frac.into_llama70")
    assert not matches("matrix.frac.into_*", "matrix.frac.argmax")
    assert matches("best_of_n.{fve|nmse}.{greedy|mean*}", "best_of_n.nmse.mean10")
    assert not matches("best_of_n.{fve|nmse}.{greedy|mean*}", "best_of_n.cos.greedy")
    assert matches("verbatim.{frac_ge6.null}", "verbatim.frac_ge6.null") and not matches("a.b", "a.bc")
    assert undeclared("variance_baseline", ["var_nrm.own", "var_nrm.bogus"]) == ["var_nrm.bogus"]
    assert "norm.raw_median" in unexercised("variance_baseline", ["var_nrm.own", "norm.raw_mean"])


def test_every_registered_experiment_declares_its_figures():
    assert set(FIGURES) == set(EXPERIMENTS)


def _pair_segments(claim) -> list[str]:
    return [short(p) for p in claim.pairs()] or ["a", "b"]


def figure_problem(claim) -> str | None:
    """Why ``claim``'s figure would not be measured (None: its experiment emits it, it is derived from
    figures the experiment emits, or it is listed in UNMEASURED with a reason)."""
    exp, fig = claim.experiment, claim.figure
    if emits(exp, fig) or fig in UNMEASURED:
        return None
    if not is_derived(fig):
        return f"experiment {exp!r} does not emit {fig!r} and no derivation builds it"
    segs = _pair_segments(claim)
    need = {k.format(p=p, q=q) for k in inputs_of(fig) for p, q in itertools.product(segs, segs)}
    bad = sorted(k for k in need if not emits(exp, k))
    return f"derived {fig!r} reads figures {exp!r} does not emit: {bad}" if bad else None


def test_every_testable_claim_names_a_produced_figure():
    problems = {c.id: figure_problem(c) for c in load_claims() if c.testable}
    assert not {k: v for k, v in problems.items() if v}


def test_registry_check_catches_an_unknown_figure():
    c = get_claim("s002-recall-monotone")
    assert figure_problem(c) is None
    typo = dataclasses.replace(c, figure="two_tier.recall.trajectry")
    assert "does not emit 'two_tier.recall.trajectry'" in figure_problem(typo)
    # a derivation whose input the claim's experiment does not emit
    assert "does not emit" in figure_problem(dataclasses.replace(c, experiment="variance_baseline"))


def test_unmeasured_list_is_exact():
    """Each UNMEASURED figure is still named by a testable claim and still produced by nothing: fixing one
    (emitting or deriving it) fails here until it is removed from the list."""
    named = {c.figure: c.experiment for c in load_claims() if c.testable}
    for fig, why in UNMEASURED.items():
        assert fig in named and why, fig
        assert not emits(named[fig], fig) and not is_derived(fig), fig


def test_derivations_are_used_by_the_registry():
    used = {c.figure for c in load_claims() if c.testable}
    assert set(DERIVED) <= used, sorted(set(DERIVED) - used)


# ------------------------------------------------------------------------------------------ through ClaimRunner

PROBE = "_aggregate_probe"
PROBE_ALL = "_aggregate_probe_all_pairs"
PROBE_RAISE = "_aggregate_probe_raises"
PROBE_FIGS: dict = {}
PROBE_EXC: list = []   # the exception PROBE_RAISE raises


def _register_probes():
    from nla_repro.experiments.base import EXPERIMENTS as REG, experiment

    conv = dict(default_n=4, decoding="none (probe)", denominator="none (probe)", failure_convention="none (probe)")
    if PROBE not in REG:
        experiment(PROBE, **conv)(lambda ctx, pair_name: dict(PROBE_FIGS[pair_name]))
    if PROBE_ALL not in REG:
        experiment(PROBE_ALL, needs=("all_pairs",), **conv)(lambda ctx, pair_name: dict(PROBE_FIGS["all"]))
    if PROBE_RAISE not in REG:
        def _raise(ctx, pair_name):
            raise PROBE_EXC[0]

        experiment(PROBE_RAISE, **conv)(_raise)


@pytest.fixture(scope="module")
def registry(pair_dirs):
    """Handles named as released pairs over a fixture pair's real directories (hashed into cache keys)."""
    from nla_repro.experiments.base import EvalSet, PairHandle

    _register_probes()
    d = pair_dirs("llama")
    es = EvalSet("probe:eval", np.zeros((4, 64), np.float32), ["a", "b", "c", "d"], [50] * 4, ["x"] * 4,
                 ["y"] * 4, d.layer_index, "probe-base", "probe-manifest")
    handles = {p: PairHandle(name=p, av_dir=d.av, ar_dir=d.ar, eval_set=lambda n: es) for p in ORDER003}
    return PairRegistry(factories={p: (lambda h=h: h) for p, h in handles.items()})


def _case(claim_id, experiment):
    c = dataclasses.replace(get_claim(claim_id), experiment=experiment)
    return ClaimCase(c, "+".join(c.pairs()), c.pairs())


def test_runner_derives_per_pair_and_matrix_figures(registry):
    PROBE_FIGS.clear()
    PROBE_FIGS.update(SEED002)
    PROBE_FIGS["all"] = matrix_figs()
    r = ClaimRunner(registry, cache=None)
    res = r.evaluate(_case("s002-chat-recall-monotone", PROBE))
    assert res.status == "pass" and res.measured == pytest.approx(0.813 - 0.782)   # the worst (smallest) step
    assert r.evaluate(_case("s002-fve-peaks-12b", PROBE)).status == "pass"
    assert r.evaluate(_case("s003-best-relative-cell", PROBE_ALL)).status == "pass"
    assert r.evaluate(_case("s003-source-tiers", PROBE_ALL)).measured == pytest.approx(0.05333333, abs=1e-6)


def test_runner_errors_name_the_missing_input_and_unmeasured_reason(registry, monkeypatch):
    PROBE_FIGS.clear()
    PROBE_FIGS.update({p: {k: v for k, v in f.items() if k != "two_tier.recall.by_category"}
                       for p, f in SEED002.items()})
    r = ClaimRunner(registry, cache=None)
    res = r.evaluate(_case("s002-agent-recall-monotone", PROBE))
    assert res.status == "error"
    assert "derived figure 'two_tier.recall.agent.trajectory'" in res.message
    assert "'two_tier.recall.by_category' is missing on pair 'qwen2.5-7b-L20'" in res.message
    # a figure listed as unmeasured (none is, today): the claim errors with the listed reason
    worked = next(c.id for c in load_claims() if c.figure == "examples.fve")
    monkeypatch.setitem(UNMEASURED, "examples.fve", "probe: no experiment decodes the worked examples")
    res = r.evaluate(_case(worked, PROBE))
    assert res.status == "error" and "not measured yet: probe: no experiment decodes" in res.message


def test_runner_skips_only_on_experiment_skipped(registry):
    """ExperimentSkipped (a user-supplied input is absent) -> SKIPPED with its reason; any other error ERRORs."""
    from nla_repro.experiments.base import ExperimentSkipped

    case = _case("recipe-qwen-pos99-greedy", PROBE_RAISE)
    PROBE_EXC[:] = [ExperimentSkipped("probe: no worked-example text for qwen2.5-7b-L20 (pass --examples-dir)")]
    res = ClaimRunner(registry, cache=None).evaluate(case)
    assert res.status == "skipped" and "no worked-example text" in res.message and res.measured is None
    PROBE_EXC[:] = [FileNotFoundError("probe: examples dir vanished")]
    res = ClaimRunner(registry, cache=None).evaluate(case)
    assert res.status == "error" and "FileNotFoundError: probe: examples dir vanished" in res.message
