"""Check pipetune's NVML sampler (pipetune.monitors, unmodified) against a real NVIDIA GPU.

Three phases under one ``Monitors``: idle, a saturating bf16 matmul loop (PyTorch, else CuPy in
fp16), and the same work for half of every 200 ms. Per phase it records kernel-active %, memory,
power, SM clock, PCIe throughput, the sample rate and the sampler thread's CPU time, checks the
numbers, and writes a markdown table. Needs nvidia-ml-py, psutil and torch or cupy; no TensorFlow.

    python benchmarks/gpu_check.py [--out reports/gpu/gpu_check.md] [--gpu 0]

Exit status: 0 every check passed, 1 a check failed, 2 it cannot run here (no GPU, no load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

if __package__ in (None, ""):  # run as a script: make the repository's package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipetune.monitors import PCIE_PERIOD_S, Monitors, clip, gpu_environment  # noqa: E402
from pipetune.results import MonitorReport  # noqa: E402

NVML_FINEST_PERIOD_S = 1 / 6  # nvmlDeviceGetUtilizationRates: "between 1 second and 1/6 second"
NVML_LONGEST_PERIOD_S = 1.0
GAP_FACTOR = 3  # gap-free: no two consecutive samples further apart than 3 expected periods
DUTY_PERIOD_S = 0.2
DUTY_FRACTION = 0.5
STEP_TARGET_S = 0.005  # one synchronised chunk of work; bounds how late a busy window ends
GAUGES = (("memory_used_bytes", "memory used (MiB, max)", max, 1 / 2**20),
          ("power_w", "power (W, median)", statistics.median, 1.0),
          ("sm_clock_mhz", "SM clock (MHz, median)", statistics.median, 1.0),
          ("pcie_rx_kbps", "PCIe rx (KB/s, median)", statistics.median, 1.0),
          ("pcie_tx_kbps", "PCIe tx (KB/s, median)", statistics.median, 1.0))


class LoadUnavailable(RuntimeError):
    """No way to put work on the GPU here (neither PyTorch nor CuPy sees a CUDA device)."""


class Load(Protocol):
    description: str

    def warm_up(self) -> None: ...
    def saturate(self, seconds: float) -> None: ...
    def duty_cycle(self, seconds: float, busy_fraction: float, period_s: float) -> None: ...


class MatmulLoad:
    """Square matmuls in chunks of ~5 ms, each followed by a device synchronise, so the host
    knows when the GPU is really busy and a busy window ends within one chunk of its deadline."""

    def __init__(self, description: str, matmul: Callable[[], None],
                 synchronize: Callable[[], None]) -> None:
        self.description, self._matmul, self._synchronize = description, matmul, synchronize
        self._per_step = 1

    def warm_up(self) -> None:
        self._step()  # library init, kernel selection
        started = time.perf_counter()
        for _ in range(10):
            self._matmul()
        self._synchronize()
        seconds_each = (time.perf_counter() - started) / 10
        self._per_step = max(1, round(STEP_TARGET_S / max(seconds_each, 1e-9)))

    def saturate(self, seconds: float) -> None:
        self._busy_until(time.perf_counter_ns() + int(seconds * 1e9))

    def duty_cycle(self, seconds: float, busy_fraction: float, period_s: float) -> None:
        start, period_ns = time.perf_counter_ns(), int(period_s * 1e9)
        for k in range(max(1, round(seconds / period_s))):
            self._busy_until(start + k * period_ns + int(busy_fraction * period_ns))
            time.sleep(max(0.0, (start + (k + 1) * period_ns - time.perf_counter_ns()) / 1e9))

    def _busy_until(self, deadline_ns: int) -> None:
        while time.perf_counter_ns() < deadline_ns:
            self._step()

    def _step(self) -> None:
        for _ in range(self._per_step):
            self._matmul()
        self._synchronize()


def gpu_load(size: int = 4096) -> MatmulLoad:
    """A matmul load on CUDA device 0 via PyTorch (bf16), else CuPy (fp16: no bf16 there)."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA 0 = NVML 0 (bus order)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = torch.empty_like(a)
        return MatmulLoad(f"PyTorch {torch.__version__} bf16 matmul {size}x{size}",
                          lambda: torch.matmul(a, b, out=out), torch.cuda.synchronize)
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except (ImportError, RuntimeError):  # CUDARuntimeError is a RuntimeError
        count = 0
    if count < 1:
        raise LoadUnavailable("No GPU load: neither PyTorch nor CuPy can use a CUDA device "
                              "(pip install torch)")
    a, b = (cupy.random.standard_normal((size, size), dtype=cupy.float32).astype(cupy.float16)
            for _ in range(2))
    out = cupy.empty_like(a)
    return MatmulLoad(f"CuPy {cupy.__version__} fp16 matmul {size}x{size}",
                      lambda: cupy.matmul(a, b, out=out), cupy.cuda.Device().synchronize)


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start_ns: int
    end_ns: int
    sampler_cpu_ns: int | None  # CPU time of the sampler thread during the phase

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


def run_phases(load: Load, durations: dict[str, float],
               cpu_clock: Callable[[], int | None]) -> list[Phase]:
    """Idle, saturated and duty-cycled phases back to back; ``durations`` maps name -> s;
    ``cpu_clock`` reads the sampler thread's CPU time (``Monitors.sampler_cpu_ns``)."""
    actions: dict[str, Callable[[float], None]] = {
        "idle": time.sleep, "saturated": load.saturate,
        "duty-cycled": lambda s: load.duty_cycle(s, DUTY_FRACTION, DUTY_PERIOD_S)}
    phases = []
    for name, action in actions.items():
        cpu_start, start = cpu_clock(), time.perf_counter_ns()
        action(durations[name])
        end, cpu_end = time.perf_counter_ns(), cpu_clock()
        cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
        phases.append(Phase(name, start, end, cpu))
    return phases


def _stream(report: MonitorReport, metric: str) -> list[tuple[int, float]]:
    return [(s.t_ns, s.value) for s in report.samples if s.metric == metric]


def _percent_stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    return f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"


def phase_table(report: MonitorReport, phases: list[Phase], gpu: int) -> str:
    """Markdown rows = metrics, columns = phases; unreadable metrics say absent, never 0."""
    unavailable = dict(report.unavailable)
    windows = [clip(report, [(p.start_ns, p.end_ns)]) for p in phases]
    kernel = f"gpu{gpu}.kernel_active_percent"
    rows = [["kernel-active % (min / median / max)"]
            + [_percent_stats([v for _, v in _stream(w, kernel)]) for w in windows]]
    for suffix, label, summary, scale in GAUGES:
        metric, cells = f"gpu{gpu}.{suffix}", []
        for window in windows:
            values = [v for _, v in _stream(window, metric)]
            cells.append(f"absent ({unavailable[metric]})" if metric in unavailable
                         else f"{summary(values) * scale:,.0f}" if values else "no samples")
        rows.append([label] + cells)
    for label, metric in (("samples/s, kernel-active", kernel),
                          ("samples/s, memory gauge", f"gpu{gpu}.memory_used_bytes")):
        rows.append([label] + [f"{len(_stream(w, metric)) / p.seconds:.1f}"
                               for w, p in zip(windows, phases)])
    rows.append(["sampler thread CPU (% of one core)"]
                + [f"{100 * p.sampler_cpu_ns / (p.end_ns - p.start_ns):.2f}"
                   if p.sampler_cpu_ns is not None else "absent (no thread CPU clock)"
                   for p in phases])
    head = ["metric"] + [f"{p.name} ({p.seconds:.1f} s)" for p in phases]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _median_check(report: MonitorReport, phase: Phase, gpu: int, low: float, high: float,
                  rule: str) -> Check:
    values = [v for _, v in _stream(clip(report, [(phase.start_ns, phase.end_ns)]),
                                    f"gpu{gpu}.kernel_active_percent")]
    if not values:
        return Check(f"{phase.name} kernel-active median {rule}", False, "no samples")
    median = statistics.median(values)
    return Check(f"{phase.name} kernel-active median {rule}", low < median < high,
                 f"median {median:.1f}% over {len(values)} samples")


def _clock_check(report: MonitorReport, phases: list[Phase], gpu: int, interval_s: float,
                 lifetime: tuple[int, int]) -> Check:
    """Same clock as perf_counter_ns: every stamp inside the monitor's lifetime, and the load's
    start shows up no earlier than it happened, no later than NVML's longest period + 2 polls."""
    outside = [s for s in report.samples if not lifetime[0] <= s.t_ns <= lifetime[1]]
    saturated, idle = phases[1], phases[0]
    busy = [t for t, v in _stream(report, f"gpu{gpu}.kernel_active_percent")
            if v >= 50 and t >= (idle.start_ns + idle.end_ns) // 2]
    if outside or not busy:
        return Check("timestamps on the perf_counter_ns clock", False,
                     f"{len(outside)} samples outside the monitor's lifetime; "
                     f"{len(busy)} samples >= 50% after the idle midpoint")
    lag_s = (min(busy) - saturated.start_ns) / 1e9
    limit_s = NVML_LONGEST_PERIOD_S + 2 * interval_s
    return Check("timestamps on the perf_counter_ns clock", 0 <= lag_s <= limit_s,
                 f"load started at 0 s, first >= 50% sample at {lag_s * 1000:+.0f} ms "
                 f"(allowed 0 to +{limit_s * 1000:.0f} ms); all stamps inside the "
                 "monitor's lifetime")


def _order_check(report: MonitorReport, phases: list[Phase], gpu: int,
                 interval_s: float) -> Check:
    """Per metric, in the order recorded: stamps never decrease and no gap exceeds GAP_FACTOR
    expected periods (the polling interval; kernel-active: at least NVML's 1/6 s; PCIe: at
    least the sampler's PCIE_PERIOD_S)."""
    window = clip(report, [(phases[0].start_ns, phases[-1].end_ns)])
    metrics = sorted({s.metric for s in window.samples if s.metric.startswith(f"gpu{gpu}.")})
    problems, widest = [], (0.0, "")
    for metric in metrics:
        stamps = [t for t, _ in _stream(window, metric)]
        if any(b < a for a, b in zip(stamps, stamps[1:])):
            problems.append(f"{metric} goes back in time")
        period_s = max(interval_s, NVML_FINEST_PERIOD_S if "kernel" in metric
                       else PCIE_PERIOD_S if "pcie" in metric else 0.0)
        edges = [phases[0].start_ns] + stamps + [phases[-1].end_ns]  # a silent end is a gap too
        gap_s = max(b - a for a, b in zip(edges, edges[1:])) / 1e9
        if gap_s > GAP_FACTOR * period_s:
            problems.append(f"{metric} gap {gap_s * 1000:.0f} ms > {GAP_FACTOR} x "
                            f"{period_s * 1000:.0f} ms")
        widest = max(widest, (gap_s / period_s, f"{metric} {gap_s * 1000:.0f} ms"))
    if not metrics:
        return Check("timestamps monotonic and gap-free", False, "no GPU samples")
    detail = "; ".join(problems) or (f"{len(metrics)} metrics; widest gap {widest[1]} = "
                                     f"{widest[0]:.1f} periods (allowed {GAP_FACTOR})")
    return Check("timestamps monotonic and gap-free", not problems, detail)


def _absent_check(report: MonitorReport, gpu: int) -> Check:
    unavailable = [m for m, _ in report.unavailable if m.startswith(f"gpu{gpu}")]
    with_samples = [m for m in unavailable if _stream(report, m)]
    detail = (", ".join(f"{m}: {r}" for m, r in report.unavailable) or "every metric readable")
    return Check("unsupported metrics absent, not 0", not with_samples,
                 f"{detail}" + (f"; but sampled: {with_samples}" if with_samples else ""))


def run_checks(report: MonitorReport, phases: list[Phase], gpu: int, interval_s: float,
               lifetime: tuple[int, int]) -> list[Check]:
    """``lifetime``: (before ``Monitors.start``, after ``stop``) on perf_counter_ns."""
    idle, saturated, duty = phases
    return [_median_check(report, idle, gpu, -1, 10, "< 10%"),
            _median_check(report, saturated, gpu, 90, 101, "> 90%"),
            _median_check(report, duty, gpu, 30, 70, "in 30-70%"),
            _clock_check(report, phases, gpu, interval_s, lifetime),
            _order_check(report, phases, gpu, interval_s),
            _absent_check(report, gpu)]


def render(environment: dict[str, Any], gpu: int, load: Load, table: str, note: str,
           checks: list[Check]) -> str:
    device = environment["devices"][gpu]
    lines = ["# pipetune NVML sampler on a real GPU", "",
             f"- device: gpu{gpu} {device['name']} (compute capability "
             f"{device['compute_capability']}), driver {environment['driver_version']}",
             f"- load: {load.description}", f"- monitor: {note}", "", table, "",
             "| check | result | numbers |", "|---|---|---|"]
    lines += [f"| {c.name} | {'PASS' if c.passed else 'FAIL'} | {c.detail} |" for c in checks]
    return "\n".join(lines) + "\n"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/gpu/gpu_check.md"))
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the loaded GPU")
    parser.add_argument("--interval-s", type=float, default=0.05)
    for name, seconds in (("idle", 3.0), ("saturated", 5.0), ("duty-cycled", 3.0)):
        parser.add_argument(f"--{name}-s", type=float, default=seconds)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, nvml: Any | None = None,
         make_load: Callable[[], Load] = gpu_load) -> int:
    """Run the check; ``nvml`` and ``make_load`` let a test stand in for the GPU."""
    args = _parse(argv)
    environment = gpu_environment(nvml)
    if environment["device_count"] <= args.gpu:
        print(environment["accelerator_note"] or f"No NVIDIA GPU with index {args.gpu}",
              file=sys.stderr)
        return 2
    try:
        load = make_load()
    except LoadUnavailable as err:
        print(err, file=sys.stderr)
        return 2
    load.warm_up()  # before sampling: start-up work is no part of any phase
    started_ns = time.perf_counter_ns()
    monitors = Monitors(interval_s=args.interval_s, nvml=nvml).start()
    time.sleep(3 * args.interval_s)  # the first polls settle before the idle phase opens
    durations = {"idle": args.idle_s, "saturated": args.saturated_s,
                 "duty-cycled": args.duty_cycled_s}
    phases = run_phases(load, durations, monitors.sampler_cpu_ns)
    report = monitors.stop()
    lifetime = (started_ns, time.perf_counter_ns())
    checks = run_checks(report, phases, args.gpu, args.interval_s, lifetime)
    table = phase_table(report, phases, args.gpu)
    text = render(environment, args.gpu, load, table, report.accelerator_note, checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text + f"\nwritten to {args.out}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
