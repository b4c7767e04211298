"""Stage-0 gold activations: layer capture, position sampling, batched extraction, alignment.

Layer convention (docs/CONTRACT.md, recipe section 5): "layer K" is the output of decoder block
K (0-based) = element 0 of ``layers[K]``'s forward output = the residual stream entering block
K+1 = HF ``hidden_states[K+1]``.  The README quick-start's ``hidden_states[K]`` is block K−1
(trap #1).  Caveat: for the *last* block, HF replaces ``hidden_states[-1]`` with the output of
the final norm, so ``hidden_states[L]`` is not the raw block output; the hook is.

Position sampling (recipe section 5, stage0_extract.py:54-68): ``doc_id =
"{corpus}:{split}:{index}"``; a fresh ``random.Random(sha256(f"{seed}|{doc_id}").digest())``
per document; candidates = every token index ``i >= min_position`` (the index counts BOS) whose
id is not in ``tokenizer.all_special_ids``; ``rng.sample(candidates, k=min(n, len))`` in
sample order.  Documents with no candidate are skipped and reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from .reconstruct import pad_right

__all__ = [
    "SAMPLER_VERSION",
    "SamplerConfig",
    "ActivationSet",
    "decoder_layers",
    "hidden_states_index",
    "extract_layer",
    "make_doc_id",
    "doc_rng",
    "sample_positions",
    "tokenize_document",
    "extract_positions",
    "align_positions",
    "mean_alignment_error",
]

SAMPLER_VERSION = "stage0-v1"

# Attribute paths to the decoder block list, most specific first.
_LAYER_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "language_model", "layers"),  # Gemma3ForConditionalGeneration
    ("model", "layers"),                    # *ForCausalLM (Llama, Qwen2, Gemma3 text)
    ("language_model", "layers"),           # bare multimodal base model
    ("layers",),                            # bare decoder (LlamaModel, AR backbone)
)


# --------------------------------------------------------------------------- layer capture

def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder block list (Llama, Qwen2, Gemma3 text, Gemma3ForConditionalGeneration)."""
    for path in _LAYER_PATHS:
        obj = model
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    tried = ", ".join(".".join(p) for p in _LAYER_PATHS)
    raise ValueError(f"decoder_layers: no decoder ModuleList on {type(model).__name__}; tried {tried}")


def hidden_states_index(layer_index: int) -> int:
    """HF ``hidden_states`` index holding the output of decoder block ``layer_index``: K+1."""
    if int(layer_index) != layer_index or layer_index < 0:
        raise ValueError(f"layer_index: expected a non-negative integer, found {layer_index!r}")
    return int(layer_index) + 1


class _StopForward(Exception):
    """Raised from the capture hook once block K has run, to skip the remaining blocks."""


def _check_layer_index(model: torch.nn.Module, layer_index: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    hidden_states_index(layer_index)
    if layer_index >= len(layers):
        raise ValueError(f"layer_index: expected 0 <= K < {len(layers)} (number of decoder blocks), "
                         f"found {layer_index}")
    return layers[layer_index]


@torch.no_grad()
def extract_layer(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  layer_index: int, *, stop_early: bool = True) -> torch.Tensor:
    """Output of decoder block ``layer_index`` (= HF ``hidden_states[K+1]``) as fp32 [B, T, d].

    Captured by a forward hook on ``layers[K]`` (element 0 of its output when it is a tuple),
    forward run with ``use_cache=False`` in the model's own dtype, then ``.float()``.
    With ``stop_early`` the forward is aborted after block K (later blocks cannot change it).
    """
    block = _check_layer_index(model, layer_index)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        if stop_early:
            raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"extract_layer: expected block {layer_index} to run once, it ran {len(captured)} times")
    return captured[0].float()


# --------------------------------------------------------------------------- position sampling

@dataclass(frozen=True)
class SamplerConfig:
    """Stage-0 sampler settings; every field enters the activation cache key.

    Defaults are the released full-size configs: seed 42, 10 positions per doc, min position 50,
    max_length 4096 (the extractor's own default is 2048).
    """

    seed: int = 42
    n_per_doc: int = 10
    min_position: int = 50
    max_length: int = 4096
    version: str = SAMPLER_VERSION

    def cache_key_fields(self) -> dict:
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        blob = json.dumps(self.cache_key_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_doc_id(corpus: str, split: str, index: int) -> str:
    """``"{corpus}:{split}:{index}"``, e.g. ``openbmb/Ultra-FineWeb:en:12345`` (stage0_extract.py:140)."""
    return f"{corpus}:{split}:{int(index)}"


def doc_rng(seed: int, doc_id: str) -> random.Random:
    """Per-document RNG seeded with the 32-byte digest ``sha256(f"{seed}|{doc_id}")``."""
    return random.Random(hashlib.sha256(f"{seed}|{doc_id}".encode()).digest())


def sample_positions(token_ids: Sequence[int], doc_id: str, *, seed: int = 42, n: int = 10,
                     min_position: int = 50, special_ids: Iterable[int]) -> list[int]:
    """Stage-0 positions of one document, in ``rng.sample`` order (not sorted).

    ``token_ids`` is the document tokenised with ``add_special_tokens=True`` (indices count BOS).
    Returns [] when no index ``>= min_position`` holds a non-special token.
    """
    special = frozenset(int(i) for i in special_ids)
    candidates = [i for i in range(int(min_position), len(token_ids)) if int(token_ids[i]) not in special]
    if not candidates:
        return []
    return doc_rng(seed, doc_id).sample(candidates, k=min(int(n), len(candidates)))


def tokenize_document(tokenizer, text: str, max_length: int) -> list[int]:
    """Stage-0 tokenisation: BOS per the tokenizer, right truncation to ``max_length``."""
    enc = tokenizer(text, truncation=True, max_length=int(max_length), add_special_tokens=True)
    return list(enc["input_ids"])


# --------------------------------------------------------------------------- batched extraction

@dataclass
class ActivationSet:
    """Gold activations at sampled positions (one row per position; never normalised).

    ``token_ids[i]`` is the token at ``positions[i]``; ``n_raw_tokens = positions + 1`` (counts
    BOS); ``context_text`` decodes ``ids[:pos+1]`` with ``skip_special_tokens=True``.
    ``layer_index`` is block K (gold = HF ``hidden_states[K+1]``).
    """

    vectors: np.ndarray                 # float32 [N, d]
    doc_ids: list[str]
    positions: np.ndarray               # int64 [N]
    token_ids: np.ndarray               # int64 [N]
    n_raw_tokens: np.ndarray            # int64 [N]
    context_text: list[str]
    layer_index: int
    sampler: SamplerConfig
    skipped_doc_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _input_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _plan(tokenizer, docs, cfg: SamplerConfig):
    """Tokenise and sample every document; returns ([(doc_id, ids, positions)], skipped ids)."""
    special = set(tokenizer.all_special_ids)
    planned, skipped = [], []
    for doc_id, text in docs:
        ids = tokenize_document(tokenizer, text, cfg.max_length)
        positions = sample_positions(ids, doc_id, seed=cfg.seed, n=cfg.n_per_doc,
                                     min_position=cfg.min_position, special_ids=special)
        if positions:
            planned.append((doc_id, ids, positions))
        else:
            skipped.append(doc_id)
    return planned, skipped


def extract_positions(model: torch.nn.Module, tokenizer, docs: Sequence[tuple[str, str]], layer_index: int,
                      sampler_cfg: SamplerConfig, batch_size: int) -> ActivationSet:
    """Stage-0 extraction: tokenise, sample positions, right-padded batched forward, gather block-K rows.

    Rows follow document order, and within a document the sampler's order.  Documents without a
    candidate position are listed in ``skipped_doc_ids``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected >= 1, found {batch_size}")
    planned, skipped = _plan(tokenizer, docs, sampler_cfg)
    device, pad_id = _input_device(model), _pad_id(tokenizer)
    vectors, doc_ids, positions, token_ids, contexts = [], [], [], [], []
    for start in range(0, len(planned), int(batch_size)):
        chunk = planned[start:start + int(batch_size)]
        input_ids, mask = pad_right([ids for _, ids, _ in chunk], pad_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        hidden = extract_layer(model, input_ids, mask, layer_index)
        for row, (doc_id, ids, pos_list) in enumerate(chunk):
            index = torch.tensor(pos_list, dtype=torch.long, device=hidden.device)
            vectors.append(hidden[row].index_select(0, index).cpu().numpy())
            for pos in pos_list:
                doc_ids.append(doc_id)
                positions.append(pos)
                token_ids.append(ids[pos])
                contexts.append(tokenizer.decode(ids[: pos + 1], skip_special_tokens=True))
    d = int(getattr(model.get_input_embeddings(), "embedding_dim", 0))
    stacked = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, d), np.float32)
    pos_arr = np.asarray(positions, dtype=np.int64)
    return ActivationSet(vectors=stacked, doc_ids=doc_ids, positions=pos_arr,
                         token_ids=np.asarray(token_ids, dtype=np.int64), n_raw_tokens=pos_arr + 1,
                         context_text=contexts, layer_index=int(layer_index), sampler=sampler_cfg,
                         skipped_doc_ids=skipped)


# --------------------------------------------------------------------------- cross-tokenizer alignment

def _offsets(tokenizer, text: str, max_length: int | None):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"align_positions: expected a fast tokenizer (offset mappings), "
                         f"found {type(tokenizer).__name__}")
    kwargs = {"truncation": True, "max_length": int(max_length)} if max_length else {}
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True, **kwargs)
    ends = np.asarray([end for _, end in enc["offset_mapping"]], dtype=np.int64)
    special = np.asarray(enc["special_tokens_mask"], dtype=bool)
    return ends, special


def _tie_rank(ends: np.ndarray, special: np.ndarray, pos: int) -> int:
    """How many earlier non-special tokens share token ``pos``'s end offset (byte pieces of one char)."""
    same = np.flatnonzero((ends == ends[pos]) & ~special)
    return int(np.searchsorted(same, pos))


def _closest_end(dst_ends: np.ndarray, content: np.ndarray, end: int, rank: int) -> int:
    """Destination token with the largest end <= ``end`` (nearest end if none); ties by rank."""
    before = content[dst_ends[content] <= end]
    if before.size == 0:
        return int(content[np.argmin(np.abs(dst_ends[content] - end))])
    best_end = dst_ends[before[-1]]
    ties = before[dst_ends[before] == best_end]
    return int(ties[min(rank, ties.size - 1)]) if best_end == end else int(ties[-1])


def align_positions(text: str, src_tokenizer, src_positions: Sequence[int], dst_tokenizer,
                    *, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Map token positions of ``src_tokenizer`` onto ``dst_tokenizer`` by character offset.

    Both tokenisations use ``add_special_tokens=True`` (positions count BOS).  Each source
    token's end character ``e`` maps to the non-special destination token with the largest end
    offset ``<= e`` (the last such token on ties); if none ends at or before ``e``, to the
    non-special token whose end is nearest.  Several tokens can share one end offset (byte
    pieces of a multi-byte character); on an exact end match the r-th such source token maps to
    the r-th such destination token (clamped), so aligning a tokenizer with itself is the
    identity; otherwise the last tied token is used.  Returns (dst_positions, |char error| per
    position).
    """
    src_ends, src_special = _offsets(src_tokenizer, text, max_length)
    dst_ends, dst_special = _offsets(dst_tokenizer, text, max_length)
    content = np.flatnonzero(~dst_special)
    if content.size == 0:
        raise ValueError("align_positions: destination tokenisation has no non-special token")
    dst_positions, errors = [], []
    for pos in src_positions:
        if not 0 <= int(pos) < len(src_ends):
            raise ValueError(f"src_positions: expected 0 <= pos < {len(src_ends)}, found {pos}")
        if src_special[pos]:
            raise ValueError(f"src_positions: position {pos} is a special token; it has no character span")
        end = int(src_ends[pos])
        target = _closest_end(dst_ends, content, end, _tie_rank(src_ends, src_special, pos))
        dst_positions.append(target)
        errors.append(abs(end - int(dst_ends[target])))
    return dst_positions, errors


def mean_alignment_error(char_errors: Sequence[int]) -> float:
    """Mean absolute character error of an alignment (seeds 001/003 report 0.3 / 0.03 chars)."""
    if len(char_errors) == 0:
        raise ValueError("char_errors: expected at least one alignment error, found none")
    return float(np.mean(np.abs(np.asarray(char_errors, dtype=np.float64))))
