"""One measurement: start-up, an optional cache-fill epoch, warm-up, then timed repeats.

The dataset is iterated epoch by epoch (``iter(dataset)`` per epoch, never ``repeat()``), as
Keras' ``fit`` does, so epoch ends are known exactly. Every repeat starts from a fresh
iterator. A timed window never straddles an epoch end: short epochs are timed whole (window =
one epoch); long ones in mid-epoch windows that skip the shuffle-buffer fill at an epoch's
start and its drain at the end, plus one measurement of what an epoch boundary costs.

A finished epoch's iterator is deleted on a thread of its own (``Epoch.retire``), off the
burst's path: with tf.data's AUTOTUNE on, deleting one can block for seconds.

One clock (``time.perf_counter_ns``). Per step it records when the consumer asked for a
batch, how long ``next()`` blocked (input wait) and how long the step took. It knows nothing
of ranking; the numbers go into a ``TrialResult``.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipetune.results import RepeatTiming

Consumer = Callable[[Any], None]
# (wait ns, step ns, examples) of each batch a call took, in order; fewer than asked: the epoch ended.
CallRecords = list[tuple[int, int, int]]
# Takes up to N batches from an epoch's iterator in one call (steps_per_execution).
CallConsumer = Callable[[Iterator[Any], int], CallRecords]
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
    # >1: the consumer is a CallConsumer taking up to this many batches per call
    # (steps_per_execution); fewer where an epoch or a window ends.
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
    cut_short: bool = False  # ``far_behind`` said so after the first repeat: the rest not run


# Asked after the first timed repeat, with the timing so far (boundary 0: not measured yet):
# True ends the burst's repeats there.
FarBehind = Callable[[BurstTiming], bool]


@dataclass
class _Stepper:
    """Runs steps against one clock; each run returns its RepeatTiming-shaped record."""

    consume: Consumer | CallConsumer
    clock: Callable[[], int]
    count: Callable[[Any], int]
    cpu_clock: Callable[[], float]
    batches_per_call: int = 1
    window_cpu_s: float = field(default=0.0)

    def run(self, epoch: Epoch, number: int | None) -> tuple[RepeatTiming | None, bool]:
        """Up to ``number`` steps (None: to the epoch's end). Returns (timing or None when no
        step ran, whether the epoch ended)."""
        if self.batches_per_call > 1:
            return self._run_calls(epoch, number)
        requests, waits, steps, examples = [], [], [], 0
        while number is None or len(steps) < number:
            requested = self.clock()
            try:
                batch = next(epoch)
            except StopIteration:
                return _timing(requests, waits, steps, examples), True
            received = self.clock()
            self.consume(batch)
            done = self.clock()
            requests.append(requested)
            waits.append(received - requested)
            steps.append(done - received)
            examples += self.count(batch)  # after the step's timestamps: no timed span includes it
        return _timing(requests, waits, steps, examples), False

    def _run_calls(self, epoch: Epoch, number: int | None) -> tuple[RepeatTiming | None, bool]:
        """The same for a consumer that takes up to ``batches_per_call`` batches from the
        iterator in one call and says, per batch, how long it waited and stepped. What the
        call took beyond those (dispatch, the host sync) is its last step's; creating the
        epoch's iterator is its first wait."""
        requests, waits, steps, examples = [], [], [], 0
        while number is None or len(steps) < number:
            wanted = self.batches_per_call if number is None else min(self.batches_per_call, number - len(steps))
            before = self.clock()
            opening = not epoch.opened
            iterator = epoch.iterator()
            opened_ns = self.clock() - before if opening else 0
            records = self.consume(iterator, wanted)
            call_ns = self.clock() - before
            at = before
            for i, (wait_ns, step_ns, count) in enumerate(records):
                wait_ns += opened_ns if i == 0 else 0
                if i == len(records) - 1:
                    step_ns = max(0, call_ns - (at - before) - wait_ns)
                requests.append(at)
                waits.append(wait_ns)
                steps.append(step_ns)
                at += wait_ns + step_ns
                examples += count
            if len(records) < wanted:
                return _timing(requests, waits, steps, examples), True
        return _timing(requests, waits, steps, examples), False

    def timed(self, epoch: Epoch, number: int | None) -> RepeatTiming | None:
        cpu_before = self.cpu_clock()
        timing, _ = self.run(epoch, number)
        self.window_cpu_s += self.cpu_clock() - cpu_before
        return timing


def _timing(requests: list[int], waits: list[int], steps: list[int], examples: int) -> RepeatTiming | None:
    return RepeatTiming(tuple(requests), tuple(waits), tuple(steps), examples) if steps else None


class Epoch:
    """A fresh iterator over one epoch (or over a repeated dataset, in the diagnosis), created
    at its first use: its creation cost lands in the first batch's wait, where an epoch start
    pays it. ``retire()`` when done with it."""

    def __init__(self, dataset: Iterable[Any]) -> None:
        self._dataset, self._iterator = dataset, None

    @property
    def opened(self) -> bool:
        return self._iterator is not None

    def iterator(self) -> Iterator[Any]:
        if self._iterator is None:
            self._iterator = iter(self._dataset)
        return self._iterator

    def __next__(self) -> Any:
        return next(self.iterator())

    def retire(self) -> None:
        """Delete the iterator on a daemon thread of its own, which drops the only reference.

        Measured here (TF 2.21, 2 cores): deleting a tf.data iterator with AUTOTUNE on blocks
        the deleting thread until the autotune model's next wake-up, whose period doubles with
        the iterator's age (4.2 s for a 6 s-old one, 16 s for a 25 s-old one), intermittently.
        Meanwhile no CPU is used and the pipeline's buffers are already freed, so the wait
        overlaps the next window harmlessly instead of adding 0-2 s of dead time to a trial.
        """
        if self._iterator is None:
            return
        holder = [self._iterator]
        self._iterator = None
        threading.Thread(target=holder.clear, name="pipetune-retire-iterator", daemon=True).start()


def run_burst(dataset: Iterable[Any], consume: Consumer | CallConsumer, plan: BurstPlan,
              clock: Callable[[], int] = time.perf_counter_ns,
              examples_in: Callable[[Any], int] | None = None,
              cpu_clock: Callable[[], float] = time.process_time,
              far_behind: FarBehind | None = None) -> BurstTiming:
    """Drive ``consume`` with batches of ``dataset`` (``iter(dataset)`` = one epoch) and time it.

    Start-up is the first batch and its step, counted once for every variant. A cached
    variant's fill is the rest of its first epoch (start-up excluded). ``examples_in(batch)``
    counts a batch's examples (an epoch's last batch may be partial); without it every batch
    counts ``plan.batch_size``. ``far_behind`` may end the repeats after the first.
    """
    count = examples_in or (lambda batch: plan.batch_size)
    stepper = _Stepper(consume, clock, count, cpu_clock, plan.batches_per_call)
    epoch = Epoch(dataset)
    start = clock()
    stepper.run(epoch, 1)
    startup_ns = clock() - start
    fill_ns = fill_cpu_s = None
    whole = False
    if plan.fill_epoch:
        fill_start, fill_cpu = clock(), cpu_clock()
        stepper.run(epoch, None)
        fill_ns, fill_cpu_s = clock() - fill_start, cpu_clock() - fill_cpu
        epoch.retire()
        # The fill was a whole first epoch, as an uncached variant's warm-up epoch is, and
        # every whole-epoch repeat opens a fresh iterator: when epochs are to be timed whole,
        # a second untimed epoch would add nothing but cost. An epoch that took at most
        # whole_epoch_s filling the cache is short enough read back from it.
        whole = not _window_fits(plan, steps_done=0) or fill_ns <= plan.whole_epoch_s * 1e9
        epoch = Epoch(dataset)
    if not whole:
        settled, ended = stepper.run(epoch, plan.settle_steps)
        whole = ended or _measure_whole_epochs(plan, settled, steps_done=0 if plan.fill_epoch else 1)
        if whole and not ended:
            stepper.run(epoch, None)  # the rest of this epoch, untimed: windows start at epochs

    def timing(repeats: list[RepeatTiming | None], boundary_ns: int, cut_short: bool = False) -> BurstTiming:
        kept = tuple(r for r in repeats if r is not None)
        return BurstTiming(startup_ns, fill_ns, boundary_ns, whole, kept, tuple((r.start_ns, r.end_ns) for r in kept),
                           stepper.window_cpu_s, fill_cpu_s, cut_short)

    def stop_after(first: RepeatTiming | None) -> bool:
        return far_behind is not None and first is not None and far_behind(timing([first], 0))

    if whole:
        epoch.retire()
        repeats = [_timed_whole_epoch(stepper, dataset)]
        cut_short = stop_after(repeats[0])
        repeats += [_timed_whole_epoch(stepper, dataset) for _ in range(0 if cut_short else plan.repeats - 1)]
        boundary_ns = 0
    else:
        repeats, epoch, cut_short = _mid_epoch_windows(stepper, epoch, dataset, plan, stop_after)
        boundary_ns = _boundary_ns(stepper, epoch, dataset, plan, _steady_step_ns(repeats))
    return timing(repeats, boundary_ns, cut_short)


def _mid_epoch_windows(stepper: _Stepper, epoch: Epoch, dataset: Iterable[Any], plan: BurstPlan,
                       stop_after: Callable[[RepeatTiming | None], bool],
                       ) -> tuple[list[RepeatTiming | None], Epoch, bool]:
    """The first window follows the warm-up; each later one gets a fresh iterator (no state
    carried from the previous window) and its own warm-up; none when ``stop_after`` the first.
    Returns the last iterator too, and whether the windows were cut short."""
    repeats = [stepper.timed(epoch, plan.steps)]
    cut_short = stop_after(repeats[0])
    for _ in range(0 if cut_short else plan.repeats - 1):
        epoch.retire()
        epoch = Epoch(dataset)
        stepper.run(epoch, plan.settle_steps)
        repeats.append(stepper.timed(epoch, plan.steps))
    return repeats, epoch, cut_short


def _timed_whole_epoch(stepper: _Stepper, dataset: Iterable[Any]) -> RepeatTiming | None:
    epoch = Epoch(dataset)
    timing = stepper.timed(epoch, None)
    epoch.retire()
    return timing


def _measure_whole_epochs(plan: BurstPlan, settled: RepeatTiming | None, steps_done: int) -> bool:
    """Whole epochs when a mid-epoch window does not fit between the buffer's fill and drain,
    or when an epoch takes at most ``whole_epoch_s`` at the rate the warm-up measured."""
    if not _window_fits(plan, steps_done):
        return True
    if settled is None:
        return False
    late = settled.step_ns[len(settled.step_ns) // 2:]  # past the buffer fill: near steady
    late_waits = settled.wait_ns[len(settled.wait_ns) // 2:]
    step_s = (sum(late) + sum(late_waits)) / len(late) / 1e9
    return step_s * plan.steps_per_epoch <= plan.whole_epoch_s


def _window_fits(plan: BurstPlan, steps_done: int) -> bool:
    """A mid-epoch window fits between the shuffle buffer's fill and drain, after
    ``steps_done`` steps of the epoch. Strictly less: a mid-epoch window never holds an
    epoch's last (maybe partial) batch."""
    return steps_done + plan.settle_steps + plan.steps + plan.buffer_steps < plan.steps_per_epoch


def _steady_step_ns(repeats: list[RepeatTiming | None]) -> float:
    return statistics.median(r.wall_ns / len(r.step_ns) for r in repeats if r is not None)


def _boundary_ns(stepper: _Stepper, epoch: Epoch, dataset: Iterable[Any], plan: BurstPlan,
                 steady_step_ns: float) -> int:
    """What an epoch boundary costs beyond steady steps, measured once: from the end of the
    last window through this epoch's end (the buffer's drain) and the next epoch's start
    (a fresh iterator, the buffer's fill) to its first steady batch."""
    start = stepper.clock()
    tail, _ = stepper.run(epoch, None)
    epoch.retire()
    next_epoch = Epoch(dataset)
    head, _ = stepper.run(next_epoch, max(1, plan.settle_steps))
    span = stepper.clock() - start
    next_epoch.retire()
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


def training_consumer(model: Any) -> Consumer:
    """One optimiser step per batch. ``train_on_batch`` returns host values, so it is synchronous."""

    def consume(batch: Any) -> None:
        features, labels = batch
        model.train_on_batch(features, labels)

    return consume


def multi_step_consumer(model: Any) -> CallConsumer:
    """Up to N training steps per call, as ``model.compile(steps_per_execution=N)`` makes
    ``fit`` run them: one ``tf.function`` loops over the iterator in the graph (Keras' own
    ``train_step``, compiled with the model's XLA setting), so each batch is fetched between
    steps and the pipeline keeps producing while the model trains; one host sync per call. The
    graph stamps each fetch and step (``tf.timestamp``, kept in order by control
    dependencies), so input wait is still measured per batch.

    A built model's optimiser is built up front, as ``fit`` does (its slots cannot be created
    in the graph loop), so the first batch is traced once, in the loop: running it through
    ``train_on_batch`` instead traced a second graph, 2.1 s more on resnet_small's first
    calls under mixed_bfloat16 and 2.8 s with XLA (2 cores). A model not yet built (a
    subclassed one) still takes that way: its first batch through ``train_on_batch`` creates
    its variables."""
    import tensorflow as tf

    step = tf.function(model.train_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))

    @tf.function
    def steps(iterator: Any, number: Any) -> Any:
        stamps = tf.TensorArray(tf.float64, size=0, dynamic_size=True, element_shape=(4,))
        for i in tf.range(number):
            asked = tf.timestamp()
            with tf.control_dependencies([asked]):
                optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            batch = optional.get_value()
            with tf.control_dependencies(tf.nest.flatten(batch)):
                received = tf.timestamp()
            with tf.control_dependencies([received]):
                logs = step(batch)
            with tf.control_dependencies(tf.nest.flatten(logs)):
                done = tf.timestamp()
            examples = tf.cast(tf.shape(batch[1])[0], tf.float64)
            stamps = stamps.write(i, tf.stack([asked, received, done, examples]))
        return stamps.stack()

    def consume(iterator: Iterator[Any], number: int) -> CallRecords:
        records: CallRecords = []
        if model.built and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if not model.optimizer.built:
            asked = time.perf_counter_ns()
            try:
                features, labels = next(iterator)
            except StopIteration:
                return records
            received = time.perf_counter_ns()
            model.train_on_batch(features, labels)
            records.append((received - asked, time.perf_counter_ns() - received, int(labels.shape[0])))
            number -= 1
        if number > 0:
            stamps = steps(iterator, tf.constant(number)).numpy()
            records += [(round((received - asked) * 1e9), round((done - received) * 1e9), int(examples))
                        for asked, received, done, examples in stamps]
        return records

    return consume
