"""Verbatim check (seed 000 §2, seed 001 §3): is a "quote" a copy of the source context?

For each scored explanation: the longest contiguous word n-gram it shares with its true source context
(the eval set's ``contexts[i]``: decoded text up to and including the position), in words
(:func:`textops.longest_shared_run`; words = lower-cased letter/digit runs). Null: the same explanation
against the context of another document (:func:`textops.roll_by_document`: contexts rolled by one
DOCUMENT, so a sample is never paired with an overlapping prefix of its own document).

Decode sets: ``quote_using`` = unconstrained greedy decodes (quoting freely); ``hatch_free`` = decodes
with both quote families banned that use no escape hatch (the quote_ban ``both`` hatch-free subset).
Figures: median / p90 (numpy linear interpolation) / max run, share of runs >= 6 (and >= 3) words,
for each set and its null. Un-suffixed ``median_run`` / ``p90_run`` are the quote_using set; ``max_run``
is the hatch_free set (the seed's "worst offender across 789 decodes").
"""

from __future__ import annotations

import numpy as np

from . import textops as T
from .base import experiment
from .quote_ban import decoding_from, BANNED_CHARS, standard_decodes

NAME = "verbatim"


def run_stats(runs) -> dict:
    r = np.asarray(runs, dtype=np.float64)
    if r.size == 0:
        nan = float("nan")
        return {"median": nan, "p90": nan, "max": nan, "ge6": nan, "ge3": nan, "n": 0}
    return {"median": float(np.median(r)), "p90": float(np.percentile(r, 90)), "max": float(r.max()),
            "ge6": float(np.mean(r >= 6)), "ge3": float(np.mean(r >= 3)), "n": int(r.size)}


@experiment(NAME, default_n=1000, decoding="greedy", denominator="n/a (word n-gram overlap)",
            failure_convention="training_drop")
def verbatim(ctx, pair_name: str) -> dict:
    pair, es, p, base = standard_decodes(ctx, NAME, pair_name)
    _, _, _, both = standard_decodes(ctx, NAME, pair_name, banned_chars=BANNED_CHARS["both"], pair=pair, es=es)
    null_of = T.roll_by_document(es.doc_ids)
    ctx_words = [T.words(c) for c in es.contexts]
    sets = {
        "quote_using": base.scored_idx,
        "hatch_free": [i for i in both.scored_idx if not T.uses_hatch(both.explanations[i])],
    }
    dec_of = {"quote_using": base, "hatch_free": both}
    figs: dict = {}
    for name, idx in sets.items():
        d = dec_of[name]
        real = [T.longest_shared_run(d.explanations[i], ctx_words[i]) for i in idx]
        null = [T.longest_shared_run(d.explanations[i], ctx_words[null_of[i]]) for i in idx]
        rs, ns = run_stats(real), run_stats(null)
        for k, v in rs.items():
            figs[f"verbatim.{name}.{k}"] = v
        for k, v in ns.items():
            figs[f"verbatim.{name}.null.{k}"] = v
        figs[f"verbatim.median_run.{name}"] = rs["median"]
        figs[f"verbatim.p90_run.{name}"] = rs["p90"]
        figs[f"verbatim.max_run.{name}"] = rs["max"]
        figs[f"verbatim.frac_ge6.{name}"] = rs["ge6"]
        figs[f"verbatim.frac_ge6.null.{name}"] = ns["ge6"]
        figs[f"verbatim.{name}.frac_with_quote_spans"] = (
            float(np.mean([bool(T.find_quote_spans(d.explanations[i])) for i in idx])) if idx else float("nan"))
    figs["verbatim.median_run"] = figs["verbatim.median_run.quote_using"]
    figs["verbatim.p90_run"] = figs["verbatim.p90_run.quote_using"]
    figs["verbatim.max_run"] = figs["verbatim.max_run.hatch_free"]
    figs["verbatim.frac_ge6.null"] = figs["verbatim.frac_ge6.null.quote_using"]
    figs["verbatim.n_failed.quote_using"] = base.n_failed
    figs["verbatim.n_failed.both_ban"] = both.n_failed
    figs["_n"] = len(sets["quote_using"])
    figs["_conventions"] = {"failure_convention": str(p["failure_convention"]),
                            "decoding": decoding_from(p).name + "; hatch_free set: both quote "
                                        "families banned (-1e9 logit bias)"}
    figs["_protocol"] = {"null": "contexts rolled by one document (same within-document rank)",
                         "words": "lower-cased letter/digit runs", "percentile": "numpy linear"}
    return figs
