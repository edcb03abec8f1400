"""The search: which variants to measure, in what order, for how long; stored in an Optuna study.

Strategies:
  grid     every valid variant, full bursts.
  halving  successive halving: every variant gets a short burst (rung 0), the best third
           (by median) a full one (rung 1). Synchronous, so every worker promotes the same set.
  tpe      Optuna's TPE sampler proposes variants until the budget is spent.
  auto     grid when the valid space fits the budget, halving otherwise.

The references are measured in full, first, but those ``unscreened`` (the final race measures
them, race.py). The candidates follow in the order the sweep's diagnosis predicts best first
(predict.py), or a seeded random order without one; a budget too small for all measures the
first of them, at least ``MIN_SCREENED``.

Each measurement is claimed in the study's database before it runs (``claims.py``), so
workers sharing one storage URL split the work and never measure a variant twice; every
finished measurement is stored as an Optuna trial with the raw result attached, so
``--resume`` loses and repeats nothing.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import optuna

from pipetune import stats, storage
from pipetune.claims import ClaimBoard, retry_schema_race
from pipetune.dimensions import NAMES
from pipetune.earlystop import stop_on_repeated_failure
from pipetune.results import TrialResult, TrialState
from pipetune.serialize import trial_from_json, trial_to_json
from pipetune.space import Variant

SHORT_RUNG, FULL_RUNG = 0, 1
RACE_RUNG = 2  # the final race's measurements (race.py), one per variant and round
SHORT_FRACTION = 1 / 4  # a short burst has a quarter of the full steps
PROMOTE_FRACTION = 1 / 3

# (variant, steps, the best objective value so far or None) -> result; a variant far behind
# that best runs one repeat (trial_request.FAR_BEHIND).
Measure = Callable[[Variant, int, float | None], TrialResult]


@dataclass(frozen=True, slots=True)
class SearchEvent:
    """What the search tells a progress display: a plan, or a measurement starting or ending."""

    kind: str  # "planned" | "start" | "end"
    variant: Variant | None = None
    rung: int = 1
    planned: int = 0  # for "planned": how many measurements this run expects in all


@dataclass
class SearchState:
    """What one worker knows while it searches. Reloaded from storage at every decision."""

    study: optuna.Study
    board: ClaimBoard
    measure: Measure
    full_steps: int
    deadline: float
    objective: str
    epochs: int
    seed: int = 0
    on_event: Callable[[SearchEvent], None] = lambda event: None
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was not run

    def measured(self) -> dict[tuple[str, int], float | None]:
        """Objective value of every stored measurement by (variant key, rung); cheap: the raw
        results are not parsed (None for a failed one)."""
        return self.board.stored(self.measured_once, "reading the study")

    def measured_once(self) -> dict[tuple[str, int], float | None]:
        """``measured()`` without retries."""
        return {(t.user_attrs["variant_key"], t.user_attrs["rung"]): t.value
                for t in self.study.get_trials(deepcopy=False)
                if "result" in t.user_attrs and t.user_attrs["rung"] != RACE_RUNG}

    def results(self) -> dict[tuple[str, int], TrialResult]:
        """Every stored measurement, by (variant key, rung)."""
        return stored_results(self.board.stored(lambda: self.study.get_trials(deepcopy=False),
                                                "reading the study"))


def stored_results(trials: list[optuna.trial.FrozenTrial]) -> dict[tuple[str, int], TrialResult]:
    """The search's measurements stored in a study's trials, by (variant key, rung); the final
    race's rounds are read by ``race.race_results``."""
    found = {}
    for trial in trials:
        text = trial.user_attrs.get("result")
        if text and trial.user_attrs["rung"] != RACE_RUNG:
            found[(trial.user_attrs["variant_key"], trial.user_attrs["rung"])] = trial_from_json(text)
    return found


def open_study(storage_url: str, study_name: str, objective: str,
               retry: storage.Retry = storage.Retry()) -> optuna.Study:
    direction = "maximize" if objective == "throughput" else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Through an outage too: a worker whose start-up (the diagnosis) ran longer than another's
    # first trials can meet one here, as a traceback before this wrapping.
    return storage.call(lambda: retry_schema_race(lambda: optuna.create_study(
        storage=optuna.storages.RDBStorage(storage_url, engine_kwargs=storage.engine_options(storage_url)),
        study_name=study_name, direction=direction, load_if_exists=True)), storage_url, "opening the study", retry)


MIN_SCREENED = 3  # candidates measured even past the budget, as the references are


def run(state: SearchState, strategy: str, references: list[Variant], candidates: list[Variant],
        reserve_trials: int = 0, predicted: Mapping[str, float] | None = None,
        unscreened: Collection[str] = ()) -> str:
    """Measure the references, then the candidates by ``strategy``; ``reserve_trials`` full
    trials of the budget are kept for what follows the search (the final race), and the
    references keyed in ``unscreened`` are left to it.

    ``predicted``: each candidate's predicted speed-up over autotune-default (predict.py),
    with ``candidates`` given best predicted first; a budget that fits only part of the space
    measures the best predicted, at least ``MIN_SCREENED`` of them. None: no prediction, a
    seeded random sample.

    Returns what was run, in words: the strategy, and the part of the space when the budget
    fitted only part of it (e.g. "grid over the 9 of 23 variants predicted best").
    """
    reference_keys = {v.key for v in references}
    candidates = [v for v in candidates if v.key not in reference_keys]
    screened = [v for v in references if v.key not in unscreened]
    state.on_event(SearchEvent("planned", planned=len(screened)))
    _measure_all(state, screened, FULL_RUNG, ignore_budget=True)
    order = candidates if predicted is not None else _seeded_order(candidates, state.seed)
    sample, guaranteed = "", 0
    if strategy == "auto":
        costs = _costs_so_far(state)
        reserve_s = reserve_trials * (costs.overhead_s + costs.full_burst_s)
        plan = plan_search(len(order), costs.overhead_s, costs.full_burst_s,
                           state.deadline - time.time() - reserve_s, costs.short_fraction)
        strategy, count = plan.strategy, plan.variants
        if predicted is not None:
            count = guaranteed = max(count, min(MIN_SCREENED, len(order)))
        which = (f"the {count} of {len(order)} variants predicted best" if predicted is not None
                 else f"a budget sample of {count} of {len(order)} variants")
        for variant in order[count:]:
            gain = f"; predicted {predicted[variant.key]:.2f}x autotune-default" if predicted else ""
            state.skipped.setdefault(variant.key, f"not run: the budget fits only {which}{gain}")
        if count < len(order):
            sample = f" over {which}"
        order = order[:count]
    promoted = round(len(order) * PROMOTE_FRACTION) if strategy == "halving" else 0
    state.on_event(SearchEvent("planned", planned=len(screened) + len(order) + promoted))
    if strategy == "grid":
        _measure_all(state, order, FULL_RUNG, guaranteed=guaranteed)
    elif strategy == "halving":
        _halving(state, order, guaranteed)
    elif strategy == "tpe":
        _tpe(state, order, references)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return strategy + sample


@dataclass(frozen=True, slots=True)
class SearchPlan:
    strategy: str  # grid | halving
    variants: int  # how many candidates fit the budget
    estimated_s: float


def plan_search(candidates: int, overhead_s: float, full_burst_s: float, remaining_s: float,
                short_fraction: float = SHORT_FRACTION) -> SearchPlan:
    """Pick the strategy that covers the most candidates within the remaining budget.

    A trial costs a fixed overhead (a fresh process, TensorFlow's import, tracing) plus its
    burst. A short burst saves only burst time (none when epochs are short enough to be timed
    whole: ``short_fraction`` 1), so when the overhead dominates, halving costs more than grid
    and grid wins; when bursts dominate, halving covers more of the space.
    """
    full = overhead_s + full_burst_s
    short = overhead_s + full_burst_s * short_fraction
    per_variant = {"grid": full, "halving": short + full * PROMOTE_FRACTION}
    best = min(per_variant, key=lambda name: (per_variant[name], name != "grid"))
    fits = int(max(0.0, remaining_s) // per_variant[best])
    if candidates * full <= remaining_s:
        return SearchPlan("grid", candidates, candidates * full)
    count = min(candidates, max(fits, 1))
    return SearchPlan(best, count, count * per_variant[best])


@dataclass(frozen=True, slots=True)
class TrialCosts:
    overhead_s: float  # a trial's fixed cost: process, TensorFlow, tracing
    full_burst_s: float
    short_fraction: float  # a short burst's share of a full one (1: epochs are timed whole)


def _costs_so_far(state: SearchState) -> TrialCosts:
    """What a trial costs, as the median full trial so far took (one slow trial, a cache
    fill say, does not shrink the plan)."""
    walls, bursts, whole = [], [], False
    for (_, rung), result in state.results().items():
        if rung == FULL_RUNG and result.repeats:
            walls.append(result.trial_wall_s or 0.0)
            bursts.append(sum(r.wall_ns for r in result.repeats) / 1e9 + (result.fill_ns or 0) / 1e9)
            whole = whole or result.whole_epochs
    if not walls:
        return TrialCosts(10.0, 10.0, SHORT_FRACTION)
    burst = statistics.median(bursts)
    return TrialCosts(max(0.0, statistics.median(walls) - burst), burst,
                      1.0 if whole else SHORT_FRACTION)


def _measure_all(state: SearchState, variants: list[Variant], rung: int,
                 ignore_budget: bool = False, guaranteed: int = 0) -> None:
    """Claim and measure every variant not yet measured at ``rung`` (the first ``guaranteed``
    of them, or all with ``ignore_budget``, even past the deadline); then wait for other workers."""
    steps = state.full_steps if rung == FULL_RUNG else max(3, round(state.full_steps * SHORT_FRACTION))
    for index, variant in enumerate(variants):
        if not ignore_budget and index >= guaranteed and time.time() > state.deadline:
            done = state.measured()
            for rest in variants:
                if (rest.key, rung) not in done:
                    state.skipped.setdefault(rest.key, "not run: the time budget was spent")
            return
        measure_one(state, variant, rung, steps)
    _wait_for_others(state, variants, rung, steps)


def claim_key(variant_key: str, race_round: int | None = None) -> str:
    """What a measurement is claimed as: the variant, or the variant in one round of the race."""
    return variant_key if race_round is None else f"{variant_key}#race{race_round}"


def measure_one(state: SearchState, variant: Variant, rung: int, steps: int,
                race_round: int | None = None) -> bool:
    """Claim, measure in a fresh process and store one measurement; False if another worker
    has it (or stored it already). ``race_round``: a round of the final race (race.py)."""
    claim = claim_key(variant.key, race_round)
    if not state.board.try_claim(claim, rung):
        return False
    if (variant.key, rung, race_round) in _stored_ids(state):  # by a worker that died before marking
        state.board.mark_done(claim, rung)
        return False
    from pipetune.claims import Claim

    state.board.beat_for(Claim(claim, rung))
    state.on_event(SearchEvent("start", variant, rung))
    started = time.time()
    try:
        result = state.measure(variant, steps, best_so_far(state))
    finally:
        state.board.beat_for(None)
    result = replace(result, role=variant.role, rung=rung, trial_wall_s=time.time() - started,
                     race_round=race_round)
    _store(state, variant, rung, result)
    state.board.mark_done(claim, rung)
    state.on_event(SearchEvent("end", variant, rung))
    if result.state is TrialState.FAILED and race_round is None:
        stop_on_repeated_failure(state.study)  # raises SweepStopped: the rest would fail alike
    return True


def best_so_far(state: SearchState) -> float | None:
    """The best objective value stored by any measurement (screening or race), None before the
    first: the study's best value (its direction is the objective's), one query, not a read of
    every trial."""
    def read() -> float | None:
        try:
            return state.study.best_value
        except ValueError:  # no completed measurement yet
            return None
    return state.board.stored(read, "reading the study")


def _stored_ids(state: SearchState, retried: bool = True) -> set[tuple[str, int, int | None]]:
    """(variant key, rung, race round) of every stored measurement."""
    def read() -> set[tuple[str, int, int | None]]:
        return {(t.user_attrs["variant_key"], t.user_attrs["rung"], t.user_attrs.get("race_round"))
                for t in state.study.get_trials(deepcopy=False) if "result" in t.user_attrs}
    return state.board.stored(read, "reading the study") if retried else read()


def _store(state: SearchState, variant: Variant, rung: int, result: TrialResult) -> None:
    attrs = {"variant_key": variant.key, "rung": rung, "race_round": result.race_round,
             "role": variant.role.value, "state": result.state.value, "reason": result.reason,
             "result": trial_to_json(result)}
    value = objective_value(state, result)
    trial_state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
    trial = optuna.trial.create_trial(state=trial_state, value=value, user_attrs=attrs)
    identity = (variant.key, rung, result.race_round)
    tried = False

    def add_once() -> None:
        nonlocal tried
        # A retry after a commit whose answer the lost connection swallowed must not store twice.
        if tried and identity in _stored_ids(state, retried=False):
            return
        tried = True
        state.study.add_trial(trial)

    state.board.stored(add_once, "storing a finished measurement")


def objective_value(state: SearchState, result: TrialResult) -> float | None:
    """The value stored with a measurement (median over its repeats); None when it failed."""
    if result.state is not TrialState.COMPLETE or not result.repeats:
        return None
    return stats.trial_objective_value(result, state.objective, state.epochs)


def _wait_for_others(state: SearchState, variants: list[Variant], rung: int, steps: int) -> None:
    """Block until every claimed variant of this rung is done; take over those of dead workers."""
    pending = [v for v in variants if v.key not in state.skipped]
    while pending:
        pending = [v for v in pending if not state.board.is_done(v.key, rung)
                   and not measure_one(state, v, rung, steps)]
        if pending:
            time.sleep(1.0)


def _halving(state: SearchState, order: list[Variant], guaranteed: int = 0) -> None:
    _measure_all(state, order, SHORT_RUNG, guaranteed=guaranteed)
    values = state.measured()
    scored = [(v, values[(v.key, SHORT_RUNG)]) for v in order if (v.key, SHORT_RUNG) in values]
    measured = [(v, value) for v, value in scored if value is not None]
    better_first = sorted(measured, key=lambda item: (item[1], item[0].key),
                          reverse=state.objective == "throughput")
    keep = max(1, round(len(better_first) * PROMOTE_FRACTION))
    promoted = [v for v, _ in better_first[:keep]]
    _measure_all(state, promoted, FULL_RUNG)


def _tpe(state: SearchState, order: list[Variant], references: Sequence[Variant] = ()) -> None:
    """Optuna's TPE over the dimensions that vary, one categorical parameter each.

    TPE learns which value of each dimension does well. A proposal that is not a valid variant
    is told as failed; one already measured (a reference's point too) is told its known value;
    a run of repeats (TPE converged on a small space) falls back to the next unmeasured variant
    in the seeded order.
    """
    dims = [name for name in NAMES if len({repr(getattr(v.params, name)) for v in order}) > 1]
    choices = {name: sorted({repr(getattr(v.params, name)) for v in order}) for name in dims}
    by_combo = variants_by_combo(order, references, dims, choices)
    distributions = {d: optuna.distributions.CategoricalDistribution(choices[d]) for d in dims}
    local = tpe_study(state, by_combo, dims, distributions)
    misses = 0  # proposals in a row that were invalid or already measured
    while time.time() < state.deadline and (pending := _unmeasured(state, order)):
        trial = local.ask(distributions)
        variant = by_combo.get(tuple(trial.params[d] for d in dims))
        measured = state.measured()
        if variant is not None and (variant.key, FULL_RUNG) not in measured:
            misses = 0
            _tell(local, trial, _measure_full(state, variant))
            continue
        _tell(local, trial, measured.get((variant.key, FULL_RUNG)) if variant else None)
        misses += 1
        if misses >= 10:  # TPE keeps proposing what it knows: measure the next in seeded order
            misses, variant = 0, pending[0]
            local.enqueue_trial({d: repr(getattr(variant.params, d)) for d in dims})
            _tell(local, local.ask(distributions), _measure_full(state, variant))
    for variant in _unmeasured(state, order):
        state.skipped.setdefault(variant.key, "not run: not proposed by TPE within the budget")


def variants_by_combo(order: list[Variant], references: Sequence[Variant], dims: list[str],
                      choices: dict[str, list[str]]) -> dict[tuple[str, ...], Variant]:
    """The variant at each point TPE can propose: the candidates, and the references whose
    values lie in the space (a candidate wins a shared point)."""
    def combo(variant: Variant) -> tuple[str, ...]:
        return tuple(repr(getattr(variant.params, d)) for d in dims)

    in_space = [r for r in references if all(value in choices[d] for d, value in zip(dims, combo(r)))]
    return {**{combo(r): r for r in in_space}, **{combo(v): v for v in order}}


def tpe_study(state: SearchState, by_combo: dict[tuple[str, ...], Variant], dims: list[str],
              distributions: dict[str, optuna.distributions.BaseDistribution]) -> optuna.Study:
    """TPE's own in-memory study, told every point already measured (so a resumed sweep's TPE
    starts from what the stored study knows, not from nothing)."""
    local = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=state.seed),
                                direction=state.study.direction)
    measured = state.measured()
    for combo, variant in by_combo.items():
        if (variant.key, FULL_RUNG) in measured:
            value = measured[(variant.key, FULL_RUNG)]
            local.add_trial(optuna.trial.create_trial(
                params=dict(zip(dims, combo)), distributions=distributions, value=value,
                state=optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL))
    return local


def _measure_full(state: SearchState, variant: Variant) -> float | None:
    measure_one(state, variant, FULL_RUNG, state.full_steps)
    return state.measured().get((variant.key, FULL_RUNG))


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None) -> None:
    if value is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, value)


def _unmeasured(state: SearchState, order: list[Variant]) -> list[Variant]:
    done = state.measured()
    return [v for v in order if (v.key, FULL_RUNG) not in done]


def _seeded_order(variants: list[Variant], seed: int) -> list[Variant]:
    order = sorted(variants, key=lambda v: v.key)
    random.Random(seed).shuffle(order)
    return order


def final_results(state: SearchState) -> list[TrialResult]:
    """One result per variant: the full burst if it had one; a short-only one is PRUNED."""
    return finalize(state.results(), state.skipped)


def finalize(results: dict[tuple[str, int], TrialResult], skipped: dict[str, str]) -> list[TrialResult]:
    """``final_results`` of stored measurements; ``skipped``: why a variant was not run further."""
    full = {key: r for (key, rung), r in results.items() if rung == FULL_RUNG}
    out = list(full.values())
    for (key, rung), result in results.items():
        if rung == SHORT_RUNG and key not in full:
            # Promoted, but the budget ran out before its full burst: say so, not "not in the best third".
            why = (f"promoted after the short burst, but the full burst was {skipped[key]}"
                   if key in skipped else
                   "stopped after the short burst (successive halving): not in the best third")
            reason = result.reason or why
            state_ = TrialState.PRUNED if result.state is TrialState.COMPLETE else result.state
            out.append(replace(result, state=state_, reason=reason))
    return out


def skipped_results(state: SearchState, variants: dict[str, Variant]) -> list[TrialResult]:
    """The variants never measured at any rung (one with a stored result is in ``final_results``)."""
    measured = {key for key, _ in state.measured()}
    return [TrialResult(key=key, role=variants[key].role, params=variants[key].params.model_dump(),
                        state=TrialState.SKIPPED, reason=reason, batch_size=variants[key].params.batch_size)
            for key, reason in sorted(state.skipped.items()) if key in variants and key not in measured]
