"""What a trial is asked to measure, and the FAILED result it becomes when it cannot.

Shared by the parent (``trial.py``) and the child (``trial_child.py``) of a trial, so
neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipetune.plan import DataLayout
from pipetune.results import Role, TrialResult, TrialState
from pipetune.spec import PipelineParams, Spec


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


def failed(request: TrialRequest, reason: str, **measured: object) -> TrialResult:
    return TrialResult(key=request.key, role=request.role, params=request.params.model_dump(),
                       state=TrialState.FAILED, reason=reason,
                       batch_size=request.params.batch_size, budget_steps=request.steps, **measured)
