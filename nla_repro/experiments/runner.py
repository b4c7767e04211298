"""Run registered experiments on named pairs, typed and cached.

``run_experiment(name, ctx, pair_name) -> ExperimentResult`` calls the experiment registered under
``name`` (``@experiment`` in :mod:`.base`) unless the :class:`nla_repro.cache.ResultsCache` in
``ctx.cache`` already holds a result for the same key.  The key names everything that can change a
number: experiment name, the content hashes (``hash_checkpoint_dir``) of every AV/AR directory used,
the eval-set manifest hashes (main and, where used, adjacent layers), ``n``, the decoding named by the
registration, a code version (runner version + sha256 of the experiment's module source + nla_repro
version), the experiment params from ``ctx.options[name]``, the device, the content identity of any extra
inputs the registration declares (``inputs=``; e.g. a worked-example text's sha256), and the decoding
backend's name, version and code digest (``nla_repro.backends.identity``; an unavailable backend raises
``BackendUnavailable`` before the cache is read or anything is computed).  The backend also goes into the
result's provenance, and its name and version into the protocol (the report's experiments table).

Experiment functions return a dict of figures.  Keys starting with ``_`` are reserved for the runner
and removed from the figures: ``_n`` (rows behind the figures; default: the resolved n),
``_protocol`` (merged into ``protocol``), ``_conventions`` (merged over the registered conventions).
Top-level boolean figures are stored as 0/1 ints (``ExperimentResult`` accepts numbers, lists, dicts).

Helpers for experiment modules: :func:`resolve_n`, :func:`params`, :func:`eval_rows`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import threading
from pathlib import Path

from ..results import ExperimentResult
from .base import EXPERIMENTS, LAYER_CONVENTION, ExperimentContext

__all__ = ["RUNNER_VERSION", "COMPUTE_CALLS", "EXPERIMENT_MODULES", "load_experiments", "resolve_n", "params",
           "eval_rows", "cache_key", "run_experiment", "run_all", "pairs_for"]

RUNNER_VERSION = "runner/1"

#: experiment modules imported by :func:`load_experiments` (missing optional modules are reported, not hidden)
EXPERIMENT_MODULES = (
    "corroboration", "variance_baseline", "greedy_reproducibility", "best_of_n", "adjacent_layers",
    "cross_family", "ridge_baseline", "recipe_constants",
    # written by another helper:
    "quote_ban", "verbatim", "redaction", "two_tier_controls", "paragraph_ablation", "token_type_buckets",
    "worked_examples",
)

#: number of times each experiment function actually ran in this process (cache misses), by name
COMPUTE_CALLS: dict[str, int] = {}
_LOCK = threading.Lock()
_IMPORT_ERRORS: dict[str, str] = {}


def load_experiments(strict: bool = False) -> dict[str, str]:
    """Import every experiment module (registration happens at import).  Returns {module: error} for
    modules that failed to import; ``strict`` raises on the first one instead."""
    for mod in EXPERIMENT_MODULES:
        if mod in _IMPORT_ERRORS:
            continue
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}" or strict:
                raise
            _IMPORT_ERRORS[mod] = f"module not present: {e}"
        except Exception as e:  # a broken module must be visible, not silently skipped
            if strict:
                raise
            _IMPORT_ERRORS[mod] = f"{type(e).__name__}: {e}"
    return dict(_IMPORT_ERRORS)


def _meta(name: str) -> tuple:
    if name not in EXPERIMENTS:
        load_experiments()
    if name not in EXPERIMENTS:
        why = _IMPORT_ERRORS.get(name, "no module registers it")
        raise KeyError(f"experiment {name!r} is not registered ({why}); registered: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def resolve_n(ctx: ExperimentContext, name: str) -> int:
    """``ctx.eval_size`` if set, else ``ctx.options[name]["n"]``, else the registered ``default_n``."""
    _, meta = _meta(name)
    if ctx.eval_size is not None:
        n = int(ctx.eval_size)
    else:
        n = int(params(ctx, name).get("n", meta["default_n"]))
    if n < 2:
        raise ValueError(f"experiment {name!r}: n must be >= 2, found {n}")
    return n


def params(ctx: ExperimentContext, name: str, defaults: dict | None = None) -> dict:
    """Experiment parameters: ``defaults`` overridden by ``ctx.options[name]`` (a dict)."""
    opt = ctx.options.get(name, {}) if isinstance(ctx.options, dict) else {}
    if not isinstance(opt, dict):
        raise TypeError(f"ctx.options[{name!r}]: expected a dict of parameters, found {type(opt).__name__}")
    out = dict(defaults or {})
    out.update(opt)
    return out


def eval_rows(ctx: ExperimentContext, name: str, pair_name: str):
    """The first ``resolve_n`` rows of the pair's eval set (fewer if the set is smaller)."""
    return ctx.pairs[pair_name].eval_set(resolve_n(ctx, name))


def pairs_for(name: str, ctx: ExperimentContext, pair_name: str) -> list[str]:
    """Pairs whose checkpoints/eval sets an experiment reads (``needs=("all_pairs",)`` = every pair)."""
    _, meta = _meta(name)
    if "all_pairs" in meta.get("needs", ()):
        return sorted(ctx.pairs)
    return [pair_name]


def _module_digest(fn) -> str:
    try:
        src = Path(inspect.getsourcefile(fn)).read_bytes()
    except (TypeError, OSError):
        src = fn.__code__.co_code
    return hashlib.sha256(src).hexdigest()[:16]


RECIPE_MODULES = ("sidecar", "prompts", "inject", "verbalize", "reconstruct", "pair", "explanation", "metrics",
                  "decoding", "checkpoint", "families", "evalset", "activations")


def recipe_digest() -> str:
    """Hash of the recipe code every experiment runs through: a change there invalidates all results."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for m in RECIPE_MODULES:
        h.update((root / f"{m}.py").read_bytes())
    return h.hexdigest()[:16]


def cache_key(name: str, ctx: ExperimentContext, pair_name: str) -> dict:
    from .. import backends, provenance
    from ..cache import hash_checkpoint_dir

    fn, meta = _meta(name)
    n = resolve_n(ctx, name)
    used = pairs_for(name, ctx, pair_name)
    backend = {p: backends.identity(ctx.pairs[p].backend) for p in used}  # first: unavailable = no work
    # extra inputs (content hashes); a missing one raises ExperimentSkipped before any work
    inputs = meta["inputs"](ctx, pair_name) if meta.get("inputs") is not None else None
    ckpt, manifests = {}, {}
    for p in used:
        h = ctx.pairs[p]
        ckpt[p] = {"av": hash_checkpoint_dir(h.av_dir), "ar": hash_checkpoint_dir(h.ar_dir)}
        if "no_eval_set" in meta.get("needs", ()):  # reads its own inputs only: no held-out set to build
            continue
        es = h.eval_set(n)
        manifests[p] = {"main": es.manifest_hash, "rows": len(es)}
        if "adjacent" in meta.get("needs", ()):
            manifests[p]["adjacent"] = {str(L): f(n).manifest_hash for L, f in sorted(h.adjacent_eval_sets.items())}
    return {
        "step": f"experiment-{name}",
        "checkpoint": ckpt,
        "pair": pair_name,
        "eval_manifest": manifests,
        "n": n,
        "decoding": meta["decoding"],
        "code_version": {"runner": RUNNER_VERSION, "module": _module_digest(fn), "recipe": recipe_digest(),
                         "nla_repro": provenance.nla_repro_version()},
        "libraries": provenance.library_versions(),   # torch/transformers/tokenizers change numbers
        "params": params(ctx, name),
        "device": {p: ctx.pairs[p].device for p in used},
        "backend": backend,
        **({"inputs": inputs} if inputs is not None else {}),
    }


def _figures(raw: dict, name: str) -> tuple[dict, dict]:
    if not isinstance(raw, dict):
        raise TypeError(f"experiment {name!r} returned {type(raw).__name__}; expected a dict of figures")
    reserved = {k: raw[k] for k in raw if k.startswith("_")}
    figs = {}
    for k, v in raw.items():
        if k.startswith("_"):
            continue
        figs[k] = int(v) if isinstance(v, bool) else v
    return figs, reserved


def _compute(name: str, ctx: ExperimentContext, pair_name: str, key: dict) -> ExperimentResult:
    from .. import provenance

    fn, meta = _meta(name)
    with _LOCK:
        COMPUTE_CALLS[name] = COMPUTE_CALLS.get(name, 0) + 1
    figs, reserved = _figures(fn(ctx, pair_name), name)
    conventions = {"denominator": meta["denominator"], "failure_convention": meta["failure_convention"],
                   "decoding": meta["decoding"], "layer_convention": meta.get("layer_convention", LAYER_CONVENTION)}
    conventions.update(reserved.get("_conventions", {}))
    used = pairs_for(name, ctx, pair_name)
    protocol = {"experiment": name, "n_requested": key["n"], "params": key["params"],
                "eval_sets": {p: ctx.pairs[p].eval_set(key["n"]).name for p in used
                              if "no_eval_set" not in meta.get("needs", ())},
                "backend": {p: f"{b['name']} {b['version']}" for p, b in key["backend"].items()}}
    protocol.update(reserved.get("_protocol", {}))
    fp = provenance.environment_fingerprint()
    prov = {"cache_step": key["step"], "checkpoints": key["checkpoint"], "eval_manifest": key["eval_manifest"],
            "code_version": key["code_version"], "backend": key["backend"], "environment": fp}
    return ExperimentResult(experiment=name, pair=pair_name, protocol=protocol, conventions=conventions,
                            figures=figs, n=int(reserved.get("_n", key["n"])), provenance=prov)


def run_experiment(name: str, ctx: ExperimentContext, pair_name: str) -> ExperimentResult:
    """Run (or fetch from ``ctx.cache``) experiment ``name`` on ``pair_name`` (a key of ``ctx.pairs``)."""
    _meta(name)
    if pair_name not in ctx.pairs and "all_pairs" not in _meta(name)[1].get("needs", ()):
        raise KeyError(f"pair {pair_name!r} not in ctx.pairs ({sorted(ctx.pairs)})")
    key = cache_key(name, ctx, pair_name)
    if ctx.cache is None:
        return _compute(name, ctx, pair_name, key)
    entry = ctx.cache.get_or_compute(key, lambda: _compute(name, ctx, pair_name, key).to_dict(),
                                     refresh=ctx.refresh)
    return ExperimentResult.from_dict(entry.payload)


def all_pairs_label(ctx: ExperimentContext) -> str:
    return "all:" + ",".join(sorted(ctx.pairs))


def run_all(ctx: ExperimentContext, names=None) -> dict[tuple[str, str], ExperimentResult | Exception]:
    """Every registered experiment (or ``names``) on every pair; experiments that need all pairs
    (cross_family, ridge_baseline) run once under the pair label ``all:<names>``.  Failures are
    returned as the exception object under their (experiment, pair) key, never dropped."""
    errors = load_experiments()
    out: dict[tuple[str, str], ExperimentResult | Exception] = {}
    for mod, err in errors.items():
        if not err.startswith("module not present") and (names is None or mod in names):
            out[(mod, "*")] = ImportError(f"experiment module {mod!r} failed to import: {err}")
    for name in sorted(names if names is not None else EXPERIMENTS):
        _, meta = _meta(name)
        targets = [all_pairs_label(ctx)] if "all_pairs" in meta.get("needs", ()) else sorted(ctx.pairs)
        for p in targets:
            try:
                out[(name, p)] = run_experiment(name, ctx, p)
            except Exception as e:  # returned, not swallowed: the caller reports it
                out[(name, p)] = e
    return out
