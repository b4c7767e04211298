"""Training pipeline pieces of the default pair (nla_repro.training): warm-start generator,
LoRA maths, and a CPU smoke step that must lower the AR loss."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from nla_repro.training import lora as L
from nla_repro.training.data import Stage0
from nla_repro.training.warmstart import (WarmStartInput, explain, kind_of, quote_tail, salient_words,
                                          token_type, wrap)

CTX = ("The city of Paris is the capital of France. Paris has a population of over two million people, "
       "and its metropolitan area")


# ------------------------------------------------------------------------------------------ warm start
def test_warmstart_is_deterministic_and_three_part():
    inp = WarmStartInput(CTX, " area", "wiki_lead", (" is", ","))
    a, b = explain(inp), explain(WarmStartInput(CTX, " area", "wiki_lead", (" is", ",")))
    assert a == b
    parts = a.split("\n\n")
    assert len(parts) == 3, a
    assert parts[0].startswith("Encyclopedic article: about ") and "paris" in parts[0]
    assert parts[1].startswith("The text “…") and "metropolitan area”" in parts[1]
    assert parts[2] == "Final token “area” is a word; likely next: “is” or “,”."


def test_warmstart_depends_on_inputs():
    base = explain(WarmStartInput(CTX, " area", "wiki_lead", (" is",)))
    assert explain(WarmStartInput(CTX, " area", "recipe", (" is",))) != base      # kind
    assert explain(WarmStartInput(CTX + " of", " of", "wiki_lead", (" the",))) != base  # context / token
    assert explain(WarmStartInput(CTX, " area", "wiki_lead", (" has",))) != base     # next token


@pytest.mark.parametrize("stratum,kind", [("wiki_lead", "Encyclopedic article"), ("wiki_full", "Encyclopedic article"),
                                          ("recipe", "Recipe instructions"), ("chitchat", "Casual chat conversation"),
                                          (None, "Web text"), ("unknown_src", "Web text")])
def test_kind_of_strata(stratum, kind):
    assert kind_of(stratum) == kind


def test_chat_speaker_and_gloss():
    ctx = "User: how do I boil an egg?\n\nAssistant: Put the egg in"
    e = explain(WarmStartInput(ctx, " in", "chitchat"))
    assert "in the assistant's turn" in e
    assert "user" not in e.split("\n\n")[0]  # role labels are not topic words
    assert "likely next: the next word of the phrase" in e  # rule used without model predictions


def test_token_types():
    assert token_type(" word", "x") == "a word"
    assert token_type("ing", "r") == "a word piece continuing a word"
    assert token_type(",", "x") == "punctuation"
    assert token_type("42", " ") == "digits"
    assert token_type("\n", "x") == "a line break"
    assert token_type(" ", "x") == "whitespace"


def test_quote_and_salient_words_bounded():
    q = quote_tail("word " * 100 + "final")
    assert q.endswith("final") and len(q.split()) <= 8 and len(q) <= 64
    assert salient_words("the the the and") == []
    assert salient_words("apple banana apple cherry banana apple") == ["apple", "banana", "cherry"]


def test_explanations_stay_short_and_wrap():
    long_ctx = " ".join(f"word{i} verylongtokenxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" for i in range(300))
    e = explain(WarmStartInput(long_ctx, "xx", "wiki_full", ("a", "b")))
    assert len(e) < 400
    w = wrap(e)
    assert w.startswith("<explanation>\n") and w.endswith("\n</explanation>")
    assert re.search(r"<explanation>(.*?)</explanation>", w, re.S).group(1).strip() == e


# ------------------------------------------------------------------------------------------ maths
def test_lora_zero_init_is_identity_and_merge_is_exact():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7, bias=False)
    x = torch.randn(5, 12)
    ref = lin(x).detach()
    wrapped = L.LoRALinear(lin, rank=3, alpha=6.0)
    assert torch.equal(wrapped(x), ref)  # B = 0 at init
    with torch.no_grad():
        wrapped.lora_B.normal_()
    merged = L.merge_delta(lin.weight, wrapped.lora_A, wrapped.lora_B, wrapped.scale)
    assert torch.allclose(x @ merged.t(), wrapped(x), atol=1e-5)
    assert not torch.allclose(merged, lin.weight)


def test_lora_state_roundtrip_and_merge_state_dict():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
    m[0].q_proj = torch.nn.Linear(8, 8, bias=False)
    base_sd = {k: v.clone() for k, v in m.state_dict().items()}
    names = L.apply_lora(m, ("q_proj",), rank=2, alpha=4.0)
    assert names == ["0.q_proj"]
    with torch.no_grad():
        m[0].q_proj.lora_B.normal_()
    sd = L.lora_state_dict(m, torch.float32)
    assert set(sd) == {"0.q_proj.lora_A", "0.q_proj.lora_B"}
    merged = L.merge_state_dict(base_sd, sd, 2.0)
    want = base_sd["0.q_proj.weight"] + 2.0 * sd["0.q_proj.lora_B"] @ sd["0.q_proj.lora_A"]
    assert torch.equal(merged["0.q_proj.weight"], want)
    with pytest.raises(KeyError):
        L.merge_state_dict({}, sd, 2.0)


# ------------------------------------------------------------------------------------------ smoke step
def test_cpu_smoke_ar_sft_step_lowers_loss(tiny_llama):
    """The real AR-SFT loop (train_ar_sft) on a tiny random Llama with the SmolLM2 tokenizer: mse_nrm on a
    handful of (warm-start text, gold vector) pairs must fall over a few steps."""
    from nla_repro.fixtures.tokenizers import load_tokenizer
    from nla_repro.training.config import LORA_TARGETS, TrainConfig
    from nla_repro.training.models import ARModel
    from nla_repro.training.train import train_ar_sft

    tok = load_tokenizer("smollm2")
    base = tiny_llama()
    ar = ARModel(base, layer=2)
    assert ar.backbone.config.num_hidden_layers == 3 and len(ar.backbone.layers) == 3
    assert isinstance(ar.backbone.norm, torch.nn.Identity)
    assert torch.equal(ar.value_head.weight, torch.eye(64))
    L.apply_lora(ar.backbone, LORA_TARGETS, 4, 8.0)
    for p in ar.value_head.parameters():
        p.requires_grad_(True)
    rng = np.random.default_rng(0)
    n = 6
    texts = [explain(WarmStartInput(f"Some context number {i} about topic{i} and more words here", f" here{i}",
                                    "wiki_lead", (" next",))) for i in range(n)]
    data = Stage0([f"d{i}" for i in range(n)], ["wiki_lead"] * n, [60] * n,
                  rng.normal(size=(n, 64)).astype(np.float32), [""] * n, [""] * n, [()] * n, texts)
    cfg = TrainConfig(ar_sft_batch=n, ar_sft_examples=n, ar_sft_epochs=12.0, ar_sft_lr=1e-2,
                      ar_sft_vh_lr=1e-2, warmup_steps=1)
    hist = train_ar_sft(cfg, ar, tok, data, range(n), "cpu", V=1.0)
    assert len(hist) == 12
    assert hist[-1] < 0.7 * hist[0], hist


def test_tokenizer_probe_guard_rejects_a_different_tokenisation():
    """transformers 5.17 converts Gemma 3's GGUF tokenizer without BOS and with words split at spaces; the
    probe check is what stops training or scoring on such a tokenizer (it must fail on a wrong one)."""
    from nla_repro.fixtures.tokenizers import load_tokenizer
    from nla_repro.training.base import BaseModelError, check_tokenizer_probe

    gemma, smol = load_tokenizer("gemma3"), load_tokenizer("smollm2")
    check_tokenizer_probe("gemma3", gemma, "gemma3 fixture tokenizer")
    check_tokenizer_probe("smollm2", smol, "smollm2 fixture tokenizer")
    with pytest.raises(BaseModelError, match="probe text"):
        check_tokenizer_probe("gemma3", smol, "a SmolLM2 tokenizer")

    class NoBos:  # the 5.17 failure mode: same vocabulary, BOS dropped
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": gemma(text, add_special_tokens=add_special_tokens)["input_ids"][1:]}

    with pytest.raises(BaseModelError, match="expected"):
        check_tokenizer_probe("gemma3", NoBos(), "a BOS-less conversion")


def test_av_targets_end_with_the_family_end_of_turn():
    from nla_repro.fixtures.tokenizers import load_tokenizer
    from nla_repro.training.config import FAMILIES
    from nla_repro.training.models import av_target_ids, end_of_turn_id

    gemma = load_tokenizer("gemma3")
    eot = end_of_turn_id(gemma, FAMILIES["gemma3"].end_of_turn)
    assert eot == 106 and eot != gemma.eos_token_id  # <end_of_turn>, not <eos>
    assert av_target_ids(gemma, "Encyclopedic article.", eot)[-1] == 106
    smol = load_tokenizer("smollm2")
    assert end_of_turn_id(smol, FAMILIES["smollm2"].end_of_turn) == smol.eos_token_id == 2


def test_package_writes_checksummed_deltas_and_extends_history(tmp_path):
    """A training run's outputs become a deltas folder whose manifest checksums the files it wrote, and a
    continued run appends its RL history and evaluation instead of replacing the earlier ones."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from nla_repro.assets import sha256_file
    from nla_repro.training.package import package

    run = tmp_path / "run"
    run.mkdir()
    A = {"model.layers.0.mlp.up_proj.lora_A": torch.ones(2, 576, dtype=torch.bfloat16),
         "model.layers.0.mlp.up_proj.lora_B": torch.zeros(1536, 2, dtype=torch.bfloat16)}
    save_file(A, str(run / "rl_av.safetensors"))
    save_file({"layers.0.mlp.up_proj.lora_A": torch.ones(2, 576, dtype=torch.bfloat16),
               "value_head.weight": torch.eye(576, dtype=torch.bfloat16)}, str(run / "rl_ar.safetensors"))
    stage0 = {"injection_scale": 300.0, "train_rawvar": 0.5, "sources_train": {"wiki_lead": 3},
              "n_train_docs": 2, "n_train_vectors": 3}
    meta = {"family": "smollm2", "av_rank": 2, "av_alpha": 4.0, "ar_rank": 2, "ar_alpha": 4.0,
            "injection_token_id": 27098}
    first = {"meta": meta, "stage0": stage0, "config": {"rl_lr": 3e-5}, "rl_history": [{"step": 0}],
             "eval_rl": {"fve_nrm": 0.4}}
    (run / "metrics.json").write_text(json.dumps(first))
    dest = tmp_path / "deltas"
    package("smollm2", run, dest=dest)
    man = json.loads((dest / "manifest.json").read_text())
    for ent in man["files"].values():
        assert sha256_file(dest / ent["file"]) == ent["sha256"]
    assert set(load_file(str(dest / "ar_lora.safetensors"))) == {"layers.0.mlp.up_proj.lora_A"}  # head split off
    assert load_file(str(dest / "value_head.safetensors"))["weight"].shape == (576, 576)
    assert man["sidecar"]["train_rawvar"] == 0.5 and man["training"]["device_eval_rl_after_1"]["fve_nrm"] == 0.4

    second = dict(first, rl_history=[{"step": 0}, {"step": 1}], eval_rl={"fve_nrm": 0.45})
    (run / "metrics.json").write_text(json.dumps(second))
    package("smollm2", run, dest=dest, continues=True)
    hist = json.loads((dest / "training_metrics.json").read_text())
    assert len(hist["rl_history"]) == 3 and len(hist["continuations"]) == 1
    assert hist["eval_rl_after_1"]["fve_nrm"] == 0.4 and hist["eval_rl_after_3"]["fve_nrm"] == 0.45
    with pytest.raises(ValueError, match="not 'gemma3'"):
        package("gemma3", run, dest=tmp_path / "other")
