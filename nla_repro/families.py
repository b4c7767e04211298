"""Architecture adapters: where the text decoder, its blocks, final norm and embeddings live.

One table per family instead of `if "gemma" in name` scattered around. Supported: Llama, Qwen2,
Gemma-3 text, and the Gemma-3 multimodal wrapper (AV checkpoints keep its layout; we route to its
language model, as training did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# model_type values whose embedding module multiplies by sqrt(hidden_size) (recipe §2.3).
SQRT_D_EMBED_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text", "t5"}
EMBED_SCALE_RTOL = 2.5e-3
SUPPORTED_TYPES = {"llama", "qwen2", "gemma3_text", "gemma3"}


class ArchitectureError(ValueError):
    """The checkpoint's architecture is unsupported or was loaded under the wrong class."""


@dataclass(frozen=True)
class Family:
    model_type: str          # config.model_type of the checkpoint (gemma3 = multimodal wrapper)
    text_model_type: str     # model_type of the text config
    hidden_size: int
    num_layers: int
    multimodal: bool

    @property
    def expected_embed_scale(self) -> float:
        return math.sqrt(self.hidden_size) if self.text_model_type in SQRT_D_EMBED_TYPES else 1.0


def text_config(config):
    return getattr(config, "text_config", None) or config


def family_of(config) -> Family:
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_TYPES:
        raise ArchitectureError(f"unsupported model_type {mt!r}; supported: {sorted(SUPPORTED_TYPES)}")
    tc = text_config(config)
    return Family(model_type=mt, text_model_type=tc.model_type, hidden_size=int(tc.hidden_size),
                  num_layers=int(tc.num_hidden_layers), multimodal=(mt == "gemma3"))


def text_decoder(model: nn.Module) -> nn.Module:
    """The module holding `embed_tokens`, `layers` and `norm` (the language model of a wrapper)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is not None and hasattr(lm, "layers"):
        return lm
    if hasattr(inner, "layers"):
        return inner
    raise ArchitectureError(f"cannot find decoder layers in {type(model).__name__}")


def embedding_scale_of(module: nn.Module) -> float:
    """Scale the embedding module applies to raw rows (1.0 for a plain nn.Embedding)."""
    s = getattr(module, "embed_scale", None)
    if s is None:
        return 1.0
    return float(s.item() if isinstance(s, torch.Tensor) else s)


def check_embedding_scale(model: nn.Module, fam: Family) -> float:
    """Gemma's sqrt(d) must be applied by the module we embed with (trap #5)."""
    scale = embedding_scale_of(model.get_input_embeddings())
    want = fam.expected_embed_scale
    # a bf16-stored scale (62.0 for sqrt(3840), 73.5 for sqrt(5376)) is within 0.25 % of the exact value
    # (recipe trap #25); anything further off is a different scale, not rounding
    if abs(scale - want) > EMBED_SCALE_RTOL * want:
        raise ArchitectureError(f"input embedding applies scale {scale:.4f}, expected {want:.4f} "
                                f"for model_type {fam.text_model_type!r}")
    return scale


def causal_lm_view(model: nn.Module) -> nn.Module:
    """A CausalLM whose `generate(inputs_embeds=...)` works.

    transformers' Gemma3ForConditionalGeneration rejects inputs_embeds in generate (its
    prepare_inputs_for_generation does not name them). Training unwrapped to the text model; we do
    the same by sharing the wrapper's language model and lm_head with a Gemma3ForCausalLM shell
    built on the meta device, so no weights are copied or re-initialised.
    """
    if getattr(model.config, "model_type", None) != "gemma3":
        return model
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):
        shell = Gemma3ForCausalLM(model.config.text_config)
    shell.model = model.model.language_model
    shell.lm_head = model.lm_head
    shell.generation_config = model.generation_config
    shell.eval()
    return shell
