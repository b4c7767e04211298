"""Tests of the tiny-random NLA pair fixtures (nla_repro.fixtures).

Everything is checked against the files on disk and the live tokenizers loaded from the fixture
directories (not against the factory's in-memory objects), so a layout or sidecar bug shows up here.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForConditionalGeneration

from nla_repro.fixtures import FAMILIES, FAMILY_TOKENIZER, chat_prompt_ids, make_pair, pair_factory, round_scale
from nla_repro.fixtures import templates as T
from nla_repro.fixtures.tokenizers import _COMPLETE_MARKER, load_tokenizer, tokenizer_cache_dir

K = 2
AV_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "nla_meta.yaml"}
AV_OPTIONAL = {"generation_config.json"}  # written by save_pretrained, as in HF releases
AR_FILES = {"config.json", "model.safetensors", "value_head.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "nla_meta.yaml"}
SIDECAR_TOP = ["kind", "schema_version", "role", "stage", "base_checkpoint", "d_model", "extraction_layer_index",
               "extraction", "tokens", "prompt_templates"]
TOKEN_KEYS = {"injection_char", "injection_token_id", "injection_left_neighbor_id", "injection_right_neighbor_id",
              "critic_suffix_ids"}
EXPLANATIONS = ["a cat sat on the mat", "ends with a full stop.", "code: a<b", "x", "Paris 2024!", "  padded  "]


@pytest.fixture(scope="session")
def factory(tmp_path_factory):
    return pair_factory(tmp_path_factory)


@pytest.fixture(scope="session", params=FAMILIES)
def pair(request, factory):
    return factory(request.param, layer_index=K)


def _sidecar(d):
    return yaml.safe_load((d / "nla_meta.yaml").read_text(encoding="utf-8"))


def _config(d):
    return json.loads((d / "config.json").read_text())


def _text_config(d):
    cfg = _config(d)
    return cfg.get("text_config", cfg)


@functools.lru_cache(maxsize=None)
def _tok(d):
    """Load once per directory: the Gemma tokenizer.json is 33 MB (about 3 s per load)."""
    return AutoTokenizer.from_pretrained(str(d))


# --------------------------------------------------------------------------------------------
# layout and sidecars
# --------------------------------------------------------------------------------------------
def test_layout_matches_contract(pair):
    av_files = {p.name for p in pair.av.iterdir()}
    ar_files = {p.name for p in pair.ar.iterdir()}
    assert AV_FILES <= av_files and av_files - AV_FILES <= AV_OPTIONAL, sorted(av_files)
    assert ar_files == AR_FILES, sorted(ar_files)
    assert all(p.is_file() for p in list(pair.av.iterdir()) + list(pair.ar.iterdir()))


def test_sidecars_match_contract(pair):
    av, ar = _sidecar(pair.av), _sidecar(pair.ar)
    d = _text_config(pair.av)["hidden_size"]
    for sc, role in ((av, "av"), (ar, "ar")):
        assert list(sc)[: len(SIDECAR_TOP)] == SIDECAR_TOP
        assert sc["kind"] == "nla_model" and sc["schema_version"] == 2 and sc["role"] == role
        assert sc["d_model"] == d == pair.d_model
        assert sc["extraction_layer_index"] == K
        assert sc["extraction"]["mse_scale"] == pytest.approx(math.sqrt(d), rel=0, abs=0)
        assert set(sc["tokens"]) == TOKEN_KEYS
        assert sc["prompt_templates"] == {"av": T.AV_TEMPLATE, "ar": T.AR_TEMPLATE}
        assert sc["prompt_templates"]["av"].count("<concept>{injection_char}</concept>") == 1
        assert sc["tokens"]["injection_char"] == T.INJECTION_CHARS[FAMILY_TOKENIZER[pair.family]]
        assert isinstance(sc["created_at"], str) and sc["created_by"] == "nla-repro"
    assert av["tokens"]["critic_suffix_ids"] is None and isinstance(ar["tokens"]["critic_suffix_ids"], list)
    assert isinstance(av["extraction"]["injection_scale"], float) and ar["extraction"]["injection_scale"] is None
    assert "critic" not in av and ar["critic"] == {"extraction_layer_index": K}
    # both sidecars carry the same token metadata apart from the AR-only suffix ids
    assert {k: v for k, v in av["tokens"].items() if k != "critic_suffix_ids"} == \
           {k: v for k, v in ar["tokens"].items() if k != "critic_suffix_ids"}


def test_injection_scale_is_round_number_above_measured_mean(pair):
    """injection_scale = 1.1 x mean ||h_K|| rounded up to 2 significant figures, recomputed from disk."""
    scale = _sidecar(pair.av)["extraction"]["injection_scale"]
    cls = Gemma3ForConditionalGeneration if pair.family == "gemma3_mm" else AutoModelForCausalLM
    model = cls.from_pretrained(str(pair.av), dtype=torch.float32).eval()
    inner = model.model.language_model if pair.family == "gemma3_mm" else model.model
    from nla_repro.fixtures.factory import MEASURE_TEXT

    ids = _tok(pair.av)(MEASURE_TEXT, add_special_tokens=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = inner(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[K + 1][0, 1:]
    mean = float(h.norm(dim=-1).mean())
    assert mean == pytest.approx(pair.mean_norm_at_layer, rel=1e-5)
    assert scale == round_scale(mean) == pair.injection_scale
    assert 1.1 * mean <= scale < 1.25 * mean


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["av", "ar"])
def test_marker_single_token_and_neighbours(pair, role):
    d = getattr(pair, role)
    tok, sc = _tok(d), _sidecar(d)["tokens"]
    assert tok.encode(sc["injection_char"], add_special_tokens=False) == [sc["injection_token_id"]]
    assert sc["injection_token_id"] != tok.unk_token_id
    assert len(sc["injection_char"]) == 1
    ids = chat_prompt_ids(tok, T.render_av(_sidecar(d)["prompt_templates"]["av"], sc["injection_char"]))
    hits = [i for i, t in enumerate(ids) if t == sc["injection_token_id"]]
    assert len(hits) == 1, hits
    p = hits[0]
    assert 0 < p < len(ids) - 1
    assert (ids[p - 1], ids[p + 1]) == (sc["injection_left_neighbor_id"], sc["injection_right_neighbor_id"])
    # neighbours are the untouched '<concept>' / '</concept>' boundary tokens (no cross-boundary merge)
    assert ids[p - 1] == tok.encode("<concept>", add_special_tokens=False)[-1]
    assert ids[p + 1] == tok.encode("</concept>", add_special_tokens=False)[0]


def test_critic_suffix_ids_end_every_ar_prompt(pair):
    tok, sc = _tok(pair.ar), _sidecar(pair.ar)
    suffix = sc["tokens"]["critic_suffix_ids"]
    full = tok.encode(T.ar_suffix(sc["prompt_templates"]["ar"]), add_special_tokens=False)
    assert suffix == full[1:] and len(suffix) == len(full) - 1  # first token dropped (recipe §1.4 item 7)
    for expl in EXPLANATIONS:
        ids = tok(sc["prompt_templates"]["ar"].replace("{explanation}", expl.strip()), add_special_tokens=True)["input_ids"]
        assert ids[-len(suffix):] == suffix, expl
        if tok.bos_token_id is not None and pair.family.startswith("gemma"):
            assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_known_token_values():
    """The measured ids (documented in templates.py); a change here means tokenizer drift."""
    from nla_repro.fixtures.factory import token_meta_for

    s, g = token_meta_for("smollm2"), token_meta_for("gemma3")
    assert (s["injection_char"], s["injection_token_id"]) == ("\u2192", 35132)
    assert (s["injection_left_neighbor_id"], s["injection_right_neighbor_id"]) == (46, 9617)
    assert s["critic_suffix_ids"] == [2692, 46, 2067, 18347, 46]
    assert (g["injection_char"], g["injection_token_id"]) == ("\u321c", 246566)
    assert (g["injection_left_neighbor_id"], g["injection_right_neighbor_id"]) == (236813, 954)
    assert g["critic_suffix_ids"] == [1005, 236813, 655, 6011, 236813]


@pytest.mark.parametrize("family", ["gemma3", "gemma3_mm"])
def test_gemma_bos_one_step_vs_two_step(factory, family):
    """Trap #4: one-step chat templating gives one <bos>; template-then-encode with specials gives two."""
    pair = factory(family, layer_index=K)
    tok, sc = _tok(pair.av), _sidecar(pair.av)
    content = T.render_av(sc["prompt_templates"]["av"], sc["tokens"]["injection_char"])
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    assert text == f"<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"
    one = chat_prompt_ids(tok, content)
    assert one[0] == 2 and one[1] != 2 and one.count(2) == 1
    two = tok(text, add_special_tokens=True)["input_ids"]
    assert two[:2] == [2, 2] and two.count(2) == 2 and two[1:] == one
    assert tok(text, add_special_tokens=False)["input_ids"] == one  # the training rollout path


def test_smollm2_prompt_has_default_system_turn(factory):
    pair = factory("qwen2", layer_index=K)
    tok = _tok(pair.av)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tok("x", add_special_tokens=True)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]  # no BOS


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def test_ar_config_truncated(pair):
    av, ar = _text_config(pair.av), _config(pair.ar)
    assert ar["num_hidden_layers"] == K + 1 < av["num_hidden_layers"]
    assert ar["hidden_size"] == av["hidden_size"] and ar["vocab_size"] == av["vocab_size"]
    if "layer_types" in av:
        assert ar["layer_types"] == av["layer_types"][: K + 1]
    if pair.family.startswith("gemma"):
        assert ar["architectures"] == ["Gemma3ForCausalLM"] and ar["model_type"] == "gemma3_text"
        assert "full_attention" in ar["layer_types"] and "sliding_attention" in ar["layer_types"]
    with safe_open(str(pair.ar / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    layers = {int(k.split(".")[2]) for k in keys if k.startswith("model.layers.")}
    assert layers == set(range(K + 1))
    assert not any(k.startswith(("model.norm.", "lm_head.")) for k in keys)


def test_vocab_is_the_full_tokenizer_vocab(pair):
    tok = load_tokenizer(FAMILY_TOKENIZER[pair.family])
    assert _text_config(pair.av)["vocab_size"] == len(tok) == {"smollm2": 49152, "gemma3": 262144}[pair.tokenizer_name]


def test_value_head_file(pair, factory):
    with safe_open(str(pair.ar / "value_head.safetensors"), "pt") as f:
        assert list(f.keys()) == ["weight"]
        w = f.get_tensor("weight")
    d = pair.d_model
    assert tuple(w.shape) == (d, d) and w.dtype == torch.bfloat16
    assert (w.float() - torch.eye(d)).abs().max() < 0.1  # identity + small noise (default)
    assert (w.float() - torch.eye(d)).abs().max() > 0  # ... but not exactly identity


def test_random_value_head(factory):
    pair = factory("llama", layer_index=K, value_head="random")
    with safe_open(str(pair.ar / "value_head.safetensors"), "pt") as f:
        w = f.get_tensor("weight").float()
    d = pair.d_model
    assert tuple(w.shape) == (d, d)
    assert w.abs().max() <= 1 / math.sqrt(d) + 1e-3 and w.diagonal().mean().abs() < 0.05


def test_av_loads_with_release_class(pair):
    if pair.family == "gemma3_mm":
        model, info = Gemma3ForConditionalGeneration.from_pretrained(str(pair.av), output_loading_info=True)
        # in memory: the multimodal wrapper layout model.language_model.* (+ vision tower)
        names = list(model.state_dict())
        assert any(k.startswith("model.language_model.layers.") for k in names)
        assert any(k.startswith("model.vision_tower.") for k in names)
        # on disk: what transformers' save_pretrained writes for this class (google/gemma-3 key format)
        with safe_open(str(pair.av / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("language_model.model.layers.") for k in keys)
        assert any(k.startswith("vision_tower.") for k in keys)
        assert not any(k.startswith("model.layers.") for k in keys)
    else:
        model, info = AutoModelForCausalLM.from_pretrained(str(pair.av), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert _config(pair.av)["architectures"] == [type(model).__name__]


def test_ar_backbone_reproduces_av_layer_k(pair):
    """AR blocks 0..K are AV blocks 0..K: AR output (final norm -> Identity) == AV hidden_states[K+1]."""
    cls = Gemma3ForConditionalGeneration if pair.family == "gemma3_mm" else AutoModelForCausalLM
    av = cls.from_pretrained(str(pair.av), dtype=torch.float32).eval()
    ar, info = AutoModelForCausalLM.from_pretrained(str(pair.ar), dtype=torch.float32, output_loading_info=True)
    assert set(info["missing_keys"]) <= {"model.norm.weight", "lm_head.weight"} and not info["unexpected_keys"]
    ar.model.norm = torch.nn.Identity()
    ids = _tok(pair.ar)(T.AR_TEMPLATE.replace("{explanation}", "a cat"), return_tensors="pt")["input_ids"]
    inner = av.model.language_model if pair.family == "gemma3_mm" else av.model
    with torch.no_grad():
        gold = inner(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[K + 1]
        got = ar.eval().model(input_ids=ids, use_cache=False).last_hidden_state
    torch.testing.assert_close(got, gold, rtol=0, atol=0)


def test_ar_tokenizer_right_padded_av_tokenizer_default(pair):
    assert _tok(pair.ar).padding_side == "right"
    assert json.loads((pair.ar / "tokenizer_config.json").read_text())["padding_side"] == "right"
    assert _tok(pair.av).chat_template == _tok(pair.ar).chat_template  # same tokenizer on both sides


# --------------------------------------------------------------------------------------------
# determinism, cache, mutations
# --------------------------------------------------------------------------------------------
def test_deterministic(tmp_path):
    a = make_pair("llama", tmp_path / "a", seed=3)
    b = make_pair("llama", tmp_path / "b", seed=3)
    c = make_pair("llama", tmp_path / "c", seed=4)
    for sub in ("av/model.safetensors", "ar/model.safetensors", "ar/value_head.safetensors", "av/nla_meta.yaml",
                "ar/nla_meta.yaml"):
        assert (a.av.parent / sub).read_bytes() == (b.av.parent / sub).read_bytes(), sub
    assert (a.av / "model.safetensors").read_bytes() != (c.av / "model.safetensors").read_bytes()


def test_factory_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    make_pair("llama", tmp_path / "p", seed=9)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_tokenizer_cache_complete_and_stable():
    for name in ("smollm2", "gemma3"):
        d = tokenizer_cache_dir(name)
        assert d == tokenizer_cache_dir(name)
        assert (d / _COMPLETE_MARKER).is_file() and (d / "tokenizer.json").is_file()
        assert d.name.startswith(f"{name}-") and len(d.name) == len(name) + 1 + 16
    assert (tokenizer_cache_dir("gemma3") / "chat_template.jinja").read_text() == T.GEMMA3_CHAT_TEMPLATE


def test_mutation_ar_layers_and_value_head(tmp_path):
    p = make_pair("gemma3", tmp_path / "m1", mutate={"ar.num_hidden_layers": K + 2, "ar.value_head_shape": (64, 65)})
    cfg = _config(p.ar)
    assert cfg["num_hidden_layers"] == K + 2 and len(cfg["layer_types"]) == K + 2
    assert _sidecar(p.ar)["critic"]["extraction_layer_index"] == K  # sidecar still says K: the mismatch
    with safe_open(str(p.ar / "value_head.safetensors"), "pt") as f:
        assert tuple(f.get_tensor("weight").shape) == (64, 65)
    with safe_open(str(p.ar / "model.safetensors"), "pt") as f:
        assert {int(k.split(".")[2]) for k in f.keys() if k.startswith("model.layers.")} == set(range(K + 2))


def test_mutation_value_head_missing_and_sidecar_fields(tmp_path):
    p = make_pair("llama", tmp_path / "m2", mutate={
        "ar.value_head": "missing",
        "av.sidecar.injection_token_id": 999,
        "sidecar.drop_field": "tokens.injection_left_neighbor_id",
        "ar.sidecar.extraction.mse_scale": None,
        "ar.padding_side": "left",
    })
    assert not (p.ar / "value_head.safetensors").exists()
    av, ar = _sidecar(p.av), _sidecar(p.ar)
    assert av["tokens"]["injection_token_id"] == 999 and ar["tokens"]["injection_token_id"] == 35132
    assert "injection_left_neighbor_id" not in av["tokens"] and "injection_left_neighbor_id" not in ar["tokens"]
    assert ar["extraction"]["mse_scale"] is None and av["extraction"]["mse_scale"] == 8.0
    assert _tok(p.ar).padding_side == "left"
    assert p.applied_mutations["av.sidecar.tokens.injection_token_id"] == 999


def test_mutation_mm_module_key_format(tmp_path, factory):
    p = make_pair("gemma3_mm", tmp_path / "m5", mutate={"av.mm_key_format": "module"})
    with safe_open(str(p.av / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.language_model.layers.") for k in keys) and not any(
        k.startswith("language_model.") for k in keys)
    a = Gemma3ForConditionalGeneration.from_pretrained(str(p.av))
    b = Gemma3ForConditionalGeneration.from_pretrained(str(factory("gemma3_mm", layer_index=K).av))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mutation_unknown_key_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown mutate key"):
        make_pair("llama", tmp_path / "m3", mutate={"ar.not_a_thing": 1})
    with pytest.raises(ValueError, match="not present"):
        make_pair("llama", tmp_path / "m4", mutate={"sidecar.drop_field": "tokens.nope"})
