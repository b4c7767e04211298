"""Run one registered experiment on the embedded default pair(s) and cache its result for `nla-repro report`.

Why: the report draws figures from cached experiment results, and some figures come from experiments that
no claim runs on the default pairs (e.g. the ridge-scaling curve: every ridge claim is about the released
Gemma-27B / Qwen-7B pairs).  This runs the experiment through the same runner, cache key and conventions
as the claims suite, so the result it stores is the one a claim run would have stored.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def run_experiment_job(name: str, *, families: tuple[str, ...], eval_size: int | None, device: str = "cpu",
                       backend: str = "hf", refresh: bool = False) -> dict:
    from .cache import ResultsCache
    from .experiments.base import EXPERIMENTS, ExperimentContext
    from .experiments.runner import all_pairs_label, load_experiments, run_experiment
    from .pairs import default_pair_handle

    load_experiments()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    needs_all = "all_pairs" in EXPERIMENTS[name][1].get("needs", ())
    if needs_all and len(families) < 2:
        raise ValueError(f"experiment {name!r} compares pairs: give at least two families (--families a,b)")
    cache = ResultsCache()
    handles = {}
    for fam in families:
        h = default_pair_handle(cache=cache, device=device, family=fam, backend=backend)
        handles[h.name] = h
    ctx = ExperimentContext(pairs=handles, eval_size=eval_size, refresh=refresh, cache=cache)
    labels = [all_pairs_label(ctx)] if needs_all else sorted(handles)
    return {label: run_experiment(name, ctx, label) for label in labels}


def print_results(results: dict) -> None:
    console = Console()
    for label, res in results.items():
        console.print(f"[bold]{res.experiment}[/bold] on {label}: n = {res.n}")
        for k, v in sorted(res.conventions.items()):
            console.print(f"  {k}: {v}")
        table = Table()
        table.add_column("figure")
        table.add_column("value", justify="right")
        for k, v in sorted(res.figures.items()):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                table.add_row(k, "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}")
        console.print(table)
