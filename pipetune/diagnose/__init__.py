"""Diagnose before searching: where a pipeline's time goes, and what each lever could give.

``diagnose(spec, out_dir)`` prepares the spec's shards, measures in one isolated process the
rate of every cumulative stage (read, parse, each op; sequential and parallel; wall and CPU
time), the element size after each, and the consumer's ceiling, then reads a verdict from the
numbers (``verdict.analyse``) and writes ``diagnosis.json``. It runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipetune import sources
from pipetune.device import detect_device
from pipetune.diagnose.child import ChildRequest
from pipetune.diagnose.document import diagnosis_document
from pipetune.diagnose.measurements import Measurements
from pipetune.diagnose.render import render_stage_module, stage_infos
from pipetune.diagnose.verdict import Diagnosis, analyse, littles_law_concurrency
from pipetune.errors import PipetuneError, UsageError
from pipetune.plan import DataLayout
from pipetune.spec import Spec
from pipetune.trial import start_ignoring_sigint, trial_context

__all__ = ["Diagnosis", "DiagnoseOptions", "DiagnosisError", "diagnose", "littles_law_concurrency"]


class DiagnosisError(PipetuneError):
    """Measuring failed (the child crashed, timed out or raised)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class DiagnoseOptions:
    shards: int = 8  # as the sweep's default layout
    # Each stage is timed this long, or ``max_elements``, first wins. 0.4 s against 0.8 s, 6
    # interleaved diagnoses each of benchmark workloads 1, 6, 8 and 9 (2026-12-05): the same
    # verdict 24 of 24, the same automatic space on 1, 6 and 9, Little's-law pool sizes on 8 as
    # variable (32-38 against 34-38 threads), 1.6-3.3 s faster a diagnosis (1: 9.9 -> 6.6 s).
    seconds_per_pass: float = 0.4
    max_elements: int = 4000
    timeout_s: float = 300.0


def diagnose(spec: Spec, out_dir: Path, options: DiagnoseOptions = DiagnoseOptions()) -> Diagnosis:
    """Measure ``spec``'s stages and consumer, and write ``out_dir/diagnosis.json``.

    Raises:
        SourceError: the data cannot be read into shards.
        DiagnosisError: the measuring process failed.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compression = spec.search.space.compression[0]
    shard_set = sources.prepare_shards(spec, options.shards, compression, out_dir / "shards")
    first = Path(shard_set.files[0])
    data = DataLayout(str(first.parent / f"*{''.join(first.suffixes)}"), compression,
                      sources.schema_of(spec))
    mode = consumer_mode(spec)
    request = ChildRequest(
        spec=spec, module_source=render_stage_module(spec, data, options.shards),
        stages=stage_infos(spec), mode=mode,
        batch_size=spec.search.space.batch_size[0], cores=os.cpu_count() or 1, shards=options.shards,
        seconds_per_pass=options.seconds_per_pass, max_elements=options.max_elements,
        # the consumer levers worth timing: the mixed precisions this machine runs fast
        precisions=detect_device().fast_mixed_precisions() if mode == "train" else ())
    stages, cache_read, consumer = run_child(request, options.timeout_s, out_dir)
    measurements = Measurements(
        spec_name=spec.name, cores=request.cores, shards=options.shards,
        num_examples=shard_set.manifest.num_examples, stages=stages, consumer=consumer,
        cache_read=cache_read,
        ram_budget_bytes=int(spec.resources.ram_budget_gb * 2**30),
        shuffle_buffer=spec.search.space.shuffle_buffer[0],
        measure_seconds=time.perf_counter() - started)
    diagnosis = analyse(measurements)
    (out_dir / "diagnosis.json").write_text(json.dumps(diagnosis_document(diagnosis), indent=2) + "\n")
    return diagnosis


def consumer_mode(spec: Spec) -> str:
    """The spec's mode; a model that is a step time is a simulated accelerator (as the sweep)."""
    if spec.model.step_time_ms is not None and spec.measure.mode == "train":
        return "simulate"
    if spec.measure.mode == "simulate" and spec.model.step_time_ms is None:
        raise UsageError("simulate mode needs model.step_time_ms in the spec")
    return spec.measure.mode


def run_child(request: ChildRequest, timeout_s: float, out_dir: Path) -> tuple:
    """Run the measuring in a process forked from the trial forkserver; its failure is ours."""
    from pipetune.diagnose.child import child_main

    scratch = Path(tempfile.mkdtemp(prefix="diagnose-", dir=out_dir))
    context = trial_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=child_main, args=(request, str(scratch), sender, dict(os.environ)),
                              daemon=True)
    start_ignoring_sigint(process)
    sender.close()
    try:
        return _receive(process, receiver, timeout_s, scratch)
    finally:
        if process.is_alive():
            process.kill()
        process.join(5.0)
        receiver.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _receive(process, receiver, timeout_s: float, scratch: Path) -> tuple:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if receiver.poll(0.1):
            try:
                status, payload = receiver.recv()
            except EOFError:
                break
            if status == "ok":
                return payload
            raise DiagnosisError(f"measuring failed: {payload}")
        if not process.is_alive():
            break
    else:
        raise DiagnosisError(f"measuring timed out after {timeout_s:g} s")
    log = (scratch / "diagnose.log")
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise DiagnosisError(f"the measuring process died (exit code {process.exitcode})"
                         + (f": {tail[0]}" if tail else ""))
