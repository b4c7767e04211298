"""REPORT.md and its figures, regenerated from cached results -- nothing is recomputed.

``write_report(source)`` reads :class:`~nla_repro.results.ExperimentResult` and
:class:`~nla_repro.results.ClaimResult` records from a :class:`~nla_repro.cache.ResultsCache` (instance or
root directory; every entry is hash-verified on read), from a directory / file of record JSON, or from an
iterable of records, and writes:

- a provenance header (the environment fingerprints recorded with the results, no timestamps);
- a status summary and an experiments table naming every convention;
- one claims table per seed document (``ClaimResult.source`` starts with the seed number, e.g. "000 §1"),
  each captioned with the denominators and decoding modes it uses, each row naming its own;
- a table of claims not tested (``skipped`` / ``not_testable``) with reasons, and of conflicting results;
- PNG figures (matplotlib Agg) for the experiments below, and a table of figures not drawn with reasons.

Output is deterministic: records are sorted, no clock or absolute paths are written, PNG metadata is
fixed, and matplotlib runs on its default rcParams; regenerating gives byte-identical files.

Figure data (``ExperimentResult.figures[<key>]`` of the named experiment; one figure per pair). Where a
mapping ``{label: value}`` is accepted, a list ``[[label, value], ...]`` is too and keeps its order (JSON
mappings are stored with sorted keys). ``value`` is a number or ``{"fve": x, "ci": [lo, hi]}``.

====================  ==================  ===================  =============================================
figure file stem      experiment          figures key          schema
====================  ==================  ===================  =============================================
quote_ban_fve         quote_ban           fve_by_condition     {condition: value}
redaction_bars        redaction           fve_by_variant       {variant: value}
best_of_n_curve       best_of_n           best_of_n            {"n": [..], "fve": [..], "ci"?: [[lo,hi],..]}
transfer_matrix       cross_family |      transfer_matrix      {"sources": [..], "targets": [..],
                      transfer_matrix                          "fve": [[row per source; null = not scored]]}
ridge_scaling         ridge_baseline |    ridge_scaling        {"n_pairs": [..], "fve": {direction: [..]},
                      ridge_scaling                            "text_route"?: {direction: number}}
====================  ==================  ===================  =============================================
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .cache import ResultsCache, default_results_root, sha256_canonical
from .results import (
    REPORTED_STATUSES,
    STATUSES,
    UNTESTED_STATUSES,
    ClaimResult,
    ExperimentResult,
    load_records,
    records_from_payload,
)

__all__ = ["FIGURE_SPECS", "FigureSpec", "FigureDataError", "ReportSummary", "collect_records",
           "write_report", "main"]

PNG_METADATA = {"Software": "nla-repro report", "Title": None, "Author": None}
_DPI = 100


class FigureDataError(ValueError):
    """An ExperimentResult's figure data does not match the figure's schema."""


# ----------------------------------------------------------------------------------------------------------
# figure data parsing


def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise FigureDataError(f"{what}: expected a number, found {x!r}")
    return float(x)


def _labelled_values(data: Any, what: str) -> list[tuple[str, float, tuple[float, float] | None]]:
    if isinstance(data, Mapping):
        items = sorted(data.items())
    elif isinstance(data, list) and all(isinstance(p, list) and len(p) == 2 for p in data):
        items = [(p[0], p[1]) for p in data]
    else:
        raise FigureDataError(f"{what}: expected {{label: value}} or [[label, value], ...], found {data!r}"[:300])
    if not items:
        raise FigureDataError(f"{what}: no entries")
    out = []
    for label, v in items:
        ci = None
        if isinstance(v, Mapping):
            if "fve" not in v:
                raise FigureDataError(f"{what}[{label!r}]: dict value needs 'fve', found keys {sorted(v)}")
            if v.get("ci") is not None:
                c = v["ci"]
                if not (isinstance(c, list) and len(c) == 2):
                    raise FigureDataError(f"{what}[{label!r}].ci: expected [lo, hi], found {c!r}")
                ci = (_num(c[0], f"{what}[{label!r}].ci"), _num(c[1], f"{what}[{label!r}].ci"))
            v = v["fve"]
        out.append((str(label), _num(v, f"{what}[{label!r}]"), ci))
    return out


def _num_list(x: Any, what: str) -> list[float]:
    if not isinstance(x, list) or not x:
        raise FigureDataError(f"{what}: expected a non-empty list of numbers, found {x!r}"[:300])
    return [_num(v, f"{what}[{i}]") for i, v in enumerate(x)]


def _conv(er: ExperimentResult) -> tuple[str, str]:
    return er.conventions["denominator"], er.conventions["decoding"]


def _wrap(text: str, width: int) -> str:
    """Long convention strings wrapped so titles and axis labels stay inside the PNG."""
    import textwrap  # noqa: PLC0415

    return "\n".join(textwrap.wrap(text, width)) or text


def _title(ax, base: str, er: ExperimentResult) -> None:
    den, dec = _conv(er)
    ax.set_title(_wrap(f"{base} — {er.pair}", 80) + "\n"
                 + _wrap(f"denominator: {den} · decoding: {dec} · n={er.n}", 95), fontsize=8)


def _bars(ax, rows, er: ExperimentResult, base: str, horizontal: bool) -> None:
    den, dec = _conv(er)
    labels = [r[0] for r in rows]
    vals = [r[1] for r in rows]
    pos = list(range(len(rows)))
    errs = None
    if any(r[2] is not None for r in rows):
        lo = [(r[1] - r[2][0]) if r[2] else 0.0 for r in rows]
        hi = [(r[2][1] - r[1]) if r[2] else 0.0 for r in rows]
        errs = [lo, hi]
    if horizontal:
        ax.barh(pos, vals, xerr=errs, color="#4c72b0", capsize=3)
        ax.set_yticks(pos, labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(f"FVE (denominator: {den}; decoding: {dec})")
        for p, v in zip(pos, vals):
            ax.annotate(f"{v:.3f}", (v, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    else:
        ax.bar(pos, vals, yerr=errs, color="#4c72b0", capsize=3)
        ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(_wrap(f"FVE (denominator: {den}; decoding: {dec})", 48), fontsize=8)
        for p, v in zip(pos, vals):
            ax.annotate(f"{v:.3f}", (p, v), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
    _title(ax, base, er)


def _draw_quote_ban(fig, data, er):
    rows = _labelled_values(data, "fve_by_condition")
    _bars(fig.add_subplot(1, 1, 1), rows, er, "FVE by generation-time quote-ban condition", horizontal=False)


def _draw_redaction(fig, data, er):
    rows = _labelled_values(data, "fve_by_variant")
    _bars(fig.add_subplot(1, 1, 1), rows, er, "FVE after post-hoc redaction of the explanation", horizontal=True)


def _draw_best_of_n(fig, data, er):
    if not isinstance(data, Mapping):
        raise FigureDataError(f"best_of_n: expected {{'n': [...], 'fve': [...]}}, found {type(data).__name__}")
    n = _num_list(data.get("n"), "best_of_n.n")
    fve = _num_list(data.get("fve"), "best_of_n.fve")
    if len(n) != len(fve):
        raise FigureDataError(f"best_of_n: len(n)={len(n)} != len(fve)={len(fve)}")
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(n, fve, marker="o", color="#4c72b0", label="best-of-N (AR-selected)")
    ci = data.get("ci")
    if ci is not None:
        if not (isinstance(ci, list) and len(ci) == len(n) and all(isinstance(c, list) and len(c) == 2 for c in ci)):
            raise FigureDataError("best_of_n.ci: expected one [lo, hi] per n")
        ax.fill_between(n, [_num(c[0], "best_of_n.ci") for c in ci], [_num(c[1], "best_of_n.ci") for c in ci],
                        color="#4c72b0", alpha=0.2, label="CI")
    den, dec = _conv(er)
    ax.set_xlabel("N samples per activation (best-of-prefix-N)")
    ax.set_ylabel(_wrap(f"FVE (denominator: {den}; decoding: {dec})", 48), fontsize=8)
    ax.set_xticks(n)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _title(ax, "Best-of-N FVE", er)


def _draw_transfer(fig, data, er):
    if not isinstance(data, Mapping):
        raise FigureDataError("transfer_matrix: expected {'sources', 'targets', 'fve'}")
    src, tgt, m = data.get("sources"), data.get("targets"), data.get("fve")
    if not (isinstance(src, list) and isinstance(tgt, list) and src and tgt):
        raise FigureDataError(f"transfer_matrix: 'sources' and 'targets' must be non-empty lists, found {src!r}, {tgt!r}")
    if not (isinstance(m, list) and len(m) == len(src)):
        raise FigureDataError(f"transfer_matrix.fve: expected {len(src)} rows (one per source)")
    grid = []
    for i, row in enumerate(m):
        if not isinstance(row, list) or len(row) != len(tgt):
            raise FigureDataError(f"transfer_matrix.fve[{i}]: expected {len(tgt)} values (one per target)")
        grid.append([float("nan") if v is None else _num(v, f"transfer_matrix.fve[{i}]") for v in row])
    ax = fig.add_subplot(1, 1, 1)
    finite = [v for r in grid for v in r if not math.isnan(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    im = ax.imshow(grid, cmap="viridis", vmin=min(vmin, 0.0), vmax=max(vmax, 1e-9), aspect="auto")
    ax.set_xticks(range(len(tgt)), [str(t) for t in tgt], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(src)), [str(s) for s in src], fontsize=8)
    ax.set_xlabel("AR (target model reconstructs its own activation)")
    ax.set_ylabel("AV (source model verbalizes)")
    for i, r in enumerate(grid):
        for j, v in enumerate(r):
            ax.text(j, i, "—" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if (not math.isnan(v) and v < (min(vmin, 0.0) + vmax) / 2) else "black")
    den, dec = _conv(er)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(_wrap(f"FVE (denominator: {den}; decoding: {dec})", 48), fontsize=8)
    _title(ax, "Cross-model transfer matrix", er)


def _draw_ridge(fig, data, er):
    if not isinstance(data, Mapping):
        raise FigureDataError("ridge_scaling: expected {'n_pairs', 'fve', 'text_route'?}")
    n = _num_list(data.get("n_pairs"), "ridge_scaling.n_pairs")
    curves = data.get("fve")
    if not isinstance(curves, Mapping) or not curves:
        raise FigureDataError("ridge_scaling.fve: expected {direction: [fve per n]}")
    ax = fig.add_subplot(1, 1, 1)
    ref = data.get("text_route") or {}
    if not isinstance(ref, Mapping):
        raise FigureDataError("ridge_scaling.text_route: expected {direction: number}")
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for k, direction in enumerate(sorted(curves)):
        ys = _num_list(curves[direction], f"ridge_scaling.fve[{direction!r}]")
        if len(ys) != len(n):
            raise FigureDataError(f"ridge_scaling.fve[{direction!r}]: {len(ys)} values for {len(n)} n_pairs")
        c = colors[k % len(colors)]
        ax.plot(n, ys, marker="o", color=c, label=f"ridge {direction}")
        if direction in ref and ref[direction] is not None and math.isfinite(_num(ref[direction], "text_route")):
            ax.axhline(_num(ref[direction], f"ridge_scaling.text_route[{direction!r}]"), color=c, linestyle="--",
                       label=f"NLA text route {direction} (0 pairs)")
    ax.set_xscale("log")
    den, dec = _conv(er)
    ax.set_xlabel("training pairs n (log scale)")
    ax.set_ylabel(_wrap(f"FVE (denominator: {den}; text route decoding: {dec})", 48), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _title(ax, "Ridge baseline FVE vs training-pair count", er)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    experiments: tuple[str, ...]  # experiment names whose results may carry the figure data
    figure_key: str
    draw: Callable[[Any, Any, ExperimentResult], None]
    size: tuple[float, float] = (7.0, 4.5)


FIGURE_SPECS: tuple[FigureSpec, ...] = (
    FigureSpec("quote_ban_fve", "FVE by quote-ban condition", ("quote_ban",), "fve_by_condition", _draw_quote_ban),
    FigureSpec("redaction_bars", "FVE after post-hoc redaction", ("redaction",), "fve_by_variant", _draw_redaction),
    FigureSpec("best_of_n_curve", "Best-of-N FVE curve", ("best_of_n",), "best_of_n", _draw_best_of_n),
    FigureSpec("transfer_matrix", "Transfer-matrix heatmap", ("cross_family", "transfer_matrix"), "transfer_matrix",
               _draw_transfer, (6.5, 5.5)),
    FigureSpec("ridge_scaling", "Ridge FVE vs n", ("ridge_baseline", "ridge_scaling"), "ridge_scaling", _draw_ridge),
)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "pair"


def _render_png(spec: FigureSpec, er: ExperimentResult) -> bytes:
    import matplotlib  # noqa: PLC0415

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the bytes
        matplotlib.rcParams["svg.hashsalt"] = "nla-repro"
        fig = Figure(figsize=spec.size, dpi=_DPI)
        FigureCanvasAgg(fig)
        spec.draw(fig, er.figures[spec.figure_key], er)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI, metadata=dict(PNG_METADATA))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# collecting records


def collect_records(source: Any) -> tuple[list[ExperimentResult], list[ClaimResult], str]:
    """Records from a ResultsCache, a cache root, a results dir/file, or an iterable of records.

    Returns (experiments, claims, description of the source). Identical records are deduplicated;
    both lists are sorted.
    """
    records: list = []
    if isinstance(source, ResultsCache):
        desc = _cache_records(source, records)
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"results source {p} does not exist")
        if p.is_dir() and _looks_like_cache(p):
            desc = _cache_records(ResultsCache(p), records)
        else:
            records = load_records(p)
            desc = f"results {'directory' if p.is_dir() else 'file'} `{p.name}`"
    elif isinstance(source, Iterable):
        records = list(source)
        for r in records:
            if not isinstance(r, (ExperimentResult, ClaimResult)):
                raise TypeError(f"write_report: expected result records, found {type(r).__name__}")
        desc = "records passed in memory"
    else:
        raise TypeError(f"write_report: unsupported source {type(source).__name__}")
    exps: dict[str, ExperimentResult] = {}
    claims: dict[str, ClaimResult] = {}
    for r in records:
        blob = r.to_json(indent=None)
        (exps if isinstance(r, ExperimentResult) else claims)[blob] = r
    return (sorted(exps.values(), key=lambda r: r.sort_key()),
            sorted(claims.values(), key=lambda r: r.sort_key()), desc)


def _looks_like_cache(p: Path) -> bool:
    for meta in p.glob("*/*/*/meta.json"):
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("schema", "").startswith("nla-repro-cache-entry"):
                return True
        except (OSError, ValueError):
            continue
    return False


def _cache_records(cache: ResultsCache, out: list) -> str:
    n_entries = 0
    for entry in cache.iter_entries():  # hash-verified
        n_entries += 1
        out.extend(records_from_payload(entry.payload))
    return f"results cache `{cache.root.name}` ({n_entries} verified entries)"


# ----------------------------------------------------------------------------------------------------------
# markdown helpers


def _cell(x: Any) -> str:
    s = str(x).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return s if s.strip() else "—"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        return format(x, ".6g")
    if isinstance(x, int):
        return str(x)
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(x.items()))
    return str(x)


def _fmt_tol(c: ClaimResult) -> str:
    t = c.tolerance
    if t is None:
        return "—"
    if isinstance(t, (int, float)) and not isinstance(t, bool) and c.comparator in ("approx", "=="):
        return f"±{_fmt(float(t))}"
    return _fmt(t)


def _conv_of(c: ClaimResult) -> tuple[str, str]:
    return (str(c.conventions.get("denominator") or "unstated"), str(c.conventions.get("decoding") or "unstated"))


def _status_cell(s: str) -> str:
    return f"**{s.upper()}**" if s in ("fail", "error") else s


def _protocol_str(p: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}={json.dumps(v, sort_keys=True, ensure_ascii=False)}" for k, v in sorted(p.items()))


def _seed_of(c: ClaimResult) -> str | None:
    return c.seed


# ----------------------------------------------------------------------------------------------------------
# the report


@dataclasses.dataclass
class ReportSummary:
    out_path: Path
    figures: list[Path]
    skipped_figures: list[tuple[str, str]]
    n_experiments: int
    n_claims: int
    status_counts: dict[str, int]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() == data:
        return  # unchanged: leave mtime alone
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _provenance_section(exps: list[ExperimentResult], claims: list[ClaimResult]) -> list[str]:
    groups: dict[str, tuple[dict, int]] = {}
    for r in [*exps, *claims]:
        if not r.provenance:
            continue
        # group by the software/hardware environment only; checkpoints, code versions and the decoding
        # backend are per-result facts (kept in each record's provenance; the backend is also in the
        # experiments table's protocol column), not environments
        env = r.provenance.get("environment", r.provenance)
        d = sha256_canonical(env)[:12]
        fp, n = groups.get(d, (env, 0))
        groups[d] = (fp, n + 1)
    missing = sum(1 for r in [*exps, *claims] if not r.provenance)
    lines = ["## Provenance", ""]
    if not groups:
        lines += ["No environment fingerprint was recorded with these results.", ""]
        return lines
    ids = sorted(groups)
    if len(ids) == 1:
        lines.append("All results with a fingerprint were produced in one environment "
                     f"(fingerprint `{ids[0]}`, {groups[ids[0]][1]} records).")
    else:
        lines.append(f"Results come from **{len(ids)} different environments**; compare before trusting "
                     "differences between them.")
    if missing:
        lines.append(f"{missing} record(s) carry no fingerprint.")
    lines.append("")
    keys = sorted({k for fp, _ in groups.values() for k in fp})
    headers = ["field"] + [f"`{i}` ({groups[i][1]} records)" for i in ids]
    rows = [[k] + [_fmt(groups[i][0].get(k)) if k in groups[i][0] else "—" for i in ids] for k in keys]
    lines += _table(headers, rows) + [""]
    return lines


def _claims_sections(claims: list[ClaimResult]) -> list[str]:
    tested = [c for c in claims if c.status in REPORTED_STATUSES]
    by_seed: dict[str, list[ClaimResult]] = defaultdict(list)
    for c in tested:
        by_seed[_seed_of(c) or "~other"].append(c)
    lines = ["## Claims by seed document", ""]
    if not tested:
        lines += ["No claim was tested (see *Claims not tested*).", ""]
    headers = ["claim", "published", "measured", "tolerance", "comparator", "status", "CI95", "pair",
               "denominator / decoding", "protocol"]
    for seed in sorted(by_seed):
        rows_c = by_seed[seed]
        title = f"Seed {seed}" if seed != "~other" else "Other sources (no seed number)"
        dens = sorted({_conv_of(c)[0] for c in rows_c})
        decs = sorted({_conv_of(c)[1] for c in rows_c})
        cnt = Counter(c.status for c in rows_c)
        lines += [f"### {title}", "",
                  f"Denominator(s) in this table: {', '.join(dens)}. Decoding mode(s): {', '.join(decs)}. "
                  f"Status: " + ", ".join(f"{s} {cnt[s]}" for s in REPORTED_STATUSES if cnt[s]) + ".", ""]
        rows = []
        for c in rows_c:
            den, dec = _conv_of(c)
            rows.append([f"`{c.claim_id}` ({c.source})", _fmt(c.published), _fmt(c.measured), _fmt_tol(c),
                         c.comparator, _status_cell(c.status), _fmt(list(c.ci)) if c.ci else "—", c.pair,
                         f"{den} / {dec}", c.protocol_note])
        lines += _table(headers, rows) + [""]
        fails = [c for c in rows_c if c.status in ("fail", "error") and c.message.strip()]
        for c in fails:
            lines.append(f"- `{c.claim_id}` ({c.pair}) {c.status}: {_cell(c.message)}")
        if fails:
            lines.append("")
    return lines


def _untested_section(claims: list[ClaimResult]) -> list[str]:
    un = [c for c in claims if c.status in UNTESTED_STATUSES]
    lines = ["## Claims not tested", ""]
    if not un:
        return lines + ["Every claim in these results was tested.", ""]
    rows = [[f"`{c.claim_id}`", c.source, c.pair, c.status, c.message] for c in
            sorted(un, key=lambda c: (c.status, c.sort_key()))]
    return lines + _table(["claim", "source", "pair", "status", "reason"], rows) + [""]


def _conflicts_section(claims: list[ClaimResult]) -> list[str]:
    groups: dict[tuple, list[ClaimResult]] = defaultdict(list)
    for c in claims:
        groups[(c.claim_id, c.pair, c.protocol_note, json.dumps(c.conventions, sort_keys=True))].append(c)
    conf = {k: v for k, v in groups.items() if len({(c.measured, c.status) for c in v}) > 1}
    if not conf:
        return []
    lines = ["## Conflicting results", "",
             "The same claim, pair, protocol and conventions appear with different results (e.g. from "
             "different code or environment versions in the cache). All are shown above.", ""]
    rows = []
    for k in sorted(conf):
        vs = conf[k]
        rows.append([f"`{k[0]}`", k[1], "; ".join(f"{_fmt(c.measured)} ({c.status})" for c in vs)])
    return lines + _table(["claim", "pair", "measured (status)"], rows) + [""]


def _experiments_section(exps: list[ExperimentResult]) -> list[str]:
    lines = ["## Experiments", ""]
    if not exps:
        return lines + ["No experiment results were found.", ""]
    rows = [[e.experiment, e.pair, e.n, e.conventions["denominator"], e.conventions["failure_convention"],
             e.conventions["decoding"], e.conventions["layer_convention"], _protocol_str(e.protocol)] for e in exps]
    return lines + _table(["experiment", "pair", "n", "denominator", "failure convention", "decoding",
                           "layer convention", "protocol"], rows) + [""]


def write_report(
    cache_or_results_dir: Any = None,
    out_path: str | os.PathLike = "REPORT.md",
    figures_dir: str | os.PathLike = "report_figures/",
) -> ReportSummary:
    """Regenerate ``out_path`` and its figures from cached results (see the module docstring).

    ``cache_or_results_dir`` defaults to :func:`nla_repro.cache.default_results_root`. A relative
    ``figures_dir`` is relative to the report's directory; figure links in the report are relative.
    """
    source = cache_or_results_dir if cache_or_results_dir is not None else default_results_root()
    exps, claims, desc = collect_records(source)
    out = Path(out_path)
    fig_dir = Path(figures_dir)
    if not fig_dir.is_absolute():
        fig_dir = out.parent / fig_dir
    try:
        fig_link_base = Path(os.path.relpath(fig_dir, out.parent)).as_posix()
    except ValueError:  # different drives
        fig_link_base = fig_dir.as_posix()

    status_counts = {s: sum(1 for c in claims if c.status == s) for s in STATUSES}
    lines = ["# NLA reproduction report", "",
             "_Generated by `nla_repro.report` from cached results; nothing was recomputed. "
             "Every number names its denominator and decoding mode._", "",
             f"Source: {desc}: {len(exps)} experiment result(s), {len(claims)} claim result(s).", "",
             "## Summary", ""]
    lines += _table(["status", "claims"], [[s, status_counts[s]] for s in STATUSES]) + [""]
    lines += _provenance_section(exps, claims)
    lines += _experiments_section(exps)
    lines += _claims_sections(claims)
    lines += _untested_section(claims)
    lines += _conflicts_section(claims)

    # figures
    lines += ["## Figures", ""]
    written: list[Path] = []
    skipped: list[tuple[str, str]] = []
    expected_files: set[str] = set()
    by_exp: dict[str, list[ExperimentResult]] = defaultdict(list)
    for e in exps:
        by_exp[e.experiment].append(e)
    for spec in FIGURE_SPECS:
        results = [r for name in spec.experiments for r in by_exp.get(name, [])]
        if not results:
            names = " or ".join(f"`{n}`" for n in spec.experiments)
            skipped.append((spec.title, f"no cached ExperimentResult for experiment {names}"))
            continue
        for er in results:
            label = f"{spec.title} — {er.pair}"
            if spec.figure_key not in er.figures:
                skipped.append((label, f"ExperimentResult `{er.experiment}` ({er.pair}) has no "
                                       f"figures[`{spec.figure_key}`] (has: {', '.join(sorted(er.figures)) or 'none'})"))
                continue
            suffix = _slug(er.pair)
            if len([r for r in results if _slug(r.pair) == suffix]) > 1:
                suffix += "-" + sha256_canonical(er.protocol)[:8]
            fname = f"{spec.name}__{suffix}.png"
            try:
                png = _render_png(spec, er)
            except FigureDataError as exc:
                skipped.append((label, f"figure data malformed: {exc}"))
                continue
            _atomic_write(fig_dir / fname, png)
            expected_files.add(fname)
            written.append(fig_dir / fname)
            den, dec = _conv(er)
            lines += [f"### {label}", "",
                      f"![{label}]({fig_link_base}/{fname})", "",
                      f"Denominator: {den}. Decoding: {dec}. Failure convention: "
                      f"{er.conventions['failure_convention']}. Layer: {er.conventions['layer_convention']}. "
                      f"n = {er.n}.", ""]
    if not written:
        lines += ["No figure could be drawn from these results.", ""]
    # stale figures from an earlier run would otherwise sit next to a report that no longer shows them
    if fig_dir.is_dir():
        for spec in FIGURE_SPECS:
            for old in sorted(fig_dir.glob(f"{spec.name}__*.png")):
                if old.name not in expected_files:
                    old.unlink()
    lines += ["### Figures not drawn", ""]
    if skipped:
        lines += _table(["figure", "reason"], [[n, r] for n, r in skipped]) + [""]
    else:
        lines += ["All figures were drawn.", ""]

    text = "\n".join(lines).rstrip("\n") + "\n"
    _atomic_write(out, text.encode("utf-8"))
    return ReportSummary(out_path=out, figures=written, skipped_figures=skipped, n_experiments=len(exps),
                         n_claims=len(claims), status_counts=status_counts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nla-repro report", description=__doc__.split("\n")[0])
    ap.add_argument("source", nargs="?", default=None,
                    help="results cache root or results dir/file (default: $NLA_REPRO_CACHE/results)")
    ap.add_argument("-o", "--out", default="REPORT.md")
    ap.add_argument("--figures-dir", default="report_figures/")
    a = ap.parse_args(argv)
    s = write_report(a.source, a.out, a.figures_dir)
    print(f"wrote {s.out_path}: {s.n_claims} claims, {s.n_experiments} experiments, "
          f"{len(s.figures)} figures, {len(s.skipped_figures)} not drawn")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
