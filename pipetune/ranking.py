"""Rank measured trials with honest statistics: ties where the data cannot tell, cost breaks them.

``rank`` is pure and deterministic: the same trials in any order give the same ranking.

"s beats t" when the evidence says s is better:

* the confidence intervals of their medians are disjoint and s is on the better side, or
* s dominates t on every repeat: with equal repeat counts, s is better on each paired
  repeat i; otherwise s's worst repeat is better than t's best.

Both conditions imply a strictly better median, so the relation has no cycles. Trials are
placed one at a time: among the remaining trials that no remaining trial beats, the cheapest
(lowest CPU %, then peak RSS, then key) goes next. Ties are therefore broken by cost, yet a
trial is never placed above a trial that beats it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipetune import stats
from pipetune.results import Role, TrialResult, TrialState

OBJECTIVES = ("throughput", "time_to_train")
# A speed-up is called significant only if its interval's lower end clears 1 by this much:
# smaller gains are within the drift of a shared machine and not worth a pipeline change.
MIN_EFFECT = 0.02


@dataclass(frozen=True, slots=True)
class RankedTrial:
    """One ranked trial and the numbers it was ranked by.

    ``values`` holds the objective per repeat (examples/s, or projected seconds). A trial
    is ``tied_with_previous`` when neither it nor the trial placed just before beats the
    other; ``tie_group`` starts at 1 and goes up by one at every trial that is not tied.
    Tie groups are chained pairwise, so a group may hold two trials where one beats the other.
    """

    trial: TrialResult
    position: int  # 1 = best
    median: float
    ci_low: float
    ci_high: float
    tied_with_previous: bool
    tie_group: int
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The best trial against one reference trial (naive, autotune-default or baseline).

    ``speedup > 1`` means the winner is faster: winner/reference throughput, or
    reference/winner time to train. ``significant`` is true when the winner beats the
    reference. ``batch_size_differs`` is true when the winner's batch size differs from the
    user's: the BASELINE trial's batch size, or the NAIVE trial's when there is no baseline
    (False when neither is known), since a changed batch size also changes training itself.
    """

    reference: RankedTrial
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float
    significant: bool
    batch_size_differs: bool


@dataclass(frozen=True, slots=True)
class Ranking:
    """Trials ranked by one objective; ``unranked`` holds those without numbers."""

    objective: str
    ranked: tuple[RankedTrial, ...]
    unranked: tuple[TrialResult, ...]
    comparisons: tuple[Comparison, ...]

    @property
    def best(self) -> RankedTrial | None:
        """The first-placed trial, or None when no trial could be ranked."""
        return self.ranked[0] if self.ranked else None

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per trial (ranked first, in order) for a DataFrame or CSV."""
        rows = [_row(r.trial, r) for r in self.ranked]
        rows.extend(_row(trial, None) for trial in self.unranked)
        return rows


def rank(
    trials: Sequence[TrialResult],
    objective: str,
    epochs: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
) -> Ranking:
    """Ranks trials by ``objective``, with statistical ties broken by cost.

    Args:
        trials: Trials of one sweep, in any order. Only COMPLETE trials with at least one
            repeat are ranked; every other trial is returned in ``Ranking.unranked``.
        objective: "throughput" (examples/s, higher is better) or "time_to_train"
            (projected seconds for ``epochs`` epochs including any cache fill, lower is better).
        epochs: Planned number of epochs; only used by "time_to_train".
        confidence: Coverage of the bootstrap intervals of the medians and speed-ups.
        seed: Bootstrap seed; every trial uses the same one, so input order does not matter.

    Returns:
        The ranking, with the best trial compared against every complete reference trial.

    Raises:
        ValueError: Unknown objective, ``epochs < 1``, or two rankable trials share a key.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, but got {objective!r}")
    if epochs < 1:
        raise ValueError(f"`epochs >= 1` must hold, but got {epochs}")
    rankable, unrankable = _split_rankable(trials)
    keys = [t.key for t in rankable]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each ranked trial needs a unique key, but got {sorted(keys)}")
    unranked = tuple(sorted(unrankable, key=_identity_order))

    higher_is_better = objective == "throughput"
    scored = [_score(t, stats.repeat_objective_values(t, objective, epochs), confidence, seed)
              for t in rankable]
    ranked = _place(scored, higher_is_better)
    comparisons = _compare_best(ranked, trials, higher_is_better, confidence, seed)
    return Ranking(objective, ranked, unranked, comparisons)


def beats(s: RankedTrial, t: RankedTrial, higher_is_better: bool) -> bool:
    """True when the evidence says ``s`` is better than ``t`` (see the module docstring)."""
    if higher_is_better:
        disjoint_and_better = s.ci_low > t.ci_high
    else:
        disjoint_and_better = s.ci_high < t.ci_low
    return disjoint_and_better or dominates(s.values, t.values, higher_is_better)


def dominates(s: Sequence[float], t: Sequence[float], higher_is_better: bool) -> bool:
    """True when ``s`` is better on every paired repeat, or (unequal counts) worst beats best."""
    better: Callable[[float, float], bool] = (
        (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    )
    if len(s) == len(t):
        return all(better(a, b) for a, b in zip(s, t))
    worst_s, best_t = (min(s), max(t)) if higher_is_better else (max(s), min(t))
    return better(worst_s, best_t)


def _split_rankable(
    trials: Sequence[TrialResult],
) -> tuple[list[TrialResult], list[TrialResult]]:
    """COMPLETE trials with at least one repeat, and all the others."""
    rankable, unrankable = [], []
    for trial in trials:
        has_numbers = trial.state is TrialState.COMPLETE and bool(trial.repeats)
        (rankable if has_numbers else unrankable).append(trial)
    return rankable, unrankable


def _score(trial: TrialResult, values: list[float], confidence: float, seed: int) -> RankedTrial:
    """A RankedTrial with its statistics; placement fields are filled in by ``_place``."""
    median, _, _ = stats.median_iqr(values)
    ci_low, ci_high = stats.bootstrap_ci(values, confidence=confidence, seed=seed)
    return RankedTrial(trial, 0, median, ci_low, ci_high, False, 0, tuple(values))


def _place(scored: list[RankedTrial], higher_is_better: bool) -> tuple[RankedTrial, ...]:
    """Orders trials: repeatedly the cheapest of those no remaining trial beats."""
    remaining = sorted(scored, key=lambda r: _cost_order(r.trial))
    beaten_by = {
        r.trial.key: {o.trial.key for o in remaining if beats(o, r, higher_is_better)}
        for r in remaining
    }
    placed: list[RankedTrial] = []
    while remaining:
        # ``remaining`` is sorted by cost, so the first unbeaten trial is the cheapest one.
        # One always exists: the best median is never beaten (the relation implies it).
        chosen = next(r for r in remaining if not beaten_by[r.trial.key])
        remaining.remove(chosen)
        for beaters in beaten_by.values():
            beaters.discard(chosen.trial.key)
        placed.append(_with_position(chosen, placed, higher_is_better))
    return tuple(placed)


def _with_position(
    chosen: RankedTrial, placed: list[RankedTrial], higher_is_better: bool
) -> RankedTrial:
    if not placed:
        return replace(chosen, position=1, tied_with_previous=False, tie_group=1)
    previous = placed[-1]
    tied = not beats(previous, chosen, higher_is_better) and not beats(
        chosen, previous, higher_is_better
    )
    tie_group = previous.tie_group if tied else previous.tie_group + 1
    return replace(
        chosen, position=len(placed) + 1, tied_with_previous=tied, tie_group=tie_group
    )


def _compare_best(
    ranked: tuple[RankedTrial, ...],
    trials: Sequence[TrialResult],
    higher_is_better: bool,
    confidence: float,
    seed: int,
) -> tuple[Comparison, ...]:
    if not ranked:
        return ()
    best = ranked[0]
    user_batch_size = _user_batch_size(trials)
    batch_size_differs = user_batch_size is not None and best.trial.batch_size != user_batch_size
    references = sorted(
        (r for r in ranked[1:] if r.trial.role is not Role.CANDIDATE),
        key=lambda r: _identity_order(r.trial),
    )
    comparisons = []
    for reference in references:
        faster, slower = (best, reference) if higher_is_better else (reference, best)
        speedup, low, high = stats.ratio_ci(
            faster.values, slower.values, confidence=confidence, seed=seed
        )
        # Dominating three repeats happens by chance one time in eight, so a claim made to the
        # user also needs the speed-up's own interval to clear 1 by a practical margin.
        significant = beats(best, reference, higher_is_better) and low > 1.0 + MIN_EFFECT
        comparisons.append(
            Comparison(reference, speedup, low, high, significant, batch_size_differs)
        )
    return tuple(comparisons)


def _user_batch_size(trials: Sequence[TrialResult]) -> int | None:
    """Batch size of the BASELINE trial, else the NAIVE one; None when neither is known."""
    for role in (Role.BASELINE, Role.NAIVE):
        sizes = sorted(
            (t.key, t.batch_size) for t in trials if t.role is role and t.batch_size > 0
        )
        if sizes:
            return sizes[0][1]
    return None


def _cost_order(trial: TrialResult) -> tuple[float, float, str]:
    """Cheaper first; an unknown cost counts as infinite, so measured thrift wins ties."""
    cpu = float("inf") if trial.cpu_percent is None else trial.cpu_percent
    rss = float("inf") if trial.peak_rss_bytes is None else float(trial.peak_rss_bytes)
    return cpu, rss, trial.key


def _identity_order(trial: TrialResult) -> tuple[str, str, str, str, int]:
    """A stable order for listing trials whatever order they came in."""
    return trial.key, trial.role.value, trial.state.value, trial.reason, trial.budget_steps


def _row(trial: TrialResult, ranked: RankedTrial | None) -> dict[str, Any]:
    reason = trial.reason
    if not reason and trial.state is TrialState.COMPLETE and not trial.repeats:
        reason = "no timed repeats"
    row: dict[str, Any] = {
        "key": trial.key,
        "role": trial.role.value,
        "position": ranked.position if ranked else None,
        "median": ranked.median if ranked else None,
        "ci_low": ranked.ci_low if ranked else None,
        "ci_high": ranked.ci_high if ranked else None,
        "tie_group": ranked.tie_group if ranked else None,
        "state": trial.state.value,
        "reason": reason,
        "batch_size": trial.batch_size,
        "cpu_percent": trial.cpu_percent,
        "peak_rss_bytes": trial.peak_rss_bytes,
    }
    row.update({f"param.{name}": value for name, value in sorted(trial.params.items())})
    return row
