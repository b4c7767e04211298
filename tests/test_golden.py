"""Golden snapshots (issue 3, item 5): what must never drift silently.

Snapshots live in the top-level ``golden/test_golden/`` folder, one JSON file per test id, written by
:class:`nla_repro.golden.GoldenExtension`. Each file states its comparison rule in a ``comparison`` header.
Tolerances (also in the files):

* derived configs / sidecar facts ........ floats rtol 1e-9; measured mean activation norms rtol 1e-5
  (fp32 torch forward); everything else (ints, ids, strings, layer types) exact.
* tokenized prompts ....................... exact (integers and strings only).
* metric outputs on fixed vectors ........ rtol 1e-9 + atol 1e-12 (pure numpy fp64; atol only guards
  values that are ~0).
* fixture greedy decodes ................. token ids / texts exact (CPU fp32, 2 threads); AR scores
  (mse_nrm) atol 1e-5; norms rtol 1e-5 (predictions), 1e-6 (injected rows, input head).
* default pair (SmolLM2, materialized) .. token ids / texts exact; mse_nrm atol 1e-4; gold norms rtol 1e-5.

Regenerate deliberately with ``pytest tests/test_golden.py --snapshot-update`` and review the diff of
``golden/``.  A drift failure lists each path with expected, found and tolerance.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nla_repro import golden
from nla_repro.golden import GoldenExtension, Tolerance, golden_extension

# --------------------------------------------------------------------------- extensions (stated tolerances)

CONFIG_EXT = golden_extension(rtol=1e-9, per_path={
    "*.mean_norm_at_layer": Tolerance(rtol=1e-5),
    "*.measured_mean_norm_at_layer": Tolerance(rtol=1e-5),
})
PROMPT_EXT = golden_extension()  # exact: integers and strings only
METRIC_EXT = golden_extension(rtol=1e-9, atol=1e-12)
DECODE_EXT = golden_extension(atol=1e-5, per_path={
    "*.pred_norms": Tolerance(rtol=1e-5),
    "*.injected_norms": Tolerance(rtol=1e-6),
    "*.input_head": Tolerance(rtol=1e-6),
})
DEFAULT_PAIR_EXT = golden_extension(atol=1e-4, per_path={"*.gold_norms": Tolerance(rtol=1e-5)})

FAMILIES = ("llama", "qwen2", "gemma3", "gemma3_mm")
DECODE_FAMILIES = ("llama", "gemma3")          # one per tokenizer; gemma3_mm/qwen2 share their code paths
TOKENIZER_FAMILY = {"smollm2": "llama", "gemma3": "gemma3"}

# Fixed AR inputs. Leading/trailing whitespace checks that the explanation is stripped (trap #13).
EXPLANATIONS = {
    "lighthouse": "  The text is about a lighthouse keeper's nightly routine; it mentions ships, "
                  "the harbour and 2 cliffs.\n",
    "code": "Python code: a function `f(x)` returning x**2 + 1, with a docstring.",
    "unicode": "Café menu — naïve résumé, prices in €; ✓ marks vegetarian dishes.",
}
DECODE_SEED = 20260101
N_DECODE_VECTORS = 3
DECODE_MAX_NEW_TOKENS = 16

CONFIG_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
               "layer_types", "sliding_window", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
               "query_pre_attn_scalar", "bos_token_id", "eos_token_id", "pad_token_id", "dtype")


# --------------------------------------------------------------------------- (1) derived configs + sidecars

def _pick(cfg: dict) -> dict:
    return {k: cfg[k] for k in CONFIG_KEYS if k in cfg}


def _config_facts(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    out = {"top": _pick(cfg)}
    if "text_config" in cfg:
        out["text_config"] = _pick(cfg["text_config"])
    return out


def _sidecar_facts(path: Path) -> dict:
    from nla_repro.sidecar import load_sidecar

    sc = load_sidecar(path)
    facts = {f: getattr(sc, f) for f in ("kind", "role", "d_model", "injection_scale", "mse_scale",
                                         "injection_char", "injection_token_id", "left_neighbor_id",
                                         "right_neighbor_id", "critic_suffix_ids", "av_template", "ar_template",
                                         "extraction_layer_index", "train_denominator")}
    facts["layer_convention"] = sc.layer_convention
    facts["raw"] = {k: sc.raw.get(k) for k in ("schema_version", "stage", "base_checkpoint", "critic",
                                               "training", "trained_on", "parent_checkpoints", "created_at",
                                               "created_by")}
    return facts


@pytest.mark.parametrize("family", FAMILIES)
def test_derived_configs_and_sidecars(pair_dirs, family, snapshot):
    from transformers import AutoConfig

    from nla_repro.activations import hidden_states_index
    from nla_repro.families import family_of

    d = pair_dirs(family)
    av_fam = family_of(AutoConfig.from_pretrained(d.av))
    ar_fam = family_of(AutoConfig.from_pretrained(d.ar))
    payload = {
        "fixture": {"family": d.family, "layer_index": d.layer_index, "tokenizer_name": d.tokenizer_name,
                    "d_model": d.d_model, "injection_char": d.injection_char,
                    "injection_token_id": d.injection_token_id, "injection_scale": d.injection_scale,
                    "mean_norm_at_layer": d.mean_norm_at_layer},
        "derived": {"hidden_states_index_of_K": hidden_states_index(d.layer_index),
                    "av_family": av_fam, "ar_family": ar_fam,
                    "av_expected_embed_scale": av_fam.expected_embed_scale,
                    "ar_blocks_kept": ar_fam.num_layers},
        "av_config": _config_facts(d.av),
        "ar_config": _config_facts(d.ar),
        "av_sidecar": _sidecar_facts(d.av),
        "ar_sidecar": _sidecar_facts(d.ar),
    }
    # The contract itself, stated independently of the snapshot (AR keeps K+1 blocks).
    assert ar_fam.num_layers == d.layer_index + 1
    assert snapshot.use_extension(CONFIG_EXT) == payload


# --------------------------------------------------------------------------- (2) tokenized prompts

@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZER_FAMILY))
def test_tokenized_prompts(loaded_pair, tokenizer_name, snapshot):
    from nla_repro.prompts import ar_prompt_ids, av_prompt_ids
    from nla_repro.sidecar import render_ar_prompt, render_av_message

    pair = loaded_pair(TOKENIZER_FAMILY[tokenizer_name])
    av_tok, ar_tok = pair.av.tokenizer, pair.ar.tokenizer
    av_sc, ar_sc = pair.av.sidecar, pair.ar.sidecar
    ids, pos = av_prompt_ids(av_tok, av_sc)
    assert ids[pos] == av_sc.injection_token_id
    ar = {}
    for name, text in EXPLANATIONS.items():
        ar_ids = ar_prompt_ids(ar_tok, ar_sc, text)
        ar[name] = {"rendered": render_ar_prompt(ar_sc, text), "ids": ar_ids,
                    "tokens": ar_tok.convert_ids_to_tokens(ar_ids)}
    payload = {
        "tokenizer": tokenizer_name,
        "vocab_size": len(av_tok),
        "special_ids": {"bos": av_tok.bos_token_id, "eos": av_tok.eos_token_id, "pad": av_tok.pad_token_id},
        "av": {"message": render_av_message(av_sc), "ids": ids, "injection_position": pos,
               "neighbours": [ids[pos - 1], ids[pos], ids[pos + 1]],
               "tokens": av_tok.convert_ids_to_tokens(ids), "templated_text": av_tok.decode(ids)},
        "ar": ar,
    }
    assert snapshot.use_extension(PROMPT_EXT) == payload


# --------------------------------------------------------------------------- (3) metrics on fixed vectors

def fixed_metric_vectors() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form gold/pred (no RNG stream to drift): 12 samples in d=16 from 4 documents of 3."""
    n, d = 12, 16
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d, dtype=np.float64)[None, :]
    gold = np.sin(0.37 * i * j + 0.5 * i + 1.0) + 0.3 * np.cos(1.7 * j - 0.2 * i) + 0.25
    pred = gold + 0.6 * np.cos(0.91 * i + 0.13 * j * j) - 0.1 * (i % 3)
    doc_ids = np.repeat(np.arange(4), 3)
    return gold, pred, doc_ids


def metric_payload() -> dict:
    from nla_repro import metrics as M

    gold, pred, doc_ids = fixed_metric_vectors()
    mse = M.mse_nrm(pred, gold)
    V = M.variance_baseline(gold)
    train_v = M.PUBLISHED_TRAIN_RAWVAR["qwen2.5-7b-L20"]
    fve = {den.value: M.fve_with(mse, gold, den, train_value=train_v) for den in M.Denominator}
    return {
        "conventions": {"mse_nrm": "sum_d (p_hat - x_hat)^2 = 2(1-cos) with mse_scale sqrt(d)",
                        "fve": "1 - mean(mse_nrm)/denominator (ratio of means)",
                        "train_denominator": "PUBLISHED_TRAIN_RAWVAR['qwen2.5-7b-L20']",
                        "bootstrap": "doc-level, n_boot=200, seed=0, alpha=0.05, statistic fve(OWN)"},
        "mse_nrm": mse,
        "mse_nrm_scale_24": M.mse_nrm(pred, gold, scale=24.0),
        "mse_nrm_float32_inputs": M.mse_nrm(pred.astype(np.float32), gold.astype(np.float32)),
        "mse_nrm_single_row": M.mse_nrm(pred[0], gold[0]),
        "cos": M.cos(pred, gold),
        "variance_baseline": V,
        "variance_baseline_first_6_rows": M.variance_baseline(gold, max_rows=6),
        "meannorm": M.meannorm_baseline(gold),
        "meannorm_from_rawvar": M.meannorm_from_rawvar(V),
        "rawvar_from_meannorm": M.rawvar_from_meannorm(M.meannorm_baseline(gold)),
        "per_vector_variance": M.per_vector_variance(gold),
        "fve": fve,
        "fve_per_sample_own": M.fve_per_sample(mse, V),
        "summary_own": M.summary(M.fve_per_sample(mse, V)),
        "doc_bootstrap_ci_own": M.doc_bootstrap_ci(mse, doc_ids, lambda m: M.fve_nrm(m, V),
                                                   n_boot=200, seed=0, alpha=0.05),
        "doc_bootstrap_ci_mean_mse": M.doc_bootstrap_ci(mse, doc_ids, lambda m: float(np.mean(m)),
                                                        n_boot=200, seed=1),
    }


def test_metric_outputs_on_fixed_vectors(snapshot):
    assert snapshot.use_extension(METRIC_EXT) == metric_payload()


# --------------------------------------------------------------------------- (4) fixture greedy decodes

def seeded_vectors(d: int) -> np.ndarray:
    return np.random.default_rng(DECODE_SEED).standard_normal((N_DECODE_VECTORS, d)).astype(np.float32)


@pytest.mark.parametrize("family", DECODE_FAMILIES)
def test_fixture_greedy_decodes_and_scores(loaded_pair, family, snapshot):
    from nla_repro.decoding import Decoding

    pair = loaded_pair(family)
    vecs = seeded_vectors(pair.d_model)
    decoding = Decoding(max_new_tokens=DECODE_MAX_NEW_TOKENS)
    inp = pair.av_inputs(vecs)
    verbs = pair.verbalize(vecs, decoding)
    texts = [v.text for v in verbs]
    fixed = list(EXPLANATIONS.values())
    payload = {
        "decoding": decoding.name,
        "vectors": f"np.random.default_rng({DECODE_SEED}).standard_normal(({N_DECODE_VECTORS}, d)) as float32",
        "input_head": vecs[:, :4],
        "injection_positions": list(inp.injection_positions),
        "injected_norms": np.linalg.norm(inp.injected_vectors.double().numpy(), axis=1),
        "verbalizations": verbs,
        # AR on the decoded texts (client convention: raw text, empty allowed), and on fixed texts
        "scores_of_decodes": pair.score(texts, vecs, allow_empty=True),
        "scores_of_fixed_explanations": pair.score(fixed, vecs[: len(fixed)]),
        "pred_norms": np.linalg.norm(pair.reconstruct(fixed).astype(np.float64), axis=1),
    }
    assert snapshot.use_extension(DECODE_EXT) == payload


# --------------------------------------------------------------------------- (5) default pair

def test_default_pair_greedy_decodes_and_scores(snapshot):
    from nla_repro import FailureConvention, load_pair
    from nla_repro.decoding import Decoding
    from nla_repro.default_pair.materialize import materialize
    from nla_repro.evalset import make_pair_handle

    dirs = materialize("smollm2")
    pair = load_pair(dirs.av, dirs.ar)
    handle = make_pair_handle("default-smollm2", dirs.av, dirs.ar, base="gguf:smollm2", n_docs=4,
                              adjacent=False)
    es = handle.eval_set(4)
    assert len(es) == 4, f"expected 4 held-out activations, found {len(es)}"
    gold = np.asarray(es.vectors[:4], dtype=np.float32)
    decoding = Decoding()
    rt = pair.round_trip(gold, decoding, convention=FailureConvention.TRAINING_DROP)
    payload = {
        "decoding": decoding.name,
        "convention": FailureConvention.TRAINING_DROP,
        "eval_rows": {"doc_ids": list(es.doc_ids[:4]), "positions": list(es.positions[:4]),
                      "final_tokens": list(es.final_tokens[:4]), "layer_index": es.layer_index,
                      "base_model": es.base_model},
        "gold_norms": np.linalg.norm(gold.astype(np.float64), axis=1),
        "verbalizations": rt.verbalizations,
        "explanations": rt.explanations,
        "mse_nrm": rt.mse,          # NaN where the training convention drops the sample
        "failure_reasons": rt.accounted.reasons,
    }
    assert snapshot.use_extension(DEFAULT_PAIR_EXT) == payload


# --------------------------------------------------------------------------- the matcher has teeth

def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set_leaf(tree, path, value):
    _leaf(tree, path[:-1])[path[-1]] = value


def _perturbed(ext: type[GoldenExtension], payload, path, new_value) -> tuple[str, str]:
    """(stored text, found text) where the stored copy has `path` replaced by `new_value`."""
    text = ext().serialize(payload)
    doc = json.loads(text)
    _set_leaf(doc["data"], path, new_value)
    return json.dumps(doc), text


@pytest.mark.parametrize("path, kind", [
    (("variance_baseline",), "scalar"),
    (("fve", "own", "value"), "scalar"),
    (("mse_nrm", "__ndarray__", "data", 5), "array element"),
    (("doc_bootstrap_ci_own", 1), "list element"),
])
def test_float_matcher_rejects_beyond_and_accepts_within_tolerance(path, kind):
    payload = metric_payload()
    ext = METRIC_EXT()
    x = _leaf(json.loads(ext.serialize(payload))["data"], path)
    tol = METRIC_EXT.spec.default
    bound = tol.bound(x)
    for factor, ok in ((0.4, True), (-0.4, True), (3.0, False), (-3.0, False), (1e6, False)):
        stored, found = _perturbed(METRIC_EXT, payload, path, x + factor * bound)
        assert ext.matches(serialized_data=found, snapshot_data=stored) is ok, (kind, factor)
        if not ok:
            (m,) = ext.mismatches(found, stored)
            msg = "\n".join(ext.diff_lines(found, stored))
            assert m.path.startswith("$." + path[0]) and m.tolerance == tol
            for part in (m.path, repr(x + factor * bound), repr(x), "rtol=1e-09", "atol=1e-12"):
                assert part in msg, (part, msg)
    # String equality would have rejected the within-tolerance copy: the matcher is not string equality.
    stored, found = _perturbed(METRIC_EXT, payload, path, x + 0.4 * bound)
    assert stored != found and ext.matches(serialized_data=found, snapshot_data=stored)


def test_exact_parts_and_structure_have_teeth():
    ext = DECODE_EXT()
    payload = {"ids": [5, 6, 7], "text": "abc", "score": np.array([0.5, 1.25]), "flag": True}
    text = ext.serialize(payload)
    assert ext.matches(serialized_data=text, snapshot_data=text)
    cases = {
        "int off by one": (("ids", 1), 7),
        "string": (("text",), "abd"),
        "bool": (("flag",), False),
        "int -> float": (("ids", 0), 5.0),
        "array value beyond atol": (("score", "__ndarray__", "data", 1), 1.25 + 3e-5),
        "array shape": (("score", "__ndarray__", "shape"), [3]),
        "nan": (("score", "__ndarray__", "data", 0), {"__float__": "nan"}),
    }
    for name, (path, value) in cases.items():
        doc = json.loads(text)
        _set_leaf(doc["data"], path, value)
        assert not ext.matches(serialized_data=text, snapshot_data=json.dumps(doc)), name
    doc = json.loads(text)
    _set_leaf(doc["data"], ("score", "__ndarray__", "data", 1), 1.25 + 0.5e-5)
    assert ext.matches(serialized_data=text, snapshot_data=json.dumps(doc))
    # a missing key, a new key and a loosened stated tolerance are all drift
    doc = json.loads(text)
    del doc["data"]["flag"]
    doc["data"]["extra"] = 1
    doc["comparison"]["default"]["atol"] = 1.0
    problems = {m.problem for m in ext.mismatches(text, json.dumps(doc))}
    assert {"key missing", "unexpected new key"} <= problems and any("tolerance changed" in p for p in problems)
    with pytest.raises(golden.GoldenFormatError, match=r"\$\.where: filesystem path"):
        ext.serialize({"where": Path("/tmp/x")})


def test_rounding_spends_at_most_one_percent_of_the_tolerance():
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000), [0.0, 1.0, -2.5]])
    for tol in (Tolerance(rtol=1e-9, atol=1e-12), Tolerance(atol=1e-5), Tolerance(rtol=1e-5)):
        for x in xs:
            r = tol.round(float(x))
            assert abs(r - x) <= 0.01 * tol.bound(x) * (1 + 1e-9) + 1e-300, (tol, x, r)
    assert Tolerance().round(math.pi) == math.pi  # zero tolerance: written exactly


def test_snapshots_live_in_top_level_golden_folder():
    assert golden.GOLDEN_DIR == Path(__file__).resolve().parent.parent / "golden"
    for ext in (CONFIG_EXT, PROMPT_EXT, METRIC_EXT, DECODE_EXT, DEFAULT_PAIR_EXT):
        assert issubclass(ext, GoldenExtension) and ext.golden_root == golden.GOLDEN_DIR


CHILD_TEST = '''
import importlib.util, pathlib, sys
HERE = pathlib.Path(__file__).parent
spec = importlib.util.spec_from_file_location("nla_golden_under_test", {golden_py!r})
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
EXT = mod.golden_extension(rtol=1e-9, root=HERE / "golden")
DATA = {{"fve": 0.7654321, "ids": [1, 2, 3]}}

def test_beyond(snapshot):
    assert snapshot.use_extension(EXT) == DATA

def test_within(snapshot):
    assert snapshot.use_extension(EXT) == DATA
'''


def test_drift_fails_a_real_pytest_run_with_a_readable_message(tmp_path):
    """End to end through syrupy: stored value off by 100x tolerance fails, off by 0.3x passes."""
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TEST.format(golden_py=golden.__file__)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    ext = golden_extension(rtol=1e-9)()
    snap_dir = tmp_path / "golden" / "test_child"
    snap_dir.mkdir(parents=True)
    for name, rel in (("test_beyond", 1e-7), ("test_within", 3e-10)):
        doc = json.loads(ext.serialize({"fve": 0.7654321, "ids": [1, 2, 3]}))
        doc["data"]["fve"] = 0.7654321 * (1 + rel)
        (snap_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "test_child.py::test_beyond" in out and "test_child.py::test_within" not in out.split("short test summary")[-1]
    for part in ("$.fve", "float outside tolerance", f"expected {0.7654321 * (1 + 1e-7)!r}",
                 "found 0.7654321", "tolerance atol=0 + rtol=1e-09*|expected|"):
        assert part in out, (part, out)
