"""Per-variant rows of the report: ranking table, step-time breakdown, effects, unranked ones.

Pure functions of trials; every number is one of :mod:`pipetune.stats`' over the raw timings.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipetune import stats
from pipetune.dimensions import NAMES
from pipetune.effects import dimension_effects, matched_pairs
from pipetune.ranking import RankedTrial
from pipetune.results import Role, TrialResult, TrialState
from pipetune.space import Dropped, describe
from pipetune.spec import PipelineParams

NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class StepBreakdown:
    """Mean time per timed step of one ranked variant, split into input wait and compute."""

    position: int
    key: str
    label: str
    colour_role: str
    input_wait_ms: float
    compute_ms: float
    steady_ms_per_step: float  # wall time per step over the timed windows
    fill_ms_per_step: float | None  # the cache-filling first epoch per step (start-up included)
    fill_s: float | None

    @property
    def fill_over_steady(self) -> float | None:
        """How many times longer a step takes while the cache fills than once it is full."""
        if self.fill_ms_per_step is None:
            return None
        return self.fill_ms_per_step / self.steady_ms_per_step


@dataclass(frozen=True, slots=True)
class RankRow:
    position: int
    tie_group: int
    tied_with_previous: bool
    key: str
    label: str
    colour_role: str
    description: str
    varying_values: tuple[Any, ...]  # in the order of Report.varying_dimensions
    throughput: float  # examples/s, median over repeats
    throughput_ci_low: float
    throughput_ci_high: float
    objective_median: float
    objective_ci_low: float
    objective_ci_high: float
    time_to_train_s: float
    input_wait_fraction: float
    cpu_percent: float | None
    peak_rss_bytes: int | None
    gpu_memory_bytes: int | None
    repeats: int
    one_repeat: bool  # RankedTrial.one_repeat


@dataclass(frozen=True, slots=True)
class EffectRow:
    """One dimension's effect, oriented so that ``ratio >= 1``: better_value over worse_value."""

    dimension: str
    better_value: Any
    worse_value: Any
    ratio: float  # median throughput ratio over matched pairs
    low: float  # smallest pair ratio, same orientation
    high: float
    pairs: int


@dataclass(frozen=True, slots=True)
class UnrunRow:
    state: str  # failed | pruned | skipped | no timed repeats
    key: str
    label: str
    description: str
    reason: str
    dropped_before_sweep: bool = False


def step_breakdown(ranked: RankedTrial, winner_key: str | None) -> StepBreakdown:
    trial = ranked.trial
    steps = sum(len(r.step_ns) for r in trial.repeats)
    wait_ns = sum(sum(r.wait_ns) for r in trial.repeats)
    compute_ns = sum(sum(r.step_ns) for r in trial.repeats)
    wall_ns = sum(r.wall_ns for r in trial.repeats)
    fill_ms = None
    if trial.fill_ns is not None and trial.steps_per_epoch > 0:
        fill_ms = trial.fill_ns / trial.steps_per_epoch / NS_PER_MS
    return StepBreakdown(
        position=ranked.position, key=trial.key, label=trial_label(trial),
        colour_role=colour_role(trial, winner_key), input_wait_ms=wait_ns / steps / NS_PER_MS,
        compute_ms=compute_ns / steps / NS_PER_MS, steady_ms_per_step=wall_ns / steps / NS_PER_MS,
        fill_ms_per_step=fill_ms, fill_s=None if trial.fill_ns is None else trial.fill_ns / 1e9,
    )


def rank_row(ranked: RankedTrial, varying: Sequence[str], winner_key: str | None,
             epochs: int) -> RankRow:
    trial = ranked.trial
    throughputs = stats.repeat_throughputs(trial)
    low, high = stats.bootstrap_ci(throughputs)
    return RankRow(
        position=ranked.position, tie_group=ranked.tie_group,
        tied_with_previous=ranked.tied_with_previous, key=trial.key, label=trial_label(trial),
        colour_role=colour_role(trial, winner_key),
        description=describe(PipelineParams(**trial.params)),
        varying_values=tuple(trial.params.get(name) for name in varying),
        throughput=median_throughput(trial), throughput_ci_low=low, throughput_ci_high=high,
        objective_median=ranked.median, objective_ci_low=ranked.ci_low,
        objective_ci_high=ranked.ci_high, time_to_train_s=time_to_train_s(trial, epochs),
        input_wait_fraction=stats.trial_wait_fraction(trial), cpu_percent=trial.cpu_percent,
        peak_rss_bytes=trial.peak_rss_bytes, gpu_memory_bytes=trial.gpu_memory_bytes,
        repeats=len(trial.repeats), one_repeat=ranked.one_repeat,
    )


def parameter_split(trials: Sequence[TrialResult]) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """(dimensions whose value differs between trials, (name, value) of those all share)."""
    varying, shared = [], []
    for name in NAMES:
        values = {repr(t.params.get(name)): t.params.get(name) for t in trials}
        if len(values) > 1:
            varying.append(name)
        elif values:
            shared.append((name, next(iter(values.values()))))
    return tuple(varying), tuple(shared)


def effect_rows(results: Sequence[TrialResult]) -> tuple[EffectRow, ...]:
    """Each of ``dimension_effects``, turned so the ratio is >= 1; the largest effect first.

    The pair ratios are recomputed in the shown direction rather than inverting the median:
    with an even number of pairs, 1/median is not the median of the inverted ratios.
    """
    rows = []
    for effect in dimension_effects(results):
        better, worse = effect.value, effect.baseline_value
        if effect.median_ratio < 1:
            better, worse = worse, better
        ratios = pair_ratios(results, effect.dimension, better, worse)
        rows.append(EffectRow(effect.dimension, better, worse, statistics.median(ratios),
                              min(ratios), max(ratios), len(ratios)))
    return tuple(sorted(rows, key=lambda r: (-r.ratio, r.dimension, repr(r.better_value))))


def pair_ratios(results: Sequence[TrialResult], dimension: str, value: Any,
                other: Any) -> list[float]:
    """Median-throughput ratios of each matched pair with ``value`` over ``other``."""
    return [median_throughput(a) / median_throughput(b) for a, b in matched_pairs(results, dimension)
            if repr(a.params[dimension]) == repr(value) and repr(b.params[dimension]) == repr(other)]


def unrun_rows(unranked: Sequence[TrialResult], dropped: Sequence[Dropped]) -> tuple[UnrunRow, ...]:
    """Measured trials without a rank (failed first), then the variants dropped before the sweep."""
    rows = [UnrunRow(_state_words(t), t.key, trial_label(t), _describe(t.params), why_unranked(t))
            for t in unranked]
    rows.sort(key=lambda r: (_STATE_ORDER.get(r.state, len(_STATE_ORDER)), r.key))
    rows += sorted((UnrunRow("skipped", d.key, d.key, describe(d.params), d.reason, True)
                    for d in dropped), key=lambda r: r.key)
    return tuple(rows)


_STATE_ORDER = {"failed": 0, "no timed repeats": 1, "pruned": 2, "skipped": 3}


# --------------------------------------------------------------------------- trial words and numbers


def trial_label(trial: TrialResult) -> str:
    """References by their role, candidates by their key."""
    return trial.key if trial.role is Role.CANDIDATE else trial.role.value


def colour_role(trial: TrialResult, winner_key: str | None) -> str:
    """The colour a trial gets on every chart: the winner's, a reference's, or candidate grey."""
    return "winner" if trial.key == winner_key else trial.role.value


def median_throughput(trial: TrialResult) -> float:
    return statistics.median(stats.repeat_throughputs(trial))


def time_to_train_s(trial: TrialResult, epochs: int) -> float:
    """Median over repeats of the projected time to train ``epochs`` epochs (fill included)."""
    return statistics.median(stats.repeat_time_to_train_s(trial, epochs))


def _state_words(trial: TrialResult) -> str:
    if trial.state is TrialState.COMPLETE:
        return "no timed repeats"
    return trial.state.value


def why_unranked(trial: TrialResult) -> str:
    if trial.reason:
        return trial.reason
    return "no timed repeats" if trial.state is TrialState.COMPLETE else trial.state.value


def _describe(params: dict[str, Any]) -> str:
    try:
        return describe(PipelineParams(**params))
    except ValueError:  # parameters from an older pipetune: show them as stored
        return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
