"""best_pipeline.py and pipetune.best_pipeline(): what the user takes home."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import pipetune
from conftest import make_spec
from pipetune.device import Device
from pipetune.emit import render_best
from pipetune.errors import NoSweepError
from pipetune.plan import DataLayout
from pipetune.ranking import rank
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState
from pipetune.spec import FeatureSpec, PipelineParams
from pipetune.store import load_outcome
from pipetune.outcome import SweepOutcome

GOLDEN = Path(__file__).parent / "golden" / "best_pipeline.py"
SCHEMA = {"image": FeatureSpec(type="bytes"), "label": FeatureSpec(type="int64")}
LAYOUT = DataLayout("/data/demo/part-*.tfrecord", "none", SCHEMA)
ENV = {"python": "3.11.7", "tensorflow": "2.21.0", "keras": "3.15.1"}


def _trial(params: PipelineParams, role: Role, step_ms: list[float], env=ENV) -> TrialResult:
    """A completed trial with one repeat per entry of ``step_ms`` (10 steps of that many ms)."""
    repeats = []
    for ms in step_ms:
        step = int(ms * 1e6)
        requests = tuple(i * step for i in range(10))
        repeats.append(RepeatTiming(requests, (step // 4,) * 10, (step - step // 4,) * 10, 10 * params.batch_size))
    fill = 900_000_000 if params.cache != "none" else None
    return TrialResult(key=f"k-{hashlib.sha1(repr(params).encode()).hexdigest()[:6]}", role=role,
                       params=params.model_dump(), state=TrialState.COMPLETE, batch_size=params.batch_size,
                       steps_per_epoch=16, startup_ns=200_000_000, fill_ns=fill, repeats=tuple(repeats),
                       cpu_percent=120.0, peak_rss_bytes=2**30, environment=dict(env), budget_steps=10)


def fixed_outcome(tmp: Path, env=ENV) -> SweepOutcome:
    spec = make_spec(tmp, name="golden-demo",
                     preprocess=[{"decode_image": {"key": "image"}}, {"random_flip": {"key": "image"}},
                                 {"normalize": {"key": "image"}}])
    naive = PipelineParams(shards=8, batch_size=32)
    best = naive.model_copy(update={"map_parallel": "autotune", "prefetch": "autotune", "cache": "memory",
                                    "interleave_cycle": 4})
    trials = [
        _trial(naive, Role.NAIVE, [40, 41, 42], env),
        _trial(best.model_copy(update={"cache": "none"}), Role.AUTOTUNE_DEFAULT, [20, 21, 22], env),
        _trial(best, Role.CANDIDATE, [10, 10.5, 11], env),
        _trial(best.model_copy(update={"map_parallel": 1}), Role.CANDIDATE, [30, 31, 33], env),
        _trial(best.model_copy(update={"prefetch": 0}), Role.CANDIDATE, [12, 13, 14], env),
    ]
    device = Device("Test CPU", 2, True, accelerator_note="No NVIDIA GPU (NVML library not found)")
    return SweepOutcome(spec, tmp, "grid", "train", trials, [], rank(trials, "time_to_train", epochs=30),
                        device, 100.0)


def test_emitted_code_matches_the_golden_file(tmp_path):
    """Changes to the emitted text must be deliberate: regenerate the golden file on purpose."""
    text = render_best(fixed_outcome(tmp_path), today=datetime.date(2026, 1, 2), data=LAYOUT)
    if os.environ.get("PIPETUNE_REGENERATE_GOLDEN"):  # a deliberate change: review the diff
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_stage_carries_its_evidence(tmp_path):
    text = render_best(fixed_outcome(tmp_path), today=datetime.date(2026, 1, 2), data=LAYOUT)
    assert re.search(r"# memory cache after the deterministic ops \(filled in 0\.9 s, once\): \d\.\d\dx vs "
                     r"no cache", text)
    assert "x vs sequential map (95% CI" in text and "3 screening bursts)" in text
    assert "x vs no prefetch" in text
    assert "tf.data.AUTOTUNE" in text  # AUTOTUNE stays where it won
    assert "Speed-up:    " in text and "vs naive" in text


def test_one_objective_in_the_whole_file(tmp_path):
    """The header names the objective, and no comment quotes another (was: throughput ratios
    under a time-to-train header)."""
    text = render_best(fixed_outcome(tmp_path), today=datetime.date(2026, 1, 2), data=LAYOUT)
    assert "# Objective:   projected time to train 30 epochs" in text
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert not [line for line in comments if "x throughput" in line]


def test_an_effect_whose_interval_holds_one_is_no_measurable_difference(tmp_path):
    outcome = fixed_outcome(tmp_path)
    winner = outcome.ranking.best.trial
    twin = PipelineParams(**winner.params).model_copy(update={"map_and_batch_fusion": False})
    # Overlaps the winner's 10-11 ms; costlier, so a tie keeps the winner first.
    noisy = dataclasses.replace(_trial(twin, Role.CANDIDATE, [9, 10.6, 13]), cpu_percent=300.0)
    trials = [*outcome.results, noisy]
    spec = outcome.spec.model_copy(update={"search": outcome.spec.search.model_copy(update={
        "space": outcome.spec.search.space.model_copy(update={"map_and_batch_fusion": [True, False]})})})
    outcome = SweepOutcome(spec, tmp_path, "grid", "train", trials, [],
                           rank(trials, "time_to_train", epochs=30), outcome.device, 100.0)
    text = render_best(outcome, today=datetime.date(2026, 1, 2), data=LAYOUT)
    body = text.split("def make_dataset")[1]
    line = next(line for line in body.splitlines() if "map-and-batch fusion:" in line)
    assert "no measurable difference from" in line, line  # whichever of the tied pair placed first


def test_no_prefetch_is_said_once(tmp_path):
    outcome = fixed_outcome(tmp_path)
    text = render_best(outcome, rank=2, today=datetime.date(2026, 1, 2), data=LAYOUT)
    assert "ds.prefetch(" not in text.split("def make_dataset")[1]
    assert text.count("# no prefetch") == 1


def test_the_header_says_how_to_write_the_layout_for_new_data(tmp_path):
    text = render_best(fixed_outcome(tmp_path), today=datetime.date(2026, 1, 2), data=LAYOUT)
    assert "pipetune shard <data.yaml> --shards 8 --compression none --out DIR" in text
    assert "make_dataset(file_pattern='DIR/*.tfrecord')" in text
    assert "def make_dataset(file_pattern=FILE_PATTERN" in text


def _assert_only_in_literals_or_comments(text: str, marker: str) -> None:
    ast.parse(text)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if marker in token.string:
            assert token.type in (tokenize.COMMENT, tokenize.STRING), token


def test_hostile_strings_cannot_escape_comments_or_strings(tmp_path):
    hostile = 'PWNED"); import os; os.system("x")\nPWNED = 1\r\u2028PWNED()'
    outcome = fixed_outcome(tmp_path, env={**ENV, "tensorflow": hostile})
    data = DataLayout(f"/data/{hostile}/*.tfrecord", "none", SCHEMA)
    text = render_best(outcome, today=datetime.date(2026, 1, 2), data=data)
    _assert_only_in_literals_or_comments(text, "PWNED")
    tree = ast.parse(text)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "PWNED"]


def test_best_pipeline_without_a_sweep_says_which_command_to_run(tmp_path):
    with pytest.raises(NoSweepError, match="pipetune sweep"):
        pipetune.best_pipeline(tmp_path)


# --------------------------------------------------------------------------- a real sweep

DETERMINISTIC = {
    "preprocess": [{"decode_image": {"key": "image"}}, {"normalize": {"key": "image"}}],
    "model": {"step_time_ms": 1},
    "search": {"strategy": "grid", "budget_s": 300, "space": {
        "shards": [2], "interleave_cycle": [1, 2], "map_parallel": [1], "cache": ["none"],
        "shuffle_buffer": [0], "batch_size": [8], "prefetch": [0], "deterministic": [True]}},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("emit-sweep")
    spec = make_spec(folder, **DETERMINISTIC)
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    results = pipetune.sweep(path, out_dir=folder / "out")
    return results


def _epoch(dataset) -> list[tuple[str, int]]:
    return [(hashlib.sha1(x.tobytes()).hexdigest(), int(y))
            for xs, ys in dataset.as_numpy_iterator() for x, y in zip(xs, ys)]


@pytest.mark.slow
def test_round_trip_emitted_api_and_measured_datasets_are_identical(swept, tmp_path):
    """The file a user gets, the API, and the code the winning trial ran: one epoch, same order."""
    import importlib.util

    outcome = load_outcome(swept.paths["results_json"].parent)
    winner = outcome.ranking.best.trial
    measured_file = tmp_path / "measured.py"
    measured_file.write_text(winner.pipeline_source)
    loaded = {}
    for name, path in (("measured", measured_file), ("emitted", swept.paths["results_json"].parent / "best_pipeline.py")):
        spec = importlib.util.spec_from_file_location(f"rt_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[name] = _epoch(module.make_dataset())
    api = _epoch(pipetune.best_pipeline(swept.paths["results_json"].parent))
    assert len(api) == 48
    assert loaded["measured"] == loaded["emitted"] == api
    info = pipetune.best_pipeline_info(swept.paths["results_json"].parent)
    assert info.precision_policy == "float32" and info.params.batch_size == 8


@pytest.mark.slow
def test_emitted_file_runs_in_a_fresh_interpreter_without_pipetune(swept, tmp_path):
    folder = swept.paths["results_json"].parent
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import best_pipeline; "
              "best_pipeline.apply_precision_policy(); "
              "x, y = next(iter(best_pipeline.make_dataset())); "
              "assert 'pipetune' not in sys.modules, 'pipetune was imported'; print(x.shape[0])")
    done = subprocess.run([sys.executable, "-I", "-c", script, str(folder)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "8"
    imported = {n.names[0].name for n in ast.walk(ast.parse((folder / "best_pipeline.py").read_text()))
                if isinstance(n, ast.Import)}
    assert imported <= {"tensorflow", "keras", "time"}


@pytest.mark.slow
def test_readers_never_write_shards_and_say_how_to_make_them(swept, tmp_path):
    """Was: ``pipetune report`` and ``best_pipeline()`` re-wrote missing shard sets."""
    import shutil

    from pipetune.report import write_report

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(swept.paths["results_json"], copy / "results.json")
    with pytest.raises(NoSweepError, match="pipetune shard <data.yaml> --shards 2"):
        pipetune.best_pipeline(copy)
    page = write_report(load_outcome(copy)).read_text(encoding="utf-8")
    assert "best_pipeline.py could not be rendered" in page
    assert not (copy / "shards").exists()
