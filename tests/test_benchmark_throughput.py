"""The throughput benchmark's paired ratio (benchmarks/throughput.py)."""

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("throughput")


def test_paired_ratio_cancels_what_moves_whole_rounds(bench):
    # b is 2 % slower than a in every round, while the machine's speed moves whole
    # rounds by up to 40 %: the per-round ratio finds the 2 %, with a tight interval.
    speed = [1.0, 1.4, 1.0, 1.3, 1.0, 1.1, 1.2, 1.0, 1.35, 1.05, 1.0, 1.25]
    a = [1.0 * s for s in speed]
    b = [1.02 * s for s in speed]
    paired = bench.paired_ratio(b, a)
    assert paired["median"] == pytest.approx(1 / 1.02)
    assert paired["ci95"][0] == pytest.approx(1 / 1.02) and paired["rounds"] == len(speed)


def test_paired_ratio_interval_covers_noisy_rounds(bench):
    import numpy as np

    rng = np.random.default_rng(0)
    a = 1.0 + 0.05 * rng.standard_normal(40)
    b = 1.03 * (1.0 + 0.05 * rng.standard_normal(40))
    low, high = bench.paired_ratio(b, a)["ci95"]
    assert low < 1 / 1.03 < high and high - low < 0.1
