"""Comparators: judge a measured value against a registry claim.

``judge(claim, measured, pair=None) -> Verdict``

* Released-pair claims are judged with their published form.
* ``any_pair`` claims are judged with their *generalised* form (what any small trained
  pair must satisfy) unless ``pair`` is one of the released pairs the number was
  published on (``claim.published_on``), in which case the published form is used.
  ``form="published"|"generalised"`` forces one.
* NaN / inf / None anywhere in ``measured`` is a fail with a message saying so.

Measured shapes per comparator:

=============  ===============================================================
eq_printed     scalar
abs_tol        scalar, or array-like of the same shape as ``published`` (elementwise;
               ``null`` entries in ``published`` are skipped)
rel_tol        as abs_tol; |m - p| <= tol * |p|
le / ge        scalar or sequence (every element must satisfy the bound)
in_interval    scalar or sequence (every element inside [lo, hi], inclusive)
monotone       sequence of >= 2 numbers (slack ``tolerance`` for non-strict)
ratio_ge/_le   scalar ratio, or a (numerator, denominator) pair
bits_equal     sequence of >= 2 runs (scalars or arrays); identical dtype, shape, bytes
equals         any value; exact equality (lists/tuples normalised)
=============  ===============================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .schema import RELEASED_PAIRS, Claim, Form, printed_half_unit

# Float comparisons at the boundary: |0.0579 - 0.0575| is 0.00040000000000000105 in binary
# floating point; a relative slack of 1e-9 keeps "exactly at the tolerance" a pass.
_EPS = 1e-9


@dataclass(frozen=True)
class Verdict:
    status: str  # "pass" | "fail" | "not_testable"
    published: Any
    measured: Any
    tolerance: str
    message: str
    claim_id: str = ""
    comparator: str = ""
    form: str = "published"  # which form judged it: "published" | "generalised"

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class MeasurementShapeError(ValueError):
    """Measured value has the wrong shape/type for the comparator."""


def _has_nonfinite(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, (bool, str)):
        return False
    if isinstance(x, (int, float, np.floating, np.integer)):
        return not math.isfinite(float(x))
    if isinstance(x, dict):
        return any(_has_nonfinite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_nonfinite(v) for v in x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "fc":
            return not bool(np.all(np.isfinite(x)))
        if x.dtype == object:
            return any(_has_nonfinite(v) for v in x.ravel())
        return False
    return False


def _as_float_array(x: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MeasurementShapeError(f"{what}: expected number(s), found {x!r}") from exc
    return a


def _scalar(x: Any, what: str) -> float:
    a = _as_float_array(x, what)
    if a.ndim != 0:
        raise MeasurementShapeError(f"{what}: expected a scalar, found shape {a.shape}")
    return float(a)


def _fmt(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    if isinstance(x, np.ndarray):
        return np.array2string(x, precision=6, threshold=20)
    return repr(x)


def _elementwise(published: Any, measured: Any, tol_of) -> tuple[bool, float]:
    """Compare published vs measured elementwise; None in published = not part of the claim."""
    p_obj = np.asarray(published, dtype=object)
    m = _as_float_array(measured, "measured")
    if p_obj.shape != m.shape:
        raise MeasurementShapeError(f"measured shape {m.shape} != published shape {p_obj.shape}")
    mask = np.vectorize(lambda v: v is not None)(p_obj) if p_obj.ndim else np.array(published is not None)
    p = np.where(mask, p_obj, np.nan).astype(np.float64)
    delta = np.abs(m - p)
    tol = tol_of(p)
    ok = np.where(mask, delta <= tol * (1 + _EPS) + 1e-15, True)
    worst = float(np.nanmax(np.where(mask, delta, np.nan))) if np.any(mask) else 0.0
    return bool(np.all(ok)), worst


def _apply(form: Form, measured: Any) -> tuple[bool, str]:
    c = form.comparator
    if c == "eq_printed":
        m = _scalar(measured, "measured")
        tol = printed_half_unit(form.printed or "0")
        d = abs(m - float(form.published))
        return d <= tol * (1 + _EPS), f"|delta|={d:.3g}"
    if c == "abs_tol":
        ok, worst = _elementwise(form.published, measured, lambda p: form.tolerance)
        return ok, f"max|delta|={worst:.3g}"
    if c == "rel_tol":
        ok, worst = _elementwise(form.published, measured, lambda p: form.tolerance * np.abs(p))
        return ok, f"max|delta|={worst:.3g}"
    if c in ("le", "ge"):
        a = _as_float_array(measured, "measured")
        if a.size == 0:
            raise MeasurementShapeError("measured: empty")
        if c == "le":
            v = float(a.max())
            return v <= form.bound + _EPS * max(1.0, abs(form.bound)), f"max={v:.6g}"
        v = float(a.min())
        return v >= form.bound - _EPS * max(1.0, abs(form.bound)), f"min={v:.6g}"
    if c == "in_interval":
        a = _as_float_array(measured, "measured")
        lo, hi = form.interval  # type: ignore[misc]
        if a.size == 0:
            raise MeasurementShapeError("measured: empty")
        ok = bool(np.all((a >= lo - _EPS * max(1, abs(lo))) & (a <= hi + _EPS * max(1, abs(hi)))))
        return ok, f"range=[{float(a.min()):.6g}, {float(a.max()):.6g}]"
    if c == "monotone":
        a = _as_float_array(measured, "measured")
        if a.ndim != 1 or a.size < 2:
            raise MeasurementShapeError(f"monotone needs a 1-D sequence of >= 2 numbers, found shape {a.shape}")
        d = np.diff(a)
        if form.direction == "decreasing":
            d = -d
        slack = form.tolerance or 0.0
        ok = bool(np.all(d > 0)) if form.strict else bool(np.all(d >= -slack))
        return ok, f"worst step={float(d.min()):.3g} ({form.direction})"
    if c in ("ratio_ge", "ratio_le"):
        a = _as_float_array(measured, "measured")
        if a.ndim == 0:
            r = float(a)
        elif a.shape == (2,):
            if a[1] == 0:
                raise MeasurementShapeError("ratio denominator is 0")
            r = float(a[0] / a[1])
        else:
            raise MeasurementShapeError(f"ratio needs a scalar or (num, den), found shape {a.shape}")
        if c == "ratio_ge":
            return r >= form.bound - _EPS, f"ratio={r:.6g}"
        return r <= form.bound + _EPS, f"ratio={r:.6g}"
    if c == "bits_equal":
        if not isinstance(measured, (list, tuple)) or len(measured) < 2:
            raise MeasurementShapeError("bits_equal needs a sequence of >= 2 runs")
        runs = [np.asarray(r) for r in measured]
        first = runs[0]
        for i, r in enumerate(runs[1:], start=2):
            if r.dtype != first.dtype or r.shape != first.shape:
                return False, f"run {i} dtype/shape {r.dtype}{r.shape} != run 1 {first.dtype}{first.shape}"
            if np.ascontiguousarray(r).tobytes() != np.ascontiguousarray(first).tobytes():
                nd = int(np.sum(np.ascontiguousarray(r).view(np.uint8) != np.ascontiguousarray(first).view(np.uint8)))
                return False, f"run {i} differs from run 1 in {nd} byte(s)"
        return True, f"{len(runs)} runs bit-identical"
    if c == "equals":
        def norm(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return norm(v.tolist())
            if isinstance(v, (list, tuple)):
                return [norm(x) for x in v]
            if isinstance(v, np.generic):
                return v.item()
            return v
        return norm(measured) == norm(form.published), "exact comparison"
    raise ValueError(f"unknown comparator {c!r}")


def _pick_form(claim: Claim, pair: str | None, form: str | None) -> tuple[Form, str]:
    if form == "published":
        return claim.form, "published"
    if form == "generalised":
        if claim.generalised is None:
            raise ValueError(f"claim {claim.id} has no generalised form")
        return claim.generalised, "generalised"
    if form is not None:
        raise ValueError(f"form must be 'published', 'generalised' or None, found {form!r}")
    if claim.any_pair and claim.generalised is not None:
        if pair is not None and pair in RELEASED_PAIRS and pair in claim.published_on:
            return claim.form, "published"
        return claim.generalised, "generalised"
    return claim.form, "published"


def judge(claim: Claim, measured: Any, *, pair: str | None = None, form: str | None = None) -> Verdict:
    """Judge ``measured`` against ``claim``. Never raises for bad numbers: a NaN is a fail."""
    use, which = _pick_form(claim, pair, form)
    tol_s = use.describe_tolerance()
    src = f"[{claim.id} · {claim.source} · {claim.metric}]"
    pub_s = _fmt(claim.published)
    gen_s = f" (generalised form; original published {pub_s})" if which == "generalised" else ""
    if use.comparator == "not_testable":
        return Verdict(
            "not_testable", claim.published, measured, "n/a",
            f"{src} not testable: {claim.reason}", claim.id, use.comparator, which,
        )
    if _has_nonfinite(measured):
        return Verdict(
            "fail", claim.published, measured, tol_s,
            f"{src} FAIL: measured is NaN/inf/missing ({_fmt(measured)}); published {pub_s}; "
            f"criterion {tol_s}{gen_s}; source {claim.seed_file} {claim.source.split(' ', 1)[-1]}",
            claim.id, use.comparator, which,
        )
    try:
        ok, detail = _apply(use, measured)
    except MeasurementShapeError as exc:
        return Verdict(
            "fail", claim.published, measured, tol_s,
            f"{src} FAIL: measurement unusable for {use.comparator}: {exc}; published {pub_s}; "
            f"criterion {tol_s}; source {claim.seed_file} {claim.source.split(' ', 1)[-1]}",
            claim.id, use.comparator, which,
        )
    status = "pass" if ok else "fail"
    target = _fmt(use.published) if use.comparator not in ("le", "ge", "in_interval", "ratio_ge", "ratio_le", "monotone", "bits_equal") else tol_s
    msg = (
        f"{src} {status.upper()}: published {pub_s} vs measured {_fmt(measured)} "
        f"({detail}); criterion {tol_s}"
        + (f" around {target}" if target != tol_s else "")
        + gen_s
        + f"; source {claim.seed_file} {claim.source.split(' ', 1)[-1]}"
    )
    return Verdict(status, claim.published, measured, tol_s, msg, claim.id, use.comparator, which)


__all__ = ["Verdict", "judge", "MeasurementShapeError"]
