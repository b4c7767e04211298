"""`nla-repro` command line: thin dispatch onto the library; every number printed names its convention."""

from __future__ import annotations

import argparse
import json
import sys

from .backends import BACKENDS, DEFAULT_BACKEND
from .pairs import DEFAULT_PAIRS


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_default(args) -> int:
    from .default_pair.materialize import materialize

    dirs = materialize(args.family)
    print(f"av {dirs.av}")
    print(f"ar {dirs.ar}")
    return 0


def cmd_check(args) -> int:
    """Load a pair through every contract check; print what was verified."""
    from .pair import load_pair

    pair = load_pair(args.av, args.ar, device=args.device)
    sc_av, sc_ar = pair.av.sidecar, pair.ar.sidecar
    print(f"AV {args.av}: {pair.av.family.model_type}, d={sc_av.d_model}, injection_scale={sc_av.injection_scale}, "
          f"marker {sc_av.injection_char!r}={sc_av.injection_token_id}, embed_scale={pair.av.embed_scale:.4f}")
    print(f"AR {args.ar}: K={sc_ar.extraction_layer_index} ({sc_ar.layer_convention}), "
          f"mse_scale={sc_ar.mse_scale}, suffix={list(sc_ar.critic_suffix_ids or [])}")
    print("sidecar contract, tokenizer checks, AR layer count, value head: OK")
    return 0


def cmd_run(args) -> int:
    """The main job: round-trip held-out activations through a pair and print the fidelity table."""
    from .main_job import run_main_job

    summary = run_main_job(av=args.av, ar=args.ar, base=args.base, family=args.family, n=args.n, device=args.device,
                           refresh=args.refresh, backend=args.backend)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_experiment(args) -> int:
    """One experiment on the embedded default pair(s), cached for `nla-repro report`."""
    from .experiment_job import print_results, run_experiment_job
    from .pairs import parse_families

    results = run_experiment_job(args.name, families=parse_families(args.families), eval_size=args.eval_size,
                                 device=args.device, backend=args.backend, refresh=args.refresh)
    print_results(results)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.results, out_path=args.out)
    print(f"wrote {out}")
    return 0


def cmd_cache(args) -> int:
    from .cache import ResultsCache

    cache = ResultsCache(args.root) if args.root else ResultsCache()
    if args.action == "list":
        for entry in cache.list():
            print(entry)
    elif args.action == "clear":
        n = cache.clear(step=args.step)
        print(f"removed {n} entries")
    elif args.action == "prune":
        if not args.before:
            raise ValueError("cache prune needs --before TIME (ISO-8601, e.g. 2026-11-21T22:30:00Z)")
        n = cache.prune(args.before, step=args.step)
        print(f"removed {n} entries created before {args.before}")
    else:
        print(json.dumps(cache.stats(), indent=2, sort_keys=True))
    return 0


DEFAULT_FAMILIES = tuple(sorted(fam for fam, _ in DEFAULT_PAIRS.values()))  # the embedded default pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nla-repro", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("default", help="materialize the embedded default pair; prints 'av PATH' and 'ar PATH'")
    d.add_argument("--family", default="smollm2", choices=DEFAULT_FAMILIES)
    d.set_defaults(fn=cmd_default)

    c = sub.add_parser("check", help="validate an AV/AR pair against the released contract")
    c.add_argument("--av", required=True)
    c.add_argument("--ar", required=True)
    c.add_argument("--device", default="cpu")
    c.set_defaults(fn=cmd_check)

    r = sub.add_parser("run", help="main job: round-trip held-out activations, print fidelity table")
    r.add_argument("--av", help="AV directory (default: the embedded default pair)")
    r.add_argument("--ar", help="AR directory (default: the embedded default pair)")
    r.add_argument("--base", help="base model directory for gold activations (default: the AV sidecar's "
                   "base_checkpoint, if it is a local directory or in the local HF cache)")
    r.add_argument("--family", default="smollm2", choices=DEFAULT_FAMILIES,
                   help="default pair family when --av/--ar are not given")
    r.add_argument("--n", type=int, default=64, help="number of held-out activations")
    r.add_argument("--device", default="cpu")
    r.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS),
                   help="AV decoding engine (hf is the reference; sglang and vllm need a live server, see backends/)")
    r.add_argument("--refresh", action="store_true", help="recompute instead of reading the cache")
    r.add_argument("--json", action="store_true", help="also print the summary as JSON")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("experiment", help="run one experiment on the embedded default pair(s) and cache it "
                       "(figures no claim measures there, e.g. ridge scaling, then appear in `report`)")
    e.add_argument("name", help="experiment name (nla_repro/experiments/)")
    e.add_argument("--families", default="smollm2", metavar="FAMILIES",
                   help="comma-separated default-pair families, e.g. smollm2,gemma3 (two or more for "
                        "cross_family / ridge_baseline)")
    e.add_argument("--eval-size", type=int, default=None, help="eval rows (default: the experiment's own)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS))
    e.add_argument("--refresh", action="store_true", help="recompute instead of reading the cache")
    e.set_defaults(fn=cmd_experiment)

    rep = sub.add_parser("report", help="regenerate REPORT.md from cached results (no recompute)")
    rep.add_argument("--results", default=None, help="results cache root or directory of result JSON")
    rep.add_argument("--out", default="REPORT.md")
    rep.set_defaults(fn=cmd_report)

    ca = sub.add_parser("cache", help="list / clear / prune / stats of the results cache")
    ca.add_argument("action", choices=["list", "clear", "prune", "stats"])
    ca.add_argument("--root", default=None)
    ca.add_argument("--step", default=None, help="with clear / prune: only entries of this step")
    ca.add_argument("--before", default=None, help="with prune: remove entries created before this ISO-8601 "
                    "time (UTC if no offset), e.g. results of a checkpoint since replaced")
    ca.set_defaults(fn=cmd_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nla-repro {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
