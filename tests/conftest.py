"""Shared fixtures: tiny random NLA pairs in the released layout, built once per session."""

import numpy as np
import pytest
import torch

from nla_repro.fixtures.factory import FAMILIES, make_pair


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory):
    """family -> PairDirs of an intact tiny pair (random weights, real tokenizers)."""
    cache = {}

    def get(family, **kw):
        key = (family, tuple(sorted(kw.items(), key=str)))
        if key not in cache:
            cache[key] = make_pair(family, tmp_path_factory.mktemp(f"pair-{family}"), **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def loaded_pair(pair_dirs):
    from nla_repro import load_pair

    cache = {}

    def get(family):
        if family not in cache:
            d = pair_dirs(family)
            cache[family] = load_pair(d.av, d.ar)
        return cache[family]

    return get


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


ALL_FAMILIES = FAMILIES


@pytest.fixture
def tiny_llama():
    """Factory for a 4-block random Llama (d = 64) with SmolLM2's vocabulary size, for training-loop tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def build():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).eval()

    return build
