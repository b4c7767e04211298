"""The post-RL polish stage (nla_repro.training.polish) and the typed ``--set`` overrides it relies on.

The AV's greedy decoding is replaced by a stand-in that returns each vector's own (wrapped) warm-start text:
what is under test is the AR fit and its validation guard, which take those decodes as input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nla_repro.training import lora as L
from nla_repro.training import polish as P
from nla_repro.training.config import LORA_TARGETS, TrainConfig
from nla_repro.training.data import Stage0
from nla_repro.training.models import Sample
from nla_repro.training.train import parse_override

TOPICS = ("apples", "rivers", "engines", "poetry")


@pytest.mark.parametrize("text,want", [("false", False), ("False", False), ("0", False), ("true", True), ("1", True)])
def test_bool_overrides_parse_their_words(text, want):
    # bool("False") is True: a plain type(current)(text) would switch the option on
    assert parse_override("some_flag", text, True) is want
    assert parse_override("some_flag", text, False) is want


def test_bool_override_rejects_other_words_naming_the_option():
    with pytest.raises(ValueError, match="some_flag=maybe"):
        parse_override("some_flag", "maybe", False)


def test_non_bool_overrides_keep_the_field_type():
    assert parse_override("polish_vectors", "32768", 16384) == 32768
    assert parse_override("polish_ar_lr", "1e-4", 2e-4) == pytest.approx(1e-4)


def _learnable_data(n: int, d: int = 64) -> Stage0:
    """Each vector is its topic's direction plus small noise; the text names the topic, so text -> vector
    is learnable and a held-back slice can show whether a fit generalises."""
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(len(TOPICS), d)).astype(np.float32)
    topic = [i % len(TOPICS) for i in range(n)]
    vec = np.stack([dirs[t] + 0.05 * rng.normal(size=d).astype(np.float32) for t in topic])
    texts = [f"Encyclopedic article: about {TOPICS[t]}.\n\nFinal token “{TOPICS[t]}” is a word." for t in topic]
    return Stage0([f"d{i}" for i in range(n)], ["wiki_lead"] * n, [60] * n, vec, [""] * n, [""] * n,
                  [()] * n, texts)


@pytest.fixture
def tiny_ar(tiny_llama):
    from nla_repro.fixtures.tokenizers import load_tokenizer
    from nla_repro.training.models import ARModel

    ar = ARModel(tiny_llama(), layer=2)
    L.apply_lora(ar.backbone, LORA_TARGETS, 4, 8.0, generator_seed=3)
    for p in ar.value_head.parameters():
        p.requires_grad_(True)
    return ar, load_tokenizer("smollm2")


def _echo_generate(data: Stage0):
    """Stand-in AV: the decode of vector i is its warm-start text (a valid, closed explanation)."""
    rows = {data.vectors[i].tobytes(): data.explanations[i] for i in range(len(data))}

    def generate(model, tok, prompt, vectors, scale, **kw):
        return [Sample([1], f"<explanation>\n{rows[v.numpy().tobytes()]}\n</explanation>",
                       rows[v.numpy().tobytes()], False) for v in vectors]

    return generate


def _snapshot(ar) -> dict:
    return {k: v.detach().clone() for k, v in ar.state_dict().items() if "lora_" in k or k.startswith("value_head")}


def _run_polish(ar, tok, data, monkeypatch, **cfg_kw):
    monkeypatch.setattr(P, "generate", _echo_generate(data))
    cfg = TrainConfig(polish_vectors=len(data), polish_val_vectors=8, polish_batch=64, ar_sft_batch=16,
                      warmup_steps=1, **cfg_kw)
    return P.polish(cfg, None, ar, tok, None, data, "cpu", 300.0, 1.0, extra_stop=(), stop_at=float("inf"),
                    log=lambda *a: None)


def test_polish_keeps_an_ar_fit_that_improves_validation(tiny_ar, monkeypatch):
    ar, tok = tiny_ar
    before = _snapshot(ar)
    out = _run_polish(ar, tok, _learnable_data(48), monkeypatch, polish_ar_lr=1e-2, polish_ar_vh_lr=1e-2,
                      polish_ar_epochs=8.0)
    assert out["n_val"] == 8 and out["n_fit"] == 40 and out["ar_fit_texts"] == 40
    assert out["val_fve_after"] > out["val_fve_before"] and out["ar_fit_kept"] is True
    after = _snapshot(ar)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_polish_restores_the_ar_when_validation_gets_worse(tiny_ar, monkeypatch):
    ar, tok = tiny_ar
    before = _snapshot(ar)
    # a learning rate this large wrecks the fit; the guard must put the pre-fit weights back, bit for bit
    out = _run_polish(ar, tok, _learnable_data(48), monkeypatch, polish_ar_lr=50.0, polish_ar_vh_lr=50.0,
                      polish_ar_epochs=2.0)
    assert out["val_fve_after"] < out["val_fve_before"] and out["ar_fit_kept"] is False
    after = _snapshot(ar)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_polish_skips_the_fit_when_no_validation_decode_is_valid(tiny_ar, monkeypatch):
    ar, tok = tiny_ar
    data = _learnable_data(24)
    monkeypatch.setattr(P, "generate", lambda *a, **kw: [Sample([1] * 4, "loop loop", None, True)
                                                         for _ in range(len(a[3]))])
    before = _snapshot(ar)
    cfg = TrainConfig(polish_vectors=24, polish_val_vectors=4, polish_batch=64)
    out = P.polish(cfg, None, ar, tok, None, data, "cpu", 300.0, 1.0, extra_stop=(), stop_at=float("inf"),
                   log=lambda *a: None)
    assert out["greedy_failure_rate_train"] == 1.0 and "no valid greedy decode" in out["ar_fit_skipped"]
    assert "ar_fit_kept" not in out
    assert all(torch.equal(before[k], v) for k, v in _snapshot(ar).items())
