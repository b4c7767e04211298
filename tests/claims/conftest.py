"""Claims suite wiring (collected only with ``--claims``; see nla_repro/plugin.py).

One test per (claim, pair): ``test_claim[<claim-id>-<pair>]``. Pairs are the ``--pair`` options, else the
embedded default pairs of ``--default-pairs`` (``default-smollm2`` unless asked). Planning (which cases exist, which are skipped and why, which
are ``gpu``) is :func:`nla_repro.claims.run.plan_cases`; evaluation is :class:`ClaimRunner`.

The base model of a user pair comes from its AV sidecar's ``base_checkpoint`` or ``--base NAME=DIR`` (an
option read here only if the plugin registers it). Pairs decode with ``--backend`` (fixture ``nla_backend``:
an engine that is not installed skips every claim that would run, with the reason).
"""

from __future__ import annotations

import pytest

from nla_repro.claims import load_claims
from nla_repro.claims.run import ClaimRunner, plan_cases
from nla_repro.pairs import PairRegistry, default_pair_name, parse_base_option
from nla_repro.plugin import parse_default_pairs, parse_pair_option

_RECORDED: set[str] = set()


def _provided(config) -> list[str]:
    return list(parse_pair_option(config.getoption("--pair"))) or \
        [default_pair_name(f) for f in parse_default_pairs(config.getoption("--default-pairs"))]


def pytest_generate_tests(metafunc):
    if "claim_case" not in metafunc.fixturenames:
        return
    params = []
    for case in plan_cases(load_claims(), _provided(metafunc.config)):
        marks = [pytest.mark.claims]
        if case.gpu:
            marks.append(pytest.mark.gpu)
        if case.status is not None:
            # listed before the plugin's "needs a CUDA device" skip, so this reason is the one reported
            marks.append(pytest.mark.skip(reason=case.reason))
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("claim_case", params)


@pytest.fixture(scope="session")
def claim_runner(nla_options, nla_backend, pytestconfig):
    from nla_repro.cache import ResultsCache

    cache = ResultsCache()  # $NLA_REPRO_CACHE/results (--cache-dir sets the env var); the report reads it
    bases = parse_base_option(pytestconfig.getoption("--base", default=None) or [])
    registry = PairRegistry(dirs=nla_options["pairs"], bases=bases, cache=cache, device=nla_options["device"],
                            backend=nla_backend, defaults=nla_options["default_pairs"])
    return ClaimRunner(registry, cache=cache, eval_size=nla_options["eval_size"], refresh=nla_options["refresh"],
                       backend=nla_backend)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Record planned skips (pair not provided / not testable) as ClaimResults so the report lists them."""
    cs = getattr(item, "callspec", None)
    case = cs.params.get("claim_case") if cs is not None else None
    if case is None or case.status is None or case.id in _RECORDED:
        return
    from nla_repro.cache import ResultsCache

    _RECORDED.add(case.id)
    ClaimRunner(None, cache=ResultsCache()).record_untested(case)
