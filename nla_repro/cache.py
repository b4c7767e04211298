"""Content-addressed results cache.

Why it looks like this (see docs/anchors.md section 1 and 6.3, "caches that lie"):
- lm-evaluation-harness #2715 / #4063: one ``--use_cache`` db silently served model A's answers to model B.
  Here every key must name the checkpoint content (:func:`hash_checkpoint_dir`), not a path or a name;
  a key without a ``checkpoint`` field is refused unless the step declares itself model-independent.
- "scores change with batch size": batch composition is a key field like any other, so a result computed
  in one batch layout is never served for another.
- lmms-eval #1217 added the tool version to the key; here ``code_version`` / recipe version is a field the
  caller supplies, and the library versions are recorded in every entry's metadata.
- A cache can fake determinism (control-arena #388): determinism tests must not read from it.

Key: a dict of everything that can change a number -> canonical JSON (sorted keys, floats as exact
``repr``, numpy arrays / bytes replaced by their sha256, dataclasses and enums tagged by type) -> sha256.

Layout (one directory per entry, written to a temp directory and renamed into place)::

    <root>/<step>/<digest[:2]>/<digest>/
        meta.json          full key, sha256 + size of every payload file, created_at, library versions
        payload.json       the JSON-able payload dict
        arrays/<name>.npy  optional named numpy arrays (allow_pickle=False)

On read every payload file's sha256 is checked against meta.json; a corrupt, partial or mismatched entry
is logged (warning naming the entry and the reason), deleted, and treated as a miss -- never used.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .assets import sha256_file
from .provenance import library_versions

__all__ = [
    "KEY_SCHEMA",
    "MODEL_INDEPENDENT",
    "CacheKey",
    "CacheKeyError",
    "CacheEntry",
    "EntryInfo",
    "ResultsCache",
    "canonicalize",
    "canonical_json",
    "sha256_canonical",
    "hash_file",
    "hash_checkpoint_dir",
    "default_cache_base",
    "default_results_root",
]

log = logging.getLogger("nla_repro.cache")

KEY_SCHEMA = "nla-repro-cache-key/1"  # hashed into every key: a canonicalisation change invalidates all
ENTRY_SCHEMA = "nla-repro-cache-entry/1"
MODEL_INDEPENDENT = "model-independent"  # explicit value for key["checkpoint"] of steps that use no model

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_META = "meta.json"
_PAYLOAD = "payload.json"
_ARRAYS = "arrays"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


# ----------------------------------------------------------------------------------------------------------
# roots


def default_cache_base() -> Path:
    """``$NLA_REPRO_CACHE`` or ``~/.cache/nla-repro``."""
    env = os.environ.get("NLA_REPRO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nla-repro"


def default_results_root() -> Path:
    """``$NLA_REPRO_CACHE/results`` or ``~/.cache/nla-repro/results``."""
    return default_cache_base() / "results"


# ----------------------------------------------------------------------------------------------------------
# canonical key material


class CacheKeyError(ValueError):
    """A key field that cannot be canonicalised or a key missing a required field."""


def canonicalize(obj: Any, _path: str = "key") -> Any:
    """Map ``obj`` to a JSON tree whose serialisation is canonical.

    - dict keys must be ``str`` (``1`` and ``"1"`` would otherwise collide); order does not matter;
    - ``float`` (and numpy floats) -> ``{"$float": repr(x)}``: exact, and ``1`` (int) differs from ``1.0``;
      NaN / inf / -0.0 are distinct and allowed;
    - ``bool`` stays bool (``True`` differs from ``1``); numpy ints/bools -> Python;
    - list / tuple -> list; set / frozenset -> sorted list;
    - numpy arrays (and objects with ``.detach().cpu().numpy()``, e.g. torch tensors) ->
      ``{"$ndarray": {"dtype", "shape", "sha256"}}`` over C-contiguous bytes;
    - bytes -> ``{"$bytes": sha256}``; enums -> ``{"$enum": "Class.NAME"}``;
    - dataclass instances -> ``{"$dataclass": qualname, "fields": {...}}``;
    - ``pathlib`` paths are refused: a path is not content (hash the file or directory instead).
    """
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, enum.Enum):  # before int: IntEnum is an int
        return {"$enum": f"{type(obj).__qualname__}.{obj.name}"}
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return {"$float": repr(float(obj))}
    if isinstance(obj, Mapping):
        out = {}
        for k in obj:
            if not isinstance(k, str):
                raise CacheKeyError(f"{_path}: dict keys must be str, found {type(k).__name__} {k!r}")
            out[k] = canonicalize(obj[k], f"{_path}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [canonicalize(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [canonicalize(v, f"{_path}{{}}") for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        arr = _to_numpy(obj, _path)
        if arr.dtype.hasobject:
            raise CacheKeyError(f"{_path}: object arrays cannot be hashed (dtype {arr.dtype})")
        arr = np.ascontiguousarray(arr)
        return {
            "$ndarray": {
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            }
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {"$dataclass": type(obj).__qualname__, "fields": canonicalize(fields, _path)}
    if isinstance(obj, PurePath):
        raise CacheKeyError(
            f"{_path}: a path ({obj}) is not content; put hash_file(...) or hash_checkpoint_dir(...) "
            "in the key instead, or str(path) if the path itself is what matters"
        )
    raise CacheKeyError(f"{_path}: cannot canonicalise value of type {type(obj).__qualname__}: {obj!r}")


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _to_numpy(obj: Any, path: str) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    t = obj.detach().cpu()
    try:
        return t.numpy()
    except TypeError:  # bf16 and friends: hash the raw bits, tagged with the torch dtype
        import torch  # noqa: PLC0415

        bits = t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.uint8).numpy()
        return bits.view(np.dtype([(str(t.dtype), bits.dtype)]))
    except Exception as e:  # pragma: no cover
        raise CacheKeyError(f"{path}: cannot convert tensor to numpy: {e}") from e


def canonical_json(obj: Any) -> str:
    """Canonical serialisation of ``obj`` (see :func:`canonicalize`)."""
    return json.dumps(
        canonicalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def sha256_canonical(obj: Any) -> str:
    """sha256 hex of :func:`canonical_json` -- use it for sidecar dicts, manifests, protocol dicts."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


class CacheKey:
    """Content key of one cacheable step.

    ``fields`` is everything that can change the step's output, e.g.::

        CacheKey({
            "step": "reconstruct",
            "checkpoint": {"av": hash_checkpoint_dir(av), "ar": hash_checkpoint_dir(ar)},
            "sidecar": sha256_canonical(sidecar.raw),
            "code_version": "reconstruct/3",
            "eval_manifest": manifest_sha,
            "backend": {"name": "hf", "version": "5.23.0"},
            "decoding": Decoding(...),
            "seed": 42,
            "batch": {"size": 8, "composition": ids_sha},
        })

    Required: ``step`` (a name usable as a directory) and ``checkpoint`` (the content hash of the model(s);
    ``MODEL_INDEPENDENT`` for steps that load no model, e.g. corpus sampling). The digest is sha256 over
    ``{"schema": KEY_SCHEMA, "fields": canonical(fields)}``.
    """

    __slots__ = ("_fields", "_canonical", "_digest")

    def __init__(self, fields: Mapping[str, Any]):
        if not isinstance(fields, Mapping):
            raise CacheKeyError(f"CacheKey expects a dict of key fields, found {type(fields).__name__}")
        step = fields.get("step")
        if not isinstance(step, str) or not _NAME_RE.match(step):
            raise CacheKeyError(
                f"key field 'step': expected a name matching {_NAME_RE.pattern}, found {step!r}"
            )
        if "checkpoint" not in fields:
            raise CacheKeyError(
                f"key for step {step!r} has no 'checkpoint' field: results must never be shared across "
                f"models; pass hash_checkpoint_dir(...) (or {{'av': ..., 'ar': ...}}), or "
                f"checkpoint={MODEL_INDEPENDENT!r} for a step that loads no model"
            )
        ck = fields["checkpoint"]
        if ck is None or ck == "" or ck == {} or ck == []:
            raise CacheKeyError(f"key field 'checkpoint' for step {step!r} is empty ({ck!r})")
        canon = canonicalize(dict(fields))
        self._fields = dict(fields)
        self._canonical = canon
        blob = json.dumps(
            {"schema": KEY_SCHEMA, "fields": canon},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        self._digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def step(self) -> str:
        return self._fields["step"]

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self._fields)

    @property
    def canonical(self) -> Any:
        """The canonical JSON tree (what meta.json stores under ``key``)."""
        return json.loads(json.dumps(self._canonical))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheKey) and other._digest == self._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"CacheKey(step={self.step!r}, digest={self._digest[:12]}…)"


# ----------------------------------------------------------------------------------------------------------
# file and checkpoint hashing


def hash_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes (streamed; one implementation for the whole package)."""
    return sha256_file(path)


_SKIP_DIRS = {".git", ".cache", "__pycache__"}
_RACY_SECONDS = 2.0  # do not memoise a hash for a file modified this recently (mtime granularity)
_MEM_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_index_path(hash_cache: str | os.PathLike | None | bool) -> Path | None:
    if hash_cache is False:
        return None
    if hash_cache is None or hash_cache is True:
        return default_cache_base() / "file_hashes.json"
    return Path(hash_cache)


def _load_hash_index(p: Path | None) -> dict[str, str]:
    if p is None or not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if data.get("schema") != "nla-repro-file-hashes/1" or not isinstance(data.get("hashes"), dict):
            raise ValueError("unexpected schema")
        return {k: v for k, v in data["hashes"].items() if isinstance(v, str) and _HEX64_RE.match(v)}
    except Exception as e:
        log.warning("nla-repro file-hash index %s is unreadable (%s); ignoring it and rehashing", p, e)
        return {}


def _save_hash_index(p: Path, hashes: dict[str, str]) -> None:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(
            p,
            json.dumps({"schema": "nla-repro-file-hashes/1", "hashes": hashes}, sort_keys=True).encode(),
        )
    except OSError as e:  # read-only home etc.: the index is an optimisation only
        log.warning("could not write file-hash index %s: %s", p, e)


def hash_checkpoint_dir(
    path: str | os.PathLike, *, hash_cache: str | os.PathLike | None | bool = None
) -> str:
    """sha256 over the sorted ``(relative posix path, file sha256)`` of every file under ``path``.

    Symlinks are followed (HF snapshot dirs link into blobs). Directories named ``.git``, ``.cache``
    (HF download metadata) and ``__pycache__`` are skipped. Per-file hashes are memoised by
    ``(absolute path, size, mtime_ns)`` in memory and in a JSON index (default
    ``$NLA_REPRO_CACHE/file_hashes.json``; ``hash_cache=False`` disables the index, a path relocates it),
    so a 50 GB checkpoint is hashed once. A file modified in the last 2 s is not memoised (mtime ticks
    can be coarse). An empty or missing directory is an error, not a key.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"checkpoint path {root} is not a directory")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file():
                files.append((p.relative_to(root).as_posix(), p))
    if not files:
        raise ValueError(f"checkpoint directory {root} contains no files; refusing to hash it as a key")
    files.sort(key=lambda t: t[0])

    index_path = _hash_index_path(hash_cache)
    index = _load_hash_index(index_path)
    changed = False
    now = time.time()
    h = hashlib.sha256()
    for rel, p in files:
        st = p.stat()
        ident = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        sid = f"{ident[0]}|{ident[1]}|{ident[2]}"
        digest = _MEM_HASHES.get(ident) or index.get(sid)
        if digest is None:
            digest = hash_file(p)
            if now - st.st_mtime > _RACY_SECONDS:
                _MEM_HASHES[ident] = digest
                index[sid] = digest
                changed = True
        h.update(rel.encode("utf-8"))
        h.update(b"\0")
        h.update(digest.encode("ascii"))
        h.update(b"\n")
    if changed and index_path is not None:
        if len(index) > 20000:  # prune entries of files that are gone (tmp dirs, deleted checkpoints)
            index = {k: v for k, v in index.items() if os.path.exists(k.rsplit("|", 2)[0])}
        _save_hash_index(index_path, index)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# atomic I/O helpers


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _write_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _dir_size(d: Path) -> int:
    total = 0
    for p in d.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_utc(text: str) -> _dt.datetime:
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-21T22:30:00Z)") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)


# ----------------------------------------------------------------------------------------------------------
# entries


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A verified cache entry. ``arrays`` are loaded in full (their hashes were just checked)."""

    digest: str
    step: str
    key: Any  # canonical key tree as stored
    payload: dict[str, Any]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path

    @property
    def created_at(self) -> str:
        return self.meta.get("created_at", "")


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """What :meth:`ResultsCache.list` returns: metadata only, nothing verified."""

    digest: str
    step: str
    created_at: str
    path: Path
    n_bytes: int
    key: Any


class _CorruptEntry(Exception):
    pass


class ResultsCache:
    """Content-addressed store of step results. See the module docstring for layout and guarantees.

    ``ResultsCache()`` uses :func:`default_results_root`; pass ``root`` to override.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_results_root()
        self._session = {"hits": 0, "misses": 0, "corrupt": 0, "writes": 0, "refreshes": 0}

    def __repr__(self) -> str:
        return f"ResultsCache({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------------------
    def _entry_dir(self, key: CacheKey) -> Path:
        return self.root / key.step / key.digest[:2] / key.digest

    @staticmethod
    def _coerce_key(key: CacheKey | Mapping[str, Any]) -> CacheKey:
        return key if isinstance(key, CacheKey) else CacheKey(key)

    # -- read ---------------------------------------------------------------------------------------------
    def get(self, key: CacheKey | Mapping[str, Any]) -> CacheEntry | None:
        """The verified entry for ``key``, or None on a miss. Corrupt entries are logged, deleted, missed."""
        key = self._coerce_key(key)
        d = self._entry_dir(key)
        if not d.is_dir():
            self._session["misses"] += 1
            return None
        try:
            entry = self._read_verified(d, key)
        except _CorruptEntry as e:
            self._session["corrupt"] += 1
            self._session["misses"] += 1
            log.warning(
                "nla-repro cache: corrupt entry %s/%s at %s (%s); deleting it, the result will be recomputed",
                key.step,
                key.digest,
                d,
                e,
            )
            self._remove_entry_dir(d)
            return None
        self._session["hits"] += 1
        return entry

    def _read_verified(self, d: Path, key: CacheKey) -> CacheEntry:
        meta_p = d / _META
        if not meta_p.is_file():
            raise _CorruptEntry("meta.json missing (partial entry)")
        try:
            meta = json.loads(meta_p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise _CorruptEntry(f"meta.json unreadable: {e}") from e
        if not isinstance(meta, dict) or meta.get("schema") != ENTRY_SCHEMA:
            raise _CorruptEntry(f"meta.json schema is {meta.get('schema') if isinstance(meta, dict) else None!r}, "
                                f"expected {ENTRY_SCHEMA!r}")
        if meta.get("digest") != key.digest:
            raise _CorruptEntry(f"meta digest {meta.get('digest')!r} != key digest {key.digest!r}")
        if meta.get("key") != key.canonical:
            raise _CorruptEntry("stored key fields differ from the requested key (hash collision or tampering)")
        files = meta.get("files")
        if not isinstance(files, dict) or _PAYLOAD not in files:
            raise _CorruptEntry("meta.json lists no payload files")
        for rel, info in sorted(files.items()):
            p = d / rel
            if not p.is_file():
                raise _CorruptEntry(f"payload file {rel} missing")
            if p.stat().st_size != info.get("bytes"):
                raise _CorruptEntry(f"payload file {rel} has {p.stat().st_size} bytes, meta says {info.get('bytes')}")
            got = hash_file(p)
            if got != info.get("sha256"):
                raise _CorruptEntry(f"payload file {rel} sha256 {got[:12]}… != recorded {str(info.get('sha256'))[:12]}…")
        try:
            payload = json.loads((d / _PAYLOAD).read_text(encoding="utf-8"))
            arrays = {}
            for name in sorted(meta.get("arrays", {})):
                rel = f"{_ARRAYS}/{name}.npy"
                if rel not in files:
                    raise _CorruptEntry(f"array {name!r} not covered by a recorded hash")
                arrays[name] = np.load(d / rel, allow_pickle=False)
        except _CorruptEntry:
            raise
        except Exception as e:  # hashes matched but content does not parse: written corrupt
            raise _CorruptEntry(f"payload does not parse: {e}") from e
        return CacheEntry(
            digest=key.digest, step=key.step, key=meta["key"], payload=payload, arrays=arrays, meta=meta, path=d
        )

    # -- write --------------------------------------------------------------------------------------------
    def put(
        self,
        key: CacheKey | Mapping[str, Any],
        payload: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> CacheEntry:
        """Store ``payload`` (JSON-able dict) and optional named arrays under ``key``; replaces any old entry.

        All files are written and fsynced inside a temp directory next to the entry, meta.json last, then
        the directory is renamed into place, so a reader sees either the whole entry or none of it.
        """
        key = self._coerce_key(key)
        if not isinstance(payload, Mapping):
            raise TypeError(f"cache payload for step {key.step!r} must be a dict, found {type(payload).__name__}")
        arrays = dict(arrays or {})
        for name, arr in arrays.items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(f"array name {name!r} must match {_NAME_RE.pattern}")
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"array {name!r} must be a numpy.ndarray, found {type(arr).__name__}")
            if arr.dtype.hasobject:
                raise TypeError(f"array {name!r} has object dtype; only plain numeric arrays are stored")
        try:
            payload_bytes = json.dumps(dict(payload), sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise TypeError(f"cache payload for step {key.step!r} is not JSON-serialisable: {e}") from e

        final = self._entry_dir(key)
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{key.digest[:12]}-", dir=str(parent)))
        try:
            files: dict[str, dict[str, Any]] = {}
            _write_fsync(tmp / _PAYLOAD, payload_bytes)
            files[_PAYLOAD] = {"sha256": hashlib.sha256(payload_bytes).hexdigest(), "bytes": len(payload_bytes)}
            array_meta = {}
            if arrays:
                (tmp / _ARRAYS).mkdir()
                for name in sorted(arrays):
                    arr = np.ascontiguousarray(arrays[name])
                    rel = f"{_ARRAYS}/{name}.npy"
                    with open(tmp / rel, "wb") as f:
                        np.save(f, arr, allow_pickle=False)
                        f.flush()
                        os.fsync(f.fileno())
                    files[rel] = {"sha256": hash_file(tmp / rel), "bytes": (tmp / rel).stat().st_size}
                    array_meta[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
                _fsync_dir(tmp / _ARRAYS)
            meta = {
                "schema": ENTRY_SCHEMA,
                "digest": key.digest,
                "step": key.step,
                "key_schema": KEY_SCHEMA,
                "key": key.canonical,
                "files": files,
                "arrays": array_meta,
                "created_at": _utc_now(),
                "library_versions": library_versions(),
            }
            _write_fsync(tmp / _META, json.dumps(meta, sort_keys=True, indent=1).encode("utf-8"))
            _fsync_dir(tmp)
            self._install(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._session["writes"] += 1
        arrays_copy = {n: np.ascontiguousarray(a).copy() for n, a in sorted(arrays.items())}
        return CacheEntry(
            digest=key.digest,
            step=key.step,
            key=meta["key"],
            payload=json.loads(payload_bytes),
            arrays=arrays_copy,
            meta=meta,
            path=final,
        )

    def _install(self, tmp: Path, final: Path) -> None:
        try:
            os.replace(tmp, final)  # atomic when final does not exist
        except OSError:
            # final exists (refresh, or a concurrent writer): move it aside, then install ours.
            trash = final.parent / f"{_TRASH_PREFIX}{final.name[:12]}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(final, trash)
            except FileNotFoundError:
                pass
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(final.parent)

    def _remove_entry_dir(self, d: Path) -> None:
        trash = d.parent / f"{_TRASH_PREFIX}{d.name[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(d, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def get_or_compute(
        self,
        key: CacheKey | Mapping[str, Any],
        fn: Callable[[], Any],
        refresh: bool = False,
    ) -> CacheEntry:
        """Return the cached entry for ``key`` or call ``fn()`` and store its result.

        ``fn`` returns a payload dict, or ``(payload_dict, {name: ndarray})``. ``refresh=True`` ignores any
        cached entry (SAEBench's ``force_rerun``) and overwrites it.
        """
        key = self._coerce_key(key)
        if refresh:
            self._session["refreshes"] += 1
        else:
            hit = self.get(key)
            if hit is not None:
                return hit
        result = fn()
        if isinstance(result, tuple):
            if len(result) != 2:
                raise TypeError(f"compute function for step {key.step!r} returned a {len(result)}-tuple; "
                                "expected payload or (payload, arrays)")
            payload, arrays = result
        else:
            payload, arrays = result, None
        return self.put(key, payload, arrays)

    # -- inventory ----------------------------------------------------------------------------------------
    def _entry_dirs(self, step: str | None = None):
        if not self.root.is_dir():
            return
        steps = [self.root / step] if step is not None else sorted(p for p in self.root.iterdir() if p.is_dir())
        for sd in steps:
            if not sd.is_dir() or sd.name.startswith("."):
                continue
            for shard in sorted(p for p in sd.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for d in sorted(p for p in shard.iterdir() if p.is_dir() and _HEX64_RE.match(p.name)):
                    yield sd.name, d

    def list(self, step: str | None = None) -> list[EntryInfo]:
        """Entries (optionally of one step), sorted by (step, digest). Reads metadata only; an entry whose
        meta.json is missing or unreadable is listed with ``created_at=""`` and ``key=None``."""
        out = []
        for step_name, d in self._entry_dirs(step):
            created, key = "", None
            try:
                meta = json.loads((d / _META).read_text(encoding="utf-8"))
                created, key = meta.get("created_at", ""), meta.get("key")
            except (OSError, ValueError):
                pass
            out.append(EntryInfo(digest=d.name, step=step_name, created_at=created, path=d,
                                 n_bytes=_dir_size(d), key=key))
        return out

    def load(self, info: EntryInfo) -> CacheEntry | None:
        """Verified read of a listed entry (key rebuilt from its stored metadata)."""
        d = info.path
        try:
            meta = json.loads((d / _META).read_text(encoding="utf-8"))
            stored_key = meta["key"]
            if meta.get("digest") != info.digest:
                raise _CorruptEntry("meta digest does not match directory name")
            # recompute the digest from the stored canonical key: proves key <-> directory consistency
            blob = json.dumps({"schema": meta.get("key_schema"), "fields": stored_key}, sort_keys=True,
                              separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            if hashlib.sha256(blob.encode("utf-8")).hexdigest() != info.digest:
                raise _CorruptEntry("stored key does not hash to the entry digest")
            key = _StoredKey(info.step, info.digest, stored_key)
            entry = self._read_verified(d, key)  # type: ignore[arg-type]
        except (_CorruptEntry, OSError, ValueError, KeyError, TypeError) as e:
            self._session["corrupt"] += 1
            log.warning("nla-repro cache: corrupt entry %s/%s at %s (%s); deleting it", info.step, info.digest, d, e)
            self._remove_entry_dir(d)
            return None
        return entry

    def iter_entries(self, step: str | None = None):
        """Yield every verified entry (corrupt ones are logged and deleted)."""
        for info in self.list(step):
            e = self.load(info)
            if e is not None:
                yield e

    def clear(self, step: str | None = None) -> int:
        """Delete all entries (or those of ``step``) and leftover temp dirs; return how many entries went."""
        n = 0
        for _, d in list(self._entry_dirs(step)):
            self._remove_entry_dir(d)
            n += 1
        if self.root.is_dir():
            steps = [self.root / step] if step is not None else [p for p in self.root.iterdir() if p.is_dir()]
            for sd in steps:
                if not sd.is_dir():
                    continue
                for leftover in sd.rglob(f"{_TMP_PREFIX}*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                for leftover in sd.rglob(f"{_TRASH_PREFIX}*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                for shard in sorted((p for p in sd.iterdir() if p.is_dir()), reverse=True):
                    try:
                        shard.rmdir()
                    except OSError:
                        pass
                try:
                    sd.rmdir()
                except OSError:
                    pass
        return n

    def prune(self, before: str, step: str | None = None) -> int:
        """Delete entries (optionally of ``step``) created before the ISO-8601 time ``before`` (UTC if it has
        no offset), e.g. results of checkpoints that were since replaced, which the report would otherwise
        still list.  Entries without a readable creation time are kept (``get`` already recomputes corrupt
        ones).  Returns how many went."""
        cutoff = _parse_utc(before)
        n = 0
        for info in self.list(step):
            if info.created_at and _parse_utc(info.created_at) < cutoff:
                self._remove_entry_dir(info.path)
                n += 1
        return n

    def stats(self) -> dict[str, Any]:
        """``{"root", "entries", "bytes", "by_step": {step: {"entries", "bytes"}}, "session": {...}}``;
        session counts hits / misses / corrupt / writes / refreshes of this instance."""
        by_step: dict[str, dict[str, int]] = {}
        total_b = 0
        infos = self.list()
        for info in infos:
            s = by_step.setdefault(info.step, {"entries": 0, "bytes": 0})
            s["entries"] += 1
            s["bytes"] += info.n_bytes
            total_b += info.n_bytes
        return {
            "root": str(self.root),
            "entries": len(infos),
            "bytes": total_b,
            "by_step": dict(sorted(by_step.items())),
            "session": dict(self._session),
        }


class _StoredKey:
    """Minimal stand-in for CacheKey when re-reading an entry from its own metadata."""

    def __init__(self, step: str, digest: str, canonical: Any):
        self.step, self.digest, self.canonical = step, digest, canonical
