"""Deterministic text windows inside a document (for choosing activation positions downstream).

Convention (from the corpora research note): skip the first ``skip_frac`` of the text, then start
at a paragraph (else sentence, else word) boundary chosen by ``sha256(seed|id)`` within the rest,
and take at most ``max_chars`` characters ending at a word boundary.
"""
from __future__ import annotations

import hashlib
import re

MIN_CHARS_FOR_POSITIONS = 300  # ~ >= 50 tokens for SmolLM2 / Gemma-3 tokenizers on English prose


def long_enough(text: str, min_chars: int = MIN_CHARS_FOR_POSITIONS) -> bool:
    return len(text) >= min_chars


def _boundaries(text: str, lo: int, hi: int) -> list[int]:
    for pat in (r"\n\n(?=\S)", r"(?<=[.!?])\s+(?=\S)", r"\s+(?=\S)"):
        cands = [m.end() for m in re.finditer(pat, text) if lo <= m.end() <= hi]
        if cands:
            return cands
    return [lo]


def window_start(text: str, doc_id: str, *, seed: str = "0", skip_frac: float = 0.25,
                 min_len: int = 0) -> int:
    """Character offset of a deterministic mid-document start; leaves >= min_len chars after it."""
    lo = int(len(text) * skip_frac)
    hi = max(lo, len(text) - min_len)
    cands = _boundaries(text, lo, hi)
    h = int(hashlib.sha256(f"{seed}|{doc_id}".encode("utf-8")).hexdigest(), 16)
    return cands[h % len(cands)]


def mid_document_window(text: str, doc_id: str, *, seed: str = "0", max_chars: int = 1000,
                        skip_frac: float = 0.25, min_len: int = 0) -> str:
    start = window_start(text, doc_id, seed=seed, skip_frac=skip_frac, min_len=min_len)
    piece = text[start:start + max_chars]
    if start + max_chars < len(text):
        cut = piece.rfind(" ")
        piece = piece[:cut] if cut > 0 else piece
    return piece.strip()
