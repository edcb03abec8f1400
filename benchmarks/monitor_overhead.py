"""What do pipetune's monitors cost a burst?

Two measures. The sampler thread's own CPU time per wall second while the workload runs: what
it takes from a burst, the GIL it holds included (a Python thread holds the GIL while it uses
the CPU). And the wall time of the workload:

Runs a fixed CPU-bound workload with the monitors off and on, interleaved as
off,on,on,off,... (ABBA, so slow drift hits both arms equally), and reports the median wall time
of each arm and the overhead paired within rounds: the median over rounds of ``on / off - 1``,
with a bootstrap 95 % interval over rounds. Pairing cancels the drift between rounds, which an
unpaired comparison of the two arms' medians keeps (its interval was about +-4 % at 10 rounds,
too wide to check a 1 % target). On the project's 2-core VMs the wall time has a platform
effect larger than the sampler's cost: from some run on, the monitored runs ran 5-10 % *faster*,
also each in a fresh process (2026-12-05), so the wall-time ratio is reported but the sampler's
CPU share is the check.

The default workload is pure Python: it holds the GIL, so it also pays for the sampler thread's
GIL hand-offs (the worst case for a Python sampler). ``--workload numpy`` multiplies matrices,
which releases the GIL like TensorFlow's kernels do.

    python benchmarks/monitor_overhead.py [--rounds 20] [--workload python|numpy] [--json]
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
               monitored: bool) -> tuple[float, float | None, float | None]:
    """Wall seconds of one run; when the monitors were on, their samples per second and their
    thread's CPU seconds per wall second during the run (None without a thread CPU clock)."""
    # started before the timed window, as a burst does
    monitors = Monitors().start() if monitored else None
    cpu_started = monitors.sampler_cpu_ns() if monitors else None
    started = time.perf_counter_ns()
    workload(units)
    ended = time.perf_counter_ns()
    seconds = (ended - started) / 1e9
    if monitors is None:
        return seconds, None, None
    cpu_ended = monitors.sampler_cpu_ns()
    sampled = monitors.report(started, ended)
    monitors.stop()
    cpu = None if cpu_started is None or cpu_ended is None else (cpu_ended - cpu_started) / (ended - started)
    return seconds, len(sampled.samples) / seconds, cpu


def paired_overhead(off: list[float], on: list[float], seed: int = 0) -> tuple[float, float, float]:
    """The median over rounds of on / off - 1 (round i's runs are ``off[i]`` and ``on[i]``), and
    its bootstrap 95 % interval over rounds."""
    if len(off) != len(on) or not off:
        raise ValueError(f"one off and one on run per round, but got {len(off)} and {len(on)}")
    overheads = [b / a - 1 for a, b in zip(off, on)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(overheads, k=len(overheads)))
                     for _ in range(BOOTSTRAP_RESAMPLES))
    return (statistics.median(overheads), medians[int(0.025 * len(medians))],
            medians[int(0.975 * len(medians)) - 1])


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


def measure_overhead(rounds: int = 20, workload: str = "python") -> dict[str, Any]:
    """Median wall time with monitors off and on, and the overhead ratio with a 95 % CI."""
    if rounds < 1:
        raise ValueError(f"`rounds >= 1` must hold, but got {rounds}")
    run = WORKLOADS[workload]
    units = _calibrate(run)
    times: dict[bool, list[float]] = {False: [], True: []}
    sample_rates: list[float] = []
    loaded_cpu: list[float] = []
    for round_index in range(rounds):
        for monitored in ((False, True) if round_index % 2 == 0 else (True, False)):
            seconds, samples_per_second, cpu = _timed_run(run, units, monitored)
            times[monitored].append(seconds)
            if samples_per_second is not None:
                sample_rates.append(samples_per_second)
            if cpu is not None:
                loaded_cpu.append(cpu)
    off, on = times[False], times[True]
    overhead, low, high = paired_overhead(off, on)
    sampler_cpu_fraction, note = _idle_sampler_cost()
    return {
        "workload": workload, "rounds": rounds, "units": units,
        "median_off_s": statistics.median(off), "median_on_s": statistics.median(on),
        "overhead_ratio": overhead,
        "overhead_ci95": [low, high],
        "off_s": off, "on_s": on,  # raw, round by round
        "samples_per_second": statistics.median(sample_rates),
        "sampler_cpu_fraction": sampler_cpu_fraction,  # of one core, burst idle
        # of one core, while the workload ran: what the sampler took from it, GIL included
        "sampler_cpu_fraction_loaded": statistics.median(loaded_cpu) if loaded_cpu else None,
        "accelerator_note": note,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
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
    loaded = result["sampler_cpu_fraction_loaded"]
    print("sampler thread CPU while the workload runs: "
          + (f"{loaded:.2%} of one core" if loaded is not None else "unknown (no thread CPU clock)"))
    print("sampler thread CPU while the burst sleeps: "
          + (f"{cpu:.2%} of one core" if cpu is not None else "unknown (no thread CPU clock)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
