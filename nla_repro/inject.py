"""Scaling an activation to `injection_scale` and writing it into the prompt embeddings.

Recipe §2.4: the L2 norm is computed in fp32, clamped at 1e-12, then ONE division `v / (norm/s)`.
The injected row is not multiplied by the embedding scale (Gemma's sqrt(d) applies to text rows only).
"""

from __future__ import annotations

import numpy as np
import torch


class InjectionError(ValueError):
    """A vector cannot be injected (NaN/Inf, zero, wrong width, wrong count)."""


def validate_vectors(vectors, d_model: int) -> np.ndarray:
    """[n, d] float32 copy of the input, rejecting NaN/Inf, zero vectors and a wrong width."""
    v = np.asarray(vectors.detach().cpu().float().numpy() if isinstance(vectors, torch.Tensor)
                   else vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise InjectionError(f"vectors must be [n, d]; got shape {v.shape}")
    if v.shape[1] != d_model:
        raise InjectionError(f"vector width {v.shape[1]} != sidecar d_model {d_model}")
    if v.shape[0] == 0:
        raise InjectionError("no vectors given")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise InjectionError(f"vectors contain NaN/Inf at rows {np.flatnonzero(bad)[:10].tolist()}")
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    if (norms == 0).any():
        raise InjectionError(f"zero vectors at rows {np.flatnonzero(norms == 0)[:10].tolist()}: "
                             "a direction is undefined")
    return v


def normalize_to_scale(v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """fp32 rescale of each row to L2 norm `scale` (None = pass-through, as the release does)."""
    v = v.float()
    if scale is None:
        return v
    norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v / (norm / float(scale))


def inject_rows(embeds: torch.Tensor, positions, vectors: torch.Tensor) -> torch.Tensor:
    """Copy of `embeds` [B,T,d] with row `positions[b]` of each sequence replaced by `vectors[b]`."""
    if embeds.shape[0] != len(positions) or vectors.shape[0] != len(positions):
        raise InjectionError(f"batch {embeds.shape[0]} vs {len(positions)} positions vs "
                             f"{vectors.shape[0]} vectors: one injection per prompt is required")
    out = embeds.clone()
    for b, p in enumerate(positions):
        out[b, int(p)] = vectors[b].to(out.dtype)
    return out
