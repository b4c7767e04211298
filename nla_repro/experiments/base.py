"""What every experiment gets and returns.

An experiment is a function `(ctx, pair_name) -> dict of figures`, registered by name. The runner
wraps the figures in a typed `ExperimentResult` with its protocol and conventions named, and caches
it under a key built from everything that can change a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAYER_CONVENTION = "layer K = output of decoder block K = HF hidden_states[K+1]"


@dataclass
class EvalSet:
    """Held-out gold activations of one base model at one layer, with their provenance."""

    name: str
    vectors: np.ndarray              # [N, d] float32, raw (never normalised)
    doc_ids: list[str]
    positions: list[int]             # token index in the base model's tokenisation (BOS counted)
    contexts: list[str]              # decoded text up to and including the position
    final_tokens: list[str]          # decoded text of the token at the position
    layer_index: int
    base_model: str
    manifest_hash: str               # hash of documents + sampler config (goes into cache keys)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.vectors)
        for name in ("doc_ids", "positions", "contexts", "final_tokens"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EvalSet {self.name!r}: {name} has {len(getattr(self, name))} rows, "
                                 f"vectors has {n}")

    def __len__(self) -> int:
        return len(self.vectors)

    def subset(self, idx) -> "EvalSet":
        idx = list(idx)
        return EvalSet(self.name, self.vectors[idx], [self.doc_ids[i] for i in idx],
                       [self.positions[i] for i in idx], [self.contexts[i] for i in idx],
                       [self.final_tokens[i] for i in idx], self.layer_index, self.base_model,
                       self.manifest_hash + f"[{len(idx)}]", dict(self.meta))


@dataclass
class PairHandle:
    """A named pair and how to get its eval set. `load()` returns an NLAPair (loaded once) that decodes
    with the handle's `backend` (a `nla_repro.backends` name; part of every result's cache key)."""

    name: str
    av_dir: Path
    ar_dir: Path
    eval_set: Callable[[int], EvalSet]           # n -> eval set of at least n rows (or all there are)
    train_denominator: float | None = None
    device: str = "cpu"
    backend: str = "hf"
    family: str = ""
    adjacent_eval_sets: dict[int, Callable[[int], EvalSet]] = field(default_factory=dict)
    _pair: object = None

    def load(self):
        if self._pair is None:
            from ..pair import NLAPair
            self._pair = NLAPair.from_dirs(self.av_dir, self.ar_dir, device=self.device, backend=self.backend)
        return self._pair


@dataclass
class ExperimentContext:
    pairs: dict[str, PairHandle]
    eval_size: int | None = None
    refresh: bool = False
    cache: object = None            # nla_repro.cache.ResultsCache or None
    options: dict = field(default_factory=dict)


class ExperimentSkipped(Exception):
    """An experiment cannot run on this pair because an input the user must supply is absent (e.g. the
    release's worked-example text). The message names what is missing and how to provide it. The claims
    runner turns it into a SKIPPED claim with that reason (never a pass, never a substitute measurement)."""


ExperimentFn = Callable[[ExperimentContext, str], dict]
InputsFn = Callable[[ExperimentContext, str], dict]
EXPERIMENTS: dict[str, tuple[ExperimentFn, dict]] = {}


def experiment(name: str, *, default_n: int, decoding: str, denominator: str,
               failure_convention: str, needs: tuple[str, ...] = (), inputs: InputsFn | None = None):
    """Register an experiment and the conventions it reports under.

    ``needs``: ``"all_pairs"`` (one run over every pair), ``"adjacent"`` (adjacent-layer eval sets),
    ``"no_eval_set"`` (reads only its own inputs: the held-out eval set is neither built nor keyed).
    ``inputs(ctx, pair_name) -> dict``: content identity of extra inputs the experiment reads outside the
    eval set (file hashes); it enters the cache key, and it runs before anything is computed, so it may
    raise :class:`ExperimentSkipped` when an input is missing."""

    def wrap(fn: ExperimentFn) -> ExperimentFn:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} registered twice")
        EXPERIMENTS[name] = (fn, dict(default_n=default_n, decoding=decoding, denominator=denominator,
                                      failure_convention=failure_convention,
                                      layer_convention=LAYER_CONVENTION, needs=needs, inputs=inputs))
        return fn

    return wrap
