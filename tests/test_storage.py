"""The study storage without a database server: redaction, the early check of a URL (one line,
exit 2, no password), and the retries that carry a sweep through a storage outage without
losing or doubling a finished measurement (SQLite stands in; tests/test_postgres.py runs the
same against a real PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml

import fake_search
from fake_search import ALL_PAIRS, NO_WAIT, VARIANTS, new_state, stored_pairs
from pipetune import cli, search, storage
from pipetune import claims as claims_module
from pipetune.claims import ClaimBoard
from pipetune.errors import StorageError, StorageLostError

SECRET = "Hunter2-secret"


def tiny_spec(folder: Path) -> Path:
    """A valid spec; these tests fail before anything of it runs."""
    spec = folder / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "source": {"kind": "synthetic_images", "num_examples": 16, "image_size": [8, 8]},
        "preprocess": [{"decode_image": {"key": "image"}}], "inputs": {"features": "image", "label": "label"},
        "model": {"step_time_ms": 1}}))
    return spec


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- redact, normalize


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql+psycopg://ann:{SECRET}@db:5432/sweeps", "postgresql+psycopg://ann:***@db:5432/sweeps"),
    ("postgresql+psycopg://ann:p%40ss@db/sweeps", "postgresql+psycopg://ann:***@db/sweeps"),
    (f"postgresql+psycopg://ann@db/sweeps?password={SECRET}", "postgresql+psycopg://ann@db/sweeps?password=***"),
    ("postgresql+psycopg://ann@db/sweeps", "postgresql+psycopg://ann@db/sweeps"),
    ("sqlite:////tmp/study.sqlite3", "sqlite:////tmp/study.sqlite3"),
    (f"not a url://ann:{SECRET}@db", "not a url://ann:***@db"),  # unparseable: still hidden
])
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert storage.redact(url) == shown


def test_plain_postgresql_urls_mean_psycopg_3() -> None:
    # SQLAlchemy 2.0 reads postgresql:// as psycopg2, 2.1 as psycopg; postgres:// it rejects.
    for scheme in ("postgresql", "postgres"):
        assert storage.normalize(f"{scheme}://ann:p%40ss@db:5433/sweeps") == (
            "postgresql+psycopg://ann:p%40ss@db:5433/sweeps")
    for kept in ("postgresql+psycopg2://ann:x@db/s", "sqlite:///s.db", "nonsense-url"):
        assert storage.normalize(kept) == kept


# --------------------------------------------------------------------------- check_storage


def problem(url: str) -> str:
    with pytest.raises(StorageError) as caught:
        storage.check_storage(url)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in message and SECRET not in message
    assert message.startswith(f"cannot use the study storage {storage.redact(url)}: ")
    return message.partition(f"{storage.redact(url)}: ")[2]


def test_a_url_that_is_not_one() -> None:
    assert problem("nonsense-url").startswith("not a database URL")
    assert problem(f"nosuchdb://ann:{SECRET}@db/x").startswith("unknown database kind 'nosuchdb'")


def test_a_closed_port_says_no_server_answers() -> None:
    port = closed_port()
    said = problem(f"postgresql+psycopg://ann:{SECRET}@127.0.0.1:{port}/sweeps")
    assert said.startswith(f"no server answers at 127.0.0.1:{port} (check the host and port")


def test_a_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails
    said = problem(f"postgresql+psycopg://ann:{SECRET}@127.0.0.1/sweeps")
    assert said == ("the database driver psycopg is not installed: "
                    "pip install 'pipetune[postgres]' (it brings psycopg[binary])")


def test_a_missing_mysql_driver_is_named_and_called_untested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)
    said = problem(f"mysql+pymysql://ann:{SECRET}@127.0.0.1/sweeps")
    assert said.startswith("the database driver pymysql is not installed: pip install pymysql (untested")


def test_sqlite_paths_that_cannot_hold_a_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problem(f"sqlite:///{tmp_path}/missing/study.sqlite3") == (
        f"the folder {tmp_path}/missing does not exist")
    (tmp_path / "file").write_text("not a database\n" * 20)  # (SQLite reads a tiny file as empty)
    assert problem(f"sqlite:///{tmp_path}/file/study.sqlite3") == f"{tmp_path}/file is not a folder"
    assert problem(f"sqlite:///{tmp_path}/file").startswith(f"{tmp_path}/file is not an SQLite database")
    assert problem(f"sqlite:///{tmp_path}") == f"{tmp_path} is a folder, not a database file"
    assert problem("sqlite://").startswith("an in-memory SQLite database is gone when the sweep ends")
    # As root every folder is writable: fake the permission check to see the message.
    monkeypatch.setattr(storage.os, "access", lambda *_: False)
    assert problem(f"sqlite:///{tmp_path}/study.sqlite3") == f"the folder {tmp_path} is not writable"


def test_a_good_sqlite_path_passes_and_is_not_created(tmp_path: Path) -> None:
    storage.check_storage(f"sqlite:///{tmp_path}/study.sqlite3")
    assert not (tmp_path / "study.sqlite3").exists()


def test_sweep_with_a_bad_storage_exits_2_in_one_line_without_the_password(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    url = f"postgresql://ann:{SECRET}@127.0.0.1:{closed_port()}/sweeps"
    done = subprocess.run([sys.executable, "-m", "pipetune", "sweep", str(spec), "--out", str(tmp_path / "out"),
                           "--storage", url], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pipetune: error: cannot use the study storage "
                               "postgresql+psycopg://ann:***@127.0.0.1:")
    assert "no server answers" in lines[0]
    assert not any((tmp_path / "out").glob("**/*.tfrecord*"))  # nothing measured, no shards


def test_sweep_with_an_sqlite_file_in_a_missing_folder_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_spec(tmp_path)
    code = cli.main(["sweep", str(spec), "--out", str(tmp_path / "out"),
                     "--storage", f"sqlite:///{tmp_path}/nowhere/study.sqlite3"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"pipetune: error: cannot use the study storage sqlite:///{tmp_path}/nowhere/study.sqlite3: " \
           f"the folder {tmp_path}/nowhere does not exist" in err


# --------------------------------------------------------------------------- retries


def refused(statement: str = "SELECT 1") -> sa.exc.OperationalError:
    return sa.exc.OperationalError(statement, {}, Exception("connection refused\nmore detail"))


def test_a_call_is_retried_through_a_short_outage(capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter([refused(), refused(), "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    url = f"postgresql+psycopg://ann:{SECRET}@db/sweeps"
    assert storage.call(flaky, url, "reading the study", NO_WAIT) == "ok"
    said = capsys.readouterr().err.splitlines()
    assert said == ["pipetune: the study storage postgresql+psycopg://ann:***@db/sweeps did not answer "
                    "while reading the study (connection refused); retrying in 0 s"] * 2


def test_a_storage_that_stays_away_is_a_storage_lost_error() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise optuna.exceptions.StorageInternalError("commit failed") from refused()  # as Optuna wraps it

    with pytest.raises(StorageLostError) as caught:
        storage.call(down, f"postgresql+psycopg://ann:{SECRET}@db/sweeps", "storing a trial", NO_WAIT)
    assert len(calls) == 3 and caught.value.exit_code == 1
    assert str(caught.value) == ("lost the study storage postgresql+psycopg://ann:***@db/sweeps while storing "
                                 "a trial (connection refused); it did not come back within 0 s. "
                                 "Finished trials are stored")


def test_a_bad_statement_is_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise sa.exc.ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    with pytest.raises(sa.exc.ProgrammingError):
        storage.call(broken, "sqlite:///x.db", "reading", NO_WAIT)
    assert calls == [1]


def test_a_worker_starting_during_an_outage_opens_its_study_when_the_storage_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A worker whose diagnosis ran longer than another's first trials met the outage here, and
    # ended with a traceback.
    url = f"sqlite:///{tmp_path / 's.db'}"
    for module, name in ((optuna, "create_study"), (claims_module._METADATA, "create_all")):
        # more failures than retry_schema_race's own 5 tries: the outage reaches storage.call
        real, failures = getattr(module, name), iter([refused()] * 6)

        def down_twice(*args: object, real=real, failures=failures, **kwargs: object) -> object:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, down_twice)
    retry = storage.Retry((0.0,))
    board = ClaimBoard(url, "s", retry=retry)
    try:
        study = search.open_study(url, "s", "throughput", retry)
        assert study.study_name == "s" and board.try_claim("k", 1)
    finally:
        board.close()
    assert "did not answer while opening the study" in capsys.readouterr().err


# A search on SQLite whose storage calls fail on cue (fake_search: no TensorFlow).


def test_a_commit_whose_answer_was_lost_is_not_stored_twice(tmp_path: Path) -> None:
    calls: list[str] = []
    state = new_state(f"sqlite:///{tmp_path / 's.db'}", calls)
    add_trial = state.study.add_trial

    def committed_then_lost(trial: optuna.trial.FrozenTrial) -> None:
        add_trial(trial)  # the trial is in the database ...
        raise refused("COMMIT")  # ... but the connection died before the client heard so

    state.study.add_trial = committed_then_lost
    fake_search.run(state)
    assert sorted(calls) == sorted(v.key for v in VARIANTS)
    assert stored_pairs(state) == ALL_PAIRS


def test_a_lost_storage_stops_the_search_and_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first_calls: list[str] = []
    state = new_state(url, first_calls)
    add_trial = state.study.add_trial

    def down_after_two(trial: optuna.trial.FrozenTrial) -> None:
        if len(state.study.get_trials()) >= 2:
            raise refused("INSERT")
        add_trial(trial)

    state.study.add_trial = down_after_two
    with pytest.raises(StorageLostError):
        fake_search.run(state)
    assert len(first_calls) == 3 and len(stored_pairs(state)) == 2  # the third was measured, not stored

    resumed_calls: list[str] = []
    resumed = new_state(url, resumed_calls)
    with sa.create_engine(url).begin() as conn:  # as if the stopped worker's process had ended
        conn.execute(sa.text("UPDATE pipetune_claims SET owner = :dead WHERE done = 0"),
                     {"dead": f"{socket.gethostname()}:999999998:gone"})
    fake_search.run(resumed)
    assert resumed_calls == [first_calls[2]]  # only the one never stored is measured again
    assert stored_pairs(resumed) == ALL_PAIRS


def test_a_claim_inserted_before_the_connection_died_is_still_ours(tmp_path: Path) -> None:
    board = ClaimBoard(f"sqlite:///{tmp_path / 's.db'}", "s", retry=NO_WAIT)
    try:
        assert board._try_claim("k", 1)  # committed; say the answer was lost and the call retried
        assert board.try_claim("k", 1)
    finally:
        board.close()


# --------------------------------------------------------------------------- the CLI on a lost storage


def test_a_lost_storage_exits_1_with_a_resume_hint_without_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql+psycopg://ann:{SECRET}@db/sweeps"

    def lost(*_: object, **__: object) -> None:
        raise StorageLostError(f"lost the study storage {storage.redact(url)} while storing a trial (x)")

    spec = tiny_spec(tmp_path)
    monkeypatch.setattr("pipetune.runner.run_sweep", lost)
    monkeypatch.setattr("pipetune.storage.usable", lambda url: url)  # no server "db" to check
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--storage", url]) == 1
    err = capsys.readouterr().err
    assert SECRET not in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("pipetune: error: lost the study storage postgresql+psycopg://ann:***@db/sweeps")
    assert lines[0].endswith("Resume with:")
    assert lines[1].split() == ["pipetune", "sweep", str(spec), "--out", str(tmp_path / "o"), "--storage",
                                "'postgresql+psycopg://ann:***@db/sweeps'", "--resume"]
    assert "password is shown as ***" in lines[2]
