"""Tests for the published-claims registry (nla_repro.claims): loading, validation, comparators.

Pure CPU, no models. Numbers in the comparator tests are real numbers from the seeds.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from nla_repro.claims import (
    COMPARATORS,
    EXPERIMENTS,
    RELEASED_PAIRS,
    ClaimRegistryError,
    claims_for,
    counts_per_experiment,
    counts_per_seed,
    get_claim,
    judge,
    load_claim_file,
    load_claims,
)

SEED_FILES = {
    "000": "000_882cf792d18d2b7b.txt",
    "001": "001_dcd5dc0617b2a418.txt",
    "002": "002_7daf1bead6ef71e6.txt",
    "003": "003_88b0eb5d524bf97d.txt",
    "004": "004_eb59a18d8dcc3791.txt",
}


@pytest.fixture(scope="module")
def claims():
    return load_claims()


# ============================================================================ registry


def test_registry_loads_with_enough_claims(claims):
    assert len(claims) >= 80


def test_every_seed_contributes(claims):
    per_seed = counts_per_seed(claims)
    for seed in SEED_FILES:
        assert per_seed.get(seed, 0) > 0, f"seed {seed} contributes no claims"
    assert per_seed.get("recipe", 0) > 0
    assert sum(per_seed.values()) == len(claims)


def test_seed_file_names_match_seeds(claims):
    for c in claims:
        if c.seed in SEED_FILES:
            assert c.seed_file == SEED_FILES[c.seed], c.id
            assert c.id.startswith(f"s{c.seed}-"), c.id
            assert c.source.startswith(c.seed), c.id


def test_seed_files_exist_when_shared_dir_present(claims):
    seeds_dir = Path("/work/shared/seeds")
    if not seeds_dir.is_dir():
        pytest.skip(f"{seeds_dir} not present on this machine; file names checked against SEED_FILES")
    present = {p.name for p in seeds_dir.iterdir()}
    for name in SEED_FILES.values():
        assert name in present


def test_ids_unique(claims):
    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids))


def test_every_experiment_and_comparator_known(claims):
    for c in claims:
        assert c.experiment in EXPERIMENTS, c.id
        assert c.comparator in COMPARATORS, c.id
    per_exp = counts_per_experiment(claims)
    assert sum(per_exp.values()) == len(claims)


def test_testable_claims_have_rationale_and_untestable_have_reason(claims):
    for c in claims:
        if c.testable:
            assert c.tolerance_rationale and c.tolerance_rationale.strip(), c.id
        else:
            assert c.reason and c.reason.strip(), c.id


def test_any_pair_claims_have_generalised_form_and_origin(claims):
    any_pair = [c for c in claims if c.any_pair]
    assert len(any_pair) >= 10
    for c in any_pair:
        assert c.published_on and all(p in RELEASED_PAIRS for p in c.published_on), c.id
        if c.testable:
            assert c.generalised is not None, c.id


def test_structural_any_pair_claims_present(claims):
    ids = {c.id for c in claims if c.any_pair}
    for needed in (
        "s000-shuffled-null-negative",
        "s003-shuffled-nulls-le",
        "s000-additive-layer-bound",
        "s000-bon-diminishing",
        "s000-verbatim-median-run",
        "s000-nmse-equals-2-1-cos",
        "s000-greedy-bit-reproducible",
        "s000-prose-only-predict-mean",
        "s002-random-gaussian-le-zero",
    ):
        assert needed in ids, needed


def test_cross_family_cells_name_both_pairs(claims):
    cells = [c for c in claims if c.id.startswith("s003-cell-")]
    assert len(cells) == 16
    for c in cells:
        assert c.av_pair in RELEASED_PAIRS and c.ar_pair in RELEASED_PAIRS
        assert c.av_pair in c.pairs() and c.ar_pair in c.pairs()


def test_published_values_satisfy_their_own_comparator(claims):
    """A typo in a bound/interval/tolerance shows up as the seed's own number failing its claim."""
    checked = 0
    for c in claims:
        if not c.testable or c.published is None:
            continue
        measured = [c.published, c.published] if c.comparator == "bits_equal" else c.published
        v = judge(c, measured, form="published")
        assert v.status == "pass", v.message
        checked += 1
    assert checked >= 300


def test_protocols_note_the_differences(claims):
    p002 = get_claim("s002-qwen-fve-overall").protocol
    assert "last" in p002["positions"] and "per_vector" in p002["denominator"]
    assert "T=1.0" in p002["decoding"] and p002["samples_per_activation"] == 3
    p003 = get_claim("s003-cell-gemma27-gemma27").protocol
    assert p003["seed"] == 1018 and p003["n"] == 2000 and "raw_mean" in p003["denominator"]
    assert "≤300" in p003["decoding"] and "CI95" in p003["ci"]
    p000 = get_claim("s000-gemma27-fve-train-denom").protocol
    assert p000["seed"] == 42 and p000["n"] == 1000 and p000["decoding"] == "greedy"


def test_claims_for_pairs(claims):
    qwen = {c.id for c in claims_for("qwen2.5-7b-L20", claims)}
    assert "s000-qwen-fve-exact" in qwen
    assert "s003-cell-qwen-llama70" in qwen  # as AV
    assert "s003-cell-llama70-qwen" in qwen  # as AR
    assert "s000-shuffled-null-negative" in qwen  # any_pair
    assert "s002-gemma12-fve-overall" not in qwen
    small = claims_for("smollm2-135m-L20", claims)
    assert small and all(c.any_pair for c in small)
    llama = {c.id for c in claims_for("llama3.3-70b-L53", claims)}
    assert "s003-cell-llama70-llama70" in llama and "recipe-llama70-config" in llama


def test_quotes_are_short(claims):
    for c in claims:
        assert len(c.quote.split()) <= 25, c.id


# ============================================================================ comparators


def _c(cid):
    return get_claim(cid)


def test_eq_printed_pass_and_fail():
    c = _c("s000-qwen-fve-exact")  # 0.752 vs 0.752 — exact
    assert c.tolerance == pytest.approx(0.0005)
    assert judge(c, 0.752).status == "pass"
    assert judge(c, 0.7524).status == "pass"
    v = judge(c, 0.7526)
    assert v.status == "fail" and "0.752" in v.message
    # integers: '975' banned tokens -> half a unit is 0.5
    n = _c("s000-gemma27-ban-dq-ntokens")
    assert judge(n, 975).status == "pass"
    assert judge(n, 976).status == "fail"


def test_eq_printed_keeps_trailing_zeros(tmp_path):
    c = _c("recipe-qwen-mse-scale")
    assert c.form.printed == "59.86652" and c.tolerance == pytest.approx(0.000005)
    # a printed "0.7300" claims four decimals: half a unit is 0.00005, not 0.005 as for "0.73"
    e = dict(_GOOD_CLAIM, id="s000-trailing-zeros", published="0.7300", comparator="eq_printed")
    del e["tolerance"]
    (z,) = load_claim_file(_registry(tmp_path, e))
    assert z.form.printed == "0.7300" and z.tolerance == pytest.approx(0.00005)
    assert judge(z, 0.73004).status == "pass" and judge(z, 0.7301).status == "fail"
    c2 = _c("s001-l41-nmse")  # printed "0.013"
    assert c2.tolerance == pytest.approx(0.0005)
    assert judge(c2, 0.0130).status == "pass"
    assert judge(c2, 0.0136).status == "fail"


def test_abs_tol_third_decimal_pass_and_fail():
    c = _c("s000-gemma27-var-eval-vs-train")  # 0.0575 vs 0.0579 to the third decimal
    v = judge(c, 0.0575)
    assert v.status == "pass", v.message
    assert "0.0579" in v.message and "0.0575" in v.message and "0.001" in v.message and "000_" in v.message
    assert judge(c, 0.0565).status == "fail"


def test_abs_tol_elementwise_and_shape_errors():
    c = _c("s002-qwen-recall-by-cat")  # [0.578, 0.351, 0.088, 0.325] ±0.05
    assert judge(c, [0.60, 0.33, 0.10, 0.30]).status == "pass"
    assert judge(c, [0.60, 0.33, 0.20, 0.30]).status == "fail"
    v = judge(c, 0.5)
    assert v.status == "fail" and "shape" in v.message


def test_abs_tol_consistent_not_exact():
    c = _c("s000-gemma27-fve-vs-released")  # 0.775 vs released 0.763 with ±0.02 eval noise
    assert judge(c, 0.775).status == "pass"
    assert judge(c, 0.790).status == "fail"


def test_rel_tol_pass_and_fail():
    c = _c("s000-gemma27-spans-per-decode")  # 9.4 spans/decode ±5%
    assert judge(c, 9.8).status == "pass"
    assert judge(c, 10.0).status == "fail"


def test_le_pass_and_fail_published_form():
    c = _c("s003-shuffled-nulls-le")  # all nulls ≤ −0.66
    nulls = [-0.66, -0.98, -0.9, -0.75]
    assert judge(c, nulls, pair="llama3.3-70b-L53").status == "pass"
    v = judge(c, nulls + [-0.64], pair="llama3.3-70b-L53")
    assert v.status == "fail" and v.form == "published"


def test_generalised_form_used_for_small_pairs():
    c = _c("s000-shuffled-null-negative")  # published ≤ −0.66 on gemma27/qwen; generalised ≤ −0.5
    assert judge(c, -0.6).status == "pass"  # pair=None -> generalised
    v = judge(c, -0.6, pair="smollm2-135m")
    assert v.status == "pass" and v.form == "generalised" and "original published -0.66" in v.message
    v = judge(c, -0.6, pair="gemma3-27b-L41")
    assert v.status == "fail" and v.form == "published"
    assert judge(c, -0.6, pair="llama3.3-70b-L53").form == "generalised"  # not where it was published
    assert judge(c, -0.45).status == "fail"


def test_ge_pass_and_fail():
    c = _c("s003-cross-clears-0.51")
    assert judge(c, [0.587, 0.520, 0.543, 0.560, 0.514]).status == "pass"
    assert judge(c, [0.587, 0.505]).status == "fail"


def test_in_interval_ci95_pass_and_fail():
    c = _c("s003-cell-gemma27-gemma27")  # 0.769 [0.764, 0.775]
    assert judge(c, 0.769).status == "pass"
    assert judge(c, 0.775).status == "pass"
    assert judge(c, 0.776).status == "fail"
    assert judge(c, 0.763).status == "fail"


def test_monotone_pass_and_fail():
    c = _c("s000-gemma27-filler-monotone")  # strictly decreasing −0.09 → −0.76
    assert judge(c, [-0.09, -0.35, -0.53, -0.76]).status == "pass"
    assert judge(c, [-0.09, -0.53, -0.35, -0.76]).status == "fail"
    assert judge(c, [-0.09, -0.35, -0.35, -0.76]).status == "fail"  # strict
    b = _c("s000-bon-monotone")  # non-decreasing by construction
    assert judge(b, [0.772, 0.784, 0.784, 0.794, 0.799]).status == "pass"
    assert judge(b, [0.772, 0.784, 0.780, 0.794, 0.799]).status == "fail"
    d = _c("s000-bon-diminishing")  # generalised: decreasing with 0.005 slack
    assert judge(d, [0.012, 0.0085, 0.0068, 0.005]).status == "pass"
    assert judge(d, [0.012, 0.0085, 0.020, 0.005]).status == "fail"
    assert judge(d, [0.012]).status == "fail"  # too short to be a sequence


def test_ratio_ge_pass_and_fail():
    c = _c("s004-structured-opener-ratio")  # 80% chat vs 7% non-chat, ratio ≥ 5
    assert judge(c, (0.80, 0.07)).status == "pass"
    assert judge(c, (0.30, 0.07)).status == "fail"
    assert judge(c, 11.4).status == "pass"
    assert judge(c, (0.80, 0.0)).status == "fail"


def _write(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return p


_GOOD_CLAIM = dict(
    id="s000-test-claim",
    source="000 §1",
    quote="Gemma-27B fve_nrm is 0.775.",
    metric="fve_nrm[train]",
    published=0.775,
    comparator="abs_tol",
    tolerance=0.02,
    tolerance_rationale="seed's own ±0.02",
    scope=["gemma3-27b-L41"],
    experiment="corroboration",
    figure="fve_nrm.train",
    protocol="p",
)


def _registry(tmp_path: Path, *claims: dict, name: str = "s000.yaml", seed: str = "000") -> Path:
    doc = {
        "seed": seed,
        "seed_file": "000_882cf792d18d2b7b.txt",
        "protocols": {"p": {"eval_set": "ufw 1000", "decoding": "greedy"}},
        "claims": list(claims),
    }
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p


def test_ratio_le_pass_and_fail(tmp_path):
    c = dict(_GOOD_CLAIM, id="s000-ratio-le", comparator="ratio_le", bound=1.0, published=0.984,
             metric="nmse_adjacent_over_additive_bound")
    del c["tolerance"]
    (claim,) = load_claim_file(_registry(tmp_path, c))
    assert judge(claim, (0.0187, 0.019)).status == "pass"
    assert judge(claim, (0.0200, 0.019)).status == "fail"


def test_bits_equal_pass_and_fail():
    c = _c("s000-greedy-bit-reproducible")  # NMSE 0.013022 on both runs
    assert judge(c, [0.013022, 0.013022]).status == "pass"
    assert judge(c, [np.float32(0.013022), np.float32(0.013022)]).status == "pass"
    per_sample = np.linspace(0.005, 0.05, 1000, dtype=np.float32)
    assert judge(c, [per_sample, per_sample.copy()]).status == "pass"
    v = judge(c, [0.013022, float(np.nextafter(0.013022, 1.0))])
    assert v.status == "fail" and "differs" in v.message
    assert judge(c, [np.float32(0.013022), np.float64(np.float32(0.013022))]).status == "fail"  # dtype
    assert judge(c, [0.013022]).status == "fail"  # one run is not a reproducibility check


def test_equals_pass_and_fail():
    c = _c("recipe-qwen-injection-token")
    assert judge(c, ("㈎", 149705)).status == "pass"
    assert judge(c, ["㈜", 149705]).status == "fail"
    g = _c("s002-gemma27-agent-to-chat")
    assert judge(g, "chat").status == "pass"
    assert judge(g, "agent").status == "fail"
    cfg = _c("recipe-gemma27-config")
    assert judge(cfg, np.array([62, 41, 42, 42, 5376, 60000])).status == "pass"
    assert judge(cfg, [62, 41, 42, 43, 5376, 60000]).status == "fail"


def test_not_testable_verdict(claims):
    nt = [c for c in claims if not c.testable]
    assert nt
    for c in nt:
        v = judge(c, 0.5)
        assert v.status == "not_testable" and c.reason in v.message


@pytest.mark.parametrize("bad", [float("nan"), [0.1, float("nan")], None, float("inf"), np.array([np.nan])])
def test_nan_measured_is_a_clear_fail(bad):
    c = _c("s000-gemma27-fve-train-denom")
    v = judge(c, bad)
    assert v.status == "fail"
    assert "NaN" in v.message and "0.775" in v.message and "s000-gemma27-fve-train-denom" in v.message


def test_verdict_message_has_all_parts():
    c = _c("s003-cell-gemma12-llama70")
    v = judge(c, 0.52)
    assert v.status == "pass"
    for part in ("0.514", "0.52", "[0.499, 0.529]", "003 §2", "003_88b0eb5d524bf97d.txt"):
        assert part in v.message, part
    assert v.published == 0.514 and v.measured == 0.52 and "0.499" in v.tolerance


def test_every_used_comparator_is_exercised(claims):
    used = {c.comparator for c in claims}
    exercised = {"eq_printed", "abs_tol", "rel_tol", "le", "ge", "in_interval", "monotone", "ratio_ge",
                 "ratio_le", "bits_equal", "equals", "not_testable"}
    assert used <= exercised, used - exercised


# ============================================================================ malformed entries


def test_good_tmp_registry_loads(tmp_path):
    (c,) = load_claim_file(_registry(tmp_path, dict(_GOOD_CLAIM)))
    assert c.id == "s000-test-claim" and c.protocol["eval_set"] == "ufw 1000" and c.tolerance == 0.02


def _drop(d, k):
    d = dict(d)
    del d[k]
    return d


@pytest.mark.parametrize(
    "entry, field",
    [
        (_drop(_GOOD_CLAIM, "metric"), "metric"),
        (_drop(_GOOD_CLAIM, "source"), "source"),
        (_drop(_GOOD_CLAIM, "tolerance"), "tolerance"),
        (_drop(_GOOD_CLAIM, "tolerance_rationale"), "tolerance_rationale"),
        (dict(_GOOD_CLAIM, comparator="approx"), "comparator"),
        (dict(_GOOD_CLAIM, experiment="vibes"), "experiment"),
        (dict(_GOOD_CLAIM, scope=["gpt2-L5"]), "scope"),
        (dict(_GOOD_CLAIM, scope=[]), "scope"),
        (dict(_GOOD_CLAIM, tolerance=-0.1), "tolerance"),
        (dict(_GOOD_CLAIM, tolerance="0.02"), "tolerance"),
        (dict(_GOOD_CLAIM, comparator="eq_printed", published=0.88), "published"),
        (dict(_GOOD_CLAIM, comparator="le"), "bound"),
        (dict(_GOOD_CLAIM, comparator="in_interval", interval=[0.8, 0.7]), "interval"),
        (dict(_GOOD_CLAIM, comparator="monotone", published=[1, 2]), "direction"),
        (dict(_GOOD_CLAIM, comparator="monotone", published=[1, 2], direction="sideways"), "direction"),
        (dict(_GOOD_CLAIM, comparator="not_testable"), "reason"),
        (dict(_GOOD_CLAIM, scope="any_pair", published_on=["gemma3-27b-L41"]), "generalised"),
        (dict(_GOOD_CLAIM, scope="any_pair", generalised={"comparator": "le", "bound": -0.5}), "published_on"),
        (dict(_GOOD_CLAIM, scope="any_pair", published_on=["gemma3-27b-L41"], generalised={"comparator": "le"}),
         "generalised.bound"),
        (dict(_GOOD_CLAIM, generalised={"comparator": "le", "bound": 0}), "generalised"),
        (dict(_GOOD_CLAIM, protocol="nope"), "protocol"),
        (dict(_GOOD_CLAIM, protocol={"eval_set": "x"}), "protocol.decoding"),
        (dict(_GOOD_CLAIM, quote=" ".join(["word"] * 26)), "quote"),
        (dict(_GOOD_CLAIM, tolerence=0.02), "tolerence"),
        (dict(_GOOD_CLAIM, av_pair="gemma3-27b-L41"), "ar_pair"),
        (dict(_GOOD_CLAIM, av_pair="gemma3-27b-L41", ar_pair="qwen2.5-7b-L20"), "ar_pair"),
        (dict(_GOOD_CLAIM, id="s001-wrong-prefix"), "id"),
        (dict(_GOOD_CLAIM, id="Bad Id"), "id"),
        (dict(_GOOD_CLAIM, source="001 §1"), "source"),
        (dict(_GOOD_CLAIM, comparator="abs_tol", published="high"), "published"),
    ],
)
def test_malformed_entry_names_file_id_and_field(tmp_path, entry, field):
    path = _registry(tmp_path, entry)
    with pytest.raises(ClaimRegistryError) as ei:
        load_claim_file(path)
    err = ei.value
    assert err.field == field, str(err)
    assert str(path) in str(err) and repr(field) in str(err)
    if isinstance(entry.get("id"), str) and entry["id"].startswith("s0"):
        assert entry["id"] in str(err)


def test_duplicate_id_within_file(tmp_path):
    path = _registry(tmp_path, dict(_GOOD_CLAIM), dict(_GOOD_CLAIM))
    with pytest.raises(ClaimRegistryError, match=r"s000-test-claim.*'id'.*duplicate"):
        load_claim_file(path)


def test_duplicate_id_across_files(tmp_path):
    _registry(tmp_path, dict(_GOOD_CLAIM), name="a.yaml")
    _registry(tmp_path, dict(_GOOD_CLAIM), name="b.yaml")
    with pytest.raises(ClaimRegistryError, match=r"b\.yaml.*s000-test-claim.*duplicate id, first defined in .*a\.yaml"):
        load_claims(tmp_path)


def test_dangling_same_as(tmp_path):
    _registry(tmp_path, dict(_GOOD_CLAIM, same_as="s000-missing"))
    with pytest.raises(ClaimRegistryError, match=r"'same_as'"):
        load_claims(tmp_path)


def test_unparseable_yaml_and_bad_file_header(tmp_path):
    p = _write(tmp_path, "broken.yaml", "seed: '000'\nclaims: [ {id: x, metric: fve_nrm[train] } \n")
    with pytest.raises(ClaimRegistryError, match=r"broken\.yaml.*not parseable YAML"):
        load_claim_file(p)
    p2 = _write(tmp_path, "noseed.yaml", "seed_file: x.txt\nclaims: []\n")
    with pytest.raises(ClaimRegistryError, match=r"'seed'"):
        load_claim_file(p2)
    p3 = _write(tmp_path, "empty.yaml", "seed: '000'\nseed_file: x.txt\nclaims: []\n")
    with pytest.raises(ClaimRegistryError, match=r"contributes no claims"):
        load_claim_file(p3)


def test_group_common_fields_merge(tmp_path):
    body = """\
    seed: "000"
    seed_file: 000_882cf792d18d2b7b.txt
    protocols:
      p: {eval_set: ufw, decoding: greedy, denominator: train}
    groups:
      - common: {experiment: redaction, scope: [gemma3-27b-L41], protocol: p, comparator: abs_tol,
                 tolerance: 0.02, tolerance_rationale: noise}
        claims:
          - {id: s000-a, source: "000 §3", quote: "Spans alone recover 0.506.", metric: "fve_nrm[train]", published: 0.506, figure: x}
          - {id: s000-b, source: "000 §3", quote: "Bare 0.196.", metric: "fve_nrm[train]", published: 0.196, figure: y,
             protocol: {use: p, denominator: own}}
    """
    a, b = load_claim_file(_write(tmp_path, "s000.yaml", body))
    assert a.experiment == b.experiment == "redaction" and a.tolerance == 0.02
    assert a.protocol["denominator"] == "train" and b.protocol["denominator"] == "own"
    assert b.protocol["eval_set"] == "ufw"


def test_empty_registry_dir_raises(tmp_path):
    with pytest.raises(ClaimRegistryError, match="no \\*.yaml"):
        load_claims(tmp_path)


def test_nan_in_registry_rejected(tmp_path):
    with pytest.raises(ClaimRegistryError, match="'tolerance'"):
        load_claim_file(_registry(tmp_path, dict(_GOOD_CLAIM, tolerance=math.nan)))


def test_sampling_spread_claims_accept_the_releases_own_examples():
    """recipe §7.1 prints greedy and the 4 T=1 sample scores; every mean-of-4 the printed sample range allows
    must pass its claim (an interval [0.005, 0.025] failed Llama's own numbers: gap 0.026-0.036)."""
    qwen_llama = _c("recipe-qwen-llama-sampling-spread")
    for greedy, lo, hi in ((0.143, 0.132, 0.157), (0.313, 0.272, 0.292)):   # Qwen pos 99, Llama pos 110
        # the mean of 4 samples in [lo, hi] with both extremes present lies in [(3lo+hi)/4, (lo+3hi)/4]
        for mean4 in np.linspace((3 * lo + hi) / 4, (lo + 3 * hi) / 4, 9):
            assert judge(qwen_llama, abs(greedy - mean4)).status == "pass", (greedy, mean4)
    assert judge(qwen_llama, 0.05).status == "fail"
    gemma = _c("recipe-gemma12-sampling-spread")   # 0.006 vs 0.006-0.007
    for mean4 in np.linspace(0.00625, 0.00675, 5):
        assert judge(gemma, abs(0.006 - mean4)).status == "pass"
