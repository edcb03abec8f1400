"""One measurement: start-up, an optional cache-fill epoch, warm-up, then timed repeats.

The dataset is iterated epoch by epoch (``iter(dataset)`` per epoch, never ``repeat()``), as
Keras' ``fit`` does, so epoch ends are known exactly. Every repeat starts from a fresh
iterator. A timed window never straddles an epoch end: short epochs are timed whole (window =
one epoch); long ones in mid-epoch windows that skip the shuffle-buffer fill at an epoch's
start and its drain at the end, plus one measurement of what an epoch boundary costs.

One clock (``time.perf_counter_ns``). Per step it records when the consumer asked for a
batch, how long ``next()`` blocked (input wait) and how long the step took. It knows nothing
of ranking; the numbers go into a ``TrialResult``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipetune.results import RepeatTiming

Consumer = Callable[[Any], None]
# An epoch at most this long (at the rate measured in warm-up) is timed whole: a few seconds
# per repeat buys windows that contain every phase of an epoch (shuffle fill, drain, restart).
WHOLE_EPOCH_S = 3.0


@dataclass(frozen=True, slots=True)
class BurstPlan:
    warmup_steps: int
    steps: int
    repeats: int
    steps_per_epoch: int  # from the shard manifest: plans where windows fit
    fill_epoch: bool  # a cached variant first runs one whole epoch to fill its cache
    batch_size: int
    shuffle_buffer: int = 0
    whole_epoch_s: float = WHOLE_EPOCH_S
    # The consumer takes this many batches per call, as a tuple (steps_per_execution); fewer
    # where an epoch or a window ends.
    batches_per_call: int = 1

    @property
    def buffer_steps(self) -> int:
        """Batches it takes to fill (at an epoch's start) or drain (at its end) the shuffle buffer."""
        return math.ceil(self.shuffle_buffer / self.batch_size) if self.shuffle_buffer else 0

    @property
    def settle_steps(self) -> int:
        """Untimed steps from a fresh iterator before a window: warm-up and the buffer fill."""
        return max(self.warmup_steps, self.buffer_steps)


@dataclass(frozen=True, slots=True)
class BurstTiming:
    startup_ns: int  # the first batch and its step: pipeline start-up, model tracing
    fill_ns: int | None  # the rest of a cached variant's first epoch
    boundary_ns: int  # extra cost of an epoch end + restart; 0 when repeats are whole epochs
    whole_epochs: bool
    repeats: tuple[RepeatTiming, ...]
    windows: tuple[tuple[int, int], ...]  # (start_ns, end_ns) of each timed repeat
    window_cpu_s: float = 0.0  # process CPU seconds spent inside the timed windows
    fill_cpu_s: float | None = None  # process CPU seconds of a cached variant's fill


@dataclass
class _Stepper:
    """Runs steps against one clock; each run returns its RepeatTiming-shaped record."""

    consume: Consumer
    clock: Callable[[], int]
    count: Callable[[Any], int]
    cpu_clock: Callable[[], float]
    batches_per_call: int = 1
    window_cpu_s: float = field(default=0.0)

    def run(self, iterator: Iterator[Any], number: int | None) -> tuple[RepeatTiming | None, bool]:
        """Up to ``number`` steps (None: to the epoch's end). Returns (timing or None when no
        step ran, whether the epoch ended).

        A consumer of several batches per call gets them as a tuple: each ``next()`` is timed
        as input wait, and the call's time is the last batch's step (the others' are 0), so
        waits and steps still add up to the wall time."""
        requests, waits, steps, examples = [], [], [], 0
        while number is None or len(steps) < number:
            wanted = self.batches_per_call if number is None else min(self.batches_per_call, number - len(steps))
            batches, ended = [], False
            while len(batches) < wanted:
                requested = self.clock()
                try:
                    batches.append(next(iterator))
                except StopIteration:
                    ended = True
                    break
                received = self.clock()
                requests.append(requested)
                waits.append(received - requested)
            if batches:
                self.consume(batches[0] if self.batches_per_call == 1 else tuple(batches))
                steps += [0] * (len(batches) - 1) + [self.clock() - received]
                # after the step's timestamps: no timed span includes the counting
                examples += sum(self.count(batch) for batch in batches)
            if ended:
                return _timing(requests, waits, steps, examples), True
        return _timing(requests, waits, steps, examples), False

    def timed(self, iterator: Iterator[Any], number: int | None) -> RepeatTiming | None:
        cpu_before = self.cpu_clock()
        timing, _ = self.run(iterator, number)
        self.window_cpu_s += self.cpu_clock() - cpu_before
        return timing


def _timing(requests: list[int], waits: list[int], steps: list[int], examples: int) -> RepeatTiming | None:
    return RepeatTiming(tuple(requests), tuple(waits), tuple(steps), examples) if steps else None


def _epoch(dataset: Iterable[Any]) -> Iterator[Any]:
    """A fresh iterator over one epoch, created lazily: its creation cost lands in the first
    batch's wait, where an epoch start pays it."""
    yield from dataset


def run_burst(dataset: Iterable[Any], consume: Consumer, plan: BurstPlan,
              clock: Callable[[], int] = time.perf_counter_ns,
              examples_in: Callable[[Any], int] | None = None,
              cpu_clock: Callable[[], float] = time.process_time) -> BurstTiming:
    """Drive ``consume`` with batches of ``dataset`` (``iter(dataset)`` = one epoch) and time it.

    Start-up is the first batch and its step, counted once for every variant. A cached
    variant's fill is the rest of its first epoch (start-up excluded). ``examples_in(batch)``
    counts a batch's examples (an epoch's last batch may be partial); without it every batch
    counts ``plan.batch_size``.
    """
    count = examples_in or (lambda batch: plan.batch_size)
    stepper = _Stepper(consume, clock, count, cpu_clock, plan.batches_per_call)
    epoch = _epoch(dataset)
    start = clock()
    stepper.run(epoch, 1)
    startup_ns = clock() - start
    fill_ns = fill_cpu_s = None
    if plan.fill_epoch:
        fill_start, fill_cpu = clock(), cpu_clock()
        stepper.run(epoch, None)
        fill_ns, fill_cpu_s = clock() - fill_start, cpu_clock() - fill_cpu
        epoch = _epoch(dataset)
    settled, ended = stepper.run(epoch, plan.settle_steps)
    whole = ended or _measure_whole_epochs(plan, settled, steps_done=0 if plan.fill_epoch else 1)
    if whole:
        if not ended:
            stepper.run(epoch, None)  # the rest of this epoch, untimed: windows start at epochs
        repeats = [stepper.timed(_epoch(dataset), None) for _ in range(plan.repeats)]
        boundary_ns = 0
    else:
        repeats, epoch = _mid_epoch_windows(stepper, epoch, dataset, plan)
        boundary_ns = _boundary_ns(stepper, epoch, dataset, plan, _steady_step_ns(repeats))
    kept = tuple(r for r in repeats if r is not None)
    return BurstTiming(startup_ns, fill_ns, boundary_ns, whole, kept,
                       tuple((r.start_ns, r.end_ns) for r in kept), stepper.window_cpu_s, fill_cpu_s)


def _mid_epoch_windows(stepper: _Stepper, epoch: Iterator[Any], dataset: Iterable[Any],
                       plan: BurstPlan) -> tuple[list[RepeatTiming | None], Iterator[Any]]:
    """The first window follows the warm-up; each later one gets a fresh iterator (no state
    carried from the previous window) and its own warm-up. Returns the last iterator too."""
    repeats = [stepper.timed(epoch, plan.steps)]
    for _ in range(plan.repeats - 1):
        epoch = _epoch(dataset)
        stepper.run(epoch, plan.settle_steps)
        repeats.append(stepper.timed(epoch, plan.steps))
    return repeats, epoch


def _measure_whole_epochs(plan: BurstPlan, settled: RepeatTiming | None, steps_done: int) -> bool:
    """Whole epochs when a mid-epoch window does not fit between the buffer's fill and drain,
    or when an epoch takes at most ``whole_epoch_s`` at the rate the warm-up measured."""
    # Strictly less: a mid-epoch window never holds an epoch's last (maybe partial) batch.
    fits = steps_done + plan.settle_steps + plan.steps + plan.buffer_steps < plan.steps_per_epoch
    if not fits:
        return True
    if settled is None:
        return False
    late = settled.step_ns[len(settled.step_ns) // 2:]  # past the buffer fill: near steady
    late_waits = settled.wait_ns[len(settled.wait_ns) // 2:]
    step_s = (sum(late) + sum(late_waits)) / len(late) / 1e9
    return step_s * plan.steps_per_epoch <= plan.whole_epoch_s


def _steady_step_ns(repeats: list[RepeatTiming | None]) -> float:
    return statistics.median(r.wall_ns / len(r.step_ns) for r in repeats if r is not None)


def _boundary_ns(stepper: _Stepper, epoch: Iterator[Any], dataset: Iterable[Any], plan: BurstPlan,
                 steady_step_ns: float) -> int:
    """What an epoch boundary costs beyond steady steps, measured once: from the end of the
    last window through this epoch's end (the buffer's drain) and the next epoch's start
    (a fresh iterator, the buffer's fill) to its first steady batch."""
    start = stepper.clock()
    tail, _ = stepper.run(epoch, None)
    head, _ = stepper.run(_epoch(dataset), max(1, plan.settle_steps))
    span = stepper.clock() - start
    steps = sum(len(r.step_ns) for r in (tail, head) if r is not None)
    return round(span - steps * steady_step_ns)


def sleeping_consumer(step_time_ms: float) -> Consumer:
    """A simulated accelerator: takes a fixed time per batch and leaves the CPU free."""
    seconds = step_time_ms / 1000.0

    def consume(batch: Any) -> None:
        time.sleep(seconds)

    return consume


def discarding_consumer(batch: Any) -> None:
    """``input`` mode: the pipeline alone, as fast as it runs."""


def training_consumer(model: Any, steps_per_execution: int = 1) -> Consumer:
    """One optimiser step per batch. ``train_on_batch`` returns host values, so it is synchronous.

    With ``steps_per_execution`` > 1 it takes a tuple of batches: a full one runs as one call
    of a compiled function holding that many steps, with one host sync at its end, as
    ``model.compile(steps_per_execution=N)`` makes ``fit`` do; a shorter one (an epoch's end)
    runs step by step, so it compiles nothing new."""

    def consume(batch: Any) -> None:
        features, labels = batch
        model.train_on_batch(features, labels)

    if steps_per_execution == 1:
        return consume
    import tensorflow as tf

    # Keras' own step, compiled once (with the model's XLA setting), called N times per call.
    step = tf.function(model.train_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))

    @tf.function(reduce_retracing=True)
    def steps(batches: tuple[Any, ...]) -> Any:
        logs = None
        for batch in batches:  # a Python tuple: N calls of the one compiled step
            logs = step(batch)
        return logs

    def consume_many(batches: tuple[Any, ...]) -> None:
        if len(batches) < steps_per_execution:
            for batch in batches:
                consume(batch)
            return
        logs = steps(batches)
        for value in logs.values():  # to the host: the call has finished
            value.numpy()

    return consume_many
