"""The public entry point: an AV/AR pair loaded from two released-layout directories.

AV decoding goes through a named backend (`nla_repro.backends`; `hf`, the reference, by default); the AR
always runs in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics, sanity
from .backends import DEFAULT_BACKEND, get_backend
from .checkpoint import AR, AV, load_ar, load_av
from .decoding import Decoding
from .explanation import AR_PROMPT_MAX_TOKENS, Accounted, FailureConvention, Parsed, account, parse
from .prompts import ar_prompt_ids, check_ar_matches_base_tokenizer
from .sidecar import check_pair_sidecars
from .verbalize import AVInputs, Verbalization, build_av_inputs


@dataclass
class RoundTrip:
    """Everything one AV -> AR round trip produced, with its conventions named."""

    verbalizations: list[Verbalization]
    explanations: list[str | None]
    accounted: Accounted
    decoding: Decoding
    findings: list = None   # sanity.Finding for each silent-failure signature seen (also warned)

    @property
    def mse(self) -> np.ndarray:
        return self.accounted.mse


class NLAPair:
    def __init__(self, av: AV, ar: AR, backend: str = DEFAULT_BACKEND):
        check_pair_sidecars(av.sidecar, ar.sidecar)
        check_ar_matches_base_tokenizer(ar.sidecar, ar.tokenizer, av.tokenizer)
        self.av, self.ar = av, ar
        self.backend = get_backend(backend)

    @classmethod
    def from_dirs(cls, av_dir, ar_dir, *, device="cpu", dtype=torch.float32, device_map=None,
                  backend: str = DEFAULT_BACKEND):
        get_backend(backend)  # an unavailable engine is reported before any model is loaded
        return cls(load_av(av_dir, dtype=dtype, device=device, device_map=device_map),
                   load_ar(ar_dir, dtype=dtype, device=device, device_map=device_map), backend)

    @property
    def d_model(self) -> int:
        return self.av.sidecar.d_model

    @property
    def layer_index(self) -> int:
        return self.ar.sidecar.extraction_layer_index

    @property
    def train_denominator(self) -> float | None:
        return self.ar.sidecar.train_denominator or self.av.sidecar.train_denominator

    # -- AV
    def av_inputs(self, vectors) -> AVInputs:
        return build_av_inputs(self.av, vectors)

    def verbalize(self, vectors, decoding: Decoding = Decoding(), **kw) -> list[Verbalization]:
        """One explanation per vector, decoded by `self.backend` (kw: batch_size, banned_token_ids)."""
        return self.backend.decode(self.av, vectors, decoding, **kw)

    # -- AR
    def reconstruct(self, texts: list[str], batch_size: int = 32, *, allow_empty: bool = False) -> np.ndarray:
        """Raw AR predictions [n, d] float32 for explanation texts (stripped, templated).

        Empty explanations are refused unless `allow_empty` (the client convention scores them)."""
        if not texts:
            raise ValueError("no texts to reconstruct")
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("reconstruct() takes explanation strings")
        if not allow_empty and any(not t.strip() for t in texts):
            raise ValueError(f"empty explanation at index {[i for i, t in enumerate(texts) if not t.strip()][:5]}"
                             "; the AR needs text to read (score it under a failure convention instead)")
        ids = [ar_prompt_ids(self.ar.tokenizer, self.ar.sidecar, t) for t in texts]
        return self.ar.predict(ids, batch_size=batch_size)

    def score(self, texts: list[str], gold, batch_size: int = 32, *, allow_empty: bool = False) -> np.ndarray:
        """Per-sample mse_nrm (= 2(1-cos), both sides normalised, fp64 maths)."""
        gold = np.asarray(gold, dtype=np.float32)
        if gold.ndim != 2 or gold.shape != (len(texts), self.d_model):
            raise ValueError(f"gold must be [{len(texts)}, {self.d_model}], got {gold.shape}")
        return metrics.mse_nrm(self.reconstruct(texts, batch_size, allow_empty=allow_empty), gold)

    # -- both
    def score_verbalizations(self, verbs: list[Verbalization], gold,
                             convention: FailureConvention = FailureConvention.TRAINING_DROP,
                             ar_max_tokens: int | None = AR_PROMPT_MAX_TOKENS) -> tuple[Accounted, list[str | None]]:
        """Parse decodes, score them against `gold` under a named failure convention.

        Returns the accounting and, per sample, the text the AR read (None where nothing was scored).
        The training convention also fails samples whose AR prompt exceeds `ar_max_tokens` (300 in RL).
        """
        gold = np.asarray(gold, dtype=np.float32)
        parsed = [parse(v.text, v.truncated, convention) for v in verbs]
        if convention is FailureConvention.TRAINING_DROP and ar_max_tokens is not None:
            for i, p in enumerate(parsed):
                if p.text_for_ar is not None and len(ar_prompt_ids(self.ar.tokenizer, self.ar.sidecar,
                                                                   p.text_for_ar)) > ar_max_tokens:
                    parsed[i] = Parsed(None, True, "ar_prompt_too_long")
        mse = np.full(len(parsed), np.nan)
        idx = [i for i, p in enumerate(parsed) if p.text_for_ar is not None]
        if idx:
            mse[idx] = self.score([parsed[i].text_for_ar for i in idx], gold[idx],
                                  allow_empty=convention is FailureConvention.CLIENT_RAW)
        return account(mse, parsed, convention), [p.text_for_ar for p in parsed]

    def round_trip(self, vectors, decoding: Decoding = Decoding(),
                   convention: FailureConvention = FailureConvention.TRAINING_DROP,
                   ar_max_tokens: int | None = AR_PROMPT_MAX_TOKENS, **verbalize_kw) -> RoundTrip:
        """Verbalize `vectors` and score the decodes against the same vectors (see score_verbalizations)."""
        gold = np.asarray(vectors, dtype=np.float32)
        findings = [sanity.warn(sanity.injection_scale_mismatch(self.av.sidecar.injection_scale, gold))]
        verbs = self.verbalize(gold, decoding, **verbalize_kw)
        texts = [v.text for v in verbs]
        findings += [sanity.warn(sanity.degenerate_decodes(texts))]
        if decoding.greedy:  # identical sampled outputs are legitimate at low entropy; greedy ones are not
            findings += [sanity.warn(sanity.aliased_decodes(texts, gold))]
        acc, texts_for_ar = self.score_verbalizations(verbs, gold, convention, ar_max_tokens)
        return RoundTrip(verbs, texts_for_ar, acc, decoding,
                         [f for f in findings if f is not None])


def load_pair(av_dir, ar_dir, **kw) -> NLAPair:
    return NLAPair.from_dirs(Path(av_dir), Path(ar_dir), **kw)
