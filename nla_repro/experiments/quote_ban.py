"""Generation-time quote ban (seed 000 §2, seed 001 §2).

Three greedy decode conditions of the same eval-set activations:

- ``baseline``: unconstrained;
- ``dq``: every vocabulary token whose decoded text contains a double-quote-family character gets an
  additive -1e9 logit bias (``verbalize(..., banned_token_ids=...)``);
- ``both``: the double- and single-quote families banned.

Per condition: NMSE (mean mse_nrm = 2(1-cos)), cos (mean), fve_nrm[train] (ratio of means over the
training rawvar), the banned-token count / vocabulary size, banned-character leaks in the decoded output
(every decode, failed ones included; must be 0), the share of scored decodes that quote with the other
family (``frac_single_quote`` / ``frac_double_quote``: >= 1 detected quote span of that family) and
the share using an escape hatch (corner brackets, *italics*, parentheses, em-dashes; per kind and any).
For ``both``, the hatch-free and hatch-using subsets are scored separately.

Failure accounting: TRAINING_DROP by default (no tag / truncated / AR prompt > 300 tokens are dropped and
counted under ``<cond>.n_failed``); every share is over SCORED decodes.

Shared helpers for the other text experiments live here: :func:`decode_condition` (memoised in-process so
quote_ban / verbatim / redaction / paragraph_ablation / token_type_buckets share decodes of the same
activations), :func:`score_texts`, :func:`train_denominator`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .. import metrics
from ..decoding import Decoding
from ..explanation import AR_PROMPT_MAX_TOKENS, FailureConvention, parse
from ..prompts import ar_prompt_ids
from . import textops as T
from .base import experiment
from .runner import eval_rows, params

NAME = "quote_ban"
CONDITIONS = ("baseline", "dq", "both")
BANNED_CHARS = {"baseline": frozenset(), "dq": T.DOUBLE_QUOTE_CHARS,
                "both": T.DOUBLE_QUOTE_CHARS | T.SINGLE_QUOTE_CHARS}
COMMON_DEFAULTS = {"max_new_tokens": 150, "batch_size": 16, "failure_convention": "training_drop",
                   "ar_max_tokens": AR_PROMPT_MAX_TOKENS, "decoding": None}


def decoding_from(p: dict) -> Decoding:
    """Greedy with ``max_new_tokens`` unless ``p["decoding"]`` gives Decoding fields (e.g. sampled decodes
    for mechanics tests on random fixture pairs, whose greedy output is degenerate)."""
    extra = dict(p.get("decoding") or {})
    extra.setdefault("max_new_tokens", int(p["max_new_tokens"]))
    return Decoding(**extra)


# --------------------------------------------------------------------------- shared helpers

def train_denominator(ctx, pair_name: str, pair) -> float:
    """Training rawvar V: PairHandle.train_denominator, else the sidecar's ``metrics.train_rawvar``,
    else the published value for a released pair name; a clear error otherwise."""
    h = ctx.pairs[pair_name]
    v = h.train_denominator or getattr(pair, "train_denominator", None)
    if v is None:
        v = metrics.PUBLISHED_TRAIN_RAWVAR.get(pair_name)
    if v is None:
        raise ValueError(f"pair {pair_name!r}: fve_nrm[train] needs the training rawvar V: expected "
                         f"PairHandle.train_denominator, sidecar metrics.train_rawvar (nla_meta.yaml) or a "
                         f"released pair name {sorted(metrics.PUBLISHED_TRAIN_RAWVAR)}; found none")
    return float(v)


@dataclass
class Decodes:
    raw: list[str]                 # generated text (up to EOS)
    token_ids: list[tuple]         # generated ids
    explanations: list[str | None]  # what the AR scores (None = failed, dropped under TRAINING_DROP)
    reasons: list[str | None]
    convention: FailureConvention
    decoding: Decoding

    @property
    def scored_idx(self) -> list[int]:
        return [i for i, e in enumerate(self.explanations) if e is not None]

    @property
    def n_failed(self) -> int:
        return sum(r is not None for r in self.reasons)


_DECODE_MEMO: dict = {}


def _ids_digest(ids) -> str:
    return hashlib.sha256(",".join(map(str, sorted(ids or ()))).encode()).hexdigest()[:16]


def decode_condition(pair, es, decoding: Decoding, *, banned_ids=None, convention="training_drop",
                     batch_size: int = 16, ar_max_tokens: int | None = AR_PROMPT_MAX_TOKENS, vectors=None, key_extra="") -> Decodes:
    """Verbalize ``es.vectors`` (or ``vectors``) and parse under a named failure convention (memoised
    per process on pair object, eval-set manifest, decoding, banned ids, convention)."""
    conv = FailureConvention(convention)
    vecs = np.asarray(es.vectors if vectors is None else vectors, dtype=np.float32)
    key = (id(pair), es.manifest_hash if vectors is None else key_extra, hashlib.sha256(vecs.tobytes()).hexdigest(),
           tuple(sorted(decoding.as_key().items())), _ids_digest(banned_ids), conv.value, batch_size, ar_max_tokens)
    if key in _DECODE_MEMO:
        return _DECODE_MEMO[key]
    verbs = pair.verbalize(vecs, decoding, batch_size=batch_size, banned_token_ids=banned_ids or None)
    exps, reasons = [], []
    for v in verbs:
        p = parse(v.text, v.truncated, conv)
        text, reason = p.text_for_ar, (p.reason if p.failed else None)
        if conv is FailureConvention.TRAINING_DROP and text is not None and ar_max_tokens is not None:
            if len(ar_prompt_ids(pair.ar.tokenizer, pair.ar.sidecar, text)) > ar_max_tokens:
                text, reason = None, "ar_prompt_too_long"
        if conv is FailureConvention.REWARD_CHARGE_2:
            raise ValueError("text experiments edit explanation text; failure_convention reward_charge_2 has no "
                             "text to edit: use training_drop or client_raw")
        exps.append(text)
        reasons.append(reason)
    out = Decodes([v.text for v in verbs], [v.token_ids for v in verbs], exps, reasons, conv, decoding)
    if len(_DECODE_MEMO) > 32:
        _DECODE_MEMO.clear()
    _DECODE_MEMO[key] = out
    return out


def standard_decodes(ctx, name: str, pair_name: str, *, banned_chars=frozenset(), pair=None, es=None):
    """(pair, eval set, params, Decodes) for experiment ``name`` with the common greedy protocol."""
    p = params(ctx, name, COMMON_DEFAULTS)
    pair = pair or ctx.pairs[pair_name].load()
    es = es or eval_rows(ctx, name, pair_name)
    ids = None
    if banned_chars:
        ids, _ = T.banned_token_ids(pair.av.tokenizer, banned_chars)
    dec = decode_condition(pair, es, decoding_from(p), banned_ids=ids,
                           convention=p["failure_convention"], batch_size=int(p["batch_size"]),
                           ar_max_tokens=p["ar_max_tokens"])
    return pair, es, p, dec


def score_texts(pair, texts: list[str], gold, V: float) -> dict:
    """AR-score ``texts`` against ``gold`` rows. Per-sample mse_nrm and cos (fp64), and the summary:
    nmse (mean), cos (mean), fve (ratio of means over V), frac_fve_lt0 (share with mse_i > V), n.
    Empty texts are scored as the AR reads them (the template with nothing inside)."""
    gold = np.asarray(gold, dtype=np.float32)
    if len(texts) == 0:
        nan = float("nan")
        return {"mse": np.zeros(0), "cos_i": np.zeros(0), "nmse": nan, "cos": nan, "fve": nan,
                "frac_fve_lt0": nan, "n": 0, "n_empty": 0}
    rec = pair.reconstruct(list(texts), allow_empty=True)
    mse = np.asarray(metrics.mse_nrm(rec, gold), dtype=np.float64)
    c = np.asarray(metrics.cos(rec, gold), dtype=np.float64)
    return summarize(mse, c, V) | {"mse": mse, "cos_i": c, "n_empty": int(sum(not t.strip() for t in texts))}


def summarize(mse, cos_i, V: float) -> dict:
    mse = np.asarray(mse, dtype=np.float64)
    if mse.size == 0:
        nan = float("nan")
        return {"nmse": nan, "cos": nan, "fve": nan, "frac_fve_lt0": nan, "n": 0}
    return {"nmse": float(mse.mean()), "cos": float(np.mean(cos_i)), "fve": metrics.fve_nrm(mse, V),
            "frac_fve_lt0": float(np.mean(mse > V)), "n": int(mse.size)}


def put(figs: dict, prefix: str, summary: dict, keys=("nmse", "cos", "fve", "frac_fve_lt0", "n")) -> None:
    for k in keys:
        figs[f"{prefix}.{k}"] = summary[k]


def ratio(a: float, b: float) -> float:
    return float(a / b) if (b != 0 and math.isfinite(a) and math.isfinite(b)) else float("nan")


# --------------------------------------------------------------------------- the experiment

@experiment(NAME, default_n=1000, decoding="greedy", denominator="train",
            failure_convention="training_drop")
def quote_ban(ctx, pair_name: str) -> dict:
    p = params(ctx, NAME, COMMON_DEFAULTS)
    pair = ctx.pairs[pair_name].load()
    es = eval_rows(ctx, NAME, pair_name)
    V = train_denominator(ctx, pair_name, pair)
    gold = np.asarray(es.vectors, dtype=np.float32)
    tok = pair.av.tokenizer
    figs: dict = {"quote_ban.train_denominator": V}
    fve_by_condition = {}
    total_leaks = 0
    per_cond = {}
    for cond in CONDITIONS:
        chars = BANNED_CHARS[cond]
        ids, info = (T.banned_token_ids(tok, chars) if chars else ([], {"vocab_size": len(tok), "n_fragment_tokens": 0}))
        dec = decode_condition(pair, es, decoding_from(p), banned_ids=ids,
                               convention=p["failure_convention"], batch_size=int(p["batch_size"]),
                               ar_max_tokens=p["ar_max_tokens"])
        idx = dec.scored_idx
        texts = [dec.explanations[i] for i in idx]
        s = score_texts(pair, texts, gold[idx], V)
        pre = f"quote_ban.{cond}"
        put(figs, pre, s)
        figs[f"{pre}.n_failed"] = dec.n_failed
        figs[f"{pre}.n_banned"] = len(ids)
        figs[f"{pre}.vocab_size"] = info["vocab_size"]
        figs[f"{pre}.frac_banned"] = len(ids) / info["vocab_size"]
        figs[f"{pre}.n_fragment_tokens"] = info["n_fragment_tokens"]
        leaks = sum(T.count_chars(t, chars) for t in dec.raw) if chars else 0
        banned_set = set(ids)
        figs[f"{pre}.leaks"] = leaks
        figs[f"{pre}.banned_token_emissions"] = sum(sum(1 for t in row if t in banned_set) for row in dec.token_ids)
        total_leaks += leaks
        ns = max(len(texts), 1)
        figs[f"{pre}.frac_single_quote"] = sum(bool(T.find_quote_spans(t, ("single",))) for t in texts) / ns
        figs[f"{pre}.frac_double_quote"] = sum(bool(T.find_quote_spans(t, ("double",))) for t in texts) / ns
        hatches = [T.find_hatches(t) for t in texts]
        for k in T.HATCH_KINDS:
            figs[f"{pre}.frac_hatch.{k}"] = sum(h[k] > 0 for h in hatches) / ns
        using = np.array([any(v > 0 for v in h.values()) for h in hatches], dtype=bool)
        figs[f"{pre}.frac_hatch"] = float(using.mean()) if len(texts) else float("nan")
        fve_by_condition[cond] = s["fve"]
        per_cond[cond] = (s, using)
    s_both, using = per_cond["both"]
    for sub, mask in (("hatch_free", ~using), ("hatch_using", using)):
        sm = summarize(s_both["mse"][mask], s_both["cos_i"][mask], V)
        put(figs, f"quote_ban.both.{sub}", sm)
        fve_by_condition[f"both_{sub}"] = sm["fve"]
    base_fve, free_fve = figs["quote_ban.baseline.fve"], figs["quote_ban.both.hatch_free.fve"]
    figs["quote_ban.leaks"] = total_leaks
    figs["quote_ban.retention"] = ratio(free_fve, base_fve)
    figs["quote_ban.quoting_worth"] = float(base_fve - free_fve)
    figs["fve_by_condition"] = [[k, fve_by_condition[k]] for k in
                                ("baseline", "dq", "both", "both_hatch_free", "both_hatch_using")]
    figs["_n"] = len(es)
    figs["_conventions"] = {"failure_convention": str(p["failure_convention"]),
                            "decoding": decoding_from(p).name + ", ban = additive -1e9 logit bias"}
    figs["_protocol"] = {"banned_chars": {c: "".join(sorted(BANNED_CHARS[c])) for c in CONDITIONS},
                         "share_denominator": "scored decodes",
                         "hatch_kinds": list(T.HATCH_KINDS)}
    return figs
