"""The final race: the verdict comes from a head-to-head, never from the screening numbers.

After the search, the leaders are measured again beside the references in interleaved rounds,
each variant in a fresh process, in a rotating order (ABCD, then BCDA, ...), so every round
sees every variant under the same machine conditions. A variant's value in a round is its
objective (the median over that measurement's repeats); speed-ups are paired within rounds
and bootstrapped over rounds (``ranking.paired_speedup``).

Why a race: the screening numbers both select the best and would measure its speed-up, so the
winner's number is biased upwards (selection bias); and screening measurements of different
variants happen minutes apart, so machine drift enters every comparison.

Who races: every candidate whose screening interval overlaps the leader's, padded to the top
``MIN_CANDIDATES`` with candidates screened close enough to the best candidate to tie it in a
race (``pad_band``: how far apart this sweep's own screening noise can put two equal variants;
at most ``MAX_CANDIDATES``), plus naive, autotune-default and the user's baseline (of the
references only autotune-default is also screened: ``race_only``). The race stops when the
leader is separated from the runner-up, or at a round cap from the budget (at least
``MIN_ROUNDS``, at most ``MAX_ROUNDS``). Every measurement is claimed and stored in the study
(rung ``RACE_RUNG``, with its round), so ``--resume`` keeps the rounds already run and several
workers can share a round.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna

from pipetune import ranking
from pipetune.ranking import PairedSpeedup, RankedTrial, Ranking
from pipetune.results import Role, TrialResult, TrialState
from pipetune.search import FULL_RUNG, RACE_RUNG, SearchEvent, SearchState, claim_key, measure_one
from pipetune.serialize import trial_from_json
from pipetune.stats import speedup_of
from pipetune.space import Variant

MIN_ROUNDS = ranking.MIN_ROUNDS_TO_CLAIM  # a race that cannot claim anything is not run
MAX_ROUNDS = 6
MIN_CANDIDATES = 3
MAX_CANDIDATES = 5  # beyond the top few, overlapping candidates are left to the screening
# Padding races runners-up whose screening interval missed the leader's by a little: one
# screening's interval (its repeats, in one process) is narrower than the spread between
# processes, and a second sweep's leader must be found tied with this one's. How far apart two
# equal variants can screen grows with the sweep's noise: over 32 stored sweeps of the
# benchmark, a runner-up's screened gap to the best (as a log ratio) moved by up to 2.8x the
# sweep's largest repeat spread (relative range) between screening and race. So a candidate
# races when its gap is within exp(PAD_NOISE_FACTOR x that spread), never beyond PAD_WITHIN
# (workload 8 raced one screened 7x slower, three rounds of its slow trials) and always within
# PAD_FLOOR (the steadiest workloads still moved by up to 6% between two processes).
PAD_NOISE_FACTOR = 3.0
PAD_FLOOR = 1.2
PAD_WITHIN = 1.5


@dataclass(frozen=True, slots=True)
class RaceDecision:
    """Where a race stands: the best median, the second, and whether the first is separated."""

    leader: str | None
    runner_up: str | None
    speedup: PairedSpeedup | None  # the leader over the runner-up

    @property
    def separated(self) -> bool:
        return self.speedup is not None and self.speedup.separated


def decide(scored: Sequence[RankedTrial], objective: str) -> RaceDecision:
    """The stopping rule, pure: is the best median's paired speed-up over the second's lower
    bound above 1 + MIN_EFFECT (over at least MIN_ROUNDS rounds)?"""
    higher_is_better = objective == "throughput"
    order = sorted(scored, key=lambda r: (-r.median if higher_is_better else r.median, r.trial.key))
    if len(order) < 2:
        return RaceDecision(order[0].trial.key if order else None, None, None)
    leader, runner_up = order[0], order[1]
    return RaceDecision(leader.trial.key, runner_up.trial.key,
                        ranking.paired_speedup(leader, runner_up, objective))


def decide_values(values: Mapping[str, Sequence[float]], objective: str) -> RaceDecision:
    """``decide`` on bare numbers: variant key -> its value in rounds 0, 1, 2, ..."""
    scored = []
    for key, per_round in values.items():
        trial = TrialResult(key=key, role=Role.CANDIDATE, params={}, state=TrialState.COMPLETE)
        median = statistics.median(per_round)
        scored.append(RankedTrial(trial, 0, median, median, median, False, 0, tuple(per_round),
                                  rounds=tuple(range(len(per_round)))))
    return decide(scored, objective)


def race_only(references: Sequence[Variant]) -> set[str]:
    """Keys of the references the search leaves to the race: all but autotune-default.

    A screening of theirs would add a fourth number to the three rounds they race anyway, and
    naive's is often a sweep's slowest trial (18.6 s of workload 8's 140 s of tuning, 6.5 s of
    workload 5's 79 s). Autotune-default is still screened first: the search needs a trial's
    cost before it plans, and one completed trial before a run of failing candidates can be
    read as a broken spec (earlystop.py); a baseline that is autotune-default's point is
    screened as it."""
    autotune = {v.key for v in references if v.role is Role.AUTOTUNE_DEFAULT}
    return {v.key for v in references if v.role is not Role.CANDIDATE} - autotune


def racers(screening: Ranking, unscreened: Sequence[str] = ()) -> list[str]:
    """Keys of the variants to race: the leading candidates and the references that have
    numbers, in screening order, then the ``unscreened`` references."""
    ranked = screening.ranked
    chosen: list[RankedTrial] = []
    if ranked:
        leader, band = ranked[0], pad_band(ranked)
        candidates = [r for r in ranked if r.trial.role is Role.CANDIDATE]
        chosen = [r for i, r in enumerate(candidates)  # the best candidate (i = 0) always races
                  if i == 0 or _overlaps(r, leader)
                  or (i < MIN_CANDIDATES and _near(candidates[0], r, screening.objective, band))][:MAX_CANDIDATES]
    screened = [r.trial.key for r in ranked if r in chosen or r.trial.role is not Role.CANDIDATE]
    keys = [*screened, *(key for key in unscreened if key not in screened)]
    return keys if len(keys) >= 2 else []


def _overlaps(a: RankedTrial, b: RankedTrial) -> bool:
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def pad_band(screened: Sequence[RankedTrial]) -> float:
    """How many times slower than the best a candidate may screen and still be padded into the
    race: exp(PAD_NOISE_FACTOR x the largest relative range of one trial's repeats), within
    [PAD_FLOOR, PAD_WITHIN]; PAD_WITHIN when no trial has two repeats (no noise measured)."""
    spreads = [(max(r.values) - min(r.values)) / abs(r.median)
               for r in screened if len(r.values) > 1 and r.median]
    if not spreads:
        return PAD_WITHIN
    return min(PAD_WITHIN, max(PAD_FLOOR, math.exp(PAD_NOISE_FACTOR * max(spreads))))


def _near(best: RankedTrial, other: RankedTrial, objective: str, band: float) -> bool:
    """``other`` screened within ``band`` of ``best``'s median."""
    (speedup,) = speedup_of([best.median], [other.median], objective)
    return speedup <= band


def rotation(keys: Sequence[str], round_: int) -> list[str]:
    """Round r's order: the keys rotated by r (ABCD, BCDA, CDAB, ...)."""
    shift = round_ % len(keys) if keys else 0
    return [*keys[shift:], *keys[:shift]]


def reserve_trials(references: int) -> int:
    """Full trials a sweep keeps of its budget for the race: its minimum rounds of the
    references and the top candidates."""
    return MIN_ROUNDS * (references + MIN_CANDIDATES)


def affordable(keys: Sequence[str], variants: Mapping[str, Variant], racers_fit: float) -> list[str]:
    """The racers a budget pays ``MIN_ROUNDS`` rounds of (``racers_fit`` of them): every
    reference, then the leading candidates in screening order; never fewer than the top
    ``MIN_CANDIDATES`` (a verdict needs the runners-up beside the leader, however tight the
    budget: without them a second sweep's leader could not be found tied with this one's)."""
    references = [k for k in keys if variants[k].role is not Role.CANDIDATE]
    candidates = [k for k in keys if variants[k].role is Role.CANDIDATE]
    kept = set(references) | set(candidates[:max(MIN_CANDIDATES, int(racers_fit) - len(references))])
    return [k for k in keys if k in kept]


def round_cap(round_cost_s: float, remaining_s: float) -> int:
    """Rounds the remaining budget pays for, never fewer than MIN_ROUNDS nor more than MAX_ROUNDS."""
    fits = int(max(0.0, remaining_s) // round_cost_s) if round_cost_s > 0 else MAX_ROUNDS
    return max(MIN_ROUNDS, min(MAX_ROUNDS, fits))


def run(state: SearchState, variants: Mapping[str, Variant], screening: Ranking,
        unscreened: Sequence[str] = ()) -> list[TrialResult]:
    """Race the leaders and the references of ``screening`` and the ``unscreened``
    references; returns every race measurement."""
    cost_s, remaining_s = _trial_cost_s(state), state.deadline - time.time()
    keys = affordable([key for key in racers(screening, unscreened) if key in variants], variants,
                      remaining_s // (MIN_ROUNDS * cost_s) if cost_s > 0 else len(variants))
    if len(keys) < 2:
        return []
    cap = round_cap(len(keys) * cost_s, remaining_s)
    state.on_event(SearchEvent("planned", planned=len(state.measured()) + cap * len(keys)))
    round_s = len(keys) * cost_s
    for round_ in range(cap):
        so_far = race_results(state)  # one read of the study a round
        # An unscreened reference that failed has no number to race with: it failed as a
        # screening would have, and its failure stays in the race's records.
        keys = [k for k in keys if k not in _failed_unscreened(so_far, unscreened)]
        scored = ranking.race_scores(so_far, [], state.objective, state.epochs)
        if len(keys) < 2 or decide(scored, state.objective).separated:
            break
        if round_ >= MIN_ROUNDS and time.time() + round_s > state.deadline:
            break  # the cap came from screened trials' cost; the last round's own cost says more
        started = time.time()
        for key in rotation(keys, round_):
            _measure_round(state, variants[key], round_)
        _wait_for_round(state, [variants[k] for k in keys], round_)
        round_s = time.time() - started
    return race_results(state)


def with_race_records(screened: Sequence[TrialResult], raced: Sequence[TrialResult]) -> list[TrialResult]:
    """A sweep's results: the screened ones, and for each variant measured in the race only
    (``race_only``), its first round's measurement as its record (a failed one with its reason)."""
    have = {r.key for r in screened}
    firsts: dict[str, TrialResult] = {}
    for result in sorted(raced, key=lambda r: r.race_round or 0):
        if result.key not in have:
            firsts.setdefault(result.key, result)
    return [*screened, *firsts.values()]


def _failed_unscreened(raced: Sequence[TrialResult], unscreened: Sequence[str]) -> set[str]:
    """The unscreened references whose race measurements so far all failed."""
    results = [r for r in raced if r.key in unscreened]
    return {r.key for r in results} - {r.key for r in results if r.state is TrialState.COMPLETE}


def race_results(state: SearchState) -> list[TrialResult]:
    """Every stored race measurement, ordered by round and key (read with the storage's retries)."""
    return stored_race(state.board.stored(lambda: state.study.get_trials(deepcopy=False), "reading the study"))


def stored_race(trials: Sequence[optuna.trial.FrozenTrial]) -> list[TrialResult]:
    """The race measurements among a study's trials, ordered by round and key."""
    found = [trial_from_json(t.user_attrs["result"]) for t in trials
             if t.user_attrs.get("rung") == RACE_RUNG and t.user_attrs.get("result")]
    return sorted(found, key=lambda r: (r.race_round or 0, r.key))


def _trial_cost_s(state: SearchState) -> float:
    """Mean wall time of a full trial so far (process start, TensorFlow, burst)."""
    walls = [r.trial_wall_s or 0.0 for (_, rung), r in state.results().items() if rung == FULL_RUNG]
    return sum(walls) / len(walls) if walls else 10.0


def _measure_round(state: SearchState, variant: Variant, round_: int) -> bool:
    """One variant's measurement of one round, in a fresh process, claimed and stored."""
    return measure_one(state, variant, RACE_RUNG, state.full_steps, race_round=round_)


def _wait_for_round(state: SearchState, variants: list[Variant], round_: int) -> None:
    """A round ends when every worker's measurement of it is stored; take over dead workers'."""
    pending = variants
    while pending:
        pending = [v for v in pending if not state.board.is_done(claim_key(v.key, round_), RACE_RUNG)
                   and not _measure_round(state, v, round_)]
        if pending:
            time.sleep(1.0)


def rounds_run(results: Sequence[TrialResult]) -> int:
    """How many rounds a race ran."""
    return len({r.race_round for r in results})

