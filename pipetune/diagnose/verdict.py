"""From measured stage rates to a verdict: the bottleneck in plain words, and what each lever
could give (a roofline: every limit in examples/s, the lowest one wins).

Pure functions over ``Measurements``: no TensorFlow, no clock; unit-tested on synthetic numbers.
One element is one example (the stages run before batching), so every rate is examples/s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipetune.diagnose.measurements import (
    ConsumerMeasurement,
    Measurements,
    PassTiming,
    StageMeasurement,
)
from pipetune.diagnose.memory import MemoryNeed, cache_needs, shuffle_need
from pipetune.dimensions import BY_NAME
from pipetune.queue_model import delivered_share

BLOCKING_RATIO = 2.0  # wall > 2x CPU: the stage mostly waits (storage, sleep, RPC), not computes
# A stage must also wait this long per element: below it, wall minus CPU is scheduling noise
# (on a small or shared VM, descheduled time alone reaches tens of microseconds).
MIN_WAIT_S = 100e-6
NEGLIGIBLE_S = 20e-6  # per element: below this a stage's cost is measurement noise
FLOOR_S = 1e-7  # a difference of cumulative times is never taken below this
SATURATED_SPEEDUP = 1.5  # a waiting read that gains less than this from parallelism is saturated
MAX_CONCURRENCY = 256  # Little's law sizing stops being advice beyond this many threads
# Consumer-bound only when the pipeline as measured keeps the consumer waiting less than this
# share of the time, so no faster pipeline could gain more. Read from the bounded-buffer model
# predict.py ranks variants with (queue_model.py): there a pipeline 1.25x its consumer (the old fixed margin)
# still stalls it 12% of the time, and benchmark workload 1 (4,650/s against 3,200/s, 1.45x,
# called consumer-bound) ran 6% faster under a tuned pipeline than under AUTOTUNE, in three
# runs. 5% takes a pipeline about 1.75x its consumer, which also covers the ~20% between two
# diagnoses of one workload (2,217/s and 1,775/s).
MAX_CONSUMER_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class StageCost:
    """One stage alone, per element: the difference of two cumulative passes."""

    name: str
    kind: str  # read | parse | op
    wall_s: float  # at parallelism 1
    cpu_s: float  # process CPU at parallelism 1 (can exceed wall: TF's own threads)
    speedup: float  # seen at ``parallelism``, in [1, parallelism]
    parallelism: int

    @property
    def blocking(self) -> bool:
        """It waits rather than computes: more concurrency than cores can help."""
        return self.wall_s - self.cpu_s > MIN_WAIT_S and self.wall_s > BLOCKING_RATIO * self.cpu_s

    @property
    def rate_1(self) -> float:
        return 1.0 / self.wall_s

    def ceiling(self, cores: int) -> float:
        """Its rate at the parallelism measured; a compute stage gains nothing past the cores."""
        limit = self.parallelism if self.blocking else min(cores, self.parallelism)
        return self.rate_1 * min(limit, self.speedup)


@dataclass(frozen=True, slots=True)
class Bottleneck:
    kind: str  # consumer | compute | blocking_io | bandwidth
    stage: str | None  # the limiting stage; None for the consumer or all cores
    sentence: str


@dataclass(frozen=True, slots=True)
class Lever:
    """A change and the input pipeline's predicted ceiling with it (None: unknown until measured)."""

    lever: str
    stage: str | None
    ceiling: float | None
    note: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    measurements: Measurements
    costs: tuple[StageCost, ...]
    cpu_bound: float  # examples/s with every core busy on the whole pipeline's CPU work
    measured_rate: float  # the whole pipeline, the better of its sequential and parallel pass
    compute_rate: float  # the computing stages together, sharing the cores
    caches: tuple[MemoryNeed, ...]
    shuffle: MemoryNeed | None
    bottleneck: Bottleneck
    levers: tuple[Lever, ...]
    predicted_rate: float  # every lever of parallelism applied, capped by the consumer


def littles_law_concurrency(target_rate: float, latency_s: float) -> int:
    """Elements that must be in flight to sustain ``target_rate``/s when each takes ``latency_s``.

    Little's law: L = lambda * W, rounded up (a tolerance keeps 400/s * 0.02 s at exactly 8).
    """
    if target_rate <= 0 or latency_s <= 0:
        raise ValueError(f"`target_rate > 0 and latency_s > 0` must hold, but got {target_rate}, {latency_s}")
    if math.isinf(target_rate):
        raise ValueError("an infinite target rate needs infinite concurrency")
    return max(1, math.ceil(target_rate * latency_s - 1e-9))


def stage_costs(stages: Sequence[StageMeasurement]) -> tuple[StageCost, ...]:
    """Per-stage costs from cumulative passes: each pass minus the one before it."""
    costs, previous = [], None
    for stage in stages:
        seq, par = stage.sequential, stage.parallel
        before_seq = previous.sequential if previous else None
        before_par = previous.parallel if previous else None
        wall = _difference(seq.typical_wall_per_element, before_seq.typical_wall_per_element if before_seq else 0.0)
        cpu = max(0.0, seq.typical_cpu_per_element - (before_seq.typical_cpu_per_element if before_seq else 0.0))
        parallel_wall = _difference(par.typical_wall_per_element,
                                    before_par.typical_wall_per_element if before_par else 0.0)
        speedup = min(max(wall / parallel_wall, 1.0), float(par.parallelism))
        costs.append(StageCost(stage.name, stage.kind, wall, cpu, speedup, par.parallelism))
        previous = stage
    return tuple(costs)


def _difference(later: float, earlier: float) -> float:
    return max(later - earlier, FLOOR_S)


def cpu_bound(stages: Sequence[StageMeasurement], cores: int) -> float:
    """Examples/s with every core busy: the cores over the whole pipeline's CPU per element,
    the lower of its two passes. Idle runtime threads spin before they sleep, so a slow pass
    bills CPU that is not the work's (measured: 1.47 ms per element sequential, 0.83 parallel,
    ~0.45 at 38 in flight, for a pipeline that waits 4 ms per element)."""
    if not stages:
        return math.inf
    last = stages[-1]
    cpu = min(last.sequential.cpu_per_element, last.parallel.cpu_per_element)
    return cores / cpu if cpu > 0 else math.inf


def measured_rate(stages: Sequence[StageMeasurement]) -> float:
    """The whole pipeline as measured: the better of its sequential and its parallel pass."""
    return max(stages[-1].sequential.rate, stages[-1].parallel.rate) if stages else math.inf


def compute_rate(costs: Sequence[StageCost], stages: Sequence[StageMeasurement], cores: int) -> float:
    """The computing stages together: they share the cores, so their times add up, divided by
    the whole pipeline's measured parallel speed-up (at most the cores)."""
    seconds = sum(c.wall_s for c in costs if not c.blocking)
    if seconds <= 0 or not stages:
        return math.inf
    return pipeline_speedup(stages, cores) / seconds


def pipeline_speedup(stages: Sequence[StageMeasurement], cores: int) -> float:
    """The whole pipeline's parallel over sequential rate, in [1, cores]."""
    last = stages[-1]
    return min(max(last.parallel.rate / last.sequential.rate, 1.0), float(cores))


@dataclass(frozen=True, slots=True)
class Roof:
    """The numbers every lever is read against."""

    cores: int
    consumer: ConsumerMeasurement
    all_cores: float
    measured: float
    compute: float
    speedup: float  # the whole pipeline's parallel over sequential rate, in [1, cores]

    @property
    def target(self) -> float:
        return keep_up_rate(self.consumer.rate, self.compute)


def keep_up_rate(consumer_rate: float, compute_rate: float) -> float:
    """What a waiting stage is sized to keep up with (Little's law): the consumer, or the
    computing stages if they are slower. Not the all-cores CPU estimate: it is measured at low
    rates, where CPU per element is overstated (see ``cpu_bound``); the automatic space races a
    size from it as well (``autospace._blocking``)."""
    return min(consumer_rate, compute_rate)


def outruns(pipeline_rate: float, consumer_rate: float) -> bool:
    """The pipeline is fast enough that no pipeline change will pay (``MAX_CONSUMER_WAIT``)."""
    return delivered_share(pipeline_rate, consumer_rate) >= 1 - MAX_CONSUMER_WAIT


def sized_concurrency(target: float, cost: StageCost) -> int:
    if math.isinf(target):
        return MAX_CONCURRENCY
    return min(littles_law_concurrency(target, cost.wall_s), MAX_CONCURRENCY)


def find_bottleneck(costs: Sequence[StageCost], roof: Roof) -> Bottleneck:
    """Consumer-bound when the pipeline, as measured, clearly outruns the consumer (``outruns``);
    else the slowest of the waiting stages (each at the concurrency measured) and the computing
    stages together."""
    consumer, cores, measured, compute = roof.consumer, roof.cores, roof.measured, roof.compute
    if outruns(measured, consumer.rate):
        step = f"{consumer.step_s * 1000:.1f} ms per batch of {consumer.batch_size}" if consumer.step_s else ""
        return Bottleneck("consumer", None, (
            f"consumer-bound: the training step ({step}) takes {consumer.rate:.0f} examples/s, less "
            f"than the {measured:.0f}/s the input pipeline delivered; tune the model side "
            "(mixed precision, a bigger batch), not the pipeline"))
    waiting = [c for c in costs if c.blocking]
    slowest_wait = min(waiting, key=lambda c: c.ceiling(cores), default=None)
    if slowest_wait is not None and slowest_wait.ceiling(cores) <= compute:
        return _waiting_bottleneck(slowest_wait, roof)
    computing = [c for c in costs if not c.blocking]
    heaviest = max(computing, key=lambda c: c.wall_s)
    share = heaviest.wall_s / sum(c.wall_s for c in computing)
    if heaviest.kind == "read":
        return Bottleneck("bandwidth", heaviest.name, (
            f"bandwidth-bound in read: reading records takes {share:.0%} of the computing time "
            f"({heaviest.rate_1:.0f} records/s); the pipeline delivered {measured:.0f}/s against the "
            f"consumer's {consumer.rate:.0f}/s: fewer bytes per example or faster storage"))
    return Bottleneck("compute", heaviest.name, (
        f"compute-bound in `{heaviest.name}`: {heaviest.wall_s * 1000:.3f} ms per element, {share:.0%} "
        f"of the computing time; the pipeline delivered {measured:.0f}/s against the consumer's "
        f"{consumer.rate:.0f}/s (speed-up x{heaviest.speedup:.1f} seen on {cores} cores)"))


def _waiting_bottleneck(stage: StageCost, roof: Roof) -> Bottleneck:
    ceiling = stage.ceiling(roof.cores)
    if stage.kind == "read" and stage.parallelism > 1 and stage.speedup < SATURATED_SPEEDUP:
        return Bottleneck("bandwidth", stage.name, (
            f"bandwidth-bound in read: it waits {stage.wall_s * 1000:.2f} ms per record and reading "
            f"{stage.parallelism} files at once gains only x{stage.speedup:.1f}: the storage is saturated"))
    target = roof.target
    what = "storage read latency" if stage.kind == "read" else f"`{stage.name}`"
    return Bottleneck("blocking_io", stage.name, (
        f"blocking I/O in {what}: each element waits {stage.wall_s * 1000:.2f} ms but uses "
        f"{stage.cpu_s * 1000:.2f} ms of CPU, {ceiling:.0f} examples/s at {stage.parallelism} in flight "
        f"(the pipeline delivered {roof.measured:.0f}/s); {target:.0f}/s needs "
        f"{_needed_text(target, stage)} (Little's law)"))


def _needed_text(target: float, stage: StageCost) -> str:
    if math.isinf(target):
        return "unbounded concurrency"
    needed = littles_law_concurrency(target, stage.wall_s)
    capped = f", more than the {MAX_CONCURRENCY} threads worth advising" if needed > MAX_CONCURRENCY else ""
    return f"{needed} elements in flight{capped}"


def levers(costs: Sequence[StageCost], roof: Roof, caches: Sequence[MemoryNeed],
           cache_read: PassTiming | None) -> tuple[Lever, ...]:
    consumer, cores = roof.consumer, roof.cores
    rows = [Lever("the consumer (training step)", None, consumer.rate, _consumer_note(consumer)),
            Lever("the pipeline as measured", None, roof.measured,
                  "the better of the whole pipeline's sequential and parallel pass"),
            Lever(f"all {cores} cores busy", None, roof.all_cores, "the whole pipeline's CPU per example"),
            Lever(f"computing stages on {cores} cores", None, roof.compute,
                  f"their times add up; x{roof.speedup:.1f} parallel speed-up seen")]
    rows += [_parallel_lever(cost, cores, roof.target) for cost in costs if cost.wall_s > NEGLIGIBLE_S]
    rows += [_cache_lever(need, costs, roof, cache_read) for need in caches]
    rows += [Lever(f"the consumer: {BY_NAME[lever.dimension].words(lever.value)}", None, lever.rate,
                   f"{lever.step_s * 1000:.1f} ms per batch of {lever.batch_size} in memory "
                   f"(x{lever.rate / consumer.rate:.2f} the plain step)") for lever in consumer.levers]
    if consumer.mode == "train" and not any(lever.dimension == "precision" for lever in consumer.levers):
        rows.append(Lever("mixed precision for the model", None, None,
                          "not measured: needs a GPU >= 7.0 (float16) or bf16 support"))
    return tuple(rows)


def _parallel_lever(cost: StageCost, cores: int, target: float) -> Lever:
    if cost.blocking:
        needed = sized_concurrency(target, cost)
        how = (f"interleave cycle {needed} over >= {needed} shards" if cost.kind == "read"
               else f"num_parallel_calls={needed}, private_threadpool_size >= {needed}")
        return Lever(f"{needed} in flight, beyond the cores", cost.name, needed / cost.wall_s,
                     f"waits {cost.wall_s * 1000:.2f} ms/element; {target:.0f}/s needs "
                     f"{_needed_text(target, cost)}; {how}")
    calls = min(cores, cost.parallelism)
    verb = "interleave" if cost.kind == "read" else "map"
    return Lever(f"parallel {verb}, {calls} calls", cost.name, cost.ceiling(cores),
                 f"{cost.rate_1:.0f}/s at 1, speed-up x{cost.speedup:.1f} seen")


def _cache_lever(need: MemoryNeed, costs: Sequence[StageCost], roof: Roof,
                 cache_read: PassTiming | None) -> Lever:
    """From the second epoch on, only the stages after the cache run, fed by one iterator
    reading the cache back (as measured, where it was)."""
    names = [c.name for c in costs]
    after = costs[names.index(need.position) + 1:]
    computing = sum(c.wall_s for c in after if not c.blocking)
    limits = [sized_concurrency(roof.target, c) / c.wall_s for c in after if c.blocking]
    if computing > 0:
        limits.append(roof.speedup / computing)
    read_back = ""
    if cache_read is not None:
        limits.append(1 / max(cache_read.typical_wall_per_element, FLOOR_S))
        read_back = f"; read back from memory at {limits[-1]:,.0f}/s"
    size = f"{need.total_bytes / 2**30:.2f} GiB"
    fits = "fits the RAM budget" if need.fits else "over the RAM budget: disk cache only"
    return Lever(f"cache after {need.position}", need.position, min(limits, default=math.inf),
                 f"{size}, {fits}; from the second epoch on{read_back}")


def _consumer_note(consumer: ConsumerMeasurement) -> str:
    if consumer.mode == "input":
        return "input mode: no consumer"
    if consumer.mode == "simulate":
        return f"simulated step {consumer.step_s * 1000:g} ms per batch of {consumer.batch_size}"
    busy = f", {consumer.cpu_s / consumer.step_s:.1f} cores busy" if consumer.cpu_s and consumer.step_s else ""
    return f"train_on_batch {consumer.step_s * 1000:.1f} ms per batch of {consumer.batch_size} in memory{busy}"


def predicted_rate(costs: Sequence[StageCost], roof: Roof) -> float:
    """Computing stages sharing the cores, waiting stages sized by Little's law, the consumer."""
    waiting = [sized_concurrency(roof.target, c) / c.wall_s for c in costs if c.blocking]
    return min([roof.target, roof.all_cores, *waiting])


def analyse(measurements: Measurements) -> Diagnosis:
    """The diagnosis of measured numbers: costs, memory, the bottleneck, the levers."""
    stages, cores = measurements.stages, measurements.cores
    costs = stage_costs(stages)
    roof = Roof(cores, measurements.consumer, cpu_bound(stages, cores), measured_rate(stages),
                 compute_rate(costs, stages, cores), pipeline_speedup(stages, cores))
    caches = cache_needs(measurements)
    return Diagnosis(
        measurements=measurements, costs=costs, cpu_bound=roof.all_cores, measured_rate=roof.measured,
        compute_rate=roof.compute, caches=caches, shuffle=shuffle_need(measurements),
        bottleneck=find_bottleneck(costs, roof),
        levers=levers(costs, roof, caches, measurements.cache_read),
        predicted_rate=predicted_rate(costs, roof))
