"""burst.run_burst on a scripted clock and scripted batches: exact, no TensorFlow."""

from __future__ import annotations

from collections.abc import Iterator

from pipetune import stats
from pipetune.burst import BurstPlan, run_burst
# --------------------------------------------------------------------------- run_burst, no TF


class ScriptedClock:
    """A nanosecond clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def wait_of(index: int) -> int:
    """Scripted time to produce batch ``index``: distinct for every batch."""
    return 1_000_000 + 1_000 * index


def step_of(index: int) -> int:
    return 5_000_000 + 7 * index


class ScriptedBatches:
    """Endless batches 0, 1, 2, ...; producing batch i moves the clock by ``wait_of(i)``."""

    def __init__(self, clock: ScriptedClock, sizes: tuple[int, ...] = (8,)) -> None:
        self.clock, self.sizes, self.produced = clock, sizes, 0

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            index = self.produced
            self.clock.now += wait_of(index)
            self.produced += 1
            yield [index] * self.sizes[index % len(self.sizes)]


class ScriptedConsumer:
    """Records which batches it got; consuming batch i moves the clock by ``step_of(i)``."""

    def __init__(self, clock: ScriptedClock) -> None:
        self.clock, self.consumed = clock, []

    def __call__(self, batch: list[int]) -> None:
        self.consumed.append(batch[0])
        self.clock.now += step_of(batch[0])


def burst(warmup_steps: int = 3, steps: int = 4, repeats: int = 2, steps_per_epoch: int = 5,
          fill_epoch: bool = False, sizes: tuple[int, ...] = (8,), count: bool = False):
    clock = ScriptedClock()
    batches, consumer = ScriptedBatches(clock, sizes), ScriptedConsumer(clock)
    plan = BurstPlan(warmup_steps, steps, repeats, steps_per_epoch, fill_epoch, batch_size=8)
    start = clock.now
    timing = run_burst(batches, consumer, plan, clock=clock,
                       examples_in=len if count else None)
    return timing, consumer.consumed, start


def test_first_batch_latency_is_start_up_and_the_batch_is_still_consumed():
    timing, consumed, _ = burst()
    assert timing.startup_ns == wait_of(0)
    assert consumed[0] == 0
    assert timing.fill_ns is None


def test_warm_up_steps_run_on_the_same_iterator_but_are_not_timed():
    timing, consumed, _ = burst(warmup_steps=3, steps=4, repeats=2)
    assert consumed == list(range(1 + 3 + 2 * 4))  # every batch consumed once, in order
    first, second = timing.repeats
    assert first.wait_ns == tuple(wait_of(i) for i in range(4, 8))  # batches 1-3 were warm-up
    assert second.wait_ns == tuple(wait_of(i) for i in range(8, 12))


def test_no_warm_up_times_from_the_second_batch():
    timing, consumed, _ = burst(warmup_steps=0, steps=2, repeats=1)
    assert consumed == [0, 1, 2]
    assert timing.repeats[0].wait_ns == (wait_of(1), wait_of(2))


def test_fill_epoch_consumes_steps_per_epoch_batches_from_the_start():
    timing, consumed, _ = burst(warmup_steps=2, steps=3, repeats=1, steps_per_epoch=5,
                                fill_epoch=True)
    assert consumed == list(range(5 + 2 + 3))
    assert timing.fill_ns == sum(wait_of(i) + step_of(i) for i in range(5))  # start-up included
    assert timing.repeats[0].wait_ns == tuple(wait_of(i) for i in range(7, 10))


def test_fill_epoch_of_one_batch_is_the_first_batch():
    timing, consumed, _ = burst(warmup_steps=0, steps=1, repeats=1, steps_per_epoch=1,
                                fill_epoch=True)
    assert consumed == [0, 1]
    assert timing.fill_ns == wait_of(0) + step_of(0)


def test_wait_and_step_split_is_exact_on_a_scripted_clock():
    timing, _, start = burst(warmup_steps=1, steps=3, repeats=2)
    elapsed = start + sum(wait_of(i) + step_of(i) for i in range(2))  # start-up, warm-up
    for number, repeat in enumerate(timing.repeats):
        batches = range(2 + 3 * number, 2 + 3 * (number + 1))
        requests = []
        for i in batches:
            requests.append(elapsed)
            elapsed += wait_of(i) + step_of(i)
        assert repeat.request_ns == tuple(requests)
        assert repeat.wait_ns == tuple(wait_of(i) for i in batches)
        assert repeat.step_ns == tuple(step_of(i) for i in batches)
        assert repeat.end_ns == elapsed
        assert repeat.wall_ns == sum(repeat.wait_ns) + sum(repeat.step_ns)
        assert repeat.examples == 3 * 8
        wait_fraction = stats.input_wait_fraction(repeat.wait_ns, repeat.wall_ns)
        assert wait_fraction == sum(repeat.wait_ns) / repeat.wall_ns
    assert timing.windows == tuple((r.start_ns, r.end_ns) for r in timing.repeats)


def test_examples_are_counted_per_batch_when_a_counter_is_given():
    # Batches of 8, 8, 3 (an epoch of 19 examples), repeating; start-up takes the first.
    timing, _, _ = burst(warmup_steps=0, steps=3, repeats=2, sizes=(8, 8, 3), count=True)
    # Repeat 1 holds batches 1, 2, 3 (8 + 3 + 8), repeat 2 batches 4, 5, 6 (8 + 3 + 8).
    assert [r.examples for r in timing.repeats] == [19, 19]
    uncounted, _, _ = burst(warmup_steps=0, steps=3, repeats=2, sizes=(8, 8, 3))
    assert [r.examples for r in uncounted.repeats] == [24, 24]  # batch_size per step
