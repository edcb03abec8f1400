"""What mattered: the effect of each dimension, from trials that differ in that dimension only.

Pure functions over completed trials. A matched pair is two trials whose parameters are equal
except in one dimension; its effect is the ratio of their throughputs (per-repeat values,
bootstrapped). Across pairs, a dimension's effect is the median ratio per pair of values.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipetune import stats
from pipetune.dimensions import NAMES
from pipetune.results import TrialResult, TrialState



@dataclass(frozen=True, slots=True)
class PairEffect:
    """``with_value`` vs ``without_value`` in ``dimension``, all else equal: the speed-up of
    the first by the sweep's objective (> 1: ``with_value`` is faster)."""

    dimension: str
    with_value: Any
    without_value: Any
    ratio: float
    ci_low: float
    ci_high: float
    repeats: int  # repeats behind the numerator's median
    with_trial: str
    without_trial: str

    @property
    def measurable(self) -> bool:
        """Whether the interval excludes "no effect" (a ratio of 1)."""
        return self.ci_low > 1.0 or self.ci_high < 1.0


@dataclass(frozen=True, slots=True)
class DimensionEffect:
    """Across every matched pair: median throughput ratio of ``value`` over ``baseline_value``."""

    dimension: str
    value: Any
    baseline_value: Any
    median_ratio: float
    low: float  # smallest pair ratio
    high: float  # largest pair ratio
    pairs: int


def _complete(results: Sequence[TrialResult]) -> list[TrialResult]:
    return [r for r in results if r.state is TrialState.COMPLETE and r.repeats]


def _others(params: dict[str, Any], dimension: str) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != dimension))


def pair_effect(a: TrialResult, b: TrialResult, dimension: str, objective: str, epochs: int) -> PairEffect:
    """Speed-up of ``a`` over ``b``: throughput a/b, or time to train b/a."""
    faster, slower = stats.repeat_objective_values(a, objective, epochs), stats.repeat_objective_values(b, objective, epochs)
    if objective != "throughput":
        faster, slower = slower, faster
    ratio, low, high = stats.ratio_ci(faster, slower)
    return PairEffect(dimension, a.params[dimension], b.params[dimension], ratio, low, high,
                      len(a.repeats), a.key, b.key)


def matched_pairs(results: Sequence[TrialResult], dimension: str) -> list[tuple[TrialResult, TrialResult]]:
    """Ordered pairs (a, b) of completed trials that differ in ``dimension`` only."""
    groups: dict[tuple, list[TrialResult]] = defaultdict(list)
    for result in _complete(results):
        groups[_others(result.params, dimension)].append(result)
    return [(a, b) for group in groups.values() for a in group for b in group
            if a.params[dimension] != b.params[dimension]]


def dimension_effects(results: Sequence[TrialResult]) -> list[DimensionEffect]:
    """Per dimension and value pair, the median ratio over every matched pair."""
    effects = []
    for dimension in NAMES:
        ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
        values: dict[tuple[str, str], tuple[Any, Any]] = {}
        for a, b in matched_pairs(results, dimension):
            if repr(a.params[dimension]) < repr(b.params[dimension]):
                continue  # each unordered pair once, oriented by repr
            key = (repr(a.params[dimension]), repr(b.params[dimension]))
            values[key] = (a.params[dimension], b.params[dimension])
            ratios[key].append(statistics.median(stats.repeat_throughputs(a))
                               / statistics.median(stats.repeat_throughputs(b)))
        for key, found in sorted(ratios.items()):
            value, baseline = values[key]
            effects.append(DimensionEffect(dimension, value, baseline, statistics.median(found),
                                           min(found), max(found), len(found)))
    return effects


def evidence_for(winner: TrialResult, results: Sequence[TrialResult], dimension: str,
                 objective: str, epochs: int) -> PairEffect | None:
    """The winner against the best completed trial that differs from it in ``dimension`` only."""
    rivals = [b for a, b in matched_pairs(results, dimension) if a.key == winner.key]
    if not rivals:
        return None
    sign = 1 if objective == "throughput" else -1
    best_rival = max(rivals, key=lambda r: (
        sign * statistics.median(stats.repeat_objective_values(r, objective, epochs)), r.key))
    return pair_effect(winner, best_rival, dimension, objective, epochs)
