"""Published claims as tests: ``pytest --claims`` (any-pair claims on the default pair run on CPU);
``pytest -m gpu --claims --pair NAME=AV,AR`` for the released checkpoints."""

from __future__ import annotations

import pytest

from nla_repro.claims.run import failure_message


def test_claim(claim_case, claim_runner):
    cr = claim_runner.evaluate(claim_case)
    if cr.status == "pass":
        return
    if cr.status in ("skipped", "not_testable"):
        pytest.skip(cr.message)
    pytest.fail(failure_message(cr), pytrace=False)
