"""Experiments: registered functions ``(ctx, pair_name) -> figures``, run and cached by :mod:`.runner`.

Importing this package does not import the experiment modules (they import :mod:`nla_repro.evalset`,
which imports :mod:`.base`); call :func:`runner.load_experiments` (``run_experiment`` does it lazily).
"""

from .base import (EXPERIMENTS, LAYER_CONVENTION, EvalSet, ExperimentContext, PairHandle,  # noqa: F401
                   experiment)


def run_experiment(name, ctx, pair_name):
    from .runner import run_experiment as _run

    return _run(name, ctx, pair_name)


def run_all(ctx, names=None):
    from .runner import run_all as _run_all

    return _run_all(ctx, names)


__all__ = ["EXPERIMENTS", "LAYER_CONVENTION", "EvalSet", "ExperimentContext", "PairHandle", "experiment",
           "run_experiment", "run_all"]
