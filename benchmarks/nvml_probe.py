"""Record what the real NVML returns for every call pipetune's sampler makes, raw.

``tests/fake_pynvml.py`` stands in for NVML on machines without a GPU; this script is how its
behaviour is checked against a real one: return types, what raises, the fine-sample period, what
an idle GPU's sample buffer holds, and which clock its timestamps are on. Run it where a GPU is
(needs nvidia-ml-py; PyTorch for the busy phase) and compare its JSON with the fake.

    python benchmarks/nvml_probe.py [--out reports/gpu/nvml_probe.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def outcome(call: Callable[[], Any]) -> dict[str, Any]:
    """What a call returned (type and value) or raised (class and message)."""
    try:
        value = call()
    except Exception as err:  # recording what raises is the point
        return {"raises": type(err).__name__, "message": str(err)}
    return {"type": type(value).__name__, "value": repr(value)[:200]}


def fine_samples(nvml: Any, handle: Any, since_us: int) -> tuple[dict[str, Any], int]:
    """One nvmlDeviceGetSamples call, summarised, and the newest timestamp it returned."""
    wall_us = time.time_ns() // 1000
    try:
        value_type, samples = nvml.nvmlDeviceGetSamples(
            handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, since_us)
    except nvml.NVMLError as err:
        return {"raises": type(err).__name__}, since_us
    stamps = [s.timeStamp for s in samples]
    values = [s.sampleValue.uiVal for s in samples]
    spacings = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return {"value_type": value_type, "count": len(samples), "values": values[-20:],
            "zero_values": values.count(0),
            "spacing_us_min_median_max": spacings and [spacings[0], spacings[len(spacings) // 2],
                                                       spacings[-1]],
            "newest_stamp_minus_wall_clock_us": stamps and stamps[-1] - wall_us,
            }, (stamps[-1] if stamps else since_us)


def busy(seconds: float) -> None:
    import torch  # only the busy phase needs it

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    ended = time.perf_counter() + seconds
    while time.perf_counter() < ended:
        for _ in range(20):
            torch.matmul(a, a)
        torch.cuda.synchronize()


def probe() -> dict[str, Any]:
    import pynvml as nvml

    found: dict[str, Any] = {"nvidia-ml-py": importlib.metadata.version("nvidia-ml-py"),
                             "before_init": outcome(nvml.nvmlDeviceGetCount)}
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    calls: dict[str, Callable[[], Any]] = {
        "driver": nvml.nvmlSystemGetDriverVersion,
        "name": lambda: nvml.nvmlDeviceGetName(handle),
        "compute_capability": lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle),
        "memory_used_total": lambda: (lambda m: (m.used, m.total))(
            nvml.nvmlDeviceGetMemoryInfo(handle)),
        "power_mw": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
        "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "pcie_rx_kbps": lambda: nvml.nvmlDeviceGetPcieThroughput(
            handle, nvml.NVML_PCIE_UTIL_RX_BYTES),
        "pcie_unknown_counter": lambda: nvml.nvmlDeviceGetPcieThroughput(handle, 7),
        "utilization_gpu_memory": lambda: (lambda u: (u.gpu, u.memory))(
            nvml.nvmlDeviceGetUtilizationRates(handle)),
        "handle_of_missing_index": lambda: nvml.nvmlDeviceGetHandleByIndex(64),
    }
    found.update({name: outcome(call) for name, call in calls.items()})
    phases, newest = {}, 0
    phases["backlog_since_0"], newest = fine_samples(nvml, handle, newest)
    time.sleep(1.0)
    phases["idle_1s"], newest = fine_samples(nvml, handle, newest)
    phases["at_once_again"], newest = fine_samples(nvml, handle, newest)
    busy(2.0)
    phases["busy_2s"], newest = fine_samples(nvml, handle, newest)
    time.sleep(1.5)
    phases["idle_1.5s_after_busy"], newest = fine_samples(nvml, handle, newest)
    found["fine_samples"] = phases
    nvml.nvmlShutdown()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/gpu/nvml_probe.json"))
    args = parser.parse_args(argv)
    try:
        found = probe()
    except Exception as err:  # no NVML library, no driver, no GPU, no torch
        print(f"cannot probe NVML here: {err!r}", file=sys.stderr)
        return 2
    text = json.dumps(found, indent=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
