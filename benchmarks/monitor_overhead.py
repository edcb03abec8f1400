"""What do pipetune's monitors cost a burst?

Runs a fixed CPU-bound workload with the monitors off and on, interleaved as
off,on,on,off,... (ABBA, so slow drift hits both arms equally), and reports the median wall time
of each arm and the overhead ``median(on) / median(off) - 1`` with a bootstrap 95 % interval.

The default workload is pure Python: it holds the GIL, so it also pays for the sampler thread's
GIL hand-offs (the worst case for a Python sampler). ``--workload numpy`` multiplies matrices,
which releases the GIL like TensorFlow's kernels do.

    python benchmarks/monitor_overhead.py [--rounds 10] [--workload python|numpy] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipetune.monitors import Monitors  # noqa: E402

TARGET_RUN_S = 0.5
BOOTSTRAP_RESAMPLES = 2000


def _python_workload(units: int) -> None:
    total = 0
    for i in range(units * 10_000):
        total += i * i % 7


def _numpy_workload(units: int) -> None:
    import numpy as np

    matrix = np.random.default_rng(0).random((256, 256))
    for _ in range(units):
        matrix = matrix @ matrix
        matrix /= np.abs(matrix).max()  # keep the values finite


WORKLOADS: dict[str, Callable[[int], None]] = {"python": _python_workload,
                                               "numpy": _numpy_workload}


def _calibrate(workload: Callable[[int], None]) -> int:
    """Units of work that take about TARGET_RUN_S with the monitors off."""
    workload(1)  # imports and library start-up are no part of a unit's cost
    units = 1
    while True:
        started = time.perf_counter()
        workload(units)
        elapsed = time.perf_counter() - started
        if elapsed >= TARGET_RUN_S / 10:
            return max(1, round(units * TARGET_RUN_S / elapsed))
        units *= 4


def _timed_run(workload: Callable[[int], None], units: int,
               monitored: bool) -> tuple[float, float | None]:
    """Wall seconds of one run, and the monitors' samples per second when they were on."""
    # started before the timed window, as a burst does
    monitors = Monitors().start() if monitored else None
    started = time.perf_counter_ns()
    workload(units)
    ended = time.perf_counter_ns()
    seconds = (ended - started) / 1e9
    if monitors is None:
        return seconds, None
    sampled = monitors.report(started, ended)
    monitors.stop()
    return seconds, len(sampled.samples) / seconds


def _bootstrap_overhead_ci(off: list[float], on: list[float], seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(on, k=len(on)))
                    / statistics.median(rng.choices(off, k=len(off))) - 1
                    for _ in range(BOOTSTRAP_RESAMPLES))
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def _idle_sampler_cost(seconds: float = 1.0) -> tuple[float | None, str]:
    """CPU seconds the sampler thread burns per wall second while the burst itself sleeps.

    Less noisy than the wall-time comparison: it is the sampler's own cost, whatever the load.
    Its own thread's clock, not the process's: idle BLAS threads may still be spinning.
    """
    monitors = Monitors().start()
    cpu_started, wall_started = monitors.sampler_cpu_ns(), time.perf_counter_ns()
    time.sleep(seconds)
    cpu_ended, wall_ended = monitors.sampler_cpu_ns(), time.perf_counter_ns()
    note = monitors.stop().accelerator_note
    if cpu_started is None or cpu_ended is None:
        return None, note  # no per-thread CPU clock here
    return (cpu_ended - cpu_started) / (wall_ended - wall_started), note


def measure_overhead(rounds: int = 10, workload: str = "python") -> dict[str, Any]:
    """Median wall time with monitors off and on, and the overhead ratio with a 95 % CI."""
    if rounds < 1:
        raise ValueError(f"`rounds >= 1` must hold, but got {rounds}")
    run = WORKLOADS[workload]
    units = _calibrate(run)
    times: dict[bool, list[float]] = {False: [], True: []}
    sample_rates: list[float] = []
    for round_index in range(rounds):
        for monitored in ((False, True) if round_index % 2 == 0 else (True, False)):
            seconds, samples_per_second = _timed_run(run, units, monitored)
            times[monitored].append(seconds)
            if samples_per_second is not None:
                sample_rates.append(samples_per_second)
    off, on = times[False], times[True]
    low, high = _bootstrap_overhead_ci(off, on)
    sampler_cpu_fraction, note = _idle_sampler_cost()
    return {
        "workload": workload, "rounds": rounds, "units": units,
        "median_off_s": statistics.median(off), "median_on_s": statistics.median(on),
        "overhead_ratio": statistics.median(on) / statistics.median(off) - 1,
        "overhead_ci95": [low, high],
        "off_s": off, "on_s": on,  # raw, in run order within each arm
        "samples_per_second": statistics.median(sample_rates),
        "sampler_cpu_fraction": sampler_cpu_fraction,  # of one core, burst idle
        "accelerator_note": note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="python")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    result = measure_overhead(args.rounds, args.workload)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    low, high = result["overhead_ci95"]
    print(f"workload {result['workload']}, {result['rounds']} rounds of ~{TARGET_RUN_S} s")
    print(f"monitors off: median {result['median_off_s']:.4f} s")
    print(f"monitors on:  median {result['median_on_s']:.4f} s "
          f"({result['samples_per_second']:.0f} samples/s; {result['accelerator_note']})")
    print(f"overhead: {result['overhead_ratio']:+.2%} (95% CI {low:+.2%} .. {high:+.2%})")
    cpu = result["sampler_cpu_fraction"]
    print("sampler thread CPU while the burst sleeps: "
          + (f"{cpu:.2%} of one core" if cpu is not None else "unknown (no thread CPU clock)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
