"""Golden snapshots with stated float tolerances: a syrupy extension for the top-level ``golden/`` folder.

Why not plain syrupy: its built-in extensions compare serialized *strings*, so a float that moves in its
last bit is a failure and a float that moves by 10 % is "just another diff line". Here every snapshot is a
JSON file whose header states the comparison rule, and the comparator walks the two trees:

* ints, bools, strings, ``None``, mapping keys, list lengths, array dtypes and shapes: **exact**;
* floats (Python, numpy scalars, elements of float arrays): ``|found - expected| <= atol + rtol*|expected|``
  with the snapshot's :class:`Tolerance` (a default plus optional per-path overrides, fnmatch patterns on
  the index-free path such as ``$.llama.pred_norms``);
* NaN / +-inf: must match in kind.

Serialization rounds each float to the coarsest power of ten that keeps the rounding error at or below 1 %
of that value's own tolerance (values with zero tolerance are written with full ``repr`` precision), so the
files stay readable and a re-generated file does not churn in the last digits.

The tolerance is part of the file (``comparison`` header) and is itself compared exactly: loosening a
tolerance in code is a visible change to the golden file, not a silent one.

A mismatch reported by pytest names every offending path with expected, found and the tolerance used.

This module imports only the standard library, numpy and syrupy (no torch), so it can be loaded alone.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, ClassVar

import numpy as np
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

__all__ = [
    "GOLDEN_DIR",
    "FORMAT",
    "Tolerance",
    "ToleranceSpec",
    "EXACT",
    "Mismatch",
    "GoldenFormatError",
    "to_golden",
    "compare",
    "GoldenExtension",
    "golden_extension",
]

#: Top-level folder of the repository that holds every golden snapshot.
GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
FORMAT = "nla-repro-golden/1"
RULE = ("|found - expected| <= atol + rtol*|expected| for floats; ints, bools, strings, null, keys, "
        "lengths, dtypes and shapes exact; NaN/inf must match in kind")
ROUNDING = "each float rounded to the coarsest power of ten keeping the rounding error <= 1% of its tolerance"
_ROUNDING_SHARE = 0.01

_NDARRAY = "__ndarray__"
_NONFINITE = "__float__"


class GoldenFormatError(ValueError):
    """A golden file (or a value being serialized) does not follow the golden format."""


# --------------------------------------------------------------------------- tolerances

@dataclass(frozen=True)
class Tolerance:
    """``|found - expected| <= atol + rtol*|expected|`` (numpy.isclose with the expected side as reference)."""

    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"Tolerance.{name}: expected a finite number >= 0, found {v!r}")

    def bound(self, expected: float) -> float:
        return self.atol + self.rtol * abs(expected)

    def allows(self, expected: float, found: float) -> bool:
        return abs(found - expected) <= self.bound(expected)

    def as_dict(self) -> dict:
        return {"rtol": float(self.rtol), "atol": float(self.atol)}

    def __str__(self) -> str:
        if self.rtol == 0 and self.atol == 0:
            return "exact"
        return f"atol={self.atol:g} + rtol={self.rtol:g}*|expected|"

    def round(self, x: float) -> float:
        """``x`` rounded so that the rounding error is <= 1 % of its tolerance (exact if tolerance is 0)."""
        t = self.bound(x)
        if t == 0.0 or x == 0.0:
            return x
        exponent = math.floor(math.log10(2 * _ROUNDING_SHARE * t))  # error <= 10**e / 2 <= 1% of t
        return round(x, -exponent)


EXACT = Tolerance()


@dataclass(frozen=True)
class ToleranceSpec:
    """A default tolerance plus per-path overrides (first matching fnmatch pattern wins).

    Patterns match the path with list/array indices removed, e.g. ``$.llama.scores`` for
    ``$.llama.scores[2]``; ``*.scores`` matches that path at any depth.
    """

    default: Tolerance = EXACT
    per_path: tuple[tuple[str, Tolerance], ...] = ()

    def for_path(self, path: str) -> Tolerance:
        bare = _strip_indices(path)
        for pattern, tol in self.per_path:
            if fnmatch.fnmatchcase(bare, pattern):
                return tol
        return self.default

    def header(self) -> dict:
        return {
            "rule": RULE,
            "rounding": ROUNDING,
            "default": self.default.as_dict(),
            "per_path": {p: t.as_dict() for p, t in self.per_path},
        }


_INDEX_RE = re.compile(r"\[\d+\]")


def _strip_indices(path: str) -> str:
    return _INDEX_RE.sub("", path)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{path}[{json.dumps(key)}]"


# --------------------------------------------------------------------------- serialization

def _float_node(x: float, tol: Tolerance):
    if math.isnan(x):
        return {_NONFINITE: "nan"}
    if math.isinf(x):
        return {_NONFINITE: "inf" if x > 0 else "-inf"}
    return float(tol.round(float(x)))


def _array_node(a: np.ndarray, path: str, spec: ToleranceSpec) -> dict:
    kind = a.dtype.kind
    if kind == "f":
        tol = spec.for_path(path)
        data = _nested(a.astype(np.float64), lambda v: _float_node(float(v), tol))
    elif kind in "iu":
        data = a.astype(np.int64).tolist()
    elif kind == "b":
        data = a.tolist()
    else:
        raise GoldenFormatError(f"{path}: cannot snapshot a numpy array of dtype {a.dtype} "
                                "(supported: float, int, uint, bool)")
    return {_NDARRAY: {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}}


def _nested(a: np.ndarray, leaf):
    if a.ndim == 0:
        return leaf(a[()])
    return [_nested(row, leaf) if a.ndim > 1 else leaf(row) for row in a]


def to_golden(data: Any, spec: ToleranceSpec = ToleranceSpec(), path: str = "$") -> Any:
    """A JSON-able tree of ``data`` with floats rounded per ``spec``.

    Supported: None, bool, int, float, str, numpy scalars and arrays, torch tensors (via ``.detach()``),
    mappings with str keys (keys sorted), lists/tuples, sets/frozensets (sorted), dataclass instances
    (as a mapping of their fields), enums (their value). Anything else (including filesystem paths, which
    differ between machines) raises :class:`GoldenFormatError` naming the path.
    """
    if data is None or isinstance(data, (bool, np.bool_)):
        return None if data is None else bool(data)
    if isinstance(data, (int, np.integer)):
        return int(data)
    if isinstance(data, (float, np.floating)):
        return _float_node(float(data), spec.for_path(path))
    if isinstance(data, str):
        return data
    if isinstance(data, enum.Enum):
        return to_golden(data.value, spec, path)
    if isinstance(data, PurePath):
        raise GoldenFormatError(f"{path}: filesystem path {str(data)!r} is machine-specific; "
                                "snapshot a name or a content hash instead")
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # torch.Tensor, without importing torch
        t = data.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return _array_node(t.numpy(), path, spec)
    if isinstance(data, np.ndarray):
        return _array_node(data, path, spec)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if isinstance(data, Mapping):
        out = {}
        for k in sorted(data, key=str):
            if not isinstance(k, str):
                raise GoldenFormatError(f"{path}: mapping keys must be str, found {type(k).__name__} {k!r}")
            if k in (_NDARRAY, _NONFINITE):
                raise GoldenFormatError(f"{path}: key {k!r} is reserved by the golden format")
            out[k] = to_golden(data[k], spec, _child(path, k))
        return out
    if isinstance(data, (set, frozenset)):
        data = sorted(data, key=repr)
    if isinstance(data, (list, tuple)):
        return [to_golden(v, spec, f"{path}[{i}]") for i, v in enumerate(data)]
    raise GoldenFormatError(f"{path}: cannot snapshot a value of type {type(data).__name__}")


def dumps(data: Any, spec: ToleranceSpec) -> str:
    doc = {"golden_format": FORMAT, "comparison": spec.header(), "data": to_golden(data, spec)}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def loads(text: str, what: str = "snapshot") -> dict:
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        raise GoldenFormatError(f"{what}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("golden_format") != FORMAT or "data" not in doc:
        raise GoldenFormatError(f"{what}: not a {FORMAT} document (expected keys golden_format, comparison, "
                                "data); regenerate it with --snapshot-update")
    return doc


# --------------------------------------------------------------------------- comparison

@dataclass(frozen=True)
class Mismatch:
    path: str
    expected: Any
    found: Any
    problem: str
    tolerance: Tolerance | None = None

    def __str__(self) -> str:
        s = f"{self.path}: {self.problem}: expected {_show(self.expected)}, found {_show(self.found)}"
        if self.tolerance is not None:
            s += f", tolerance {self.tolerance}"
            if isinstance(self.expected, float) and isinstance(self.found, float):
                s += (f" (|diff| = {abs(self.found - self.expected):.3g} > allowed "
                      f"{self.tolerance.bound(self.expected):.3g})")
        return s


def _show(v: Any) -> str:
    if isinstance(v, dict) and _NONFINITE in v:
        return str(v[_NONFINITE])
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, float) else repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        if _NONFINITE in v:
            return "float"
        return "array" if _NDARRAY in v else "mapping"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list"}.get(type(v), type(v).__name__)


def compare(expected: Any, found: Any, spec: ToleranceSpec = ToleranceSpec(), path: str = "$") -> list[Mismatch]:
    """All differences between two golden trees (as produced by :func:`to_golden`), floats with tolerance."""
    out: list[Mismatch] = []
    _cmp(expected, found, spec, path, out)
    return out


def _cmp(e: Any, f: Any, spec: ToleranceSpec, path: str, out: list[Mismatch]) -> None:
    ke, kf = _kind(e), _kind(f)
    if ke != kf:
        out.append(Mismatch(path, e, f, f"type changed ({ke} -> {kf})"))
        return
    if ke == "float":
        nfe = e[_NONFINITE] if isinstance(e, dict) else None
        nff = f[_NONFINITE] if isinstance(f, dict) else None
        if nfe is not None or nff is not None:
            if nfe != nff:
                out.append(Mismatch(path, e, f, "non-finite value differs"))
            return
        tol = spec.for_path(path)
        if not tol.allows(e, f):
            out.append(Mismatch(path, e, f, "float outside tolerance", tol))
        return
    if ke == "array":
        ae, af = e[_NDARRAY], f[_NDARRAY]
        for key in ("dtype", "shape"):
            if ae.get(key) != af.get(key):
                out.append(Mismatch(f"{path}.{key}", ae.get(key), af.get(key), f"array {key} changed"))
                return
        _cmp(ae.get("data"), af.get("data"), spec, path, out)
        return
    if ke == "mapping":
        for k in sorted(set(e) | set(f)):
            p = _child(path, k)
            if k not in f:
                out.append(Mismatch(p, e[k], "<absent>", "key missing"))
            elif k not in e:
                out.append(Mismatch(p, "<absent>", f[k], "unexpected new key"))
            else:
                _cmp(e[k], f[k], spec, p, out)
        return
    if ke == "list":
        if len(e) != len(f):
            out.append(Mismatch(path, e, f, f"length changed ({len(e)} -> {len(f)})"))
            return
        for i, (a, b) in enumerate(zip(e, f)):
            _cmp(a, b, spec, f"{path}[{i}]", out)
        return
    if e != f:  # int, bool, str, null: exact
        out.append(Mismatch(path, e, f, f"{ke} differs (compared exactly)"))


def compare_serialized(snapshot_text: str, found_text: str, spec: ToleranceSpec) -> list[Mismatch]:
    """Mismatches between a stored golden file and freshly serialized data (both as text)."""
    exp = loads(snapshot_text, "stored golden snapshot")
    got = loads(found_text, "serialized data")
    out: list[Mismatch] = []
    if exp.get("comparison") != got.get("comparison"):
        out.append(Mismatch("<comparison header>", exp.get("comparison"), got.get("comparison"),
                            "stated tolerance changed (update the golden file deliberately)"))
    out.extend(compare(exp["data"], got["data"], spec))
    return out


# --------------------------------------------------------------------------- syrupy extension

class GoldenExtension(SingleFileSnapshotExtension):
    """One JSON file per snapshot under ``golden/<test file basename>/<test name>.json``.

    Subclass (or use :func:`golden_extension`) to set ``spec`` / ``golden_root``; syrupy instantiates
    extension classes without arguments, so configuration lives on the class.
    """

    file_extension = "json"
    _write_mode = WriteMode.TEXT
    spec: ClassVar[ToleranceSpec] = ToleranceSpec()
    golden_root: ClassVar[Path] = GOLDEN_DIR
    max_reported: ClassVar[int] = 40

    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(Path(cls.golden_root) / test_location.basename)

    def serialize(self, data, *, exclude=None, include=None, matcher=None) -> str:
        # syrupy always passes its own matcher (it only rewrites nested SnapshotAssertion objects, which
        # golden data never contains); exclude/include would silently hide data, so they are refused.
        if exclude is not None or include is not None:
            raise GoldenFormatError("golden snapshots do not support exclude/include: snapshot exactly "
                                    "the data you mean; tolerances come from the extension's spec")
        return dumps(data, self.spec)

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        try:
            return not compare_serialized(snapshot_data, serialized_data, self.spec)
        except GoldenFormatError:
            return False

    def mismatches(self, serialized_data: str, snapshot_data: str) -> list[Mismatch]:
        return compare_serialized(snapshot_data, serialized_data, self.spec)

    def diff_lines(self, serialized_data, snapshot_data) -> Iterator[str]:
        if not snapshot_data:
            yield "no stored golden snapshot: run pytest with --snapshot-update to create it, then review it"
            return
        try:
            found = self.mismatches(serialized_data, snapshot_data)
        except GoldenFormatError as e:
            yield f"golden format error: {e}"
            yield from super().diff_lines(serialized_data, snapshot_data)
            return
        yield (f"golden snapshot drifted: {len(found)} difference(s); rule: {RULE}; "
               f"default tolerance {self.spec.default}"
               + (f", per-path {', '.join(f'{p}: {t}' for p, t in self.spec.per_path)}" if self.spec.per_path
                  else ""))
        for m in found[: self.max_reported]:
            yield "  " + str(m)
        if len(found) > self.max_reported:
            yield f"  ... and {len(found) - self.max_reported} more"


def golden_extension(rtol: float = 0.0, atol: float = 0.0, per_path: Mapping[str, Tolerance] | None = None,
                     *, root: Path | str | None = None) -> type[GoldenExtension]:
    """A :class:`GoldenExtension` subclass with the stated tolerance, for ``snapshot.use_extension(...)``."""
    spec = ToleranceSpec(Tolerance(rtol=rtol, atol=atol), tuple((per_path or {}).items()))
    attrs: dict[str, Any] = {"spec": spec}
    if root is not None:
        attrs["golden_root"] = Path(root)
    name = f"GoldenExtension_rtol{rtol:g}_atol{atol:g}".replace(".", "p").replace("-", "m")
    return type(name, (GoldenExtension,), attrs)
