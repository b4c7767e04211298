"""Typed result records: what experiments and claim checks emit, what the report reads.

Like SAEBench's pydantic eval outputs, but stdlib dataclasses: every record validates on construction,
round-trips through JSON exactly (floats are written with ``repr``), carries a ``record_type`` and
``schema_version``, and refuses unknown fields (a typo is an error, not a silently dropped number).

Storage: a record (or a list of records) is a JSON document. The report finds records

- in a results directory: every ``*.json`` file holding a record, a list of records, or
  ``{"records": [...]}``;
- in a :class:`nla_repro.cache.ResultsCache`: every entry whose payload is a record or
  ``{"records": [...]}`` (use :func:`records_payload` to build that payload).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "REQUIRED_CONVENTIONS",
    "STATUSES",
    "REPORTED_STATUSES",
    "UNTESTED_STATUSES",
    "COMPARATORS",
    "ResultValidationError",
    "ExperimentResult",
    "ClaimResult",
    "record_from_dict",
    "records_payload",
    "records_from_payload",
    "dump_records",
    "load_records",
]

SCHEMA_VERSION = 1
REQUIRED_CONVENTIONS = ("denominator", "failure_convention", "decoding", "layer_convention")
# pass/fail: the claim was checked; error: the check crashed; skipped / not_testable: not checked (reason
# required). "skipped" = could run here but did not (no GPU, no checkpoint, engine absent);
# "not_testable" = the claim has no measurable protocol with what was released.
STATUSES = ("pass", "fail", "error", "skipped", "not_testable")
REPORTED_STATUSES = ("pass", "fail", "error")
UNTESTED_STATUSES = ("skipped", "not_testable")
COMPARATORS = ("==", "approx", "<=", ">=", "<", ">", "in_ci", "in_range", "none",
               # the claims registry's comparator names (nla_repro/claims/judge.py)
               "eq_printed", "abs_tol", "rel_tol", "le", "ge", "in_interval", "monotone", "ratio_ge",
               "ratio_le", "bits_equal", "equals", "not_testable")


class ResultValidationError(ValueError):
    """A result record with a missing / mistyped field; the message names record, field, expected, found."""


def _err(record: str, field: str, expected: str, found: Any) -> ResultValidationError:
    return ResultValidationError(f"{record}: field {field!r}: expected {expected}, found {found!r}")


def _jsonable(value: Any, where: str, record: str) -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types; refuse anything else."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _err(record, where, "a numeric array", f"object array {value.shape}")
        return value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _err(record, f"{where}.{k!r}", "str keys", type(k).__name__)
            out[k] = _jsonable(v, f"{where}.{k}", record)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", record) for i, v in enumerate(value)]
    raise _err(record, where, "JSON-able value (number, str, bool, None, list, dict, ndarray)", type(value).__name__)


def _natural(s: str) -> tuple:
    """Sort key where "000 §2" < "000 §10"."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _Record:
    RECORD_TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        d = _jsonable(d, "record", self.RECORD_TYPE)
        d["record_type"] = self.RECORD_TYPE
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self, *, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise _err(name, "<record>", "a JSON object", type(data).__name__)
        data = dict(data)
        rt = data.pop("record_type", cls.RECORD_TYPE)
        if rt != cls.RECORD_TYPE:
            raise _err(name, "record_type", repr(cls.RECORD_TYPE), rt)
        sv = data.pop("schema_version", SCHEMA_VERSION)
        if sv != SCHEMA_VERSION:
            raise _err(name, "schema_version", str(SCHEMA_VERSION), sv)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ResultValidationError(f"{name}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
        missing = sorted(
            n for n, f in fields.items()
            if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ResultValidationError(f"{name}: missing required field(s) {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass
class ExperimentResult(_Record):
    """One experiment run on one pair.

    ``conventions`` must name ``denominator`` (e.g. ``"raw_mean"``, ``"train_rawvar"``),
    ``failure_convention`` (``TRAINING_DROP`` | ``REWARD_CHARGE_2`` | ``CLIENT_RAW``), ``decoding``
    (e.g. ``"greedy"``, ``"temp1.0,top_p1.0"``) and ``layer_convention`` (e.g.
    ``"block K output = hidden_states[K+1]"``). ``figures`` holds the numbers the report draws
    (schemas in :mod:`nla_repro.report`). ``n`` is the number of samples behind the figures.
    """

    RECORD_TYPE: ClassVar[str] = "experiment_result"

    experiment: str
    pair: str
    protocol: dict
    conventions: dict
    figures: dict
    n: int
    provenance: dict

    def __post_init__(self) -> None:
        R = f"ExperimentResult({getattr(self, 'experiment', '?')!r})"
        for f in ("experiment", "pair"):
            v = getattr(self, f)
            if not isinstance(v, str) or not v.strip():
                raise _err(R, f, "a non-empty str", v)
        for f in ("protocol", "conventions", "figures", "provenance"):
            v = getattr(self, f)
            if not isinstance(v, Mapping):
                raise _err(R, f, "a dict", v)
            setattr(self, f, _jsonable(v, f, R))
        for c in REQUIRED_CONVENTIONS:
            v = self.conventions.get(c)
            if not isinstance(v, str) or not v.strip():
                raise _err(R, f"conventions.{c}", "a non-empty str naming the convention", v)
        for k, v in self.figures.items():
            if not (_is_number(v) or isinstance(v, (list, dict))):
                raise _err(R, f"figures.{k}", "float | list | dict", v)
        if isinstance(self.n, (bool, np.bool_)) or not isinstance(self.n, (int, np.integer)) or self.n < 0:
            raise _err(R, "n", "a non-negative int", self.n)
        self.n = int(self.n)

    def sort_key(self) -> tuple:
        return (self.experiment, self.pair, json.dumps(self.protocol, sort_keys=True))


@dataclasses.dataclass
class ClaimResult(_Record):
    """One published claim judged against a measurement.

    ``source`` starts with the seed document number, e.g. ``"000 §1"``; the report groups by it.
    ``published`` is a number, a ``[lo, hi]`` range, a string as worded in the source, or None.
    ``tolerance`` is a number (absolute), ``{"atol":…, "rtol":…}``, a string rationale, or None.
    ``ci`` is ``(lo, hi)`` (e.g. doc-bootstrap CI95) or None. ``status`` is one of :data:`STATUSES`;
    ``pass``/``fail`` need a numeric ``measured``; ``skipped``/``not_testable``/``error`` need a
    ``message`` giving the reason. ``conventions`` (optional extension) names denominator and decoding
    like :class:`ExperimentResult`; ``provenance`` (optional) is an environment fingerprint.
    """

    RECORD_TYPE: ClassVar[str] = "claim_result"

    claim_id: str
    source: str
    pair: str
    published: Any
    measured: Any
    tolerance: Any
    comparator: str
    status: str
    message: str
    ci: tuple | None
    protocol_note: str
    conventions: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        R = f"ClaimResult({getattr(self, 'claim_id', '?')!r})"
        for f in ("claim_id", "source", "pair"):
            v = getattr(self, f)
            if not isinstance(v, str) or not v.strip():
                raise _err(R, f, "a non-empty str", v)
        for f in ("message", "protocol_note"):
            v = getattr(self, f)
            if not isinstance(v, str):
                raise _err(R, f, "a str", v)
        if self.comparator not in COMPARATORS:
            raise _err(R, "comparator", f"one of {COMPARATORS}", self.comparator)
        if self.status not in STATUSES:
            raise _err(R, "status", f"one of {STATUSES}", self.status)
        self.published = _jsonable(self.published, "published", R)
        if not (self.published is None or _is_number(self.published) or isinstance(self.published, str)
                or (isinstance(self.published, list) and len(self.published) == 2
                    and all(_is_number(x) for x in self.published))):
            raise _err(R, "published", "number | [lo, hi] | str | None", self.published)
        self.measured = _jsonable(self.measured, "measured", R)
        if not (self.measured is None or _is_number(self.measured)):
            raise _err(R, "measured", "a number or None", self.measured)
        if isinstance(self.measured, int):
            self.measured = float(self.measured)
        self.tolerance = _jsonable(self.tolerance, "tolerance", R)
        if isinstance(self.tolerance, dict):
            bad = sorted(k for k, v in self.tolerance.items() if k not in ("atol", "rtol") or not _is_number(v))
            if bad:
                raise _err(R, "tolerance", "{'atol': number, 'rtol': number}", self.tolerance)
        elif not (self.tolerance is None or _is_number(self.tolerance) or isinstance(self.tolerance, str)):
            raise _err(R, "tolerance", "number | {'atol','rtol'} | str | None", self.tolerance)
        if self.ci is not None:
            ci = _jsonable(self.ci, "ci", R)
            if not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(x) for x in ci)):
                raise _err(R, "ci", "(lo, hi) of numbers or None", self.ci)
            lo, hi = float(ci[0]), float(ci[1])
            if not (lo <= hi):
                raise _err(R, "ci", "lo <= hi", self.ci)
            self.ci = (lo, hi)
        if self.status in ("pass", "fail"):
            if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
                raise _err(R, "measured", f"a number for status {self.status!r}", self.measured)
        else:
            if not self.message.strip():
                raise _err(R, "message", f"a reason for status {self.status!r}", self.message)
        for f in ("conventions", "provenance"):
            v = getattr(self, f)
            if not isinstance(v, Mapping):
                raise _err(R, f, "a dict", v)
            setattr(self, f, _jsonable(v, f, R))

    @property
    def seed(self) -> str | None:
        """Leading seed-document number of ``source`` ("000 §1" -> "000"), or None."""
        head = self.source.strip().split()[0] if self.source.strip() else ""
        head = head.rstrip(":,;§")
        return head if head.isdigit() else None

    def sort_key(self) -> tuple:
        return (_natural(self.source), self.claim_id, self.pair, self.protocol_note,
                json.dumps(self.to_dict(), sort_keys=True))


_TYPES = {ExperimentResult.RECORD_TYPE: ExperimentResult, ClaimResult.RECORD_TYPE: ClaimResult}
Record = ExperimentResult | ClaimResult


def record_from_dict(d: Mapping[str, Any]) -> Record:
    """Build the record named by ``d["record_type"]``."""
    rt = d.get("record_type") if isinstance(d, Mapping) else None
    if rt not in _TYPES:
        raise ResultValidationError(f"record: field 'record_type': expected one of {sorted(_TYPES)}, found {rt!r}")
    return _TYPES[rt].from_dict(d)


def records_payload(records: Iterable[Record]) -> dict[str, Any]:
    """Cache payload holding records: ``{"records": [record dicts, sorted]}``."""
    recs = sorted(records, key=lambda r: (r.RECORD_TYPE, r.sort_key()))
    return {"records": [r.to_dict() for r in recs]}


def records_from_payload(payload: Any) -> list[Record]:
    """Records inside a payload (a record dict, a list, or ``{"records": [...]}``); [] if it holds none."""
    if isinstance(payload, list):
        return [record_from_dict(d) for d in payload]
    if isinstance(payload, Mapping):
        if "record_type" in payload:
            return [record_from_dict(payload)]
        if isinstance(payload.get("records"), list):
            return [record_from_dict(d) for d in payload["records"]]
    return []


def dump_records(path: str | os.PathLike, records: Iterable[Record]) -> Path:
    """Write records to ``path`` as ``{"records": [...]}`` (sorted, atomic replace)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(records_payload(records), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def load_records(path: str | os.PathLike) -> list[Record]:
    """Records from a JSON file, or from every ``*.json`` under a directory (sorted walk). A JSON file that
    does not parse or holds an invalid record raises, naming the file."""
    p = Path(path)
    files = sorted(q for q in p.rglob("*.json") if q.is_file()) if p.is_dir() else [p]
    out: list[Record] = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            out.extend(records_from_payload(data))
        except (ValueError, ResultValidationError) as e:
            raise ResultValidationError(f"{f}: {e}") from e
    return out
