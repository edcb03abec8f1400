"""Write the winner as ``best_pipeline.py``: the measured Plan's source, with its evidence.

The module is the very text the winning trial imported (the same ``Plan.render``), plus a
header with the environment and the measured numbers, and one comment per stage with the
measurement behind it. Every comment passes through ``one_line`` so no value can escape it.
"""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

from pipetune import __version__, sources, stats
from pipetune.dimensions import BY_NAME, DIMENSIONS, of_stage
from pipetune.effects import evidence_for
from pipetune.errors import NoSweepError, UsageError
from pipetune.plan import DataLayout, Plan, comment_lines
from pipetune.ranking import Comparison, RankedTrial
from pipetune.results import TrialResult
from pipetune.space import describe, estimate_cache_bytes
from pipetune.spec import PipelineParams
from pipetune.outcome import SweepOutcome

BEST_NAME = "best_pipeline.py"
# The precision policy has no stage line of its own: its evidence goes on the options stage.
_COMMENT_COVERS = {"options": ("options", "model")}


def chosen(outcome: SweepOutcome, rank: int = 1) -> RankedTrial:
    """The Nth best ranked trial of a sweep."""
    ranked = outcome.ranking.ranked
    if not 1 <= rank <= len(ranked):
        raise UsageError(f"--rank must be between 1 and {len(ranked)} (ranked trials), but got {rank}")
    return ranked[rank - 1]


def plan_for(outcome: SweepOutcome, trial: TrialResult, data: DataLayout | None = None) -> Plan:
    """The trial's Plan over the sweep's shards (found again, never rewritten if unchanged)."""
    params = PipelineParams(**trial.params)
    if data is None:
        found = sources.find_shards(outcome.spec, params.shards, params.compression, outcome.out_dir / "shards")
        if found is None:
            raise NoSweepError(
                f"the {params.shards} shard(s) this sweep measured are no longer in {outcome.out_dir / 'shards'}, "
                f"or the source changed since; re-create them with `pipetune shard <data.yaml> --shards "
                f"{params.shards} --compression {params.compression} --out DIR` and pass "
                "make_dataset(file_pattern=...), or run the sweep again")
        data = DataLayout.of(found.files, found.compression, sources.schema_of(outcome.spec),
                             found.manifest.total_bytes / max(1, found.manifest.num_examples))
    return Plan.from_variant(outcome.spec, params, data)


def render_best(outcome: SweepOutcome, rank: int = 1, today: datetime.date | None = None,
                data: DataLayout | None = None) -> str:
    """``best_pipeline.py``'s text; ``data`` overrides where the shards are (tests, other hosts)."""
    ranked = chosen(outcome, rank)
    plan = plan_for(outcome, ranked.trial, data)
    comments = {stage.name: _stage_comment(outcome, ranked.trial, stage.name, plan) for stage in plan.stages}
    return plan.render(header=_header(outcome, ranked, rank, today or datetime.date.today(), plan),
                       comments={stage: text for stage, text in comments.items() if text})


def write_best(outcome: SweepOutcome, rank: int = 1, path: Path | None = None) -> Path:
    path = path or outcome.out_dir / BEST_NAME
    path.write_text(render_best(outcome, rank), encoding="utf-8")
    return path


def _stage_comment(outcome: SweepOutcome, winner: TrialResult, stage: str, plan: Plan) -> str:
    """The stage's chosen values in words, each with the measurement behind it."""
    params = PipelineParams(**winner.params)
    space = outcome.spec.search.space.dimensions()
    parts = []
    for dimension in (d for covered in _COMMENT_COVERS.get(stage, (stage,)) for d in of_stage(covered)):
        value = getattr(params, dimension.name)
        searched = len(space[dimension.name]) > 1
        if not (searched or dimension.always_described or value != dimension.default):
            continue
        words = dimension.words(value)
        if dimension.name == "shuffle_buffer" and value:
            words += f" ({_shuffle_memory(outcome, params, plan)})"
        if dimension.name == "cache" and value != "none" and winner.fill_ns is not None:
            words += f" after the deterministic ops (filled in {winner.fill_ns / 1e9:.1f} s, once)"
        parts.append(words + _evidence_words(outcome, winner, dimension.name, searched))
    return "; ".join(parts)


def _evidence_words(outcome: SweepOutcome, winner: TrialResult, dimension: str, searched: bool) -> str:
    if not searched:
        return " (not searched)"
    objective, epochs = outcome.ranking.objective, outcome.spec.measure.epochs_planned
    effect = evidence_for(winner, outcome.results, dimension, objective, epochs)
    if effect is None:
        return f" (no measured variant differs from this one in {dimension} only)"
    versus = BY_NAME[dimension].words(effect.without_value)
    interval = f"95% CI {effect.ci_low:.2f}-{effect.ci_high:.2f}x, {effect.repeats} screening bursts"
    if not effect.measurable:
        return f": no measurable difference from {versus} ({effect.ratio:.2f}x, {interval})"
    return f": {effect.ratio:.2f}x vs {versus} ({interval})"


def _shuffle_memory(outcome: SweepOutcome, params: PipelineParams, plan: Plan) -> str:
    """What the shuffle buffer holds and about how much memory that is."""
    record = plan.data.mean_record_bytes
    if params.cache == "none":
        held, per_element = "serialized records, before decoding", record
    else:
        held = "cached elements"
        per_element = None if record is None else estimate_cache_bytes(outcome.spec, 1, record)
    size = "size unknown" if per_element is None else f"about {params.shuffle_buffer * per_element / 2**20:.1f} MiB"
    return f"holds {params.shuffle_buffer} {held}: {size}"


def _header(outcome: SweepOutcome, ranked: RankedTrial, rank: int, today: datetime.date, plan: Plan) -> str:
    trial = ranked.trial
    env = trial.environment
    params = PipelineParams(**trial.params)
    objective = outcome.ranking.objective
    epochs = outcome.spec.measure.epochs_planned
    throughput = stats.repeat_throughputs(trial)
    low, high = stats.bootstrap_ci(throughput)
    accelerator = outcome.device.accelerator_note or ", ".join(g.name for g in outcome.device.gpus)
    lines = [
        f"best_pipeline.py: the tf.data pipeline pipetune measured fastest for {outcome.spec.name!r}",
        "",
        f"Spec:        {outcome.spec.name} (hash {outcome.spec.content_hash()})",
        f"Generated:   {today.isoformat()} by pipetune {__version__}; rank {rank} of "
        f"{len(outcome.ranking.ranked)} ranked variants ({outcome.strategy}, {outcome.mode} mode)",
        f"Environment: TensorFlow {env.get('tensorflow', '?')}, Keras {env.get('keras', '?')}, "
        f"Python {env.get('python', '?')}; CPU {outcome.device.cpu_model} "
        f"({outcome.device.cpu_cores} cores); {accelerator or 'GPU: none'}",
        f"Variant:     {trial.key}: {describe(params)}",
        f"Objective:   {_objective_words(objective, epochs)}; every ratio in this file is a speed-up "
        "by it (> 1: faster)",
        f"Measured:    {statistics.median(throughput):.1f} examples/s (median of {len(throughput)} "
        f"bursts, 95% CI {low:.1f}-{high:.1f}); input wait "
        f"{stats.trial_wait_fraction(trial):.0%} of step time",
        *(_comparison_line(c) for c in outcome.ranking.comparisons if rank == 1),
        "",
        f"Data:        FILE_PATTERN is pipetune's copy of your data in {params.shards} TFRecord "
        f"shard(s). For your full or a new data set, write the same layout with",
        f"             pipetune shard <data.yaml> --shards {params.shards} --compression "
        f"{params.compression} --out DIR",
        "             and call make_dataset(file_pattern='DIR/*" + _suffix(plan) + "').",
        f"Training:    {_semantics_words(params)}",
        "",
        "Use it from a training script:",
        "    import best_pipeline",
        "    best_pipeline.apply_precision_policy()  # before building the model",
        "    dataset = best_pipeline.make_dataset()",
        *_compile_hint(outcome, params),
    ]
    return "\n".join(line for text in lines for line in
                     (comment_lines(text, "", width=200) if text else ["#"]))


def _compile_hint(outcome: SweepOutcome, params: PipelineParams) -> list[str]:
    """The consumer's measured settings, as the call that applies them (train mode only: in the
    other modes no model ran, so nothing about it was measured)."""
    if outcome.mode != "train":
        return []
    return [f"    model.compile(..., jit_compile={params.jit_compile!r}, "
            f"steps_per_execution={params.steps_per_execution!r})  # as measured"]


def _objective_words(objective: str, epochs: int) -> str:
    if objective == "throughput":
        return "throughput (examples/s, higher is better)"
    return f"projected time to train {epochs} epochs (lower is better)"


def _suffix(plan: Plan) -> str:
    return "".join(Path(plan.data.file_pattern).suffixes) or ""


def _semantics_words(params: PipelineParams) -> str:
    """The chosen values that change what the model learns from, not only how fast."""
    changed = [d.words(getattr(params, d.name)) for d in DIMENSIONS if d.changes_training]
    return "these values change training itself, keep them in mind: " + ", ".join(changed)


def _comparison_line(comparison: Comparison) -> str:
    verdict = "significant" if comparison.significant else "not significant"
    return (f"Speed-up:    {comparison.speedup:.2f}x vs {comparison.reference.trial.role.value} "
            f"(95% CI {comparison.speedup_ci_low:.2f}-{comparison.speedup_ci_high:.2f}, {verdict})")
