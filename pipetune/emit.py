"""Write the winner as ``best_pipeline.py``: the measured Plan's source, with its evidence.

The module is the very text the winning trial imported (the same ``Plan.render``), plus a
header with the environment and the measured numbers, and one comment per stage with the
measurement behind it. Every comment passes through ``one_line`` so no value can escape it.
"""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

from pipetune import __version__, stats
from pipetune.effects import PairEffect, evidence_for
from pipetune.errors import UsageError
from pipetune.plan import DataLayout, Plan, comment_lines
from pipetune.ranking import Comparison, RankedTrial
from pipetune.results import TrialResult
from pipetune.space import describe
from pipetune.spec import PipelineParams
from pipetune.runner import ShardLayouts, SweepOutcome

BEST_NAME = "best_pipeline.py"

# Stage -> (dimension whose evidence the comment gives, how to name the chosen value).
_STAGE_EVIDENCE = {
    "read": ("interleave_cycle", lambda p: "sequential read" if p.interleave_cycle == 1
             else f"parallel interleave over {p.shards} files, cycle {p.interleave_cycle}"),
    "prepare": ("map_parallel", lambda p: f"map with num_parallel_calls={p.map_parallel}"),
    "cache": ("cache", lambda p: f"{p.cache} cache after the deterministic ops"),
    "batch": ("batch_size", lambda p: f"batch {p.batch_size}"),
    "prefetch": ("prefetch", lambda p: "no prefetch" if p.prefetch == 0 else f"prefetch {p.prefetch}"),
    "options": ("private_threadpool_size", lambda p: f"private thread pool {p.private_threadpool_size}"
                if p.private_threadpool_size else "tf.data's shared thread pool"),
}


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
        shards = ShardLayouts(outcome.spec, outcome.out_dir / "shards")
        data = shards.get(params.shards, params.compression).data
    return Plan.from_variant(outcome.spec, params, data)


def render_best(outcome: SweepOutcome, rank: int = 1, today: datetime.date | None = None,
                data: DataLayout | None = None) -> str:
    """``best_pipeline.py``'s text; ``data`` overrides where the shards are (tests, other hosts)."""
    ranked = chosen(outcome, rank)
    plan = plan_for(outcome, ranked.trial, data)
    comments = {stage: _stage_comment(outcome, ranked.trial, stage) for stage in _STAGE_EVIDENCE}
    return plan.render(header=_header(outcome, ranked, rank, today or datetime.date.today()),
                       comments=comments)


def write_best(outcome: SweepOutcome, rank: int = 1, path: Path | None = None) -> Path:
    path = path or outcome.out_dir / BEST_NAME
    path.write_text(render_best(outcome, rank), encoding="utf-8")
    return path


def _stage_comment(outcome: SweepOutcome, winner: TrialResult, stage: str) -> str:
    dimension, name = _STAGE_EVIDENCE[stage]
    params = PipelineParams(**winner.params)
    label = name(params)
    evidence = evidence_for(winner, outcome.results, dimension)
    if evidence is None:
        return f"{label} (no measured variant differs from this one in {dimension} only)"
    versus = _value_words(dimension, evidence.without_value)
    numbers = _ratio_words(evidence)
    if stage == "cache" and winner.fill_ns is not None:
        return (f"{label}: fill {winner.fill_ns / 1e9:.1f} s once, then {numbers} per epoch "
                f"vs {versus}")
    return f"{label}: {numbers} vs {versus}"


def _ratio_words(effect: PairEffect) -> str:
    return (f"{effect.ratio:.2f}x throughput (median of {effect.repeats} bursts, "
            f"95% CI {effect.ci_low:.2f}-{effect.ci_high:.2f}x)")


def _value_words(dimension: str, value: object) -> str:
    if dimension == "cache" and value == "none":
        return "no cache"
    if dimension == "prefetch" and value == 0:
        return "no prefetch"
    if dimension == "interleave_cycle" and value == 1:
        return "sequential read"
    return f"{dimension}={value}"


def _header(outcome: SweepOutcome, ranked: RankedTrial, rank: int, today: datetime.date) -> str:
    trial = ranked.trial
    env = trial.environment
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
        f"Variant:     {trial.key}: {describe(PipelineParams(**trial.params))}",
        f"Measured:    {statistics.median(throughput):.1f} examples/s (median of {len(throughput)} "
        f"bursts, 95% CI {low:.1f}-{high:.1f}); input wait "
        f"{stats.trial_wait_fraction(trial):.0%} of step time",
        *(_comparison_line(c, outcome.ranking.objective)
          for c in outcome.ranking.comparisons if rank == 1),
        "",
        "Use it from a training script:",
        "    import best_pipeline",
        "    best_pipeline.apply_precision_policy()  # before building the model",
        "    dataset = best_pipeline.make_dataset()",
    ]
    return "\n".join(line for text in lines for line in
                     (comment_lines(text, "", width=200) if text else ["#"]))


def _comparison_line(comparison: Comparison, objective: str) -> str:
    verdict = "significant" if comparison.significant else "not significant"
    return (f"Speed-up:    {comparison.speedup:.2f}x vs {comparison.reference.trial.role.value} "
            f"(95% CI {comparison.speedup_ci_low:.2f}-{comparison.speedup_ci_high:.2f}, {verdict}; "
            f"by {objective.replace('_', ' ')})")
