"""A sweep as documents: the rows of ``results.csv``, and ``results.json`` / the ``--json`` document.

Pure: nothing here writes a file (``outputs.py`` does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipetune import predict, stats
from pipetune.ranking import RankedTrial
from pipetune.results import TrialResult, TrialState
from pipetune.serialize import trial_to_dict
from pipetune.space import describe
from pipetune.spec import PipelineParams
from pipetune.outcome import SweepOutcome

# 2: "diagnosis"; 3: every sweep's diagnosis (null only without one), "pick_predicted_rate";
# 4: a trial's "cut_short"
SCHEMA_VERSION = 4


def trial_metrics(result: TrialResult, epochs: int) -> dict[str, Any]:
    """The per-trial numbers shown everywhere (CSV, JSON, terminal); None when not measured."""
    if result.state is not TrialState.COMPLETE or not result.repeats:
        return dict.fromkeys(METRIC_NAMES)
    # The projected time's parts: start-up + fill + boundary x epochs + steady epoch x the rest.
    parts = stats.objective_parts(result, epochs)
    return {
        "throughput_median": stats.median_iqr(stats.repeat_throughputs(result))[0],
        "input_wait_fraction": stats.trial_wait_fraction(result),
        "time_to_train_s": parts.time_to_train_s, "startup_s": parts.startup_s,
        "fill_s": parts.fill_s, "boundary_s": parts.boundary_s,
        "steady_epoch_s": parts.steady_epoch_s, "whole_epochs": result.whole_epochs,
        "cpu_s_per_example": result.cpu_s_per_example,
    }


METRIC_NAMES = ("throughput_median", "input_wait_fraction", "time_to_train_s", "startup_s", "fill_s",
                "boundary_s", "steady_epoch_s", "whole_epochs", "cpu_s_per_example")


def race_rows(outcome: SweepOutcome) -> list[dict[str, Any]]:
    """One row per measurement of the final race: the numbers the verdict comes from."""
    epochs = outcome.spec.measure.epochs_planned
    return [{"key": r.key, "role": r.role.value, "round": r.race_round, "state": r.state.value,
             "reason": r.reason, **trial_metrics(r, epochs)} for r in outcome.race]


def result_rows(outcome: SweepOutcome) -> list[dict[str, Any]]:
    ranked = {r.trial.key: r for r in outcome.ranking.ranked}
    rows = [_row(result, ranked.get(result.key), outcome.spec.measure.epochs_planned)
            for result in outcome.results]
    for dropped in outcome.dropped:
        rows.append({"key": dropped.key, "role": "candidate", "state": "skipped",
                     "reason": dropped.reason, "description": describe(dropped.params),
                     **{f"param.{k}": v for k, v in dropped.params.model_dump().items()}})
    return rows


def _row(result: TrialResult, ranked: RankedTrial | None, epochs: int) -> dict[str, Any]:
    params = PipelineParams(**result.params)
    return {
        "key": result.key, "role": result.role.value, "state": result.state.value,
        "reason": result.reason, "description": describe(params),
        "rank": ranked.position if ranked else None,
        "tie_group": ranked.tie_group if ranked else None,
        "objective_median": ranked.median if ranked else None,
        "objective_ci_low": ranked.ci_low if ranked else None,
        "objective_ci_high": ranked.ci_high if ranked else None,
        **trial_metrics(result, epochs),
        "repeats": len(result.repeats), "cut_short": result.cut_short, "steps_per_repeat": result.budget_steps,
        "rung": result.rung,
        "cpu_percent": result.cpu_percent, "peak_rss_bytes": result.peak_rss_bytes,
        "gpu_memory_bytes": result.gpu_memory_bytes,
        "trial_wall_s": result.trial_wall_s,
        **{f"param.{k}": v for k, v in result.params.items()},
    }


def json_document(outcome: SweepOutcome, raw: bool = False) -> dict[str, Any]:
    """The ``--json`` document (schema in the README); ``raw`` adds per-step timestamps."""
    best = outcome.ranking.best
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "spec": {"name": outcome.spec.name, "hash": outcome.spec.content_hash()},
        "mode": outcome.mode, "strategy": outcome.strategy,
        "objective": outcome.ranking.objective,
        "tuning_time_s": outcome.tuning_time_s, "budget_s": outcome.budget_s,
        "device": {"cpu": outcome.device.cpu_model, "cores": outcome.device.cpu_cores,
                   "accelerator": outcome.device.accelerator_note or
                   ", ".join(g.name for g in outcome.device.gpus)},
        "best": _best(outcome, best),
        "comparisons": [
            {"reference": c.reference.trial.role.value, "speedup": c.speedup,
             "ci_low": c.speedup_ci_low, "ci_high": c.speedup_ci_high,
             "significant": c.significant, "batch_size_differs": c.batch_size_differs,
             "race_rounds": c.rounds}
            for c in outcome.ranking.comparisons
        ],
        "diagnosis": diagnosis_summary(outcome),
        "trials": result_rows(outcome),
        "race": race_rows(outcome),
    }
    if raw:  # everything `store.load_outcome` needs to rebuild the outcome
        doc["stored"] = {
            "spec": outcome.spec.model_dump(mode="json"), "base_dir": outcome.spec.base_dir,
            "device": dataclasses.asdict(outcome.device),
            "dropped": [{"params": d.params.model_dump(), "reason": d.reason} for d in outcome.dropped],
            "trials": [trial_to_dict(r) for r in outcome.results],
            "race": [trial_to_dict(r) for r in outcome.race],
        }
    return doc


def diagnosis_summary(outcome: SweepOutcome) -> dict[str, Any] | None:
    """The sweep's diagnosis, and the pick's predicted (predict.py) vs measured steady rate."""
    if outcome.diagnosis is None:
        return None
    best = outcome.ranking.best
    epochs = outcome.spec.measure.epochs_planned
    measured = trial_metrics(best.trial, epochs)["throughput_median"] if best else None
    predicted = _predicted_rate(outcome.diagnosis, best.trial, epochs) if best else None
    return {**outcome.diagnosis, "pick_predicted_rate": predicted, "pick_measured_rate": measured,
            "pick_measured_over_predicted": measured / predicted if measured and predicted else None}


def _predicted_rate(diagnosis: dict[str, Any], trial: TrialResult, epochs: int) -> float | None:
    """The trial's steady rate as predict.py predicts it; the diagnosis' overall prediction
    when the document lacks the stage costs (one written by hand, or by an older version)."""
    try:
        rate = predict.predict(PipelineParams(**trial.params), diagnosis, epochs).steady_rate
    except (KeyError, TypeError):
        rate = diagnosis.get("predicted_rate")
    return rate if rate is not None and math.isfinite(rate) else None


def _best(outcome: SweepOutcome, best: RankedTrial | None) -> dict[str, Any] | None:
    if best is None:
        return None
    return {"key": best.trial.key, "role": best.trial.role.value, "params": best.trial.params,
            "description": describe(PipelineParams(**best.trial.params)),
            "median": best.median, "ci_low": best.ci_low, "ci_high": best.ci_high,
            **trial_metrics(best.trial, outcome.spec.measure.epochs_planned)}
