"""Derived figures: claim figures built from figures the experiments already emit (mostly across pairs).

:meth:`nla_repro.claims.run.ClaimRunner.evaluate` calls :func:`derive` when a claim's figure is not among
its experiment's own figures.  Every derivation takes ``per_pair``: {pair name: that pair's figure dict},
in the claim's scope order (``Claim.pairs()``); for an experiment that needs every pair (cross_family)
each pair maps to the same matrix-wide dict.  Pair names are the registry's full names; matrix keys use
:func:`nla_repro.experiments.cross_family.short` names.  A missing input raises :class:`MissingFigure`
naming the figure and the pair.

Conventions (each function's docstring repeats its own):

- *trajectory*: the per-pair figure in scope order (seed 002: qwen7 -> gemma12 -> gemma27);
- *change*: last scope pair minus first (elementwise on list figures); *ratio*: last scope pair / first;
- *argmax*: the pair (or ``"AV->AR"`` cell) with the largest value, the first in scope order on a tie;
- matrix cells ``(i, j)``: AV pair i (row) -> AR pair j (column), rows and columns in scope order.

Per-pair derivations (one value, or a list over the scope pairs when there are several): a figure written
``a,b,c`` (comma-separated emitted keys) is the list of those figures; an entry of a dict figure (top-level
figures are numbers, lists or dicts, so a categorical result such as a direction's top category is read
out of its dict) is :func:`member`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np

from .schema import RELEASED_PAIRS

__all__ = ["DERIVED", "Derived", "MissingFigure", "MODEL_SIZE_B", "derive", "is_derived", "inputs_of"]

PerPair = Mapping[str, Mapping[str, Any]]
QWEN, GEMMA12, GEMMA27, LLAMA70 = RELEASED_PAIRS
#: parameter count (billions) of each released pair's base model (seed 003 §3's "size-ordered pairs")
MODEL_SIZE_B = {QWEN: 7, GEMMA12: 12, GEMMA27: 27, LLAMA70: 70}


class MissingFigure(KeyError):
    """An input figure of a derivation is absent; the message names the figure, the pair and the target."""

    def __str__(self) -> str:
        return str(self.args[0])


def fig(per_pair: PerPair, pair: str, key: str) -> Any:
    """``per_pair[pair][key]``, or :class:`MissingFigure` naming both."""
    if pair not in per_pair:
        raise MissingFigure(f"no figures for pair {pair!r} (pairs given: {list(per_pair)})")
    figs = per_pair[pair]
    if key not in figs:
        raise MissingFigure(f"input figure {key!r} is missing on pair {pair!r} ({len(figs)} figures reported)")
    return figs[key]


def short(name: str) -> str:
    """The pair's segment in matrix keys (:func:`nla_repro.experiments.cross_family.short`)."""
    from ..experiments.cross_family import short as cf_short  # experiments import lazily, as in run.py

    return cf_short(name)


def finite(values: list, what: str, pairs: list[str]) -> list[float]:
    """``values`` as floats; ValueError naming the pair whose value is NaN/inf (an argmax over NaN is
    meaningless, and Python's min/max silently skip a NaN that is not first)."""
    out = [float(v) for v in values]
    bad = [p for p, v in zip(pairs, out) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"{what} is not finite on {bad}: {dict(zip(pairs, out))}")
    return out


def cell(per_pair: PerPair, av: str, ar: str, what: str = "fve") -> float:
    """Matrix cell ``matrix.<what>.<av>.<ar>`` (AV pair -> AR pair), read from the AV pair's figures."""
    return float(fig(per_pair, av, f"matrix.{what}.{short(av)}.{short(ar)}"))


# ------------------------------------------------------------------------------------------ per-pair lists

def trajectory(per_pair: PerPair, key: str, index: int | None = None) -> list:
    """Figure ``key`` on every scope pair, in scope order (element ``index`` of a list figure if given)."""
    out = [fig(per_pair, p, key) for p in per_pair]
    return out if index is None else [v[index] for v in out]


def category_trajectory(per_pair: PerPair, key: str, category: str) -> list:
    """:func:`trajectory` of one category's element of a ``by_category`` list figure (lists ordered by
    :data:`nla_repro.experiments.two_tier_controls.CATEGORIES`)."""
    from ..experiments.two_tier_controls import CATEGORIES  # experiments import lazily, as in run.py

    return trajectory(per_pair, key, CATEGORIES.index(category))


def change(per_pair: PerPair, key: str) -> Any:
    """Last scope pair minus first: a number, or an elementwise list for list figures."""
    first, last = _ends(per_pair, key)
    d = np.asarray(last, dtype=np.float64) - np.asarray(first, dtype=np.float64)
    return d.tolist() if d.ndim else float(d)


def ratio(per_pair: PerPair, key: str) -> float:
    """Last scope pair / first scope pair of a scalar figure."""
    first, last = _ends(per_pair, key)
    if float(first) == 0:
        raise ValueError(f"ratio of {key!r}: the first scope pair's value is 0")
    return float(last) / float(first)


def _ends(per_pair: PerPair, key: str) -> tuple[Any, Any]:
    pairs = list(per_pair)
    if len(pairs) < 2:
        raise ValueError(f"a change/ratio of {key!r} needs >= 2 scope pairs, found {pairs}")
    return fig(per_pair, pairs[0], key), fig(per_pair, pairs[-1], key)


def argmax_pair(per_pair: PerPair, key: str) -> str:
    """The scope pair with the largest ``key`` (first in scope order on a tie)."""
    pairs = list(per_pair)
    return pairs[int(np.argmax(finite(trajectory(per_pair, key), key, pairs)))]


def member(per_pair: PerPair, key: str, entry: str) -> Any:
    """Entry ``entry`` of the dict figure ``key`` on each scope pair (one value; a list over several pairs)."""
    out = []
    for p in per_pair:
        d = fig(per_pair, p, key)
        if not isinstance(d, Mapping) or entry not in d:
            have = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise MissingFigure(f"input figure {key!r} on pair {p!r} has no entry {entry!r} (found {have})")
        out.append(d[entry])
    return out[0] if len(out) == 1 else out


# ------------------------------------------------------------------------------------------ matrix reads

def diagonal_argmax(per_pair: PerPair) -> str:
    """The scope pair with the largest diagonal cell ``matrix.fve.<p>.<p>`` (best autoencoder)."""
    pairs = list(per_pair)
    vals = finite([cell(per_pair, p, p) for p in pairs], "diagonal matrix.fve", pairs)
    return pairs[int(np.argmax(vals))]


def frac_argmax(per_pair: PerPair) -> str:
    """``"AV->AR"`` of the off-diagonal cell with the largest fraction of the target's ceiling
    ``matrix.frac.<i>.<j>`` = fve[i, j] / fve[j, j]; cells scanned row-major in scope order."""
    cells = [(i, j) for i in per_pair for j in per_pair if i != j]
    vals = finite([cell(per_pair, i, j, "frac") for i, j in cells], "matrix.frac", [f"{i}->{j}" for i, j in cells])
    i, j = cells[int(np.argmax(vals))]
    return f"{i}->{j}"


def tier_gap(per_pair: PerPair, low: tuple[str, ...], high: tuple[str, ...]) -> float:
    """min over ``high`` of the off-diagonal row mean ``matrix.row_mean.<p>`` minus max over ``low``:
    >= 0 when every source in the high tier writes explanations read better than every low-tier one."""
    names = list(low + high)
    vals = finite([fig(per_pair, p, f"matrix.row_mean.{short(p)}") for p in names], "matrix.row_mean", names)
    row = dict(zip(names, vals))   # finite: Python's min/max would silently drop a NaN row mean
    return min(row[p] for p in high) - max(row[p] for p in low)


def asymmetry(per_pair: PerPair, a: str, b: str) -> float:
    """fve[a -> b] - fve[b -> a] (matrix cells)."""
    return cell(per_pair, a, b) - cell(per_pair, b, a)


def size_order_min(per_pair: PerPair, exclude: frozenset = frozenset()) -> float:
    """Minimum over scope pairs {a, b} of different base-model size (:data:`MODEL_SIZE_B`), except the
    unordered pairs in ``exclude``, of fve[bigger -> smaller] - fve[smaller -> bigger]."""
    missing = [p for p in per_pair if p not in MODEL_SIZE_B]
    if missing:
        raise ValueError(f"size-ordered pairs: no base-model size known for {missing} (known: {list(MODEL_SIZE_B)})")
    pairs = list(per_pair)
    deltas, labels = [], []
    for k, a in enumerate(pairs):
        for b in pairs[k + 1:]:
            if MODEL_SIZE_B[a] == MODEL_SIZE_B[b] or frozenset((a, b)) in exclude:
                continue
            big, small = (a, b) if MODEL_SIZE_B[a] > MODEL_SIZE_B[b] else (b, a)
            deltas.append(asymmetry(per_pair, big, small))
            labels.append(f"{big}->{small}")
    if not deltas:
        raise ValueError(f"no size-ordered pair left among {pairs} after excluding {sorted(map(sorted, exclude))}")
    return min(finite(deltas, "size-ordered fve asymmetry", labels))   # a NaN would be skipped by min()


def item_matrix(per_pair: PerPair, item: str) -> list[list[float]]:
    """Per-item FVE of the selected eval item (``matrix.items.<item>.<i>.<j>``, see cross_family) as a
    matrix: rows = AV pair, columns = AR pair, both in scope order."""
    return [[cell(per_pair, i, j, f"items.{item}") for j in per_pair] for i in per_pair]


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class Derived:
    """A derived figure: ``fn(per_pair)`` and the emitted figures it reads (``{p}``/``{q}`` = a pair's
    short name), so the registry test can check its inputs against the experiment's declaration."""

    fn: Callable[[PerPair], Any]
    inputs: tuple[str, ...]

    def __call__(self, per_pair: PerPair) -> Any:
        return self.fn(per_pair)


DERIVED: dict[str, Derived] = {
    # seed 000 §5: "~12x more FVE on Gemma-L41 (Var 0.0575 vs 0.712)": scope [gemma27, qwen] -> qwen / gemma27
    "var_nrm.ratio": Derived(partial(ratio, key="var_nrm.own"), ("var_nrm.own",)),
    # seed 002 §3.2-3.3 (scope qwen7 -> gemma12 -> gemma27, or gemma12 -> gemma27)
    "two_tier.fve.argmax": Derived(partial(argmax_pair, key="two_tier.fve.overall"), ("two_tier.fve.overall",)),
    "two_tier.recall.trajectory": Derived(partial(trajectory, key="two_tier.recall.overall"),
                                          ("two_tier.recall.overall",)),
    **{f"two_tier.recall.{c}.trajectory": Derived(partial(category_trajectory, key="two_tier.recall.by_category",
                                                          category=c), ("two_tier.recall.by_category",))
       for c in ("chat", "agent")},
    "two_tier.recall.spread_delta": Derived(partial(change, key="two_tier.recall.spread"), ("two_tier.recall.spread",)),
    "two_tier.recall.category_gains": Derived(partial(change, key="two_tier.recall.by_category"),
                                              ("two_tier.recall.by_category",)),
    # seed 002 §2.1: "Gemma's residual norms are ~600x larger than Qwen's": scope [qwen, gemma12]
    "two_tier.norm.ratio": Derived(partial(ratio, key="two_tier.norm.mean"), ("two_tier.norm.mean",)),
    # seed 002 §4.3: top keyword category of an injected direction (two_tier_controls' direction.top dict)
    **{f"two_tier.direction.top.{d}": Derived(partial(member, key="two_tier.direction.top", entry=d),
                                              ("two_tier.direction.top",))
       for d in ("agent_vs_other", "agent_minus_chat")},
    # seed 003 §2-§4 (cross_family matrix)
    "matrix.frac.argmax": Derived(frac_argmax, ("matrix.frac.{p}.{q}",)),
    "matrix.diagonal.argmax": Derived(diagonal_argmax, ("matrix.fve.{p}.{p}",)),
    "matrix.row_mean.tiers": Derived(partial(tier_gap, low=(QWEN, GEMMA12), high=(GEMMA27, LLAMA70)),
                                     ("matrix.row_mean.{p}",)),
    "matrix.asym.qwen_gemma12": Derived(partial(asymmetry, a=QWEN, b=GEMMA12), ("matrix.fve.{p}.{q}",)),
    # "bigger->smaller beats smaller->bigger in every size-ordered pair except qwen/gemma-12B"
    "matrix.asym.size_order": Derived(partial(size_order_min, exclude=frozenset({frozenset((QWEN, GEMMA12))})),
                                      ("matrix.fve.{p}.{q}",)),
    **{f"matrix.items.{k}": Derived(partial(item_matrix, item=k), (f"matrix.items.{k}.{{p}}.{{q}}",))
       for k in ("best", "typical", "lost", "digits")},
}


def _tuple_keys(figure: str) -> list[str] | None:
    return [k.strip() for k in figure.split(",")] if "," in figure else None


def is_derived(figure: str) -> bool:
    """Whether :func:`derive` can build ``figure`` (a registered derivation or an ``a,b,c`` tuple)."""
    return figure in DERIVED or _tuple_keys(figure) is not None


def inputs_of(figure: str) -> tuple[str, ...]:
    """The emitted figures ``figure`` is built from (pair segments as ``{p}``/``{q}``)."""
    keys = _tuple_keys(figure)
    return tuple(keys) if keys is not None else DERIVED[figure].inputs


def derive(figure: str, per_pair: PerPair) -> Any:
    """The value of a derived ``figure`` from the per-pair figure dicts (scope order)."""
    keys = _tuple_keys(figure)
    if keys is not None:
        rows = [[fig(per_pair, p, k) for k in keys] for p in per_pair]
        return rows[0] if len(rows) == 1 else rows
    if figure not in DERIVED:
        raise KeyError(f"no derivation registered for figure {figure!r} (registered: {sorted(DERIVED)})")
    return DERIVED[figure](per_pair)
