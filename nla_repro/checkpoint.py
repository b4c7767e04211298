"""Load the two halves of an NLA pair from released-layout directories, refusing broken ones.

AV: a causal LM (Llama / Qwen2 / Gemma-3 text / Gemma-3 multimodal routed to its language model).
AR: the base LM truncated to K+1 blocks, final norm and lm_head replaced by Identity, plus a
bias-free Linear(d, d) value head from `value_head.safetensors`, read at the last real token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from .families import (ArchitectureError, Family, causal_lm_view, check_embedding_scale, family_of,
                       text_decoder)
from .prompts import check_sidecar_against_tokenizer
from .sidecar import Sidecar, SidecarError, load_sidecar

VALUE_HEAD_FILE = "value_head.safetensors"
# Weights an AR checkpoint legitimately lacks: the release replaced them with Identity before saving.
AR_DISCARDED_SUFFIXES = ("norm.weight", "lm_head.weight", "final_layernorm.weight", "ln_f.weight")


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete or inconsistent with its sidecar."""


def _read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.exists():
        raise CheckpointError(f"{path}: config.json not found")
    return json.loads(f.read_text())


def _load_tokenizer(path: Path, padding_side: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = padding_side
    return tok


def _model_class(config):
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    if getattr(config, "model_type", None) == "gemma3":
        return Gemma3ForConditionalGeneration
    return AutoModelForCausalLM


def _load_model(path: Path, dtype, device, device_map, allowed_missing=()):
    """from_pretrained that refuses silently re-initialised weights (trap #10)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    fam = family_of(config)
    cls = _model_class(config)
    kwargs = {"dtype": dtype, "output_loading_info": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model, info = cls.from_pretrained(path, **kwargs)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(tuple(allowed_missing))]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} weights missing from the checkpoint and "
                              f"randomly initialised (wrong class or layout?), e.g. {missing[:5]}")
    if device_map is None:
        model.to(device)
    return model.eval(), fam


def _check_d_model(sc: Sidecar, fam: Family) -> None:
    if fam.hidden_size != sc.d_model:
        raise SidecarError(sc.path, "d_model", "disagrees with the model's hidden size",
                           expected=fam.hidden_size, found=sc.d_model)


@dataclass
class AV:
    """The activation verbalizer. `model` is a CausalLM view usable with generate(inputs_embeds)."""

    path: Path
    model: nn.Module
    tokenizer: object
    sidecar: Sidecar
    family: Family
    embed_scale: float

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's own input embedding (Gemma's sqrt(d) included): trap #5 cannot happen here."""
        return self.model.get_input_embeddings()(ids.to(self.device))


@dataclass
class AR:
    """The activation reconstructor: truncated backbone + value head, last-token readout."""

    path: Path
    backbone: nn.Module
    value_head: nn.Linear
    tokenizer: object
    sidecar: Sidecar
    family: Family

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    @torch.no_grad()
    def predict(self, id_lists: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """Raw predictions [n, d] float32. Right padding; readout = right-most real token."""
        from .reconstruct import predict_batched

        return predict_batched(self, id_lists, batch_size=batch_size)


def load_av(path, *, dtype=torch.float32, device="cpu", device_map=None,
            check_tokenizer: bool = True) -> AV:
    path = Path(path)
    sc = load_sidecar(path)
    if sc.role != "av":
        raise SidecarError(sc.path, "role", "this directory is not an AV", expected="av", found=sc.role)
    model, fam = _load_model(path, dtype, device, device_map, allowed_missing=("lm_head.weight",))
    _check_d_model(sc, fam)
    tok = _load_tokenizer(path, padding_side="left")
    if check_tokenizer:
        check_sidecar_against_tokenizer(sc, tok)
    lm = causal_lm_view(model)
    scale = check_embedding_scale(lm, fam)
    vocab = lm.get_input_embeddings().weight.shape[0]
    if sc.injection_token_id >= vocab:
        raise SidecarError(sc.path, "tokens.injection_token_id", "outside the embedding matrix",
                           expected=f"< {vocab}", found=sc.injection_token_id)
    return AV(path=path, model=lm, tokenizer=tok, sidecar=sc, family=fam, embed_scale=scale)


def load_value_head(path: Path, d_model: int) -> nn.Linear:
    f = path / VALUE_HEAD_FILE
    if not f.exists():
        raise CheckpointError(f"{f}: value head missing; an AR without it predicts garbage "
                              "(default Linear init starts near orthogonal, mse ~2)")
    with safe_open(str(f), framework="pt") as st:
        keys = list(st.keys())
        if keys != ["weight"]:
            raise CheckpointError(f"{f}: expected a single tensor 'weight' (bias-free head), found {keys}")
        w = st.get_tensor("weight")
    if tuple(w.shape) != (d_model, d_model):
        raise CheckpointError(f"{f}: value head shape {tuple(w.shape)}, expected ({d_model}, {d_model})")
    if not torch.isfinite(w.float()).all():
        raise CheckpointError(f"{f}: value head contains NaN/Inf")
    head = nn.Linear(d_model, d_model, bias=False)
    with torch.no_grad():
        head.weight.copy_(w.float())
    return head


def load_ar(path, *, dtype=torch.float32, device="cpu", device_map=None,
            check_tokenizer: bool = True) -> AR:
    path = Path(path)
    sc = load_sidecar(path)
    if sc.role != "ar":
        raise SidecarError(sc.path, "role", "this directory is not an AR", expected="ar", found=sc.role)
    cfg = _read_config(path)
    tcfg = cfg.get("text_config", cfg)
    n_layers = tcfg.get("num_hidden_layers")
    K = sc.extraction_layer_index
    if n_layers != K + 1:
        raise CheckpointError(
            f"{path}/config.json: num_hidden_layers={n_layers} but the sidecar says K={K}; the AR must "
            f"keep exactly K+1={K + 1} blocks (one layer off caps fve near 0.32, trap #2)")
    model, fam = _load_model(path, dtype, device, device_map, allowed_missing=AR_DISCARDED_SUFFIXES)
    _check_d_model(sc, fam)
    backbone = text_decoder(model)
    # Final norm -> Identity (trap #11); lm_head is never called (we read the backbone directly).
    for name in ("norm", "final_layernorm", "ln_f"):
        if hasattr(backbone, name):
            setattr(backbone, name, nn.Identity())
    head = load_value_head(path, sc.d_model)
    ref = next(backbone.parameters())
    head = head.to(device=ref.device, dtype=ref.dtype)
    tok = _load_tokenizer(path, padding_side="right")
    if check_tokenizer:
        check_sidecar_against_tokenizer(sc, tok)
    return AR(path=path, backbone=backbone.eval(), value_head=head.eval(), tokenizer=tok, sidecar=sc,
              family=fam)


__all__ = ["AV", "AR", "load_av", "load_ar", "load_value_head", "CheckpointError", "ArchitectureError"]
