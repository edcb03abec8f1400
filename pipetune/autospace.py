"""The automatic search space: what to try, read from the diagnosis instead of a fixed grid.

Used when the spec has no ``search.space`` or says ``space: auto``; the dimensions a user lists
under ``space: {auto: true, ...}`` are kept as written. Pure: the diagnosis and the device in,
a ``SearchSpace`` and the reasons for it out.

Per bottleneck (the diagnosis' verdict):
  blocking I/O   concurrency beyond the cores, sized by Little's law with 2x headroom, at
                 the rate to keep up with and at the all-cores CPU estimate when lower: an
                 interleave over at least that many shards and a private thread pool that
                 large (reads), or a private pool that large for AUTOTUNE's map parallelism
                 to fill (an op); ``deterministic: false`` (marked as changing order); and
                 a cache as below (from the second epoch on it waits for nothing);
  compute        parallelism up to the cores, a cache after the deterministic ops when they
                 cost something and more than one epoch is planned (memory if it fits the RAM
                 budget, else disk; with prefetch or none), a vectorised map (batch first)
                 when every op acts per batch, and one file read at a time when one reader
                 keeps up twice over (more readers only take CPU from the ops);
  bandwidth      a cache (fewer bytes read from the second epoch on) and parallel reads;
  consumer       no pipeline grid: tf.data's AUTOTUNE pipeline only; in train mode the
                 consumer's levers instead (the precisions this device runs fast, batch size,
                 XLA, steps per call). Read again first at the largest batch size the spec
                 lists: if the pipeline falls behind a consumer of bigger batches, the
                 pipeline's own bottleneck is searched instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune.device import Device
from pipetune.diagnose.measurements import STEPS_PER_CALL, ConsumerMeasurement
from pipetune.diagnose.verdict import (MAX_CONCURRENCY, Diagnosis, StageCost, analyse, keep_up_rate,
                                       outruns, sized_concurrency)
from pipetune.dimensions import BY_NAME
from pipetune.spec import SearchSpace, Spec

MAX_SHARDS = 64  # more shard files than this is a layout change, not a tuning knob
# Little's law gives the mean number in flight at exactly the target rate; with waits that
# vary, that many leaves the pipeline short whenever several are slow at once.
HEADROOM = 2
MIN_CACHE_SHARE = 0.2  # a cache pays when the deterministic ops are at least this share of the work


@dataclass(frozen=True, slots=True)
class AutoSpace:
    space: SearchSpace
    reasons: tuple[str, ...]  # one plain sentence per choice, for the summary and the report
    consumer_bound: bool  # no pipeline change will pay: only the consumer's levers are searched


def auto_space(spec: Spec, diagnosis: Diagnosis, device: Device) -> AutoSpace:
    """The space the diagnosis points to, with the dimensions the user listed kept."""
    reasons = [f"diagnosis: {diagnosis.bottleneck.sentence}"]
    diagnosis = _at_largest_batch(spec, diagnosis, reasons)
    kind = diagnosis.bottleneck.kind
    dims: dict[str, list[Any]] = {"shards": [8], "interleave_cycle": ["autotune"],
                                  "map_parallel": ["autotune"], "prefetch": ["autotune"], "cache": ["none"]}
    if kind == "consumer":
        reasons.append("not input-bound: no pipeline change will pay, so tf.data's AUTOTUNE pipeline "
                       "is the only pipeline measured")
        if diagnosis.measurements.consumer.mode == "train":
            _consumer_levers(spec, device, dims, reasons)
            reasons += _measured_gains(diagnosis.measurements.consumer)
    elif kind == "blocking_io":
        _blocking(diagnosis, dims, reasons)
        _cache(diagnosis, dims, reasons, spec.measure.epochs_planned)
    else:
        _compute(diagnosis, dims, reasons, spec.measure.epochs_planned)
        _vectorized(spec, dims, reasons)
        if kind == "bandwidth":
            dims["interleave_cycle"] = ["autotune", 8]
            reasons.append("bandwidth-bound: parallel reads of 8 shards, and a cache so later epochs "
                           "read nothing")
        else:
            _one_reader(diagnosis, dims, reasons)
    listed = {name: getattr(spec.search.space, name) for name in spec.search.space.listed()}
    if listed:
        reasons.append(f"kept as the spec lists them: {', '.join(sorted(listed))}")
    space = SearchSpace(**{**dims, **listed})
    return AutoSpace(space, tuple(reasons), consumer_bound=kind == "consumer")


def _at_largest_batch(spec: Spec, diagnosis: Diagnosis, reasons: list[str]) -> Diagnosis:
    """A consumer-bound verdict read again at the largest batch size the spec lists: a step
    that takes bigger batches takes more examples per second (a simulated step costs the same
    per batch; a trained one as the diagnosis timed it at that size), and if the pipeline then
    no longer outruns it, its own bottleneck is what to search."""
    consumer = diagnosis.measurements.consumer
    largest = max(spec.search.space.batch_size)
    if diagnosis.bottleneck.kind != "consumer" or largest <= consumer.batch_size:
        return diagnosis
    if consumer.mode == "simulate":
        faster = dataclasses.replace(consumer, batch_size=largest)
    else:
        timed = [lever for lever in consumer.levers if lever.dimension == "batch_size" and lever.value == largest]
        if not timed:
            return diagnosis
        faster = dataclasses.replace(consumer, batch_size=largest, step_s=timed[0].step_s)
    if outruns(diagnosis.measured_rate, faster.rate):
        return diagnosis
    again = analyse(dataclasses.replace(diagnosis.measurements, consumer=faster))
    reasons.append(f"at batch {largest} (listed) the consumer takes {faster.rate:.0f} examples/s, more "
                   f"than the pipeline's {diagnosis.measured_rate:.0f}/s: {again.bottleneck.sentence}")
    return again


def _blocking(diagnosis: Diagnosis, dims: dict[str, list[Any]], reasons: list[str]) -> None:
    """Concurrency at two sizes, for the race to choose between: Little's law with headroom at
    the rate to keep up with (the consumer, or the computing stages), and at the all-cores CPU
    estimate when that is lower. The estimate is pessimistic (CPU billed at low rates, see
    ``cpu_bound``), but too many in flight cost too: calls contend for the cores and, in a
    py_function, for the GIL (a 4 ms wait: 38 in flight ran 3,130/s, 64 ran 2,750/s).
    Little's law as is at the lower rate was tried as the smaller size and measured worse on
    two of three benchmark workloads (auto vs hand-listed pick: 0.86 and 0.81, against 0.97
    and 1.02 with headroom at both; 0.90 against 0.82 on the third)."""
    stage = _stage(diagnosis.costs, diagnosis.bottleneck.stage)
    fast = keep_up_rate(diagnosis.measurements.consumer.rate, diagnosis.compute_rate)
    rates = sorted({min(fast, diagnosis.cpu_bound), fast})
    sizes = sorted({min(MAX_CONCURRENCY, HEADROOM * max(2, sized_concurrency(rate, stage))) for rate in rates})
    law = (f"Little's law: {' to '.join(f'{rate:.0f}/s' for rate in rates)} x {stage.wall_s * 1000:.2f} ms, "
           f"{HEADROOM}x that as headroom for the waits' variance")
    if stage.kind == "read":
        shards = min(MAX_SHARDS, max(8, sizes[-1]))
        cycles = sorted({min(size, shards) for size in sizes})
        dims.update(shards=[shards], interleave_cycle=["autotune", *cycles],
                    private_threadpool_size=[0, max(cycles[-1], diagnosis.measurements.cores)])
        reasons.append(f"blocking reads: {_either(cycles)} files read at once over {shards} shards ({law})")
    else:
        # The pool is the concurrency: AUTOTUNE's map parallelism fills it (it goes up to the
        # pool's size). Crossing map sizes with one large pool was measured slower (20 calls on
        # a pool of 74 threads: 12-19 s to train; 16 on 16: 10 s).
        dims.update(private_threadpool_size=[0, *sizes])
        reasons.append(f"`{stage.name}` waits: a private pool of {_either(sizes)} threads, AUTOTUNE's "
                       f"map parallelism filling it ({law})")
    dims["deterministic"] = [True, False]
    reasons.append("deterministic: false is tried too; it changes the order examples arrive in")


def _either(values: Sequence[int]) -> str:
    return " or ".join(str(value) for value in values)


def _compute(diagnosis: Diagnosis, dims: dict[str, list[Any]], reasons: list[str], epochs: int) -> None:
    cores = diagnosis.measurements.cores
    dims["map_parallel"] = ["autotune", cores] if cores > 1 else ["autotune"]
    reasons.append(f"compute-bound: parallel map up to the {cores} cores")
    if _cache(diagnosis, dims, reasons, epochs):
        # What runs after a cache is cheap, and on few cores a prefetch thread's hand-off can
        # cost more than it overlaps (measured on 2 cores, memory cache, 1 ms step: 2.1-2.4 s
        # to train without prefetch, 2.6-3.3 s with AUTOTUNE's).
        dims["prefetch"] = ["autotune", 0]
        reasons.append("with a cache, no prefetch is tried too (what runs after a cache is cheap)")


def _one_reader(diagnosis: Diagnosis, dims: dict[str, list[Any]], reasons: list[str]) -> None:
    """One file read at a time when one reader keeps up with room to spare: more readers then
    only take CPU from the computing stages. Whether reading several files at once looked
    faster in the diagnosis does not enter: on reads of ~30 us it measured x1.0 to x2.7 for one
    workload across runs. In one benchmark run's hand-listed sweeps, one reader against two,
    the rest alike, took 8% less time to train (workload 3: 0.112 vs 0.122 s, race medians),
    and the best variant of workload 1 read one file at a time, 6% faster than AUTOTUNE's one
    reader per core."""
    read = next((cost for cost in diagnosis.costs if cost.kind == "read"), None)
    target = keep_up_rate(diagnosis.measurements.consumer.rate, diagnosis.compute_rate)
    if read is None or read.blocking or read.rate_1 < HEADROOM * target:
        return
    dims["interleave_cycle"] = [1]
    reasons.append(f"one file read at a time: one reader takes {read.rate_1:.0f} records/s, over "
                   f"{HEADROOM}x the {target:.0f}/s to keep up with; the cores go to the computing "
                   "stages (files still come in a new order each epoch)")


def _cache(diagnosis: Diagnosis, dims: dict[str, list[Any]], reasons: list[str], epochs: int) -> bool:
    """A cache after the deterministic ops, when they are a large share of the work (waits
    included: from the second epoch on a cache reads nothing from slow storage) and more than
    one epoch is planned. Whether a cache is tried."""
    cached = _cache_choice(diagnosis)
    if cached and epochs < 2:
        reasons.append("no cache: with 1 epoch planned it would only be filled, never read")
    elif cached:
        dims["cache"] = ["none", cached]
        reasons.append(f"a {cached} cache after the deterministic ops: they take "
                       f"{_deterministic_share(diagnosis):.0%} of the per-element time")
    return bool(cached) and epochs >= 2


def _vectorized(spec: Spec, dims: dict[str, list[Any]], reasons: list[str]) -> None:
    """Batch first, then parse and run the ops on whole batches: per-element overhead is paid
    once a batch. Only where every op acts the same on a batch (space.py's rule)."""
    if all(op.acts_per_batch for op in spec.ops):
        dims["vectorized_map"] = [False, True]
        reasons.append("every op acts per batch: parsing and the ops on whole batches "
                       "(batch, then map) is tried too")


def _cache_choice(diagnosis: Diagnosis) -> str | None:
    """memory or disk when caching the deterministic prefix would save enough work."""
    if not diagnosis.caches or _deterministic_share(diagnosis) < MIN_CACHE_SHARE:
        return None
    latest = diagnosis.caches[-1]  # the Plan caches after the last deterministic op
    return "memory" if latest.fits else "disk"


def _deterministic_share(diagnosis: Diagnosis) -> float:
    positions = {need.position for need in diagnosis.caches}
    total = sum(cost.wall_s for cost in diagnosis.costs)
    saved = sum(cost.wall_s for cost in diagnosis.costs if cost.name in positions)
    return saved / total if total > 0 else 0.0


def _consumer_levers(spec: Spec, device: Device, dims: dict[str, list[Any]], reasons: list[str]) -> None:
    fast = ["float32", *device.fast_mixed_precisions()]
    batch = spec.search.space.batch_size[0]
    xla = spec.model.jit_compile
    dims.update(precision=fast, batch_size=[batch, batch * 2], jit_compile=[xla, not xla],
                steps_per_execution=[1, STEPS_PER_CALL])
    reasons.append(f"the consumer's levers instead: precision {', '.join(fast)} (what this device runs "
                   f"fast) and batch size {batch} or {batch * 2}, which change training itself; XLA "
                   f"(jit_compile) on and off, and {STEPS_PER_CALL} steps per call "
                   "(steps_per_execution), which do not")


def _measured_gains(consumer: ConsumerMeasurement) -> list[str]:
    """The diagnosis' timing of each consumer lever alone, which orders what is measured first."""
    gains = [f"{BY_NAME[lever.dimension].words(lever.value)} x{lever.rate / consumer.rate:.2f}"
             for lever in consumer.levers]
    return [f"each alone on one batch in memory: {', '.join(gains)}"] if gains else []


def _stage(costs: Sequence[StageCost], name: str | None) -> StageCost:
    return next(cost for cost in costs if cost.name == name)


SWEEP_DIAGNOSIS_NAME = "sweep_diagnosis.json"


def resolve_space(spec: Spec, out_dir: Path, device: Device, resume: bool,
                  diagnose: bool = True) -> tuple[Spec, dict[str, Any] | None]:
    """``spec`` with its space written out, and the sweep's diagnosis document: the first phase
    of every sweep (it orders a hand-listed space's candidates, predict.py), and the source of
    an automatic space. None when ``diagnose`` is off for a hand-listed space, or measuring
    failed there (the sweep then runs without a prediction; the reason is in the logs).

    A resumed sweep reuses the document it started with (``sweep_diagnosis.json``), so it
    measures the same candidates in the same order."""
    auto = spec.search.space.auto
    if not auto and not diagnose:
        return spec, None
    stored = Path(out_dir) / SWEEP_DIAGNOSIS_NAME
    if resume and stored.is_file():
        document = json.loads(stored.read_text(encoding="utf-8"))
    else:
        document = _diagnosis_document(spec, Path(out_dir), device)
        if document is None:
            return spec, None
        stored.write_text(json.dumps(document, indent=1), encoding="utf-8")
    if "space" not in document:
        return spec, document
    space = SearchSpace(**document["space"])
    return spec.model_copy(update={"search": spec.search.model_copy(update={"space": space})}), document


def _diagnosis_document(spec: Spec, out_dir: Path, device: Device) -> dict[str, Any] | None:
    from pipetune.diagnose import DiagnosisError, diagnose  # measures in a child: only when needed
    from pipetune.diagnose.document import diagnosis_document

    try:
        diagnosis = diagnose(spec, out_dir)
    except DiagnosisError as error:
        if spec.search.space.auto:
            raise  # no space without it
        (out_dir / "logs").mkdir(exist_ok=True)
        (out_dir / "logs" / "diagnosis-failed.log").write_text(f"{error}\n", encoding="utf-8")
        return None
    document = diagnosis_document(diagnosis)
    if spec.search.space.auto:
        chosen = auto_space(spec, diagnosis, device)
        document.update(space=chosen.space.dimensions(), reasons=list(chosen.reasons),
                        consumer_bound=chosen.consumer_bound)
    return document
