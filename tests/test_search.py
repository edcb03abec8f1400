"""The search: strategy choice (pure arithmetic), search.run with a fake measurement, then
whole sweeps run as a user runs them.

The sweeps run ``python -m pipetune sweep`` in a subprocess on tiny simulate-mode specs (a
"model" that sleeps 2 ms per batch), so each trial costs one fresh process importing
TensorFlow (~3-5 s) plus a burst of a few milliseconds. They check what the sweep issue
promises: resume after ``kill -9`` loses and repeats nothing, two workers on one storage never
measure a variant twice, the ``--json`` document keeps its schema, successive halving finds
the grid's winner with less burst time, and the exit codes (2 bad spec, 130 interrupted).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from pipetune import cli, race, search, stats
from pipetune.claims import CLAIMS, ClaimBoard
from pipetune.ranking import beats, rank
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState
from pipetune.runner import study_name
from pipetune.search import FULL_RUNG, RACE_RUNG, SHORT_RUNG, SearchPlan, plan_search
from pipetune.serialize import trial_from_json
from pipetune.space import Variant, variant_key
from pipetune.spec import PipelineParams
from pipetune.validate import load_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SWEEP_TIMEOUT_S = 300  # a hung sweep fails the test instead of hanging the suite

# Every dimension pinned but the ones a test searches: 1 shard, no cache, no shuffle, batch 8.
PINNED = {"shards": [1], "interleave_cycle": [1], "cache": ["none"], "shuffle_buffer": [0],
          "batch_size": [8]}
# naive (map 1, no prefetch) is also a candidate: 2 references + 3 other candidates = 5 variants.
SMALL_SPACE = {"map_parallel": [1, 2], "prefetch": [0, "autotune"]}


# --------------------------------------------------------------------------- 1. plan_search
# plan_search(candidates, overhead_s, full_burst_s, remaining_s). A full trial costs
# overhead + burst; halving costs a short trial (overhead + burst/4) plus a third of a full one.


def test_grid_when_every_candidate_fits_exactly() -> None:
    # A full trial costs 2 + 2 = 4 s; 10 of them take exactly the 40 s left.
    assert plan_search(10, 2.0, 2.0, 40.0) == SearchPlan("grid", 10, 40.0)


def test_grid_over_halving_when_overhead_dominates() -> None:
    # grid 8 + 2 = 10 s a variant; halving (8 + 2/4) + 10/3 = 11.83 s: a shorter burst saves
    # little when the process costs most. 55 s fit 5 full trials, not 6.
    assert plan_search(10, 8.0, 2.0, 55.0) == SearchPlan("grid", 5, 50.0)


def test_grid_wins_an_exact_tie_with_halving() -> None:
    # grid 5 + 4 = 9 s; halving (5 + 4/4) + 9/3 = 9 s. Equal cost: the simpler strategy.
    assert plan_search(10, 5.0, 4.0, 45.0) == SearchPlan("grid", 5, 45.0)


def test_halving_when_bursts_dominate() -> None:
    # grid 0 + 12 = 12 s a variant: all 10 need 120 s, more than the 70 s left.
    # halving (0 + 12/4) + 12/3 = 3 + 4 = 7 s a variant: all 10 fit in 70 s.
    assert plan_search(10, 0.0, 12.0, 70.0) == SearchPlan("halving", 10, 70.0)
    # 50 s fit 7 of them (49 s), not 8 (56 s).
    assert plan_search(10, 0.0, 12.0, 50.0) == SearchPlan("halving", 7, 49.0)


@pytest.mark.parametrize("remaining_s", [0.0, 1.0, -30.0])
def test_a_sample_of_one_when_nothing_fits(remaining_s: float) -> None:
    assert plan_search(10, 8.0, 2.0, remaining_s) == SearchPlan("grid", 1, 10.0)
    assert plan_search(10, 0.0, 12.0, remaining_s) == SearchPlan("halving", 1, 7.0)


def test_the_plan_never_exceeds_the_space() -> None:
    assert plan_search(3, 0.0, 12.0, 1e6) == SearchPlan("grid", 3, 36.0)
    assert plan_search(0, 5.0, 5.0, 0.0) == SearchPlan("grid", 0, 0.0)


# --------------------------------------------------------------------------- search.run, in process
# A fake Measure with known rates stands in for the trial process: no TensorFlow, so these are
# fast. The study and the claims live in SQLite under tmp_path, as in a real sweep.


def fake_result(variant: Variant, steps: int, rate: float) -> TrialResult:
    """Two repeats of ``steps`` batches of 8 at ``rate`` examples/s, as a trial would report."""
    step_ns = int(8 / rate * 1e9)
    repeat = RepeatTiming(tuple(i * step_ns for i in range(steps)), (0,) * steps, (step_ns,) * steps,
                          examples=8 * steps)
    return TrialResult(key=variant.key, role=variant.role, params=variant.params.model_dump(),
                       state=TrialState.COMPLETE, batch_size=8, repeats=(repeat, repeat), budget_steps=steps)


class FakeMeasure:
    """Rate = 100 examples/s per map call in flight; records every (key, steps) it measures."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.bests: list[float | None] = []  # the best value so far the search passed, per call
        self.after: Callable[[], None] = lambda: None

    def __call__(self, variant: Variant, steps: int, best_so_far: float | None = None) -> TrialResult:
        self.calls.append((variant.key, steps))
        self.bests.append(best_so_far)
        result = fake_result(variant, steps, 100.0 * variant.params.map_parallel)
        self.after()
        return result


FAKE_REFERENCES = [Variant(PipelineParams(batch_size=8, map_parallel=1, prefetch=0), Role.NAIVE),
                   Variant(PipelineParams(batch_size=8, map_parallel=2, prefetch="autotune"),
                           Role.AUTOTUNE_DEFAULT)]
# map 1..6: map 1 (no prefetch) is naive again, so 5 candidates besides the references.
FAKE_CANDIDATES = [Variant(PipelineParams(batch_size=8, map_parallel=m, prefetch=0)) for m in range(1, 7)]


@pytest.fixture
def fake_search(tmp_path: Path) -> Iterator[Callable[..., search.SearchState]]:
    """Makes SearchStates on one study in tmp_path (each with its own claim board), closed after."""
    url = f"sqlite:///{tmp_path / 'study.sqlite3'}"
    boards: list[ClaimBoard] = []

    def make(measure: FakeMeasure, grace_s: float = 60.0) -> search.SearchState:
        boards.append(ClaimBoard(url, "fake", grace_s=grace_s))
        return search.SearchState(study=search.open_study(url, "fake", "throughput"), board=boards[-1],
                                  measure=measure, full_steps=12, deadline=time.time() + 600,
                                  objective="throughput", epochs=1)

    yield make
    for board in boards:
        board.close()


def listed(state: search.SearchState) -> list[TrialResult]:
    """What a sweep reports: the measured results, then the skipped ones."""
    known = {v.key: v for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    return search.final_results(state) + search.skipped_results(state, known)


def test_grid_measures_each_variant_once_and_a_rerun_measures_nothing(fake_search) -> None:
    measure = FakeMeasure()
    assert search.run(fake_search(measure), "grid", FAKE_REFERENCES, FAKE_CANDIDATES) == "grid"
    keys = {v.key for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    assert sorted(measure.calls) == sorted((key, 12) for key in keys)
    assert measure.calls[:2] == [(v.key, 12) for v in FAKE_REFERENCES]  # references first

    again = FakeMeasure()  # --resume of a finished sweep: everything is already stored
    state = fake_search(again)
    search.run(state, "grid", FAKE_REFERENCES, FAKE_CANDIDATES)
    assert again.calls == []
    assert sorted(r.key for r in listed(state)) == sorted(keys)


def test_each_measurement_is_told_the_best_value_stored_before_it(fake_search) -> None:
    """What trial_request.FAR_BEHIND is judged against: the best objective so far, None first."""
    measure = FakeMeasure()
    search.run(fake_search(measure), "grid", FAKE_REFERENCES, FAKE_CANDIDATES)
    rate = {v.key: 100.0 * v.params.map_parallel for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    best, expected = None, []
    for key, _ in measure.calls:
        expected.append(best)
        best = max(best or 0.0, rate[key])
    assert measure.bests == pytest.approx(expected) and expected[0] is None and best == 600.0


def test_auto_says_when_the_budget_fits_only_a_sample(fake_search) -> None:
    """Was: the report said "grid search" when 9 of 23 variants were measured."""
    state = fake_search(FakeMeasure())
    state.deadline = time.time() + 3.0  # the references run regardless; little time is left after
    used = search.run(state, "auto", FAKE_REFERENCES, FAKE_CANDIDATES)
    measured = {key for key, _ in state.measured()} - {v.key for v in FAKE_REFERENCES}
    assert used.endswith(f"over a budget sample of {len(measured)} of 5 variants"), used


def test_a_budget_too_small_measures_the_best_predicted_first_and_says_what_it_left(fake_search) -> None:
    """Was: a seeded random sample of one variant, so two seeds picked different winners."""
    measure = FakeMeasure()
    state = fake_search(measure)
    state.deadline = time.time() - 1.0  # the budget is spent once the references are measured
    best_first = sorted(FAKE_CANDIDATES[1:], key=lambda v: -v.params.map_parallel)
    gains = {v.key: v.params.map_parallel / 2 for v in best_first}
    used = search.run(state, "auto", FAKE_REFERENCES, best_first, predicted=gains)
    screened = [key for key, _ in measure.calls[2:]]
    assert screened == [v.key for v in best_first[:search.MIN_SCREENED]]  # even past the budget
    assert used.endswith(f"over the {search.MIN_SCREENED} of 5 variants predicted best"), used
    left = {r.key: r.reason for r in listed(state) if r.state is TrialState.SKIPPED}
    assert set(left) == {v.key for v in best_first[search.MIN_SCREENED:]}
    assert left[best_first[-1].key].endswith("predicted 1.00x autotune-default")


def test_halving_promotes_the_best_third_of_the_short_bursts(fake_search) -> None:
    measure = FakeMeasure()
    state = fake_search(measure)
    search.run(state, "halving", FAKE_REFERENCES, FAKE_CANDIDATES)
    by_map = {v.params.map_parallel: v.key for v in FAKE_CANDIDATES}
    short = {key for key, steps in measure.calls if steps == 3}
    full = {key for key, steps in measure.calls if steps == 12}
    assert short == {by_map[m] for m in (2, 3, 4, 5, 6)}  # map 1 is naive: measured in full
    assert full == {v.key for v in FAKE_REFERENCES} | {by_map[6], by_map[5]}  # round(5/3) = 2
    assert len(measure.calls) == len(set(measure.calls))
    states = {r.key: r.state for r in listed(state)}
    assert [states[by_map[m]] for m in range(1, 7)] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 3 + [
        TrialState.COMPLETE] * 2


def test_tpe_measures_each_variant_at_most_once_and_covers_a_small_space(fake_search) -> None:
    """TPE over the varying dimensions: no repeats, and on a 5-variant space it reaches every one
    (falling back to the seeded order when its proposals repeat)."""
    measure = FakeMeasure()
    state = fake_search(measure)
    assert search.run(state, "tpe", FAKE_REFERENCES, FAKE_CANDIDATES) == "tpe"
    assert len(measure.calls) == len(set(measure.calls))
    keys = {v.key for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    assert {key for key, _ in measure.calls} == keys


def test_tpe_starts_from_every_stored_measurement_and_never_fails_a_known_point(fake_search) -> None:
    """A resumed TPE (a new worker on the same storage) is told what is stored, as values:
    a reference's point is not a failure."""
    first = fake_search(FakeMeasure())
    search.run(first, "grid", FAKE_REFERENCES, FAKE_CANDIDATES[:3])
    resumed = fake_search(FakeMeasure())
    dims = ["map_parallel", "prefetch"]
    choices = {"map_parallel": ["1", "2", "3", "4"], "prefetch": ["'autotune'", "0"]}
    by_combo = search.variants_by_combo(FAKE_CANDIDATES[:4], FAKE_REFERENCES, dims, choices)
    assert ("2", "'autotune'") in by_combo  # autotune-default's point, from the references
    distributions = {d: optuna.distributions.CategoricalDistribution(choices[d]) for d in dims}
    study = search.tpe_study(resumed, by_combo, dims, distributions)
    told = {tuple(t.params[d] for d in dims): t for t in study.trials}
    measured = {k for k, _ in resumed.measured()}
    assert {combo for combo, v in by_combo.items() if v.key in measured} == set(told)
    assert ("2", "'autotune'") in told and ("4", "0") not in told  # measured vs not yet
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in told.values())


def test_tpe_stops_at_the_budget_and_lists_the_rest_as_skipped(fake_search) -> None:
    measure = FakeMeasure()
    state = fake_search(measure)

    def spend_the_budget_after_one_candidate() -> None:
        if len(measure.calls) == 3:
            state.deadline = time.time() - 1.0

    measure.after = spend_the_budget_after_one_candidate
    search.run(state, "tpe", FAKE_REFERENCES, FAKE_CANDIDATES)
    skipped = [r for r in listed(state) if r.state is TrialState.SKIPPED]
    assert len(measure.calls) == 3 and len(skipped) == 4  # 6 candidates - naive's twin - 1 measured
    assert all("TPE" in r.reason for r in skipped)


@pytest.mark.parametrize("naive_fails", [False, True])
def test_naive_is_measured_in_the_race_only_and_a_failure_ends_its_race(fake_search, naive_fails) -> None:
    naive = FAKE_REFERENCES[0]
    measure = FakeMeasure()
    failing = FakeMeasure()
    state = fake_search(lambda variant, steps, best: (
        replace(failing(variant, steps), state=TrialState.FAILED, reason="out of memory")
        if naive_fails and variant.key == naive.key else measure(variant, steps)))
    unscreened = sorted(race.race_only(FAKE_REFERENCES))
    assert unscreened == [naive.key]
    search.run(state, "grid", FAKE_REFERENCES, FAKE_CANDIDATES, race.reserve_trials(2), None, unscreened)
    assert naive.key not in {key for key, _ in measure.calls}  # not screened
    known = {v.key: v for v in [*FAKE_CANDIDATES, *FAKE_REFERENCES]}
    rounds = race.run(state, known, rank(search.final_results(state), "throughput"), unscreened)
    naive_rounds = [r.race_round for r in rounds if r.key == naive.key]
    assert naive_rounds == ([0] if naive_fails else list(range(race.rounds_run(rounds))))
    assert race.rounds_run(rounds) >= race.MIN_ROUNDS
    (record,) = [r for r in race.with_race_records(search.final_results(state), rounds) if r.key == naive.key]
    assert record.race_round == 0 and record.role is Role.NAIVE
    assert (record.state, record.reason) == ((TrialState.FAILED, "out of memory") if naive_fails
                                             else (TrialState.COMPLETE, ""))


def test_a_variant_promoted_when_the_budget_runs_out_is_listed_once(fake_search) -> None:
    measure = FakeMeasure()
    state = fake_search(measure)

    def spend_the_budget_after_two_short_bursts() -> None:
        if sum(steps == 3 for _, steps in measure.calls) == 2:
            state.deadline = time.time() - 1.0

    measure.after = spend_the_budget_after_two_short_bursts
    search.run(state, "halving", FAKE_REFERENCES, FAKE_CANDIDATES)
    short = [key for key, steps in measure.calls if steps == 3]
    assert len(short) == 2 and all(steps == 3 for _, steps in measure.calls[2:])
    results = listed(state)
    keys = [r.key for r in results]
    assert sorted(keys) == sorted(set(keys)), "a variant is listed twice"
    assert set(keys) == {v.key for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    by_key = {r.key: r for r in results}
    map_of = {v.key: v.params.map_parallel for v in FAKE_CANDIDATES}
    promoted = max(short, key=map_of.__getitem__)  # the faster of the two measured
    assert by_key[promoted].state is TrialState.PRUNED
    assert "budget" in by_key[promoted].reason and "not in the best third" not in by_key[promoted].reason
    assert sum(r.state is TrialState.SKIPPED for r in results) == 3  # never measured at all


def test_a_dead_workers_claim_is_taken_over(fake_search, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first, second = FAKE_CANDIDATES[1], FAKE_CANDIDATES[2]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'study.sqlite3'}")
    CLAIMS.metadata.create_all(engine)
    with engine.begin() as conn:  # one claim of a killed local worker, one of a silent remote one
        conn.execute(CLAIMS.insert(), [
            {"study": "fake", "variant_key": first.key, "rung": FULL_RUNG,
             "owner": f"{socket.gethostname()}:{dead.pid}:0000", "heartbeat": time.time(), "done": False},
            {"study": "fake", "variant_key": second.key, "rung": FULL_RUNG,
             "owner": "another-host:1:0000", "heartbeat": time.time(), "done": False}])
    engine.dispose()
    measure = FakeMeasure()
    state = fake_search(measure, grace_s=1.0)
    search.run(state, "grid", FAKE_REFERENCES, FAKE_CANDIDATES)
    keys = {v.key for v in [*FAKE_REFERENCES, *FAKE_CANDIDATES]}
    assert sorted(measure.calls) == sorted((key, 12) for key in keys)  # both claims taken over
    assert all(state.board.is_done(v.key, FULL_RUNG) for v in FAKE_CANDIDATES)


def test_workers_starting_together_on_a_fresh_storage_all_open_it(tmp_path: Path) -> None:
    # Two `pipetune sweep --storage URL` started at once both create the tables; the loser of
    # that race used to die ("table ... already exists", a duplicate alembic version row).
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'fresh-{attempt}.sqlite3'}"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def start_worker() -> None:
            barrier.wait()
            try:
                board = ClaimBoard(url, "fresh")
                search.open_study(url, "fresh", "throughput")
                board.close()
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=start_worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


# --------------------------------------------------------------------------- helpers


def write_spec(folder: Path, name: str, space: dict[str, list[Any]], steps: int = 4,
               preprocess: list[dict[str, Any]] | None = None) -> Path:
    """A tiny simulate-mode spec: 64 synthetic 16x16 images, a 2 ms "accelerator"."""
    data = {
        "name": name,
        "source": {"kind": "synthetic_images", "num_examples": 64, "image_size": [16, 16],
                   "num_classes": 2, "seed": 0},
        "preprocess": preprocess or [{"decode_image": {"key": "image"}}, {"normalize": {"key": "image"}}],
        "inputs": {"features": "image", "label": "label"},
        "model": {"step_time_ms": 2},
        "measure": {"mode": "simulate", "warmup_steps": 1, "steps": steps, "repeats": 2, "timeout_s": 60},
        "search": {"strategy": "grid", "budget_s": 600, "space": {**PINNED, **space}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def expected_keys(space: dict[str, list[Any]]) -> set[str]:
    """Keys of every variant a sweep of ``space`` must measure: the references and candidates.

    Written out by hand (not via ``space.py``) so the test does not trust what it checks.
    """
    # Both references use tf.data's shared thread pool, whatever the space searches.
    naive = PipelineParams(batch_size=8, map_parallel=1, prefetch=0)
    autotune = PipelineParams(batch_size=8, map_parallel="autotune", prefetch="autotune")
    candidates = [PipelineParams(batch_size=8, map_parallel=m, prefetch=p, private_threadpool_size=t)
                  for m in space["map_parallel"] for p in space["prefetch"]
                  for t in space.get("private_threadpool_size", [0])]
    return {variant_key(p) for p in [naive, autotune, *candidates]}


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "pipetune", *map(str, args)]


def environment() -> dict[str, str]:
    # Wide enough that rich does not wrap the resume hint (see test_the_resume_hint_is_one_line).
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "400"}


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=SWEEP_TIMEOUT_S)


class Background:
    """``pipetune`` in its own process group, output to files (a full pipe would block it)."""

    def __init__(self, *args: object, cwd: Path, tag: str) -> None:
        self.stderr_path = cwd / f"{tag}.stderr"
        with open(cwd / f"{tag}.stdout", "w") as out, open(self.stderr_path, "w") as err:
            # SIGINT as a terminal leaves it, even when these tests run under a launcher that
            # ignores it (a script's `cmd &`): the Ctrl-C tests need it delivered.
            self.process = subprocess.Popen(command(*args), cwd=cwd, env=environment(), stdout=out,
                                            stderr=err, start_new_session=True,
                                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=SWEEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise

    def kill_group(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def wait_for(condition: Callable[[], bool], worker: Background, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            pytest.fail(f"the sweep ended (exit {worker.process.returncode}) before the condition held:\n"
                        f"{worker.stderr[-3000:]}")
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for the sweep:\n{worker.stderr[-3000:]}")


def claims(db: Path) -> list[tuple[str, int, bool]]:
    """(variant_key, rung, done) of every claim, read-only; [] before the sweep created them."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            rows = conn.execute(f"SELECT variant_key, rung, done FROM {CLAIMS.name}").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
    return [(key, rung, bool(done)) for key, rung, done in rows]


def stored(db: Path, name: str) -> list[dict[str, Any]]:
    """The user attributes of every study trial holding a result (a finished measurement).

    Read only once the sweep has written claims, i.e. after it created the study: loading a
    study must never be what creates the tables.
    """
    if not claims(db):
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return [dict(t.user_attrs) for t in study.get_trials(deepcopy=False) if t.user_attrs.get("result")]
    finally:
        storage.engine.dispose()


def screening(attrs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The search's measurements, without the final race's rounds."""
    return [a for a in attrs if a["rung"] != RACE_RUNG]


def by_pair(attrs: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """{(variant_key, rung): result JSON} of the search; fails on a measurement stored twice
    (a race measurement counts once per variant and round)."""
    pairs = [(a["variant_key"], a["rung"], a.get("race_round")) for a in attrs]
    duplicates = sorted({p for p in pairs if pairs.count(p) > 1})
    assert not duplicates, f"measured more than once: {duplicates}"
    return {(a["variant_key"], a["rung"]): a["result"] for a in screening(attrs)}


def results_of(attrs: list[dict[str, Any]], rung: int) -> dict[str, TrialResult]:
    return {a["variant_key"]: trial_from_json(a["result"]) for a in attrs if a["rung"] == rung}


def assert_complete_once(db: Path, name: str, keys: set[str]) -> dict[tuple[str, int], str]:
    """Every variant has exactly one full-rung result, complete, but naive, which races
    unscreened; besides, only race rounds of known variants are stored, each once, in rounds
    0, 1, ... (at least race.MIN_ROUNDS), naive's among them."""
    attrs = stored(db, name)
    pairs = by_pair(attrs)
    naive = {a["variant_key"] for a in attrs if a["role"] == Role.NAIVE.value}
    assert len(naive) == 1 and naive < keys
    assert set(pairs) == {(key, FULL_RUNG) for key in keys - naive}
    race_rounds = {(a["variant_key"], a["race_round"]) for a in attrs if a["rung"] == RACE_RUNG}
    assert {key for key, _ in race_rounds} <= keys and naive <= {key for key, _ in race_rounds}
    assert {r for _, r in race_rounds} == set(range(len({r for _, r in race_rounds})))
    assert len({r for _, r in race_rounds}) >= race.MIN_ROUNDS
    for key, result in results_of(attrs, FULL_RUNG).items():
        assert result.state is TrialState.COMPLETE, (key, result.reason)
        assert len(result.repeats) == 2
    return pairs


def assert_csv_lists_each_once(path: Path, keys: set[str]) -> None:
    frame = pd.read_csv(path)
    assert sorted(frame["key"]) == sorted(keys)
    assert set(frame["state"]) == {"complete"}


def burst_seconds(result: TrialResult) -> float:
    """Time spent in the burst itself: the timed repeats plus any cache fill."""
    return (sum(r.wall_ns for r in result.repeats) + (result.fill_ns or 0)) / 1e9


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# --------------------------------------------------------------------------- 2. resume after kill -9


def test_resume_after_kill_9_measures_every_variant_exactly_once(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "resume-kill", SMALL_SPACE)
    name, keys = study_name(load_spec(spec_path)), expected_keys(SMALL_SPACE)
    out = tmp_path / "out"
    db = out / "study.sqlite3"
    worker = Background("sweep", spec_path, "--out", out, "--strategy", "grid", cwd=tmp_path, tag="first")
    try:
        # Kill while a trial runs: two results stored and the next trial's process started.
        wait_for(lambda: len(stored(db, name)) >= 2 and trial_started(out, db), worker)
        os.killpg(worker.process.pid, signal.SIGKILL)
    finally:
        worker.kill_group()
    assert worker.process.returncode == -signal.SIGKILL
    before = by_pair(stored(db, name))
    running = {key for key, rung, done in claims(db) if not done}
    assert 2 <= len(before) < len(keys)
    assert running and running <= keys

    refused = run_cli("sweep", spec_path, "--out", out, "--strategy", "grid", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "--resume" in refused.stderr
    no_traceback(refused.stderr)

    resumed = run_cli("sweep", spec_path, "--out", out, "--strategy", "grid", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = assert_complete_once(db, name, keys)
    for pair, text in before.items():  # what finished before the kill is kept, not re-measured
        assert after[pair] == text
    assert all(done for *_, done in claims(db))
    assert_csv_lists_each_once(out / "results.csv", keys)


# --------------------------------------------------------------------------- 3. two workers, one storage


def test_two_workers_on_one_storage_split_the_work(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "two-workers", SMALL_SPACE)
    name, keys = study_name(load_spec(spec_path)), expected_keys(SMALL_SPACE)
    db = tmp_path / "shared.sqlite3"
    url = f"sqlite:///{db}"
    workers = [Background("sweep", spec_path, "--storage", url, "--out", tmp_path / tag, "--strategy", "grid",
                          cwd=tmp_path, tag=tag) for tag in ("a", "b")]
    try:
        codes = [w.wait() for w in workers]
    finally:
        for w in workers:
            w.kill_group()
    assert codes == [0, 0], [w.stderr[-3000:] for w in workers]
    assert_complete_once(db, name, keys)
    for tag in ("a", "b"):  # each worker writes the whole study's results
        assert_csv_lists_each_once(tmp_path / tag / "results.csv", keys)
        assert not (tmp_path / tag / "study.sqlite3").exists()


# --------------------------------------------------------------------------- 4. --json, 5. halving

# Bursts dominate the choice: each element waits 3 ms without using the CPU (like a remote
# read), and the "accelerator" takes 2 ms a batch of 8. One map call at a time waits 24 ms a
# batch; 4 in flight on tf.data's shared pool (2 threads on 2 cores) 12 ms; 4 in flight on a
# private pool of 8 threads 6 ms: one clear winner, 2x ahead of the rest. naive (map 1, shared
# pool) is also a candidate: 2 references + 3 other candidates, and halving promotes 1 of 3.
SLEEP_SPACE = {"map_parallel": [1, 4], "private_threadpool_size": [0, 8], "prefetch": [0]}
SLEEP_OPS = [{"decode_image": {"key": "image"}}, {"sleep": {"ms": 3}}, {"normalize": {"key": "image"}}]
SLEEP_STEPS = 12


SweepRun = tuple[dict[str, Any], list[dict[str, Any]]]  # (--json document, stored trial attributes)


def sleep_sweep(folder: Path, strategy: str) -> SweepRun:
    """Runs the sleep spec with ``strategy`` and --json: (stdout document, stored attributes)."""
    spec_path = write_spec(folder, "sleepy", SLEEP_SPACE, steps=SLEEP_STEPS, preprocess=SLEEP_OPS)
    out = folder / "out"
    done = run_cli("sweep", spec_path, "--out", out, "--strategy", strategy, "--json", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    no_traceback(done.stderr)

    def reject(constant: str) -> None:
        raise AssertionError(f"--json printed {constant}, which is not JSON")

    document = json.loads(done.stdout, parse_constant=reject)
    return document, stored(out / "study.sqlite3", study_name(load_spec(spec_path)))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    return sleep_sweep(tmp_path_factory.mktemp("grid"), "grid")


NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
# The --json document, schema_version 3: a dict is an object with (at least) these keys, a
# one-item list is an array of that item, a type (or tuple of types) is a JSON value.
JSON_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "spec": {"name": str, "hash": str},
    "mode": str,
    "strategy": str,
    "objective": str,
    "tuning_time_s": NUMBER,
    "budget_s": OPTIONAL_NUMBER,
    "device": {"cpu": str, "cores": int, "accelerator": str},
    "best": {"key": str, "role": str, "params": dict, "description": str, "median": NUMBER,
             "ci_low": NUMBER, "ci_high": NUMBER, "throughput_median": NUMBER,
             "input_wait_fraction": NUMBER, "time_to_train_s": NUMBER, "startup_s": NUMBER,
             "fill_s": OPTIONAL_NUMBER},
    "comparisons": [{"reference": str, "speedup": NUMBER, "ci_low": NUMBER, "ci_high": NUMBER,
                     "significant": bool, "batch_size_differs": bool}],
    "diagnosis": (dict, type(None)),
    "trials": [{"key": str, "role": str, "state": str, "reason": str, "rank": (int, type(None))}],
}
# What the document's trial rows hold beyond the README's summary of them.
TRIAL_ROW_DETAILS = {"description": str, "objective_median": OPTIONAL_NUMBER,
                     "throughput_median": OPTIONAL_NUMBER, "input_wait_fraction": OPTIONAL_NUMBER,
                     "repeats": int, "cut_short": bool, "steps_per_repeat": int}


def schema_problems(value: Any, schema: Any, where: str = "$") -> list[str]:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: must be an object, but got {value!r:.80}"]
        problems = [f"{where}.{key}: is missing" for key in schema if key not in value]
        for key, inner in schema.items():
            if key in value:
                problems += schema_problems(value[key], inner, f"{where}.{key}")
        return problems
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: must be an array, but got {value!r:.80}"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, schema[0], f"{where}[{i}]")]
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number
        return [f"{where}: must be {types}, but got {value!r}"]
    return [] if isinstance(value, types) else [f"{where}: must be {types}, but got {value!r:.80}"]


def test_json_document_has_the_documented_schema(grid_sweep: SweepRun) -> None:
    document, attrs = grid_sweep
    assert schema_problems(document, JSON_SCHEMA) == []
    assert schema_problems(document["trials"], [TRIAL_ROW_DETAILS], "$.trials") == []
    assert document["schema_version"] == 4
    # Every sweep diagnoses first; a hand-listed space keeps its space (no "space" key).
    diagnosis = document["diagnosis"]
    assert diagnosis["bottleneck"]["kind"] and "space" not in diagnosis
    assert diagnosis["pick_predicted_rate"] > 0 and diagnosis["pick_measured_rate"] > 0
    # objective auto: projected time to train, in every mode (simulate included)
    assert [document[k] for k in ("mode", "strategy", "objective")] == ["simulate", "grid", "time_to_train"]
    assert document["spec"]["name"] == "sleepy"
    roles, states = {r.value for r in Role}, {s.value for s in TrialState}
    rows = document["trials"]
    assert all(row["role"] in roles and row["state"] in states for row in rows)
    assert sorted(row["key"] for row in rows) == sorted(expected_keys(SLEEP_SPACE))
    # naive races unscreened: its row is its first race round
    naive = [a["variant_key"] for a in attrs if a["role"] == Role.NAIVE.value and a["race_round"] == 0]
    assert sorted(row["key"] for row in rows) == sorted([*(a["variant_key"] for a in screening(attrs)), *naive])
    assert {row["key"] for row in document["race"]} <= {row["key"] for row in rows}
    assert all(c["race_rounds"] >= race.MIN_ROUNDS for c in document["comparisons"])
    ranked = sorted((row for row in rows if row["rank"] is not None), key=lambda row: row["rank"])
    assert document["best"]["key"] == ranked[0]["key"]
    assert {c["reference"] for c in document["comparisons"]} <= {"naive", "autotune-default"}
    assert "stored" not in document  # raw per-step timestamps only go to results.json


def test_readme_describes_the_json_schema() -> None:
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    text = readme.read_text()
    section = text.partition("### `--json`")[2]
    assert section, "README has no `--json` section"
    example = section.partition("```json")[2].partition("```")[0]
    assert example.strip(), "the `--json` section has no JSON example"
    assert schema_problems(json.loads(example), JSON_SCHEMA) == []


def test_halving_finds_the_grid_winner_with_less_burst_time(
        grid_sweep: SweepRun, tmp_path: Path) -> None:
    grid_document, grid_attrs = grid_sweep
    halving_document, halving_attrs = sleep_sweep(tmp_path, "halving")
    assert halving_document["strategy"] == "halving"
    by_pair(halving_attrs)  # nothing measured twice

    # Halving: every candidate a short burst (3 steps), the best third (1 of 3) a full one.
    references = {row["key"] for row in grid_document["trials"] if row["role"] != "candidate"}
    candidates = expected_keys(SLEEP_SPACE) - references
    short, full = results_of(halving_attrs, SHORT_RUNG), results_of(halving_attrs, FULL_RUNG)
    assert set(short) == candidates
    assert {r.budget_steps for r in short.values()} == {SLEEP_STEPS // 4}
    screened = {row["key"] for row in grid_document["trials"] if row["role"] == "autotune-default"}
    assert set(full) & references == screened  # naive races unscreened
    promoted = set(full) - references
    assert len(promoted) == round(len(candidates) * search.PROMOTE_FRACTION) == 1
    # promoted by the objective (auto: time to train over the default 30 epochs)
    assert promoted == {min(short, key=lambda key: stats.trial_objective_value(short[key], "time_to_train", 30))}

    # The same winner, or one the grid's own measurements cannot tell from it.
    grid_results = list(results_of(grid_attrs, FULL_RUNG).values())
    ranking = rank(grid_results, "throughput")
    grid_best = ranking.best
    halving_best_key = halving_document["best"]["key"]
    assert grid_best is not None and grid_best.trial.key == grid_document["best"]["key"]
    assert grid_best.trial.key == variant_key(PipelineParams(batch_size=8, map_parallel=4, prefetch=0,
                                                             private_threadpool_size=8))
    if halving_best_key != grid_best.trial.key:
        other = next(r for r in ranking.ranked if r.trial.key == halving_best_key)
        assert not beats(grid_best, other, higher_is_better=True), (
            f"halving picked {halving_best_key} ({other.median:.0f}/s), which the grid's "
            f"{grid_best.trial.key} ({grid_best.median:.0f}/s) beats")

    # An epoch of this data is short, so every burst times whole epochs: a short burst saves
    # no burst time, and the auto strategy's plan knows it (it never picks halving then).
    assert all(r.whole_epochs for r in [*short.values(), *full.values()])
    assert search.plan_search(len(candidates), 0.0, 12.0, 50.0, short_fraction=1.0).strategy == "grid"


# --------------------------------------------------------------------------- 6. exit codes


def test_a_bad_spec_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "bad", SMALL_SPACE)
    data = yaml.safe_load(spec_path.read_text())
    data["measure"]["steps"] = 0
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = run_cli("sweep", spec_path, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    no_traceback(done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{spec_path}:") and "measure.steps" in lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()  # fatal before anything runs


def test_ctrl_c_exits_130_keeps_results_and_resume_completes(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, "interrupted", SMALL_SPACE)
    name, keys = study_name(load_spec(spec_path)), expected_keys(SMALL_SPACE)
    out = tmp_path / "out"
    db = out / "study.sqlite3"
    worker = Background("sweep", spec_path, "--out", out, "--strategy", "grid", cwd=tmp_path, tag="first")
    try:
        wait_for(lambda: len(stored(db, name)) >= 1 and trial_started(out, db), worker)
        # As a terminal's Ctrl-C does: to the whole foreground group, the running trial included.
        os.killpg(worker.process.pid, signal.SIGINT)
        code = worker.wait()
    finally:
        worker.kill_group()
    assert code == 130, worker.stderr[-3000:]
    no_traceback(worker.stderr)
    hint = resume_hint(worker.stderr)
    assert hint[:2] == ["pipetune", "sweep"] and "--resume" in hint and str(out) in hint
    before = by_pair(stored(db, name))
    assert 1 <= len(before) < len(keys)
    # The interrupted measurement is not stored as a failure: resume measures it again.
    assert all(trial_from_json(text).state is TrialState.COMPLETE for text in before.values())

    resumed = run_cli(*hint[1:], cwd=tmp_path)  # the command as printed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = assert_complete_once(db, name, keys)
    assert all(after[pair] == text for pair, text in before.items())
    assert_csv_lists_each_once(out / "results.csv", keys)


def trial_started(out: Path, db: Path) -> bool:
    """A claimed trial's process is past its start-up: it has opened its own log.

    (A Ctrl-C that lands earlier, while ``spawn_main`` is still unpickling the request, makes
    the trial process print a KeyboardInterrupt traceback on the terminal: a known defect of
    trial.py, which could start the child with SIGINT ignored. Not what these tests are about.)
    """
    running = [key for key, _, done in claims(db) if not done]
    return any(any(out.glob(f"logs/trial-{key}-*.log")) for key in running)


def resume_hint(stderr: str) -> list[str]:
    """The command printed after "Resume with:", split as a shell would."""
    lines = stderr.splitlines()
    at = next((i for i, line in enumerate(lines) if line.rstrip().endswith("Resume with:")), None)
    assert at is not None and at + 1 < len(lines), f"no resume hint in:\n{stderr[-2000:]}"
    return shlex.split(lines[at + 1])


def interrupt_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         *args: str) -> list[str]:
    """``pipetune sweep *args`` interrupted at once (no trial runs); returns the resume hint."""

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pipetune.runner.run_sweep", interrupted)
    monkeypatch.delenv("COLUMNS", raising=False)  # stderr piped to a log: rich's default width
    assert cli.main(["sweep", *args]) == 130
    return resume_hint(capsys.readouterr().err)


def test_the_resume_hint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "a-folder-name-long-enough-that-the-paths-pass-eighty-columns"
    spec_path = write_spec(folder, "hint", SMALL_SPACE)
    hint = interrupt_in_process(monkeypatch, capsys, str(spec_path), "--out", str(folder / "out"))
    assert hint == ["pipetune", "sweep", str(spec_path), "--out", str(folder / "out"), "--resume"]


def test_the_resume_hint_keeps_what_decides_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(tmp_path, "hint", SMALL_SPACE)
    monkeypatch.chdir(tmp_path)  # short relative paths: nothing to wrap
    hint = interrupt_in_process(monkeypatch, capsys, "hint.yaml", "--out", "o", "--storage", "sqlite:///s.db",
                                "--mode", "input")
    assert hint[0] == "pipetune"
    args = cli._parser().parse_args(hint[1:])  # read back as pipetune itself reads it
    assert (args.spec, args.out, args.resume) == ("hint.yaml", Path("o"), True)
    assert (args.storage, args.mode) == ("sqlite:///s.db", "input")
