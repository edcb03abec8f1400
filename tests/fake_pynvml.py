"""A faithful fake of the parts of ``pynvml`` (nvidia-ml-py) that ``pipetune.monitors`` calls.

No machine of this project has a GPU, so the NVML path is tested against this fake. Fidelity:

* exception classes are the real module's objects (``pynvml.NVMLError(code)`` maps the code to
  its ``NVMLError_*`` subclass), so ``except nvml.NVMLError_NotSupported`` behaves identically;
* constants are copied from the real module; return values use the real ctypes structures
  (``c_nvmlMemory_t``, ``c_nvmlUtilization_t``, ``c_nvmlSample_t`` with its ``c_nvmlValue_t``
  union) and the same plain types (``int`` mW / MHz / KB/s, ``str`` names, ``(major, minor)``);
* function names and signatures equal the real ones (a test compares them);
* like the real library: calls before ``nvmlInit`` or after the last ``nvmlShutdown`` raise
  ``Uninitialized`` (init is reference counted), ``nvmlDeviceGetSamples`` returns only samples
  newer than ``timeStamp`` and raises ``NotFound`` when there are none.

A test sets the load with ``set_kernel_active(percent)``; each fine sample carries the value in
force at its own device timestamp, so a change of load shows up at the right time, not
retroactively. An idle period is a sample of 0 %, as on the one real GPU this project has met
(an H200, driver 580.159.04, nvidia-ml-py 13.610.43; reports/gpu/); ``dry_when_idle`` models a
driver whose buffer runs dry instead, which NVML's documentation allows (``NotFound``).

Device timestamps run on a device clock in microseconds, with an arbitrary offset from the
burst's ``perf_counter_ns`` (the H200's read like wall-clock epoch microseconds, so they may step
with the system clock); ``device_us_to_perf_ns`` gives a test the true time of a sample. The
H200 sampled every ~200 ms (±3 ms); the fake defaults to 20 ms to keep tests short.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pynvml as _real

NVMLError = _real.NVMLError
NVMLError_NotSupported = _real.NVMLError_NotSupported
NVMLError_NotFound = _real.NVMLError_NotFound
NVMLError_LibraryNotFound = _real.NVMLError_LibraryNotFound
NVMLError_DriverNotLoaded = _real.NVMLError_DriverNotLoaded
NVMLError_GpuIsLost = _real.NVMLError_GpuIsLost
NVMLError_Uninitialized = _real.NVMLError_Uninitialized
NVMLError_InvalidArgument = _real.NVMLError_InvalidArgument

CONSTANT_NAMES = (
    "NVML_GPU_UTILIZATION_SAMPLES", "NVML_CLOCK_SM", "NVML_PCIE_UTIL_RX_BYTES",
    "NVML_PCIE_UTIL_TX_BYTES", "NVML_VALUE_TYPE_DOUBLE", "NVML_VALUE_TYPE_UNSIGNED_INT",
    "NVML_VALUE_TYPE_UNSIGNED_LONG", "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG",
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG", "NVML_VALUE_TYPE_SIGNED_INT",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT",
    "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_GPU_IS_LOST",
)
EXCEPTION_NAMES = (
    "NVMLError", "NVMLError_NotSupported", "NVMLError_NotFound", "NVMLError_LibraryNotFound",
    "NVMLError_DriverNotLoaded", "NVMLError_GpuIsLost", "NVMLError_Uninitialized",
    "NVMLError_InvalidArgument",
)
FUNCTION_NAMES = (
    "nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetSamples", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo", "nvmlDeviceGetPcieThroughput",
)
# What every device reports; tests compare against these.
MEMORY_USED_BYTES = 3 * 1024**3
MEMORY_TOTAL_BYTES = 16 * 1024**3
POWER_MW = 123_456
SM_CLOCK_MHZ = 1410
PCIE_RX_KBPS = 2_000_000
PCIE_TX_KBPS = 500_000
KERNEL_ACTIVE_PERCENT = 73


@dataclass(frozen=True, slots=True)
class FakeHandle:
    """Stands in for ``c_nvmlDevice_t``: opaque to callers."""

    index: int


class FakeNvml:
    """Use an instance where the ``pynvml`` module would go.

    Args:
        device_count: GPUs reported by ``nvmlDeviceGetCount``.
        not_supported: function names that raise ``NVMLError_NotSupported`` on every device.
        init_error: an ``NVML_ERROR_*`` code that ``nvmlInit`` raises (e.g. library not found).
        lost_after_calls: after this many device calls, every device call raises ``GpuIsLost``.
        sample_period_us: spacing of the fine-grained utilisation samples on the device clock.
        idle: the GPU starts with no kernels running: 0 % utilisation.
        dry_when_idle: periods at 0 % produce no fine sample (``NotFound`` when none is left).
    """

    def __init__(self, device_count: int = 1, not_supported: Iterable[str] = (),
                 init_error: int | None = None, lost_after_calls: int | None = None,
                 sample_period_us: int = 20_000, idle: bool = False,
                 dry_when_idle: bool = False) -> None:
        self.device_count = device_count
        self.not_supported = frozenset(not_supported)
        self.init_error = init_error
        self.lost_after_calls = lost_after_calls
        self.sample_period_us = sample_period_us
        self.dry_when_idle = dry_when_idle
        # (device µs from which it holds, kernel-active %), in time order
        self._kernel_active: list[tuple[int, int]] = [(0, 0 if idle else KERNEL_ACTIVE_PERCENT)]
        # A device clock unrelated to perf_counter (like NVML's, whose epoch we do not trust).
        self.device_clock_offset_us = 1_700_000_000_000_000 - time.perf_counter_ns() // 1000
        self.calls: Counter[str] = Counter()
        self.returned_sample_stamps_us: list[int] = []  # every fine sample handed out, in order
        self.device_calls = 0
        self.init_refcount = 0
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        return self._kernel_active[-1][1] == 0

    def set_kernel_active(self, percent: int) -> None:
        """From now on the GPU runs kernels ``percent`` % of each sample period."""
        with self._lock:
            self._kernel_active.append((self._device_now_us(), percent))

    def _kernel_active_at(self, device_us: int) -> int:
        return next(p for since, p in reversed(self._kernel_active) if since <= device_us)

    @property
    def lost(self) -> bool:
        return self.lost_after_calls is not None and self.device_calls > self.lost_after_calls

    def device_us_to_perf_ns(self, device_us: int) -> int:
        return (device_us - self.device_clock_offset_us) * 1000

    def _device_now_us(self) -> int:
        return time.perf_counter_ns() // 1000 + self.device_clock_offset_us

    def _enter(self, function: str, handle: FakeHandle | None = None) -> None:
        """Book-keep one call and raise what the real library would raise."""
        with self._lock:
            self.calls[function] += 1
            if function not in ("nvmlInit", "nvmlShutdown") and self.init_refcount == 0:
                raise NVMLError(_real.NVML_ERROR_UNINITIALIZED)
            if function.startswith("nvmlDevice"):
                self.device_calls += 1
                if self.lost:
                    raise NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
            if handle is not None and not 0 <= handle.index < self.device_count:
                raise NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
            if function in self.not_supported:
                raise NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        with self._lock:
            self.init_refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        with self._lock:
            if self.init_refcount == 0:
                raise NVMLError(_real.NVML_ERROR_UNINITIALIZED)
            self.init_refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return self.device_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        self._enter("nvmlDeviceGetHandleByIndex", handle)
        return handle

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        self._enter("nvmlDeviceGetName", handle)
        return "NVIDIA Fake A100-SXM4-40GB"

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeHandle) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability", handle)
        return (8, 0)

    def nvmlDeviceGetSamples(self, device: FakeHandle, sampling_type: int,
                             timeStamp: int) -> tuple[int, list[_real.c_nvmlSample_t]]:
        self._enter("nvmlDeviceGetSamples", device)
        if sampling_type != _real.NVML_GPU_UTILIZATION_SAMPLES:
            raise NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)  # the fake only models utilisation
        period, now_us = self.sample_period_us, self._device_now_us()
        oldest_kept = now_us - 100 * period  # the driver keeps a bounded ring buffer
        first = max(timeStamp + 1, oldest_kept)
        with self._lock:
            periods = [(t, self._kernel_active_at(t))
                       for t in range(-(-first // period) * period, now_us + 1, period)]
        if self.dry_when_idle:
            periods = [(t, percent) for t, percent in periods if percent > 0]
        if not periods:
            raise NVMLError(_real.NVML_ERROR_NOT_FOUND)
        samples = [_real.c_nvmlSample_t(timeStamp=t, sampleValue=_real.c_nvmlValue_t(uiVal=p))
                   for t, p in periods]
        stamps = [t for t, _ in periods]
        self.returned_sample_stamps_us.extend(stamps)
        return (_real.NVML_VALUE_TYPE_UNSIGNED_INT, samples)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> _real.c_nvmlUtilization_t:
        self._enter("nvmlDeviceGetUtilizationRates", handle)
        with self._lock:
            percent = self._kernel_active[-1][1]
        return _real.c_nvmlUtilization_t(gpu=percent, memory=percent // 2)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle,
                                version: int | None = None) -> _real.c_nvmlMemory_t:
        self._enter("nvmlDeviceGetMemoryInfo", handle)
        free = MEMORY_TOTAL_BYTES - MEMORY_USED_BYTES
        return _real.c_nvmlMemory_t(total=MEMORY_TOTAL_BYTES, free=free, used=MEMORY_USED_BYTES)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        self._enter("nvmlDeviceGetPowerUsage", handle)
        return POWER_MW

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, type: int) -> int:
        self._enter("nvmlDeviceGetClockInfo", handle)
        if type != _real.NVML_CLOCK_SM:
            raise NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)  # the fake only models the SM clock
        return SM_CLOCK_MHZ

    def nvmlDeviceGetPcieThroughput(self, device: FakeHandle, counter: int) -> int:
        self._enter("nvmlDeviceGetPcieThroughput", device)
        rates = {_real.NVML_PCIE_UTIL_RX_BYTES: PCIE_RX_KBPS,
                 _real.NVML_PCIE_UTIL_TX_BYTES: PCIE_TX_KBPS}
        if counter not in rates:
            raise NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return rates[counter]


# Constants and exception classes are the real module's objects, reachable as attributes.
for _name in CONSTANT_NAMES + EXCEPTION_NAMES:
    setattr(FakeNvml, _name, getattr(_real, _name))


def real_nvml_is_absent() -> bool:
    """True on a machine without an NVIDIA library (the real pynvml's CPU path)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return True
    pynvml.nvmlShutdown()
    return False
