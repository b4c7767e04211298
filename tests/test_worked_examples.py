"""worked_examples on tiny fixture pairs (mechanics; numbers say nothing about NLA quality).

Every figure is checked against a hand computation that shares nothing with the implementation but the
pair itself: gold from HF ``output_hidden_states=True`` (not the block hook), greedy decodes redone with
``pair.verbalize``, cosines written out in Python floats, statistics from :mod:`statistics`. Sampled
figures are re-scored from the sampled texts the experiment reports. Deliberately wrong settings (the
wrong excluded count, BOS stripped) must move the figures the way they should; a missing text must SKIP
the experiment and its claims, naming the file and the option.

Fixtures: ``llama`` (SmolLM2 tokenizer: no prepended BOS, chat template with a default system prompt,
like Qwen) and ``gemma3`` (Gemma 3 tokenizer: prepended BOS, ``<bos><start_of_turn>user\\n`` scaffold).
The fixture AV stands in for the base model (nla_repro.evalset); the train denominator is a stated 0.5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics

import numpy as np
import pytest
import torch

from nla_repro.activations import SamplerConfig
from nla_repro.claims import get_claim, load_claims
from nla_repro.claims.figures import UNMEASURED, undeclared, unexercised
from nla_repro.claims.run import ClaimCase, ClaimRunner
from nla_repro.decoding import Decoding
from nla_repro.evalset import make_pair_handle
from nla_repro.experiments import runner
from nla_repro.experiments.base import ExperimentContext, ExperimentSkipped
from nla_repro.experiments.runner import cache_key, run_experiment
from nla_repro.explanation import extract_explanation
from nla_repro.pairs import PairRegistry

NAME = "worked_examples"
V = 0.5  # stand-in train denominator (fixtures carry no metrics.train_rawvar)
MAX_NEW = 4
SAMPLER = SamplerConfig(seed=42, n_per_doc=2, min_position=50, max_length=192)
CONVERSATION = [{"role": "user", "content": "The lighthouse keeper climbed the narrow stairs at dusk."},
                {"role": "assistant", "content": "He lit the lamp, and the ships followed its beam home."}]
QWEN = "qwen2.5-7b-L20"


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    monkeypatch.delenv("NLA_REPRO_EXAMPLES_DIR", raising=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from nla_repro.fixtures.factory import make_pair

    root = tmp_path_factory.mktemp("worked")
    dirs = {fam: make_pair(fam, root / fam) for fam in ("llama", "gemma3")}
    handles = {}
    for fam, d in dirs.items():
        h = make_pair_handle(fam, d.av, d.ar, base="fixture", sampler_cfg=SAMPLER, n_docs=4)
        h.train_denominator = V
        handles[fam] = h
    # a released pair's name over the llama fixture: the recipe's table (24 excluded, position 99) applies
    q = make_pair_handle(QWEN, dirs["llama"].av, dirs["llama"].ar, base="fixture", sampler_cfg=SAMPLER, n_docs=4)
    q.train_denominator = V
    handles[QWEN] = q
    ex = root / "examples"
    ex.mkdir()
    texts = {}
    for fam in ("llama", "gemma3"):
        tok = handles[fam].load().av.tokenizer
        texts[fam] = tok.apply_chat_template(CONVERSATION, tokenize=False)
        (ex / f"{fam}.txt").write_text(texts[fam], encoding="utf-8")
    tok = handles["llama"].load().av.tokenizer
    long_conv = [{"role": "user", "content": " ".join(["The lighthouse keeper climbed the narrow stairs."] * 9)},
                 CONVERSATION[1]]
    texts[QWEN] = tok.apply_chat_template(long_conv, tokenize=False)
    (ex / f"{QWEN}.txt").write_text(texts[QWEN], encoding="utf-8")
    return {"dirs": dirs, "handles": handles, "examples": ex, "texts": texts, "runs": {}}


def ctx_for(world, fam, **opts):
    o = {"examples_dir": str(world["examples"]), "max_new_tokens": MAX_NEW, "batch_size": 32, **opts}
    return ExperimentContext(pairs={fam: world["handles"][fam]}, options={NAME: o})


def run(world, fam, **opts):
    key = (fam, tuple(sorted(opts.items(), key=str)))
    if key not in world["runs"]:
        world["runs"][key] = run_experiment(NAME, ctx_for(world, fam, **opts), fam)
    return world["runs"][key]


# ------------------------------------------------------------------------------------------ hand computation

def hand_gold(world, fam, text, *, strip_bos=False):
    """Gold at every position from HF hidden_states[K+1] (not the experiment's hook), token ids from the
    tokenizer called directly: the rendered chat text carries its own BOS (Gemma) / has none (SmolLM2)."""
    pair = world["handles"][fam].load()
    tok, model = pair.av.tokenizer, pair.av.model
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if strip_bos:
        assert ids[0] == tok.bos_token_id
        ids = ids[1:]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states
    K = pair.layer_index
    return ids, hs[K + 1][0].float().numpy()


def hand_mse(pred, gold) -> float:
    """||p/|p| - g/|g|||^2 in Python floats (= mean over dims of the sqrt(d)-normalised squared error)."""
    p = [float(x) for x in pred]
    g = [float(x) for x in gold]
    npn, ngn = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in g))
    return sum((a / npn - b / ngn) ** 2 for a, b in zip(p, g))


def hand_norm(v) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in v))


def client_text(raw: str) -> str:
    exp = extract_explanation(raw)
    return exp if exp is not None else raw.strip()


def hand_scores(world, fam, texts, gold_rows):
    pair = world["handles"][fam].load()
    preds = pair.reconstruct(list(texts), allow_empty=True)
    return [hand_mse(p, g) for p, g in zip(preds, gold_rows)]


def summary(mse):
    fve = [1 - m / V for m in mse]
    return {"examples.fve": [statistics.mean(fve), statistics.median(fve)],
            "examples.mse": [statistics.mean(mse), statistics.median(mse)],
            "examples.mse_range": [min(mse), max(mse)],
            "examples.cos": statistics.mean([1 - m / 2 for m in mse]),
            "examples.counts": [sum(f > 0.5 for f in fve), sum(f > 0.8 for f in fve), sum(f < 0 for f in fve)]}


def check_against_hand(world, fam, figs, E, *, strip_bos=False):
    ids, gold = hand_gold(world, fam, world["texts"][fam], strip_bos=strip_bos)
    T = len(ids)
    assert figs["examples.n_tokens"] == T and figs["examples.exclude_first"] == E
    tab = figs["examples.table"]
    assert tab["position"] == sorted(set(range(E, T)) | {0})
    # the same greedy decodes: redo them from the hand gold
    pair = world["handles"][fam].load()
    verbs = pair.verbalize(gold[tab["position"]], Decoding(max_new_tokens=MAX_NEW), batch_size=64)
    assert [client_text(v.text) for v in verbs] == tab["text_for_ar"]
    mse = hand_scores(world, fam, tab["text_for_ar"], gold[tab["position"]])
    by_pos = dict(zip(tab["position"], mse))
    scored = [by_pos[q] for q in range(E, T)]
    assert figs["examples.n_positions"] == T - E == len(scored)
    for k, v in summary(scored).items():
        assert figs[k] == pytest.approx(v, abs=1e-5), k
    assert figs["examples.pos0"] == pytest.approx(by_pos[0], abs=1e-5)
    assert figs["examples.pos0_fve"] == pytest.approx(1 - by_pos[0] / V, abs=1e-5)
    norms = [hand_norm(g) for g in gold]
    assert figs["norms.all"] == pytest.approx(norms, rel=1e-5)
    assert figs["norms.range"] == pytest.approx([min(norms[E:]), max(norms[E:])], rel=1e-5)
    return ids, gold, by_pos, norms


# ------------------------------------------------------------------------------------------ figures

@pytest.mark.parametrize("fam", ["llama", "gemma3"])
def test_every_figure_matches_a_hand_computation(world, fam):
    r = run(world, fam)
    figs = r.figures
    E = {"llama": 24, "gemma3": 4}[fam]   # default rule: chat-template scaffold before the user's content
    ids, gold, by_pos, norms = check_against_hand(world, fam, figs, E)
    tok = world["handles"][fam].load().av.tokenizer
    # BOS: Gemma's tokenizer prepends one and the rendered text carries it: exactly one, at position 0
    if fam == "gemma3":
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        assert figs["norms.bos"] == pytest.approx(norms[0], rel=1e-5)
        assert figs["examples.bos"] == pytest.approx(by_pos[0], abs=1e-5)
        assert figs["examples.bos_fve"] == pytest.approx(1 - by_pos[0] / V, abs=1e-5)
    else:  # SmolLM2 (like Qwen): no BOS is prepended; position 0 is <|im_start|>, not a BOS
        assert not any(k in figs for k in ("norms.bos", "examples.bos", "examples.bos_fve"))
    # the early template newline: first newline-only token inside the excluded scaffold
    nl = next(q for q in range(E) if tok.decode([ids[q]]).strip() == "" and "\n" in tok.decode([ids[q]]))
    assert nl == {"llama": 2, "gemma3": 3}[fam]   # "<|im_start|>system\n" / "<bos><start_of_turn>user\n"
    assert figs["norms.template_newline_position"] == nl
    assert figs["norms.template_newline"] == pytest.approx(norms[nl], rel=1e-5)
    # sampling at the default position (second-to-last): 4 T=1 decodes, re-scored from their texts
    P = len(ids) - 2
    assert figs["examples.sampling.position"] == P
    k = f"examples.sampling.pos{P}"
    texts = figs[f"{k}.texts"]
    assert len(texts) == 4
    s = hand_scores(world, fam, texts, np.repeat(gold[[P]], 4, axis=0))
    assert figs[f"{k}.samples"] == pytest.approx(s, abs=1e-5)
    assert figs[f"{k}.greedy"] == pytest.approx(by_pos[P], abs=1e-5)
    assert figs[f"{k}.sampled"] == pytest.approx([min(s), max(s)], abs=1e-5)
    assert figs[f"{k}.spread"] == pytest.approx(abs(by_pos[P] - statistics.mean(s)), abs=1e-5)
    assert figs[f"{k}.spread_max"] == pytest.approx(max(abs(by_pos[P] - x) for x in s), abs=1e-5)
    assert figs["examples.sampling.spread"] == figs[f"{k}.spread"]
    greedy_text = figs["examples.table"]["text_for_ar"][figs["examples.table"]["position"].index(P)]
    assert any(t != greedy_text for t in texts)   # they are T=1 draws, not the greedy decode again
    assert r.conventions["failure_convention"] == "CLIENT_RAW"
    assert r.protocol["text_sha256"] == hashlib.sha256(world["texts"][fam].encode("utf-8")).hexdigest()
    assert r.protocol["exclude_first_source"].startswith("default")


def test_figure_declaration_matches_a_real_run(world):
    figs = run(world, "gemma3").figures   # Gemma: has a BOS, so every declared alternative is emitted
    assert not undeclared(NAME, figs), undeclared(NAME, figs)
    assert not unexercised(NAME, figs), unexercised(NAME, figs)
    assert not undeclared(NAME, run(world, "llama").figures)


def test_wrong_exclusion_count_moves_the_figures(world):
    right = run(world, "llama").figures
    wrong = run(world, "llama", exclude_first=29).figures      # 5 too many: loses 5 scored positions
    assert wrong["examples.n_positions"] == right["examples.n_positions"] - 5
    check_against_hand(world, "llama", wrong, 29)
    assert wrong["examples.mse"] != right["examples.mse"]
    none = run(world, "llama", exclude_first=0).figures        # the scaffold scored: template newline gone
    check_against_hand(world, "llama", none, 0)
    assert "norms.template_newline" not in none
    assert none["norms.range"][1] >= right["norms.template_newline"]   # the scaffold's norms enter the range
    g0 = run(world, "gemma3", exclude_first=0).figures          # Gemma: BOS among the scored positions
    assert g0["norms.range"][0] <= g0["norms.bos"] <= g0["norms.range"][1]
    assert g0["examples.n_positions"] == g0["examples.n_tokens"]


def test_stripping_the_bos_shifts_and_changes_every_position(world):
    keep = run(world, "gemma3").figures
    strip = run(world, "gemma3", bos="strip").figures           # deliberately wrong (trap #3/#19 family)
    check_against_hand(world, "gemma3", strip, 4, strip_bos=True)
    assert strip["examples.n_tokens"] == keep["examples.n_tokens"] - 1
    assert not any(k in strip for k in ("norms.bos", "examples.bos"))
    # the same tokens without BOS in their context: every activation changes
    a, b = np.asarray(keep["norms.all"][1:]), np.asarray(strip["norms.all"])
    assert not np.allclose(a, b, rtol=1e-3)


def test_released_pair_defaults_and_claims_judge(world):
    """A pair named qwen2.5-7b-L20: the recipe's 24 excluded positions and position 99 apply, and the
    registry's claims read the figures (judged pass/fail, never an error for a missing figure)."""
    figs = run(world, QWEN).figures
    assert figs["examples.exclude_first"] == 24 and figs["examples.sampling.position"] == 99
    assert "examples.sampling.pos99.greedy" in figs
    handles = {QWEN: world["handles"][QWEN]}
    reg = PairRegistry(factories={QWEN: lambda: handles[QWEN]})
    r = ClaimRunner(reg, cache=None, options={NAME: {"examples_dir": str(world["examples"]),
                                                     "max_new_tokens": MAX_NEW, "batch_size": 32}})
    ids = [c.id for c in load_claims() if c.experiment == NAME and c.pairs() == (QWEN,)]
    assert {"recipe-qwen-example-fve", "recipe-qwen-pos99-greedy", "recipe-qwen-pos0",
            "recipe-qwen-newline-norm"} <= set(ids)
    for cid in ids:
        c = get_claim(cid)
        res = r.evaluate(ClaimCase(c, QWEN, (QWEN,)))
        assert res.status in ("pass", "fail"), (cid, res.message)


def test_every_worked_example_claim_is_measured_here():
    claims = [c for c in load_claims() if c.figure.startswith(("examples.", "norms."))]
    assert len(claims) == 34 and all(c.experiment == NAME for c in claims)
    assert not UNMEASURED


# ------------------------------------------------------------------------------------------ missing text

def test_missing_text_skips_naming_the_file_and_the_option(world, tmp_path, monkeypatch):
    before = runner.COMPUTE_CALLS.get(NAME, 0)
    ctx = ExperimentContext(pairs={QWEN: world["handles"][QWEN]}, options={NAME: {"max_new_tokens": MAX_NEW}})
    with pytest.raises(ExperimentSkipped) as e:       # no directory at all
        run_experiment(NAME, ctx, QWEN)
    assert "qwen2.5-7b-L20.txt" in str(e.value) and "NLA_REPRO_EXAMPLES_DIR" in str(e.value)
    assert f"{NAME}.examples_dir" in str(e.value)
    monkeypatch.setenv("NLA_REPRO_EXAMPLES_DIR", str(tmp_path))   # a directory without the file
    with pytest.raises(ExperimentSkipped) as e:
        run_experiment(NAME, ctx, QWEN)
    assert "missing file qwen2.5-7b-L20.txt" in str(e.value) and str(tmp_path) in str(e.value)
    assert "$NLA_REPRO_EXAMPLES_DIR" in str(e.value)
    assert runner.COMPUTE_CALLS.get(NAME, 0) == before           # nothing was computed
    # through the claims runner: SKIPPED with the reason, never pass, never an error
    reg = PairRegistry(factories={QWEN: lambda: world["handles"][QWEN]})
    res = ClaimRunner(reg, cache=None).evaluate(ClaimCase(get_claim("recipe-qwen-example-fve"), QWEN, (QWEN,)))
    assert res.status == "skipped" and "missing file qwen2.5-7b-L20.txt" in res.message
    # a cross-pair claim skips when one scope pair's text is missing (Qwen's, the first scope pair)
    c = get_claim("recipe-qwen-llama-sampling-spread")
    res = ClaimRunner(reg, cache=None).evaluate(ClaimCase(c, "+".join(c.pairs()), c.pairs()))
    assert res.status == "skipped" and "missing file qwen2.5-7b-L20.txt" in res.message


def test_environment_variable_gives_the_directory_and_the_text_is_in_the_cache_key(world, monkeypatch, tmp_path):
    monkeypatch.setenv("NLA_REPRO_EXAMPLES_DIR", str(tmp_path))
    (tmp_path / "llama.txt").write_text(world["texts"]["llama"], encoding="utf-8")
    ctx = ExperimentContext(pairs={"llama": world["handles"]["llama"]}, options={NAME: {"max_new_tokens": MAX_NEW}})
    k1 = cache_key(NAME, ctx, "llama")
    (tmp_path / "llama.txt").write_text(world["texts"]["llama"] + " More.", encoding="utf-8")
    k2 = cache_key(NAME, ctx, "llama")
    assert k1["inputs"]["text_sha256"] != k2["inputs"]["text_sha256"] and k1 != k2
    assert "inputs" not in cache_key("variance_baseline", ctx, "llama")   # other experiments' keys unchanged


def test_base_checkpoint_name_is_a_candidate_file(world):
    from nla_repro.experiments.worked_examples import candidate_files
    from nla_repro.sidecar import load_sidecar

    h = world["handles"]["llama"]
    assert load_sidecar(h.av_dir).raw["base_checkpoint"] == "nla-repro/tiny-random-llama"
    assert candidate_files(h) == ["llama.txt", "tiny-random-llama.txt"]


def test_bad_settings_are_errors_not_silent(world):
    with pytest.raises(ValueError, match="exclude_first"):
        run_experiment(NAME, ctx_for(world, "llama", exclude_first=10_000), "llama")
    with pytest.raises(ValueError, match="sampling positions"):
        run_experiment(NAME, ctx_for(world, "llama", sampling_positions=[3]), "llama")   # inside the scaffold
    with pytest.raises(ValueError, match="bos"):
        run_experiment(NAME, ctx_for(world, "llama", bos="drop"), "llama")


def test_missing_train_denominator_gives_nan_fve_not_a_swap(world):
    h = dataclasses.replace(world["handles"]["llama"], train_denominator=None, _pair=world["handles"]["llama"]._pair)
    h.base_spec = world["handles"]["llama"].base_spec
    ctx = ExperimentContext(pairs={"llama": h}, options={NAME: {"examples_dir": str(world["examples"]),
                                                                "max_new_tokens": MAX_NEW, "batch_size": 32}})
    figs = run_experiment(NAME, ctx, "llama").figures
    assert all(math.isnan(x) for x in figs["examples.fve"] + figs["examples.counts"])
    assert figs["examples.mse"] == pytest.approx(run(world, "llama").figures["examples.mse"])


def test_count_thresholds_are_strict_and_fve_uses_the_train_denominator():
    """examples.counts = [#fve > 0.5, #fve > 0.8, #fve < 0] (strict, as the release's summary blocks print
    them); checked on hand-picked mse values since random fixture pairs never reach fve > 0."""
    from nla_repro.experiments.worked_examples import _stats

    mse = [0.1, 0.25, 0.5, 1.2, 0.05, 0.2]           # V = 1: fve 0.9, 0.75, 0.5, -0.2, 0.95, 0.8
    st = _stats(np.array(mse + [float("nan")]), 1.0)  # a dropped (NaN) position counts nowhere
    assert st["counts"] == [4, 2, 1]
    assert st["fve"] == pytest.approx([statistics.mean([0.9, 0.75, 0.5, -0.2, 0.95, 0.8]), 0.775])
    assert st["mse_range"] == [0.05, 1.2] and st["cos"] == pytest.approx(1 - statistics.mean(mse) / 2)
    assert _stats(np.array(mse), 2.0)["counts"] == [5, 4, 0]   # V = 2: fve 0.95 .875 .75 .4 .975 .9


def test_worked_examples_key_builds_no_eval_set(world, monkeypatch, tmp_path):
    """The experiment reads only the release text: its cache key must not build (for a 70B pair: a forward
    pass of the base model) nor depend on the held-out eval set."""
    monkeypatch.setenv("NLA_REPRO_EXAMPLES_DIR", str(tmp_path))
    (tmp_path / "llama.txt").write_text(world["texts"]["llama"], encoding="utf-8")
    h = world["handles"]["llama"]
    monkeypatch.setattr(h, "eval_set", lambda n: pytest.fail("the eval set was built"))
    ctx = ExperimentContext(pairs={"llama": h}, options={NAME: {"max_new_tokens": MAX_NEW}})
    assert cache_key(NAME, ctx, "llama")["eval_manifest"] == {}
