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


# ---------------------------------------------------------------------------------- seed 003 §4-§5 extras

def _items(diag_by_row, off_by_row):
    """item_fve[a, b, row] for 2 pairs: the given diagonal and off-diagonal values per row."""
    x = np.empty((2, 2, len(diag_by_row)))
    for k, (d, o) in enumerate(zip(diag_by_row, off_by_row)):
        x[:, :, k] = [[d, o], [o, d]]
    return x


def test_select_items_follows_the_seeds_rules():
    from nla_repro.experiments.cross_family import select_items

    # rows: 0 best overall; 1 lost (home 0.9, across -3); 2 digit token, worst digit; 3 digit, better;
    # 4 failed somewhere (NaN) -> never selected; 5 decodes at home below 0.7 with a huge gap -> not "lost"
    x = _items([0.95, 0.9, 0.2, 0.6, 0.99, 0.5], [0.9, -3.0, 0.1, 0.5, 0.99, -9.0])
    x[0, 1, 4] = np.nan
    tokens = [",", " word", "1", "42", ".", " x"]
    sel = select_items(x, tokens)
    assert sel["best"] == 0 and sel["lost"] == 1 and sel["digits"] == 2
    means = {k: x[:, :, k].mean() for k in (0, 1, 2, 3, 5)}    # 0.925, -1.05, 0.15, 0.55, -4.25
    assert sel["typical"] == sorted(means, key=means.get)[(len(means) - 1) // 2] == 2
    assert select_items(x[:, :, [0]], [","])["digits"] is None  # no digit token: no digit item
    one = select_items(x[:1, :1, :], tokens)                     # a 1x1 "matrix" has no cross cells
    assert one["lost"] is None and one["best"] == 4              # row 4 is complete on the diagonal alone


def test_left_context_counts_rows_below_50_in_any_tokenisation():
    from nla_repro.experiments.cross_family import left_context_figures

    aligned = {"gemma3-27b-L41": [("d1", 50), ("d2", 60), ("d3", 70)],
               "qwen2.5-7b-L20": [("d1", 45), ("d2", 58), ("d3", 70)],
               "llama3.3-70b-L53": [("d1", 47), ("d2", 49), ("d3", 71)]}
    out = left_context_figures(aligned)
    assert out["matrix.left_context.min"] == 45 and out["matrix.left_context.n_below_50"] == 2
    assert out["matrix.left_context.min.qwen"] == 45 and out["matrix.left_context.n_below_50.llama70"] == 2
    assert out["matrix.left_context.n_below_50.gemma27"] == 0
