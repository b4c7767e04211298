"""REPORT.md regeneration from cached results, and the typed result records it reads."""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import pytest

from nla_repro.cache import CacheKey, ResultsCache
from nla_repro.report import FIGURE_SPECS, write_report
from nla_repro.results import (
    ClaimResult,
    ExperimentResult,
    ResultValidationError,
    dump_records,
    load_records,
    record_from_dict,
    records_payload,
)

PROV = {"git_hash": "0" * 40, "git_dirty": False, "python": "3.11.7", "torch": "2.13.0", "device": "cpu"}
CONV = {"denominator": "raw_mean", "failure_convention": "TRAINING_DROP", "decoding": "greedy",
        "layer_convention": "block K output = hidden_states[K+1]"}


def _exp(experiment, figures, pair="gemma3-27b-L41", n=1000, conventions=None):
    return ExperimentResult(experiment=experiment, pair=pair, protocol={"eval_set": "ufw-100k", "seed": 42},
                            conventions=dict(conventions or CONV), figures=figures, n=n, provenance=PROV)


def _claim(claim_id, source, status="pass", measured=0.775, published=0.763, **kw):
    d = dict(claim_id=claim_id, source=source, pair="gemma3-27b-L41", published=published, measured=measured,
             tolerance=0.02, comparator="approx", status=status, message=kw.pop("message", ""),
             ci=kw.pop("ci", (0.761, 0.789)), protocol_note=kw.pop("protocol_note", "1000 acts, UFW held-out"),
             conventions={"denominator": "raw_mean", "decoding": "greedy"}, provenance=PROV)
    d.update(kw)
    return ClaimResult(**d)


def fixture_records():
    exps = [
        _exp("quote_ban", {"fve_by_condition": [["none", 0.775], ["ban \"", 0.77], ["ban \" and '", {"fve": 0.603,
                                                                                                "ci": [0.58, 0.62]}]]}),
        _exp("redaction", {"fve_by_variant": {"prose only": -0.095, "spans only, marks kept": 0.506,
                                              "spans -> REDACTED": -0.769}}),
        _exp("best_of_n", {"best_of_n": {"n": [1, 2, 3, 5, 10], "fve": [0.775, 0.784, 0.789, 0.794, 0.799]}},
             conventions={**CONV, "decoding": "temperature=1.0, top_p=1.0"}),
        _exp("cross_family", {"transfer_matrix": {"sources": ["qwen7", "gemma27"], "targets": ["qwen7", "gemma27"],
                                                     "fve": [[0.748, None], [0.592, 0.769]]}}, pair="4x4"),
        # has a result but not the figure data the report needs:
        _exp("quote_ban", {"ban_leak_rate": 0.0}, pair="qwen2.5-7b-L20"),
        # ridge_baseline deliberately absent
    ]
    claims = [
        _claim("gemma_fve", "000 §1"),
        _claim("qwen_fve", "000 §1", measured=0.752, published=0.752, pair="qwen2.5-7b-L20", tolerance=0.001),
        _claim("var_baseline", "000 §1", measured=0.0575, published=0.0579, tolerance={"atol": 0.0005, "rtol": 0.0}),
        _claim("spans_only", "001 §2", measured=0.41, published=0.506, status="fail",
               message="measured 0.41 outside 0.506 ± 0.02"),
        _claim("quote_ban_range", "001 §6", published=[0.55, 0.68], measured=0.616, comparator="in_range",
               tolerance=None, ci=None),
        _claim("llama_diag", "003 §1", status="skipped", measured=None, ci=None,
               message="needs nvidia 4xH200 and the llama70 checkpoint; none staged"),
        _claim("two_tier", "002 abstract", status="not_testable", measured=None, ci=None, published="uniform",
               comparator="none", tolerance="qualitative", message="qualitative claim with no numeric protocol"),
        _claim("release_card_fve", "release card", measured=0.77, published=0.763),
    ]
    return exps, claims


def _write_cache(root: Path) -> ResultsCache:
    rc = ResultsCache(root)
    exps, claims = fixture_records()
    for e in exps:
        rc.put(CacheKey({"step": f"exp-{e.experiment}", "checkpoint": e.pair, "protocol": e.protocol}),
               records_payload([e]))
    rc.put(CacheKey({"step": "claims", "checkpoint": "all"}), records_payload(claims))
    rc.put(CacheKey({"step": "activations", "checkpoint": "x"}), {"not": "a record"})  # ignored
    return rc


@pytest.fixture
def cache_root(tmp_path):
    root = tmp_path / "cache" / "results"
    _write_cache(root)
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One report written from the fixture cache, shared by the read-only content tests."""
    base = tmp_path_factory.mktemp("rendered")
    root = base / "cache" / "results"
    _write_cache(root)
    out = base / "REPORT.md"
    summary = write_report(root, out)
    return summary, out, out.read_text()


def _snapshot(out: Path, figs: Path) -> dict[str, bytes]:
    snap = {"REPORT.md": out.read_bytes()}
    for p in sorted(figs.glob("*.png")):
        snap[p.name] = p.read_bytes()
    return snap


def test_report_regenerates_identically(rendered, tmp_path):
    s1, out, _ = rendered
    cache_root = out.parent / "cache" / "results"
    snap1 = _snapshot(out, out.parent / "report_figures")
    for p in s1.figures:  # force a real re-render, not an unchanged-file shortcut
        p.unlink()
    t0 = time.perf_counter()
    s2 = write_report(ResultsCache(cache_root), out)
    elapsed = time.perf_counter() - t0
    snap2 = _snapshot(out, out.parent / "report_figures")
    assert snap1 == snap2
    assert len(s1.figures) == len(s2.figures) == 4
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in s1.figures)
    assert elapsed < 20, f"report took {elapsed:.1f}s"
    # a copy of the cache in another place gives the same bytes (no absolute paths, no clock in the output)
    other = tmp_path / "elsewhere"
    shutil.copytree(cache_root.parent, other / "cache")
    out2 = other / "site" / "REPORT.md"
    write_report(other / "cache" / "results", out2)
    assert _snapshot(out2, out2.parent / "report_figures") == snap1


def test_png_metadata_is_fixed(rendered):
    from PIL import Image

    s = rendered[0]
    assert s.figures
    for p in s.figures:
        info = Image.open(p).info
        assert info.get("Software") == "nla-repro report"
        assert not any("time" in k.lower() or "date" in k.lower() for k in info)


def test_report_contains_expected_rows(rendered):
    summary, _, text = rendered
    assert summary.n_claims == 8 and summary.n_experiments == 5
    assert summary.status_counts == {"pass": 5, "fail": 1, "error": 0, "skipped": 1, "not_testable": 1}
    # provenance header from the recorded fingerprint
    assert "## Provenance" in text and "0" * 40 in text and "| torch | 2.13.0 |" in text
    # one table per seed, in order, each row under its seed
    heads = [ln for ln in text.splitlines() if ln.startswith("### Seed") or ln.startswith("### Other")]
    assert heads == ["### Seed 000", "### Seed 001", "### Other sources (no seed number)"]
    sec = text.split("### Seed 000")[1].split("### Seed 001")[0]
    assert ("| `gemma_fve` (000 §1) | 0.763 | 0.775 | ±0.02 | approx | pass | [0.761, 0.789] | gemma3-27b-L41 "
            "| raw_mean / greedy | 1000 acts, UFW held-out |") in sec
    assert "| `var_baseline` (000 §1) | 0.0579 | 0.0575 | atol=0.0005, rtol=0 |" in sec
    assert "`qwen_fve`" in sec and "`spans_only`" not in sec
    assert "Denominator(s) in this table: raw_mean. Decoding mode(s): greedy." in sec
    sec1 = text.split("### Seed 001")[1].split("### Other")[0]
    assert "| `spans_only` (001 §2) | 0.506 | 0.41 | ±0.02 | approx | **FAIL** |" in sec1
    assert "| `quote_ban_range` (001 §6) | [0.55, 0.68] | 0.616 | — | in_range | pass | — |" in sec1
    assert "measured 0.41 outside 0.506 ± 0.02" in sec1
    assert "`release_card_fve` (release card)" in text.split("### Other sources")[1]
    # untested claims with reasons, not in the seed tables
    untested = text.split("## Claims not tested")[1].split("## ")[0]
    assert ("| `two_tier` | 002 abstract | gemma3-27b-L41 | not_testable | qualitative claim with no numeric "
            "protocol |") in untested
    assert "| `llama_diag` | 003 §1 | gemma3-27b-L41 | skipped | needs nvidia 4xH200" in untested
    assert "### Seed 002" not in text and "### Seed 003" not in text
    # experiments table names every convention
    assert ("| best_of_n | gemma3-27b-L41 | 1000 | raw_mean | TRAINING_DROP | temperature=1.0, top_p=1.0 | "
            "block K output = hidden_states[K+1] |") in text
    # figures: links relative, captions name denominator and decoding
    assert "![Best-of-N FVE curve — gemma3-27b-L41](report_figures/best_of_n_curve__gemma3-27b-L41.png)" in text
    assert "Denominator: raw_mean. Decoding: temperature=1.0, top_p=1.0." in text


def test_missing_figures_are_reported_not_dropped(rendered):
    s, out, text = rendered
    not_drawn = text.split("### Figures not drawn")[1]
    assert ("| Ridge FVE vs n | no cached ExperimentResult for experiment `ridge_baseline` or `ridge_scaling` |"
            in not_drawn)
    assert "FVE by quote-ban condition — qwen2.5-7b-L20" in not_drawn
    assert "has no figures[`fve_by_condition`] (has: ban_leak_rate)" in not_drawn
    assert {n for n, _ in s.skipped_figures} == {"Ridge FVE vs n", "FVE by quote-ban condition — qwen2.5-7b-L20"}
    assert not list((out.parent / "report_figures").glob("ridge_scaling__*.png"))
    assert len(list((out.parent / "report_figures").glob("*.png"))) == 4


def test_figure_appears_once_its_result_is_cached_and_stale_pngs_go(tmp_path):
    out = tmp_path / "REPORT.md"
    cache_root = tmp_path / "results"
    rc = ResultsCache(cache_root)
    ridge = _exp("ridge_baseline", {"ridge_scaling": {"n_pairs": [1000, 2000, 5000, 10000, 19995],
                                                     "fve": {"gemma->qwen": [0.3, 0.38, 0.45, 0.5, 0.55],
                                                             "qwen->gemma": [0.2, 0.25, 0.3, 0.33, 0.36]},
                                                     "text_route": {"gemma->qwen": 0.592}}}, pair="gemma27-qwen7")
    k = CacheKey({"step": "exp-ridge", "checkpoint": "gq"})
    rc.put(k, records_payload([ridge]))
    s = write_report(cache_root, out)
    png = tmp_path / "report_figures" / "ridge_scaling__gemma27-qwen7.png"
    assert png in s.figures and png.is_file()
    assert "Ridge FVE vs n" not in [n for n, _ in s.skipped_figures]
    rc.clear(step="exp-ridge")
    write_report(cache_root, out)
    assert not png.exists(), "a figure whose result is gone must not linger next to the report"
    assert "no cached ExperimentResult for experiment `ridge_baseline`" in out.read_text()


def test_malformed_figure_data_is_reported(tmp_path):
    bad = _exp("best_of_n", {"best_of_n": {"n": [1, 2, 3], "fve": [0.7, 0.8]}})
    s = write_report([bad], tmp_path / "REPORT.md")
    text = (tmp_path / "REPORT.md").read_text()
    assert s.figures == []
    assert "figure data malformed: best_of_n: len(n)=3 != len(fve)=2" in text


def test_report_does_not_recompute_and_skips_corrupt_entries(cache_root, tmp_path, caplog):
    rc = ResultsCache(cache_root)
    for step in ("exp-quote_ban", "exp-redaction", "exp-best_of_n"):  # fewer figures: faster
        rc.clear(step=step)
    before = [(i.digest, i.created_at) for i in rc.list()]
    claims_entry = next(e for e in rc.iter_entries("claims"))
    payload = claims_entry.path / "payload.json"
    payload.write_text(payload.read_text().replace("0.775", "0.999"))  # tamper with a number
    with caplog.at_level(logging.WARNING, logger="nla_repro.cache"):
        s = write_report(cache_root, tmp_path / "REPORT.md")
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert s.n_claims == 0, "a tampered entry must not reach the report"
    assert "0.999" not in (tmp_path / "REPORT.md").read_text()
    after = [(i.digest, i.created_at) for i in ResultsCache(cache_root).list()]
    assert set(after) == set(before) - {(claims_entry.digest, claims_entry.meta["created_at"])}


def test_results_dir_source_matches_cache_source(rendered, tmp_path):
    exps, claims = fixture_records()
    rdir = tmp_path / "results_json"
    dump_records(rdir / "claims.json", claims)
    dump_records(rdir / "exps" / "all.json", exps)
    a = rendered[1]
    b = tmp_path / "b" / "REPORT.md"
    write_report(rdir, b)
    ta, tb = a.read_text().split("## Summary")[1], b.read_text().split("## Summary")[1]
    assert ta == tb
    assert _snapshot(a, a.parent / "report_figures") == _snapshot(b, b.parent / "report_figures") | {
        "REPORT.md": a.read_bytes()}


def test_conflicting_results_are_flagged(tmp_path):
    c1 = _claim("gemma_fve", "000 §1", measured=0.775, provenance={**PROV, "git_hash": "1" * 40})
    c2 = _claim("gemma_fve", "000 §1", measured=0.741, status="fail", message="off",
                provenance={**PROV, "git_hash": "2" * 40})
    write_report([c2, c1, c1], tmp_path / "REPORT.md")
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Conflicting results" in text
    assert "| `gemma_fve` | gemma3-27b-L41 | 0.741 (fail); 0.775 (pass) |" in text
    assert "**2 different environments**" in text


def test_figures_state_denominator_and_decoding():
    from matplotlib.figure import Figure

    exps, _ = fixture_records()
    exps.append(_exp("ridge_baseline", {"ridge_scaling": {"n_pairs": [1, 2], "fve": {"a->b": [0.1, 0.2]},
                                                          "text_route": {"a->b": float("nan")}}}))
    for spec in FIGURE_SPECS:
        er = next(e for e in exps if e.experiment in spec.experiments and spec.figure_key in e.figures)
        fig = Figure()
        spec.draw(fig, er.figures[spec.figure_key], er)
        texts = []
        for ax in fig.axes:
            texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        joined = " ".join(texts)
        assert f"denominator: {er.conventions['denominator']}" in joined, (spec.name, joined)
        assert er.conventions["decoding"] in joined, (spec.name, joined)


# ---------------------------------------------------------------------------------------------------------
# result records


def test_records_json_roundtrip_exact():
    exps, claims = fixture_records()
    for r in [*exps, *claims]:
        back = record_from_dict(json.loads(r.to_json()))
        assert back == r and type(back) is type(r)
    c = _claim("x", "000 §1", measured=0.1 + 0.2, ci=(1 / 3, 2 / 3))
    back = ClaimResult.from_json(c.to_json())
    assert back.measured == 0.1 + 0.2 and back.ci == (1 / 3, 2 / 3) and isinstance(back.ci, tuple)
    assert c.seed == "000" and _claim("y", "release card").seed is None


def test_numpy_values_are_normalised():
    np = pytest.importorskip("numpy")
    e = _exp("best_of_n", {"best_of_n": {"n": np.arange(1, 4), "fve": np.array([0.7, 0.8, 0.9], np.float32)}},
             n=np.int64(3))
    assert e.figures["best_of_n"]["n"] == [1, 2, 3] and isinstance(e.n, int)
    json.loads(e.to_json())
    c = _claim("x", "000", measured=np.float32(0.5))
    assert isinstance(c.measured, float)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(status="passed"), "status"),
        (dict(comparator="~"), "comparator"),
        (dict(status="pass", measured=None), "measured"),
        (dict(status="pass", measured=float("nan")), "measured"),
        (dict(status="skipped", measured=None, message=""), "message"),
        (dict(ci=(0.8, 0.7)), "ci"),
        (dict(ci=(0.8,)), "ci"),
        (dict(pair=""), "pair"),
        (dict(tolerance={"abs": 0.1}), "tolerance"),
        (dict(published={"x": 1}), "published"),
        (dict(measured="0.7"), "measured"),
    ],
)
def test_claim_validation_errors_name_the_field(change, match):
    with pytest.raises(ResultValidationError, match=match):
        _claim("c", "000 §1", **change)


def test_experiment_validation_errors_name_the_field():
    with pytest.raises(ResultValidationError, match="conventions.denominator"):
        _exp("e", {}, conventions={k: v for k, v in CONV.items() if k != "denominator"})
    with pytest.raises(ResultValidationError, match="conventions.decoding"):
        _exp("e", {}, conventions={**CONV, "decoding": ""})
    with pytest.raises(ResultValidationError, match="'n'"):
        _exp("e", {}, n=-1)
    with pytest.raises(ResultValidationError, match="figures.x"):
        _exp("e", {"x": "text"})
    d = _exp("e", {}).to_dict()
    d["figurse"] = {}
    with pytest.raises(ResultValidationError, match="unknown field"):
        ExperimentResult.from_dict(d)
    d = _exp("e", {}).to_dict()
    del d["pair"]
    with pytest.raises(ResultValidationError, match="missing required field"):
        ExperimentResult.from_dict(d)
    with pytest.raises(ResultValidationError, match="record_type"):
        record_from_dict({"record_type": "other"})


def test_load_records_names_bad_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"records": [{"record_type": "claim_result", "claim_id": "x"}]}))
    with pytest.raises(ResultValidationError, match="a.json"):
        load_records(tmp_path)
    assert math.isfinite(0.0)


def test_claims_sort_naturally_within_a_seed(tmp_path):
    cs = [_claim(f"c{i}", f"000 §{i}") for i in (10, 2, 1)]
    write_report(cs, tmp_path / "REPORT.md")
    text = (tmp_path / "REPORT.md").read_text()
    assert text.index("(000 §1)") < text.index("(000 §2)") < text.index("(000 §10)")
