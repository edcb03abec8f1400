"""A search with fake measurements (no TensorFlow, no trial process) on a real storage URL:
for tests of what the storage does to a sweep (tests/test_storage.py, tests/test_postgres.py)."""

from __future__ import annotations

import time

from pipetune import search, storage
from pipetune.claims import ClaimBoard
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState
from pipetune.space import Variant
from pipetune.spec import PipelineParams

# naive is the reference; two candidates. Rate: 100 examples/s per map call in flight.
VARIANTS = [Variant(PipelineParams(batch_size=8, map_parallel=m, prefetch=0),
                    Role.NAIVE if m == 1 else Role.CANDIDATE) for m in (1, 2, 3)]
NO_WAIT = storage.Retry(delays_s=(0.0, 0.0))


def measure(variant: Variant, steps: int) -> TrialResult:
    step_ns = int(8 / (100.0 * variant.params.map_parallel) * 1e9)
    repeat = RepeatTiming(tuple(i * step_ns for i in range(steps)), (0,) * steps, (step_ns,) * steps,
                          examples=8 * steps)
    return TrialResult(key=variant.key, role=variant.role, params=variant.params.model_dump(),
                       state=TrialState.COMPLETE, batch_size=8, repeats=(repeat, repeat), budget_steps=steps)


def new_state(url: str, calls: list[str], study: str = "s", retry: storage.Retry = NO_WAIT,
              grace_s: float = 60.0) -> search.SearchState:
    """A worker's search state; every measurement it makes is appended to ``calls``."""

    def counted(variant: Variant, steps: int, best_so_far: float | None) -> TrialResult:
        calls.append(variant.key)
        return measure(variant, steps)

    return search.SearchState(study=search.open_study(url, study, "throughput"),
                              board=ClaimBoard(url, study, grace_s=grace_s, retry=retry), measure=counted,
                              full_steps=4, deadline=time.time() + 600, objective="throughput", epochs=1)


def run(state: search.SearchState) -> None:
    """The grid over VARIANTS, naive first; the claim board closed after."""
    try:
        search.run(state, "grid", VARIANTS[:1], VARIANTS[1:])
    finally:
        state.board.close()


def stored_pairs(state: search.SearchState) -> list[tuple[str, int]]:
    return sorted((t.user_attrs["variant_key"], t.user_attrs["rung"]) for t in state.study.get_trials())


ALL_PAIRS = sorted((v.key, search.FULL_RUNG) for v in VARIANTS)
