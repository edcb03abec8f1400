"""One measurement: start-up, an optional cache-fill epoch, warm-up, then timed repeats.

All on one iterator and one clock (``time.perf_counter_ns``). Per step it records when the
consumer asked for a batch, how long ``next()`` blocked (input wait) and how long the step
took. It knows nothing of ranking; the numbers go into a ``TrialResult``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipetune.results import RepeatTiming

Consumer = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class BurstPlan:
    warmup_steps: int
    steps: int
    repeats: int
    steps_per_epoch: int
    fill_epoch: bool  # a cached variant first runs one whole epoch to fill its cache
    batch_size: int


@dataclass(frozen=True, slots=True)
class BurstTiming:
    startup_ns: int
    fill_ns: int | None
    repeats: tuple[RepeatTiming, ...]
    windows: tuple[tuple[int, int], ...]  # (start_ns, end_ns) of each timed repeat


def run_burst(batches: Iterable[Any], consume: Consumer, plan: BurstPlan,
              clock: Callable[[], int] = time.perf_counter_ns,
              examples_in: Callable[[Any], int] | None = None) -> BurstTiming:
    """Drive ``consume`` with batches from ``batches`` (an endless iterable) and time it.

    The first batch's latency is start-up (tracing, file opening, autotune's first guesses).
    Cache fill, when asked for, is the wall time of the whole first epoch, start-up included.
    ``examples_in(batch)`` counts a batch's examples (an epoch's last batch may be partial);
    without it every batch counts ``plan.batch_size``.
    """
    count = examples_in or (lambda batch: plan.batch_size)
    iterator = iter(batches)
    start = clock()
    first = next(iterator)
    startup_ns = clock() - start
    consume(first)
    fill_ns = None
    if plan.fill_epoch:
        _run_steps(iterator, consume, plan.steps_per_epoch - 1, clock, count)
        fill_ns = clock() - start
    _run_steps(iterator, consume, plan.warmup_steps, clock, count)
    repeats = []
    for _ in range(plan.repeats):
        request, wait, step, examples = _run_steps(iterator, consume, plan.steps, clock, count)
        repeats.append(RepeatTiming(tuple(request), tuple(wait), tuple(step), examples=examples))
    windows = tuple((r.start_ns, r.end_ns) for r in repeats)
    return BurstTiming(startup_ns, fill_ns, tuple(repeats), windows)


def _run_steps(iterator: Iterator[Any], consume: Consumer, number: int, clock: Callable[[], int],
               count: Callable[[Any], int]) -> tuple[list[int], list[int], list[int], int]:
    requests, waits, steps, examples = [], [], [], 0
    for _ in range(number):
        requested = clock()
        batch = next(iterator)
        received = clock()
        consume(batch)
        done = clock()
        requests.append(requested)
        waits.append(received - requested)
        steps.append(done - received)
        examples += count(batch)  # after the step's timestamps: no timed span includes it
    return requests, waits, steps, examples


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
