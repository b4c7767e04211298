"""Typed loading and validation of the published-claims registry.

The registry is data: one YAML file per source document under
``nla_repro/claims/data/`` (``s000.yaml`` ... ``s004.yaml`` for the five seed
documents, ``recipe.yaml`` for the recipe's §0 table and §7.1 list).

File layout::

    seed: "000"                      # short code; every claim id starts "s000-"
    seed_file: 000_882cf792d18d2b7b.txt
    title: ...
    protocols:                       # named protocols, referenced by claims
      ufw1000: {eval_set: ..., decoding: ..., denominator: ...}
    groups:                          # optional: shared fields for a block of claims
      - common: {experiment: redaction, scope: [gemma3-27b-L41], ...}
        claims: [ {...}, {...} ]
    claims: [ {...} ]                # claims without shared fields

A claim's ``protocol`` is either the name of an entry in ``protocols``, an inline
mapping, or a mapping ``{use: <name>, <key>: <override>, ...}``.

Every entry is validated after merging; a problem raises ``ClaimRegistryError``
naming the file, the claim id and the field, with expected vs found.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import yaml

DATA_DIR = Path(__file__).with_name("data")

RELEASED_PAIRS: tuple[str, ...] = (
    "qwen2.5-7b-L20",
    "gemma3-12b-L32",
    "gemma3-27b-L41",
    "llama3.3-70b-L53",
)

EXPERIMENTS: frozenset[str] = frozenset(
    {
        "corroboration",
        "variance_baseline",
        "greedy_reproducibility",
        "quote_ban",
        "verbatim",
        "redaction",
        "best_of_n",
        "adjacent_layers",
        "cross_family",
        "ridge_baseline",
        "two_tier_controls",
        "paragraph_ablation",
        "token_type_buckets",
        "recipe_constants",
        "worked_examples",
    }
)

#: comparator -> extra fields it requires (besides ``published``)
COMPARATOR_FIELDS: dict[str, tuple[str, ...]] = {
    "eq_printed": (),  # tolerance derived from the printed digits of ``published``
    "abs_tol": ("tolerance",),
    "rel_tol": ("tolerance",),
    "le": ("bound",),
    "ge": ("bound",),
    "in_interval": ("interval",),
    "monotone": ("direction",),
    "ratio_ge": ("bound",),
    "ratio_le": ("bound",),
    "bits_equal": (),
    "equals": (),
    "not_testable": ("reason",),
}
COMPARATORS: frozenset[str] = frozenset(COMPARATOR_FIELDS)

REQUIRED_FIELDS: tuple[str, ...] = (
    "id",
    "source",
    "quote",
    "metric",
    "published",
    "comparator",
    "scope",
    "experiment",
    "figure",
    "protocol",
)
OPTIONAL_FIELDS: frozenset[str] = frozenset(
    {
        "tolerance",
        "tolerance_rationale",
        "bound",
        "interval",
        "direction",
        "strict",
        "reason",
        "generalised",
        "published_on",
        "av_pair",
        "ar_pair",
        "same_as",
        "note",
    }
)
ALLOWED_FIELDS: frozenset[str] = frozenset(REQUIRED_FIELDS) | OPTIONAL_FIELDS
PROTOCOL_REQUIRED: tuple[str, ...] = ("eval_set", "decoding")
FILE_KEYS: frozenset[str] = frozenset({"seed", "seed_file", "title", "protocols", "groups", "claims"})

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CACHE: dict[tuple, list] = {}

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
_NUMERIC_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")
MAX_QUOTE_WORDS = 25


class ClaimRegistryError(ValueError):
    """A registry entry is malformed. The message names file, claim id and field."""

    def __init__(self, file: str | Path, claim_id: str | None, field_name: str, problem: str):
        self.file = str(file)
        self.claim_id = claim_id
        self.field = field_name
        self.problem = problem
        cid = claim_id if claim_id is not None else "<no id>"
        super().__init__(f"{self.file}: claim {cid!r}: field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Form:
    """One way of judging a claim: a comparator plus its parameters.

    ``published`` is the value the comparator compares against (for ``le``/``ge``
    the bound is ``bound``; ``published`` is kept only for the report).
    ``printed`` keeps the digits exactly as printed (for ``eq_printed``).
    """

    comparator: str
    published: Any = None
    printed: str | None = None
    tolerance: float | None = None
    bound: float | None = None
    interval: tuple[float, float] | None = None
    direction: str | None = None
    strict: bool = False

    def describe_tolerance(self) -> str:
        c = self.comparator
        if c == "eq_printed":
            return f"|delta| <= {printed_half_unit(self.printed or '0'):g} (half a unit in the last printed place of {self.printed})"
        if c == "abs_tol":
            return f"|delta| <= {self.tolerance:g}"
        if c == "rel_tol":
            return f"|delta| <= {self.tolerance:g} x |published|"
        if c in ("le", "ratio_le"):
            return f"{'ratio' if c == 'ratio_le' else 'value'} <= {self.bound:g}"
        if c in ("ge", "ratio_ge"):
            return f"{'ratio' if c == 'ratio_ge' else 'value'} >= {self.bound:g}"
        if c == "in_interval":
            lo, hi = self.interval  # type: ignore[misc]
            return f"value in [{lo:g}, {hi:g}]"
        if c == "monotone":
            slack = f", slack {self.tolerance:g}" if self.tolerance else ""
            return f"{'strictly ' if self.strict else ''}{self.direction}{slack}"
        if c == "bits_equal":
            return "identical bits across runs"
        if c == "equals":
            return "exact equality"
        return "n/a"


@dataclass(frozen=True)
class Claim:
    id: str
    seed: str
    seed_file: str
    file: str
    source: str
    quote: str
    metric: str
    published: Any
    comparator: str
    scope: str | tuple[str, ...]  # "any_pair" or a tuple of released pair names
    experiment: str
    figure: str
    protocol: Mapping[str, Any]
    form: Form
    tolerance_rationale: str | None = None
    reason: str | None = None
    generalised: Form | None = None
    published_on: tuple[str, ...] = ()
    av_pair: str | None = None
    ar_pair: str | None = None
    same_as: str | None = None
    note: str | None = None

    @property
    def testable(self) -> bool:
        return self.comparator != "not_testable"

    @property
    def any_pair(self) -> bool:
        return self.scope == "any_pair"

    @property
    def tolerance(self) -> float | None:
        if self.form.comparator == "eq_printed":
            return printed_half_unit(self.form.printed or "0")
        return self.form.tolerance

    def pairs(self) -> tuple[str, ...]:
        return () if self.any_pair else tuple(self.scope)  # type: ignore[arg-type]


def printed_half_unit(printed: str) -> float:
    """Half a unit in the last printed place: '0.0575' -> 0.00005, '975' -> 0.5."""
    s = printed.strip().lstrip("+-")
    if "." in s:
        return 0.5 * 10.0 ** (-len(s.split(".", 1)[1]))
    return 0.5


# ----------------------------------------------------------------------------- validation helpers


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _check_number(x: Any, file: Path, cid: str | None, fname: str, *, positive: bool = False) -> float:
    if not _is_number(x):
        raise ClaimRegistryError(file, cid, fname, f"expected a finite number, found {x!r}")
    if positive and float(x) <= 0:
        raise ClaimRegistryError(file, cid, fname, f"expected a number > 0, found {x!r}")
    return float(x)


def _published_has_numbers(x: Any) -> bool:
    if _is_number(x):
        return True
    if isinstance(x, (list, tuple)):
        return any(_published_has_numbers(v) for v in x)
    if isinstance(x, Mapping):
        return any(_published_has_numbers(v) for v in x.values())
    return False


def _build_form(
    d: Mapping[str, Any], file: Path, cid: str | None, *, prefix: str = "", published: Any = None
) -> Form:
    """Validate the comparator-specific fields in ``d`` and build a Form."""
    comp = d.get("comparator")
    if comp not in COMPARATORS:
        raise ClaimRegistryError(
            file, cid, prefix + "comparator", f"expected one of {sorted(COMPARATORS)}, found {comp!r}"
        )
    for need in COMPARATOR_FIELDS[comp]:
        if d.get(need) is None:
            raise ClaimRegistryError(
                file, cid, prefix + need, f"comparator {comp!r} requires field {need!r}, found it missing"
            )
    printed: str | None = None
    pub = published
    tol = d.get("tolerance")
    if tol is not None:
        tol = _check_number(tol, file, cid, prefix + "tolerance")
        if tol < 0:
            raise ClaimRegistryError(file, cid, prefix + "tolerance", f"expected >= 0, found {tol!r}")
    if comp in ("abs_tol", "rel_tol"):
        _check_number(tol, file, cid, prefix + "tolerance", positive=True)
        if not _published_has_numbers(pub):
            raise ClaimRegistryError(
                file, cid, prefix + "published", f"comparator {comp!r} needs a numeric published value, found {pub!r}"
            )
    if comp == "eq_printed":
        if not isinstance(pub, str) or not _NUMERIC_RE.match(pub.strip()):
            raise ClaimRegistryError(
                file,
                cid,
                prefix + "published",
                "comparator 'eq_printed' needs the number as a quoted string with its printed digits "
                f"(e.g. \"0.880\"), found {pub!r}",
            )
        printed = pub.strip()
        pub = float(printed)
    bound = d.get("bound")
    if bound is not None:
        bound = _check_number(bound, file, cid, prefix + "bound")
    interval = d.get("interval")
    if interval is not None:
        if (
            not isinstance(interval, (list, tuple))
            or len(interval) != 2
            or not all(_is_number(v) for v in interval)
            or float(interval[0]) > float(interval[1])
        ):
            raise ClaimRegistryError(
                file, cid, prefix + "interval", f"expected [lo, hi] numbers with lo <= hi, found {interval!r}"
            )
        interval = (float(interval[0]), float(interval[1]))
    direction = d.get("direction")
    if comp == "monotone" and direction not in ("increasing", "decreasing"):
        raise ClaimRegistryError(
            file, cid, prefix + "direction", f"expected 'increasing' or 'decreasing', found {direction!r}"
        )
    strict = d.get("strict", False)
    if not isinstance(strict, bool):
        raise ClaimRegistryError(file, cid, prefix + "strict", f"expected true/false, found {strict!r}")
    if comp == "not_testable":
        reason = d.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ClaimRegistryError(file, cid, prefix + "reason", f"expected a non-empty string, found {reason!r}")
    return Form(
        comparator=comp,
        published=pub,
        printed=printed,
        tolerance=tol,
        bound=bound,
        interval=interval,
        direction=direction,
        strict=strict,
    )


def _resolve_protocol(raw: Any, named: Mapping[str, Any], file: Path, cid: str) -> dict[str, Any]:
    if isinstance(raw, str):
        if raw not in named:
            raise ClaimRegistryError(
                file, cid, "protocol", f"expected a protocol name among {sorted(named)}, found {raw!r}"
            )
        proto = dict(named[raw])
        proto.setdefault("name", raw)
    elif isinstance(raw, Mapping):
        proto = dict(raw)
        use = proto.pop("use", None)
        if use is not None:
            if use not in named:
                raise ClaimRegistryError(
                    file, cid, "protocol.use", f"expected a protocol name among {sorted(named)}, found {use!r}"
                )
            base = dict(named[use])
            base.setdefault("name", use)
            base.update(proto)
            proto = base
    else:
        raise ClaimRegistryError(file, cid, "protocol", f"expected a name or a mapping, found {raw!r}")
    for k in PROTOCOL_REQUIRED:
        if not proto.get(k):
            raise ClaimRegistryError(file, cid, f"protocol.{k}", f"expected a non-empty value, found {proto.get(k)!r}")
    return proto


def _validate_entry(
    e: Mapping[str, Any], file: Path, seed: str, seed_file: str, named_protocols: Mapping[str, Any]
) -> Claim:
    cid = e.get("id")
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        raise ClaimRegistryError(file, cid if isinstance(cid, str) else None, "id", f"expected a lowercase slug, found {cid!r}")
    prefix = f"s{seed}-" if seed != "recipe" else "recipe-"
    if not cid.startswith(prefix):
        raise ClaimRegistryError(file, cid, "id", f"expected an id starting with {prefix!r} in this file, found {cid!r}")
    unknown = sorted(set(e) - ALLOWED_FIELDS)
    if unknown:
        raise ClaimRegistryError(file, cid, unknown[0], f"unknown field; allowed fields are {sorted(ALLOWED_FIELDS)}")
    for f in REQUIRED_FIELDS:
        if f not in e:
            raise ClaimRegistryError(file, cid, f, "required field is missing")
    for f in ("source", "quote", "metric", "figure"):
        if not isinstance(e[f], str) or not e[f].strip():
            raise ClaimRegistryError(file, cid, f, f"expected a non-empty string, found {e[f]!r}")
    if not e["source"].startswith(seed):
        raise ClaimRegistryError(
            file, cid, "source", f"expected a source starting with {seed!r} (e.g. '{seed} §1'), found {e['source']!r}"
        )
    nwords = len(e["quote"].split())
    if nwords > MAX_QUOTE_WORDS:
        raise ClaimRegistryError(file, cid, "quote", f"expected <= {MAX_QUOTE_WORDS} words, found {nwords}")
    if e["experiment"] not in EXPERIMENTS:
        raise ClaimRegistryError(
            file, cid, "experiment", f"expected one of {sorted(EXPERIMENTS)}, found {e['experiment']!r}"
        )

    # scope
    scope_raw = e["scope"]
    if scope_raw == "any_pair":
        scope: str | tuple[str, ...] = "any_pair"
    elif isinstance(scope_raw, (list, tuple)) and scope_raw and all(p in RELEASED_PAIRS for p in scope_raw):
        if len(set(scope_raw)) != len(scope_raw):
            raise ClaimRegistryError(file, cid, "scope", f"expected distinct pair names, found {scope_raw!r}")
        scope = tuple(scope_raw)
    else:
        raise ClaimRegistryError(
            file, cid, "scope", f"expected 'any_pair' or a non-empty list of {list(RELEASED_PAIRS)}, found {scope_raw!r}"
        )
    av, ar = e.get("av_pair"), e.get("ar_pair")
    if (av is None) != (ar is None):
        raise ClaimRegistryError(
            file, cid, "ar_pair" if ar is None else "av_pair", "cross-family cells need both av_pair and ar_pair"
        )
    if av is not None:
        for fname, v in (("av_pair", av), ("ar_pair", ar)):
            if v not in RELEASED_PAIRS:
                raise ClaimRegistryError(file, cid, fname, f"expected one of {list(RELEASED_PAIRS)}, found {v!r}")
            if scope == "any_pair" or v not in scope:
                raise ClaimRegistryError(file, cid, fname, f"{v!r} must also be listed in scope, found scope {scope!r}")

    form = _build_form(e, file, cid, published=e["published"])
    comp = form.comparator
    rationale = e.get("tolerance_rationale")
    if comp != "not_testable" and (not isinstance(rationale, str) or not rationale.strip()):
        raise ClaimRegistryError(
            file, cid, "tolerance_rationale", "testable claims need a tolerance_rationale (why this tolerance)"
        )
    # ``published`` may be null only where the claim is an ordering/bound read off a figure
    # (le/ge/ratio/monotone/in_interval carry the claim in bound/interval/direction) or untestable.
    if comp in ("eq_printed", "abs_tol", "rel_tol", "equals", "bits_equal") and e["published"] is None:
        raise ClaimRegistryError(file, cid, "published", f"comparator {comp!r} needs a published value, found null")

    generalised = None
    published_on: tuple[str, ...] = ()
    if scope == "any_pair":
        po = e.get("published_on")
        if not isinstance(po, (list, tuple)) or not po or not all(p in RELEASED_PAIRS for p in po):
            raise ClaimRegistryError(
                file, cid, "published_on",
                f"any_pair claims name the released pair(s) the number came from, a list of {list(RELEASED_PAIRS)}; found {po!r}",
            )
        published_on = tuple(po)
        g = e.get("generalised")
        if comp != "not_testable":
            if not isinstance(g, Mapping):
                raise ClaimRegistryError(
                    file, cid, "generalised",
                    f"any_pair claims need a generalised form (mapping with a comparator), found {g!r}",
                )
            gd = dict(g)
            gpub = gd.pop("published", e["published"])
            generalised = _build_form(gd, file, cid, prefix="generalised.", published=gpub)
            if generalised.comparator == "not_testable":
                raise ClaimRegistryError(file, cid, "generalised.comparator", "a generalised form must be testable")
    elif e.get("generalised") is not None:
        raise ClaimRegistryError(file, cid, "generalised", "only any_pair claims carry a generalised form")

    protocol = _resolve_protocol(e["protocol"], named_protocols, file, cid)
    same_as = e.get("same_as")
    if same_as is not None and not isinstance(same_as, str):
        raise ClaimRegistryError(file, cid, "same_as", f"expected a claim id, found {same_as!r}")

    return Claim(
        id=cid,
        seed=seed,
        seed_file=seed_file,
        file=str(file),
        source=e["source"],
        quote=e["quote"].strip(),
        metric=e["metric"],
        published=form.published if comp == "eq_printed" else e["published"],
        comparator=comp,
        scope=scope,
        experiment=e["experiment"],
        figure=e["figure"],
        protocol=MappingProxyType(protocol),
        form=form,
        tolerance_rationale=rationale,
        reason=e.get("reason"),
        generalised=generalised,
        published_on=published_on,
        av_pair=av,
        ar_pair=ar,
        same_as=same_as,
        note=e.get("note"),
    )


def load_claim_file(path: str | Path) -> list[Claim]:
    """Load and validate one registry file."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ClaimRegistryError(path, None, "<yaml>", f"not parseable YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ClaimRegistryError(path, None, "<file>", f"expected a mapping at top level, found {type(doc).__name__}")
    unknown = sorted(set(doc) - FILE_KEYS)
    if unknown:
        raise ClaimRegistryError(path, None, unknown[0], f"unknown top-level key; allowed {sorted(FILE_KEYS)}")
    seed = doc.get("seed")
    if not isinstance(seed, str) or not (re.fullmatch(r"\d{3}", seed) or seed == "recipe"):
        raise ClaimRegistryError(path, None, "seed", f"expected a 3-digit string like \"000\" or \"recipe\", found {seed!r}")
    seed_file = doc.get("seed_file")
    if not isinstance(seed_file, str) or not seed_file:
        raise ClaimRegistryError(path, None, "seed_file", f"expected the source file name, found {seed_file!r}")
    protocols = doc.get("protocols") or {}
    if not isinstance(protocols, Mapping) or not all(isinstance(v, Mapping) for v in protocols.values()):
        raise ClaimRegistryError(path, None, "protocols", "expected a mapping of name -> mapping")

    entries: list[Mapping[str, Any]] = []
    for gi, group in enumerate(doc.get("groups") or []):
        if not isinstance(group, Mapping) or not isinstance(group.get("claims"), list):
            raise ClaimRegistryError(path, None, f"groups[{gi}]", "expected a mapping with a 'claims' list")
        common = group.get("common") or {}
        if not isinstance(common, Mapping):
            raise ClaimRegistryError(path, None, f"groups[{gi}].common", "expected a mapping")
        for c in group["claims"]:
            if not isinstance(c, Mapping):
                raise ClaimRegistryError(path, None, f"groups[{gi}].claims", f"expected mappings, found {c!r}")
            merged = dict(common)
            merged.update(c)
            entries.append(merged)
    top = doc.get("claims") or []
    if not isinstance(top, list):
        raise ClaimRegistryError(path, None, "claims", "expected a list")
    for c in top:
        if not isinstance(c, Mapping):
            raise ClaimRegistryError(path, None, "claims", f"expected mappings, found {c!r}")
        entries.append(c)
    if not entries:
        raise ClaimRegistryError(path, None, "claims", "file contributes no claims")

    claims = [_validate_entry(e, path, seed, seed_file, protocols) for e in entries]
    dup = [k for k, n in Counter(c.id for c in claims).items() if n > 1]
    if dup:
        raise ClaimRegistryError(path, dup[0], "id", "duplicate id within the file")
    return claims


def load_claims(data_dir: str | Path | None = None) -> list[Claim]:
    """Load every ``*.yaml`` registry file in ``data_dir`` (default: the packaged registry)."""
    d = Path(data_dir) if data_dir is not None else DATA_DIR
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise ClaimRegistryError(d, None, "<dir>", "no *.yaml registry files found")
    # Cache keyed by every file's path, mtime and size, so an edited registry is re-validated.
    key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if key in _CACHE:
        return list(_CACHE[key])
    claims: list[Claim] = []
    seen: dict[str, str] = {}
    for f in files:
        for c in load_claim_file(f):
            if c.id in seen:
                raise ClaimRegistryError(f, c.id, "id", f"duplicate id, first defined in {seen[c.id]}")
            seen[c.id] = str(f)
            claims.append(c)
    ids = set(seen)
    for c in claims:
        if c.same_as is not None and c.same_as not in ids:
            raise ClaimRegistryError(c.file, c.id, "same_as", f"expected an existing claim id, found {c.same_as!r}")
    _CACHE[key] = claims
    return list(claims)


def claims_for(pair_name: str, claims: Iterable[Claim] | None = None) -> list[Claim]:
    """Claims a given pair should satisfy: every ``any_pair`` claim, plus the claims scoped to it.

    A pair name outside the released four (e.g. a small trained fixture pair) gets only the
    ``any_pair`` claims, which the judge scores with their generalised form.
    """
    pool = list(claims) if claims is not None else load_claims()
    return [c for c in pool if c.any_pair or pair_name in c.pairs()]


def counts_per_seed(claims: Iterable[Claim] | None = None) -> dict[str, int]:
    pool = list(claims) if claims is not None else load_claims()
    return dict(sorted(Counter(c.seed for c in pool).items()))


def counts_per_experiment(claims: Iterable[Claim] | None = None) -> dict[str, int]:
    pool = list(claims) if claims is not None else load_claims()
    return dict(sorted(Counter(c.experiment for c in pool).items()))


__all__ = [
    "Claim",
    "ClaimRegistryError",
    "COMPARATORS",
    "DATA_DIR",
    "EXPERIMENTS",
    "Form",
    "RELEASED_PAIRS",
    "claims_for",
    "counts_per_experiment",
    "counts_per_seed",
    "load_claim_file",
    "load_claims",
    "printed_half_unit",
]
