"""A sweep end to end: spec -> shards -> variants -> search -> ranking -> outputs on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune import race, search, sources
from pipetune.device import Device, detect_device, require_tensorflow
from pipetune.errors import UsageError
from pipetune.plan import DataLayout
from pipetune.ranking import Ranking, rank
from pipetune.results import TrialResult
from pipetune.space import (
    Dropped,
    SpaceFacts,
    Variant,
    enumerate_space,
    estimate_cache_bytes,
    reference_variants,
)
from pipetune.spec import Spec
from pipetune.trial import TrialRequest, run_trial

Event = Callable[[search.SearchEvent], None]


@dataclass(frozen=True)
class SweepOptions:
    out_dir: Path
    budget_s: float | None = None
    strategy: str | None = None
    mode: str | None = None
    storage: str | None = None
    resume: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class SweepOutcome:
    spec: Spec
    out_dir: Path
    strategy: str
    mode: str
    results: list[TrialResult]
    dropped: list[Dropped]
    ranking: Ranking
    device: Device
    tuning_time_s: float
    budget_s: float | None = None  # the search budget in force (--budget or the spec's)
    race: tuple[TrialResult, ...] = ()  # the final race's measurements (race.py)


def effective_mode(spec: Spec, override: str | None) -> str:
    mode = override or spec.measure.mode
    if spec.model.step_time_ms is not None and mode == "train":
        return "simulate"  # the "model" is a simulated accelerator
    if mode == "simulate" and spec.model.step_time_ms is None:
        raise UsageError("simulate mode needs model.step_time_ms in the spec")
    return mode


def study_name(spec: Spec, mode: str | None = None) -> str:
    """One study per spec content and measurement mode: numbers of two modes never mix."""
    return f"{spec.name}-{spec.content_hash()}-{mode or effective_mode(spec, None)}"


def prepare_out_dir(options: SweepOptions) -> str:
    """Create the output folder; refuse to mix with an old sweep unless resuming."""
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    default_db = out / "study.sqlite3"
    if options.storage is None and default_db.exists() and not options.resume:
        raise UsageError(f"{out} already holds a sweep; pass --resume to continue it, "
                         "or --out to start a new one elsewhere")
    return options.storage or f"sqlite:///{default_db.resolve()}"


def run_sweep(spec: Spec, options: SweepOptions, on_event: Event | None = None) -> SweepOutcome:
    require_tensorflow()
    started = time.time()
    storage_url = prepare_out_dir(options)
    mode = effective_mode(spec, options.mode)
    objective = spec.measure.resolved_objective  # the same in every mode: --mode never changes it
    device = detect_device()
    layouts = ShardLayouts(spec, options.out_dir / "shards")
    references = reference_variants(spec, device)
    first = layouts.get(references[0].params.shards, references[0].params.compression)
    facts = SpaceFacts(device, estimate_cache_bytes(spec, first.num_examples, first.mean_record_bytes),
                       int(spec.resources.ram_budget_gb * 2**30))
    candidates, dropped = enumerate_space(spec, facts)
    budget = options.budget_s or spec.search.budget_s
    board = search.ClaimBoard(storage_url, study_name(spec, mode))
    state = search.SearchState(
        study=search.open_study(storage_url, study_name(spec, mode), objective), board=board,
        measure=lambda variant, steps: measure_variant(spec, variant, steps, mode, layouts, options.out_dir),
        full_steps=spec.measure.steps, deadline=started + budget, objective=objective,
        epochs=spec.measure.epochs_planned, seed=options.seed if options.seed is not None else spec.search.seed,
        on_event=on_event or (lambda event: None),
    )
    # A reference may also be a candidate (naive often is): its reference role wins.
    known = {v.key: v for v in [*candidates, *references]}
    try:
        used = search.run(state, options.strategy or spec.search.strategy, references, candidates)
        results = search.final_results(state)
        # The verdict comes from a head-to-head of the leaders and the references, not from
        # the screening numbers that chose the leaders (selection bias).
        raced = race.run(state, known, rank_sweep(spec, results, objective))
    finally:
        board.close()
    results += search.skipped_results(state, known)
    ranking = rank_sweep(spec, results, objective, raced)
    return SweepOutcome(spec, options.out_dir, used, mode, results, dropped, ranking, device,
                        time.time() - started, budget, tuple(raced))


def rank_sweep(spec: Spec, results: list[TrialResult], objective: str,
               raced: list[TrialResult] | tuple[TrialResult, ...] = ()) -> Ranking:
    """The ranking of a sweep's results: one call, so a fresh and a stored sweep agree."""
    return rank(results, objective, epochs=spec.measure.epochs_planned, seed=0, race=raced)


class ShardLayouts:
    """Shard sets, prepared on first use: only the (shards, compression) pairs measured."""

    def __init__(self, spec: Spec, root: Path) -> None:
        self.spec, self.root = spec, root
        self._cache: dict[tuple[int, str], _Layout] = {}

    def get(self, shards: int, compression: str) -> _Layout:
        if (shards, compression) not in self._cache:
            shard_set = sources.prepare_shards(self.spec, shards, compression, self.root)
            self._cache[(shards, compression)] = _Layout.of(shard_set, sources.schema_of(self.spec))
        return self._cache[(shards, compression)]


@dataclass(frozen=True)
class _Layout:
    data: DataLayout
    num_examples: int
    mean_record_bytes: float

    @classmethod
    def of(cls, shard_set: Any, schema: dict) -> _Layout:
        folder = Path(shard_set.files[0]).parent
        suffix = "".join(Path(shard_set.files[0]).suffixes)
        manifest = shard_set.manifest
        data = DataLayout(str(folder / f"*{suffix}"), shard_set.compression, schema)
        return cls(data, manifest.num_examples, manifest.total_bytes / max(1, manifest.num_examples))


def measure_variant(spec: Spec, variant: Variant, steps: int, mode: str, layouts: ShardLayouts,
                    out_dir: Path, consumer_ceiling: bool = False) -> TrialResult:
    """Measure one variant in its own process, as the sweep does."""
    layout = layouts.get(variant.params.shards, variant.params.compression)
    request = TrialRequest(spec=spec, params=variant.params, role=variant.role, key=variant.key,
                           data=layout.data, num_examples=layout.num_examples, mode=mode,
                           warmup_steps=spec.measure.warmup_steps, steps=steps,
                           repeats=spec.measure.repeats, consumer_ceiling=consumer_ceiling)
    scratch = out_dir / "scratch"
    scratch.mkdir(exist_ok=True)
    return run_trial(request, spec.measure.timeout_s, int(spec.resources.ram_budget_gb * 2**30), scratch)
