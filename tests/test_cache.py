"""Content-addressed results cache: key canonicalisation, atomicity, corruption handling, inventory."""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from nla_repro import cache as cache_mod
from nla_repro.cache import (
    MODEL_INDEPENDENT,
    CacheKey,
    CacheKeyError,
    ResultsCache,
    canonical_json,
    hash_checkpoint_dir,
    hash_file,
)
from nla_repro.provenance import environment_fingerprint, library_versions


@dataclasses.dataclass(frozen=True)
class _Decoding:  # shaped like nla_repro.decoding.Decoding
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 150
    seed: int = 0


class _Conv(enum.Enum):
    TRAINING_DROP = "training_drop"
    CLIENT_RAW = "client_raw"


def base_fields() -> dict:
    return {
        "step": "reconstruct",
        "checkpoint": {"av": "a" * 64, "ar": "b" * 64},
        "sidecar": "c" * 64,
        "code_version": "reconstruct/1",
        "eval_manifest": "d" * 64,
        "backend": {"name": "hf", "version": "5.23.0"},
        "decoding": _Decoding(),
        "failure_convention": _Conv.TRAINING_DROP,
        "seed": 42,
        "batch": {"size": 8, "ids": list(range(8))},
        "injection_scale": 150.0,
        "gold": np.arange(12, dtype=np.float32).reshape(3, 4),
    }


# Each mutation changes exactly one thing that can change a number.
MUTATIONS = {
    "checkpoint_av": lambda f: f["checkpoint"].__setitem__("av", "e" * 64),
    "checkpoint_ar": lambda f: f["checkpoint"].__setitem__("ar", "e" * 64),
    "sidecar": lambda f: f.__setitem__("sidecar", "f" * 64),
    "code_version": lambda f: f.__setitem__("code_version", "reconstruct/2"),
    "eval_manifest": lambda f: f.__setitem__("eval_manifest", "0" * 64),
    "backend_name": lambda f: f["backend"].__setitem__("name", "sglang"),
    "backend_version": lambda f: f["backend"].__setitem__("version", "5.23.1"),
    "decoding_greedy": lambda f: f.__setitem__("decoding", _Decoding(greedy=False)),
    "decoding_temperature": lambda f: f.__setitem__("decoding", _Decoding(temperature=0.7)),
    "decoding_max_new": lambda f: f.__setitem__("decoding", _Decoding(max_new_tokens=300)),
    "failure_convention": lambda f: f.__setitem__("failure_convention", _Conv.CLIENT_RAW),
    "seed": lambda f: f.__setitem__("seed", 43),
    "batch_size": lambda f: f["batch"].__setitem__("size", 4),
    "batch_order": lambda f: f["batch"].__setitem__("ids", list(reversed(range(8)))),
    "step": lambda f: f.__setitem__("step", "verbalize"),
    "float_last_ulp": lambda f: f.__setitem__("injection_scale", float(np.nextafter(150.0, 200.0))),
    "float_vs_int": lambda f: f.__setitem__("injection_scale", 150),
    "array_value": lambda f: f["gold"].__setitem__((0, 0), 1e-7),
    "array_dtype": lambda f: f.__setitem__("gold", f["gold"].astype(np.float64)),
    "array_shape": lambda f: f.__setitem__("gold", f["gold"].reshape(4, 3)),
    "extra_field": lambda f: f.__setitem__("layer", 20),
    "bool_vs_int": lambda f: f.__setitem__("seed", True),
}


def test_key_is_stable_and_order_independent():
    f1 = base_fields()
    f2 = dict(reversed(list(base_fields().items())))
    f2["checkpoint"] = {"ar": "b" * 64, "av": "a" * 64}
    f2["batch"] = {"ids": list(range(8)), "size": 8}
    k1, k2 = CacheKey(f1), CacheKey(f2)
    assert k1.digest == k2.digest
    assert k1 == k2 and hash(k1) == hash(k2)
    # Pinned: the canonical form must not drift silently between releases (a drift orphans every cache).
    small = CacheKey({"step": "s", "checkpoint": MODEL_INDEPENDENT, "x": 0.1, "a": [1, True, None, "t"]})
    assert canonical_json({"b": 0.1, "a": 1}) == '{"a":1,"b":{"$float":"0.1"}}'
    assert small.digest == CacheKey({"a": [1, True, None, "t"], "x": 0.1, "checkpoint": MODEL_INDEPENDENT,
                                     "step": "s"}).digest
    assert len(k1.digest) == 64


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_key_field_changes_the_hash(name):
    base = CacheKey(base_fields()).digest
    f = base_fields()
    MUTATIONS[name](f)
    assert CacheKey(f).digest != base, f"mutation {name} did not change the key"


def test_all_mutations_give_distinct_keys():
    digests = {CacheKey(base_fields()).digest}
    for name in sorted(MUTATIONS):
        f = base_fields()
        MUTATIONS[name](f)
        digests.add(CacheKey(f).digest)
    assert len(digests) == len(MUTATIONS) + 1


def test_nan_and_negative_zero_are_exact():
    def d(v):
        return CacheKey({"step": "s", "checkpoint": MODEL_INDEPENDENT, "v": v}).digest

    assert d(0.0) != d(-0.0)
    assert d(float("nan")) == d(float("nan"))
    assert d(float("inf")) != d(float("-inf"))
    assert d(np.float64(0.1)) == d(0.1)


def test_key_requires_step_and_checkpoint():
    with pytest.raises(CacheKeyError, match="checkpoint"):
        CacheKey({"step": "verbalize", "seed": 1})
    with pytest.raises(CacheKeyError, match="empty"):
        CacheKey({"step": "verbalize", "checkpoint": ""})
    with pytest.raises(CacheKeyError, match="step"):
        CacheKey({"checkpoint": "a" * 64})
    with pytest.raises(CacheKeyError, match="step"):
        CacheKey({"step": "../escape", "checkpoint": "a" * 64})
    with pytest.raises(CacheKeyError, match="not content"):
        CacheKey({"step": "s", "checkpoint": Path("/models/av")})
    with pytest.raises(CacheKeyError, match="dict keys must be str"):
        CacheKey({"step": "s", "checkpoint": "x", "m": {1: 2}})
    with pytest.raises(CacheKeyError, match="cannot canonicalise"):
        CacheKey({"step": "s", "checkpoint": "x", "o": object()})


def test_torch_tensor_keys_hash_content():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32)
    k = lambda v: CacheKey({"step": "s", "checkpoint": "x", "v": v}).digest  # noqa: E731
    assert k(t) == k(t.clone()) == k(t.numpy())
    assert k(t) != k(t + 1)
    bf = t.to(torch.bfloat16)
    assert k(bf) == k(bf.clone()) and k(bf) != k(t) and k(bf) != k(bf + 1)


# ---------------------------------------------------------------------------------------------------------
# checkpoint hashing


def _make_ckpt(d: Path) -> Path:
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"d": 4}')
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    (d / "sub" / "tokenizer.json").write_text("{}")
    (d / ".cache").mkdir()
    (d / ".cache" / "download.lock").write_text("volatile")
    return d


def test_hash_checkpoint_dir_content_and_layout(tmp_path):
    a = _make_ckpt(tmp_path / "a")
    idx = tmp_path / "hashes.json"
    h = hash_checkpoint_dir(a, hash_cache=idx)
    assert h == hash_checkpoint_dir(a, hash_cache=False)
    # a copy elsewhere has the same content hash (path is not part of it)
    b = tmp_path / "b"
    import shutil

    shutil.copytree(a, b)
    assert hash_checkpoint_dir(b, hash_cache=False) == h
    # HF download metadata is ignored
    (b / ".cache" / "download.lock").write_text("changed")
    assert hash_checkpoint_dir(b, hash_cache=False) == h
    # one byte of weights changes it
    raw = bytearray((b / "model.safetensors").read_bytes())
    raw[100] ^= 1
    (b / "model.safetensors").write_bytes(bytes(raw))
    assert hash_checkpoint_dir(b, hash_cache=False) != h
    # renaming a file changes it
    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / "sub" / "tokenizer.json").rename(c / "sub" / "tok.json")
    assert hash_checkpoint_dir(c, hash_cache=False) != h
    with pytest.raises(FileNotFoundError):
        hash_checkpoint_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        hash_checkpoint_dir(tmp_path / "empty", hash_cache=False)


def test_hash_checkpoint_dir_reuses_per_file_hashes(tmp_path, monkeypatch):
    a = _make_ckpt(tmp_path / "a")
    old = time.time() - 60  # outside the racy window
    for p in a.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    idx = tmp_path / "hashes.json"
    h = hash_checkpoint_dir(a, hash_cache=idx)
    assert idx.is_file() and len(json.loads(idx.read_text())["hashes"]) == 3
    calls = []
    real = cache_mod.hash_file
    monkeypatch.setattr(cache_mod, "hash_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    cache_mod._MEM_HASHES.clear()  # force the on-disk index to be used
    assert hash_checkpoint_dir(a, hash_cache=idx) == h
    assert calls == []
    # a changed file (new size/mtime) is rehashed, the others are not
    (a / "config.json").write_text('{"d": 5}')
    h2 = hash_checkpoint_dir(a, hash_cache=idx)
    assert h2 != h
    assert [Path(p).name for p in calls] == ["config.json"]


# ---------------------------------------------------------------------------------------------------------
# the store


@pytest.fixture
def rc(tmp_path):
    return ResultsCache(tmp_path / "results")


def _key(**over):
    f = {"step": "score", "checkpoint": "a" * 64, "seed": 0}
    f.update(over)
    return CacheKey(f)


def test_put_get_roundtrip_with_arrays(rc):
    k = _key()
    arr = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    payload = {"fve": 0.7753, "n": 5, "nested": {"x": [1.0, 2.5e-300]}, "text": "quoted \"span\""}
    rc.put(k, payload, {"recon": arr, "ids": np.arange(5)})
    e = rc.get(k)
    assert e is not None
    assert e.payload == payload
    assert e.payload["nested"]["x"][1] == 2.5e-300  # exact float round-trip
    np.testing.assert_array_equal(e.arrays["recon"], arr)
    assert e.arrays["recon"].dtype == np.float32
    assert set(e.arrays) == {"ids", "recon"}
    meta = json.loads((e.path / "meta.json").read_text())
    assert meta["key"] == k.canonical and meta["step"] == "score"
    assert set(meta["files"]) == {"payload.json", "arrays/recon.npy", "arrays/ids.npy"}
    assert meta["library_versions"]["numpy"] == np.__version__
    assert meta["created_at"].endswith("Z")
    assert rc.get(_key(seed=1)) is None


def test_get_or_compute_counts_and_refresh(rc):
    calls = []

    def compute():
        calls.append(1)
        return {"v": len(calls)}, {"a": np.full(3, len(calls))}

    k = _key()
    assert rc.get_or_compute(k, compute).payload == {"v": 1}
    assert rc.get_or_compute(k, compute).payload == {"v": 1}
    assert len(calls) == 1
    e = rc.get_or_compute(k, compute, refresh=True)
    assert len(calls) == 2 and e.payload == {"v": 2}
    assert rc.get(k).payload == {"v": 2}  # refresh overwrote the entry
    np.testing.assert_array_equal(rc.get(k).arrays["a"], np.full(3, 2))
    assert len(rc.list()) == 1
    s = rc.stats()["session"]
    assert s["refreshes"] == 1 and s["writes"] == 2 and s["hits"] >= 3


def test_keys_from_different_models_never_share(rc, tmp_path):
    a = _make_ckpt(tmp_path / "ma")
    b = _make_ckpt(tmp_path / "mb")  # same layout, different random weights
    ka = CacheKey({"step": "score", "checkpoint": hash_checkpoint_dir(a, hash_cache=False), "seed": 0})
    kb = CacheKey({"step": "score", "checkpoint": hash_checkpoint_dir(b, hash_cache=False), "seed": 0})
    rc.put(ka, {"model": "a"})
    calls = []
    e = rc.get_or_compute(kb, lambda: calls.append(1) or {"model": "b"})
    assert calls == [1] and e.payload == {"model": "b"}
    assert rc.get(ka).payload == {"model": "a"}


class _Boom(RuntimeError):
    pass


def test_writer_crash_leaves_no_partial_entry(rc, monkeypatch):
    k = _key()
    real_save = np.save
    n = {"saved": 0}

    def flaky_save(f, arr, **kw):
        n["saved"] += 1
        if n["saved"] == 2:  # payload.json and the first array are already on disk
            raise _Boom("disk full")
        return real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", flaky_save)
    with pytest.raises(_Boom):
        rc.put(k, {"v": 1}, {"a": np.zeros(3), "b": np.ones(3)})
    monkeypatch.setattr(np, "save", real_save)
    assert rc.get(k) is None
    assert rc.list() == []
    leftovers = [p for p in rc.root.rglob("*") if p.is_file()]
    assert leftovers == []
    # and a crash during a refresh keeps the old complete entry
    rc.put(k, {"v": 1})
    monkeypatch.setattr(cache_mod, "_write_fsync", lambda p, d: (_ for _ in ()).throw(_Boom("crash")))
    with pytest.raises(_Boom):
        rc.put(k, {"v": 2})
    monkeypatch.undo()
    assert rc.get(k).payload == {"v": 1}


def test_non_json_payload_is_refused_before_writing(rc):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        rc.put(_key(), {"x": object()})
    with pytest.raises(TypeError, match="object dtype"):
        rc.put(_key(), {}, {"a": np.array([object()])})
    with pytest.raises(ValueError, match="array name"):
        rc.put(_key(), {}, {"../x": np.zeros(1)})
    assert rc.list() == []


def _corrupt_one_byte(p: Path, offset: int = -2) -> None:
    raw = bytearray(p.read_bytes())
    raw[offset] ^= 0x01
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize("target", ["payload.json", "arrays/a.npy", "meta.json", "delete_payload", "truncate_array"])
def test_corrupt_entry_is_detected_deleted_and_recomputed(rc, caplog, target):
    calls = []

    def compute():
        calls.append(1)
        return {"fve": 0.775, "n": 3}, {"a": np.arange(100, dtype=np.float32)}

    k = _key()
    e = rc.get_or_compute(k, compute)
    entry_dir = e.path
    if target == "delete_payload":
        (entry_dir / "payload.json").unlink()
    elif target == "truncate_array":
        p = entry_dir / "arrays" / "a.npy"
        p.write_bytes(p.read_bytes()[:-8])
    elif target == "meta.json":
        (entry_dir / "meta.json").write_text("{not json")
    else:
        _corrupt_one_byte(entry_dir / target, offset=-10 if target.endswith(".npy") else -3)
    with caplog.at_level(logging.WARNING, logger="nla_repro.cache"):
        e2 = rc.get_or_compute(k, compute)
    assert len(calls) == 2, "a corrupt entry must be recomputed, never used"
    assert e2.payload == {"fve": 0.775, "n": 3}
    np.testing.assert_array_equal(e2.arrays["a"], np.arange(100, dtype=np.float32))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(k.digest in m and "corrupt" in m for m in msgs), msgs
    assert rc.stats()["session"]["corrupt"] == 1
    # the recomputed entry is healthy and served from cache now
    assert rc.get_or_compute(k, compute).payload["fve"] == 0.775
    assert len(calls) == 2


def test_entry_with_mismatched_key_is_not_used(rc, caplog):
    k = _key()
    e = rc.put(k, {"v": 1})
    meta = json.loads((e.path / "meta.json").read_text())
    meta["key"]["seed"] = 7  # entry claims to be for another key
    (e.path / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="nla_repro.cache"):
        assert rc.get(k) is None
    assert not e.path.exists()


def test_list_clear_and_stats(rc):
    for s in range(3):
        rc.put(_key(seed=s), {"s": s})
    for s in range(2):
        rc.put(CacheKey({"step": "verbalize", "checkpoint": "a" * 64, "seed": s}), {"s": s},
               {"x": np.zeros(10)})
    infos = rc.list()
    assert [i.step for i in infos] == ["score"] * 3 + ["verbalize"] * 2
    assert infos == sorted(infos, key=lambda i: (i.step, i.digest))
    assert {i.key["seed"] for i in rc.list("score")} == {0, 1, 2}
    st = rc.stats()
    assert st["entries"] == 5 and st["by_step"]["score"]["entries"] == 3
    assert st["bytes"] == sum(i.n_bytes for i in infos) > 0
    assert len(list(rc.iter_entries("verbalize"))) == 2
    assert rc.clear(step="score") == 3
    assert [i.step for i in rc.list()] == ["verbalize"] * 2
    assert rc.get(_key(seed=0)) is None
    assert rc.clear() == 2
    assert rc.list() == [] and rc.stats()["entries"] == 0
    assert rc.clear() == 0


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NLA_REPRO_CACHE", str(tmp_path / "c"))
    assert ResultsCache().root == tmp_path / "c" / "results"
    monkeypatch.delenv("NLA_REPRO_CACHE")
    assert ResultsCache().root == Path.home() / ".cache" / "nla-repro" / "results"
    assert ResultsCache(tmp_path / "x").root == tmp_path / "x"


def test_environment_fingerprint_fields():
    fp = environment_fingerprint()
    for k in ("git_hash", "git_dirty", "python", "torch", "transformers", "tokenizers", "numpy", "device",
              "platform", "nla_repro"):
        assert k in fp, k
    assert fp["numpy"] == np.__version__
    assert isinstance(fp["device"], str) and fp["device"]
    assert set(library_versions()) <= set(fp)
    json.dumps(fp)  # serialisable
    fp2 = environment_fingerprint(Path("/"))  # not a repository: recorded as None, not an error
    assert fp2["git_hash"] is None and fp2["git_dirty"] is None


def test_hash_file_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert hash_file(p) == hashlib.sha256(data).hexdigest()


def test_prune_removes_only_entries_older_than_the_cutoff(rc, monkeypatch, capsys):
    import nla_repro.cache as cache_mod
    from nla_repro.cli import main

    times = iter(["2026-11-20T10:00:00Z", "2026-11-21T22:29:59Z", "2026-11-21T22:30:00Z", "2026-11-22T01:00:00Z"])
    monkeypatch.setattr(cache_mod, "_utc_now", lambda: next(times))
    for s in range(4):
        rc.put(_key(seed=s), {"s": s})
    assert rc.prune("2026-11-21T22:30:00Z") == 2
    assert sorted(i.key["seed"] for i in rc.list()) == [2, 3]
    assert rc.get(_key(seed=0)) is None and rc.get(_key(seed=2)) is not None
    assert rc.prune("2026-11-21T22:30:00") == 0  # no offset = UTC: same cutoff, nothing left to remove
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        rc.prune("yesterday")
    assert main(["cache", "prune", "--root", str(rc.root)]) == 2
    assert "needs --before" in capsys.readouterr().err
    assert main(["cache", "prune", "--root", str(rc.root), "--before", "2026-11-23T00:00:00Z"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out and rc.list() == []
