"""What the machine can run fast: GPUs and their compute capability, CPU bf16 support.

Read without importing TensorFlow: NVML for GPUs, /proc/cpuinfo for CPU flags.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Device:
    cpu_model: str
    cpu_cores: int
    cpu_bf16: bool  # AVX512_BF16 or AMX-BF16: mixed_bfloat16 runs about as fast as float32
    gpus: tuple[Gpu, ...] = ()
    accelerator_note: str = ""  # e.g. "No NVIDIA GPU (NVML library not found)"

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def fast_mixed_precisions(self) -> tuple[str, ...]:
        """The mixed precisions this device runs fast (``precision_problem`` finds none)."""
        return tuple(p for p in ("mixed_bfloat16", "mixed_float16") if not self.precision_problem(p))

    def precision_problem(self, precision: str) -> str | None:
        """Why ``precision`` would run slowly here, or None if it can run fast."""
        if precision == "mixed_float16":
            if any(g.compute_capability and g.compute_capability >= (7, 0) for g in self.gpus):
                return None
            return ("mixed_float16 needs a GPU with compute capability >= 7.0 "
                    "(on a CPU it runs about 280x slower than float32)")
        if precision == "mixed_bfloat16":
            if self.cpu_bf16 or any(
                g.compute_capability and g.compute_capability >= (8, 0) for g in self.gpus
            ):
                return None
            return "mixed_bfloat16 needs bf16 support: a CPU with AVX512_BF16/AMX or a GPU >= 8.0"
        return None


def require_tensorflow() -> None:
    """Fail with the install command, not an ImportError, when TensorFlow is missing."""
    import importlib.util

    from pipetune.errors import MissingDependencyError

    if importlib.util.find_spec("tensorflow") is None:
        raise MissingDependencyError(
            "this command needs TensorFlow, which is not installed: "
            "pip install 'pipetune[cpu]' (or 'pipetune[gpu]' on a CUDA machine)")


def detect_device(nvml: object | None = None) -> Device:
    """Describe this machine. ``nvml`` is an injectable pynvml-like module (tests use a fake)."""
    from pipetune.monitors import gpu_environment

    gpu_info = gpu_environment(nvml)
    gpus = tuple(Gpu(d["name"] or "unknown GPU", _capability(d.get("compute_capability")))
                 for d in gpu_info.get("devices", []))
    flags = _cpu_flags()
    return Device(
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 1,
        cpu_bf16=bool({"avx512_bf16", "amx_bf16"} & flags),
        gpus=gpus,
        accelerator_note=gpu_info.get("accelerator_note", ""),
    )


def _capability(text: str | None) -> tuple[int, int] | None:
    """``"8.6"`` -> (8, 6)."""
    if not text:
        return None
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
