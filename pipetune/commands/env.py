"""``pipetune env``: what this machine offers, one line each."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="show Python/TF/Keras versions, CPU and GPU/NVML status")
    parser.set_defaults(run=run)


def _version(package: str) -> str:
    for name in (package, f"{package}-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed (pip install 'pipetune[cpu]' or 'pipetune[gpu]')"


def run(args: argparse.Namespace) -> int:
    from pipetune.device import detect_device

    device = detect_device()
    print(f"Python:     {platform.python_version()} ({platform.platform()})")
    print(f"TensorFlow: {_version('tensorflow')}")
    print(f"Keras:      {_version('keras')}")
    print(f"CPU:        {device.cpu_model}, {device.cpu_cores} cores, "
          f"bf16 {'yes' if device.cpu_bf16 else 'no'}")
    gpus = ", ".join(f"{g.name} (compute {'.'.join(map(str, g.compute_capability or ()))})"
                     for g in device.gpus)
    print(f"GPU:        {gpus or device.accelerator_note or 'none'}")
    return 0
