"""What a finished sweep is: the trials, the ranking and the facts they were measured under.

The results layer: made by the runner (fresh) or the store (read back), read by emit, the
outputs and the report. Ranking a sweep is one call here, so a fresh and a stored sweep agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune.device import Device
from pipetune.ranking import Ranking, rank
from pipetune.results import TrialResult
from pipetune.space import Dropped
from pipetune.spec import Spec


@dataclass(frozen=True)
class SweepOutcome:
    spec: Spec
    out_dir: Path
    strategy: str  # what was actually run, e.g. "grid" or "grid over a sample of 9 of 23"
    mode: str
    results: list[TrialResult]
    dropped: list[Dropped]
    ranking: Ranking
    device: Device
    tuning_time_s: float
    budget_s: float | None = None  # the search budget in force (--budget or the spec's)
    # The diagnosis behind an automatic space (``diagnosis.json`` plus the space and its
    # reasons); None when the spec listed its space by hand.
    diagnosis: dict[str, Any] | None = None
    race: tuple[TrialResult, ...] = ()  # the final race's measurements (race.py): the verdict's data


def rank_sweep(spec: Spec, results: list[TrialResult], objective: str,
               raced: list[TrialResult] | tuple[TrialResult, ...] = ()) -> Ranking:
    """The ranking of a sweep's results: one call, so a fresh and a stored sweep agree."""
    return rank(results, objective, epochs=spec.measure.epochs_planned, seed=0, race=raced)
