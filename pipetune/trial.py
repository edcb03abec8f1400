"""Run one variant in an isolated child process; whatever happens there becomes data.

Trials never share state (Keras' precision policy is global, caches hold memory, tf.data
thread pools persist), so each runs in a fresh ``spawn``ed process. The parent enforces the
timeout and the RAM budget and turns a crash, an OOM, a timeout or a corrupt record into a
FAILED ``TrialResult`` with a readable reason. The parent never dies with its child.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil

from pipetune.results import TrialResult, TrialState
from pipetune.trial_request import TrialRequest, failed

_POLL_S = 0.1


def run_trial(request: TrialRequest, timeout_s: float, ram_budget_bytes: int,
              work_dir: Path | None = None, log_dir: Path | None = None) -> TrialResult:
    """Measure ``request`` in a child process. Never raises for anything the child does.

    The child's stdout and stderr (TensorFlow's own messages) go to a log file in ``log_dir``,
    kept only when the trial fails (its path is then ``environment["log"]``).
    """
    # The sweep process's id in the name: a later sweep removes the folders of dead ones only.
    scratch = Path(tempfile.mkdtemp(prefix=f"trial-{request.key}-p{os.getpid()}-", dir=work_dir))
    log = _log_file(request, scratch, log_dir)
    context = trial_context()
    receiver, sender = context.Pipe(duplex=False)
    from pipetune.trial_child import child_main

    # The environment as it is now, not as it was when the forkserver started.
    process = context.Process(target=child_main, daemon=True,
                              args=(request, str(scratch), sender, dict(os.environ), str(log)))
    start_ignoring_sigint(process)
    sender.close()
    try:
        return _keep_log_if_failed(_supervise(request, process, receiver, timeout_s, ram_budget_bytes),
                                   log, log_dir)
    finally:
        _stop(process)
        receiver.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _log_file(request: TrialRequest, scratch: Path, log_dir: Path | None) -> Path:
    """The trial's log path, unique like its scratch folder. The child creates the file, so
    its existence says the child is past its start-up."""
    if log_dir is None:
        return scratch / "trial.log"
    return log_dir / f"{scratch.name}.log"


def _keep_log_if_failed(result: TrialResult, log: Path, log_dir: Path | None) -> TrialResult:
    if log_dir is None:
        return result
    if result.state is TrialState.COMPLETE:
        log.unlink(missing_ok=True)
        return result
    return replace(result, environment={**result.environment, "log": str(log)})


def _supervise(request: TrialRequest, process: multiprocessing.Process, receiver, timeout_s: float,
               ram_budget_bytes: int) -> TrialResult:
    deadline = time.monotonic() + timeout_s
    peak_rss = 0
    while True:
        if receiver.poll(_POLL_S):
            try:
                status, payload = receiver.recv()
            except EOFError:
                break  # the child died mid-send
            if status == "ok":
                return payload
            return failed(request, payload, peak_rss_bytes=peak_rss or None)
        if not process.is_alive():
            break
        peak_rss = max(peak_rss, _tree_rss(process.pid))
        if peak_rss > ram_budget_bytes:
            return failed(request, f"out of memory: used {peak_rss / 2**30:.2f} GiB, more than the "
                                   f"RAM budget of {ram_budget_bytes / 2**30:.2f} GiB",
                          peak_rss_bytes=peak_rss)
        if time.monotonic() > deadline:
            return failed(request, f"timed out after {timeout_s:g} s (measure.timeout_s)",
                          peak_rss_bytes=peak_rss or None)
    process.join(1.0)
    return failed(request, _death_reason(process.exitcode), peak_rss_bytes=peak_rss or None)


def trial_context() -> multiprocessing.context.BaseContext:
    """Where trial processes come from.

    Default ``forkserver``: a server process, itself *spawned* fresh (nothing of this process
    leaks into it), imports TensorFlow and Keras once; every trial is then a new process forked
    from that pristine state. Trials still never share a process or anything a trial did, and a
    trial starts in ~0.4 s instead of ~4 s of TensorFlow import. The server never runs a
    TensorFlow op, so no runtime (thread pools, CUDA) exists yet when it forks.
    ``PIPETUNE_START_METHOD=spawn`` gives every trial a fully fresh interpreter instead.
    """
    method = os.environ.get("PIPETUNE_START_METHOD", "forkserver")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["pipetune.trial_server"])
    return context


def start_ignoring_sigint(process: multiprocessing.Process) -> None:
    """Ctrl-C is the parent's to handle (it stops the child): the child starts with SIGINT
    blocked (a signal mask survives fork and exec), so it never prints a half-started
    KeyboardInterrupt traceback over the terminal. Blocked, not ignored, in the parent too: a
    Ctrl-C that lands while the child starts stays pending instead of being lost, then stops
    the child and interrupts here."""
    if threading.current_thread() is not threading.main_thread():
        process.start()
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
        if signal.SIGINT in signal.sigpending():
            signal.sigwait({signal.SIGINT})  # taken here, so it interrupts once
            raise KeyboardInterrupt
    except BaseException:  # (another thread may have taken the Ctrl-C: raised inside start)
        if process.pid is not None:
            _stop(process)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the kernel's OOM killer sends SIGKILL)" if exitcode == -signal.SIGKILL else ""
        return f"crashed: the trial process was killed by {name}{hint}"
    return f"crashed: the trial process exited with code {exitcode} before reporting a result"


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in processes)
    except psutil.Error:
        return 0


def _stop(process: multiprocessing.Process) -> None:
    if process.is_alive():
        process.kill()
    process.join(5.0)
