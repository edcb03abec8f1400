"""The monitor-overhead benchmark's arithmetic (benchmarks/monitor_overhead.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from monitor_overhead import _timed_run, paired_overhead  # noqa: E402


def test_the_overhead_is_paired_within_rounds():
    # A drift that doubles the times from round to round cancels within each round.
    off, on = [1.0, 2.0, 4.0, 8.0], [1.1, 2.2, 4.4, 8.8]
    overhead, low, high = paired_overhead(off, on)
    assert overhead == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    overhead, low, high = paired_overhead([1.0, 1.0, 1.0], [1.0, 1.02, 1.04])
    assert overhead == pytest.approx(0.02) and low == pytest.approx(0.0) and high == pytest.approx(0.04)


def test_rounds_must_pair():
    with pytest.raises(ValueError, match="one off and one on run per round"):
        paired_overhead([1.0, 1.0], [1.0])


def test_a_monitored_run_reports_the_sampler_s_share_of_a_core():
    seconds, samples_per_second, cpu = _timed_run(lambda units: time.sleep(units / 10), 3, True)
    assert seconds > 0 and samples_per_second > 0
    assert cpu is None or 0.0 <= cpu < 0.5  # a 20 Hz sampler, not a busy loop
    assert _timed_run(lambda units: None, 1, False)[1:] == (None, None)
