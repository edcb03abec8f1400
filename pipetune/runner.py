"""A sweep end to end: spec -> shards -> variants -> search -> ranking -> outputs on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune import predict, preflight, race, search, sources, storage
from pipetune.autospace import resolve_space
from pipetune.datacheck import check_data
from pipetune.device import detect_device, require_tensorflow
from pipetune.errors import SweepStopped, UsageError
from pipetune.plan import DataLayout
from pipetune.outcome import SweepOutcome, rank_sweep
from pipetune.rebuild import remember
from pipetune.results import Role, TrialResult
from pipetune.space import (
    SpaceFacts,
    Variant,
    enumerate_space,
    estimate_cache_bytes,
    reference_variants,
)
from pipetune.spec import Spec
from pipetune.trial import run_trial
from pipetune.trial_request import TrialRequest

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
    race: bool = True  # False: rank by the screening alone (a benchmark's oracle grid)
    diagnose: bool = True  # False: a hand-listed space is measured in a seeded random order


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
    preflight.require_writable_dir(out)
    default_db = out / "study.sqlite3"
    if options.storage is None and default_db.exists() and not options.resume:
        raise UsageError(f"{out} already holds a sweep; pass --resume to continue it, "
                         "or --out to start a new one elsewhere")
    return options.storage or f"sqlite:///{default_db.resolve()}"


def run_sweep(spec: Spec, options: SweepOptions, on_event: Event | None = None) -> SweepOutcome:
    preflight.check_budget(options.budget_s)
    require_tensorflow()
    started = time.time()
    mode = effective_mode(spec, options.mode)
    storage_url = storage.usable(prepare_out_dir(options))  # a bad URL fails here, before any work
    if options.resume and options.storage is None:
        preflight.check_resume(options.out_dir, study_name(spec, mode), spec, mode)
    preflight.clean_stale_scratch(options.out_dir)
    check_data(spec, log_path=_logs(options.out_dir) / "datacheck.log")  # before any budget is spent
    objective = spec.measure.resolved_objective  # the same in every mode: --mode never changes it
    device = detect_device()
    name = study_name(spec, mode)  # of the spec as written: a resumed auto space finds its study
    spec, diagnosis = resolve_space(spec, options.out_dir, device, options.resume, options.diagnose)
    layouts = ShardLayouts(spec, options.out_dir / "shards")
    references = reference_variants(spec, device)
    first = layouts.get(references[0].params.shards, references[0].params.compression)
    facts = SpaceFacts(device, estimate_cache_bytes(spec, first.num_examples, first.mean_record_bytes),
                       int(spec.resources.ram_budget_gb * 2**30))
    candidates, dropped = enumerate_space(spec, facts)
    predicted = None
    if diagnosis is not None:  # the best predicted first: what a budget too small for all measures
        autotune = next(v.params for v in references if v.role is Role.AUTOTUNE_DEFAULT)
        predicted = predict.speedups(candidates, diagnosis, objective, spec.measure.epochs_planned, autotune)
        candidates = predict.by_gain(candidates, predicted, autotune)
    budget = options.budget_s or spec.search.budget_s
    board = search.ClaimBoard(storage_url, name)
    study = search.open_study(storage_url, name, objective, board.retry)
    board.stored(lambda: remember(study, spec, mode, objective, options.strategy or spec.search.strategy,
                                  device, budget), "recording the sweep")
    state = search.SearchState(
        study=study, board=board,
        measure=lambda variant, steps, best: measure_variant(spec, variant, steps, mode, layouts, options.out_dir,
                                                             best_so_far=best),
        full_steps=spec.measure.steps, deadline=started + budget, objective=objective,
        epochs=spec.measure.epochs_planned, seed=options.seed if options.seed is not None else spec.search.seed,
        on_event=on_event or (lambda event: None),
    )
    # A reference may also be a candidate (naive often is): its reference role wins.
    known = {v.key: v for v in [*candidates, *references]}
    used, stopped, raced = options.strategy or spec.search.strategy, None, []
    unscreened = sorted(race.race_only(references)) if options.race else []
    try:
        used = search.run(state, used, references, candidates,
                          race.reserve_trials(len(references)) if options.race else 0, predicted,
                          unscreened)
        # The verdict comes from a head-to-head of the leaders and the references, not from
        # the screening numbers that chose the leaders (selection bias).
        if options.race:
            raced = race.run(state, known, rank_sweep(spec, search.final_results(state), objective),
                             unscreened)
    except SweepStopped as stop:
        stopped = stop  # the outcome so far is still ranked and written
    finally:
        board.close()
    for key in set(unscreened) - {r.key for r in raced}:
        state.skipped.setdefault(key, "not run: measured in the final race only, which did not run")
    results = race.with_race_records(search.final_results(state), raced) + search.skipped_results(state, known)
    ranking = rank_sweep(spec, results, objective, raced)
    outcome = SweepOutcome(spec, options.out_dir, used, mode, results, dropped, ranking, device,
                           time.time() - started, budget, diagnosis, tuple(raced))
    if stopped is not None:
        stopped.outcome = outcome
        raise stopped
    return outcome


def _logs(out_dir: Path) -> Path:
    """Where TensorFlow's own output goes: the data check's and each failed trial's."""
    folder = out_dir / "logs"
    folder.mkdir(exist_ok=True)
    return folder


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
        manifest = shard_set.manifest
        mean_record_bytes = manifest.total_bytes / max(1, manifest.num_examples)
        data = DataLayout.of(shard_set.files, shard_set.compression, schema, mean_record_bytes)
        return cls(data, manifest.num_examples, mean_record_bytes)


def measure_variant(spec: Spec, variant: Variant, steps: int, mode: str, layouts: ShardLayouts,
                    out_dir: Path, consumer_ceiling: bool = False, best_so_far: float | None = None) -> TrialResult:
    """Measure one variant in its own process, as the sweep does (``TrialRequest.best_so_far``)."""
    layout = layouts.get(variant.params.shards, variant.params.compression)
    request = TrialRequest(spec=spec, params=variant.params, role=variant.role, key=variant.key,
                           data=layout.data, num_examples=layout.num_examples, mode=mode,
                           warmup_steps=spec.measure.warmup_steps, steps=steps,
                           repeats=spec.measure.repeats, consumer_ceiling=consumer_ceiling,
                           best_so_far=best_so_far)
    scratch = out_dir / "scratch"
    scratch.mkdir(exist_ok=True)
    return run_trial(request, spec.measure.timeout_s, int(spec.resources.ram_budget_gb * 2**30), scratch,
                     log_dir=_logs(out_dir))
