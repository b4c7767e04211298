"""The embedded default pair: shipped deltas (checksums, size), the materializer's layout, sidecars that
pass the project's checks, exact LoRA merges, idempotent caching, and greedy determinism on CPU."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import importlib

M = importlib.import_module("nla_repro.default_pair.materialize")

FAM = "smollm2"
DELTAS = M.DELTAS_DIR / FAM


def test_manifest_checksums_and_size_budget():
    man = M.verify_deltas(FAM)
    total = sum((DELTAS / e["file"]).stat().st_size for e in man["files"].values())
    assert total <= 25 * 1024 * 1024, total
    sc = man["sidecar"]
    assert sc["extraction_layer_index"] == 20 and sc["d_model"] == 576 and sc["mse_scale"] == 24.0
    assert 0 < sc["train_rawvar"] <= 1 and sc["injection_scale"] > 0
    assert "<INJECT>" in sc["av_template"] and sc["ar_template"].count("{explanation}") == 1


def test_tampered_delta_is_refused(tmp_path, monkeypatch):
    man = M.load_manifest(FAM)
    bad = json.loads(json.dumps(man))
    bad["files"]["value_head"]["sha256"] = "0" * 64
    with pytest.raises(M.MaterializeError, match="sha256 mismatch"):
        M.verify_deltas(FAM, bad)
    with pytest.raises(M.MaterializeError, match="no trained default pair"):
        M.load_manifest("nonexistent")


def test_delta_shapes():
    from safetensors.torch import load_file

    man = M.load_manifest(FAM)
    av = load_file(str(DELTAS / man["files"]["av_lora"]["file"]))
    ar = load_file(str(DELTAS / man["files"]["ar_lora"]["file"]))
    vh = load_file(str(DELTAS / man["files"]["value_head"]["file"]))
    r_av, r_ar = man["files"]["av_lora"]["rank"], man["files"]["ar_lora"]["rank"]
    assert len(av) == 30 * 7 * 2 and len(ar) == 21 * 7 * 2
    assert av["model.layers.0.self_attn.q_proj.lora_A"].shape == (r_av, 576)
    assert av["model.layers.29.mlp.down_proj.lora_B"].shape == (576, r_av)
    assert ar["layers.20.mlp.up_proj.lora_B"].shape == (1536, r_ar)
    assert not any(k.startswith("layers.21.") for k in ar)
    assert set(vh) == {"weight"} and vh["weight"].shape == (576, 576) and vh["weight"].dtype == torch.bfloat16
    # trained: B matrices moved away from their zero init
    assert float(av["model.layers.10.self_attn.v_proj.lora_B"].float().abs().max()) > 0
    assert float(ar["layers.10.self_attn.v_proj.lora_B"].float().abs().max()) > 0


def test_cache_key_is_content_addressed():
    man = M.load_manifest(FAM)
    k = M.cache_key(man)
    assert k == M.cache_key(json.loads(json.dumps(man)))
    other = json.loads(json.dumps(man))
    other["files"]["av_lora"]["sha256"] = "f" * 64
    assert M.cache_key(other) != k


# ------------------------------------------------------------------------------------------ slow: real base
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # the base GGUF comes from the installed package or the pinned pip-fetched asset: a failure here is
    # a real failure (checksum, fetch), never a skip
    root = tmp_path_factory.mktemp("default-pairs")
    return root, M.materialize(FAM, root)


@pytest.mark.slow
def test_layout_and_sidecars(pair):
    from transformers import AutoTokenizer

    from nla_repro.prompts import check_sidecar_against_tokenizer
    from nla_repro.sidecar import check_pair_sidecars, load_sidecar

    _, d = pair
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "nla_meta.yaml"):
        assert (d.av / f).is_file(), f
    for f in ("config.json", "model.safetensors", "value_head.safetensors", "tokenizer.json", "nla_meta.yaml"):
        assert (d.ar / f).is_file(), f
    assert json.loads((d.ar / "config.json").read_text())["num_hidden_layers"] == 21
    assert json.loads((d.ar / "tokenizer_config.json").read_text())["padding_side"] == "right"
    gen = json.loads((d.av / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 1]  # <|im_end|>, <|im_start|> (near-tied logits; both end the turn)
    av_sc, ar_sc = load_sidecar(d.av), load_sidecar(d.ar)
    assert av_sc.role == "av" and ar_sc.role == "ar"
    assert av_sc.injection_scale == M.load_manifest(FAM)["sidecar"]["injection_scale"]
    assert ar_sc.extraction_layer_index == 20 and ar_sc.train_denominator == av_sc.train_denominator
    assert ar_sc.critic_suffix_ids is not None and av_sc.critic_suffix_ids is None
    check_pair_sidecars(av_sc, ar_sc)
    check_sidecar_against_tokenizer(av_sc, AutoTokenizer.from_pretrained(d.av))
    check_sidecar_against_tokenizer(ar_sc, AutoTokenizer.from_pretrained(d.ar))


@pytest.mark.slow
def test_merged_weights_equal_base_plus_scaled_delta(pair):
    from safetensors.torch import load_file

    from nla_repro.training.base import load_base

    _, d = pair
    man = M.load_manifest(FAM)
    _, base = load_base(FAM)
    bsd = base.state_dict()
    av = load_file(str(d.av / "model.safetensors"))
    ar = load_file(str(d.ar / "model.safetensors"))
    av_l = load_file(str(DELTAS / man["files"]["av_lora"]["file"]))
    ar_l = load_file(str(DELTAS / man["files"]["ar_lora"]["file"]))
    s_av = man["files"]["av_lora"]["alpha"] / man["files"]["av_lora"]["rank"]
    s_ar = man["files"]["ar_lora"]["alpha"] / man["files"]["ar_lora"]["rank"]
    for layer, mod in ((0, "self_attn.q_proj"), (13, "mlp.down_proj"), (20, "self_attn.k_proj")):
        k = f"model.layers.{layer}.{mod}"
        want_av = bsd[f"{k}.weight"].float() + s_av * (av_l[f"{k}.lora_B"].float() @ av_l[f"{k}.lora_A"].float())
        want_ar = bsd[f"{k}.weight"].float() + s_ar * (
            ar_l[f"layers.{layer}.{mod}.lora_B"].float() @ ar_l[f"layers.{layer}.{mod}.lora_A"].float())
        assert torch.equal(av[f"{k}.weight"], want_av)
        assert torch.equal(ar[f"{k}.weight"], want_ar)
        assert not torch.equal(av[f"{k}.weight"], bsd[f"{k}.weight"])
    assert torch.equal(av["model.layers.5.input_layernorm.weight"], bsd["model.layers.5.input_layernorm.weight"])
    assert torch.equal(ar["model.embed_tokens.weight"], bsd["model.embed_tokens.weight"])
    assert not any(k.startswith("model.layers.21.") for k in ar)
    assert "model.norm.weight" not in ar and "lm_head.weight" not in ar
    vh = load_file(str(d.ar / "value_head.safetensors"))["weight"]
    assert torch.equal(vh, load_file(str(DELTAS / "value_head.safetensors"))["weight"])


@pytest.mark.slow
def test_materialize_is_idempotent(pair):
    root, d = pair
    stamp = d.av.parent / "materialized.json"
    before = (stamp.stat().st_mtime_ns, (d.av / "model.safetensors").stat().st_mtime_ns)
    again = M.materialize(FAM, root)
    assert again == d
    assert (stamp.stat().st_mtime_ns, (d.av / "model.safetensors").stat().st_mtime_ns) == before
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [d.av.parent.name]


@pytest.mark.slow
def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("NLA_REPRO_CACHE", str(tmp_path))
    assert M.cache_root() == tmp_path / "default_pairs"
    monkeypatch.delenv("NLA_REPRO_CACHE")
    assert M.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "nla-repro" / "default_pairs"


@pytest.mark.slow
def test_loads_through_harness_and_greedy_is_repeatable(pair):
    """The pair loads through the same code path as a released checkpoint; two greedy decodes of the
    same vectors are token-identical, parse, and the AR scores them better than a shuffled pairing."""
    import numpy as np

    from nla_repro.decoding import Decoding
    from nla_repro.pair import NLAPair
    from nla_repro.training.models import extract_explanation

    _, d = pair
    p = NLAPair.from_dirs(d.av, d.ar)
    assert p.layer_index == 20 and p.train_denominator is not None
    rng = np.random.default_rng(0)
    v = rng.normal(size=(2, 576)).astype(np.float32)
    dec = Decoding(max_new_tokens=40)
    a, b = p.verbalize(v, dec), p.verbalize(v, dec)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert all(x.text.startswith("<explanation>") for x in a)
    scores = p.score(["Encyclopedic article: about city.", "Recipe instructions: about flour."], v)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 4))
    assert extract_explanation("<explanation>\n x \n</explanation>") == "x"


# ------------------------------------------------------------------------------------------ second family
GEMMA = "gemma3"


def test_gemma3_manifest_and_delta_shapes():
    """Gemma-3-270M pair: 18 blocks, d 640, K = 12 (AR keeps 13 blocks), marker U+321C = 246566."""
    from safetensors.torch import load_file

    man = M.verify_deltas(GEMMA)
    d = M.DELTAS_DIR / GEMMA
    assert sum((d / e["file"]).stat().st_size for e in man["files"].values()) <= 25 * 1024 * 1024
    sc = man["sidecar"]
    assert (sc["extraction_layer_index"], sc["d_model"], sc["injection_token_id"]) == (12, 640, 246566)
    assert sc["injection_char"] == "\u321c" and abs(sc["mse_scale"] - 640 ** 0.5) < 1e-9
    av = load_file(str(d / man["files"]["av_lora"]["file"]))
    ar = load_file(str(d / man["files"]["ar_lora"]["file"]))
    assert len(av) == 18 * 7 * 2 and len(ar) == 13 * 7 * 2 and not any(k.startswith("layers.13.") for k in ar)
    r = man["files"]["av_lora"]["rank"]
    assert av["model.layers.0.self_attn.q_proj.lora_B"].shape == (1024, r)  # 4 heads x 256
    assert float(av["model.layers.10.mlp.down_proj.lora_B"].float().abs().max()) > 0


@pytest.mark.slow
def test_gemma3_materializes_and_decodes_through_the_harness():
    """The second family goes through the released-layout path: sidecar checks (BOS, sqrt(d) embedding
    scale, neighbours), <end_of_turn> as a stop token, and on real held-out layer-12 activations (gold from
    the GGUF base through the harness's extractor) repeatable greedy decodes that parse."""
    from nla_repro.decoding import Decoding
    from nla_repro.explanation import extract_explanation
    from nla_repro.pairs import default_pair_handle

    h = default_pair_handle(family=GEMMA, n_docs=4)  # gold from the first 4 held-out documents only
    gen = json.loads((h.av_dir / "generation_config.json").read_text())
    assert 106 in gen["eos_token_id"]  # <end_of_turn> ends the AV's answer
    p = h.load()
    assert p.layer_index == 12 and p.train_denominator is not None
    v = h.eval_set(4).vectors
    dec = Decoding(max_new_tokens=120)
    a, b = p.verbalize(v, dec), p.verbalize(v, dec)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert all(extract_explanation(x.text) for x in a), [x.text for x in a]
