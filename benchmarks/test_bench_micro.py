"""Micro-benchmarks of pure pieces on fixed inputs: the metric maths (fp64) on 4096 x 576 vectors, and
the AR's right-padding + readout-index step on a 32-row batch of ragged prompts."""

from __future__ import annotations

import numpy as np
import pytest

ROWS, D = 4096, 576
V_TRAIN = 0.4913  # the default pair's training denominator (README)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(ROWS, D)).astype(np.float32)
    pred = (gold + rng.normal(size=(ROWS, D))).astype(np.float32)
    return pred, gold


def test_mse_nrm_and_fve_train(machine_info, vectors):
    from nla_repro import metrics

    pred, gold = vectors
    fve = machine_info(lambda: metrics.fve_nrm(metrics.mse_nrm(pred, gold), V_TRAIN))
    machine_info.extra_info.update(shape=[ROWS, D], denominator="train", fve_nrm=fve)
    assert np.isfinite(fve)


def test_fve_own_denominator(machine_info, vectors):
    from nla_repro import metrics

    pred, gold = vectors
    mse = metrics.mse_nrm(pred, gold)
    res = machine_info(metrics.fve_with, mse, gold, "own")
    machine_info.extra_info.update(shape=[ROWS, D], denominator="own (Var of the gold's v_nrm)", fve_nrm=res.value)
    assert np.isfinite(res.value)


def test_ar_right_padding_and_readout(machine_info):
    from nla_repro.reconstruct import pad_right, readout_index

    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 49152, size=int(n)).tolist() for n in rng.integers(20, 300, size=32)]

    def step():
        _, mask = pad_right(ids, 0)
        return readout_index(mask)

    idx = machine_info(step)
    machine_info.extra_info.update(rows=len(ids), max_len=max(map(len, ids)))
    assert idx.tolist() == [len(x) - 1 for x in ids]
