"""The main job: round-trip held-out activations through a pair and print the fidelity table.

Protocol: held-out documents (`nla_repro.corpora`, eval split), stage-0 positions, gold = output of
block K of the base model; greedy AV decode (max_new_tokens = min(150, 300 - prompt)); AR at the last
token; failures under the training convention (dropped, counted). The AV decodes through `backend`
(`nla_repro.backends`; `hf` is the reference, an unavailable engine is an error). Results are cached;
`--refresh` recomputes.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _handle(av, ar, family, device, cache, base=None, backend="hf"):
    from .pairs import default_pair_handle, user_pair_handle

    if (av is None) != (ar is None):
        raise ValueError("give both --av and --ar, or neither (to use the embedded default pair)")
    if av is None:
        return default_pair_handle(cache=cache, device=device, family=family, backend=backend)
    return user_pair_handle("user", av, ar, cache=cache, device=device,
                            bases={"user": str(base)} if base else None, backend=backend)


def run_main_job(*, av=None, ar=None, base=None, family="smollm2", n=64, device="cpu", refresh=False,
                 backend="hf") -> dict:
    from .cache import ResultsCache
    from .experiments.base import ExperimentContext
    from .experiments.runner import run_experiment

    cache = ResultsCache()
    handle = _handle(av, ar, family, device, cache, base, backend)
    ctx = ExperimentContext(pairs={handle.name: handle}, eval_size=n, refresh=refresh, cache=cache)
    result = run_experiment("corroboration", ctx, handle.name)
    f = result.figures
    console = Console()
    console.print(f"[bold]{handle.name}[/bold]  AV {handle.av_dir}\n{' ' * len(handle.name)}  AR {handle.ar_dir}")
    for k, v in sorted(result.conventions.items()):
        console.print(f"  {k}: {v}")
    b = result.provenance["backend"][handle.name]
    console.print(f"  decoding backend: {b['name']} {b['version']}")
    table = Table(title=f"Round trip of {result.n} held-out activations")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("convention")
    rows = [
        ("fve_nrm.train", "denominator = training Var(v_nrm) (sidecar metrics.train_rawvar)"),
        ("fve_nrm.train_ci95", "doc-bootstrap CI95 of the above"),
        ("fve_nrm.own", "denominator = eval set's own Var(v_nrm)"),
        ("fve_nrm.meannorm", "denominator = M = 2 - 2 sqrt(1 - V)"),
        ("fve_nrm.per_vector", "per-sample 2 cos - 1 (seed 002's convention)"),
        ("fve_nrm.reward_charge_2", "failures charged mse 2, train denominator"),
        ("fve_nrm.client_raw", "raw text scored on a tag miss, train denominator"),
        ("nmse.mean", "mean mse_nrm = 2(1 - cos), scored samples"),
        ("nmse.median", ""),
        ("cos.mean", ""),
        ("fve_nrm.frac_gt_0.5", "share of samples, per-sample fve (train denominator)"),
        ("explanation.tag_failure_rate", "no <explanation> tag or truncated"),
        ("null.shuffled.fve_own", "explanations rolled by one position (never identity)"),
        ("null.gaussian.fve_own", "L2-matched random Gaussian vectors through the AV"),
        ("null.predict_mean.fve_own", "constant mean-direction prediction"),
    ]
    for key, conv in rows:
        if key in f:
            table.add_row(key, _fmt(f[key]), conv)
    console.print(table)
    return {"pair": handle.name, "n": result.n, "figures": f, "conventions": result.conventions}


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)
