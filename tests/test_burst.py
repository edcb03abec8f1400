"""burst.run_burst on a scripted clock and a scripted epoch-by-epoch dataset: exact, no TensorFlow."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipetune import stats
from pipetune.burst import BurstPlan, run_burst

MS = 1_000_000


class ScriptedClock:
    """A nanosecond clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


@dataclass(frozen=True)
class Batch:
    epoch: int
    index: int
    size: int


class ScriptedDataset:
    """``iter()`` gives one epoch of ``steps_per_epoch`` batches, as a tf.data.Dataset does.

    Creating an iterator costs ``restart_ns`` (paid at its first ``next()``); batch i of an
    epoch costs ``wait_ns(i)``; the last batch holds ``last_size`` examples.
    """

    def __init__(self, clock: ScriptedClock, steps_per_epoch: int, wait_ns=lambda i: MS,
                 restart_ns: int = 0, batch_size: int = 8, last_size: int | None = None) -> None:
        self.clock, self.steps_per_epoch, self.wait_ns = clock, steps_per_epoch, wait_ns
        self.restart_ns, self.batch_size = restart_ns, batch_size
        self.last_size = batch_size if last_size is None else last_size
        self.epochs = 0

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epochs
        self.epochs += 1
        self.clock.now += self.restart_ns
        for index in range(self.steps_per_epoch):
            self.clock.now += self.wait_ns(index)
            last = index == self.steps_per_epoch - 1
            yield Batch(epoch, index, self.last_size if last else self.batch_size)


class ScriptedConsumer:
    def __init__(self, clock: ScriptedClock, step_ns: int) -> None:
        self.clock, self.step_ns, self.consumed = clock, step_ns, []

    def __call__(self, batch: Batch) -> None:
        self.consumed.append(batch)
        self.clock.now += self.step_ns


class ScriptedCallConsumer(ScriptedConsumer):
    """steps_per_execution: takes up to ``number`` batches from the iterator in one call,
    stamping each fetch and step as the graph does, plus ``call_ns`` per call (dispatch, sync)."""

    def __init__(self, clock: ScriptedClock, step_ns: int, call_ns: int = 0) -> None:
        super().__init__(clock, step_ns)
        self.call_ns, self.calls = call_ns, []

    def __call__(self, iterator: Iterator[Batch], number: int) -> list[tuple[int, int, int]]:
        records = []
        for _ in range(number):
            asked = self.clock.now
            try:
                batch = next(iterator)
            except StopIteration:
                break
            received = self.clock.now
            super().__call__(batch)
            records.append((received - asked, self.step_ns, batch.size))
        self.clock.now += self.call_ns
        self.calls.append(len(records))
        return records


def burst(steps_per_epoch: int, *, step_ns: int = 4 * MS, wait_ns=lambda i: MS, restart_ns: int = 0,
          warmup_steps: int = 2, steps: int = 3, repeats: int = 2, fill_epoch: bool = False,
          shuffle_buffer: int = 0, whole_epoch_s: float = 3.0, last_size: int | None = None,
          batches_per_call: int = 1, call_ns: int = 0, far_behind=None):
    clock = ScriptedClock()
    dataset = ScriptedDataset(clock, steps_per_epoch, wait_ns, restart_ns, last_size=last_size)
    consumer = (ScriptedCallConsumer(clock, step_ns, call_ns) if batches_per_call > 1
                else ScriptedConsumer(clock, step_ns))
    plan = BurstPlan(warmup_steps, steps, repeats, steps_per_epoch, fill_epoch, batch_size=8,
                     shuffle_buffer=shuffle_buffer, whole_epoch_s=whole_epoch_s,
                     batches_per_call=batches_per_call)
    cpu = iter(range(10**6))  # a CPU clock that ticks one second per reading
    timing = run_burst(dataset, consumer, plan, clock=clock, examples_in=lambda b: b.size,
                       cpu_clock=lambda: float(next(cpu)), far_behind=far_behind)
    return timing, consumer, dataset


# --------------------------------------------------------------------------- start-up and fill


def test_start_up_is_the_first_batch_and_its_step():
    timing, consumer, _ = burst(100, restart_ns=7 * MS, whole_epoch_s=0.0)
    assert timing.startup_ns == 7 * MS + MS + 4 * MS  # iterator, first batch, its step (tracing)
    assert consumer.consumed[0] == Batch(0, 0, 8)
    assert timing.fill_ns is None


def test_the_fill_is_the_rest_of_the_first_epoch_without_start_up():
    # A slow start-up (50 ms for the first batch) must not land in the fill.
    timing, consumer, _ = burst(6, wait_ns=lambda i: 50 * MS if i == 0 else MS, restart_ns=3 * MS,
                                fill_epoch=True)
    assert timing.startup_ns == 3 * MS + 50 * MS + 4 * MS
    assert timing.fill_ns == 5 * (MS + 4 * MS)  # batches 1-5 of epoch 0, start-up excluded
    assert [b.index for b in consumer.consumed[:6]] == list(range(6)) and consumer.consumed[6].epoch == 1


def test_a_short_fill_epoch_is_the_warm_up_of_whole_epochs():
    """A cached variant whose fill epoch is short times whole epochs right after it: the fill
    was its first epoch, as an uncached variant's warm-up epoch is."""
    timing, consumer, dataset = burst(6, restart_ns=2 * MS, repeats=3, fill_epoch=True)
    assert timing.whole_epochs and timing.fill_ns == 5 * (MS + 4 * MS)
    assert dataset.epochs == 1 + 3
    assert [len(r.step_ns) for r in timing.repeats] == [6, 6, 6]
    assert [b.epoch for b in consumer.consumed] == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6


def test_a_long_fill_leaves_the_choice_to_the_cached_rate():
    """A fill slower than whole_epoch_s says nothing of the cached epoch's length: the warm-up
    on the cache decides (here 100 steps of 5 ms read back: whole epochs)."""
    clock = ScriptedClock()
    filling = ScriptedDataset(clock, 100, wait_ns=lambda i: 40 * MS)  # 4.4 s to fill
    cached = ScriptedDataset(clock, 100)
    epochs = iter([filling, cached, cached, cached, cached])

    class Cached:
        def __iter__(self):
            return iter(next(epochs))

    plan = BurstPlan(2, 5, 2, 100, fill_epoch=True, batch_size=8)
    timing = run_burst(Cached(), ScriptedConsumer(clock, 4 * MS), plan, clock=clock)
    assert timing.fill_ns > 3e9 and timing.whole_epochs
    assert cached.epochs == 1 + 2  # the warm-up's epoch, then 2 timed


# --------------------------------------------------------------------------- windows and epochs


def test_short_epochs_are_timed_whole_each_from_a_fresh_iterator():
    # 6 steps of 5 ms: a 30 ms epoch, well under 3 s.
    timing, consumer, dataset = burst(6, restart_ns=2 * MS, steps=3, repeats=3)
    assert timing.whole_epochs and timing.boundary_ns == 0
    assert [len(r.step_ns) for r in timing.repeats] == [6, 6, 6]
    # Epoch 0 is start-up and warm-up; then one whole epoch per repeat.
    assert dataset.epochs == 4
    for repeat in timing.repeats:
        assert repeat.wait_ns[0] == 2 * MS + MS  # the restart is inside the window
        assert repeat.wall_ns == 2 * MS + 6 * (MS + 4 * MS)


def test_a_window_that_cannot_fit_between_buffer_fill_and_drain_means_whole_epochs():
    # 20 steps per epoch, buffer of 64 = 8 batches at each end: 1 + 8 + 5 + 8 > 20.
    timing, _, _ = burst(20, steps=5, shuffle_buffer=64, whole_epoch_s=0.0)
    assert timing.whole_epochs


def test_long_epochs_are_timed_in_mid_epoch_windows_with_a_fresh_iterator_each():
    # 1000 steps of 5 ms: a 5 s epoch; buffer 32 = 4 batches to fill, 4 to drain.
    timing, consumer, dataset = burst(1000, steps=10, repeats=3, warmup_steps=2, shuffle_buffer=32)
    assert not timing.whole_epochs
    assert [len(r.step_ns) for r in timing.repeats] == [10, 10, 10]
    # Repeat 1 follows start-up (1) and warm-up (4 = the buffer fill); repeats 2 and 3 each
    # open a fresh iterator and warm up again; the boundary measurement opens one more.
    assert dataset.epochs == 4
    epochs_of = [b.epoch for b in consumer.consumed]
    assert epochs_of[5:15] == [0] * 10  # repeat 1: batches 5-14 of epoch 0
    assert consumer.consumed[15] == Batch(1, 0, 8)  # a fresh iterator, not batch 15 of epoch 0


class FarBehindAnswer:
    """A ``far_behind`` test that answers ``answer`` and keeps what it was shown."""

    def __init__(self, answer: bool) -> None:
        self.answer, self.shown = answer, []

    def __call__(self, timing) -> bool:
        self.shown.append(timing)
        return self.answer


@pytest.mark.parametrize("answer", [True, False])
@pytest.mark.parametrize("steps_per_epoch", [6, 1000])  # whole epochs; mid-epoch windows
def test_far_behind_after_the_first_repeat_ends_the_repeats(answer, steps_per_epoch):
    far_behind = FarBehindAnswer(answer)
    timing, _, dataset = burst(steps_per_epoch, steps=10, repeats=3, restart_ns=3 * MS, far_behind=far_behind)
    assert timing.whole_epochs == (steps_per_epoch == 6)
    (shown,) = far_behind.shown  # asked once, after the first repeat, with it alone
    assert shown.repeats == timing.repeats[:1] and shown.boundary_ns == 0
    assert shown.startup_ns == timing.startup_ns
    assert len(timing.repeats) == (1 if answer else 3) and timing.cut_short == answer
    assert dataset.epochs == (2 if answer else 4)  # warm-up epoch, or the boundary's, plus one each
    if not timing.whole_epochs:
        assert timing.boundary_ns == 3 * MS  # measured even when cut: the projection needs it


def test_warm_up_covers_the_shuffle_buffer_fill():
    plan = BurstPlan(2, 10, 3, 1000, False, batch_size=32, shuffle_buffer=1000)
    assert plan.buffer_steps == 32 and plan.settle_steps == 32
    assert BurstPlan(40, 10, 3, 1000, False, batch_size=32, shuffle_buffer=1000).settle_steps == 40
    assert BurstPlan(2, 10, 3, 1000, False, batch_size=32).settle_steps == 2


def test_the_boundary_is_the_drain_and_restart_beyond_steady_steps():
    # Steady step 5 ms. The last 4 batches of an epoch (the drain) cost nothing to read; a new
    # iterator costs 30 ms and its first batch (the buffer fill) 40 ms more.
    spe = 1000

    def wait(i: int) -> int:
        return 40 * MS if i == 0 else (0 if i >= spe - 4 else MS)

    timing, _, _ = burst(spe, wait_ns=wait, restart_ns=30 * MS, steps=10, repeats=2,
                         warmup_steps=0, shuffle_buffer=32)
    assert not timing.whole_epochs
    # tail: 4 drain steps of 4 ms (saving 1 ms each) after the rest of the epoch at 5 ms each;
    # head: 4 settle steps, the first with 30 + 40 ms of restart and fill.
    expected = (30 * MS + 40 * MS - MS) - 4 * MS
    assert timing.boundary_ns == expected
    trial_steady = stats.median_iqr([r.wall_ns / len(r.step_ns) for r in timing.repeats])[0]
    assert trial_steady == 5 * MS


class SlowToDeleteDataset:
    """Epochs whose iterators note which thread deletes them. Deleted off the main thread, one
    blocks until ``release`` is set, as a tf.data iterator's deletion can block for seconds."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch, self.created, self.deleted_on = steps_per_epoch, 0, []
        self.release = threading.Event()

    def __iter__(self) -> SlowToDeleteIterator:
        self.created += 1
        return SlowToDeleteIterator(self)


class SlowToDeleteIterator:
    def __init__(self, dataset: SlowToDeleteDataset) -> None:
        self.dataset, self.left = dataset, dataset.steps_per_epoch

    def __iter__(self) -> SlowToDeleteIterator:
        return self

    def __next__(self) -> Batch:
        if self.left == 0:
            raise StopIteration
        self.left -= 1
        return Batch(0, self.dataset.steps_per_epoch - self.left, 8)

    def __del__(self) -> None:
        on_main = threading.current_thread() is threading.main_thread()
        if not on_main:
            self.dataset.release.wait(10)
        self.dataset.deleted_on.append("main" if on_main else "another thread")


@pytest.mark.parametrize(("steps_per_epoch", "whole", "epochs"), [(6, True, 4), (1000, False, 5)])
def test_finished_iterators_are_deleted_off_the_bursts_path(steps_per_epoch, whole, epochs):
    clock = ScriptedClock()
    dataset = SlowToDeleteDataset(steps_per_epoch)
    plan = BurstPlan(2, 3, 3, steps_per_epoch, fill_epoch=True, batch_size=8)
    timing = run_burst(dataset, ScriptedConsumer(clock, 4 * MS), plan, clock=clock)
    assert timing.whole_epochs is whole
    # Returned while every deletion still blocks: none ran on the burst's thread.
    assert dataset.deleted_on == []
    dataset.release.set()
    deadline = time.monotonic() + 10
    while len(dataset.deleted_on) < dataset.created and time.monotonic() < deadline:
        time.sleep(0.01)
    # Whole: the fill's epoch, 3 timed ones. Mid-epoch: the fill's, 3 windows' (the first
    # after the warm-up), the boundary's next epoch.
    assert dataset.created == epochs
    assert dataset.deleted_on == ["another thread"] * dataset.created


def test_examples_and_cpu_are_counted_inside_the_windows_only():
    timing, _, _ = burst(6, steps=3, repeats=2, last_size=3)
    assert [r.examples for r in timing.repeats] == [5 * 8 + 3] * 2  # the partial last batch
    assert timing.window_cpu_s == 2.0  # one tick per window on the scripted CPU clock


def test_wait_and_step_split_is_exact_on_a_scripted_clock():
    timing, _, _ = burst(1000, steps=4, repeats=2, warmup_steps=1)
    for repeat in timing.repeats:
        assert repeat.wait_ns == (MS,) * 4 and repeat.step_ns == (4 * MS,) * 4
        assert repeat.wall_ns == sum(repeat.wait_ns) + sum(repeat.step_ns)
    assert timing.windows == tuple((r.start_ns, r.end_ns) for r in timing.repeats)


def test_a_consumer_of_several_batches_per_call_keeps_each_batchs_wait_and_step():
    """steps_per_execution: the consumer fetches in its own loop; each batch keeps the wait and
    step it stamped, and what the call took beyond them is its last step, so every repeat
    still adds up to its wall time. An epoch's end gives a shorter call."""
    timing, consumer, _ = burst(10, steps=8, repeats=2, warmup_steps=4, batches_per_call=4,
                                restart_ns=2 * MS, call_ns=3 * MS)
    assert timing.whole_epochs  # 10 steps of 5 ms: a short epoch, timed whole
    for repeat in timing.repeats:
        assert repeat.wait_ns == (2 * MS + MS,) + (MS,) * 9  # the iterator's creation: the first wait
        assert repeat.step_ns == (4 * MS, 4 * MS, 4 * MS, 7 * MS) * 2 + (4 * MS, 7 * MS)  # calls of 4, 4, 2
        assert repeat.wall_ns == 2 * MS + 10 * (MS + 4 * MS) + 3 * 3 * MS
        assert repeat.examples == 10 * 8
    assert consumer.calls[0] == 1  # start-up: the first batch alone
    assert consumer.calls[-3:] == [4, 4, 2]  # the short call tells the epoch ended


@settings(max_examples=80, deadline=None)
@given(spe=st.integers(1, 60), steps=st.integers(1, 12), repeats=st.integers(1, 3),
       warmup=st.integers(0, 5), buffer=st.sampled_from([0, 8, 32, 200]), fill=st.booleans(),
       step_ms=st.sampled_from([1, 100]), per_call=st.sampled_from([1, 3, 8]))
def test_a_window_never_crosses_an_epoch_end(spe, steps, repeats, warmup, buffer, fill, step_ms, per_call):
    """Whatever the plan, every timed window is inside one epoch, and a window that reaches an
    epoch's end is that whole epoch."""
    clock = ScriptedClock()
    dataset = ScriptedDataset(clock, spe)
    seen: list[tuple[int, Batch]] = []  # (clock before the step, batch)

    def consume(batch: Batch) -> None:
        seen.append((clock.now, batch))
        clock.now += step_ms * MS

    def consume_calls(iterator: Iterator[Batch], number: int) -> list[tuple[int, int, int]]:
        records = []
        for batch in itertools.islice(iterator, number):
            consume(batch)
            records.append((0, step_ms * MS, batch.size))
        return records

    plan = BurstPlan(warmup, steps, repeats, spe, fill, batch_size=8, shuffle_buffer=buffer,
                     batches_per_call=per_call)
    timing = run_burst(dataset, consume_calls if per_call > 1 else consume, plan, clock=clock)
    for repeat in timing.repeats:
        inside = [b for t, b in seen if repeat.start_ns <= t <= repeat.end_ns]
        assert len(inside) == len(repeat.step_ns)
        assert len({b.epoch for b in inside}) == 1, "a window straddles an epoch end"
        if inside[-1].index == spe - 1:
            assert [b.index for b in inside] == list(range(spe)), "ends an epoch but is not whole"
