"""Claim evaluation: plan (claim, pair) cases, run/fetch experiments, judge, record ClaimResults.

``plan_cases(claims, provided)`` decides for every registry claim which test cases exist and which are
skipped before running:

- ``any_pair`` claims: one case per provided pair; claims measured by an experiment that needs every
  pair (``needs=("all_pairs",)``: cross_family, ridge_baseline) get ONE case over all provided pairs
  (label ``a+b``; with one pair, its 1x1 "within-pair" matrix);
- released-pair claims: one case whose label joins the claim's scope (``gemma3-27b-L41+qwen2.5-7b-L20``
  for a cross-family claim); SKIPPED when any scope pair was not provided, the reason naming the missing
  pair(s) and how to provide them; marked ``gpu`` (checkpoint-specific);
- ``not_testable`` claims: skipped with their recorded reason and recorded as status ``not_testable``.

``ClaimRunner.evaluate(case)`` runs the claim's experiment through :func:`nla_repro.experiments.runner.
run_experiment` (once per (experiment, pair set) per session; across sessions the runner's
:class:`~nla_repro.cache.ResultsCache` serves it), picks ``claim.figure`` from the figures, calls
:func:`nla_repro.claims.judge`, and returns a :class:`~nla_repro.results.ClaimResult` stored in the results
cache (step ``claim-result``) so ``nla-repro report`` renders it. For a per-pair experiment and a claim
scoped to several pairs, the measured value is the list of the figure on each scope pair, in scope order.
A figure the experiment does not emit itself is derived across the scope pairs by
:func:`nla_repro.claims.aggregate.derive` (argmax over pairs, trajectories, ratios, matrix reads); a figure
nothing measures yet errors with the reason from :data:`nla_repro.claims.figures.UNMEASURED`. An experiment
that raises :class:`~nla_repro.experiments.base.ExperimentSkipped` (an input the user must supply is absent,
e.g. the worked-example text) makes the case SKIPPED with that reason (stored, so the report lists it).

``ClaimResult.measured`` must be one number; when the judged value is a sequence the record shows a
summary (named in ``protocol_note`` and the message, which also prints the full value):
le -> max, ge -> min, in_interval -> the element farthest from the interval's centre, abs/rel_tol ->
the element with the largest |delta|, monotone -> the worst step in the claimed direction,
ratio of (num, den) -> num/den, bits_equal -> run 1, equals on a non-number -> 1.0 match / 0.0 mismatch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from ..cache import MODEL_INDEPENDENT, hash_checkpoint_dir
from ..experiments.base import ExperimentSkipped
from ..results import ClaimResult, ExperimentResult, records_payload
from .aggregate import MissingFigure, derive, is_derived
from .figures import UNMEASURED
from .judge import Verdict, judge
from .schema import RELEASED_PAIRS, Claim

__all__ = [
    "CLAIM_STEP",
    "ClaimCase",
    "ClaimRunner",
    "plan_cases",
    "pair_label",
    "needs_all_pairs",
    "summarize_measured",
    "find_ci",
    "untested_result",
    "failure_message",
]

CLAIM_STEP = "claim-result"
#: fallback when the experiment modules cannot be imported at planning time
_ALL_PAIRS_FALLBACK = frozenset({"cross_family", "ridge_baseline"})


def pair_label(pairs: Iterable[str]) -> str:
    return "+".join(pairs)


def needs_all_pairs(experiment: str) -> bool:
    """Whether ``experiment`` is registered with ``needs=("all_pairs",)``."""
    from ..experiments.base import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        try:
            from ..experiments.runner import load_experiments

            load_experiments()
        except Exception:
            pass
    if experiment in EXPERIMENTS:
        return "all_pairs" in EXPERIMENTS[experiment][1].get("needs", ())
    return experiment in _ALL_PAIRS_FALLBACK


# ---------------------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class ClaimCase:
    """One test: a claim on a pair (or on a set of pairs, label joined with '+')."""

    claim: Claim
    pair: str
    pairs: tuple[str, ...]
    status: str | None = None   # None = runs; "skipped" | "not_testable" = decided at planning time
    reason: str = ""
    gpu: bool = False

    @property
    def id(self) -> str:
        return f"{self.claim.id}-{self.pair}"

    @property
    def judge_pair(self) -> str | None:
        """The pair name given to ``judge`` (decides published vs generalised form for any_pair claims)."""
        if len(self.pairs) == 1:
            return self.pairs[0]
        pub = set(self.claim.published_on)
        if self.pairs and all(p in pub for p in self.pairs):
            return self.pairs[0]
        return None


def plan_cases(claims: Iterable[Claim], provided: Iterable[str]) -> list[ClaimCase]:
    """Every (claim, pair) case for the provided pair names (see the module docstring)."""
    from ..pairs import provide_hint

    provided = list(dict.fromkeys(provided))
    out: list[ClaimCase] = []
    for c in claims:
        if c.any_pair:
            groups = [tuple(provided)] if needs_all_pairs(c.experiment) else [(p,) for p in provided]
            for g in groups:
                gpu = any(p in RELEASED_PAIRS for p in g)
                if not c.testable:
                    out.append(ClaimCase(c, pair_label(g), g, "not_testable", f"not testable: {c.reason}", gpu))
                else:
                    out.append(ClaimCase(c, pair_label(g), g, None, "", gpu))
            continue
        scope = tuple(c.pairs())
        label = pair_label(scope)
        if not c.testable:
            out.append(ClaimCase(c, label, scope, "not_testable", f"not testable: {c.reason}", True))
            continue
        missing = [p for p in scope if p not in provided]
        if missing:
            what = "cross-family claim needs every pair in " + ", ".join(scope) if len(scope) > 1 else \
                f"claim is about released pair {scope[0]}"
            hints = provide_hint(*missing)
            given = ", ".join(provided) if provided else "none"
            reason = (f"{what}; not provided: {', '.join(missing)} (pairs given: {given}). {hints}")
            out.append(ClaimCase(c, label, scope, "skipped", reason, True))
        else:
            out.append(ClaimCase(c, label, scope, None, "", True))
    return out


# ---------------------------------------------------------------------------------------------- helpers

def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _numeric_array(x: Any) -> np.ndarray | None:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a


def summarize_measured(claim: Claim, form_comparator: str, measured: Any, verdict: Verdict) -> tuple[float | None, str]:
    """(one number for ClaimResult.measured, how it was summarised ('' when measured is a scalar))."""
    if isinstance(measured, (bool, np.bool_)):
        return float(measured), ""
    if _is_num(measured):
        return float(measured), ""
    c = form_comparator
    if c == "equals":
        a = _numeric_array(measured)
        if a is not None and a.ndim == 0:
            return float(a), ""
        return (1.0 if verdict.passed else 0.0), "1.0 = equal to published, 0.0 = not equal"
    if c == "bits_equal":
        if isinstance(measured, (list, tuple)) and measured:
            a = _numeric_array(measured[0])
            if a is not None and a.size >= 1:
                return float(a.ravel()[0]) if a.size == 1 else float(a.mean()), "run 1 of the compared runs"
        return None, ""
    a = _numeric_array(measured)
    if a is None or a.size == 0:
        return None, ""
    flat = a.ravel()
    if a.ndim == 0:
        return float(a), ""
    if flat.size == 1:
        return float(flat[0]), "the single element"
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return None, ""
    form = verdict_form(claim, verdict)
    if c == "le":
        return float(finite.max()), f"max of {flat.size} values"
    if c == "ge":
        return float(finite.min()), f"min of {flat.size} values"
    if c == "in_interval" and form.interval is not None:
        mid = 0.5 * (form.interval[0] + form.interval[1])
        return float(finite[np.argmax(np.abs(finite - mid))]), f"element farthest from the interval centre of {flat.size}"
    if c == "monotone" and flat.size >= 2:
        d = np.diff(flat)
        if form.direction == "decreasing":
            d = -d
        return float(np.nanmin(d)), f"worst step in the {form.direction} direction over {flat.size} values"
    if c in ("ratio_ge", "ratio_le") and flat.size == 2 and flat[1] != 0:
        return float(flat[0] / flat[1]), "numerator / denominator"
    if c in ("abs_tol", "rel_tol", "eq_printed"):
        p = _numeric_array([np.nan if v is None else v for v in np.ravel(np.asarray(form.published, dtype=object))]) \
            if isinstance(form.published, (list, tuple)) else None
        if p is not None and p.shape == flat.shape:
            d = np.abs(flat - p)
            d[~np.isfinite(d)] = -1
            return float(flat[int(np.argmax(d))]), f"element with the largest |delta| of {flat.size}"
        return float(finite.mean()), f"mean of {flat.size} values"
    return float(finite.mean()), f"mean of {flat.size} values"


def verdict_form(claim: Claim, verdict: Verdict):
    return claim.generalised if verdict.form == "generalised" and claim.generalised is not None else claim.form


def _published_for_record(claim: Claim) -> Any:
    p = claim.published
    if p is None or isinstance(p, str) or (_is_num(p)):
        return p
    if isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_num(x) for x in p):
        return [float(x) for x in p]
    return json.dumps(p, ensure_ascii=False, default=str)


def find_ci(figures: dict, figure: str) -> tuple[float, float] | None:
    """A CI the experiment reports for ``figure``: ``<fig>_ci95``, ``<fig>.ci95``, ``<fig>_ci``, ``<fig>.ci``,
    or ``*.ci.<cell>`` for ``*.fve.<cell>`` (cross_family)."""
    cands = [figure + "_ci95", figure + ".ci95", figure + "_ci", figure + ".ci"]
    if ".fve." in figure:
        cands.append(figure.replace(".fve.", ".ci.", 1))
    for k in cands:
        v = figures.get(k)
        if isinstance(v, list) and len(v) == 2 and all(_is_num(x) and math.isfinite(float(x)) for x in v):
            lo, hi = float(v[0]), float(v[1])
            if lo <= hi:
                return (lo, hi)
    return None


def _protocol_note(claim: Claim, case: ClaimCase, results: list[ExperimentResult], verdict: Verdict | None,
                   summary: str) -> str:
    proto = dict(claim.protocol)
    reg = proto.get("name") or "inline"
    bits = [f"registry protocol '{reg}' (eval_set: {proto.get('eval_set')}; decoding: {proto.get('decoding')})"]
    for r in results:
        es = r.protocol.get("eval_set") or r.protocol.get("eval_sets")
        bits.append(f"measured by {r.experiment} on {r.pair}: n={r.n}, eval_set={es}, "
                    f"decoding={r.conventions.get('decoding')}")
    if verdict is not None:
        bits.append(f"judged with the {verdict.form} form")
    if summary:
        bits.append(f"measured shown = {summary}")
    if claim.note:
        bits.append(f"note: {claim.note}")
    return "; ".join(bits)


def untested_result(case: ClaimCase) -> ClaimResult:
    """The ClaimResult of a case decided at planning time (skipped / not_testable)."""
    c = case.claim
    return ClaimResult(
        claim_id=c.id, source=c.source, pair=case.pair, published=_published_for_record(c), measured=None,
        tolerance=None, comparator=c.comparator if case.status == "not_testable" else c.form.comparator,
        status=case.status or "skipped", message=case.reason or "skipped", ci=None,
        protocol_note=f"registry protocol '{dict(c.protocol).get('name') or 'inline'}'",
        conventions={}, provenance={})


# ---------------------------------------------------------------------------------------------- runner

class ClaimRunner:
    """Evaluates claim cases for one session.

    ``pairs``: a :class:`nla_repro.pairs.PairRegistry` (or anything with ``handles(names) -> {name: handle}``).
    ``cache``: :class:`nla_repro.cache.ResultsCache` used by the experiment runner AND for ClaimResults
    (None: nothing is cached or stored). ``options``: per-experiment parameters (``ctx.options``).
    """

    def __init__(self, pairs, *, cache=None, eval_size: int | None = None, refresh: bool = False,
                 options: dict | None = None, backend: str = "hf", store: bool = True):
        self.pairs = pairs
        self.cache = cache
        self.eval_size = eval_size
        self.refresh = refresh
        self.options = dict(options or {})
        self.backend = backend
        self.store = store and cache is not None
        self._memo: dict[tuple, ExperimentResult | BaseException] = {}
        self._ckpt: dict[str, dict] = {}

    # -- experiments ------------------------------------------------------------------------------------
    def experiment_result(self, name: str, pair_names: Iterable[str]) -> ExperimentResult:
        """Run (or fetch) ``name`` on ``pair_names``: once per (experiment, pair set) in this session."""
        from ..experiments.base import ExperimentContext
        from ..experiments.runner import all_pairs_label, run_experiment

        names = tuple(pair_names)
        key = (name, tuple(sorted(names)))
        if key in self._memo:
            v = self._memo[key]
            if isinstance(v, BaseException):
                raise v
            return v
        try:
            handles = self.pairs.handles(sorted(names))
            ctx = ExperimentContext(pairs=handles, eval_size=self.eval_size, refresh=self.refresh,
                                    cache=self.cache, options=self.options)
            label = all_pairs_label(ctx) if needs_all_pairs(name) else names[0]
            res = run_experiment(name, ctx, label)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            self._memo[key] = e
            raise
        self._memo[key] = res
        return res

    def _results_for(self, case: ClaimCase) -> list[ExperimentResult]:
        name = case.claim.experiment
        if needs_all_pairs(name):
            return [self.experiment_result(name, case.pairs)]
        return [self.experiment_result(name, (p,)) for p in case.pairs]

    def _checkpoints(self, names: Iterable[str]) -> dict:
        out = {}
        for n in names:
            if n not in self._ckpt:
                h = self.pairs.handles([n])[n]
                self._ckpt[n] = {"av": hash_checkpoint_dir(h.av_dir), "ar": hash_checkpoint_dir(h.ar_dir)}
            out[n] = self._ckpt[n]
        return out

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate(self, case: ClaimCase) -> ClaimResult:
        """Judge one case; the ClaimResult is stored in the cache (when there is one) and returned."""
        if case.status is not None:
            return self.record_untested(case)
        c = case.claim
        try:
            results = self._results_for(case)
        except ExperimentSkipped as e:   # an input the user must supply is absent: skipped, with the reason
            return self._store(case, self._skipped(case, str(e)))
        except Exception as e:
            cr = self._error(case, [], f"experiment {c.experiment!r} on {case.pair} raised "
                                       f"{type(e).__name__}: {e}")
            return self._store(case, cr)
        try:
            measured = self._measured(case, results)
        except (MissingFigure, ValueError) as e:
            return self._store(case, self._error(case, results, str(e)))
        v = judge(c, measured, pair=case.judge_pair)
        summary_val, how = summarize_measured(c, v.comparator, measured, v)
        status = v.status
        msg = v.message
        if not _is_num(measured) and how:
            msg += f" [measured shown in the report: {how}]"
        if status in ("pass", "fail") and (summary_val is None or not math.isfinite(summary_val)):
            status = "error"
            msg = f"measurement is not a finite number ({measured!r}): {msg}"
            summary_val = None
        ci = find_ci(results[0].figures, c.figure) if len(results) == 1 else None
        conv = dict(results[0].conventions)
        if len(results) > 1:
            for k in list(conv):
                vals = {r.conventions.get(k) for r in results}
                if len(vals) > 1:
                    conv[k] = " | ".join(f"{r.pair}: {r.conventions.get(k)}" for r in results)
        if c.protocol.get("denominator") is not None:
            conv["registry_denominator"] = str(c.protocol.get("denominator"))
        conv["judged_form"] = v.form
        prov = dict(results[0].provenance.get("environment") or {})
        cr = ClaimResult(claim_id=c.id, source=c.source, pair=case.pair, published=_published_for_record(c),
                         measured=summary_val, tolerance=v.tolerance, comparator=v.comparator, status=status,
                         message=msg, ci=ci, protocol_note=_protocol_note(c, case, results, v, how),
                         conventions=conv, provenance=prov)
        return self._store(case, cr)

    @staticmethod
    def _measured(case: ClaimCase, results: list[ExperimentResult]) -> Any:
        """The claim's figure: the experiment's own (one value per result), else derived across the scope
        pairs (:mod:`.aggregate`); MissingFigure names what is absent and where."""
        c = case.claim
        if all(c.figure in r.figures for r in results):
            values = [r.figures[c.figure] for r in results]
            return values[0] if len(values) == 1 else values
        if is_derived(c.figure):
            figs = [results[0].figures] * len(case.pairs) if needs_all_pairs(c.experiment) else \
                [r.figures for r in results]
            try:
                return derive(c.figure, dict(zip(case.pairs, figs)))
            except MissingFigure as e:
                raise MissingFigure(f"derived figure {c.figure!r} from experiment {c.experiment!r}: {e}") from e
        r = next(r for r in results if c.figure not in r.figures)
        have = sorted(r.figures)
        near = [k for k in have if k.split(".")[0] == c.figure.split(".")[0]][:12]
        why = f"; not measured yet: {UNMEASURED[c.figure]}" if c.figure in UNMEASURED else ""
        raise MissingFigure(f"experiment {c.experiment!r} on {r.pair} reports no figure {c.figure!r} "
                            f"(figures with the same prefix: {near or 'none'}; {len(have)} figures in all){why}")

    @staticmethod
    def _skipped(case: ClaimCase, why: str) -> ClaimResult:
        c = case.claim
        msg = f"[{c.id} · {c.source}] SKIPPED: experiment {c.experiment!r} on {case.pair}: {why}"
        return untested_result(replace(case, status="skipped", reason=msg))

    def _error(self, case: ClaimCase, results: list[ExperimentResult], why: str) -> ClaimResult:
        c = case.claim
        msg = (f"[{c.id} · {c.source} · {c.metric}] ERROR: {why}; published {c.published!r}; criterion "
               f"{c.form.describe_tolerance()}; comparator {c.comparator}; source {c.seed_file} "
               f"{c.source.split(' ', 1)[-1]}")
        conv = dict(results[0].conventions) if results else {}
        return ClaimResult(claim_id=c.id, source=c.source, pair=case.pair, published=_published_for_record(c),
                           measured=None, tolerance=c.form.describe_tolerance(), comparator=c.comparator,
                           status="error", message=msg, ci=None,
                           protocol_note=_protocol_note(c, case, results, None, ""), conventions=conv,
                           provenance=dict(results[0].provenance.get("environment") or {}) if results else {})

    # -- storage ----------------------------------------------------------------------------------------
    @staticmethod
    def _untested_key(case: ClaimCase) -> dict:
        return {"step": CLAIM_STEP, "checkpoint": MODEL_INDEPENDENT, "claim": case.claim.id, "pair": case.pair,
                "kind": "untested"}

    def _store(self, case: ClaimCase, cr: ClaimResult) -> ClaimResult:
        if not self.store:
            return cr
        try:
            ckpt = self._checkpoints(case.pairs)
        except Exception:
            ckpt = MODEL_INDEPENDENT
        # one record per (claim, pair label, checkpoint content): a re-run replaces the previous verdict
        key = {"step": CLAIM_STEP, "checkpoint": ckpt, "claim": case.claim.id, "pair": case.pair,
               "kind": "tested"}
        if self.backend != "hf":  # an engine's verdict sits beside the reference one, never replaces it
            key["backend"] = self.backend
        self.cache.put(key, records_payload([cr]))
        # an earlier "skipped: pair not provided" record for this case is superseded now
        ukey = self._untested_key(case)
        if self.cache.get(ukey) is not None:
            self.cache.put(ukey, {"records": [], "superseded_by": "a tested result for the same claim and pair"})
        return cr

    def record_untested(self, case: ClaimCase) -> ClaimResult:
        """Store (and return) the skipped / not_testable result of a case decided at planning time."""
        cr = untested_result(case)
        if self.store:
            self.cache.put(self._untested_key(case), records_payload([cr]))
        return cr


def failure_message(cr: ClaimResult) -> str:
    """What a failing claim test prints: the Verdict message plus comparator, pair and protocol."""
    return (f"{cr.message}\n  comparator: {cr.comparator}; tolerance: {cr.tolerance}; pair: {cr.pair}\n"
            f"  protocol: {cr.protocol_note}")

