"""Tests for benchmarks/gpu_check.py, the real-GPU check of pipetune's NVML sampler.

No machine of this project has a GPU: every test that runs the check does so through
``fake_pynvml.FakeNvml`` and a fake load that sets the fake's kernel-active % per phase, and says
in its docstring that it stands in for a GPU. The real ``pynvml`` is used only on its CPU path.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

import fake_pynvml
from fake_pynvml import FakeNvml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

SHORT = ["--idle-s", "0.3", "--saturated-s", "0.3", "--duty-cycled-s", "0.3"]


class FakeLoad:
    """Sets the fake GPU's kernel-active % for each phase instead of running kernels."""

    description = "fake load (sets FakeNvml's kernel-active %)"

    def __init__(self, fake: FakeNvml, saturated: int = 100, duty_cycled: int = 50) -> None:
        self.fake, self.saturated, self.duty_cycled = fake, saturated, duty_cycled
        self.calls: list[str] = []

    def warm_up(self) -> None:
        self.calls.append("warm_up")

    def saturate(self, seconds: float) -> None:
        self.calls.append("saturate")
        self.fake.set_kernel_active(self.saturated)
        time.sleep(seconds)

    def duty_cycle(self, seconds: float, busy_fraction: float, period_s: float) -> None:
        self.calls.append(f"duty_cycle({busy_fraction}, {period_s})")
        self.fake.set_kernel_active(self.duty_cycled)
        time.sleep(seconds)
        self.fake.set_kernel_active(0)


def _run(tmp_path: Path, fake: FakeNvml, load: FakeLoad) -> tuple[int, str]:
    out = tmp_path / "gpu" / "gpu_check.md"
    code = gpu_check.main(["--out", str(out)] + SHORT, nvml=fake, make_load=lambda: load)
    return code, out.read_text()


def _check_rows(markdown: str) -> dict[str, str]:
    """check name -> PASS/FAIL, from the written checks table."""
    rows = [line.split(" | ") for line in markdown.splitlines() if line.endswith(" |")]
    return {row[0].lstrip("| "): row[1] for row in rows if len(row) == 3 and row[1] in
            ("PASS", "FAIL")}


def _table_row(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_every_check_passes_on_a_gpu_that_behaves(tmp_path: Path) -> None:
    """Stands in for a GPU: idle 0 %, saturated 100 %, duty-cycled 50 %, all metrics readable."""
    fake = FakeNvml(idle=True)
    load = FakeLoad(fake)
    code, markdown = _run(tmp_path, fake, load)
    checks = _check_rows(markdown)
    assert code == 0, markdown
    assert len(checks) == 6 and set(checks.values()) == {"PASS"}
    assert load.calls == ["warm_up", "saturate", "duty_cycle(0.5, 0.2)"]
    assert "gpu0 NVIDIA Fake A100-SXM4-40GB (compute capability 8.0), driver 550.54.15" in markdown
    idle, saturated, duty = _table_row(markdown, "kernel-active %")
    assert idle == "0 / 0 / 0" and saturated.endswith("/ 100 / 100") and "/ 50 /" in duty
    assert _table_row(markdown, "power (W, median)") == [f"{fake_pynvml.POWER_MW / 1000:,.0f}"] * 3
    assert _table_row(markdown, "memory used (MiB, max)") == ["3,072"] * 3
    assert _table_row(markdown, "PCIe rx (KB/s, median)") == [f"{fake_pynvml.PCIE_RX_KBPS:,}"] * 3
    rates = [float(cell) for cell in _table_row(markdown, "samples/s, memory gauge")]
    assert all(rate >= 10 for rate in rates)  # the 20 Hz default interval, minus edges
    assert fake.init_refcount == 0


def test_a_saturated_phase_that_reads_40_percent_fails(tmp_path: Path) -> None:
    """Stands in for a GPU whose saturating load shows only 40 % kernel-active."""
    fake = FakeNvml(idle=True)
    code, markdown = _run(tmp_path, fake, FakeLoad(fake, saturated=40))
    checks = _check_rows(markdown)
    assert code == 1
    assert checks["saturated kernel-active median > 90%"] == "FAIL"
    assert "median 40.0%" in markdown
    assert checks["idle kernel-active median < 10%"] == "PASS"
    assert checks["duty-cycled kernel-active median in 30-70%"] == "PASS"


def test_a_duty_cycle_outside_30_to_70_percent_fails(tmp_path: Path) -> None:
    """Stands in for a GPU whose duty-cycled phase reads 90 %."""
    fake = FakeNvml(idle=True)
    code, markdown = _run(tmp_path, fake, FakeLoad(fake, duty_cycled=90))
    assert code == 1
    assert _check_rows(markdown)["duty-cycled kernel-active median in 30-70%"] == "FAIL"


def test_not_supported_metric_is_written_as_absent_not_zero(tmp_path: Path) -> None:
    """Stands in for a GPU without PCIe throughput counters (NotSupported)."""
    fake = FakeNvml(idle=True, not_supported={"nvmlDeviceGetPcieThroughput"})
    code, markdown = _run(tmp_path, fake, FakeLoad(fake))
    assert code == 0, markdown
    for label in ("PCIe rx (KB/s, median)", "PCIe tx (KB/s, median)"):
        assert _table_row(markdown, label) == ["absent (NVML: Not Supported)"] * 3
    assert "gpu0.pcie_rx_kbps: NVML: Not Supported" in markdown
    assert _check_rows(markdown)["unsupported metrics absent, not 0"] == "PASS"


def test_a_stamp_from_another_clock_fails_the_clock_check() -> None:
    """Stands in for a GPU whose samples were stamped on a clock other than perf_counter_ns."""
    from pipetune.results import MonitorReport, MonitorSample

    phases = [gpu_check.Phase(name, start, start + 100, None)
              for name, start in (("idle", 1000), ("saturated", 1100), ("duty-cycled", 1200))]
    samples = (MonitorSample(1050, "gpu0.kernel_active_percent", 0.0),
               MonitorSample(10**18, "gpu0.kernel_active_percent", 100.0))  # an epoch clock
    check = gpu_check._clock_check(MonitorReport(samples=samples), phases, 0, 0.05, (900, 1400))
    assert not check.passed and "1 samples outside" in check.detail


def test_no_gpu_exits_2_with_one_clear_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Stands in for a machine with nvidia-ml-py but no NVIDIA library (LibraryNotFound)."""
    fake = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    out = tmp_path / "gpu_check.md"

    def no_load() -> FakeLoad:
        raise AssertionError("no load may be built without a GPU")

    assert gpu_check.main(["--out", str(out)], nvml=fake, make_load=no_load) == 2
    assert capsys.readouterr().err == "No NVIDIA GPU (NVML library not found)\n"
    assert not out.exists()


def test_no_load_library_exits_2_with_one_clear_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Stands in for a GPU machine with neither PyTorch nor CuPy able to use CUDA."""
    def no_load() -> FakeLoad:
        raise gpu_check.LoadUnavailable("No GPU load: neither PyTorch nor CuPy can use a CUDA "
                                        "device (pip install torch)")

    code = gpu_check.main(["--out", str(tmp_path / "x.md")], nvml=FakeNvml(), make_load=no_load)
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.skipif(not fake_pynvml.real_nvml_is_absent(), reason="an NVIDIA library is installed here")
def test_the_script_on_a_cpu_machine_without_pydantic_says_no_gpu(tmp_path: Path) -> None:
    """The CPU path with the real pynvml, run as a script, where pydantic cannot be imported."""
    runner = ("import runpy, sys; sys.modules['pydantic'] = None; "  # None blocks the import
              f"sys.argv = ['gpu_check.py', '--out', {str(tmp_path / 'x.md')!r}]; "
              f"runpy.run_path({str(REPO / 'benchmarks' / 'gpu_check.py')!r}, "
              "run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "No NVIDIA GPU (NVML library not found)\n"


def test_importing_pipetune_monitors_does_not_import_pydantic() -> None:
    code = ("import sys, pipetune.monitors; assert 'pydantic' not in sys.modules; "
            "import pipetune; assert callable(pipetune.load_spec) and 'pydantic' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_matmul_load_ends_every_busy_window_with_a_synchronise() -> None:
    """No GPU: the matmul and the synchronise are recorders, so only the call pattern is checked."""
    calls: list[str] = []
    load = gpu_check.MatmulLoad("recorded", lambda: calls.append("matmul"),
                                lambda: calls.append("sync"))
    load.warm_up()
    assert calls[:2] == ["matmul", "sync"] and calls[-1] == "sync"
    for run in (lambda: load.saturate(0.01), lambda: load.duty_cycle(0.04, 0.5, 0.02)):
        calls.clear()
        run()
        assert "matmul" in calls and calls[-1] == "sync"
