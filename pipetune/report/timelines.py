"""Utilisation over time for one trial, on one time axis: what its monitors sampled.

With NVML data (a GPU was monitored) the panels are kernel-active %, memory and power. Without
it, the stand-in is the device-busy share of each timed step measured on the host,
``step / (wait + step)``: the consumer was busy while it was not blocked waiting for input. It is
labelled as such, never passed off as NVML data. Host CPU % is always shown. Times are seconds
since the trial's first timestamp; long series are averaged down to ``MAX_POINTS`` points.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pipetune.results import TrialResult

MAX_POINTS = 400  # per series: finer than a chart's pixel columns need, small in the page
HOST_BUSY_NOTE = "host-measured device-busy time, not NVML data"
# (metric suffix after "gpuN.", axis label with unit, scale to that unit, fixed axis top)
_GPU_PANELS = (
    ("kernel_active_percent", "GPU kernel-active (%)", 1.0, 100.0),
    ("memory_used_bytes", "GPU memory used (GiB)", 1 / 2**30, None),
    ("power_w", "GPU power (W)", 1.0, None),
)
_GPU_METRIC = re.compile(r"^gpu(\d+)\.(\w+)$")
CPU_METRIC = "host.process_cpu_percent"


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    times_s: tuple[float, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Panel:
    axis_label: str  # what and its unit, e.g. "GPU power (W)"
    series: tuple[Series, ...]
    y_max: float | None = None  # a fixed top (100 for shares of time); None: fit the data


@dataclass(frozen=True, slots=True)
class Timeline:
    key: str
    label: str
    colour_role: str
    source: str  # "nvml" or "host" (device-busy measured on the host)
    accelerator_note: str
    panels: tuple[Panel, ...]
    timed_windows_s: tuple[tuple[float, float], ...]  # the timed repeats, to shade
    unavailable: tuple[tuple[str, str], ...]  # metric -> why it could not be read


def timeline(trial: TrialResult, label: str, colour_role: str) -> Timeline:
    """The panels of one trial: NVML ones when a GPU was sampled, else host device-busy."""
    origin = origin_ns(trial)
    panels = gpu_panels(trial, origin)
    source = "nvml" if panels else "host"
    if not panels and trial.repeats:
        panels = (Panel("device busy, host-measured (%)",
                        (device_busy_series(trial, origin, label),), 100.0),)
    cpu = metric_series(trial, CPU_METRIC, origin, 1.0, label)
    if cpu is not None:
        panels += (Panel("host CPU, this process (%; 100 = one core)", (cpu,)),)
    windows = tuple(((r.start_ns - origin) / 1e9, (r.end_ns - origin) / 1e9) for r in trial.repeats)
    return Timeline(trial.key, label, colour_role, source, trial.monitor.accelerator_note, panels,
                    windows, trial.monitor.unavailable)


def origin_ns(trial: TrialResult) -> int:
    """The trial's first timestamp: its first monitor sample or its first timed request."""
    stamps = [s.t_ns for s in trial.monitor.samples] + [r.start_ns for r in trial.repeats]
    return min(stamps) if stamps else 0


def gpu_panels(trial: TrialResult, origin: int) -> tuple[Panel, ...]:
    """One panel per NVML metric that has samples, one series per GPU."""
    indices = sorted({int(m.group(1)) for s in trial.monitor.samples
                      if (m := _GPU_METRIC.match(s.metric))})
    panels = []
    for suffix, axis_label, scale, y_max in _GPU_PANELS:
        series = [metric_series(trial, f"gpu{i}.{suffix}", origin, scale, f"gpu{i}") for i in indices]
        present = tuple(s for s in series if s is not None)
        if present:
            panels.append(Panel(axis_label, present, y_max))
    return tuple(panels)


def device_busy_series(trial: TrialResult, origin: int, label: str) -> Series:
    """Per timed step, ``100 * step / (wait + step)``, placed at the step's midpoint."""
    times, values = [], []
    for repeat in trial.repeats:
        for request, wait, step in zip(repeat.request_ns, repeat.wait_ns, repeat.step_ns):
            total = wait + step
            if total <= 0:
                continue
            times.append((request + total / 2 - origin) / 1e9)
            values.append(100.0 * step / total)
    return Series(label, *downsample(times, values))


def metric_series(trial: TrialResult, metric: str, origin: int, scale: float,
                  label: str) -> Series | None:
    samples = sorted((s.t_ns, s.value) for s in trial.monitor.samples if s.metric == metric)
    if not samples:
        return None
    times = [(t - origin) / 1e9 for t, _ in samples]
    return Series(label, *downsample(times, [v * scale for _, v in samples]))


def downsample(times: Sequence[float], values: Sequence[float],
               max_points: int = MAX_POINTS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Means of consecutive buckets of (almost) equal size: at most ``max_points`` points.

    Means rather than picks, so a thinned share-of-time curve keeps its area (its average).
    """
    if max_points < 1:
        raise ValueError(f"`max_points >= 1` must hold, but got {max_points}")
    count = len(values)
    if count <= max_points:
        return tuple(times), tuple(values)
    edges = [round(i * count / max_points) for i in range(max_points + 1)]
    buckets = list(zip(edges, edges[1:]))
    return (tuple(statistics.fmean(times[a:b]) for a, b in buckets),
            tuple(statistics.fmean(values[a:b]) for a, b in buckets))
