"""The search: strategy choice (pure arithmetic), then whole sweeps run as a user runs them.

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
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import yaml

from pipetune import search, stats
from pipetune.claims import CLAIMS
from pipetune.ranking import beats, rank
from pipetune.results import Role, TrialResult, TrialState
from pipetune.search import FULL_RUNG, SHORT_RUNG, SearchPlan, plan_search
from pipetune.serialize import trial_from_json
from pipetune.space import variant_key
from pipetune.spec import PipelineParams
from pipetune.runner import study_name
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


def test_grid_when_every_candidate_fits_exactly() -> None:
    # A full trial costs 2 + 2 = 4 s; 10 of them take exactly the 40 s left.
    assert plan_search(10, overhead_s=2.0, full_burst_s=2.0, remaining_s=40.0) == SearchPlan("grid", 10, 40.0)


def test_grid_over_halving_when_overhead_dominates() -> None:
    # grid: 8 + 2 = 10 s a variant. halving: a short trial 8 + 2/4 = 8.5 s, plus a third of a
    # full one 10/3 s = 11.83 s: a shorter burst saves little when the process costs most.
    # 55 s fit 5 full trials.
    assert plan_search(10, overhead_s=8.0, full_burst_s=2.0, remaining_s=55.0) == SearchPlan("grid", 5, 50.0)


def test_grid_wins_an_exact_tie_with_halving() -> None:
    # grid 5 + 4 = 9 s; halving (5 + 1) + 9/3 = 9 s. Equal cost: the simpler strategy.
    assert plan_search(10, overhead_s=5.0, full_burst_s=4.0, remaining_s=45.0) == SearchPlan("grid", 5, 45.0)


def test_halving_when_bursts_dominate() -> None:
    # grid 0 + 12 = 12 s a variant (all 10 need 120 s, more than the 70 s left);
    # halving 12/4 + 12/3 = 3 + 4 = 7 s a variant: all 10 fit in 70 s.
    assert plan_search(10, overhead_s=0.0, full_burst_s=12.0, remaining_s=70.0) == SearchPlan("halving", 10, 70.0)
    # 50 s fit 7 of them (49 s), not 8 (56 s).
    assert plan_search(10, overhead_s=0.0, full_burst_s=12.0, remaining_s=50.0) == SearchPlan("halving", 7, 49.0)


@pytest.mark.parametrize("remaining_s", [0.0, 1.0, -30.0])
def test_a_sample_of_one_when_nothing_fits(remaining_s: float) -> None:
    assert plan_search(10, overhead_s=8.0, full_burst_s=2.0, remaining_s=remaining_s) == SearchPlan("grid", 1, 10.0)
    assert plan_search(10, overhead_s=0.0, full_burst_s=12.0, remaining_s=remaining_s) == SearchPlan("halving", 1, 7.0)


def test_the_plan_never_exceeds_the_space() -> None:
    assert plan_search(3, overhead_s=0.0, full_burst_s=12.0, remaining_s=1e6) == SearchPlan("grid", 3, 36.0)
    assert plan_search(0, overhead_s=5.0, full_burst_s=5.0, remaining_s=0.0) == SearchPlan("grid", 0, 0.0)


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
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"}


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=SWEEP_TIMEOUT_S)


class Background:
    """``pipetune`` in its own process group, output to files (a full pipe would block it)."""

    def __init__(self, *args: object, cwd: Path, tag: str) -> None:
        self.stdout_path, self.stderr_path = cwd / f"{tag}.stdout", cwd / f"{tag}.stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command(*args), cwd=cwd, env=environment(), stdout=out,
                                            stderr=err, start_new_session=True)

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

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()


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


def by_pair(attrs: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """{(variant_key, rung): result JSON}; fails on a measurement stored twice."""
    pairs = [(a["variant_key"], a["rung"]) for a in attrs]
    duplicates = sorted({p for p in pairs if pairs.count(p) > 1})
    assert not duplicates, f"measured more than once: {duplicates}"
    return {(a["variant_key"], a["rung"]): a["result"] for a in attrs}


def results_of(attrs: list[dict[str, Any]], rung: int) -> dict[str, TrialResult]:
    return {a["variant_key"]: trial_from_json(a["result"]) for a in attrs if a["rung"] == rung}


def assert_complete_once(db: Path, name: str, keys: set[str]) -> dict[tuple[str, int], str]:
    """Every variant has exactly one full-rung result, complete; nothing else is stored."""
    attrs = stored(db, name)
    pairs = by_pair(attrs)
    assert set(pairs) == {(key, FULL_RUNG) for key in keys}
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
        # Kill while a trial runs: two results stored and a claim not yet done.
        wait_for(lambda: len(stored(db, name)) >= 2 and any(not done for *_, done in claims(db)), worker)
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


def sleep_sweep(folder: Path, strategy: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return sleep_sweep(tmp_path_factory.mktemp("grid"), "grid")


NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
# The --json document, schema_version 1: a dict is an object with (at least) these keys, a
# one-item list is an array of that item, a type (or tuple of types) is a JSON value.
JSON_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "spec": {"name": str, "hash": str},
    "mode": str,
    "strategy": str,
    "objective": str,
    "tuning_time_s": NUMBER,
    "device": {"cpu": str, "cores": int, "accelerator": str},
    "best": {"key": str, "role": str, "params": dict, "description": str, "median": NUMBER,
             "ci_low": NUMBER, "ci_high": NUMBER, "throughput_median": NUMBER,
             "input_wait_fraction": NUMBER, "time_to_train_s": NUMBER, "startup_s": NUMBER,
             "fill_s": OPTIONAL_NUMBER},
    "comparisons": [{"reference": str, "speedup": NUMBER, "ci_low": NUMBER, "ci_high": NUMBER,
                     "significant": bool, "batch_size_differs": bool}],
    "trials": [{"key": str, "role": str, "state": str, "reason": str, "rank": (int, type(None))}],
}
# What the document's trial rows hold beyond the README's summary of them.
TRIAL_ROW_DETAILS = {"description": str, "objective_median": OPTIONAL_NUMBER,
                     "throughput_median": OPTIONAL_NUMBER, "input_wait_fraction": OPTIONAL_NUMBER,
                     "repeats": int, "steps_per_repeat": int}


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


def test_json_document_has_the_documented_schema(grid_sweep: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    document, attrs = grid_sweep
    assert schema_problems(document, JSON_SCHEMA) == []
    assert schema_problems(document["trials"], [TRIAL_ROW_DETAILS], "$.trials") == []
    assert document["schema_version"] == 1
    assert (document["mode"], document["strategy"], document["objective"]) == ("simulate", "grid", "throughput")
    assert document["spec"]["name"] == "sleepy"
    roles, states = {r.value for r in Role}, {s.value for s in TrialState}
    rows = document["trials"]
    assert all(row["role"] in roles and row["state"] in states for row in rows)
    assert sorted(row["key"] for row in rows) == sorted(expected_keys(SLEEP_SPACE))
    assert sorted(row["key"] for row in rows) == sorted(a["variant_key"] for a in attrs)
    ranked = sorted((row for row in rows if row["rank"] is not None), key=lambda row: row["rank"])
    assert document["best"]["key"] == ranked[0]["key"]
    assert {c["reference"] for c in document["comparisons"]} <= {"naive", "autotune-default"}
    assert "raw_trials" not in document  # per-step timestamps only go to results.json


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
        grid_sweep: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path) -> None:
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
    assert references <= set(full)
    promoted = set(full) - references
    assert len(promoted) == round(len(candidates) * search.PROMOTE_FRACTION) == 1
    assert promoted == {max(short, key=lambda key: stats.median_iqr(stats.repeat_throughputs(short[key]))[0])}

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

    grid_burst = sum(burst_seconds(r) for r in grid_results)
    halving_burst = sum(burst_seconds(r) for r in [*short.values(), *full.values()])
    assert halving_burst < grid_burst


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
        wait_for(lambda: len(stored(db, name)) >= 1 and any(not done for *_, done in claims(db)), worker)
        worker.process.send_signal(signal.SIGINT)
        code = worker.wait()
    finally:
        worker.kill_group()
    assert code == 130, worker.stderr[-3000:]
    no_traceback(worker.stderr)
    assert "--resume" in worker.stderr and str(out) in worker.stderr
    before = by_pair(stored(db, name))
    assert 1 <= len(before) < len(keys)
    # The interrupted measurement is not stored as a failure: resume measures it again.
    assert all(trial_from_json(text).state is TrialState.COMPLETE for text in before.values())

    resumed = run_cli("sweep", spec_path, "--out", out, "--strategy", "grid", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = assert_complete_once(db, name, keys)
    assert all(after[pair] == text for pair, text in before.items())
    assert_csv_lists_each_once(out / "results.csv", keys)
