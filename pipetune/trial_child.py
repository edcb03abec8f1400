"""The child side of a trial: build the plan's dataset, run the burst under the monitors.

Runs in a fresh process (forked from the forkserver, see ``trial.trial_context``). It sends
back exactly one message: ``("ok", TrialResult)`` or ``("error", reason)``.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipetune.results import TrialResult, TrialState
from pipetune.trial_request import FAR_BEHIND, TrialRequest

if TYPE_CHECKING:
    from pipetune.burst import BurstTiming, FarBehind


def child_main(request: TrialRequest, scratch: str, sender: Any, environ: dict[str, str],
               log_path: str | None = None) -> None:
    enter_child(environ, Path(scratch), Path(log_path) if log_path else Path(scratch) / "trial.log")
    try:
        message: tuple[str, object] = ("ok", measure(request, Path(scratch)))
    except BaseException as err:  # noqa: BLE001 - every failure must reach the parent as data
        message = ("error", explain_failure(err))
    sender.send(message)
    sender.close()


def enter_child(environ: dict[str, str], scratch: Path, log_path: Path) -> None:
    """A measuring child's start (a trial's or the diagnosis'): the parent's environment, its
    temporary files in the scratch folder, its output in the log.

    Temporary files: AutoGraph writes a module per converted function to the temp dir and
    deletes it at interpreter exit, which a child forked by the forkserver never reaches (it
    leaves by ``os._exit``); in scratch they go when the parent removes the folder, instead
    of piling up in /tmp (~100 files a minute in a sweep)."""
    os.environ.clear()
    os.environ.update(environ)
    tempfile.tempdir = str(scratch)
    _redirect_output(log_path)


def _redirect_output(path: Path) -> None:
    """TensorFlow's chatter (C++ logs on fd 2, prints on fd 1) goes to the child's log, not
    over the parent's progress bar; the parent keeps the log of a failed trial."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    sys.stdout.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)


REASON_CHARS = 600
# Lines of a TensorFlow error that say where, not what: the op's Python traceback and node names.
_WHERE_LINE = re.compile(r"^(Detected at node|Graph execution error|File \"|\[\[\{\{node|"
                         r"defined at \(most recent call last\)|Traceback \(most recent call last\))")


def error_words(err: BaseException) -> str:
    """The error's own message: TensorFlow's last lines that say what went wrong, without the
    traceback through scratch files and autograph modules, on one line."""
    text = getattr(err, "message", None) or str(err)
    kept = [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith((" ", "\t")) and not _WHERE_LINE.match(line.strip())]
    words = " ".join(" ".join(kept[-3:]).split()) if kept else " ".join(text.split())
    words = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", words)
    words = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?\s*$", "", words)
    if len(words) > REASON_CHARS:
        words = words[:REASON_CHARS].rsplit(" ", 1)[0] + " …"
    return words


def explain_failure(err: BaseException) -> str:
    """One readable line: what kind of failure, then TensorFlow's or Python's own words."""
    name = type(err).__name__
    text = error_words(err)
    if name in ("ResourceExhaustedError", "MemoryError"):
        return f"out of memory ({name}): {text}"
    if name == "DataLossError" or "corrupted record" in text.lower():
        return f"corrupt record ({name}): {text}"
    if name == "KeyboardInterrupt":
        return "interrupted"
    where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return f"crashed ({name}{at}): {text}"


def measure(request: TrialRequest, scratch: Path) -> TrialResult:
    from pipetune.burst import BurstPlan, run_burst
    from pipetune.models import configure_tensorflow
    from pipetune.monitors import Monitors, clip, mean_metric, peak_metric
    from pipetune.plan import Plan
    from pipetune.user_code import on_sys_path

    configure_tensorflow()
    spec, params = request.spec, request.params
    plan = Plan.from_variant(spec, params, request.data)
    with on_sys_path(spec.base_dir):
        module = plan.load_module(scratch)
        dataset = module.make_dataset(training=True, cache_path=str(scratch / "cache"))
        consume = _consumer(request, dataset)
        per_call = params.steps_per_execution if request.mode == "train" else 1
        # Warm-up and windows in whole calls, as fit runs them: a shorter call at a window's
        # end would pay a whole call's dispatch and sync for fewer steps.
        burst_plan = BurstPlan(_whole_calls(request.warmup_steps, per_call), _whole_calls(request.steps, per_call),
                               request.repeats, steps_per_epoch=_steps_per_epoch(request),
                               fill_epoch=params.cache != "none" and not request.consumer_ceiling,
                               batch_size=params.batch_size, shuffle_buffer=params.shuffle_buffer,
                               batches_per_call=per_call)
        if request.consumer_ceiling:
            dataset = _one_batch_in_memory(dataset, burst_plan.steps_per_epoch)
        monitors = Monitors(interval_s=request.monitor_interval_s)
        monitors.start()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        try:
            # Epoch by epoch (no ``repeat()``): the burst sees every epoch end.
            timing = run_burst(dataset, consume, burst_plan, examples_in=_batch_examples,
                               far_behind=_far_behind(request, burst_plan.steps_per_epoch))
        finally:
            whole = monitors.stop()
        burst_cpu_percent = 100 * (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
    timed = clip(whole, list(timing.windows))
    cpu_percent = mean_metric(timed, "host.process_cpu_percent")
    return TrialResult(
        key=request.key, role=request.role, params=params.model_dump(), state=TrialState.COMPLETE,
        batch_size=params.batch_size, steps_per_epoch=burst_plan.steps_per_epoch,
        startup_ns=timing.startup_ns, fill_ns=timing.fill_ns, boundary_ns=timing.boundary_ns,
        whole_epochs=timing.whole_epochs, repeats=timing.repeats, cut_short=timing.cut_short,
        cpu_s_per_example=_cpu_s_per_example(timing), fill_cpu_s=timing.fill_cpu_s,
        # Windows shorter than the sampling interval hold no sample: the whole burst's CPU then.
        cpu_percent=cpu_percent if cpu_percent is not None else burst_cpu_percent,
        peak_rss_bytes=_as_int(peak_metric(whole, "host.rss_bytes")),
        gpu_memory_bytes=_as_int(peak_metric(whole, "gpu0.memory_used_bytes")),
        monitor=whole, environment=environment(request), budget_steps=request.steps,
        pipeline_source=plan.render(),
    )


def _far_behind(request: TrialRequest, steps_per_epoch: int) -> FarBehind | None:
    """The burst's test after its first repeat (``burst.FarBehind``): is this variant, projected
    with no epoch-boundary cost (not measured yet; optimistic), FAR_BEHIND times worse than the
    best so far? None when the sweep has no best yet."""
    if request.best_so_far is None:
        return None
    from pipetune.stats import speedup_of, trial_objective_value

    best, measure = request.best_so_far, request.spec.measure

    def check(timing: BurstTiming) -> bool:
        so_far = TrialResult(key=request.key, role=request.role, params={}, state=TrialState.COMPLETE,
                             steps_per_epoch=steps_per_epoch, startup_ns=timing.startup_ns,
                             fill_ns=timing.fill_ns, repeats=timing.repeats)
        value = trial_objective_value(so_far, measure.resolved_objective, measure.epochs_planned)
        (speedup,) = speedup_of([best], [value], measure.resolved_objective)
        return speedup >= FAR_BEHIND

    return check


def _batch_examples(batch: Any) -> int:
    """Examples in one ``(features, labels)`` batch; an epoch's last batch may be partial."""
    return int(batch[1].shape[0])


def _one_batch_in_memory(dataset: Any, steps_per_epoch: int) -> Any:
    """The consumer's ceiling: one batch held in memory, served as epochs of the usual length."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensors(next(iter(dataset))).repeat(steps_per_epoch)


def _cpu_s_per_example(timing: Any) -> float | None:
    examples = sum(r.examples for r in timing.repeats)
    return timing.window_cpu_s / examples if examples else None


def _whole_calls(steps: int, per_call: int) -> int:
    """``steps`` rounded up to a multiple of the steps the consumer takes per call."""
    return math.ceil(steps / per_call) * per_call


def _steps_per_epoch(request: TrialRequest) -> int:
    batches = request.num_examples / request.params.batch_size
    return max(1, math.floor(batches) if request.params.drop_remainder else math.ceil(batches))


def _consumer(request: TrialRequest, dataset: Any) -> Any:
    from pipetune.burst import discarding_consumer, multi_step_consumer, sleeping_consumer, training_consumer
    from pipetune.models import build_model

    if request.mode == "simulate":
        if request.spec.model.step_time_ms is None:
            raise ValueError("simulate mode needs model.step_time_ms")
        return sleeping_consumer(request.spec.model.step_time_ms)
    if request.mode == "input":
        return discarding_consumer
    features_spec = dataset.element_spec[0]
    shape = tuple(features_spec.shape[1:])
    if any(dim is None for dim in shape):
        shape = tuple(next(iter(dataset.take(1)))[0].shape[1:])
    params = request.params
    model = build_model(request.spec, shape, params.precision, params.jit_compile)
    return multi_step_consumer(model) if params.steps_per_execution > 1 else training_consumer(model)


def _as_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def environment(request: TrialRequest) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jit_compile": request.params.jit_compile,
        "steps_per_execution": request.params.steps_per_execution,
        "mode": request.mode,
        "argv0": Path(sys.argv[0]).name,
    }
