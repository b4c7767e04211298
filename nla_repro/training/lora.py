"""Minimal LoRA (no peft): W x + scale * B (A x), with exact merge W' = W + scale * B @ A.

Shipped deltas are stored in bf16; ``round_to_storage`` rounds the live parameters to what is stored so
that numbers measured on the device are numbers of the shipped pair.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def weight(self):  # some HF code peeks at .weight (dtype/device)
        return self.base.weight

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype) * self.scale


def apply_lora(model: nn.Module, targets, rank: int, alpha: float, *, generator_seed: int = 0) -> list[str]:
    """Wrap every nn.Linear whose attribute name is in ``targets``; returns the wrapped module paths."""
    torch.manual_seed(generator_seed)
    names = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(mod, child_name, LoRALinear(child, rank, alpha))
                names.append(f"{name}.{child_name}" if name else child_name)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            p.requires_grad_(False)
    return names


def lora_modules(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(mod, LoRALinear):
            yield name, mod


def lora_state_dict(model: nn.Module, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """{"<path>.lora_A": [r, in], "<path>.lora_B": [out, r]} in ``dtype``; paths are the base model's
    module paths (e.g. ``model.layers.3.self_attn.q_proj``), so merging needs no key remapping."""
    out = {}
    for name, mod in lora_modules(model):
        out[f"{name}.lora_A"] = mod.lora_A.detach().to("cpu", dtype).contiguous()
        out[f"{name}.lora_B"] = mod.lora_B.detach().to("cpu", dtype).contiguous()
    return out


@torch.no_grad()
def round_to_storage(model: nn.Module, dtype=torch.bfloat16) -> None:
    for _, mod in lora_modules(model):
        mod.lora_A.copy_(mod.lora_A.to(dtype).to(mod.lora_A.dtype))
        mod.lora_B.copy_(mod.lora_B.to(dtype).to(mod.lora_B.dtype))


@torch.no_grad()
def load_lora_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    mods = dict(lora_modules(model))
    missing = [n for n in mods if f"{n}.lora_A" not in sd]
    if missing:
        raise KeyError(f"LoRA state lacks {len(missing)} modules, e.g. {missing[:3]}")
    for n, mod in mods.items():
        mod.lora_A.copy_(sd[f"{n}.lora_A"].to(mod.lora_A.dtype))
        mod.lora_B.copy_(sd[f"{n}.lora_B"].to(mod.lora_B.dtype))


def merge_delta(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * (B @ A), computed in fp32 (the definition the tests check)."""
    return weight.float() + float(scale) * (B.float() @ A.float())


def merge_state_dict(sd: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], scale: float,
                     *, key_prefix: str = "") -> dict[str, torch.Tensor]:
    """Merge LoRA deltas into a base state dict (keys ``<path>.weight``) and return it (fp32 for merged)."""
    paths = sorted({k[: -len(".lora_A")] for k in lora if k.endswith(".lora_A")})
    out = dict(sd)
    for p in paths:
        wk = f"{key_prefix}{p}.weight"
        if wk not in out:
            raise KeyError(f"merge target {wk!r} not in the base state dict")
        out[wk] = merge_delta(out[wk], lora[f"{p}.lora_A"], lora[f"{p}.lora_B"], scale)
    return out


def unwrap_lora(model: nn.Module) -> None:
    """Replace every LoRALinear by its base Linear with merged weights (in place)."""
    for name, mod in list(model.named_modules()):
        for cn, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                lin = child.base
                with torch.no_grad():
                    lin.weight.copy_(merge_delta(lin.weight, child.lora_A, child.lora_B, child.scale)
                                     .to(lin.weight.dtype))
                setattr(mod, cn, lin)
