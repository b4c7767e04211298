"""One test per trap of recipe §8: each guard fires (or the trap is impossible through the API), and the
unguarded computation is shown to give a different, wrong result, so the guard is not decorative."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from nla_repro import Decoding, FailureConvention
from nla_repro import metrics, sanity
from nla_repro.activations import extract_layer, hidden_states_index, make_doc_id, sample_positions
from nla_repro.backends import sglang
from nla_repro.checkpoint import CheckpointError, load_ar, load_av
from nla_repro.explanation import FAILED_MSE, account, parse
from nla_repro.families import ArchitectureError, check_embedding_scale
from nla_repro.fixtures.factory import make_pair
from nla_repro.prompts import PromptError, _as_id_list, av_prompt_ids, chat_ids
from nla_repro.reconstruct import pad_right, readout_index
from nla_repro.sidecar import SidecarError, render_ar_prompt


def _edit_sidecar(d, fn):
    p = d / "nla_meta.yaml"
    raw = yaml.safe_load(p.read_text())
    fn(raw)
    p.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False))


def test_trap01_gold_layer_is_hidden_states_k_plus_1(loaded_pair):
    model = loaded_pair("llama").av.model
    ids = torch.tensor([[1, 400, 500, 600, 700, 800]])
    mask = torch.ones_like(ids)
    K = 1
    hooked = extract_layer(model, ids, mask, K)
    hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert hidden_states_index(K) == K + 1
    assert torch.equal(hooked, hs[K + 1].float())
    assert not torch.allclose(hooked, hs[K].float())  # the README quick-start's off-by-one


@pytest.mark.parametrize("layers", [2, 4])  # K = 2 -> K+1 = 3 is right; K and K+2 are wrong
def test_trap02_ar_layer_count_must_be_k_plus_1(tmp_path, layers):
    d = make_pair("llama", tmp_path, mutate={"ar.num_hidden_layers": layers}, n_layers=5)
    with pytest.raises(CheckpointError, match="K\\+1"):
        load_ar(d.ar)


def test_trap03_ar_input_carries_bos(loaded_pair):
    pair = loaded_pair("gemma3")
    tok = pair.ar.tokenizer
    ids = pair.ar.tokenizer(render_ar_prompt(pair.ar.sidecar, "hello"), add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id
    # unguarded: add_special_tokens=False drops BOS and changes the AR prediction
    no_bos = tok(render_ar_prompt(pair.ar.sidecar, "hello"), add_special_tokens=False)["input_ids"]
    assert no_bos[0] != tok.bos_token_id
    a, b = pair.ar.predict([ids]), pair.ar.predict([no_bos])
    assert not np.allclose(a, b)
    # guard: an AR tokenizer that stopped adding BOS is refused when the pair is assembled
    import copy
    from nla_repro.pair import NLAPair
    broken = copy.copy(pair.ar)
    broken.tokenizer = copy.deepcopy(tok)
    broken.tokenizer.add_bos_token = False
    with pytest.raises(SidecarError, match="BOS differs"):
        NLAPair(pair.av, broken)


def test_trap04_double_bos_on_av_prompt(loaded_pair):
    pair = loaded_pair("gemma3")
    tok, sc = pair.av.tokenizer, pair.av.sidecar
    ids, _ = av_prompt_ids(tok, sc)
    assert ids.count(tok.bos_token_id) == 1
    # unguarded two-step path: render then encode with add_special_tokens=True -> two BOS
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    two_step = tok(text, add_special_tokens=True)["input_ids"]
    assert two_step[:2] == [tok.bos_token_id, tok.bos_token_id]
    # guard: a template that produces a double BOS is refused
    saved = tok.chat_template
    try:
        tok.chat_template = "{{ bos_token }}" + saved
        with pytest.raises(PromptError, match="double BOS"):
            av_prompt_ids(tok, sc)
    finally:
        tok.chat_template = saved


def test_trap05_gemma_sqrt_d_embedding_scale(loaded_pair):
    pair = loaded_pair("gemma3")
    fam = pair.av.family
    ids = torch.tensor([[2, 100, 200]])
    W = pair.av.model.get_input_embeddings().weight
    assert torch.allclose(pair.av.embed(ids)[0], W[ids[0]] * math.sqrt(fam.hidden_size), rtol=1e-6)
    # guard: a plain (unscaled) embedding module in a Gemma model is refused
    lm = pair.av.model
    orig = lm.model.embed_tokens
    try:
        lm.model.embed_tokens = nn.Embedding.from_pretrained(W.detach().clone())
        with pytest.raises(ArchitectureError, match="scale"):
            check_embedding_scale(lm, fam)
    finally:
        lm.model.embed_tokens = orig


def test_trap06_injection_scale_mandatory_and_plausible(pair_dirs, loaded_pair, rng):
    d = pair_dirs("llama")
    raw = yaml.safe_load((d.av / "nla_meta.yaml").read_text())
    raw["extraction"].pop("injection_scale")
    from nla_repro.sidecar import parse_sidecar
    with pytest.raises(SidecarError, match="injection_scale"):
        parse_sidecar(raw)
    pair = loaded_pair("llama")
    gold = rng.normal(size=(4, pair.d_model)) * 1e4
    assert sanity.injection_scale_mismatch(pair.av.sidecar.injection_scale, gold).trap == 6
    ok = gold / np.linalg.norm(gold, axis=1, keepdims=True) * pair.av.sidecar.injection_scale
    assert sanity.injection_scale_mismatch(pair.av.sidecar.injection_scale, ok) is None


def test_trap07_radix_cache_and_aliased_outputs(rng):
    with pytest.raises(ValueError, match="radix"):
        sglang.check_launch_args(["python", "-m", "sglang.launch_server", "--model-path", "x"])
    sglang.check_launch_args(sglang.launch_args("x"))
    v = rng.normal(size=(10, 8))
    same = ["<explanation>the same text for all of them</explanation>"] * 10
    assert sanity.aliased_decodes(same, v).trap == 7
    assert sanity.aliased_decodes([f"<explanation>text number {i}</explanation>" for i in range(10)], v) is None


def test_trap08_no_input_ids_with_embeds():
    payload = sglang.generate_payload(np.zeros((3, 4)), Decoding(), 150)
    sglang.check_payload(payload)
    assert "input_ids" not in payload
    with pytest.raises(ValueError, match="trap #8"):
        sglang.check_payload({**payload, "input_ids": [1, 2, 3]})


def test_trap09_dropped_injection_looks_like_newlines():
    assert sanity.degenerate_decodes(["\n\n\n\n"] * 5).trap == 9
    assert sanity.degenerate_decodes(["<explanation>Recipe text: flour</explanation>"] * 5) is None


def test_trap10_wrong_class_leaves_random_weights(pair_dirs, tmp_path):
    import shutil
    bad = tmp_path / "av"
    shutil.copytree(pair_dirs("gemma3_mm").av, bad)
    cfg = json.loads((bad / "config.json").read_text())
    text_cfg = cfg["text_config"]
    text_cfg["architectures"] = ["Gemma3ForCausalLM"]
    (bad / "config.json").write_text(json.dumps(text_cfg))  # pretend it is a bare text model
    with pytest.raises(CheckpointError, match="missing"):
        load_av(bad)


@pytest.mark.parametrize("mutation,match", [
    ({"ar.value_head": "missing"}, "value head missing"),
    ({"ar.value_head_shape": (64, 65)}, "shape"),
    ({"ar.value_head_key": "linear.weight"}, "single tensor 'weight'"),
])
def test_trap11_value_head_must_exist_and_fit(tmp_path, mutation, match):
    d = make_pair("llama", tmp_path, mutate=mutation)
    with pytest.raises(CheckpointError, match=match):
        load_ar(d.ar)


def test_trap11_final_norm_is_identity(loaded_pair):
    ar = loaded_pair("llama").ar
    assert isinstance(ar.backbone.norm, nn.Identity)


def test_trap12_readout_index_under_left_padding(loaded_pair):
    pair = loaded_pair("llama")
    ids = [[1, 2, 3, 4, 5], [1, 2, 3]]
    _, right_mask = pad_right(ids, 0)
    left_mask = right_mask.flip(-1)
    naive = left_mask.sum(-1) - 1  # the release's historical bug
    assert readout_index(left_mask).tolist() == [4, 4]
    assert naive.tolist() == [4, 2]  # wrong row 1 under left padding
    batched = pair.ar.predict(ids, batch_size=2)
    single = np.concatenate([pair.ar.predict([x]) for x in ids])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_trap13_explanation_is_stripped(loaded_pair):
    pair = loaded_pair("llama")
    a = pair.reconstruct(["foo bar"])
    b = pair.reconstruct(["\nfoo bar\n"])
    np.testing.assert_array_equal(a, b)
    tok, sc = pair.ar.tokenizer, pair.ar.sidecar
    raw = sc.ar_template.replace("{explanation}", "\nfoo bar\n")  # unguarded
    assert tok(raw)["input_ids"] != tok(render_ar_prompt(sc, "\nfoo bar\n"))["input_ids"]


def test_trap14_failure_conventions_differ():
    texts = [("<explanation>a</explanation>", False), ("no tag here", False),
             ("<explanation>cut</explanation>", True)]
    mse = np.array([0.5, 1.0, 0.7])
    out = {}
    for conv in FailureConvention:
        parsed = [parse(t, tr, conv) for t, tr in texts]
        scored = np.array([m if p.text_for_ar is not None else np.nan for m, p in zip(mse, parsed)])
        out[conv] = account(scored, parsed, conv)
    assert np.nanmean(out[FailureConvention.TRAINING_DROP].mse) == 0.5
    assert out[FailureConvention.TRAINING_DROP].n_failed == 2
    assert out[FailureConvention.REWARD_CHARGE_2].mse.tolist() == [0.5, FAILED_MSE, FAILED_MSE]
    assert out[FailureConvention.CLIENT_RAW].mse.tolist() == [0.5, 1.0, 0.7]  # raw text and truncated scored


def test_trap15_small_own_denominator_is_flagged(rng):
    assert sanity.own_denominator_too_small(1).trap == 15
    assert sanity.own_denominator_too_small(100) is None
    # unguarded: one document's vectors share a direction, so V_own << V_train and fve is deflated
    base = rng.normal(size=64)
    one_doc = base + 0.2 * rng.normal(size=(20, 64))
    many = rng.normal(size=(2000, 64))
    assert metrics.variance_baseline(one_doc) < 0.2 * metrics.variance_baseline(many)


def test_trap16_meannorm_vs_rawvar_are_named_and_differ():
    V = 0.7335
    M = metrics.meannorm_from_rawvar(V)
    assert M == pytest.approx(0.9675, abs=5e-4)
    mse = np.full(10, 0.220)
    assert metrics.fve_nrm(mse, V) == pytest.approx(0.700, abs=1e-3)
    assert metrics.fve_nrm(mse, M) == pytest.approx(0.773, abs=1e-3)  # inflated "0.77" of the recipe


def test_trap17_metric_maths_in_fp64(rng):
    d = 3840
    x = rng.normal(size=(8, d)) * 7e4
    p = x + rng.normal(size=(8, d)) * 7e3
    exact = 2 * (1 - (p * x).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(metrics.mse_nrm(p.astype(np.float32), x.astype(np.float32)), exact, rtol=1e-6)
    tp, tx = torch.tensor(p, dtype=torch.bfloat16), torch.tensor(x, dtype=torch.bfloat16)
    bf = (tp / tp.norm(dim=-1, keepdim=True) - tx / tx.norm(dim=-1, keepdim=True)).pow(2).sum(-1)
    # what bf16 maths would have reported: errors of a few 1e-5 in mse_nrm, i.e. ~0.001 fve at Gemma-12B's
    # sensitivity (0.033 fve per 0.001 mse) -- avoidable noise the fp64 path does not have
    assert np.abs(bf.float().numpy() - exact).max() > 1e-5


def test_trap18_decoding_named_and_capped():
    assert Decoding().max_new_tokens == 150 and Decoding().budget(125) == 150
    assert Decoding().budget(200) == 100  # min(150, 300 - prompt_len)
    assert "greedy" in Decoding().name and "T=1.0" in Decoding(greedy=False).name
    with pytest.raises(ValueError):
        Decoding().budget(300)


def test_trap19_positions_below_50_and_specials_never_sampled():
    ids = [1] + list(range(100, 160)) + [2] * 5 + list(range(200, 240))
    pos = sample_positions(ids, "c:en:0", seed=42, n=10, min_position=50, special_ids={1, 2})
    assert pos and all(p >= 50 and ids[p] not in (1, 2) for p in pos)


def test_trap20_marker_comes_from_sidecar(pair_dirs, tmp_path):
    import shutil
    bad = tmp_path / "av"
    shutil.copytree(pair_dirs("llama").av, bad)
    _edit_sidecar(bad, lambda r: r["tokens"].update(injection_char="㊗"))
    with pytest.raises(SidecarError, match="injection_token_id"):
        load_av(bad)


def test_trap21_batch_encoding_unwrapped(loaded_pair):
    tok = loaded_pair("llama").av.tokenizer
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                  add_generation_prompt=True, return_dict=True)
    assert _as_id_list(enc) == chat_ids(tok, "hi")
    assert list(enc.keys()) != chat_ids(tok, "hi")  # iterating the BatchEncoding yields keys


def test_trap22_doc_id_names_the_corpus_not_a_path():
    ids = list(range(1000, 1300))
    a = sample_positions(ids, make_doc_id("openbmb/Ultra-FineWeb", "en", 7), n=10, special_ids=set())
    b = sample_positions(ids, make_doc_id("/data/ufw", "en", 7), n=10, special_ids=set())
    assert make_doc_id("openbmb/Ultra-FineWeb", "en", 7) == "openbmb/Ultra-FineWeb:en:7"
    assert a != b  # a local path silently changes the sampled positions


def test_trap23_vectors_stored_as_fixed_width_numpy(tmp_path, rng):
    """No pyarrow variable-length lists anywhere: the cache stores float32 arrays as .npy, exactly."""
    from nla_repro.cache import CacheKey, ResultsCache
    cache = ResultsCache(tmp_path)
    v = rng.normal(size=(300, 64)).astype(np.float32)
    key = CacheKey({"step": "vectors", "checkpoint": "x"})
    cache.put(key, {"n": 300}, arrays={"v": v})
    got = cache.get(key).arrays["v"]
    assert got.dtype == np.float32 and got.shape == (300, 64)
    np.testing.assert_array_equal(got, v)


def test_trap24_ar_forward_without_cache(loaded_pair):
    ar = loaded_pair("gemma3").ar
    seen = {}
    handle = ar.backbone.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        ar.predict([[2, 10, 11, 12]])
    finally:
        handle.remove()
    assert seen.get("use_cache") is False


class _Scaled(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.embed_scale = torch.tensor(scale)


class _WithEmbedding(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.emb = _Scaled(scale)

    def get_input_embeddings(self):
        return self.emb


@pytest.mark.parametrize("d", [640, 3840, 5376])
def test_trap25_bf16_embed_scale_accepted_other_scales_refused(d):
    """HF stores Gemma's sqrt(d) in the weight dtype: the bf16 value (<= 0.25 % off, recipe §2.3) is the
    same scale; 0.3 % off is not."""
    from nla_repro.families import Family
    fam = Family("gemma3_text", "gemma3_text", d, 4, False)
    bf16 = torch.tensor(math.sqrt(d), dtype=torch.bfloat16).item()
    assert check_embedding_scale(_WithEmbedding(bf16), fam) == pytest.approx(bf16)
    with pytest.raises(ArchitectureError, match="scale"):
        check_embedding_scale(_WithEmbedding(math.sqrt(d) * 1.003), fam)


def test_trap26_cos_is_not_comparable_across_models():
    """Same cos, very different fve: Gemma-27B's V=0.0579 vs Qwen's 0.7335 (examples' summaries)."""
    cos = 0.99
    mse = np.array([2 * (1 - cos)])
    assert metrics.fve_nrm(mse, 0.7335) > 0.97
    assert metrics.fve_nrm(mse, 0.0579) < 0.66
