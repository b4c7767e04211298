"""Tests for nla_repro.activations: layer convention, stage-0 sampler, extraction, alignment."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
)

from nla_repro.activations import (
    SamplerConfig,
    align_positions,
    decoder_layers,
    doc_rng,
    extract_layer,
    extract_positions,
    hidden_states_index,
    make_doc_id,
    mean_alignment_error,
    sample_positions,
    tokenize_document,
)

N_LAYERS = 4
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            intermediate_size=128, vocab_size=1024, num_hidden_layers=N_LAYERS,
            max_position_embeddings=512)


# --------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny matmuls are dominated by thread hand-off on a loaded 2-core box; restore afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _gemma_text_config() -> Gemma3TextConfig:
    layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    return Gemma3TextConfig(**TINY, sliding_window=16, layer_types=layer_types[:N_LAYERS])


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY))
    elif name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**TINY))
    elif name == "gemma3":
        model = Gemma3ForCausalLM(_gemma_text_config())
    elif name == "gemma3_cg":
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=32, patch_size=16)
        cfg = Gemma3Config(text_config=_gemma_text_config(), vision_config=vision, mm_tokens_per_image=4,
                           image_token_index=1000, boi_token_index=1001, eoi_token_index=1002)
        model = Gemma3ForConditionalGeneration(cfg)
    else:  # pragma: no cover
        raise KeyError(name)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3", "gemma3_cg"])
def tiny_model(request):
    return request.param, _build(request.param)


def _ids(batch=2, length=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 900, (batch, length), generator=g)
    return input_ids, torch.ones_like(input_ids)


# --------------------------------------------------------------------------- layer convention

def test_hidden_states_index_is_k_plus_one():
    assert hidden_states_index(0) == 1
    assert hidden_states_index(20) == 21  # Qwen L20 -> hidden_states[21] (recipe section 0)
    assert hidden_states_index(53) == 54
    with pytest.raises(ValueError, match="layer_index"):
        hidden_states_index(-1)


def test_decoder_layers_resolves_every_family(tiny_model):
    name, model = tiny_model
    layers = decoder_layers(model)
    assert len(layers) == N_LAYERS
    expected = model.model.language_model.layers if name == "gemma3_cg" else model.model.layers
    assert layers is expected


def test_decoder_layers_rejects_unknown_model():
    with pytest.raises(ValueError, match="Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_hook_equals_hidden_states_k_plus_1_not_k(tiny_model, k):
    """Block-K hook == hidden_states[K+1] exactly; hidden_states[K] (README off-by-one) differs."""
    _, model = tiny_model
    input_ids, mask = _ids()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == N_LAYERS + 1
    got = extract_layer(model, input_ids, mask, k)
    assert got.dtype == torch.float32 and got.shape == (2, 40, 64)
    assert torch.equal(got, hs[hidden_states_index(k)].float())
    assert not torch.allclose(got, hs[k].float(), atol=1e-3), "trap #1: hidden_states[K] is block K-1"


def test_stop_early_matches_full_forward(tiny_model):
    _, model = tiny_model
    input_ids, mask = _ids(seed=3)
    early = extract_layer(model, input_ids, mask, 1, stop_early=True)
    full = extract_layer(model, input_ids, mask, 1, stop_early=False)
    assert torch.equal(early, full)


def test_last_block_hook_is_pre_final_norm():
    """For K = L-1 HF's hidden_states[L] is the *normed* output; the hook keeps the raw block output."""
    model = _build("llama")
    input_ids, mask = _ids()
    with torch.no_grad():
        hs = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        raw = extract_layer(model, input_ids, mask, N_LAYERS - 1)
        assert torch.allclose(model.model.norm(raw), hs[N_LAYERS], atol=1e-6)
    assert not torch.allclose(raw, hs[N_LAYERS], atol=1e-3)


def test_extract_layer_rejects_out_of_range_layer():
    model = _build("qwen2")
    input_ids, mask = _ids()
    with pytest.raises(ValueError, match=r"0 <= K < 4"):
        extract_layer(model, input_ids, mask, N_LAYERS)


def test_extract_layer_bf16_model_returns_fp32_bf16_exact():
    model = _build("llama").to(torch.bfloat16)
    input_ids, mask = _ids()
    got = extract_layer(model, input_ids, mask, 1)
    assert got.dtype == torch.float32
    assert torch.equal(got, got.to(torch.bfloat16).float())


# --------------------------------------------------------------------------- sampler

def _recipe_reference(token_ids, doc_id, seed, n, min_position, special):
    """Recipe section 5 written out literally (stage0_extract.py:54-68)."""
    rng = random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())
    cands = [i for i, t in enumerate(token_ids) if i >= min_position and t not in special]
    return rng.sample(cands, k=min(n, len(cands))) if cands else []


def test_doc_id_format():
    assert make_doc_id("openbmb/Ultra-FineWeb", "en", 12345) == "openbmb/Ultra-FineWeb:en:12345"


def test_sample_positions_golden():
    """Frozen output for a fixed doc: guards the seed string, the digest seeding and sample order."""
    doc_id = "openbmb/Ultra-FineWeb:en:12345"
    got = sample_positions(list(range(200)), doc_id, special_ids=[])
    assert got == [90, 114, 53, 191, 158, 164, 186, 174, 68, 96]
    assert got != sorted(got)  # sample order, not sorted
    assert got == _recipe_reference(list(range(200)), doc_id, 42, 10, 50, set())


def test_sample_positions_excludes_specials_and_early_positions():
    ids = [1] + [5] * 59 + [2] * 10 + [7] * 5  # BOS, 59 text, 10 specials (60..69), 5 text (70..74)
    got = sample_positions(ids, "c:s:0", n=10, min_position=50, special_ids={1, 2})
    assert len(got) == 10
    assert all(p >= 50 and ids[p] not in {1, 2} for p in got)
    assert set(got) <= set(range(50, 60)) | set(range(70, 75))
    assert got == _recipe_reference(ids, "c:s:0", 42, 10, 50, {1, 2})


def test_sample_positions_k_is_min_n_candidates_and_empty_when_none():
    assert sorted(sample_positions(list(range(53)), "d", special_ids=[])) == [50, 51, 52]
    assert sample_positions(list(range(50)), "d", special_ids=[]) == []  # index 50 does not exist
    assert sample_positions([9] * 80, "d", special_ids=[9]) == []


def test_sample_positions_keyed_by_seed_and_doc_id_only():
    ids = list(range(500))
    a = sample_positions(ids, "corpus:en:1", special_ids=[])
    assert a == sample_positions(ids, "corpus:en:1", special_ids=[])
    assert a != sample_positions(ids, "corpus:en:2", special_ids=[])
    assert a != sample_positions(ids, "corpus:en:1", seed=43, special_ids=[])
    assert a != sample_positions(ids, "/local/path:en:1", special_ids=[])  # trap #22
    assert doc_rng(42, "x").random() == doc_rng(42, "x").random()


def test_sampler_config_cache_key_covers_every_field():
    base = SamplerConfig()
    assert set(base.cache_key_fields()) == {"seed", "n_per_doc", "min_position", "max_length", "version"}
    changed = [SamplerConfig(seed=1), SamplerConfig(n_per_doc=5), SamplerConfig(min_position=10),
               SamplerConfig(max_length=2048), SamplerConfig(version="other")]
    keys = {base.cache_key()} | {c.cache_key() for c in changed}
    assert len(keys) == 6
    assert base.cache_key() == SamplerConfig().cache_key()


# --------------------------------------------------------------------------- tiny tokenizers (offline)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Natural language autoencoders explain activations with plain English text.",
    "A residual stream vector is injected as a single token embedding.",
    "Reconstruction quality is measured as the fraction of variance explained.",
    "Documents are tokenised with a beginning of sequence token first.",
]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                   eos_token="<eos>", padding_side="right")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<bos>", "<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer=trainer)
    return _wrap(tok)


def _char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    vocab = {"<bos>": 0, "<pad>": 1, "<eos>": 2, "<unk>": 3}
    for ch in sorted(set(text)):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return _wrap(tok)


def _word_tokenizer(text: str) -> PreTrainedTokenizerFast:
    vocab = {"<bos>": 0, "<pad>": 1, "<eos>": 2, "<unk>": 3}
    for word in text.split():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(tok)


# --------------------------------------------------------------------------- batched extraction

def _doc(i: int, n_sent: int) -> str:
    return " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(n_sent))


def test_extract_positions_matches_single_sequence_forward(bpe_tokenizer):
    model = _build("qwen2")
    tok = bpe_tokenizer
    docs = [(make_doc_id("toy", "en", i), _doc(i, n)) for i, n in enumerate([3, 1, 4, 2, 5])]
    cfg = SamplerConfig(n_per_doc=4, min_position=50, max_length=90)
    k = 2
    acts = extract_positions(model, tok, docs, k, cfg, batch_size=2)

    lengths = {doc_id: len(tokenize_document(tok, text, cfg.max_length)) for doc_id, text in docs}
    short = [doc_id for doc_id, n in lengths.items() if n <= cfg.min_position]
    assert short and acts.skipped_doc_ids == short  # reported, not silently dropped
    assert max(lengths.values()) == cfg.max_length  # right truncation exercised
    assert len(set(lengths.values())) == len(lengths)  # unequal lengths: right padding exercised
    assert acts.vectors.dtype == np.float32 and acts.vectors.shape == (len(acts), 64)
    assert np.array_equal(acts.n_raw_tokens, acts.positions + 1)
    assert acts.layer_index == k and acts.sampler == cfg

    for doc_id, text in docs:
        if doc_id in short:
            continue
        ids = tokenize_document(tok, text, cfg.max_length)
        assert ids[0] == tok.bos_token_id and len(ids) <= cfg.max_length
        rows = [i for i, d in enumerate(acts.doc_ids) if d == doc_id]
        expected_pos = sample_positions(ids, doc_id, seed=42, n=4, min_position=50,
                                        special_ids=tok.all_special_ids)
        assert acts.positions[rows].tolist() == expected_pos  # sampler order preserved
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        ref = hs[k + 1][0, expected_pos].float().numpy()
        np.testing.assert_allclose(acts.vectors[rows], ref, rtol=1e-4, atol=1e-5)
        for r, pos in zip(rows, expected_pos):
            assert acts.token_ids[r] == ids[pos]
            assert acts.context_text[r] == tok.decode(ids[: pos + 1], skip_special_tokens=True)
            assert "<bos>" not in acts.context_text[r]


def test_extract_positions_batch_size_invariant(bpe_tokenizer):
    model = _build("llama")
    docs = [(make_doc_id("toy", "en", i), _doc(i, 3)) for i in range(3)]
    cfg = SamplerConfig(n_per_doc=3, max_length=100)
    a = extract_positions(model, bpe_tokenizer, docs, 1, cfg, batch_size=1)
    b = extract_positions(model, bpe_tokenizer, docs, 1, cfg, batch_size=3)
    assert a.doc_ids == b.doc_ids and np.array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- alignment

def test_align_char_to_word_golden():
    text = "ab cd"
    char_tok, word_tok = _char_tokenizer(text), _word_tokenizer(text)
    # char ids: <bos> a b ' ' c d  -> positions 1..5 ; word ids: <bos> ab cd -> 1, 2
    dst, err = align_positions(text, char_tok, [1, 2, 3, 4, 5], word_tok)
    assert dst == [1, 1, 1, 1, 2]
    assert err == [1, 0, 1, 2, 0]  # 'a' has no word ending <= 1: nearest end ("ab", 2) is used
    assert mean_alignment_error(err) == pytest.approx(0.8)
    dst, err = align_positions(text, word_tok, [1, 2], char_tok)
    assert dst == [2, 5] and err == [0, 0]


def test_align_identity_and_bpe(bpe_tokenizer):
    text = _doc(0, 3)
    n = len(bpe_tokenizer(text)["input_ids"])
    positions = list(range(1, n))
    dst, err = align_positions(text, bpe_tokenizer, positions, bpe_tokenizer)
    assert dst == positions and err == [0] * len(positions)
    char_tok = _char_tokenizer(text)
    dst, err = align_positions(text, bpe_tokenizer, positions, char_tok)
    assert err == [0] * len(positions)  # every BPE token end is some character's end
    back, err = align_positions(text, char_tok, dst, bpe_tokenizer)
    assert back == positions and err == [0] * len(positions)


def test_align_rejects_special_and_out_of_range(bpe_tokenizer):
    text = "The quick brown fox"
    with pytest.raises(ValueError, match="special token"):
        align_positions(text, bpe_tokenizer, [0], bpe_tokenizer)
    with pytest.raises(ValueError, match="src_positions"):
        align_positions(text, bpe_tokenizer, [999], bpe_tokenizer)
    with pytest.raises(ValueError, match="char_errors"):
        mean_alignment_error([])


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from nla_repro.fixtures.tokenizers import load_tokenizer
    return load_tokenizer("smollm2")  # pinned GGUF via nla_repro.assets, cached on disk


@pytest.mark.slow
def test_align_real_tokenizer(smollm2_tokenizer, bpe_tokenizer):
    tok = smollm2_tokenizer
    text = _doc(1, 4) + " Zürich café — 日本語 naïve."
    n = len(tok(text, add_special_tokens=True)["input_ids"])
    positions = list(range(n))
    dst, err = align_positions(text, tok, positions, tok)
    assert dst == positions and mean_alignment_error(err) == 0.0
    dst, err = align_positions(text, tok, positions, bpe_tokenizer)
    assert len(dst) == n and all(e >= 0 for e in err)
    ends_src = [e for _, e in tok(text, return_offsets_mapping=True)["offset_mapping"]]
    ends_dst = [e for _, e in bpe_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
    for p, q, e in zip(positions, dst, err):
        assert ends_dst[q] <= ends_src[p] and ends_src[p] - ends_dst[q] == e
    assert mean_alignment_error(err) < 5.0
