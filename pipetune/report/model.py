"""The numbers behind the HTML report, computed from a finished sweep. Pure; no TensorFlow.

Every figure the page shows is computed here, so the page's arithmetic is unit-tested apart
from its layout. Values are frozen dataclasses in display order with units in their names;
the renderer only formats them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipetune import stats
from pipetune.documents import diagnosis_summary
from pipetune.ranking import Comparison, RankedTrial, first_screened_position
from pipetune.report.diagnosis import DiagnosisSection, build_diagnosis
from pipetune.report.rows import (
    EffectRow,
    RankRow,
    StepBreakdown,
    UnrunRow,
    colour_role,
    effect_rows,
    median_throughput,
    parameter_split,
    rank_row,
    step_breakdown,
    time_to_train_s,
    trial_label,
    unrun_rows,
    why_unranked,
)
from pipetune.report.timelines import Timeline, timeline
from pipetune.results import Role, TrialResult, TrialState
from pipetune.space import describe
from pipetune.spec import PipelineParams

if TYPE_CHECKING:  # importing the runner pulls in Optuna; the report only reads its outcome
    from pipetune.outcome import SweepOutcome

REFERENCE_ROLES = (Role.NAIVE, Role.AUTOTUNE_DEFAULT, Role.BASELINE)
MAX_EFFECTS = 30  # a readable chart; large spaces have many value pairs, most of them small
# tf.data.Options knobs among the pipeline parameters, as make_options() sets them.
OPTION_PARAMETERS = ("deterministic", "private_threadpool_size", "map_and_batch_fusion",
                     "autotune_ram_budget_mb", "autotune_cpu_budget")


@dataclass(frozen=True, slots=True)
class ReferenceComparison:
    """The winner against one reference variant: naive, autotune-default or the user's baseline.

    ``speedup > 1`` means the winner is faster by the ranking objective; ``status`` is
    "compared", "winner" (the reference itself won) or "not ranked" (see ``reason``).
    """

    role: str
    key: str
    status: str
    reason: str = ""
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    significant: bool = False
    verdict: str = ""  # Comparison.verdict
    batch_size_differs: bool = False
    reference_time_s: float | None = None  # projected time to train the planned epochs
    time_saved_s: float | None = None  # reference_time_s minus the winner's


@dataclass(frozen=True, slots=True)
class InputBound:
    """How much of a reference's step time went to waiting for input (TF Profiler bands)."""

    role: str
    key: str
    wait_fraction: float
    band: str  # "not" (< 5 %), "moderately" (5 % to < 20 %) or "highly" (>= 20 %)
    note: str = ""  # why this reference, when it is not the user's baseline


@dataclass(frozen=True, slots=True)
class TimeSaved:
    """Projected training time of a reference and the winner over the planned epochs."""

    reference_role: str
    epochs: int
    reference_s: float
    winner_s: float

    @property
    def saved_s(self) -> float:
        return self.reference_s - self.winner_s

    @property
    def saved_fraction(self) -> float:
        return self.saved_s / self.reference_s


@dataclass(frozen=True, slots=True)
class Verdict:
    objective: str
    winner_key: str | None = None  # None: no variant completed
    winner_label: str = ""
    winner_description: str = ""
    winner_median: float | None = None  # in the objective's unit
    winner_ci_low: float | None = None
    winner_ci_high: float | None = None
    winner_throughput: float | None = None  # examples/s, median over repeats
    winner_wait_fraction: float | None = None
    tied_for_first: int = 0  # ranked variants the data cannot separate from the winner's group
    comparisons: tuple[ReferenceComparison, ...] = ()
    input_bound: InputBound | None = None
    time_saved: TimeSaved | None = None

    @property
    def user_comparison(self) -> ReferenceComparison | None:
        """The winner against the user's pipeline: the baseline if it ran, else naive."""
        usable = {c.role: c for c in self.comparisons if c.status != "not ranked"}
        return usable.get(Role.BASELINE.value) or usable.get(Role.NAIVE.value)


@dataclass(frozen=True, slots=True)
class Report:
    spec_name: str
    spec_hash: str
    mode: str
    strategy: str
    objective: str
    epochs_planned: int
    verdict: Verdict
    timelines: tuple[Timeline, ...]
    timelines_missing: tuple[tuple[str, str], ...]  # (label, why it has no timeline)
    steps: tuple[StepBreakdown, ...]
    varying_dimensions: tuple[str, ...]
    shared_parameters: tuple[tuple[str, Any], ...]
    rows: tuple[RankRow, ...]
    first_screened: int | None  # the first row measured in screening only, below the raced ones
    effects: tuple[EffectRow, ...]  # the largest MAX_EFFECTS
    effects_not_shown: int
    unrun: tuple[UnrunRow, ...]
    environment: tuple[tuple[str, str], ...]
    diagnosis: DiagnosisSection | None = None  # None: the space was listed by hand


def build_report(outcome: SweepOutcome) -> Report:
    """Everything the report shows, from a sweep's outcome (fresh or ``store.load_outcome``)."""
    ranking, epochs = outcome.ranking, outcome.spec.measure.epochs_planned
    best = ranking.best
    winner_key = best.trial.key if best else None
    varying, shared = parameter_split([r.trial for r in ranking.ranked])
    timelines, missing = build_timelines(outcome.results, best)
    effects = effect_rows(outcome.results)
    return Report(
        spec_name=outcome.spec.name, spec_hash=outcome.spec.content_hash(), mode=outcome.mode,
        strategy=outcome.strategy, objective=ranking.objective, epochs_planned=epochs,
        verdict=build_verdict(outcome), timelines=timelines, timelines_missing=missing,
        steps=tuple(step_breakdown(r, winner_key) for r in ranking.ranked),
        varying_dimensions=varying, shared_parameters=shared,
        rows=tuple(rank_row(r, varying, winner_key, epochs) for r in ranking.ranked),
        first_screened=first_screened_position(ranking.ranked),
        effects=effects[:MAX_EFFECTS], effects_not_shown=max(0, len(effects) - MAX_EFFECTS),
        unrun=unrun_rows(outcome.ranking.unranked, outcome.dropped),
        environment=environment_facts(outcome), diagnosis=build_diagnosis(diagnosis_summary(outcome)),
    )


# --------------------------------------------------------------------------- verdict


def build_verdict(outcome: SweepOutcome) -> Verdict:
    ranking, epochs = outcome.ranking, outcome.spec.measure.epochs_planned
    best = ranking.best
    if best is None:
        return Verdict(ranking.objective, input_bound=input_bound(outcome.results))
    winner = best.trial
    comparisons = reference_comparisons(outcome.results, ranking.comparisons, winner, epochs)
    return Verdict(
        objective=ranking.objective, winner_key=winner.key,
        winner_label=trial_label(winner), winner_description=describe(PipelineParams(**winner.params)),
        winner_median=best.median, winner_ci_low=best.ci_low, winner_ci_high=best.ci_high,
        winner_throughput=median_throughput(winner),
        winner_wait_fraction=stats.trial_wait_fraction(winner),
        tied_for_first=sum(r.tie_group == best.tie_group for r in ranking.ranked),
        comparisons=comparisons,
        input_bound=input_bound(outcome.results), time_saved=time_saved(comparisons, winner, epochs),
    )


def reference_comparisons(results: Sequence[TrialResult], comparisons: Sequence[Comparison],
                          winner: TrialResult, epochs: int) -> tuple[ReferenceComparison, ...]:
    """One entry per reference trial of the sweep, in the order naive, autotune, baseline."""
    by_role = {c.reference.trial.role: c for c in comparisons}
    entries = []
    for role in REFERENCE_ROLES:
        trial = _trial_with_role(results, role)
        if trial is None:
            continue  # e.g. the spec has no baseline
        if trial.key == winner.key:
            entries.append(ReferenceComparison(role.value, trial.key, "winner"))
        elif role in by_role:
            entries.append(_compared(by_role[role], winner, epochs))
        else:
            entries.append(ReferenceComparison(role.value, trial.key, "not ranked",
                                               reason=why_unranked(trial)))
    return tuple(entries)


def _compared(comparison: Comparison, winner: TrialResult, epochs: int) -> ReferenceComparison:
    reference = comparison.reference.trial
    reference_s = time_to_train_s(reference, epochs)
    return ReferenceComparison(
        reference.role.value, reference.key, "compared", speedup=comparison.speedup,
        speedup_ci_low=comparison.speedup_ci_low, speedup_ci_high=comparison.speedup_ci_high,
        significant=comparison.significant, verdict=comparison.verdict,
        batch_size_differs=comparison.batch_size_differs, reference_time_s=reference_s,
        time_saved_s=reference_s - time_to_train_s(winner, epochs),
    )


def time_saved(comparisons: Sequence[ReferenceComparison], winner: TrialResult,
               epochs: int) -> TimeSaved | None:
    """Against the user's baseline when it was ranked, else against naive."""
    compared = {c.role: c for c in comparisons if c.status == "compared"}
    for role in (Role.BASELINE.value, Role.NAIVE.value):
        if role in compared and compared[role].reference_time_s is not None:
            return TimeSaved(role, epochs, compared[role].reference_time_s,
                             time_to_train_s(winner, epochs))
    return None


def input_bound(results: Sequence[TrialResult]) -> InputBound | None:
    """Whether the user's pipeline waits for input: the baseline, or naive without one."""
    baseline = _trial_with_role(results, Role.BASELINE)
    naive = _trial_with_role(results, Role.NAIVE)
    if baseline is not None and _measured(baseline):
        chosen, note = baseline, ""
    elif naive is not None and _measured(naive):
        chosen = naive
        note = ("There is no baseline in the spec: naive stands in for it" if baseline is None
                else f"The baseline has no measurement ({why_unranked(baseline)}): naive stands in")
    else:
        return None
    fraction = stats.trial_wait_fraction(chosen)
    return InputBound(chosen.role.value, chosen.key, fraction, stats.input_bound_band(fraction), note)


def environment_facts(outcome: SweepOutcome) -> tuple[tuple[str, str], ...]:
    spec, device = outcome.spec, outcome.device
    source = _environment_source(outcome)
    env = source.environment if source else {}
    gpus = ", ".join(g.name + (f" (compute capability {g.compute_capability[0]}."
                               f"{g.compute_capability[1]})" if g.compute_capability else "")
                     for g in device.gpus)
    measure = spec.measure
    facts = [
        ("Python", str(env.get("python", "not recorded"))),
        ("TensorFlow", str(env.get("tensorflow", "not recorded"))),
        ("Keras", str(env.get("keras", "not recorded"))),
        ("Platform", str(env.get("platform", "not recorded"))),
        ("CPU", f"{device.cpu_model} ({device.cpu_cores} cores)"),
        ("Accelerator", gpus or device.accelerator_note or "none found"),
    ]
    if gpus:
        facts.append(("GPU driver", "not recorded by the sweep (see `pipetune env`)"))
    facts += [
        ("Measurement", f"{outcome.mode} mode; {measure.warmup_steps} warm-up steps, then "
                        f"{measure.repeats} repeats of {measure.steps} timed steps; "
                        f"jit_compile={env.get('jit_compile', spec.model.jit_compile)}"),
        ("Objective", f"{outcome.ranking.objective.replace('_', ' ')}, "
                      f"{measure.epochs_planned} planned epochs"),
        ("tf.data options (winner)", _options_words(source)),
        ("Search", f"{outcome.strategy}; budget {_budget(outcome):g} s; "
                   f"the sweep took {outcome.tuning_time_s:.0f} s"),
        ("RAM budget", f"{spec.resources.ram_budget_gb:g} GiB"),
        ("Spec", f"{spec.name} (hash {spec.content_hash()})"),
    ]
    return tuple(facts)


# --------------------------------------------------------------------------- small helpers


def _measured(trial: TrialResult) -> bool:
    return trial.state is TrialState.COMPLETE and bool(trial.repeats)


def _trial_with_role(results: Sequence[TrialResult], role: Role) -> TrialResult | None:
    matching = sorted((t for t in results if t.role is role), key=lambda t: (not _measured(t), t.key))
    return matching[0] if matching else None


def build_timelines(results: Sequence[TrialResult], best: RankedTrial | None
                    ) -> tuple[tuple[Timeline, ...], tuple[tuple[str, str], ...]]:
    """Timelines of the winner and each other reference; (label, reason) for those without data."""
    chosen = [best.trial] if best else []
    for role in REFERENCE_ROLES:
        trial = _trial_with_role(results, role)
        if trial is not None and all(trial.key != c.key for c in chosen):
            chosen.append(trial)
    winner_key = best.trial.key if best else None
    timelines, missing = [], []
    for trial in chosen:
        if trial.repeats or trial.monitor.samples:
            timelines.append(timeline(trial, trial_label(trial), colour_role(trial, winner_key)))
        else:
            missing.append((trial_label(trial), why_unranked(trial)))
    return tuple(timelines), tuple(missing)


def _environment_source(outcome: SweepOutcome) -> TrialResult | None:
    """The winner, else any trial that recorded its environment."""
    best = outcome.ranking.best
    if best is not None and best.trial.environment:
        return best.trial
    return next((t for t in outcome.results if t.environment), None)


def _options_words(trial: TrialResult | None) -> str:
    if trial is None:
        return "not recorded"
    words = {"private_threadpool_size": {0: "0 (tf.data's shared pool)"},
             "autotune_ram_budget_mb": {0: "0 (tf.data's default)"},
             "autotune_cpu_budget": {0: "0 (tf.data's default: the core count)"}}
    parts = [f"{name}={words.get(name, {}).get(trial.params.get(name), trial.params.get(name))}"
             for name in OPTION_PARAMETERS if name in trial.params]
    return ", ".join(parts) or "not recorded"


def _budget(outcome: SweepOutcome) -> float:
    """The budget in force: ``--budget`` when given, else the spec's (older results lack it)."""
    return outcome.budget_s if outcome.budget_s is not None else outcome.spec.search.budget_s
