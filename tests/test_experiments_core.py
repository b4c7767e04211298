"""Mechanics of the core experiments on tiny random fixture pairs (numbers say nothing about NLA quality).

Random fixture AVs never write <explanation> tags, so decode experiments score under the CLIENT_RAW
convention here, with max_new_tokens=4 to stay fast; the train denominator is a stated stand-in (0.5).
Pairs: llama + qwen2 (same SmolLM2 tokenizer, so cross-tokenizer alignment is trivial here;
align_positions itself is tested in test_activations). The fixture AV model stands in for the base model (mechanics-only, see nla_repro.evalset).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nla_repro.activations import SamplerConfig
from nla_repro.cache import ResultsCache
from nla_repro.evalset import build_eval_set, make_pair_handle, manifest_hash
from nla_repro.experiments.base import ExperimentContext
from nla_repro.experiments import runner
from nla_repro.experiments.runner import all_pairs_label, run_experiment

SAMPLER = SamplerConfig(seed=42, n_per_doc=2, min_position=50, max_length=192)
DECODE = {"failure_convention": "client_raw", "max_new_tokens": 4, "batch_size": 8}
OPTIONS = {
    "corroboration": {**DECODE, "n_boot": 200},
    "greedy_reproducibility": {**DECODE, "batch_size": 4},
    "best_of_n": {**DECODE, "n_grid": [1, 2, 3]},
    "adjacent_layers": DECODE,
    "cross_family": {**DECODE, "n_boot": 200},
    "ridge_baseline": {"n_grid": [8, 16, 32], "n_train_docs": 20, "per_doc": 3},
}

# figure keys each experiment must report (registry "any_pair" figures + the released-pair keys
# that apply to any pair; layer-specific keys are checked with the pair's own K below)
REQUIRED = {
    "corroboration": ["fve_nrm.train", "fve_nrm.own", "fve_nrm.frac_gt_0.5", "nmse.mean", "nmse.median",
                      "explanation.tag_failure_rate", "cos.mean_by_condition", "null.shuffled.fve_own",
                      "null.gaussian.fve_own", "null.predict_mean.fve_own", "fve_nrm.train_ci95",
                      "fve_nrm.reward_charge_2", "fve_nrm.client_raw", "fve_nrm.per_vector", "fve_nrm.meannorm"],
    "variance_baseline": ["var_nrm.own", "var_nrm.train", "meannorm.own", "meannorm.identity"],
    "greedy_reproducibility": ["greedy.nmse_runs", "greedy.bits_equal", "greedy.needle_token_ids_equal",
                               "greedy.control_sampled_differ", "greedy.nmse_hex"],
    "best_of_n": ["best_of_n.fve.1", "best_of_n.fve.2", "best_of_n.fve.3", "best_of_n.nmse.1", "best_of_n.cos.1",
                  "best_of_n.fve_sequence", "best_of_n.gain_per_doubling", "best_of_n.per_doubling",
                  "best_of_n.total_gain", "best_of_n.residual", "best_of_n.sample_vs_greedy",
                  "best_of_n.tag_failure_rate", "best_of_n.fve.mean3", "best_of_n"],
    "adjacent_layers": ["adjacent.bound_ratio", "adjacent.offset", "adjacent.raw_norms",
                        "adjacent.within_additive_bound"],
    "recipe_constants": ["recipe.d_model", "recipe.ar_layers_eq_K_plus_1", "recipe.mse_scale_eq_sqrt_d",
                         "recipe.injection_scale", "recipe.critic_suffix_ids", "sidecar.drift"],
}
ALL_PAIRS_REQUIRED = {
    "cross_family": ["cross_family.null", "cross_family.ratio", "cross_family.real_minus_null",
                     "cross_family.alignment_error", "transfer_matrix"],
    "ridge_baseline": ["ridge.n_grid", "ridge.n_pairs", "ridge.text_minus_ridge", "ridge_scaling"],
}


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield float(x)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from nla_repro.fixtures.factory import make_pair

    root = tmp_path_factory.mktemp("xp")
    pairs = {"llama": make_pair("llama", root / "llama"), "qwen2": make_pair("qwen2", root / "qwen2")}
    cache = ResultsCache(root / "cache")
    handles = {n: make_pair_handle(n, p.av, p.ar, base="fixture", cache=cache, sampler_cfg=SAMPLER, n_docs=16)
               for n, p in pairs.items()}
    for h in handles.values():
        h.train_denominator = 0.5  # stand-in; fixtures carry no metrics.train_rawvar
    ctx = ExperimentContext(pairs=handles, eval_size=6, cache=cache, options=OPTIONS)
    return {"root": root, "pairs": pairs, "cache": cache, "ctx": ctx, "results": {}}


def _run(world, name, pair):
    key = (name, pair)
    if key not in world["results"]:
        world["results"][key] = run_experiment(name, world["ctx"], pair)
    return world["results"][key]


def test_eval_set_layer_and_manifest(world):
    h = world["ctx"].pairs["llama"]
    es = h.eval_set(6)
    assert es.vectors.dtype == np.float32 and es.vectors.shape == (6, 64)
    assert all(p >= SAMPLER.min_position for p in es.positions)
    assert es.layer_index == 2 and es.meta["hidden_states_index"] == 3
    adj = h.adjacent_eval_sets[3](6)
    assert adj.positions == es.positions and not np.allclose(adj.vectors, es.vectors)
    # layer K = hidden_states[K+1], checked against HF directly
    import torch
    model, tok = h.base_spec.load()
    from nla_repro.activations import tokenize_document
    from nla_repro.corpora import load_documents
    text = {d.id: d.text for d in load_documents("eval", limit=16)}[es.doc_ids[0]]
    ids = torch.tensor([tokenize_document(tok, text, SAMPLER.max_length)])
    hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(hs[3][0, es.positions[0]].detach().numpy(), es.vectors[0], rtol=1e-4, atol=1e-5)
    docs = [("a", "x " * 100), ("b", "y " * 100)]
    assert manifest_hash(docs, SAMPLER, "m", 2) != manifest_hash(docs, SAMPLER, "m", 3)
    assert manifest_hash(docs, SAMPLER, "m", 2) != manifest_hash(docs[::-1][:1], SAMPLER, "m", 2)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_figures_present_and_finite(world, name):
    r = _run(world, name, "llama")
    missing = [k for k in REQUIRED[name] if k not in r.figures]
    assert not missing, f"{name}: missing figure keys {missing}"
    for k in REQUIRED[name]:
        vals = list(_numbers(r.figures[k]))
        assert all(math.isfinite(v) for v in vals), f"{name}.{k} not finite: {r.figures[k]}"
    for c in ("denominator", "failure_convention", "decoding", "layer_convention"):
        assert r.conventions[c]


@pytest.mark.parametrize("name", sorted(REQUIRED) + sorted(ALL_PAIRS_REQUIRED))
def test_figure_declaration_matches_a_real_run(world, name):
    """nla_repro.claims.figures.FIGURES[name] is what the experiment emits: every key of the run declared,
    every declared alternative emitted (the registry test checks claims against the declaration)."""
    from nla_repro.claims.figures import undeclared, unexercised

    r = _run(world, name, all_pairs_label(world["ctx"]) if name in ALL_PAIRS_REQUIRED else "llama")
    assert not undeclared(name, r.figures), undeclared(name, r.figures)
    assert not unexercised(name, r.figures), unexercised(name, r.figures)


def test_experiment_semantics(world):
    corr = _run(world, "corroboration", "llama").figures
    assert corr["null.predict_mean.fve_own"] <= 1e-12          # predicting the mean can never beat V
    var = _run(world, "variance_baseline", "llama").figures
    assert abs(var["meannorm.identity"] - var["meannorm.own"]) < 1e-9
    g = _run(world, "greedy_reproducibility", "llama").figures
    assert g["greedy.bits_equal"] == 1 and g["greedy.needle_token_ids_equal"] == 1
    assert g["greedy.control_sampled_differ"] == 1              # the comparison has teeth
    bon = _run(world, "best_of_n", "llama").figures
    assert bon["best_of_n.fve.3"] >= bon["best_of_n.fve.2"] >= bon["best_of_n.fve.1"]  # selection by own AR
    adj = _run(world, "adjacent_layers", "llama").figures
    assert 0 < adj["adjacent.L1.cos"] < 1 and 0 < adj["adjacent.L3.cos"] < 1
    assert len(adj["adjacent.raw_norms"]) == 3
    assert var["norm.raw_median"] > 0 and var["norm.raw_mean"] > 0
    rc = _run(world, "recipe_constants", "llama").figures
    import json
    av_layers = json.loads((world["pairs"]["llama"].av / "config.json").read_text())["num_hidden_layers"]
    assert rc["recipe.base_layers"] == av_layers
    assert rc["recipe.gold_hidden_states_index"] == rc["recipe.layer_index"] + 1
    assert rc["recipe.depth_pct"] == pytest.approx(100 * rc["recipe.layer_index"] / av_layers)
    assert rc["recipe.injection_token"][1] == rc["recipe.injection_token_id"]


def test_bf16_spacing():
    from nla_repro.experiments.recipe_constants import bf16_spacing

    import torch
    for x in (30.0, 150.0, 32768.0, 60000.0, 65280.0, 80000.0, 0.75):  # inside one binade once rounded
        b = torch.tensor(x, dtype=torch.bfloat16)
        up = torch.nextafter(b, torch.tensor(float("inf"), dtype=torch.bfloat16))
        assert bf16_spacing(x) == float(up) - float(b), x           # the gap above x in bfloat16
    assert bf16_spacing(60000) == 256.0                               # recipe §7.1: Gemma-27B resolution


@pytest.mark.parametrize("name", sorted(ALL_PAIRS_REQUIRED))
def test_all_pairs_experiments(world, name):
    r = _run(world, name, all_pairs_label(world["ctx"]))
    missing = [k for k in ALL_PAIRS_REQUIRED[name] if k not in r.figures]
    assert not missing
    for k in ALL_PAIRS_REQUIRED[name]:
        assert all(math.isfinite(v) for v in _numbers(r.figures[k])), (k, r.figures[k])
    if name == "cross_family":
        for a in ("llama", "qwen2"):
            for b in ("llama", "qwen2"):
                assert math.isfinite(r.figures[f"cross_family.fve.{a}.{b}"])
        assert r.figures["transfer_matrix"]["sources"] == ["llama", "qwen2"]
        f = r.figures   # fraction of the target's own ceiling, under both vocabularies
        assert f["cross_family.ratio.llama.qwen2"] == pytest.approx(f["cross_family.fve.llama.qwen2"]
                                                                    / f["cross_family.fve.qwen2.qwen2"])
        assert f["cross_family.ratio.qwen2.llama"] == f["matrix.frac.qwen2.llama"]
        assert f["cross_family.ratio"] == f["matrix.frac"] and len(f["matrix.frac"]) == 2
        rates = [r.figures[f"cross_family.tag_failure_rate.{q}"] for q in ("llama", "qwen2")]
        assert r.figures["matrix.tag_failure_rate"] == pytest.approx(np.mean(rates))  # equal decodes per AV
        # both fixtures share the SmolLM2 tokenizer: aligned = reference positions, all >= stage-0's 50
        assert r.figures["matrix.left_context.min"] >= SAMPLER.min_position
        assert r.figures["matrix.left_context.n_below_50"] == 0
        best = r.figures["matrix.items.selected"]["best"]
        assert best is not None and best["id"].rsplit("#", 1)[0] in world["ctx"].pairs["llama"].eval_set(6).doc_ids
        cells = [r.figures[f"matrix.items.{k}.{a}.{b}"] for k in ("best", "typical")
                 for a in ("llama", "qwen2") for b in ("llama", "qwen2")]
        assert np.mean(cells[:4]) >= np.mean(cells[4:])                        # best item beats the median one


def test_runner_serves_second_call_from_cache(world):
    _run(world, "variance_baseline", "llama")
    before = runner.COMPUTE_CALLS.get("variance_baseline", 0)
    again = run_experiment("variance_baseline", world["ctx"], "llama")
    assert runner.COMPUTE_CALLS.get("variance_baseline", 0) == before
    assert again.figures == world["results"][("variance_baseline", "llama")].figures
    # a different n is a different key: computed again
    ctx2 = ExperimentContext(pairs=world["ctx"].pairs, eval_size=5, cache=world["cache"], options=OPTIONS)
    run_experiment("variance_baseline", ctx2, "llama")
    assert runner.COMPUTE_CALLS["variance_baseline"] == before + 1


def test_broken_pair_wrong_ar_layer_flips_recipe_check(world, tmp_path):
    from nla_repro.fixtures.factory import make_pair

    bad = make_pair("llama", tmp_path / "bad", mutate={"ar.num_hidden_layers": 4})
    h = make_pair_handle("bad", bad.av, bad.ar, base="fixture", sampler_cfg=SAMPLER, n_docs=4)
    ctx = ExperimentContext(pairs={"bad": h}, options=OPTIONS)
    good = _run(world, "recipe_constants", "llama").figures
    r = run_experiment("recipe_constants", ctx, "bad").figures
    assert good["recipe.ar_layers_eq_K_plus_1"] == 1 and r["recipe.ar_layers_eq_K_plus_1"] == 0


def test_broken_alignment_lowers_ridge(world):
    from nla_repro.experiments.ridge_baseline import fit_with_internal_alpha, ridge_predict
    from nla_repro.experiments.cross_family import aligned_gold
    from nla_repro import metrics

    from nla_repro.activations import sample_positions, tokenize_document
    from nla_repro.corpora import load_documents

    ctx = world["ctx"]
    _, tok = ctx.pairs["llama"].base_spec.load()
    rows = []
    for d in load_documents("train", limit=40):
        ids = tokenize_document(tok, d.text, SAMPLER.max_length)
        rows += [(d.id, p) for p in sample_positions(ids, d.id, n=4, min_position=50, special_ids=tok.all_special_ids)]
    gold, _, _ = aligned_gold(ctx, ["llama", "qwen2"], rows, "llama", split="train")
    X, Y = metrics.unit_rows(gold["llama"]), metrics.unit_rows(gold["qwen2"])
    half = len(X) // 2
    ok_model, _ = fit_with_internal_alpha(X[:half], Y[:half])
    perm = np.random.default_rng(0).permutation(half)      # deliberately broken: misaligned pairs
    bad_model, _ = fit_with_internal_alpha(X[:half], Y[:half][perm])
    v = metrics.variance_baseline(Y[half:])
    f_ok = metrics.fve_nrm(metrics.mse_nrm(ridge_predict(ok_model, X[half:]), Y[half:]), v)
    f_bad = metrics.fve_nrm(metrics.mse_nrm(ridge_predict(bad_model, X[half:]), Y[half:]), v)
    assert f_ok > f_bad + 0.05


def test_shuffled_null_is_a_derangement(world):
    from nla_repro.experiments.corroboration import shuffled_null_mse

    class Recorder:
        def score(self, texts, gold, allow_empty=False):
            self.texts = texts
            return np.zeros(len(texts))

    rec = Recorder()
    shuffled_null_mse(rec, ["a", None, "b", "c"], np.ones((4, 3), np.float32))
    assert rec.texts == ["b", "c", "a"]


def test_build_eval_set_is_cached(world):
    h = world["ctx"].pairs["llama"]
    calls = []

    def loader():
        calls.append(1)
        return h.base_spec.load()

    from nla_repro.corpora import load_documents
    docs = load_documents("eval", limit=4)
    a = build_eval_set(loader, None, docs, 2, SAMPLER, name="t", base_model_id=h.base_spec.model_id,
                       batch_size=2, cache=world["cache"])
    b = build_eval_set(loader, None, docs, 2, SAMPLER, name="t", base_model_id=h.base_spec.model_id,
                       batch_size=2, cache=world["cache"])
    assert len(calls) == 1 and np.array_equal(a.vectors, b.vectors) and a.manifest_hash == b.manifest_hash


def test_ridge_crossover_flags_are_plain_bools():
    """An extrapolated crossover beyond the cap is flagged clipped; the flag must be a Python bool (a numpy
    bool is not a storable figure type and made a real two-pair ridge run fail at result validation)."""
    from nla_repro.experiments.ridge_baseline import crossover_log10

    cx, clipped = crossover_log10([16, 32, 64, 128], [0.10, 0.11, 0.12, 0.13], target=0.9)
    assert cx == 12.0 and clipped is True
    cx, clipped = crossover_log10([16, 32, 64, 128], [0.1, 0.2, 0.3, 0.4], target=0.5)
    assert 2.0 < cx < 12.0 and clipped is False
    assert crossover_log10([16, 32, 64], [0.1, 0.6, 0.7], target=0.5) == (math.log10(32), False)
