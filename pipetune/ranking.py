"""Rank measured trials with honest statistics: ties where the data cannot tell, cost breaks them.

``rank`` is pure and deterministic: the same trials in any order give the same ranking.

"s beats t" when the evidence says s is better:

* the confidence intervals of their medians are disjoint and s is on the better side, or
* s dominates t on every repeat: with equal repeat counts, s is better on each paired
  repeat i; otherwise s's worst repeat is better than t's best.

Both conditions imply a strictly better median, so the relation has no cycles. Trials are
placed one at a time: among the remaining trials that no remaining trial beats, the cheapest
(lowest CPU-seconds per example, then peak RSS, then key) goes next. Ties are therefore broken
by cost, yet a trial is never placed above a trial that beats it.

When the sweep ran a final race (``race.py``), the race alone decides: the raced variants are
placed first, by their per-round values, and "s beats t" there means the paired speed-up of s
over t (one ratio per round, bootstrapped over rounds) has its lower bound above
``1 + MIN_EFFECT`` over at least ``MIN_ROUNDS_TO_CLAIM`` rounds. Every comparison with a
reference comes from the race. Variants that did not race follow, placed by their screening.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipetune import stats
from pipetune.results import Role, TrialResult, TrialState

OBJECTIVES = ("throughput", "time_to_train")
# A speed-up is called significant only if its interval's lower end clears 1 by this much:
# smaller gains are within the drift of a shared machine and not worth a pipeline change.
MIN_EFFECT = 0.02
# Fewer paired rounds than this make no claim: with two rounds, two equal variants come out
# "better in every round" half of the time.
MIN_ROUNDS_TO_CLAIM = 3
# Among trials the data cannot separate, cost (CPU-seconds per example, then memory) decides
# only between medians this close to the best one; a worse median goes after a better one.
COST_DECIDES_WITHIN = 0.05


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
    rounds: tuple[int, ...] = ()  # the race round of each value; empty: screening repeats
    cost: tuple[float, float, str] = (float("inf"), float("inf"), "")  # what breaks a tie

    @property
    def raced(self) -> bool:
        return bool(self.rounds)

    @property
    def one_repeat(self) -> bool:
        """Ranked on one screening repeat: 2x or more behind the sweep's best after its first,
        it ran no other (trial_request.FAR_BEHIND); a raced trial is ranked on its rounds."""
        return self.trial.cut_short and not self.raced


@dataclass(frozen=True, slots=True)
class Comparison:
    """The best trial against one reference trial (naive, autotune-default or baseline).

    ``speedup > 1`` means the winner is faster: winner/reference throughput, or
    reference/winner time to train. From the race when the sweep ran one: the median of the
    per-round paired speed-ups and its bootstrap interval over rounds (``rounds`` of them).
    ``significant`` is true when the winner beats the reference. ``batch_size_differs`` is true when the winner's batch size differs from the
    user's: the BASELINE trial's batch size, or the NAIVE trial's when there is no baseline
    (False when neither is known), since a changed batch size also changes training itself.
    """

    reference: RankedTrial
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float
    significant: bool
    batch_size_differs: bool
    rounds: int = 0  # race rounds behind the numbers; 0: screening repeats (no race)

    @property
    def verdict(self) -> str:
        """The claim in words, with why none is made when the interval alone looks like one."""
        if self.significant:
            return "significantly faster"
        if self.speedup_ci_low <= 1.0 + MIN_EFFECT:
            return "not significantly different"
        if self.rounds == 0:
            return "not significant: the screening repeats overlap"
        if self.rounds < MIN_ROUNDS_TO_CLAIM:
            return (f"not significant: {self.rounds} paired round(s), a claim needs "
                    f"{MIN_ROUNDS_TO_CLAIM}")
        return (f"not significant: over {self.rounds} paired rounds the Student-t bound does not "
                f"clear {1.0 + MIN_EFFECT:.2f} (a bootstrap interval of few rounds is only their range)")


@dataclass(frozen=True, slots=True)
class PairedSpeedup:
    """s over t, paired within race rounds: median ratio, its interval, rounds in common."""

    speedup: float
    low: float  # the bootstrap interval over rounds, as reported
    high: float
    rounds: int
    t_low: float = 0.0  # Student-t lower bound of the geometric mean (stats.t_lower_bound)

    @property
    def separated(self) -> bool:
        """The evidence a claim needs: enough rounds, and both lower bounds above 1 + MIN_EFFECT
        (the bootstrap's cannot widen beyond the data when rounds are few; the t bound can)."""
        floor = 1.0 + MIN_EFFECT
        return self.rounds >= MIN_ROUNDS_TO_CLAIM and self.low > floor and self.t_low > floor


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


def first_screened_position(ranked: Sequence[RankedTrial]) -> int | None:
    """Where the final race's rows end: the position of the first trial measured in screening
    only, below the raced ones (the ranking puts them first). None when no trial raced or
    every one did."""
    if not any(r.raced for r in ranked):
        return None
    return next((r.position for r in ranked if not r.raced), None)


def rank(
    trials: Sequence[TrialResult],
    objective: str,
    epochs: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
    race: Sequence[TrialResult] = (),
) -> Ranking:
    """Ranks trials by ``objective``, with statistical ties broken by cost.

    Args:
        trials: Trials of one sweep (its screening), in any order. Only COMPLETE trials with at
            least one repeat are ranked; every other trial is returned in ``Ranking.unranked``.
        objective: "throughput" (examples/s, higher is better) or "time_to_train"
            (projected seconds for ``epochs`` epochs, lower is better).
        epochs: Planned number of epochs; only used by "time_to_train".
        confidence: Coverage of the bootstrap intervals of the medians and speed-ups.
        seed: Bootstrap seed; every trial uses the same one, so input order does not matter.
        race: The final race's measurements (``TrialResult.race_round`` set), if any: then
            the race alone decides the order of the raced variants and every comparison.

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
    raced = race_scores(race, rankable, objective, epochs, confidence, seed)
    raced_keys = {r.trial.key for r in raced}
    screened = [_score(t, stats.repeat_objective_values(t, objective, epochs), confidence, seed, epochs)
                for t in rankable if t.key not in raced_keys]

    higher_is_better = objective == "throughput"
    race_judge = lambda s, t: paired_speedup(s, t, objective, confidence, seed).separated  # noqa: E731
    screen_judge = lambda s, t: beats(s, t, higher_is_better)  # noqa: E731
    ranked = _place(raced, race_judge, higher_is_better) + _place(screened, screen_judge, higher_is_better)
    ranked = _number(ranked)
    comparisons = _compare_best(ranked, trials, objective, confidence, seed)
    return Ranking(objective, ranked, unranked, comparisons)


def race_scores(race: Sequence[TrialResult], screening: Sequence[TrialResult], objective: str,
                epochs: int, confidence: float = 0.95, seed: int = 0) -> list[RankedTrial]:
    """One RankedTrial per raced variant: its per-round values (a round's value is the median
    over that measurement's repeats), cost from its race measurements, and its screening
    trial as the record shown (the race measurement of round 0 when it has none)."""
    by_key: dict[str, list[TrialResult]] = {}
    for result in _split_rankable(race)[0]:
        by_key.setdefault(result.key, []).append(result)
    records = {t.key: t for t in screening}
    scored = []
    for key, results in sorted(by_key.items()):
        results = sorted(results, key=lambda r: r.race_round or 0)
        values = [stats.trial_objective_value(r, objective, epochs) for r in results]
        shown = records.get(key, results[0])
        base = _score(shown, values, confidence, seed, epochs)
        scored.append(replace(base, rounds=tuple(r.race_round or 0 for r in results),
                              cost=_race_cost(results, epochs)))
    return scored


def paired_speedup(s: RankedTrial, t: RankedTrial, objective: str, confidence: float = 0.95,
                   seed: int = 0) -> PairedSpeedup:
    """s's speed-up over t from the race rounds both ran (>1 = s faster)."""
    t_by_round = dict(zip(t.rounds, t.values))
    pairs = [(value, t_by_round[r]) for r, value in zip(s.rounds, s.values) if r in t_by_round]
    if not pairs:
        return PairedSpeedup(float("nan"), float("nan"), float("nan"), 0)
    speedups = stats.speedup_of([a for a, _ in pairs], [b for _, b in pairs], objective)
    return PairedSpeedup(*stats.paired_speedup_ci(speedups, confidence, seed), len(pairs),
                         stats.t_lower_bound(speedups))


def beats(s: RankedTrial, t: RankedTrial, higher_is_better: bool) -> bool:
    """True when the screening evidence says ``s`` is better than ``t`` (module docstring)."""
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


def _score(trial: TrialResult, values: list[float], confidence: float, seed: int,
           epochs: int) -> RankedTrial:
    """A RankedTrial with its statistics; placement fields are filled in by ``_number``."""
    median, _, _ = stats.median_iqr(values)
    ci_low, ci_high = stats.bootstrap_ci(values, confidence=confidence, seed=seed)
    return RankedTrial(trial, 0, median, ci_low, ci_high, False, 0, tuple(values),
                       cost=_cost_order(trial, epochs))


Judge = Callable[[RankedTrial, RankedTrial], bool]


def _place(scored: list[RankedTrial], judge: Judge, higher_is_better: bool) -> list[RankedTrial]:
    """Orders trials: repeatedly the cheapest of those no remaining trial beats whose median is
    within ``COST_DECIDES_WITHIN`` of the best such median. Marks each one tied with the one
    before when neither beats the other (a group's first never is: the screened variants after
    the raced ones were not compared with them)."""
    remaining = sorted(scored, key=lambda r: r.cost)
    beaten_by = {r.trial.key: {o.trial.key for o in remaining if judge(o, r)} for r in remaining}
    placed: list[RankedTrial] = []
    while remaining:
        # One unbeaten trial exists unless medians of paired ratios form a cycle (rare, never
        # with fewer than four rounds); then every remaining trial is considered.
        unbeaten = [r for r in remaining if not beaten_by[r.trial.key]] or remaining
        chosen = _cheapest_near_best(unbeaten, higher_is_better)
        remaining.remove(chosen)
        for beaters in beaten_by.values():
            beaters.discard(chosen.trial.key)
        tied = bool(placed) and not judge(placed[-1], chosen) and not judge(chosen, placed[-1])
        placed.append(replace(chosen, tied_with_previous=tied))
    return placed


def _cheapest_near_best(unbeaten: list[RankedTrial], higher_is_better: bool) -> RankedTrial:
    """The cheapest (the list is in cost order) of the trials whose median is practically the
    best one's. An unseparated trial with a clearly worse median is a tie the data could not
    resolve, not a reason to recommend the slower pipeline because it is frugal."""
    sign = 1 if higher_is_better else -1
    best = max(sign * r.median for r in unbeaten)
    near = [r for r in unbeaten if sign * r.median >= best - abs(best) * COST_DECIDES_WITHIN]
    return near[0]


def _number(placed: list[RankedTrial]) -> tuple[RankedTrial, ...]:
    """Positions from 1, and tie groups that go up at every trial not tied with the previous."""
    numbered: list[RankedTrial] = []
    for position, ranked in enumerate(placed, start=1):
        group = 1 if not numbered else numbered[-1].tie_group + (not ranked.tied_with_previous)
        numbered.append(replace(ranked, position=position, tie_group=group))
    return tuple(numbered)


def _compare_best(
    ranked: tuple[RankedTrial, ...],
    trials: Sequence[TrialResult],
    objective: str,
    confidence: float,
    seed: int,
) -> tuple[Comparison, ...]:
    if not ranked:
        return ()
    best = ranked[0]
    user_batch_size = _user_batch_size(trials)
    batch_size_differs = user_batch_size is not None and best.trial.batch_size != user_batch_size
    # With a race, only raced references are compared: screening numbers are never a verdict.
    references = sorted(
        (r for r in ranked[1:] if r.trial.role is not Role.CANDIDATE and r.raced == best.raced),
        key=lambda r: _identity_order(r.trial),
    )
    return tuple(_comparison(best, reference, objective, confidence, seed, batch_size_differs)
                 for reference in references)


def _comparison(best: RankedTrial, reference: RankedTrial, objective: str, confidence: float,
                seed: int, batch_size_differs: bool) -> Comparison:
    if best.raced:
        paired = paired_speedup(best, reference, objective, confidence, seed)
        return Comparison(reference, paired.speedup, paired.low, paired.high, paired.separated,
                          batch_size_differs, paired.rounds)
    higher_is_better = objective == "throughput"
    faster, slower = (best, reference) if higher_is_better else (reference, best)
    speedup, low, high = stats.ratio_ci(faster.values, slower.values, confidence=confidence, seed=seed)
    # Dominating three repeats happens by chance one time in eight, so a claim made to the
    # user also needs the speed-up's own interval to clear 1 by a practical margin.
    significant = beats(best, reference, higher_is_better) and low > 1.0 + MIN_EFFECT
    return Comparison(reference, speedup, low, high, significant, batch_size_differs)


def _user_batch_size(trials: Sequence[TrialResult]) -> int | None:
    """Batch size of the BASELINE trial, else the NAIVE one; None when neither is known."""
    for role in (Role.BASELINE, Role.NAIVE):
        sizes = sorted(
            (t.key, t.batch_size) for t in trials if t.role is role and t.batch_size > 0
        )
        if sizes:
            return sizes[0][1]
    return None


def _cost_order(trial: TrialResult, epochs: int) -> tuple[float, float, str]:
    """Cheaper first: CPU-seconds per example over the planned epochs (a cache's fill
    included), then peak RSS, then key. An unknown cost counts as infinite, so measured thrift
    wins ties."""
    planned = stats.planned_cpu_s_per_example(trial, epochs)
    cpu = float("inf") if planned is None else planned
    rss = float("inf") if trial.peak_rss_bytes is None else float(trial.peak_rss_bytes)
    return cpu, rss, trial.key


def _race_cost(results: Sequence[TrialResult], epochs: int) -> tuple[float, float, str]:
    """A raced variant's cost: median CPU-seconds per example and peak RSS over its rounds."""
    costs = [_cost_order(r, epochs) for r in results]
    return (statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs),
            results[0].key)


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
