"""Split assignment, stratified mixes, truncation and the committed JSONL exports.

Conventions:

* split key: ``sha256(f"{SPLIT_SEED}|{source}:{group}")`` (hex). Within each source, the groups
  (a document, or a whole article for chunked sources) whose text reaches ``MIN_EVAL_CHARS`` are
  ordered by that key and the first ``EVAL_GROUPS[source]`` go to ``eval``; every other group is
  ``train``. Splits are disjoint by construction and do not depend on the order of the input.
* train export: all train documents of at least ``TRAIN_MIN_CHARS`` characters, ordered first by
  ``len(text) < PREFERRED_MIN_CHARS`` (documents of >= 300 characters first) then by key, at most
  ``TRAIN_TARGET`` of them.
* chat documents that cannot keep one user->assistant exchange within the budget are skipped.
* truncation: prose at the last whitespace at or before ``TRUNCATE_CHARS``; chat at a turn boundary
  (a single oversize turn is cut at whitespace), so ``text == render_chat(messages)`` always holds.
* fingerprint: ``sha256(normalise_text(text))[:16]`` of the stored (truncated) text, where
  ``normalise_text`` is NFC + whitespace runs collapsed to one space + strip.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .sources import RawDoc, iter_raw_documents, normalise_text, render_chat

SPLIT_SEED = "nla-repro-corpora-v1"
TRUNCATE_CHARS = 1500
PREFERRED_MIN_CHARS = 300  # enough text for positions >= 50 tokens
MIN_EVAL_CHARS = 300
TRAIN_MIN_CHARS = 100
TRAIN_TARGET = 20000
EVAL_GROUPS = {"wiki_lead": 150, "recipe": 60, "wiki_full": 6, "chitchat": 120, "sharegpt": 150}
EXPORT_FILES = {"train": "train.jsonl.gz", "eval": "eval.jsonl.gz"}
SPLITS = ("train", "eval")

# Stratified mixes: weight per source; quotas = largest-remainder rounding of weight * limit,
# capped by what the split holds, shortfall handed to the other strata in proportion.
MIXES: dict[str, dict[str, float]] = {
    "default": {"wiki_lead": 0.45, "recipe": 0.15, "wiki_full": 0.05, "chitchat": 0.35},
    "web": {"wiki_lead": 0.70, "recipe": 0.22, "wiki_full": 0.08},
    "chat": {"chitchat": 1.0},
    # opt-in, never exported: ShareGPT has no licence (internal measurement only)
    "internal": {"wiki_lead": 0.35, "recipe": 0.10, "wiki_full": 0.05, "chitchat": 0.15, "sharegpt": 0.35},
}


def split_key(doc_or_group_id: str, seed: str = SPLIT_SEED) -> str:
    return hashlib.sha256(f"{seed}|{doc_or_group_id}".encode("utf-8")).hexdigest()


def fingerprint(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:16]


def n_words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Row:
    """One exported document (the unit written to JSONL)."""

    id: str
    source: str
    text: str
    messages: tuple[tuple[str, str], ...] | None = None
    split: str = ""
    fingerprint: str = field(default="")

    def to_json(self) -> str:
        obj: dict = {"id": self.id, "source": self.source, "text": self.text}
        if self.messages is not None:
            obj["messages"] = [list(m) for m in self.messages]
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _truncate_prose(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    cut2 = text.rfind("\n", 0, limit + 1)
    cut = max(cut, cut2)
    return text[: cut if cut > 0 else limit].rstrip()


def _truncate_chat(messages, limit: int):
    """Whole turns while they fit; the first two turns are cut at whitespace when needed (the first
    one to at most half the budget) so that at least one user->assistant exchange survives."""
    kept: list[tuple[str, str]] = []
    for role, content in messages:
        trial = kept + [(role, content)]
        if len(render_chat(trial)) <= limit:
            kept = trial
            continue
        if len(kept) >= 2:
            break
        budget = limit // 2 if not kept else limit
        room = budget - len(render_chat(kept + [(role, "")]))
        if room <= 20:
            break
        kept.append((role, _truncate_prose(content, room)))
    return tuple(kept)


def make_row(source: str, raw: RawDoc, split: str, limit: int = TRUNCATE_CHARS) -> Row:
    if raw.messages is not None:
        msgs = _truncate_chat(raw.messages, limit)
        text = render_chat(msgs)
    else:
        msgs, text = None, _truncate_prose(raw.text, limit)
    return Row(id=f"{source}:{raw.native_id}", source=source, text=text, messages=msgs,
               split=split, fingerprint=fingerprint(text))


def assign_splits(source: str, raws: list[RawDoc], seed: str = SPLIT_SEED) -> dict[str, str]:
    """Map group -> split for one source (see module docstring)."""
    groups: dict[str, bool] = {}
    for r in raws:
        g = r.group if r.group is not None else r.native_id
        groups[g] = groups.get(g, False) or len(r.text) >= MIN_EVAL_CHARS
    eligible = sorted((g for g, ok in groups.items() if ok), key=lambda g: split_key(f"{source}:{g}", seed))
    n_eval = EVAL_GROUPS.get(source, 0)
    eval_groups = set(eligible[:n_eval])
    return {g: ("eval" if g in eval_groups else "train") for g in groups}


def build_rows(source: str, raws: list[RawDoc], seed: str = SPLIT_SEED) -> dict[str, list[Row]]:
    """Rows per split for one source, in the order they are exported."""
    ids = [r.native_id for r in raws]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"source {source}: duplicate native id {dup!r}")
    where = assign_splits(source, raws, seed)
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for r in raws:
        split = where[r.group if r.group is not None else r.native_id]
        row = make_row(source, r, split)
        if split == "train" and len(row.text) < TRAIN_MIN_CHARS:
            continue
        if row.messages is not None and len(row.messages) < 2:
            continue  # cannot keep one exchange within TRUNCATE_CHARS (documented skip)
        out[split].append(row)
    for s in SPLITS:
        out[s].sort(key=lambda row: split_key(row.id, seed))
    return out


def build_from_wheels(wheels: dict[str, Path], seed: str = SPLIT_SEED) -> dict[str, list[Row]]:
    """All splits for the given sources (name -> verified wheel path)."""
    per_split: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for name in wheels:
        rows = build_rows(name, list(iter_raw_documents(name, wheels[name])), seed)
        for s in SPLITS:
            per_split[s].extend(rows[s])
    for s in SPLITS:
        per_split[s].sort(key=lambda row: (len(row.text) < PREFERRED_MIN_CHARS, split_key(row.id, seed)))
    per_split["train"] = per_split["train"][:TRAIN_TARGET]
    for s in SPLITS:  # final export order: by key only (strata interleaved)
        per_split[s].sort(key=lambda row: split_key(row.id, seed))
    return per_split


def jsonl_bytes(rows: list[Row]) -> bytes:
    return "".join(r.to_json() + "\n" for r in rows).encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: mtime 0, no file name, level 9."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def quotas(weights: dict[str, float], available: dict[str, int], limit: int) -> dict[str, int]:
    """Largest-remainder quotas for ``limit`` items, capped by ``available``; shortfall redistributed."""
    alloc = {s: 0 for s in weights}
    remaining = min(limit, sum(available.get(s, 0) for s in weights))
    open_ = [s for s in weights if available.get(s, 0) > 0 and weights[s] > 0]
    while remaining > 0 and open_:
        tot = sum(weights[s] for s in open_)
        exact = {s: remaining * weights[s] / tot for s in open_}
        give = {s: int(exact[s]) for s in open_}
        left = remaining - sum(give.values())
        for s in sorted(open_, key=lambda s: (-(exact[s] - give[s]), s))[:left]:
            give[s] += 1
        for s in open_:
            g = min(give[s], available[s] - alloc[s])
            alloc[s] += g
            remaining -= g
        open_ = [s for s in open_ if alloc[s] < available[s]]
    return alloc
