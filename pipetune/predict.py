"""Each variant's rate predicted from the diagnosis: the order candidates are measured in.

A prior, never a verdict: a budget that cannot measure every variant measures the ones
predicted best first, and says what it left with its predicted gain; every number a user
reads as a result is measured. Pure: the diagnosis document (``diagnose/document.py``, as
stored with the sweep) and a variant's parameters in, examples/s out.

The model (per example; the diagnosis measured each stage alone at parallelism 1):
  * the read side runs as many files at once as the interleave cycle (or the parallel reads)
    and the shards allow; ``autotune`` means one per core, tf.data's default cycle;
  * the map side (parse and the ops) runs ``num_parallel_calls`` calls on tf.data's pool, the
    cores, or the private pool when one is set, which is what lets waiting calls go past the
    cores;
  * a side's waiting time is divided by its concurrency, its computing time by at most the
    cores; the two sides overlap (they run on different threads) unless both are sequential,
    when one thread reads and maps; all stages' CPU together never goes past the cores, at
    the CPU per element the verdict's ``cpu_bound`` takes (a slow pass overbills);
  * a cache removes every stage up to the first random op from the second epoch on (the
    Plan caches there), leaving the cost of taking an element out of it, one at a time,
    which the diagnosis measures on a memory cache; the first epoch fills it. Reading a disk
    cache back costs time the diagnosis did not measure: predicted at a fixed share of a
    memory cache's rate;
  * with no prefetch and nothing running ahead (sequential read and map) the consumer waits
    for each batch: the two times add up; otherwise a bounded buffer joins them, and the
    rate is below the slower of the two, the more so the closer they are (a finite-buffer
    tandem queue, ``queue_model.py``; a variant that leaves the pipeline more headroom is
    predicted faster);
  * the consumer: a simulated step costs the same per batch, so its rate grows with the
    batch; a real model's rate per example is taken as measured, with each consumer lever
    the diagnosis timed alone (precision, XLA, steps per call, twice the batch) as measured;
  * a real model computes on the same cores as the pipeline: the pipeline's CPU per example
    and the training step's (as the diagnosis measured it alone) together never go past the
    cores. Without it, uncached parallel variants in train mode on 2 cores ran at 0.46-0.52
    of their prediction (benchmark workloads 9 and 10; with it 0.57-0.68);
  * not modelled: what an epoch's start costs (a new iterator, its shuffle buffer filled
    before the first batch). On epochs of a few batches it is why cached train-mode picks run
    at 0.47-0.68 of their prediction (workloads 9 and 10: 6 batches an epoch).
Vectorised maps, determinism and fusion are taken as neutral: the diagnosis does not measure
them, so they are ordered by the rest and measured like everything else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipetune.queue_model import tandem
from pipetune.space import Variant
from pipetune.spec import PipelineParams

# Unmeasured by the diagnosis, so priors: a disk cache's steady rate against a memory cache's,
# and the fill epoch's rate against no cache at all (it copies or writes every element).
DISK_CACHE_SHARE = 0.8
FILL_SHARE = {"memory": 0.95, "disk": 0.9, "snapshot": 0.9}
# Predicted gains closer than this are one prediction: each sweep predicts from its own
# diagnosis, whose stage rates move by tens of percent between runs, so smaller differences
# order by noise. Ordered to the 6th digit, one candidate of benchmark workload 6 (consumer-
# bound: every gain ~1) came first in one sweep (0.9999995) and among the last in the next;
# the two sweeps screened different variants and named different winners of a tie.
RESOLUTION = 0.05


@dataclass(frozen=True, slots=True)
class Prediction:
    first_epoch_rate: float  # examples/s
    steady_rate: float  # examples/s from the second epoch on
    time_s: float  # projected time to train the planned epochs

    def value(self, objective: str) -> float:
        """The objective as the sweep stores it: examples/s, or seconds."""
        return self.steady_rate if objective == "throughput" else self.time_s


def predict(params: PipelineParams, diagnosis: Mapping[str, Any], epochs: int) -> Prediction:
    """``params``' predicted rates from the diagnosis document, and its time for ``epochs``."""
    stages = diagnosis["stages"]
    cores = int(diagnosis["cores"])
    scale = _cpu_scale(diagnosis)
    consumer = (_consumer_rate(params, diagnosis["consumer"]), _consumer_cpu(params, diagnosis["consumer"]))
    uncached = _delivered_rate(params, stages, cores, scale, consumer)
    if params.cache == "none":
        first = steady = uncached
    else:
        after_cache = stages[_first_random(stages):]
        steady = _delivered_rate(params, after_cache, cores, scale, consumer, _cache_read(diagnosis))
        first = uncached * FILL_SHARE[params.cache]
        if params.cache != "memory":
            steady *= DISK_CACHE_SHARE
    examples = int(diagnosis["num_examples"])
    time_s = examples / first + max(0, epochs - 1) * examples / steady
    return Prediction(first, steady, time_s)


def best_first(candidates: Sequence[Variant], diagnosis: Mapping[str, Any], objective: str,
               epochs: int, reference: PipelineParams) -> list[Variant]:
    """The candidates, the best predicted first (``by_gain`` of their ``speedups``)."""
    return by_gain(candidates, speedups(candidates, diagnosis, objective, epochs, reference), reference)


def speedups(candidates: Sequence[Variant], diagnosis: Mapping[str, Any], objective: str,
             epochs: int, reference: PipelineParams) -> dict[str, float]:
    """Each candidate's predicted speed-up over ``reference`` (> 1: faster), by key."""
    theirs = predict(reference, diagnosis, epochs).value(objective)
    return {v.key: _ratio(predict(v.params, diagnosis, epochs).value(objective), theirs, objective)
            for v in candidates}


def by_gain(candidates: Sequence[Variant], gains: Mapping[str, float],
            reference: PipelineParams) -> list[Variant]:
    """The candidates, the highest predicted gain first.

    Gains within ``RESOLUTION`` of each other are equal (see there). Among equal predictions
    the order spreads out: next comes the variant that differs most from ``reference``
    (tf.data's AUTOTUNE pipeline, measured anyway) and from those already ordered, so a budget
    that screens only the first few learns what the prediction cannot tell apart, rather than
    measuring near-copies of the reference. Key order breaks the rest: two sweeps of one spec
    measure the same variants first, whatever their seeds."""
    def gain(variant: Variant) -> float:
        return -_gain_class(gains[variant.key])

    order: list[Variant] = []
    for _, group in itertools.groupby(sorted(candidates, key=lambda v: (gain(v), v.key)), key=gain):
        order += _spread(list(group), reference)
    return order


def _gain_class(gain: float) -> float:
    """Which step of ``RESOLUTION`` a gain falls in, counted from 1 (the reference's own gain
    sits mid-step, so a variant predicted to tie it stays with it)."""
    if not gain > 0:  # zero or NaN: nothing to order by, last (log 0 would join the reference)
        return -math.inf
    if math.isinf(gain):
        return gain
    return round(math.log(gain) / math.log(1 + RESOLUTION))


def _spread(group: list[Variant], reference: PipelineParams) -> list[Variant]:
    """``group`` greedily by the most dimensions differing from everything placed before."""
    values = [v.params.model_dump() for v in group]
    shown = reference.model_dump()
    nearest = [_differences(v, shown) for v in values]  # to the closest placed variant
    order, left = [], list(range(len(group)))
    while left:
        pick = max(left, key=lambda i: nearest[i])  # the first in key order among equals
        left.remove(pick)
        order.append(group[pick])
        for i in left:
            nearest[i] = min(nearest[i], _differences(values[i], values[pick]))
    return order


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    return sum(value != b[name] for name, value in a.items())


def _ratio(mine: float, theirs: float, objective: str) -> float:
    """A speed-up from two objective values: rates divide one way, times the other."""
    return mine / theirs if objective == "throughput" else theirs / mine


def _cpu_scale(diagnosis: Mapping[str, Any]) -> float:
    """The whole pipeline's CPU per element as the verdict takes it (``cpu_bound``: the lower
    of its two passes) over the stages' CPU alone at parallelism 1, summed. A slow pass bills
    idle threads' spinning: unscaled, a pipeline that waits was predicted at half the rate it
    then ran (benchmark workload 4: 1,460/s predicted, ~2,900/s measured)."""
    alone = sum(stage["alone"]["cpu_s"] for stage in diagnosis["stages"])
    bound = float(diagnosis["cpu_bound_rate"])
    if alone <= 0 or bound <= 0:
        return 1.0
    return int(diagnosis["cores"]) / bound / alone  # 0 when nothing was billed: no CPU limit


def _delivered_rate(params: PipelineParams, stages: Sequence[Mapping[str, Any]], cores: int,
                    cpu_scale: float, consumer: tuple[float, float],
                    source: Mapping[str, Any] | None = None) -> float:
    """Examples/s the consumer (its rate, its CPU per example) takes from ``stages``: the
    pipeline within the cores (each stage's CPU times ``cpu_scale``), joined to the consumer
    through the buffer, and the two together within the cores. ``source``: the cost of taking
    an element out of a cache, which then replaces the read side."""
    consumer_rate, consumer_cpu = consumer
    pipeline_cpu = _pipeline_cpu(stages, cpu_scale, source)
    pipeline = _within_cores(_pipeline_rate(params, stages, cores, source), pipeline_cpu, cores)
    return _within_cores(_delivered(params, pipeline, consumer_rate), pipeline_cpu + consumer_cpu, cores)


def _pipeline_rate(params: PipelineParams, stages: Sequence[Mapping[str, Any]], cores: int,
                   source: Mapping[str, Any] | None = None) -> float:
    """What the stages deliver, CPU aside: the slower of the read and map sides. ``source``:
    the cost of taking an element out of a cache, which then replaces the read side: one
    iterator reads it back."""
    if not stages and source is None:
        return math.inf
    mapped = [s["alone"] for s in stages if s["kind"] != "read"]
    if source is None:
        read = [s["alone"] for s in stages if s["kind"] == "read"]
        reads = _read_concurrency(params, cores)
    else:
        read, reads = [source], 1
    calls = _map_concurrency(params, params.private_threadpool_size or cores)
    if reads == calls == 1:  # a sequential map reads in its own thread: one chain
        return _side_rate([*read, *mapped], 1, cores)
    return min(_side_rate(read, reads, cores), _side_rate(mapped, calls, cores))


def _pipeline_cpu(stages: Sequence[Mapping[str, Any]], cpu_scale: float,
                  source: Mapping[str, Any] | None = None) -> float:
    """CPU seconds per element of the stages (times ``cpu_scale``), or of reading them back
    from a cache (``source``, at its own CPU) and the stages after it."""
    if source is None:
        return cpu_scale * sum(s["alone"]["cpu_s"] for s in stages)
    return source["cpu_s"] + cpu_scale * sum(s["alone"]["cpu_s"] for s in stages if s["kind"] != "read")


def _within_cores(rate: float, cpu_s: float, cores: int) -> float:
    """``rate`` examples/s, at most what ``cores`` pay for at ``cpu_s`` CPU seconds each."""
    return min(rate, cores / cpu_s) if cpu_s > 0 else rate


def _side_rate(costs: Sequence[Mapping[str, Any]], concurrency: int, cores: int) -> float:
    """One side, ``concurrency`` elements in flight: waits overlap fully, computing up to the cores."""
    wall = sum(cost["wall_s"] for cost in costs)
    computing = sum(cost["wall_s"] for cost in costs if not cost["blocking"])
    limits = [concurrency / wall] if wall > 0 else []
    if computing > 0:
        limits.append(min(concurrency, cores) / computing)
    return min(limits, default=math.inf)


def _read_concurrency(params: PipelineParams, cores: int) -> int:
    if params.interleave_cycle == 1:
        files = cores if params.parallel_reads == "autotune" else params.parallel_reads
    elif not params.interleave_parallel:
        files = 1
    else:
        files = cores if params.interleave_cycle == "autotune" else params.interleave_cycle
    return max(1, min(files, params.shards))


def _map_concurrency(params: PipelineParams, pool: int) -> int:
    """Calls in flight: tf.data runs them on its pool, so never more than the pool's threads."""
    calls = pool if params.map_parallel == "autotune" else params.map_parallel
    return max(1, min(calls, pool))


def _delivered(params: PipelineParams, pipeline: float, consumer: float) -> float:
    """Examples/s the consumer takes: overlapped unless nothing runs ahead of it."""
    runs_ahead = (params.prefetch != 0 or params.map_parallel != 1
                  or params.interleave_cycle != 1 or params.parallel_reads != 1)
    if math.isinf(pipeline) or math.isinf(consumer):
        return min(pipeline, consumer)
    if runs_ahead:
        return tandem(pipeline, consumer)
    return 1.0 / (1.0 / pipeline + 1.0 / consumer)


def _consumer_rate(params: PipelineParams, consumer: Mapping[str, Any]) -> float:
    """A simulated step costs the same per batch. A trained one runs at its measured rate,
    times the measured gain of each consumer lever the variant sets as the diagnosis tried it
    (taken as independent); a value the diagnosis did not try counts as neutral."""
    step_s = consumer.get("step_s")
    if not step_s:
        return math.inf  # input mode: nothing consumes
    if consumer["mode"] == "simulate":
        return params.batch_size / step_s
    rate = float(consumer["rate"])
    for lever in _levers_set(params, consumer):
        rate *= lever["rate"] / consumer["rate"]
    return rate


def _consumer_cpu(params: PipelineParams, consumer: Mapping[str, Any]) -> float:
    """CPU seconds per example of a trained step, with each lever the variant sets as measured
    (like ``_consumer_rate``); 0 for a simulated step (it sleeps) or one stored without it."""
    if consumer["mode"] != "train" or not consumer.get("cpu_s"):
        return 0.0
    plain = consumer["cpu_s"] / consumer["batch_size"]
    cpu = plain
    for lever in _levers_set(params, consumer):
        if lever.get("cpu_s"):
            cpu *= lever["cpu_s"] / lever["batch_size"] / plain
    return cpu


def _levers_set(params: PipelineParams, consumer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The consumer levers the diagnosis timed whose value ``params`` sets."""
    return [lever for lever in consumer.get("levers", ())
            if getattr(params, lever["dimension"]) == lever["value"]]


def _cache_read(diagnosis: Mapping[str, Any]) -> Mapping[str, Any]:
    """Taking an element out of a memory cache, as the diagnosis measured it (read back one at a
    time). A diagnosis stored by an older version did not measure it: taken as free."""
    measured = diagnosis.get("cache_read") or {"wall_s": 0.0, "cpu_s": 0.0}
    return {"wall_s": measured["wall_s"], "cpu_s": measured["cpu_s"], "blocking": False}


def _first_random(stages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the first random stage (the Plan's cache sits just before it); all if none."""
    return next((i for i, stage in enumerate(stages) if stage["random"]), len(stages))
