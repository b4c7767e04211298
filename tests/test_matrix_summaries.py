"""Seed 003's matrix summaries derived from transfer-matrix cells (values from seed 003's own table)."""

import numpy as np
import pytest

from nla_repro.experiments.cross_family import matrix_summaries

NAMES = ["qwen2.5-7b-L20", "gemma3-27b-L41"]
FVE = np.array([[0.748, 0.520], [0.581, 0.769]])
FIGS = {"cross_family.ci.qwen.gemma27": [0.495, 0.540], "cross_family.ci.gemma27.qwen": [0.567, 0.596],
        "cross_family.null.qwen.qwen": -0.9, "cross_family.null.gemma27.qwen": -0.7}


def test_matrix_summaries_match_hand_computation():
    out = matrix_summaries(NAMES, FVE, FIGS)
    assert out["matrix.fve.qwen.gemma27"] == pytest.approx(0.520)
    assert out["matrix.frac.qwen.gemma27"] == pytest.approx(0.520 / 0.769)   # fraction of target's ceiling
    assert out["matrix.frac.gemma27.qwen"] == pytest.approx(0.581 / 0.748)
    assert out["matrix.fve.off_diagonal_min"] == pytest.approx(0.520)
    assert out["matrix.row_mean.gemma27"] == pytest.approx(0.581)
    assert out["matrix.ci_halfwidth"] == pytest.approx(0.025)               # 0.520 - 0.495
    assert out["matrix.frac.into_gemma27"] == [pytest.approx(0.520 / 0.769)]
    assert sorted(out["matrix.null"]) == [-0.9, -0.7]


def test_diagonal_is_never_counted_as_transfer():
    out = matrix_summaries(NAMES, np.array([[0.1, 0.5], [0.6, 0.9]]), {})
    assert out["matrix.fve.off_diagonal_min"] == pytest.approx(0.5)  # the 0.1 diagonal is ignored
