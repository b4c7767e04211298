"""Pure text operations used by the text-side experiments (seeds 000 §2-§3, 002, 004).

Everything here is deterministic string / list processing with no model calls, so every rule is
unit-testable on hand-written explanations:

- quote families and quote-span detection (:func:`find_quote_spans`);
- the seven AR-input variants of the post-hoc redaction experiment (:func:`redaction_variants`);
- escape-hatch detection for quote-banned decodes (:func:`find_hatches`);
- banned-token sets built from a live tokenizer (:func:`banned_token_ids`);
- word tokenisation and the longest shared contiguous word n-gram (:func:`longest_shared_run`);
- paragraph splitting (:func:`split_paragraphs`);
- final-token type classes (:func:`token_type`);
- keyword extraction and keyword recall (:func:`keywords`, :func:`keyword_recall`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

# --------------------------------------------------------------------------- quote families

#: Double-quote family: ASCII ", curly “ ” „ ‟, guillemets « », fullwidth ＂, ornament/prime quotes.
DOUBLE_QUOTE_CHARS = frozenset('"\u201c\u201d\u201e\u201f\u00ab\u00bb\uff02\u301d\u301e\u301f\u275d\u275e\u2e42')
#: Single-quote family: ASCII ', curly ‘ ’, low ‚, reversed ‛, single guillemets ‹ ›, fullwidth ＇, ornaments.
#: (’ doubles as the typographic apostrophe; banning the family bans it too, as the seed's ban did.)
SINGLE_QUOTE_CHARS = frozenset("'\u2018\u2019\u201a\u201b\u2039\u203a\uff07\u275b\u275c")
QUOTE_FAMILIES = {"double": DOUBLE_QUOTE_CHARS, "single": SINGLE_QUOTE_CHARS}

# opener -> acceptable closers (first listed is the canonical one)
_PAIRS: dict[str, tuple[str, ...]] = {
    '"': ('"',),
    "\u201c": ("\u201d", "\u201c", '"'),       # “ … ” (also “ … “ and “ … ")
    "\u201e": ("\u201c", "\u201d", '"'),       # „ … “ (German) / „ … ”
    "\u201f": ("\u201d",),
    "\u00ab": ("\u00bb",),                     # « … »
    "\uff02": ("\uff02",),
    "\u301d": ("\u301e", "\u301f"),
    "\u275d": ("\u275e",),
    "'": ("'",),
    "\u2018": ("\u2019",),                     # ‘ … ’
    "\u201a": ("\u2018", "\u2019"),            # ‚ … ‘
    "\u201b": ("\u2019",),
    "\u2039": ("\u203a",),                     # ‹ … ›
    "\uff07": ("\uff07",),
    "\u275b": ("\u275c",),
}
# Marks that double as apostrophes: an opener must not follow a letter/digit, a closer must not be
# followed by one ("don't", "users’ files", "’90s" are not quotes).
_APOSTROPHE_LIKE = frozenset("'\u2019")


def family_of(ch: str) -> str | None:
    for name, chars in QUOTE_FAMILIES.items():
        if ch in chars:
            return name
    return None


@dataclass(frozen=True)
class QuoteSpan:
    """A quoted span: ``text[start:end]`` includes both marks; ``text[start+1:end-1]`` is the content."""

    start: int
    end: int
    open_mark: str
    close_mark: str
    family: str

    @property
    def inner(self) -> tuple[int, int]:
        return self.start + 1, self.end - 1

    def with_marks(self, text: str) -> str:
        return text[self.start:self.end]

    def content(self, text: str) -> str:
        return text[self.start + 1:self.end - 1]


def _can_open(text: str, i: int) -> bool:
    ch = text[i]
    if ch in _APOSTROPHE_LIKE or ch in "\u2018\u201b":
        prev = text[i - 1] if i > 0 else " "
        if prev.isalnum():
            return False
    nxt = text[i + 1] if i + 1 < len(text) else ""
    return nxt != "" and not nxt.isspace() if ch in _APOSTROPHE_LIKE else nxt != ""


def _can_close(text: str, j: int, opener: str) -> bool:
    ch = text[j]
    if ch in _APOSTROPHE_LIKE:
        nxt = text[j + 1] if j + 1 < len(text) else " "
        if nxt.isalnum():
            return False
        prev = text[j - 1]
        if prev.isspace():
            return False
    return True


def find_quote_spans(text: str, families: Iterable[str] = ("double", "single")) -> list[QuoteSpan]:
    """Non-overlapping quoted spans, scanned left to right.

    An opener (any mark of the requested families that can open) is matched to the nearest closer
    allowed for it (``_PAIRS``); marks of other kinds inside a span are content. Apostrophe-like
    marks (' and ’) open only when not preceded by a letter/digit and not followed by whitespace,
    and close only when not followed by a letter/digit (so "don't" or "users’ data" never open or
    close a span). An opener with no closer is left as plain text. Spans must contain at least one
    character. Returns spans in text order.
    """
    fams = set(families)
    unknown = fams - set(QUOTE_FAMILIES)
    if unknown:
        raise ValueError(f"families: expected a subset of {sorted(QUOTE_FAMILIES)}, found {sorted(unknown)}")
    allowed = set().union(*(QUOTE_FAMILIES[f] for f in fams)) if fams else set()
    spans: list[QuoteSpan] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in allowed and ch in _PAIRS and _can_open(text, i):
            closers = _PAIRS[ch]
            j = i + 2  # at least one content character
            found = -1
            while j < n:
                if text[j] in closers and _can_close(text, j, ch):
                    found = j
                    break
                j += 1
            if found >= 0:
                spans.append(QuoteSpan(i, found + 1, ch, text[found], family_of(ch) or "?"))
                i = found + 1
                continue
        i += 1
    return spans


def span_stats(text: str, spans: Sequence[QuoteSpan] | None = None) -> dict:
    """Number of spans and characters inside spans (marks included) vs total characters."""
    spans = find_quote_spans(text) if spans is None else spans
    return {"n_spans": len(spans), "span_chars": sum(s.end - s.start for s in spans), "chars": len(text)}


# --------------------------------------------------------------------------- redaction variants

REDACTION_VARIANTS = ("full", "prose_only", "empty", "ellipsis", "redacted", "spans_marks", "spans_bare")
ELLIPSIS = "\u2026"
REDACTED = "REDACTED"
_TRAILING_PUNCT = set(",.;:!?)]}")


def _replace_spans(text: str, spans: Sequence[QuoteSpan], fill) -> str:
    out, pos = [], 0
    for s in spans:
        out.append(text[pos:s.start])
        out.append(fill(s))
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def delete_spans(text: str, spans: Sequence[QuoteSpan]) -> str:
    """Delete each span with its marks. Where the deletion leaves a space before another space, a
    closing punctuation mark or the end of a line, that one space goes too; the result is stripped."""
    out, pos = [], 0
    for s in spans:
        chunk = text[pos:s.start]
        after = text[s.end] if s.end < len(text) else "\n"
        if chunk.endswith(" ") and (after in _TRAILING_PUNCT or after.isspace()):
            chunk = chunk[:-1]
        out.append(chunk)
        pos = s.end
    out.append(text[pos:])
    return "".join(out).strip()


def redaction_variants(text: str, spans: Sequence[QuoteSpan] | None = None) -> dict[str, str]:
    """The seven AR inputs of seed 000 §3 for one explanation.

    - ``full``: unchanged;
    - ``prose_only``: spans and their marks deleted (:func:`delete_spans`);
    - ``empty`` / ``ellipsis`` / ``redacted``: each span's content replaced by "", "…" or "REDACTED",
      the span's own marks kept (so only the filler differs between the three);
    - ``spans_marks``: the spans with their marks, joined by single spaces;
    - ``spans_bare``: the span contents without marks, joined by single spaces.
    A variant may be the empty string (no spans / nothing but spans); callers score it as such.
    """
    spans = find_quote_spans(text) if spans is None else list(spans)
    return {
        "full": text,
        "prose_only": delete_spans(text, spans),
        "empty": _replace_spans(text, spans, lambda s: s.open_mark + s.close_mark),
        "ellipsis": _replace_spans(text, spans, lambda s: s.open_mark + ELLIPSIS + s.close_mark),
        "redacted": _replace_spans(text, spans, lambda s: s.open_mark + REDACTED + s.close_mark),
        "spans_marks": " ".join(s.with_marks(text) for s in spans),
        "spans_bare": " ".join(s.content(text) for s in spans),
    }


# --------------------------------------------------------------------------- escape hatches

HATCH_KINDS = ("corner", "italic", "paren", "emdash")
_HATCH_RES = {
    "corner": re.compile(r"[\u300c\u300e\uff62][^\u300d\u300f\uff63]+[\u300d\u300f\uff63]"),  # 「…」 『…』 ｢…｣
    "italic": re.compile(r"(?<![\w*])\*(?!\s)[^*\n]+?(?<!\s)\*(?![\w*])|(?<![\w_])_(?!\s)[^_\n]+?(?<!\s)_(?![\w_])"),
    "paren": re.compile(r"\([^()\n]+\)"),
    "emdash": re.compile("\u2014"),
}


def find_hatches(text: str) -> dict[str, int]:
    """Counts of each escape-hatch delimiter a quote-banned decode can use instead of quotes:
    corner brackets 「…」/『…』, markdown *italic* or _italic_ spans, parenthesised spans, em-dashes."""
    return {k: len(r.findall(text)) for k, r in _HATCH_RES.items()}


def uses_hatch(text: str, kinds: Iterable[str] = HATCH_KINDS) -> bool:
    h = find_hatches(text)
    return any(h[k] > 0 for k in kinds)


# --------------------------------------------------------------------------- banned tokens

def banned_token_ids(tokenizer, chars: Iterable[str]) -> tuple[list[int], dict]:
    """Every vocabulary id whose single-token decoded text contains any of ``chars``.

    Decoding is ``tokenizer.decode([id], skip_special_tokens=False, clean_up_tokenization_spaces=False)``
    over ``range(len(tokenizer))`` (base vocabulary plus added tokens). Returns (sorted ids, info) where
    info holds ``vocab_size`` and ``n_fragment_tokens``: ids that decode to U+FFFD (a partial UTF-8
    byte sequence; such tokens could in principle combine into a banned character, so the experiments
    count banned characters in the decoded OUTPUT as leaks rather than trusting the id set).
    """
    chars = frozenset(chars)
    if not chars:
        raise ValueError("chars: expected at least one banned character, found none")
    key = (id(tokenizer), len(tokenizer), chars)
    if key not in _BANNED_MEMO:
        _BANNED_MEMO[key] = _banned_token_ids(tokenizer, chars)
    ids, info = _BANNED_MEMO[key]
    return list(ids), dict(info)


_BANNED_MEMO: dict = {}


def _banned_token_ids(tokenizer, chars: frozenset) -> tuple[list[int], dict]:
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    ids = [i for i, t in enumerate(texts) if any(c in t for c in chars)]
    frag = sum(1 for t in texts if "\ufffd" in t)
    return ids, {"vocab_size": n, "n_fragment_tokens": frag}


def count_chars(text: str, chars: Iterable[str]) -> int:
    chars = set(chars)
    return sum(1 for c in text if c in chars)


# --------------------------------------------------------------------------- word n-grams

_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters/digits, internal apostrophes kept (’ normalised to ')."""
    return [w.replace("\u2019", "'") for w in _WORD_RE.findall(text.casefold())]


def word_ngrams(ws: Sequence[str], n: int) -> set[tuple[str, ...]]:
    if n <= 0:
        raise ValueError(f"n: expected a positive n-gram length, found {n}")
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def longest_shared_run(a: str | Sequence[str], b: str | Sequence[str]) -> int:
    """Length in words of the longest contiguous word n-gram shared by ``a`` and ``b`` (0 if none)."""
    wa = words(a) if isinstance(a, str) else list(a)
    wb = words(b) if isinstance(b, str) else list(b)
    if not wa or not wb:
        return 0
    pos: dict[str, list[int]] = {}
    for j, w in enumerate(wb):
        pos.setdefault(w, []).append(j)
    best, prev = 0, {}
    for w in wa:
        cur = {}
        for j in pos.get(w, ()):
            cur[j] = prev.get(j - 1, 0) + 1
        if cur:
            best = max(best, max(cur.values()))
        prev = cur
    return best


def roll_by_document(doc_ids: Sequence[str]) -> list[int]:
    """Null pairing for per-sample contexts: sample i gets a sample of the NEXT document (documents in
    first-appearance order, rolled by one), at the same rank within its document modulo that
    document's size. Never pairs a sample with its own document. Needs >= 2 documents."""
    order: list[str] = []
    members: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        if d not in members:
            order.append(d)
            members[d] = []
        members[d].append(i)
    if len(order) < 2:
        raise ValueError(f"roll_by_document: expected samples from >= 2 documents, found {len(order)}")
    nxt = {d: order[(k + 1) % len(order)] for k, d in enumerate(order)}
    out = []
    for i, d in enumerate(doc_ids):
        rank = members[d].index(i)
        other = members[nxt[d]]
        out.append(other[rank % len(other)])
    return out


# --------------------------------------------------------------------------- paragraphs

def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines; if there are none, by single line breaks. Stripped, non-empty."""
    text = text.strip()
    if not text:
        return []
    parts = re.split(r"\n\s*\n", text)
    if len(parts) == 1:
        parts = text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def split_sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? (optionally followed by closing quotes/brackets) before whitespace;
    line breaks also split. Stripped, non-empty."""
    parts = re.split(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+|\n+", text.strip())
    return [p.strip() for p in parts if p and p.strip()]


def join_paragraphs(paragraphs: Sequence[str]) -> str:
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------- token types

TOKEN_TYPES = ("whitespace", "punctuation", "digits", "word", "mixed")


def token_type(token_text: str) -> str:
    """Class of a decoded token: ``whitespace`` (empty or only whitespace), ``punctuation`` (no letter
    or digit after stripping), ``digits`` (only digits), ``word`` (only letters, incl. word pieces),
    ``mixed`` (letters/digits together with other symbols, e.g. "'s", "3rd", "x2", "e.g")."""
    core = token_text.strip()
    if core == "":
        return "whitespace"
    if core.isdigit():
        return "digits"
    if core.isalpha():
        return "word"
    if not any(c.isalnum() for c in core):
        return "punctuation"
    return "mixed"


# --------------------------------------------------------------------------- keywords

#: English function words and chat-template/instruction boilerplate; content words are what is left.
STOPWORDS = frozenset("""
a about above across after again against all almost along already also although always am among an and
another any anyone anything are around as at away back be became because become been before being below
between both but by can cannot could did does doing done down during each either else enough even ever
every few first for from further get gets give given go goes going gone got had has have having he her
here hers herself him himself his how however i if in into is it its itself just keep know last least
less let like made make makes many may me might more most much must my myself near need needs neither
never new next no none nor not now of off often on once one only onto or other others our ours
ourselves out over own per perhaps please put rather really same say says see seem shall she should
show since so some something sometimes still such take than that the their theirs them themselves then
there therefore these they thing things this those though through thus to too toward under until up
upon us use used uses using very want was way we well were what whatever when where whether which while
who whom whose why will with within without would yet you your yours yourself yourselves
able based does each give help explain describe write tell list find make sure provide
user assistant system
""".split())
_KEYWORD_RE = re.compile(r"[a-z0-9]+")


def keywords(text: str, *, min_len: int = 4, stopwords: frozenset[str] = STOPWORDS) -> set[str]:
    """Content words: lower-cased alphanumeric runs of >= ``min_len`` characters, minus ``stopwords``
    (seed 002 §2.3: "alphanum, length ≥4, non-stopwords"). Identifiers split at non-alphanumerics
    ("requests.get" -> "requests"; "get" is too short)."""
    return {w for w in _KEYWORD_RE.findall(text.lower()) if len(w) >= min_len and w not in stopwords}


def keyword_recall(prompt_text: str, explanation: str) -> float:
    """|keywords(prompt) ∩ keywords(explanation)| / |keywords(prompt)|; ValueError if the prompt has none."""
    p = keywords(prompt_text)
    if not p:
        raise ValueError(f"keyword_recall: prompt has no content words: {prompt_text[:80]!r}")
    return len(p & keywords(explanation)) / len(p)


def keyword_hits(explanation: str, vocabulary: Iterable[str]) -> int:
    """Number of distinct ``vocabulary`` words present among the explanation's lower-cased words
    (a vocabulary word matches a word equal to it or starting with it, so "program" hits "programming")."""
    ws = set(_KEYWORD_RE.findall(explanation.lower()))
    return sum(1 for v in set(vocabulary) if any(w == v or w.startswith(v) for w in ws))
