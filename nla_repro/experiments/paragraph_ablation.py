"""Paragraph ablation and explanation-format facts (seed 004).

Explanations are split into paragraphs (:func:`textops.split_paragraphs`: blank lines, else single line
breaks; option ``unit="sentence"`` ablates sentences instead, for pairs whose explanations are one
paragraph; the format facts below always use paragraphs). On the scored greedy decodes with >= 2 paragraphs (the "eligible" set; P3 = the final paragraph,
P1+P2 = every paragraph before it), the AR scores:

- ``baseline``: the explanation unchanged;
- ``drop_p3``: the final paragraph removed;  ``drop_p1p2``: everything but the final paragraph removed;
- ``replace_p3`` / ``replace_p1p2``: the removed part replaced by the same part of ONE donor explanation
  (drawn with ``numpy.random.default_rng(seed)`` from the eligible set and then excluded from it), i.e. a
  constant paragraph.

Per variant: NMSE, cos, fve_nrm[train], share fve<0. Format facts over all scored decodes: share with
exactly three paragraphs, median paragraph count, share whose final paragraph mentions the final token,
share whose first word is "Structured" for chat vs non-chat documents (doc source before ':' in
:data:`CHAT_SOURCES`).
"""

from __future__ import annotations

import re

import numpy as np

from . import textops as T
from .base import experiment
from .quote_ban import decoding_from, put, ratio, score_texts, standard_decodes, train_denominator
from .runner import params

NAME = "paragraph_ablation"
VARIANTS = ("baseline", "drop_p1p2", "drop_p3", "replace_p1p2", "replace_p3")
CHAT_SOURCES = frozenset({"chat", "chitchat", "sharegpt", "assistant_chat", "wildchat", "lmsys"})
_WS_WORDS = ("whitespace", "space", "newline", "line break", "\\n", "\u2423", "blank")


def mentions_final_token(paragraph: str, final_token: str) -> bool:
    """The paragraph names the token: its stripped text occurs (case-insensitive); for a whitespace
    token, a whitespace word ("space", "newline", "line break", "\\n", "␣", ...) occurs."""
    core = final_token.strip().lower()
    low = paragraph.lower()
    if core:
        return core in low
    return any(w in low for w in _WS_WORDS)


def first_word(text: str) -> str:
    m = re.search(r"[^\W_]+", text)
    return m.group(0) if m else ""


def is_chat_doc(doc_id: str) -> bool:
    return doc_id.split(":", 1)[0].lower() in CHAT_SOURCES


def ablation_texts(units: list[list[str]], donor: list[str], join=T.join_paragraphs) -> dict[str, list[str]]:
    """AR inputs of the four ablations for explanations split into units (>= 2 each): drop / replace the
    final unit (P3) or all units before it (P1+P2); replacements come from ``donor``'s units."""
    if any(len(u) < 2 for u in units) or len(donor) < 2:
        raise ValueError("ablation_texts: every explanation and the donor need >= 2 units")
    return {
        "drop_p3": [join(u[:-1]) for u in units],
        "drop_p1p2": [u[-1] for u in units],
        "replace_p3": [join(u[:-1] + [donor[-1]]) for u in units],
        "replace_p1p2": [join(donor[:-1] + [u[-1]]) for u in units],
    }


@experiment(NAME, default_n=1000, decoding="greedy", denominator="train", failure_convention="training_drop")
def paragraph_ablation(ctx, pair_name: str) -> dict:
    pair, es, p, dec = standard_decodes(ctx, NAME, pair_name)
    extra = params(ctx, NAME, {"seed": 0, "unit": "paragraph"})
    seed, unit = int(extra["seed"]), extra["unit"]
    if unit not in ("paragraph", "sentence"):
        raise ValueError(f"paragraph_ablation: option unit expected 'paragraph' or 'sentence', found {unit!r}")
    split = T.split_paragraphs if unit == "paragraph" else T.split_sentences
    join = T.join_paragraphs if unit == "paragraph" else " ".join
    V = train_denominator(ctx, pair_name, pair)
    gold = np.asarray(es.vectors, dtype=np.float32)
    idx = dec.scored_idx
    pgs = {i: T.split_paragraphs(dec.explanations[i]) for i in idx}
    paras = pgs if unit == "paragraph" else {i: split(dec.explanations[i]) for i in idx}
    counts = np.array([len(pgs[i]) for i in idx], dtype=np.float64)
    figs: dict = {"paragraphs.n_failed": dec.n_failed, "paragraphs.n_scored": len(idx)}
    nan = float("nan")
    figs["paragraphs.frac_three"] = float(np.mean(counts == 3)) if len(idx) else nan
    figs["paragraphs.frac_multi"] = float(np.mean(counts >= 2)) if len(idx) else nan
    figs["paragraphs.n_median"] = float(np.median(counts)) if len(idx) else nan
    figs["paragraphs.final_token"] = (float(np.mean([mentions_final_token(pgs[i][-1], es.final_tokens[i])
                                                     for i in idx if pgs[i]])) if len(idx) else nan)
    structured = {"chat": [], "pretraining": []}
    for i in idx:
        grp = "chat" if is_chat_doc(es.doc_ids[i]) else "pretraining"
        structured[grp].append(first_word(dec.explanations[i]).lower() == "structured")
    for g, v in structured.items():
        figs[f"paragraphs.structured_opener.{g}"] = float(np.mean(v)) if v else nan
        figs[f"paragraphs.structured_opener.{g}.n"] = len(v)
    figs["paragraphs.structured_opener.ratio"] = [figs["paragraphs.structured_opener.chat"],
                                                  figs["paragraphs.structured_opener.pretraining"]]
    eligible = [i for i in idx if len(paras[i]) >= 2]
    figs["paragraphs.n_eligible"] = len(eligible)
    if len(eligible) < 2:
        raise ValueError(f"paragraph_ablation on {pair_name!r}: {len(eligible)} scored decodes have >= 2 "
                         f"paragraphs (of {len(idx)} scored); at least 2 are needed (a donor and one sample)")
    rng = np.random.default_rng(seed)
    donor = eligible[int(rng.integers(len(eligible)))]
    eligible = [i for i in eligible if i != donor]
    texts = ablation_texts([paras[i] for i in eligible], paras[donor], join)
    texts["baseline"] = [dec.explanations[i] for i in eligible]
    res = {}
    for v in VARIANTS:
        s = score_texts(pair, texts[v], gold[eligible], V)
        put(figs, f"paragraphs.{v}", s)
        res[v] = s
    base = res["baseline"]["nmse"]
    figs["paragraphs.ablation"] = [base, res["drop_p1p2"]["nmse"], res["drop_p3"]["nmse"]]
    figs["paragraphs.ablation_ratio"] = [res["drop_p3"]["nmse"] - base, res["drop_p1p2"]["nmse"] - base]
    figs["paragraphs.ablation_ratio.value"] = ratio(res["drop_p3"]["nmse"] - base, res["drop_p1p2"]["nmse"] - base)
    figs["paragraphs.replace_vs_remove"] = [res["replace_p3"]["nmse"] - res["drop_p3"]["nmse"],
                                            res["replace_p1p2"]["nmse"] - res["drop_p1p2"]["nmse"]]
    figs["fve_by_variant"] = [[v, res[v]["fve"]] for v in VARIANTS]
    figs["_n"] = len(eligible)
    figs["_conventions"] = {"failure_convention": str(p["failure_convention"]),
                            "decoding": decoding_from(p).name}
    figs["_protocol"] = {"unit": unit, "paragraphs": "blank-line split, else line split", "P3": "final paragraph",
                         "P1+P2": "all paragraphs before the final one", "eligible": ">= 2 paragraphs",
                         "donor": f"one eligible decode, rng seed {seed}, excluded from scoring",
                         "ablation_ratio": "[nmse increase drop_p3, nmse increase drop_p1p2]"}
    return figs
