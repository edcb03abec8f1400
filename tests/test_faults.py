"""The fault matrix: bad data, OS refusals, bad options and resume mistakes each end in one line
naming the culprit, the right exit code, no traceback, and nothing previously written changed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from pipetune.cli import main

TINY = """\
name: tiny
source: {kind: synthetic_images, num_examples: 48, image_size: [16, 16], num_classes: 3, seed: 1}
preprocess: [{decode_image: {key: image}}, {normalize: {key: image}}]
inputs: {features: image, label: label}
model: {builtin: small_cnn}
measure: {warmup_steps: 1, steps: 3, repeats: 2, timeout_s: 60}
search: {strategy: grid, budget_s: 120, space: {shards: [1], interleave_cycle: [1], map_parallel: [1],
         cache: [none], prefetch: [0], batch_size: [16]}}
"""
OUTPUTS = ("results.csv", "results.json", "best_pipeline.py", "report.html")


def error_line(err: str) -> str:
    """The one error line; fails on a traceback or on more than one error line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def run_cli(*argv: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipetune", *argv], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=environ)


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in OUTPUTS}


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[Path]:
    """A read-only file system (root ignores chmod); skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One finished tiny sweep: (spec, out dir, the process), run with its own TMPDIR."""
    root = tmp_path_factory.mktemp("swept")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    (root / "tmp").mkdir()
    done = run_cli("sweep", str(spec), "--out", str(root / "out"), env={"TMPDIR": str(root / "tmp")})
    assert done.returncode == 0, done.stderr
    return spec, root / "out", done


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


# --------------------------------------------------------------------------- options and --out


@pytest.mark.parametrize("budget", ["-5", "0", "nan", "inf"])
def test_a_budget_must_be_positive_and_finite(budget, spec_file, tmp_path, capsys):
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--budget", budget]) == 2
    assert "--budget" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["proc", "file"])
def test_an_out_folder_that_cannot_be_made_is_named(where, spec_file, tmp_path, capsys):
    out = Path("/proc/pipetune-x") if where == "proc" else tmp_path / "a-file"
    if where == "file":
        out.write_text("keep me")
    assert main(["sweep", str(spec_file), "--out", str(out)]) == 2
    assert str(out) in error_line(capsys.readouterr().err)
    if where == "file":
        assert out.read_text() == "keep me"


def test_an_out_folder_on_a_read_only_file_system_is_refused_before_any_work(spec_file, tmp_path, capsys):
    with read_only_mount(tmp_path / "ro") as ro:
        assert main(["sweep", str(spec_file), "--out", str(ro / "out")]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(ro / "out") in line and "Read-only" in line


def test_an_immutable_out_folder_is_refused(spec_file, tmp_path, capsys):
    out = tmp_path / "frozen"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        assert main(["sweep", str(spec_file), "--out", str(out)]) == 2
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert str(out) in error_line(capsys.readouterr().err)
    assert list(out.iterdir()) == []


def test_resume_with_nothing_to_resume_says_so(spec_file, tmp_path, capsys):
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "out"), "--resume"]) == 2
    assert "nothing to resume" in error_line(capsys.readouterr().err)


def test_a_spec_that_is_not_utf8_is_one_spec_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(TINY.replace("tiny", "t\xe9").encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == err.strip().splitlines()[0]
    assert err.startswith(f"{path}:1:1: <document>: the spec must be UTF-8 text")


# --------------------------------------------------------------------------- stored results


@pytest.mark.parametrize("command", ["emit", "report"])
@pytest.mark.parametrize("content", ['{"schema_version": 1, "stor', "{}"])
def test_a_corrupt_results_file_without_a_study_is_named(command, content, tmp_path, capsys):
    (tmp_path / "results.json").write_text(content)
    assert main([command, str(tmp_path)]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(tmp_path / "results.json") in line
    assert ("corrupt" if content != "{}" else "incomplete") in line


def test_emit_and_report_rebuild_from_the_study_when_results_json_is_corrupt(swept, tmp_path):
    _, out, _ = swept
    copy = shutil.copytree(out, tmp_path / "copy")
    expected = (out / "best_pipeline.py").read_text()
    (copy / "results.json").write_text('{"schema_version": 1, "trun')
    (copy / "best_pipeline.py").unlink()
    for command in ("emit", "report"):
        done = run_cli(command, str(copy))
        assert done.returncode == 0, done.stderr
        assert "rebuilt the sweep from" in done.stderr and "Traceback" not in done.stderr
    body = lambda text: text.split('"""', 2)[2]  # noqa: E731 - the header holds a timestamp
    assert body((copy / "best_pipeline.py").read_text()) == body(expected)


def test_emit_to_a_read_only_file_system_is_one_line(swept, tmp_path):
    _, out, _ = swept
    with read_only_mount(tmp_path / "ro") as ro:
        done = run_cli("emit", str(out), "--output", str(ro / "best.py"))
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert str(ro / "best.py") in line and "Read-only" in line


def test_resume_after_the_spec_changed_is_refused_and_overwrites_nothing(swept, tmp_path):
    spec, out, _ = swept
    before = digests(out)
    changed = tmp_path / "tiny.yaml"
    changed.write_text(spec.read_text().replace("steps: 3", "steps: 4"))
    done = run_cli("sweep", str(changed), "--out", str(out), "--resume")
    assert done.returncode == 2
    assert "measure.steps 3 -> 4" in error_line(done.stderr)
    assert digests(out) == before


# --------------------------------------------------------------------------- hygiene


def test_a_sweep_leaves_no_stray_files_and_no_tensorflow_chatter(swept):
    _, out, done = swept
    assert list((out.parent / "tmp").glob("pipetune-*")) == []  # no /tmp server log
    assert list((out / "scratch").glob("trial-*")) == []
    for chatter in ("oneDNN", "absl::InitializeLog", "cuda"):
        assert chatter not in done.stderr


def test_scratch_of_a_killed_sweep_is_removed_at_the_next_start(tmp_path):
    from pipetune.preflight import clean_stale_scratch

    scratch = tmp_path / "scratch"
    dead, alive = scratch / "trial-abc-p999999999-x1", scratch / f"trial-abc-p{os.getpid()}-x2"
    for folder in (dead, alive):
        (folder / "cache").mkdir(parents=True)
    clean_stale_scratch(tmp_path)
    assert not dead.exists() and alive.exists()


# --------------------------------------------------------------------------- repeated failure


def test_repeated_identical_failures_stop_the_sweep_and_keep_the_results(tmp_path):
    spec = tmp_path / "doomed.yaml"
    spec.write_text(TINY.replace("timeout_s: 60", "timeout_s: 0.01")
                    .replace("map_parallel: [1]", "map_parallel: [1, 2, 3, 4]"))
    done = run_cli("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stderr
    line = error_line(done.stderr)
    assert "stopped early" in line and "timed out" in line
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()[1:]
    assert sum(",failed," in row for row in rows) == 3


# --------------------------------------------------------------------------- the data check


def write_bad_data(folder: Path, tf) -> dict[str, Path]:
    """Three sources that pass the cheap spec checks but fail every trial."""
    rows = ["x0,x1,y", *(f"{i * 0.5},{i},{i % 2}" for i in range(20))]
    rows[5] = "abc,4,1"
    (folder / "rows.csv").write_text("\n".join(rows) + "\n")
    with tf.io.TFRecordWriter(str(folder / "text.tfrecord")) as writer:
        for i in range(4):
            writer.write(b"plain text, not an Example %d" % i)
    for name in ("a", "b"):
        (folder / "images" / name).mkdir(parents=True)
        for i in range(3):
            jpeg = tf.io.encode_jpeg(tf.fill([16, 16, 3], tf.constant(i * 40, tf.uint8))).numpy()
            (folder / "images" / name / f"{i}.jpg").write_bytes(jpeg)
    broken = folder / "images" / "b" / "1.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[:len(good) // 2] + bytes(len(good) // 2))  # header fine, body zeros
    head = "inputs: {features: image, label: label}\nmodel: {builtin: small_cnn}\n"
    image_ops = "preprocess: [{decode_image: {key: image}}, {normalize: {key: image}}]\n"
    specs = {
        "csv": "source: {kind: csv, path: rows.csv, label: y}\ninputs: {features: [x0, x1], label: y}\n"
               "model: {builtin: mlp, num_classes: 2}\n",
        "tfrecord": "source: {kind: tfrecord, files: text.tfrecord, features: {image: {type: bytes}, "
                    "label: {type: int64}}}\n" + image_ops + head.replace("small_cnn}", "small_cnn, num_classes: 2}"),
        "image_folder": "source: {kind: image_folder, root: images}\n" + image_ops + head,
    }
    paths = {}
    for kind, body in specs.items():
        paths[kind] = folder / f"{kind}.yaml"
        paths[kind].write_text(f"name: bad-{kind.replace('_', '-')}\n{body}")
    return paths


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, tf) -> dict[str, Path]:
    return write_bad_data(tmp_path_factory.mktemp("bad"), tf)


@pytest.mark.parametrize("kind, names", [
    ("csv", ["rows.csv", "row 5", "column 'x0'", "'abc' is not a number"]),
    ("tfrecord", ["text.tfrecord", "record 0", "not a tf.train.Example"]),
    ("image_folder", ["images/b/1.jpg", "feature 'image'", "decode_image", "JPEG"]),
])
def test_validate_names_the_file_record_and_feature_of_bad_data(bad_data, kind, names, capsys):
    assert main(["validate", str(bad_data[kind])]) == 2
    line = error_line(capsys.readouterr().err)
    for name in names:
        assert name in line


def test_a_sweep_over_bad_data_stops_before_any_shard_or_trial(bad_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(bad_data["tfrecord"]), "--out", str(out)]) == 2
    assert "record 0" in error_line(capsys.readouterr().err)
    assert not (out / "shards").exists() and not (out / "study.sqlite3").exists()


def test_validate_without_tensorflow_runs_the_cheap_checks_and_says_so(bad_data, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert main(["validate", str(bad_data["tfrecord"])]) == 0
    assert "needs TensorFlow" in capsys.readouterr().out
    assert main(["validate", str(bad_data["csv"])]) == 2  # the CSV check needs no TensorFlow
    assert "row 5" in error_line(capsys.readouterr().err)
