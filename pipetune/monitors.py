"""Background samplers for a burst: the host (/proc, or psutil) and NVIDIA accelerators (NVML).

One daemon thread polls every ``interval_s`` and stamps each sample with the burst's clock
(``time.perf_counter_ns``), so samples can be clipped to the timed windows. Nothing here raises
into the burst: a metric that cannot be read is listed in ``MonitorReport.unavailable``.

NVML's fine-grained utilisation samples (``nvmlDeviceGetSamples``) carry device timestamps in
microseconds whose epoch we do not rely on (the docs say "CPU timestamp"; others report
time since boot; an H200 gave wall-clock epoch microseconds, which can step with the clock).
At each poll, ``poll_ns - newest_device_us * 1000`` is an upper bound of the
true offset between the two clocks (the newest sample cannot be younger than the poll); we keep
the running minimum. A sample is therefore never stamped early, and is stamped late by at most
the smallest delivery delay seen so far (relative clock drift over a burst is negligible).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from pipetune.results import MonitorReport, MonitorSample

Clock = Callable[[], int]
MAX_INTERVAL_S = 0.1  # samplers must run at >= 10 Hz
# Some drivers stop filling NVML's sample buffer on an idle GPU (an H200 on driver 580 kept
# sampling 0 %: reports/gpu/gpu_check.md). After a silence of this long, or of two fine-sample
# periods if those are longer, we take a nvmlDeviceGetUtilizationRates snapshot so idle time reads
# 0 % instead of vanishing (which would bias the mean upwards). The H200 sampled every ~200 ms with
# a few ms of jitter, so a fixed 200 ms would mix snapshots into a healthy fine stream.
_UTILIZATION_GAP_NS = 200_000_000
_VALUE_FIELDS = {"DOUBLE": "dVal", "UNSIGNED_INT": "uiVal", "UNSIGNED_LONG": "ulVal",
                 "UNSIGNED_LONG_LONG": "ullVal", "SIGNED_LONG_LONG": "sllVal",
                 "SIGNED_INT": "siVal", "UNSIGNED_SHORT": "usVal"}  # nvmlValue_t union members


class _SampleLog:
    """Samples and reasons, appended by the sampler thread and read by the burst's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[MonitorSample] = []
        self._unavailable: dict[str, str] = {}  # first reason wins; insertion-ordered

    def add(self, t_ns: int, metric: str, value: float) -> None:
        with self._lock:
            self._samples.append(MonitorSample(t_ns=t_ns, metric=metric, value=float(value)))

    def mark_unavailable(self, metric: str, reason: str) -> None:
        with self._lock:
            self._unavailable.setdefault(metric, reason)

    def is_unavailable(self, metric: str) -> bool:
        return metric in self._unavailable

    def report(self, accelerator_note: str) -> MonitorReport:
        with self._lock:
            return MonitorReport(samples=tuple(self._samples),
                                 unavailable=tuple(self._unavailable.items()),
                                 accelerator_note=accelerator_note)


class HostCounters:
    """The host's raw counters: this process' resident bytes, and each core's busy and total
    CPU time (units cancel in a ratio).

    On Linux from ``/proc`` files opened once, each read with one ``pread``: psutil opens, reads
    and closes a file per call, and in a sampler thread that sleeps between ticks each such cold
    call cost 80-120 us, against 17-30 us for a ``pread`` of a file kept open (2-core Intel VM,
    2026-12-05): the sampler thread under load fell from 0.92-1.01% to 0.60% of one core, and
    idle from 0.69-0.92% to 0.24-0.27% (benchmarks/monitor_overhead.py).
    Elsewhere, or where ``/proc`` cannot be opened, from psutil. Open it in the process to be
    measured (``/proc/self`` is resolved when opened) and close it when done."""

    def __init__(self, proc: str | None = "/proc") -> None:
        self._process = psutil.Process()
        self._statm = self._stat = None
        if proc is not None:
            try:
                self._statm = os.open(f"{proc}/self/statm", os.O_RDONLY)
                self._stat = os.open(f"{proc}/stat", os.O_RDONLY)
            except OSError:
                self.close()

    @property
    def from_proc(self) -> bool:
        return self._stat is not None

    def rss_bytes(self) -> int:
        if self._statm is None:
            return self._process.memory_info().rss
        # statm: size, resident, shared, ... in pages
        return int(os.pread(self._statm, 256, 0).split()[1]) * _PAGE_BYTES

    def per_core(self) -> list[tuple[float, float]]:
        """(busy, total) CPU time of each core since boot, as psutil.cpu_percent counts them:
        total without guest time (already in user and nice), busy = total - idle - iowait."""
        if self._stat is None:
            return [_busy_total(t.idle, getattr(t, "iowait", 0.0), sum(t) - getattr(t, "guest", 0.0)
                                - getattr(t, "guest_nice", 0.0)) for t in psutil.cpu_times(percpu=True)]
        cores = []
        for line in os.pread(self._stat, _PROC_STAT_BYTES, 0).split(b"\n"):
            if not line.startswith(b"cpu"):
                break  # the per-core lines come first, after the all-cores "cpu " line
            if line[3:4] != b" ":
                # user nice system idle iowait irq softirq steal guest guest_nice
                fields = [float(v) for v in line.split()[1:]]
                cores.append(_busy_total(fields[3], fields[4], sum(fields[:8])))
        return cores

    def close(self) -> None:
        for fd in (self._statm, self._stat):
            if fd is not None:
                os.close(fd)
        self._statm = self._stat = None


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# The all-cores line and one line per core come first, each under 256 bytes (10 counters of
# at most 20 digits): reading only those spares allocating a large buffer every tick.
_PROC_STAT_BYTES = 256 * ((os.cpu_count() or 1) + 1)


def _busy_total(idle: float, iowait: float, total: float) -> tuple[float, float]:
    return total - idle - iowait, total


def core_percents(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[float]:
    """Each core's busy share between two ``per_core`` readings, in percent (0 where no time passed)."""
    return [min(100.0, max(0.0, 100 * (b1 - b0) / (t1 - t0))) if t1 > t0 else 0.0
            for (b0, t0), (b1, t1) in zip(before, after)]


class _HostSampler:
    name = "host"

    def __init__(self) -> None:
        self._counters: HostCounters | None = None
        self._cpu_at = (0, 0)  # (perf_counter_ns, process_time_ns) at the previous reading
        self._cores: list[tuple[float, float]] = []  # each core's (busy, total) at the previous reading

    def prime(self) -> None:
        self._counters = HostCounters()  # opened in the measured process, by its sampler thread
        self._cpu_at = (time.perf_counter_ns(), time.process_time_ns())
        self._cores = self._counters.per_core()

    def poll(self, log: _SampleLog, clock: Clock) -> None:
        # The process' CPU (all threads; 100 = one core) from its own CPU clock: no file read,
        # and nanoseconds, not /proc's 10 ms ticks (a fifth of an interval).
        wall_ns, cpu_ns = time.perf_counter_ns(), time.process_time_ns()
        process_cpu = 100 * (cpu_ns - self._cpu_at[1]) / max(1, wall_ns - self._cpu_at[0])
        self._cpu_at = (wall_ns, cpu_ns)
        rss = self._counters.rss_bytes()
        cores = self._counters.per_core()
        per_core, self._cores = core_percents(self._cores, cores), cores
        now = clock()
        log.add(now, "host.process_cpu_percent", process_cpu)
        log.add(now, "host.rss_bytes", rss)
        log.add(now, "host.system_cpu_percent", sum(per_core) / len(per_core))  # 100 = all cores
        for index, percent in enumerate(per_core):
            log.add(now, f"host.cpu{index}_percent", percent)

    def record_rss(self, log: _SampleLog, clock: Clock) -> None:
        counters = self._counters or HostCounters(proc=None)
        log.add(clock(), "host.rss_bytes", counters.rss_bytes())

    def close(self) -> None:
        if self._counters is not None:
            self._counters.close()


# NVML measures PCIe throughput over a 20 ms window and blocks for it: 21 ms of wall time a
# call on the H200 (reports/gpu/), two calls a poll. At every tick of a 20 Hz sampler that would
# hold the thread 84 % of the time, so these gauges are read at most this often.
PCIE_PERIOD_S = 0.25

# (metric suffix, reader, least seconds between reads). NVML reports power in mW and PCIe
# throughput in KB/s.
_GAUGES: tuple[tuple[str, Callable[[Any, Any], float], float], ...] = (
    ("memory_used_bytes", lambda nvml, h: nvml.nvmlDeviceGetMemoryInfo(h).used, 0.0),
    ("power_w", lambda nvml, h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, 0.0),
    ("sm_clock_mhz", lambda nvml, h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM), 0.0),
    ("pcie_rx_kbps",
     lambda nvml, h: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_RX_BYTES),
     PCIE_PERIOD_S),
    ("pcie_tx_kbps",
     lambda nvml, h: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES),
     PCIE_PERIOD_S),
)


@dataclass(slots=True)
class _Device:
    """Polling state of one GPU; mutated only by the sampler thread."""

    index: int
    handle: Any
    fine_samples: bool = True  # nvmlDeviceGetSamples works on this device
    last_seen_us: int = 0
    offset_ns: int | None = None  # device µs * 1000 + offset_ns = burst clock
    last_kernel_ns: int | None = None
    fine_period_ns: int = 0  # NVML's fine-sample period as seen; 0 until known
    gauge_read_ns: dict[str, int] = field(default_factory=dict)  # gauge -> when last read
    lost: bool = False


def _next_fine_sample_due(device: _Device, now_ns: int) -> bool:
    """Whether NVML can hold a fine sample we have not read. nvmlDeviceGetSamples cost about
    2.7 ms of CPU a call on the H200, found or not, so it is asked once per sample period (about
    200 ms there), not at every tick."""
    if not device.fine_period_ns or device.offset_ns is None:
        return True  # period or clock not known yet
    return now_ns >= device.last_seen_us * 1000 + device.offset_ns + device.fine_period_ns


class _NvmlSampler:
    name = "nvml"

    def __init__(self, nvml: Any, handles: list[Any], start_ns: int) -> None:
        self._nvml = nvml
        self._devices = [_Device(index, handle) for index, handle in enumerate(handles)]
        self._start_ns = start_ns
        self._value_fields = {getattr(nvml, f"NVML_VALUE_TYPE_{kind}"): member
                              for kind, member in _VALUE_FIELDS.items()}

    def prime(self) -> None:
        pass

    def poll(self, log: _SampleLog, clock: Clock) -> None:
        for device in self._devices:
            if not device.lost:
                self._poll_device(device, log, clock)

    def note(self) -> str:
        count = len(self._devices)
        parts = [f"{count} NVIDIA GPU{'s' if count != 1 else ''} monitored via NVML"]
        parts += [f"gpu{d.index} kernel-active % from nvmlDeviceGetUtilizationRates "
                  "(no fine-grained samples)" for d in self._devices if not d.fine_samples]
        parts += [f"gpu{d.index} was lost mid-burst and its samples stop there"
                  for d in self._devices if d.lost]
        return "; ".join(parts)

    def _poll_device(self, device: _Device, log: _SampleLog, clock: Clock) -> None:
        nvml = self._nvml
        try:
            self._poll_kernel_active(device, log, clock)
            for name, read, least_period_s in _GAUGES:
                metric = f"gpu{device.index}.{name}"
                if log.is_unavailable(metric):
                    continue  # not retried: the answer will not change within a burst
                now, last = clock(), device.gauge_read_ns.get(name)
                if last is not None and now - last < least_period_s * 1e9:
                    continue
                try:
                    log.add(now, metric, read(nvml, device.handle))
                    device.gauge_read_ns[name] = now
                except nvml.NVMLError_GpuIsLost:
                    raise
                except nvml.NVMLError as err:
                    log.mark_unavailable(metric, f"NVML: {err}")
        except nvml.NVMLError_GpuIsLost as err:
            device.lost = True
            log.mark_unavailable(f"gpu{device.index}", f"NVML: {err}; sampling stopped at "
                                                        f"t_ns={clock()}")

    def _poll_kernel_active(self, device: _Device, log: _SampleLog, clock: Clock) -> None:
        nvml, metric = self._nvml, f"gpu{device.index}.kernel_active_percent"
        if log.is_unavailable(metric):
            return
        try:
            if device.fine_samples and _next_fine_sample_due(device, clock()):
                self._read_fine_samples(device, metric, log, clock)
            now = clock()
            last = device.last_kernel_ns
            stale = last is None or now - last >= max(_UTILIZATION_GAP_NS,
                                                      2 * device.fine_period_ns)
            if not device.fine_samples or stale:
                log.add(now, metric, nvml.nvmlDeviceGetUtilizationRates(device.handle).gpu)
                device.last_kernel_ns = now
        except nvml.NVMLError_GpuIsLost:
            raise
        except nvml.NVMLError as err:
            log.mark_unavailable(metric, f"NVML: {err}")

    def _read_fine_samples(self, device: _Device, metric: str, log: _SampleLog,
                           clock: Clock) -> None:
        nvml = self._nvml
        try:
            value_type, samples = nvml.nvmlDeviceGetSamples(
                device.handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, device.last_seen_us)
        except nvml.NVMLError_NotSupported:
            device.fine_samples = False
            return
        except nvml.NVMLError_NotFound:  # polled within one period, or a dry idle buffer
            return
        poll_ns = clock()
        if not samples:
            return
        newest_us = max(sample.timeStamp for sample in samples)
        offset_bound = poll_ns - newest_us * 1000
        device.offset_ns = min(offset_bound, device.offset_ns if device.offset_ns is not None
                               else offset_bound)
        value_field = self._value_fields.get(value_type)
        if value_field is None:
            log.mark_unavailable(metric, f"NVML: unknown sample value type {value_type}")
            return
        # The period is the shortest spacing seen: a silence (a dry buffer) only lengthens one.
        previous = [device.last_seen_us] if device.last_seen_us else []
        stamps = previous + sorted(sample.timeStamp for sample in samples)
        spacings = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:]) if b > a]
        if spacings:
            known = [device.fine_period_ns] if device.fine_period_ns else []
            device.fine_period_ns = min(spacings + known)
        device.last_seen_us = newest_us
        for sample in samples:
            t_ns = sample.timeStamp * 1000 + device.offset_ns
            if t_ns >= self._start_ns:  # the first poll returns the driver's whole backlog
                log.add(t_ns, metric, getattr(sample.sampleValue, value_field))
                device.last_kernel_ns = poll_ns

    def close(self) -> None:
        _shutdown_quietly(self._nvml)


def _shutdown_quietly(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError:
        pass  # a lost GPU may refuse; nothing is left to release on our side


def _import_nvml(nvml: Any | None) -> tuple[Any | None, str]:
    if nvml is not None:
        return nvml, ""
    try:
        import pynvml  # nvidia-ml-py; lazy so hosts without it pay nothing
    except ImportError:
        return None, "No NVIDIA GPU monitoring (nvidia-ml-py is not installed)"
    return pynvml, ""


def _init_failure_note(nvml: Any, err: Exception) -> str:
    if isinstance(err, nvml.NVMLError_LibraryNotFound):
        return "No NVIDIA GPU (NVML library not found)"
    if isinstance(err, nvml.NVMLError_DriverNotLoaded):
        return "No NVIDIA GPU (NVIDIA driver not loaded)"
    return f"No NVIDIA GPU monitoring (NVML: {err})"


def _open_nvml(nvml: Any | None) -> tuple[Any | None, list[Any], str]:
    """Return (module, device handles, note); module is None when NVML cannot be used."""
    nvml, note = _import_nvml(nvml)
    if nvml is None:
        return None, [], note
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        return None, [], _init_failure_note(nvml, err)
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as err:
        handles, note = [], _init_failure_note(nvml, err)
    if not handles:
        _shutdown_quietly(nvml)
        return None, [], note or "No NVIDIA GPU (NVML found no devices)"
    return nvml, handles, ""


class Monitors:
    """Samples host and accelerator metrics in one background thread during a burst.

    Args:
        clock: the burst's clock, in nanoseconds; every sample is stamped with it.
        interval_s: polling period; at most ``MAX_INTERVAL_S`` (>= 10 Hz).
        nvml: a ``pynvml``-compatible module; ``None`` imports ``pynvml`` lazily.
    """

    def __init__(self, clock: Clock = time.perf_counter_ns, interval_s: float = 0.05,
                 nvml: Any | None = None) -> None:
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"`0 < interval_s <= {MAX_INTERVAL_S}` must hold (samplers run at "
                             f">= 10 Hz), but got {interval_s}")
        self._clock, self._interval_ns = clock, int(interval_s * 1e9)
        self._nvml_module = nvml
        self._log = _SampleLog()
        self._host = _HostSampler()
        self._accelerator: _NvmlSampler | None = None
        self._note = ""
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> Monitors:
        if self._thread is not None:
            raise RuntimeError("Monitors.start() may be called only once")
        start_ns = self._clock()
        try:
            nvml, handles, self._note = _open_nvml(self._nvml_module)
        except Exception as err:  # a broken binding must not stop the burst
            nvml, handles, self._note = None, [], f"No NVIDIA GPU monitoring ({err!r})"
        if nvml is not None:
            self._accelerator = _NvmlSampler(nvml, handles, start_ns)
        self._thread = threading.Thread(target=self._run, name="pipetune-monitors", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MonitorReport:
        """Stop sampling (idempotent), release NVML, and return every sample taken."""
        if self._thread is not None and not self._stopped:
            self._stopped = True
            self._halt.set()
            self._thread.join(timeout=max(1.0, 20 * self._interval_ns / 1e9))
            if self._thread.is_alive():  # stuck in a driver call; it is a daemon, leave it
                self._log.mark_unavailable("monitor", "sampler thread did not stop in time")
            elif self._accelerator is not None:
                self._accelerator.close()
            self._guarded(self._host.name, lambda: self._host.record_rss(self._log, self._clock))
            if not self._thread.is_alive():  # else its files stay open: it may still read them
                self._host.close()
        return self._current_report()

    def report(self, window_start_ns: int, window_end_ns: int) -> MonitorReport:
        """Samples so far, clipped to one timed window (inclusive, burst clock)."""
        return clip(self._current_report(), [(window_start_ns, window_end_ns)])

    def sampler_cpu_ns(self) -> int | None:
        """CPU time the sampler thread has used so far (the monitors' own cost), or None where
        the OS has no per-thread CPU clock or the thread is not running."""
        try:
            return time.clock_gettime_ns(time.pthread_getcpuclockid(self._thread.ident))
        except (AttributeError, OSError, TypeError):  # not started, no such clock, or gone
            return None

    def __enter__(self) -> Monitors:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _current_report(self) -> MonitorReport:
        note = self._accelerator.note() if self._accelerator is not None else self._note
        return self._log.report(note)

    def _run(self) -> None:
        self._guarded("monitor", self._sample_until_halted)

    def _sample_until_halted(self) -> None:
        samplers = [s for s in (self._host, self._accelerator) if s is not None]
        samplers = [s for s in samplers if self._guarded(s.name, s.prime)]
        next_tick = time.perf_counter_ns()  # scheduling uses real time, whatever clock stamps
        while True:
            next_tick += self._interval_ns
            if self._halt.wait(max(0.0, (next_tick - time.perf_counter_ns()) / 1e9)):
                return
            next_tick = max(next_tick, time.perf_counter_ns() - self._interval_ns)  # no bursts
            samplers = [s for s in samplers
                        if self._guarded(s.name, lambda s=s: s.poll(self._log, self._clock))]

    def _guarded(self, sampler_name: str, action: Callable[[], None]) -> bool:
        """Run ``action``; a failure disables that sampler and is recorded, never raised."""
        try:
            action()
        except Exception as err:  # the burst must not die because a sampler did
            reason = f"sampler stopped: {type(err).__name__}: {err}"
            self._log.mark_unavailable(sampler_name, reason)
            return False
        return True


def clip(report: MonitorReport, windows: Iterable[tuple[int, int]]) -> MonitorReport:
    """Keep the samples stamped inside any of the (start_ns, end_ns) windows, bounds included."""
    windows = list(windows)
    for start_ns, end_ns in windows:
        if end_ns < start_ns:
            raise ValueError(f"`start_ns <= end_ns` must hold, but got ({start_ns}, {end_ns})")
    kept = tuple(s for s in report.samples if any(a <= s.t_ns <= b for a, b in windows))
    return MonitorReport(samples=kept, unavailable=report.unavailable,
                         accelerator_note=report.accelerator_note)


def _values(report: MonitorReport, metric: str) -> list[float]:
    return [sample.value for sample in report.samples if sample.metric == metric]


def mean_metric(report: MonitorReport, metric: str) -> float | None:
    """Plain mean of a metric's samples (they are evenly spaced), or None without samples."""
    values = _values(report, metric)
    return sum(values) / len(values) if values else None


def peak_metric(report: MonitorReport, metric: str) -> float | None:
    values = _values(report, metric)
    return max(values) if values else None


def peak_rss_bytes(report: MonitorReport) -> int | None:
    """Highest sampled RSS; spikes shorter than the sampling interval can be missed."""
    peak = peak_metric(report, "host.rss_bytes")
    return int(peak) if peak is not None else None


def _device_facts(nvml: Any, index: int, handle: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"index": index, "name": None, "compute_capability": None}
    try:
        facts["name"] = nvml.nvmlDeviceGetName(handle)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        facts["compute_capability"] = f"{major}.{minor}"
    except nvml.NVMLError:
        pass  # partial facts beat none; `pipetune env` shows what was read
    return facts


def gpu_environment(nvml: Any | None = None) -> dict[str, Any]:
    """GPU name, driver and compute capability for ``pipetune env``, or a one-sentence note."""
    nvml, handles, note = _open_nvml(nvml)
    if nvml is None:
        return {"accelerator_note": note, "driver_version": None, "device_count": 0,
                "devices": []}
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
    except nvml.NVMLError:
        driver = None
    devices = [_device_facts(nvml, i, h) for i, h in enumerate(handles)]
    _shutdown_quietly(nvml)
    return {"accelerator_note": "", "driver_version": driver, "device_count": len(handles),
            "devices": devices}
