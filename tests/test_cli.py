"""The command line without TensorFlow, and its exit codes for bad usage."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO
from pipetune.cli import main


def test_help_and_version_work_without_importing_tensorflow():
    script = ("import sys; from pipetune.cli import main\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("False")
    assert "sweep" in done.stdout and "emit" in done.stdout


def test_a_command_that_needs_tensorflow_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a))
    code = main(["sweep", str(REPO / "examples" / "demo.yaml"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'pipetune[cpu]'" in err and "Traceback" not in err


def test_env_reports_the_cpu_path_in_one_line(capsys):
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Python", "TensorFlow", "Keras", "CPU", "GPU"]


def test_emit_without_a_sweep_is_a_clear_usage_error(capsys, tmp_path):
    assert main(["emit", str(tmp_path)]) == 2
    assert "pipetune sweep" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sweep"], ["nonsense"]])
def test_bad_usage_exits_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one
def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_sweep_at_its_next_event():
    """Python prints "Exception ignored" for a KeyboardInterrupt raised inside __del__ and goes
    on; the sweep remembers the Ctrl-C and raises it at its next event."""
    import gc
    import signal
    import threading

    from pipetune.commands.sweep import _CtrlC

    events = []

    class Finalized:
        def __del__(self) -> None:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # swallowed in here
            sum(range(1000))

    launcher = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it
    try:
        with _CtrlC() as ctrl_c:
            on_event = ctrl_c.checked(events.append)
            on_event("before")
            Finalized()
            gc.collect()
            assert ctrl_c.pressed
            with pytest.raises(KeyboardInterrupt):
                on_event("after")
        assert events == ["before"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup pipetune sweep &` from a script
        with _CtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the launcher's choice stays
    finally:
        signal.signal(signal.SIGINT, launcher)
