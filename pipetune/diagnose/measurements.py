"""What the diagnosis child measures: plain values, picklable, no TensorFlow.

Every pass times a *cumulative* pipeline (read, + parse, + each op in turn), so the cost of one
stage is the difference between its pass and the previous one (see ``verdict.stage_costs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PassTiming:
    """One timed pass: ``elements`` taken in ``wall_s`` seconds, using ``cpu_s`` of process CPU.

    ``parallelism`` is the concurrency the pass allowed its newest stage (1, the cores for a
    map, the shards for a parallel interleave).
    """

    elements: int
    wall_s: float
    cpu_s: float
    parallelism: int
    # Per element, in the median chunk of the pass: robust to the moments the process was
    # descheduled (a small or shared machine), which inflate the mean. None: use the mean.
    median_wall_s: float | None = None
    median_cpu_s: float | None = None

    @property
    def typical_wall_per_element(self) -> float:
        return self.median_wall_s if self.median_wall_s is not None else self.wall_per_element

    @property
    def typical_cpu_per_element(self) -> float:
        return self.median_cpu_s if self.median_cpu_s is not None else self.cpu_per_element

    @property
    def rate(self) -> float:
        """Elements per second."""
        return self.elements / self.wall_s if self.wall_s > 0 else math.inf

    @property
    def wall_per_element(self) -> float:
        return self.wall_s / self.elements if self.elements else math.inf

    @property
    def cpu_per_element(self) -> float:
        return self.cpu_s / self.elements if self.elements else math.inf


@dataclass(frozen=True, slots=True)
class StageMeasurement:
    """The pipeline up to and including one stage, measured at parallelism 1 and at the maximum.

    Attributes:
        name: ``read``, ``parse`` or the op with its key, e.g. ``resize(image)``.
        kind: ``read`` | ``parse`` | ``op``.
        random: the op draws random numbers (no cache may sit at or after it).
        sequential: one element at a time, in the caller's thread.
        parallel: interleave over every shard, map with one call per core, a private pool.
        element_bytes: mean size of one element after this stage (tensor bytes; strings by
            their byte length).
    """

    name: str
    kind: str
    random: bool
    sequential: PassTiming
    parallel: PassTiming
    element_bytes: float


@dataclass(frozen=True, slots=True)
class ConsumerMeasurement:
    """The training step on one batch held in memory: the most the consumer can take.

    ``step_s`` is None in input mode (no consumer: its ceiling is infinite). In simulate mode
    it is the spec's ``step_time_ms`` exactly (``measured`` False). ``cpu_s``: the process CPU
    per batch while training (train mode; a simulated step sleeps, so None): the model takes
    the cores the pipeline also needs.
    """

    mode: str
    batch_size: int
    step_s: float | None
    measured: bool
    # Train mode: the step with one consumer lever changed, each measured the same way.
    levers: tuple[ConsumerLever, ...] = ()
    cpu_s: float | None = None

    @property
    def rate(self) -> float:
        """Examples per second the consumer can take."""
        if self.step_s is None:
            return math.inf
        return self.batch_size / self.step_s if self.step_s > 0 else math.inf


# steps_per_execution measured by the diagnosis and tried by the automatic space: enough calls
# saved to show whether Python's dispatch matters for this model.
STEPS_PER_CALL = 8


@dataclass(frozen=True, slots=True)
class ConsumerLever:
    """The training step with one dimension (precision, jit_compile, steps_per_execution,
    batch_size) at ``value`` and the rest as measured for the plain step."""

    dimension: str
    value: Any
    batch_size: int
    step_s: float  # per batch (per call / steps for steps_per_execution)
    cpu_s: float | None = None  # process CPU per batch, likewise

    @property
    def rate(self) -> float:
        return self.batch_size / self.step_s if self.step_s > 0 else math.inf


@dataclass(frozen=True, slots=True)
class Measurements:
    """Everything the verdict needs: measured numbers plus the facts they are read against."""

    spec_name: str
    cores: int
    shards: int
    num_examples: int
    stages: tuple[StageMeasurement, ...]
    consumer: ConsumerMeasurement
    ram_budget_bytes: int
    shuffle_buffer: int  # the spec's first searched value; 0 = no shuffle
    measure_seconds: float = 0.0  # wall time of the whole measurement, shards included
    # Elements read back one at a time from a memory cache at the Plan's cache position.
    cache_read: PassTiming | None = None
