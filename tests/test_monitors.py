"""Tests for pipetune.monitors.

No machine of this project has a GPU: every test that drives the NVML path does so through
``fake_pynvml.FakeNvml`` and says in its docstring that it stands in for a GPU. The real
``pynvml`` is exercised only on its CPU path (library not found).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fake_pynvml
import pipetune.monitors as monitors_module
from fake_pynvml import FakeNvml
from pipetune.monitors import (
    MAX_INTERVAL_S,
    PCIE_PERIOD_S,
    HostCounters,
    Monitors,
    clip,
    core_percents,
    gpu_environment,
    mean_metric,
    peak_metric,
    peak_rss_bytes,
)
from pipetune.results import MonitorReport, MonitorSample

GPU_GAUGES = {
    "memory_used_bytes": fake_pynvml.MEMORY_USED_BYTES,
    "power_w": fake_pynvml.POWER_MW / 1000,
    "sm_clock_mhz": fake_pynvml.SM_CLOCK_MHZ,
    "pcie_rx_kbps": fake_pynvml.PCIE_RX_KBPS,
    "pcie_tx_kbps": fake_pynvml.PCIE_TX_KBPS,
}


def _wait_until(condition: Callable[[], bool], timeout_s: float = 1.5) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        assert time.perf_counter() < deadline, "condition not reached in time"
        time.sleep(0.005)


def _run_burst(monitors: Monitors, seconds: float) -> tuple[MonitorReport, int, int]:
    """Start, keep a timed window of ``seconds`` after one sampling tick, stop."""
    monitors.start()
    time.sleep(0.06)  # the burst's warm-up
    window_start = time.perf_counter_ns()
    time.sleep(seconds)
    window_end = time.perf_counter_ns()
    return monitors.stop(), window_start, window_end


def _samples(report: MonitorReport, metric: str) -> list[MonitorSample]:
    return [s for s in report.samples if s.metric == metric]


def _rate_hz(samples: list[MonitorSample]) -> float:
    return (len(samples) - 1) / ((samples[-1].t_ns - samples[0].t_ns) / 1e9)


# --- the fake itself ------------------------------------------------------------------------

def test_fake_mirrors_the_real_pynvml_signatures_constants_and_exceptions() -> None:
    fake = FakeNvml()
    for name in fake_pynvml.FUNCTION_NAMES:
        real_parameters = list(inspect.signature(getattr(pynvml, name)).parameters)
        assert list(inspect.signature(getattr(fake, name)).parameters) == real_parameters, name
    for name in fake_pynvml.CONSTANT_NAMES + fake_pynvml.EXCEPTION_NAMES:
        assert getattr(fake, name) is getattr(pynvml, name), name
    assert type(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)) is fake.NVMLError_NotSupported


def test_every_nvml_name_monitors_uses_is_in_the_fake() -> None:
    source = inspect.getsource(monitors_module)
    used = set(re.findall(r"\bnvml\.(nvml\w+|NVML\w+)", source))
    modelled = set(fake_pynvml.FUNCTION_NAMES + fake_pynvml.CONSTANT_NAMES
                   + fake_pynvml.EXCEPTION_NAMES)
    assert used - modelled == set()
    # NVML_VALUE_TYPE_* are looked up by composed name
    assert {f"NVML_VALUE_TYPE_{k}" for k in ("DOUBLE", "UNSIGNED_INT")} <= modelled


# --- GPU path through the fake --------------------------------------------------------------

def test_gpu_metrics_arrive_at_10hz_inside_the_window_and_clip() -> None:
    """Stands in for a GPU: two fake devices, every metric supported."""
    fake = FakeNvml(device_count=2)
    report, window_start, window_end = _run_burst(Monitors(nvml=fake), 0.6)
    in_window = clip(report, [(window_start, window_end)])
    assert report.accelerator_note == "2 NVIDIA GPUs monitored via NVML"
    assert report.unavailable == ()
    for index in (0, 1):
        for name, expected in GPU_GAUGES.items():
            samples = _samples(in_window, f"gpu{index}.{name}")
            assert {s.value for s in samples} == {expected}
            if name.startswith("pcie"):  # a blocking 20 ms read on real GPUs: read less often
                stamps = [s.t_ns for s in _samples(report, f"gpu{index}.{name}")]
                assert len(samples) >= 2, name
                assert min(b - a for a, b in zip(stamps, stamps[1:])) >= PCIE_PERIOD_S * 1e9
            else:
                assert len(samples) >= 4 and _rate_hz(samples) >= 10, name
        kernel = _samples(in_window, f"gpu{index}.kernel_active_percent")
        assert _rate_hz(kernel) >= 10
        assert {s.value for s in kernel} == {fake_pynvml.KERNEL_ACTIVE_PERCENT}
    assert all(window_start <= s.t_ns <= window_end for s in in_window.samples)
    assert len(in_window.samples) < len(report.samples)  # samples outside were dropped
    assert fake.init_refcount == 0  # nvmlShutdown balanced nvmlInit


def test_fine_samples_are_never_stamped_early_and_at_most_a_tick_late() -> None:
    """Stands in for a GPU: device-clock timestamps mapped onto perf_counter_ns."""
    fake = FakeNvml(sample_period_us=10_000)
    start_ns = time.perf_counter_ns()
    report, _, _ = _run_burst(Monitors(nvml=fake, interval_s=0.05), 0.3)
    stamps = [s.t_ns for s in _samples(report, "gpu0.kernel_active_percent")]
    assert len(stamps) >= 20 and stamps == sorted(stamps)
    assert stamps[0] >= start_ns  # the driver's backlog from before start() is dropped
    # Every fine sample after the backlog was kept, so the stamps match the last ones handed out.
    handed_out = fake.returned_sample_stamps_us[-len(stamps):]
    for stamp, device_us in zip(stamps, handed_out):
        lateness_ns = stamp - fake.device_us_to_perf_ns(device_us)
        assert 0 <= lateness_ns <= 60_000_000, "early, or late by more than a polling tick"


def test_not_supported_metric_is_recorded_once_and_others_still_sampled() -> None:
    """Stands in for a GPU whose power sensor is not exposed (NotSupported)."""
    fake = FakeNvml(not_supported={"nvmlDeviceGetPowerUsage"})
    report, _, _ = _run_burst(Monitors(nvml=fake, interval_s=0.02), 0.15)
    assert report.unavailable == (("gpu0.power_w", "NVML: Not Supported"),)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1  # not retried
    assert _samples(report, "gpu0.power_w") == []
    for name in ("memory_used_bytes", "sm_clock_mhz", "pcie_rx_kbps", "kernel_active_percent"):
        assert _samples(report, f"gpu0.{name}"), name


def test_get_samples_not_supported_falls_back_to_utilization_rates() -> None:
    """Stands in for a GPU without fine-grained samples (older boards, some vGPUs)."""
    fake = FakeNvml(not_supported={"nvmlDeviceGetSamples"})
    report, window_start, window_end = _run_burst(Monitors(nvml=fake), 0.3)
    kernel = _samples(clip(report, [(window_start, window_end)]), "gpu0.kernel_active_percent")
    assert fake.calls["nvmlDeviceGetSamples"] == 1
    assert _rate_hz(kernel) >= 10
    assert {s.value for s in kernel} == {fake_pynvml.KERNEL_ACTIVE_PERCENT}
    assert report.unavailable == ()
    assert "from nvmlDeviceGetUtilizationRates" in report.accelerator_note


def test_idle_gpu_reads_zero_percent_instead_of_vanishing() -> None:
    """Stands in for an idle GPU whose driver stops sampling (GetSamples raises NotFound)."""
    fake = FakeNvml(idle=True, dry_when_idle=True)
    report, window_start, window_end = _run_burst(Monitors(nvml=fake, interval_s=0.02), 0.5)
    kernel = _samples(clip(report, [(window_start, window_end)]), "gpu0.kernel_active_percent")
    assert report.unavailable == ()
    assert 2 <= len(kernel) <= 4  # one snapshot per ~200 ms, not one per tick
    assert {s.value for s in kernel} == {0.0}


def test_sampler_cpu_ns_reads_the_sampler_threads_own_clock() -> None:
    """The sampler's own CPU cost, apart from whatever else the process runs."""
    monitors = Monitors(nvml=FakeNvml(), interval_s=0.01)
    assert monitors.sampler_cpu_ns() is None  # no thread yet
    monitors.start()
    try:
        first = monitors.sampler_cpu_ns()
        busy_until = time.perf_counter() + 0.3
        while time.perf_counter() < busy_until:  # this thread burns 0.3 s of CPU
            pass
        second = monitors.sampler_cpu_ns()
    finally:
        monitors.stop()
    assert first is not None and second is not None and second >= first
    assert second - first < 0.2e9  # not the burning thread's, nor the process's, CPU time


def test_idle_gpu_that_keeps_sampling_reads_zero_from_fine_samples() -> None:
    """Stands in for the H200 of reports/gpu/: idle periods come as fine samples of 0 %."""
    fake = FakeNvml(idle=True)
    report, window_start, window_end = _run_burst(Monitors(nvml=fake, interval_s=0.02), 0.3)
    kernel = _samples(clip(report, [(window_start, window_end)]), "gpu0.kernel_active_percent")
    assert _rate_hz(kernel) >= 30 and {s.value for s in kernel} == {0.0}  # 20 ms period: 50 Hz
    assert fake.calls["nvmlDeviceGetUtilizationRates"] <= 1  # the first poll's snapshot at most


def test_a_fine_period_longer_than_the_snapshot_gap_gets_no_snapshots_mixed_in() -> None:
    """Stands in for the H200, whose ~200 ms fine period jitters by a few ms: a period above the
    200 ms snapshot gap must not read as a silence between two healthy samples."""
    fake = FakeNvml(sample_period_us=250_000)
    report, window_start, window_end = _run_burst(Monitors(nvml=fake, interval_s=0.02), 1.3)
    kernel = _samples(clip(report, [(window_start, window_end)]), "gpu0.kernel_active_percent")
    assert len(kernel) >= 4
    assert fake.calls["nvmlDeviceGetUtilizationRates"] <= 1  # the first poll's snapshot at most
    # GetSamples costs ~2.7 ms of CPU on the H200, found or not: asked about once per fine
    # period (1.36 s / 250 ms ~ 6, plus misses by a tick), not at each of ~68 ticks.
    assert fake.calls["nvmlDeviceGetSamples"] <= 15


@pytest.mark.parametrize(("error_code", "note"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "No NVIDIA GPU (NVML library not found)"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "No NVIDIA GPU (NVIDIA driver not loaded)"),
])
def test_nvml_init_failure_gives_a_null_monitor_and_one_sentence(error_code: int,
                                                                 note: str) -> None:
    """Stands in for a machine with nvidia-ml-py but no usable NVIDIA library or driver."""
    fake = FakeNvml(init_error=error_code)
    report, _, _ = _run_burst(Monitors(nvml=fake, interval_s=0.02), 0.05)
    assert report.accelerator_note == note
    assert report.unavailable == ()
    assert not [s for s in report.samples if s.metric.startswith("gpu")]
    assert _samples(report, "host.rss_bytes")
    assert set(fake.calls) == {"nvmlInit"}
    assert gpu_environment(fake)["accelerator_note"] == note


def test_gpu_lost_mid_burst_stops_that_device_and_keeps_earlier_samples() -> None:
    """Stands in for a GPU that falls off the bus (GpuIsLost) in the middle of a burst."""
    fake = FakeNvml(lost_after_calls=30)
    monitors = Monitors(nvml=fake, interval_s=0.02).start()
    _wait_until(lambda: fake.lost)
    calls_when_lost = fake.device_calls
    lost_ns = time.perf_counter_ns()
    time.sleep(0.1)
    report = monitors.stop()  # must not raise
    assert fake.device_calls == calls_when_lost  # not retried after the loss
    assert _samples(report, "gpu0.memory_used_bytes")  # from before the loss
    (metric, reason), = report.unavailable
    assert metric == "gpu0" and reason.startswith("NVML: GPU is lost")
    assert "gpu0 was lost mid-burst" in report.accelerator_note
    assert [s for s in _samples(report, "host.process_cpu_percent") if s.t_ns > lost_ns]


def test_an_exception_in_a_sampler_is_recorded_and_never_reaches_the_burst(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for a GPU whose binding misbehaves with a non-NVML exception."""
    fake = FakeNvml()

    def broken(handle: object, version: int | None = None) -> None:
        raise RuntimeError("driver returned garbage")

    monkeypatch.setattr(fake, "nvmlDeviceGetMemoryInfo", broken)
    report, _, _ = _run_burst(Monitors(nvml=fake, interval_s=0.02), 0.1)
    assert report.unavailable == (("nvml", "sampler stopped: RuntimeError: driver returned "
                                           "garbage"),)
    assert len(_samples(report, "host.rss_bytes")) >= 3  # the host sampler carries on
    assert fake.init_refcount == 0


def test_gpu_environment_lists_driver_devices_and_compute_capability() -> None:
    """Stands in for a machine with two GPUs."""
    fake = FakeNvml(device_count=2)
    environment = gpu_environment(fake)
    assert environment == {
        "accelerator_note": "", "driver_version": "550.54.15", "device_count": 2,
        "devices": [{"index": i, "name": "NVIDIA Fake A100-SXM4-40GB",
                     "compute_capability": "8.0"} for i in (0, 1)],
    }
    assert fake.init_refcount == 0


# --- the CPU path with the real pynvml ------------------------------------------------------

@pytest.mark.skipif(not fake_pynvml.real_nvml_is_absent(), reason="an NVIDIA library is installed here")
def test_real_pynvml_on_a_cpu_machine_reports_library_not_found() -> None:
    """The CPU path with the real module: this project's machines have no NVIDIA library."""
    report, _, _ = _run_burst(Monitors(interval_s=0.02), 0.05)
    assert report.accelerator_note == "No NVIDIA GPU (NVML library not found)"
    assert report.unavailable == ()
    assert gpu_environment()["accelerator_note"] == "No NVIDIA GPU (NVML library not found)"


# --- host metrics ---------------------------------------------------------------------------

def test_host_metrics_cover_process_system_each_core_and_rss() -> None:
    monitors = Monitors(nvml=FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    monitors.start()
    time.sleep(0.06)
    window_start, cpu_start = time.perf_counter_ns(), time.process_time_ns()
    while time.perf_counter_ns() - window_start < 300_000_000:
        pass  # keep a core busy so the process CPU reading has something to show
    window_end, cpu_end = time.perf_counter_ns(), time.process_time_ns()
    window = monitors.report(window_start, window_end)
    report = monitors.stop()
    process_cpu = _samples(window, "host.process_cpu_percent")
    assert len(process_cpu) >= 4 and _rate_hz(process_cpu) >= 10
    # 100 = one core; compared with the kernel's own account (other load on the box lowers both)
    expected_percent = 100 * (cpu_end - cpu_start) / (window_end - window_start)
    assert abs(mean_metric(window, "host.process_cpu_percent") - expected_percent) < 20
    assert 0 <= mean_metric(window, "host.system_cpu_percent") <= 100
    for core in range(psutil.cpu_count()):
        assert _samples(window, f"host.cpu{core}_percent")
    peak = peak_rss_bytes(report)
    assert peak is not None and peak >= 10 * 1024**2
    assert report.samples[-1].metric == "host.rss_bytes"  # the reading taken at stop()


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="no /proc here: psutil is the only path")
def test_proc_counters_agree_with_psutil_and_their_files_are_closed_at_stop(tmp_path: Path) -> None:
    """The kept-open /proc files read what psutil reads; without /proc psutil is read instead."""
    fast, fallback = HostCounters(), HostCounters(proc=str(tmp_path))  # tmp_path holds no stat
    assert fast.from_proc and not fallback.from_proc
    assert fast.rss_bytes() == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)
    assert fallback.rss_bytes() == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)
    before = fast.per_core()
    psutil.cpu_percent(None, percpu=True)  # psutil's interval starts here
    ended = time.perf_counter() + 0.3
    while time.perf_counter() < ended:
        pass  # one core busy
    ours, theirs = core_percents(before, fast.per_core()), psutil.cpu_percent(None, percpu=True)
    assert len(ours) == len(theirs) == len(fallback.per_core()) >= 1
    # the same counters over (almost) the same interval: the all-cores means agree
    assert sum(ours) / len(ours) == pytest.approx(sum(theirs) / len(theirs), abs=10)
    assert sum(ours) >= 50  # the busy core shows
    fast.close()
    fallback.close()

    fds = psutil.Process().num_fds()
    _run_burst(Monitors(nvml=FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)), 0.05)
    assert psutil.Process().num_fds() == fds


def test_core_percents_are_each_cores_busy_share_between_two_readings() -> None:
    before = [(10.0, 100.0), (50.0, 200.0), (7.0, 7.0)]
    after = [(35.0, 200.0), (50.0, 300.0), (7.0, 7.0)]  # 25 of 100 busy; idle; no time passed
    assert core_percents(before, after) == [25.0, 0.0, 0.0]


def test_stop_is_idempotent_and_the_context_manager_stops() -> None:
    fake = FakeNvml()
    with Monitors(nvml=fake, interval_s=0.02) as monitors:
        time.sleep(0.05)
    assert fake.init_refcount == 0
    assert monitors.stop() == monitors.stop()
    assert Monitors().stop() == MonitorReport()  # never started: nothing to report


@pytest.mark.parametrize("interval_s", [0.0, -1.0, MAX_INTERVAL_S * 2])
def test_intervals_slower_than_10hz_are_rejected(interval_s: float) -> None:
    with pytest.raises(ValueError, match="must hold"):
        Monitors(interval_s=interval_s)


# --- clipping and summaries: exact arithmetic -----------------------------------------------

def _report(*points: tuple[int, str, float]) -> MonitorReport:
    return MonitorReport(samples=tuple(MonitorSample(t, m, v) for t, m, v in points),
                         unavailable=(("gpu0.power_w", "NVML: Not Supported"),),
                         accelerator_note="1 NVIDIA GPU monitored via NVML")


def test_clip_keeps_samples_in_any_window_bounds_included() -> None:
    report = _report((5, "a", 1.0), (10, "a", 2.0), (15, "a", 3.0), (20, "a", 4.0),
                     (30, "a", 5.0), (40, "a", 6.0))
    clipped = clip(report, [(10, 15), (30, 35)])
    assert [s.t_ns for s in clipped.samples] == [10, 15, 30]
    assert clipped.unavailable == report.unavailable
    assert clipped.accelerator_note == report.accelerator_note
    assert clip(report, []).samples == ()
    with pytest.raises(ValueError, match="must hold"):
        clip(report, [(20, 10)])


def test_mean_and_peak_of_one_metric() -> None:
    report = _report((1, "a", 1.0), (2, "b", 100.0), (3, "a", 2.0), (4, "a", 6.0))
    assert mean_metric(report, "a") == 3.0
    assert peak_metric(report, "a") == 6.0
    assert mean_metric(report, "missing") is None
    assert peak_metric(report, "missing") is None
    assert peak_rss_bytes(report) is None


_points = st.lists(st.tuples(st.integers(0, 1000), st.sampled_from("ab"),
                             st.floats(0, 100)), max_size=30)
_windows = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)).map(
    lambda start_length: (start_length[0], start_length[0] + start_length[1])), max_size=4)


@given(_points, _windows)
def test_clip_is_an_idempotent_filter(points: list[tuple[int, str, float]],
                                      windows: list[tuple[int, int]]) -> None:
    report = _report(*points)
    clipped = clip(report, windows)
    assert set(clipped.samples) <= set(report.samples)
    assert clip(clipped, windows) == clipped
    assert clip(report, windows[::-1]) == clipped
    mean = mean_metric(clipped, "a")
    if mean is not None:
        values = [s.value for s in clipped.samples if s.metric == "a"]
        assert min(values) - 1e-9 <= mean <= max(values) + 1e-9
