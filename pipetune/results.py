"""What a trial produces: plain frozen values that cross process and module boundaries.

A trial measures one variant. Its raw per-step timestamps are kept so every statistic
can be recomputed later (by ranking, the report, or a user with pandas).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TrialState(str, enum.Enum):
    COMPLETE = "complete"
    FAILED = "failed"  # ran and broke: crash, OOM, timeout, corrupt record
    PRUNED = "pruned"  # stopped early by the search (successive halving)
    SKIPPED = "skipped"  # never run: invalid for this machine or spec


class Role(str, enum.Enum):
    """Why a variant is in the sweep."""

    CANDIDATE = "candidate"
    NAIVE = "naive"
    AUTOTUNE_DEFAULT = "autotune-default"
    BASELINE = "baseline"


@dataclass(frozen=True, slots=True)
class RepeatTiming:
    """One timed window of steady-state steps, all on the burst's perf_counter_ns clock.

    For step i: the consumer asked for a batch at ``request_ns[i]``, got it after
    ``wait_ns[i]`` (time blocked in ``next()``) and then spent ``step_ns[i]`` in the
    training (or simulated) step.
    """

    request_ns: tuple[int, ...]
    wait_ns: tuple[int, ...]
    step_ns: tuple[int, ...]
    examples: int

    @property
    def start_ns(self) -> int:
        return self.request_ns[0]

    @property
    def end_ns(self) -> int:
        return self.request_ns[-1] + self.wait_ns[-1] + self.step_ns[-1]

    @property
    def wall_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class MonitorSample:
    """One sample of one metric; ``t_ns`` is on the burst's clock."""

    t_ns: int
    metric: str  # e.g. "host.cpu_percent", "gpu0.kernel_active_percent"
    value: float


@dataclass(frozen=True, slots=True)
class MonitorReport:
    samples: tuple[MonitorSample, ...] = ()
    # metric -> reason it could not be read (e.g. "NVML: NotSupported")
    unavailable: tuple[tuple[str, str], ...] = ()
    # one plain sentence about the accelerator monitor, e.g. "No NVIDIA GPU (NVML library not found)"
    accelerator_note: str = ""


@dataclass(frozen=True, slots=True)
class TrialResult:
    """Everything measured for one variant. ``state`` says whether the numbers exist."""

    key: str
    role: Role
    params: dict[str, Any]
    state: TrialState
    reason: str = ""
    batch_size: int = 0
    steps_per_epoch: int = 0
    # The objective's parts (stats.objective_parts): start-up is the first batch and its step
    # (pipeline start, Keras tracing), counted once for every variant; the fill is the rest of
    # a cached variant's first epoch (start-up excluded); the boundary is the extra time an
    # epoch end and the next epoch's start (iterator, shuffle-buffer fill) cost beyond steady
    # steps, 0 when the repeats are whole epochs (they contain it).
    startup_ns: int | None = None
    fill_ns: int | None = None  # cached variants only
    fill_cpu_s: float | None = None  # process CPU seconds of that fill (cached variants only)
    boundary_ns: int | None = None
    whole_epochs: bool = False  # each repeat is one whole epoch from a fresh iterator
    repeats: tuple[RepeatTiming, ...] = ()
    # Its first repeat was far behind the sweep's best so far (trial_request.FAR_BEHIND): the
    # other repeats were not run.
    cut_short: bool = False
    cpu_percent: float | None = None  # process CPU% over the timed windows (100 = one core)
    # Process CPU seconds per example over the timed windows: what a tie is broken by (a rate
    # like CPU% would favour a variant that is slow enough to idle).
    cpu_s_per_example: float | None = None
    peak_rss_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    monitor: MonitorReport = field(default_factory=MonitorReport)
    environment: dict[str, Any] = field(default_factory=dict)
    budget_steps: int = 0  # steps per repeat this trial was given (halving rungs differ)
    pipeline_source: str = ""  # the module the trial imported to build its dataset
    # Set by the search that ran it, not by the measurement:
    rung: int | None = None  # which stage of the search measured it (search.SHORT_RUNG, ...)
    trial_wall_s: float | None = None  # wall time of the whole trial, process start included
    race_round: int | None = None  # set for a measurement of the final race (race.py)
