"""pytest-benchmark suite: `python -m pytest benchmarks --benchmark-only` (never collected by the plain
`python -m pytest`, whose testpaths is tests/). Performance statements in this project come from these
numbers (`--benchmark-json FILE`, then `python scripts/bench_report.py FILE`), never from timed asserts.

Every benchmark records the machine it ran on in ``extra_info`` (torch threads, visible CPU cores, load
average at the start) because the CPU machines are shared and a number means little without them.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def machine_info(benchmark):
    """Adds torch threads, visible cores and the 1-minute load average to the benchmark's extra_info."""
    import torch

    benchmark.extra_info.update(torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                                loadavg_1min_at_start=os.getloadavg()[0])
    return benchmark
