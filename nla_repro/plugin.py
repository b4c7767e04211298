"""pytest integration: options, markers, skips, and the fixtures users need for their checkpoints.

Loaded by the repository's top-level conftest.py (`pytest_plugins`), so `pytest` in a checkout has
everything. Claims are collected only with `--claims`; GPU tests are skipped with a reason when no
CUDA device is present; a claim about a checkpoint the user has not provided is skipped naming it; a test
that decodes through a `--backend` whose engine is unavailable is skipped naming the engine and how to
install it (fixture `nla_backend`), never run on another engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .backends import BACKENDS, DEFAULT_BACKEND


def pytest_addoption(parser):
    g = parser.getgroup("nla-repro")
    g.addoption("--claims", action="store_true", default=False,
                help="collect and run the published-claims suite (tests/claims)")
    g.addoption("--pair", action="append", default=[], metavar="NAME=AV_DIR,AR_DIR",
                help="a checkpoint pair to evaluate; NAME is a released pair name "
                     "(qwen2.5-7b-L20, gemma3-12b-L32, gemma3-27b-L41, llama3.3-70b-L53) or any label. "
                     "Repeatable. Default: the embedded default pair(s) of --default-pairs.")
    g.addoption("--default-pairs", default="smollm2", metavar="FAMILIES",
                help="embedded default pairs to evaluate when no --pair is given, comma-separated families "
                     "(smollm2, gemma3); two or more make the cross-family claims run on a real matrix")
    g.addoption("--base", action="append", default=[], metavar="NAME=BASE_DIR",
                help="base model for pair NAME's gold activations (HF model dir, or 'fixture' / 'gguf:<family>'); "
                     "default: the AV sidecar's base_checkpoint if it is local")
    g.addoption("--eval-size", type=int, default=None, metavar="N",
                help="number of held-out activations per experiment (default: per experiment)")
    g.addoption("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS),
                help="decoding engine for the AV (hf is the reference); tests needing an engine that is not "
                     "installed are skipped with a reason")
    g.addoption("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.addoption("--refresh", action="store_true", default=False,
                help="recompute cached results instead of reading them")
    g.addoption("--cache-dir", default=None, help="results cache root (default $NLA_REPRO_CACHE)")
    g.addoption("--examples-dir", default=None, metavar="DIR",
                help="folder of worked-example texts (<pair or base model name>.txt, the release repo's "
                     "examples/); claims on worked examples skip naming the missing file without it "
                     "(default $NLA_REPRO_EXAMPLES_DIR)")


def pytest_configure(config):
    if config.getoption("--cache-dir"):
        os.environ["NLA_REPRO_CACHE"] = str(Path(config.getoption("--cache-dir")).resolve())
    if config.getoption("--examples-dir"):
        os.environ["NLA_REPRO_EXAMPLES_DIR"] = str(Path(config.getoption("--examples-dir")).resolve())


def pytest_ignore_collect(collection_path, config):
    # Claims are opt-in: the fast CPU suite never even imports them.
    if "claims" in Path(collection_path).parts and not config.getoption("--claims"):
        return True
    return None


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def parse_default_pairs(value: str) -> tuple[str, ...]:
    """`smollm2,gemma3` -> ("smollm2", "gemma3"); unknown families are a usage error naming the known ones."""
    from .pairs import parse_families

    try:
        return parse_families(value)
    except ValueError as e:
        raise pytest.UsageError(f"--default-pairs: {e}") from e


def parse_pair_option(values: list[str]) -> dict[str, tuple[Path, Path]]:
    """`NAME=AV_DIR,AR_DIR` -> {NAME: (av, ar)}; errors name the offending value."""
    pairs = {}
    for v in values:
        name, sep, dirs = v.partition("=")
        parts = dirs.split(",")
        if not sep or len(parts) != 2 or not name:
            raise pytest.UsageError(f"--pair {v!r}: expected NAME=AV_DIR,AR_DIR")
        av, ar = (Path(p).expanduser() for p in parts)
        for role, p in (("AV", av), ("AR", ar)):
            if not p.is_dir():
                raise pytest.UsageError(f"--pair {v!r}: {role} directory {p} does not exist")
        pairs[name] = (av, ar)
    return pairs


@pytest.fixture(scope="session")
def nla_options(pytestconfig):
    return {
        "pairs": parse_pair_option(pytestconfig.getoption("--pair")),
        "default_pairs": parse_default_pairs(pytestconfig.getoption("--default-pairs")),
        "eval_size": pytestconfig.getoption("--eval-size"),
        "backend": pytestconfig.getoption("--backend"),
        "device": pytestconfig.getoption("--device") or ("cuda" if cuda_available() else "cpu"),
        "refresh": pytestconfig.getoption("--refresh"),
    }


@pytest.fixture(scope="session")
def nla_backend(nla_options) -> str:
    """The `--backend` name once its engine is known to be usable; otherwise every test that asks for it
    is skipped with the reason (`BackendUnavailable`: what is missing, how to install it)."""
    from .backends import BackendUnavailable, get_backend

    name = nla_options["backend"]
    try:
        get_backend(name)
    except BackendUnavailable as e:
        pytest.skip(f"--backend {name}: {e}")
    return name
