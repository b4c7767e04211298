"""Deterministic warm-start explanations in the released three-part style (no LLM API).

The released warm start asked an LLM for 2-3 features: the document kind and topic, a quoted span of
the recent context with a gloss, and an analysis of the final token (shared/seeds/004*). We write the same
three parts from the text itself:

1. ``<Kind>: about <salient words>.`` -- kind from the corpus stratum, salient words = the most frequent
   content words of the context seen so far (only the prefix the model has read; ties by first occurrence).
2. ``The text “…<last ~8 words>” <gloss>.`` -- the quoted recent context; the gloss names where the
   position sits (mid-sentence, after a sentence end, at a line break, in a list, in a speaker's turn).
3. ``Final token “<tok>” is <type>; likely next: “a” or “b”.`` -- the token text, its type
   (word / word piece / punctuation / digits / whitespace / symbol) and what comes next.  "What comes
   next" is the base model's own top-2 greedy prediction at that position when available (deterministic,
   computed during stage-0 extraction), else a rule from the token type.

Everything is a pure function of its arguments, so the same inputs always give the same text.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

KIND_BY_STRATUM = {
    "wiki": "Encyclopedic article",
    "encyclopedic": "Encyclopedic article",
    "wikipedia": "Encyclopedic article",
    "recipe": "Recipe instructions",
    "recipes": "Recipe instructions",
    "chat": "Casual chat conversation",
    "chitchat": "Casual chat conversation",
    "sharegpt": "User-assistant chat conversation",
    "assistant_chat": "User-assistant chat conversation",
    "brown": "Published prose excerpt",
    "news": "News report",
    "fiction": "Fiction narrative",
    "email": "Mailing-list email",
    "mail": "Mailing-list email",
    "spam_assassin": "Mailing-list email",
    "speech": "Political speech",
    "sotu": "Political speech",
    "technical": "Technical documentation",
    "docs": "Technical documentation",
    "python_docs": "Technical documentation",
    "linux_docs": "Technical documentation",
    "code": "Source code",
}
DEFAULT_KIND = "Web text"

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just like may me might more most
much must my myself no nor not now of off on once one only or other our ours ourselves out over own same
shall she should so some such than that the their theirs them themselves then there these they this those
through to too under until up upon very was we were what when where which while who whom why will with
would you your yours yourself yourselves said says also well even still yet many used use using made make
get got way since within without however though although every another first new two three time
user assistant human gpt system speaker
""".split())

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]{2,}")
_SPEAKER = re.compile(r"(?im)^\s*(user|assistant|human|gpt|system|speaker [ab]|[ab])\s*:")


@dataclass(frozen=True)
class WarmStartInput:
    context: str                  # decoded text of tokens [0, pos] (the prefix the model has read)
    final_token: str              # decoded text of the token at pos
    stratum: str | None = None    # corpus stratum / source name
    next_tokens: tuple[str, ...] = ()   # base model's top predictions after pos (decoded), best first


def kind_of(stratum: str | None) -> str:
    if not stratum:
        return DEFAULT_KIND
    s = stratum.lower()
    if s in KIND_BY_STRATUM:
        return KIND_BY_STRATUM[s]
    for key, kind in KIND_BY_STRATUM.items():
        if key in s:
            return kind
    return DEFAULT_KIND


def salient_words(context: str, n: int = 3) -> list[str]:
    words = [w.lower().strip("'-") for w in _WORD.findall(context)]
    words = [w for w in words if len(w) >= 4 and w not in STOPWORDS]
    if not words:
        return []
    counts = Counter(words)
    first = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return ranked[:n]


def _join_words(ws: list[str]) -> str:
    if len(ws) == 1:
        return ws[0]
    return ", ".join(ws[:-1]) + " and " + ws[-1]


def quote_tail(context: str, n_words: int = 8, max_chars: int = 64) -> str:
    """Last ``n_words`` whitespace-separated words, whitespace collapsed, at most ``max_chars`` chars."""
    flat = " ".join(context.split())
    words = flat.split(" ")[-n_words:] if flat else []
    q = " ".join(w if len(w) <= 24 else w[:24] for w in words)
    if len(q) > max_chars:
        q = q[-max_chars:]
        if " " in q:
            q = q[q.index(" ") + 1:]
    return q


def token_type(tok: str, prev_char: str | None = None) -> str:
    core = tok.strip()
    if tok == "" or core == "":
        if "\n" in tok:
            return "a line break"
        return "whitespace"
    if core.isdigit():
        return "digits"
    if core.isalpha():
        if tok[0].isspace() or prev_char is None or not prev_char.isalpha():
            return "a word"
        return "a word piece continuing a word"
    if all(not c.isalnum() for c in core):
        return "punctuation"
    if any(c.isalpha() for c in core):
        return "a word with symbols"
    return "a symbol"


def _gloss(context: str, speaker: str | None) -> str:
    tail = context.rstrip(" ")
    last = tail[-1:] if tail else ""
    if context.endswith("\n"):
        where = "ends at a line break"
    elif last in ".!?":
        where = "closes a sentence"
    elif last in ",;:":
        where = "pauses mid-sentence"
    elif re.search(r"(?m)^\s*([-*•]|\d+[.)])\s+[^\n]*$", context[-200:]):
        where = "sits inside a list item"
    else:
        where = "is mid-sentence"
    if speaker:
        return f"{where}, in the {speaker}'s turn"
    return where


def _show(tok: str) -> str:
    if tok == "\n":
        return "\\n"
    if tok.strip() == "" and tok:
        return "\\n" if "\n" in tok else "␣"
    return tok.strip()


def _next_rule(ttype: str, tok: str) -> str:
    core = tok.strip()
    if core in {".", "!", "?"}:
        return "a new sentence"
    if core in {",", ";", ":"}:
        return "the rest of the clause"
    if ttype in {"a line break", "whitespace"}:
        return "the next line's first word"
    if ttype == "digits":
        return "more digits or a unit"
    if ttype.startswith("a word piece"):
        return "the rest of the word"
    return "the next word of the phrase"


def explain(inp: WarmStartInput) -> str:
    """Three-part explanation text (no tags)."""
    ctx = inp.context
    kind = kind_of(inp.stratum)
    sal = salient_words(ctx)
    p1 = f"{kind}: about {_join_words(sal)}." if sal else f"{kind}: short text with few content words."
    speaker = None
    if kind.endswith("chat conversation"):
        m = list(_SPEAKER.finditer(ctx))
        if m:
            speaker = m[-1].group(1).lower()
    quote = quote_tail(ctx)
    p2 = f"The text “…{quote}” {_gloss(ctx, speaker)}."
    prev_char = ctx[: len(ctx) - len(inp.final_token)][-1:] or None
    ttype = token_type(inp.final_token, prev_char)
    shown = _show(inp.final_token)
    nxt = [t for t in (_show(t) for t in inp.next_tokens) if t][:2]
    if nxt:
        nexts = " or ".join(f"“{t}”" for t in nxt)
    else:
        nexts = _next_rule(ttype, inp.final_token)
    p3 = f"Final token “{shown}” is {ttype}; likely next: {nexts}."
    return f"{p1}\n\n{p2}\n\n{p3}"


def wrap(text: str) -> str:
    """AV SFT target body (the EOS / turn-close token is appended by the caller)."""
    return f"<explanation>\n{text}\n</explanation>"
