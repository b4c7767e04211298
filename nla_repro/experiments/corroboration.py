"""Corroboration (seeds 000 §1, 001 §1): greedy round trip of held-out vectors, every convention named.

Also holds the decode/score helpers the other experiment modules share (:func:`decode`,
:func:`convention_of`, :func:`train_denominator`).

Figures (flat keys, registry ``figure`` names):
  fve_nrm.train / .own / .meannorm / .per_vector      ratio of means; per_vector = mean(2cos-1)
  fve_nrm.train_ci95 [lo, hi]                         doc bootstrap (1000 draws, seed 0) of fve[train]
  fve_nrm.frac_gt_0.5 / .frac_gt_0.8 / .frac_lt_0     per-sample fve with the train denominator
  fve_nrm.reward_charge_2 / fve_nrm.client_raw        same decodes, the other two failure conventions
  nmse.mean / nmse.median, cos.mean, cos.mean_by_condition [cos mean]
  explanation.tag_failure_rate                        training convention: no tag or truncated (or AR prompt > 300)
  null.shuffled.fve_own                               explanations rolled by one position (never identity)
  null.gaussian.fve_own                               L2-matched N(0, I) vectors through AV+AR vs their own targets
  null.predict_mean.fve_own                           predicting the eval set's mean direction (= 1 - M/V <= 0)
  var_nrm.own, var_nrm.train, denominator.train_source
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from ..decoding import Decoding
from ..explanation import AR_PROMPT_MAX_TOKENS, FailureConvention, parse
from .base import experiment
from .runner import eval_rows, params

NAME = "corroboration"


def convention_of(ctx, name: str, default: str = "training_drop") -> FailureConvention:
    """The failure convention an experiment scores under (``ctx.options[name]["failure_convention"]``).

    Tiny random fixture AVs never write ``<explanation>`` tags; their mechanics tests use ``client_raw``."""
    return FailureConvention(params(ctx, name).get("failure_convention", default))


def decoding_for(ctx, name: str, **kw) -> Decoding:
    """Decoding for an experiment: recipe defaults, ``max_new_tokens`` overridable via options (CPU tests)."""
    mnt = params(ctx, name).get("max_new_tokens")
    if mnt is not None:
        kw.setdefault("max_new_tokens", int(mnt))
    return Decoding(**kw)


def train_denominator(handle, pair=None) -> tuple[float | None, str]:
    """(V_train, source): the handle's value, else the pair's sidecar ``metrics.train_rawvar``."""
    if handle.train_denominator is not None:
        return float(handle.train_denominator), "pair handle"
    if pair is not None and pair.train_denominator is not None:
        return float(pair.train_denominator), "sidecar metrics.train_rawvar"
    return None, "missing"


def decode(pair, vectors, decoding: Decoding = Decoding(), *, batch_size: int = 16, **kw):
    return pair.verbalize(np.asarray(vectors, dtype=np.float32), decoding, batch_size=batch_size, **kw)


def tag_failure_rate(verbs) -> float:
    """Training convention failure rate: no ``<explanation>`` tag or truncated generation."""
    parsed = [parse(v.text, v.truncated, FailureConvention.TRAINING_DROP) for v in verbs]
    return sum(p.failed for p in parsed) / max(1, len(parsed))


def shuffled_null_mse(pair, texts, gold) -> np.ndarray:
    """mse_nrm of explanations rolled by one position against the gold (a derangement for n >= 2)."""
    idx = [i for i, t in enumerate(texts) if t is not None]
    if len(idx) < 2:
        return np.full(1, np.nan)
    rolled = [texts[idx[(k + 1) % len(idx)]] for k in range(len(idx))]
    return pair.score(rolled, np.asarray(gold, dtype=np.float32)[idx], allow_empty=True)


def _fve(mse, den):
    s = np.asarray(mse, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0 or den is None:
        return float("nan")
    return metrics.fve_nrm(s, den)


@experiment(NAME, default_n=32, decoding="greedy(max_new=150, context_cap=300)",
            denominator="train (sidecar metrics.train_rawvar) for fve_nrm.train; own = eval-set rawvar V; "
                        "meannorm = 2-2sqrt(1-V); per_vector = mean(2cos-1); nulls use own",
            failure_convention="TRAINING_DROP for the headline (override: options.failure_convention); "
                               "REWARD_CHARGE_2 and CLIENT_RAW reported alongside")
def corroboration(ctx, pair_name):
    p = params(ctx, NAME, {"gaussian_null": True, "n_boot": 1000, "batch_size": 16})
    handle = ctx.pairs[pair_name]
    pair = handle.load()
    es = eval_rows(ctx, NAME, pair_name)
    gold = es.vectors
    conv = convention_of(ctx, NAME)
    dec = decoding_for(ctx, NAME)
    verbs = decode(pair, gold, dec, batch_size=int(p["batch_size"]))
    acc, texts = pair.score_verbalizations(verbs, gold, conv)
    v_train, src = train_denominator(handle, pair)
    v_own = metrics.variance_baseline(gold)
    m_own = metrics.meannorm_baseline(gold)
    mse = acc.mse
    ok = ~np.isnan(mse)
    scored = mse[ok]
    cosv = 1.0 - scored / 2.0  # mse_nrm = 2(1-cos) with mse_scale = sqrt(d)
    # no silent swap to the own denominator: without a training V these figures are NaN (and say why)
    per_fve = metrics.fve_per_sample(scored, v_train) if (scored.size and v_train) else np.array([np.nan])
    summ = metrics.summary(per_fve) if (scored.size and v_train) else {"frac_gt_0_5": np.nan, "frac_gt_0_8": np.nan,
                                                        "frac_lt_0": np.nan}
    if scored.size and v_train:
        doc_ids = [es.doc_ids[i] for i in np.flatnonzero(ok)]
        ci = list(metrics.doc_bootstrap_ci(scored, doc_ids, lambda m: metrics.fve_nrm(m, v_train),
                                           n_boot=int(p["n_boot"])))
    else:
        ci = [float("nan"), float("nan")]
    # other conventions on the same decodes
    other = {}
    for c in (FailureConvention.REWARD_CHARGE_2, FailureConvention.CLIENT_RAW):
        a2, _ = pair.score_verbalizations(verbs, gold, c) if c is not conv else (acc, texts)
        other[c.value] = _fve(a2.mse, v_train)
    null_shuf = _fve(shuffled_null_mse(pair, texts, gold), v_own)
    # predict-the-mean: constant prediction = mean unit direction of the eval gold
    mean_dir = metrics.unit_rows(gold).mean(axis=0)
    pm_mse = metrics.mse_nrm(np.repeat(mean_dir[None, :], len(gold), axis=0), gold)
    # metric identities on this eval set (claims s000-nmse-equals-2-1-cos, recipe-meannorm-rawvar-identity)
    scored_idx = [i for i, t in enumerate(texts) if t is not None and not np.isnan(mse[i])]
    if scored_idx:
        preds = pair.reconstruct([texts[i] for i in scored_idx], allow_empty=True)
        g = gold[scored_idx]
        identity_2_1_cos = float(np.max(np.abs(metrics.mse_nrm(preds, g) - 2 * (1 - metrics.cos(preds, g)))))
    else:
        identity_2_1_cos = float("nan")
    figs = {
        "metric.identity_2_1_cos": identity_2_1_cos,
        "var_nrm.identity": abs(m_own - (2 - 2 * np.sqrt(1 - v_own))),
        "fve_nrm.train": _fve(mse, v_train),
        "fve_nrm.own": _fve(mse, v_own),
        "fve_nrm.meannorm": _fve(mse, m_own),
        "fve_nrm.per_vector": float(np.mean(2.0 * cosv - 1.0)) if scored.size else float("nan"),
        "fve_nrm.train_ci95": ci,
        "fve_nrm.frac_gt_0.5": float(summ["frac_gt_0_5"]),
        "fve_nrm.frac_gt_0.8": float(summ["frac_gt_0_8"]),
        "fve_nrm.frac_lt_0": float(summ["frac_lt_0"]),
        "fve_nrm.reward_charge_2": other["reward_charge_2"],
        "fve_nrm.client_raw": other["client_raw"],
        "nmse.mean": float(scored.mean()) if scored.size else float("nan"),
        "nmse.median": float(np.median(scored)) if scored.size else float("nan"),
        "cos.mean": float(cosv.mean()) if scored.size else float("nan"),
        "cos.mean_by_condition": [float(cosv.mean()) if scored.size else float("nan")],
        "explanation.tag_failure_rate": tag_failure_rate(verbs),
        "explanation.failure_rate_scored_convention": acc.failure_rate,
        "explanation.n_scored": int(ok.sum()),
        "null.shuffled.fve_own": null_shuf,
        "null.predict_mean.fve_own": metrics.fve_nrm(pm_mse, v_own),
        "var_nrm.own": v_own,
        "var_nrm.train": v_train if v_train else float("nan"),
        "meannorm.own": m_own,
    }
    if p["gaussian_null"]:
        rng = np.random.default_rng(0)
        g = rng.standard_normal(gold.shape).astype(np.float32)
        g *= (np.linalg.norm(gold, axis=1, keepdims=True) / np.linalg.norm(g, axis=1, keepdims=True))
        gverbs = decode(pair, g, dec, batch_size=int(p["batch_size"]))
        gacc, _ = pair.score_verbalizations(gverbs, g, conv)
        figs["null.gaussian.fve_own"] = _fve(gacc.mse, metrics.variance_baseline(g))
        figs["null.gaussian.tag_failure_rate"] = tag_failure_rate(gverbs)
    return {**figs, "_n": len(gold),
            "_conventions": {"failure_convention": conv.name},
            "_protocol": {"train_denominator_source": src, "eval_set": es.name, "manifest_hash": es.manifest_hash,
                          "ar_max_tokens": AR_PROMPT_MAX_TOKENS, "decoding": dec.name, "null": "explanations rolled by one (derangement)"}}
