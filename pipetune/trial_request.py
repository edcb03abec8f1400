"""What a trial is asked to measure, and the FAILED result it becomes when it cannot.

Shared by the parent (``trial.py``) and the child (``trial_child.py``) of a trial, so
neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipetune.plan import DataLayout
from pipetune.results import Role, TrialResult, TrialState
from pipetune.spec import PipelineParams, Spec


# A variant this many times worse than the best so far is measured on one repeat: more repeats
# would sharpen a number no verdict rests on. Such a candidate is not padded into the race
# (race.PAD_WITHIN is 1.5), and races only if the leader's own repeats spread as wide; a
# reference's speed-up is paired over race rounds, whose spread its interval carries. Workload
# 8 of the benchmark spent 93 of 115 s of trials on naive and autotune-default, 5-10x behind.
FAR_BEHIND = 2.0


@dataclass(frozen=True, slots=True)
class TrialRequest:
    """Everything a child process needs to measure one variant. Picklable."""

    spec: Spec
    params: PipelineParams
    role: Role
    key: str
    data: DataLayout
    num_examples: int
    mode: str  # train | input | simulate
    warmup_steps: int
    steps: int
    repeats: int
    monitor_interval_s: float = 0.05
    # Measure the consumer alone on one batch held in memory: the physical limit of the step.
    consumer_ceiling: bool = False
    # The best objective value measured so far in the sweep: a variant whose first repeat,
    # projected optimistically, is FAR_BEHIND times worse or more runs no other repeat.
    best_so_far: float | None = None


def failed(request: TrialRequest, reason: str, **measured: object) -> TrialResult:
    return TrialResult(key=request.key, role=request.role, params=request.params.model_dump(),
                       state=TrialState.FAILED, reason=reason,
                       batch_size=request.params.batch_size, budget_steps=request.steps, **measured)
