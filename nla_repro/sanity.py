"""Cheap detectors for silent failure modes that leave no error behind (recipe §8).

Each returns a finding (or None) and never changes data; callers warn or fail as policy dictates.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np


class NLAWarning(UserWarning):
    """A number is probably wrong for a known reason (scale, aliasing, degenerate decodes, ...)."""


@dataclass(frozen=True)
class Finding:
    trap: int
    message: str


def injection_scale_mismatch(injection_scale: float, gold_vectors, factor: float = 10.0) -> Finding | None:
    """Trap #6: the release picks injection_scale "a bit above the mean norm" of its vectors. A scale
    an order of magnitude away from the gold norms (Qwen's 150 on Gemma's ~60k) means a wrong sidecar
    or a wrong layer."""
    norms = np.linalg.norm(np.asarray(gold_vectors, dtype=np.float64), axis=-1)
    med = float(np.median(norms))
    ratio = injection_scale / med if med > 0 else float("inf")
    if not 1.0 / factor <= ratio <= factor:
        return Finding(6, f"injection_scale {injection_scale:g} is {ratio:.3g}x the median gold norm {med:.4g}; "
                          "the released scales sit a bit above the mean norm (wrong sidecar or wrong layer?)")
    return None


_WS_ONLY = re.compile(r"^\s*$")


def degenerate_decodes(texts: list[str], threshold: float = 0.5) -> Finding | None:
    """Trap #9: injection dropped (Gemma multimodal wrapper on unpatched engines) shows up as
    whitespace/newline repetition."""
    if not texts:
        return None
    bad = sum(1 for t in texts if _WS_ONLY.match(t) or _repetitive(t))
    if bad / len(texts) >= threshold:
        return Finding(9, f"{bad}/{len(texts)} decodes are whitespace-only or one repeated token: the "
                          "injection was probably dropped")
    return None


def _repetitive(text: str) -> bool:
    toks = text.split()
    return len(toks) >= 8 and Counter(toks).most_common(1)[0][1] / len(toks) > 0.8


def aliased_decodes(texts: list[str], vectors, threshold: float = 0.2) -> Finding | None:
    """Trap #7: a prefix (radix) cache keyed on token ids makes different vectors share outputs.
    Distinct vectors producing identical long outputs at a high rate is the signature."""
    v = np.asarray(vectors, dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        if len(t) >= 20:
            groups.setdefault(t, []).append(i)
    dup = 0
    for idx in groups.values():
        if len(idx) > 1:
            distinct = {tuple(np.round(v[i], 6)) for i in idx}
            dup += len(idx) if len(distinct) > 1 else 0
    if texts and dup / len(texts) >= threshold:
        return Finding(7, f"{dup}/{len(texts)} decodes of distinct vectors are identical: outputs are "
                          "aliased (prefix/radix cache on embeds requests?)")
    return None


def own_denominator_too_small(n_docs: int, minimum: int = 20) -> Finding | None:
    """Trap #15: V computed on a small or single-document eval set is much smaller than the training
    value and deflates fve (often below zero)."""
    if n_docs < minimum:
        return Finding(15, f"own-set denominator from {n_docs} document(s) (< {minimum}); fve will be "
                           "deflated, prefer the training denominator")
    return None


def warn(finding: Finding | None) -> Finding | None:
    if finding is not None:
        warnings.warn(f"trap #{finding.trap}: {finding.message}", NLAWarning, stacklevel=3)
    return finding
