"""Scale-out on a real PostgreSQL: a throw-away cluster, workers as users run them.

The module starts its own PostgreSQL (``initdb`` + ``pg_ctl``, 127.0.0.1 on a free port, a user
with a password) and stops it at the end. Without PostgreSQL the tests FAIL with the reason:
CI installs it (``scripts/install-test-deps``), and a skipped test would hide a broken setup.

The sweeps are ``python -m pipetune sweep`` subprocesses on tiny simulate-mode specs (as in
tests/test_search.py). They check: two workers split one sweep and agree on the winner; a
worker killed with SIGKILL leaves its claim to be taken over; a server that goes away mid-sweep
costs no finished measurement and stores none twice; the password is in no output.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import optuna.storages._rdb.storage as rdb_storage
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

import fake_search
from pipetune import storage
from pipetune.claims import CLAIMS
from pipetune.errors import StorageError, StorageLostError
from pipetune.runner import study_name
from pipetune.search import FULL_RUNG, RACE_RUNG
from pipetune.space import variant_key
from pipetune.spec import PipelineParams
from pipetune.validate import load_spec

pytestmark = pytest.mark.slow

SWEEP_TIMEOUT_S = 240
USER, DATABASE = "pipetune", "sweeps"
# Every dimension pinned but map parallelism and prefetch; 8 images a batch.
PINNED = {"shards": [1], "interleave_cycle": [1], "cache": ["none"], "shuffle_buffer": [0], "batch_size": [8]}


# --------------------------------------------------------------------------- the cluster


def postgres_bin() -> Path:
    """The folder of initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/<major>/bin
    (off PATH); elsewhere they are on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    pytest.fail("PostgreSQL is not installed: no initdb in /usr/lib/postgresql/*/bin or on PATH "
                "(run scripts/install-test-deps, or apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True, slots=True)
class Cluster:
    bin: Path
    root: Path
    port: int
    password: str
    run_as: dict[str, Any]  # subprocess user/group: the server refuses to run as root

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def pg_ctl(self, *args: str) -> None:
        done = subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-l",
                               str(self.root / "server.log"), "-w", "-t", "30", *args],
                              capture_output=True, text=True, timeout=60, cwd=self.root, **self.run_as)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text()[-2000:] if (self.root / "server.log").exists() else ""
            pytest.fail(f"pg_ctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")


def unprivileged() -> dict[str, Any]:
    """subprocess keywords that drop root to the ``postgres`` user (Debian's package makes it),
    else ``nobody``; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    pytest.fail("running as root, and there is neither a postgres nor a nobody user to run PostgreSQL as")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Not under tmp_path: pytest's base folder is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="pipetune-pg-"))
    run_as = unprivileged()
    made = Cluster(postgres_bin(), root, free_port(), "pw-" + os.urandom(8).hex(), run_as)
    (root / "socket").mkdir()
    (root / "password").write_text(made.password)
    if run_as:
        for path in (root, root / "socket", root / "password"):
            os.chown(path, run_as["user"], run_as["group"])
    done = subprocess.run([str(made.bin / "initdb"), "-D", str(root / "data"), "-U", USER, "--pwfile",
                           str(root / "password"), "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
                          capture_output=True, text=True, timeout=120, cwd=root, **run_as)
    if done.returncode != 0:
        pytest.fail(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    with open(root / "data" / "postgresql.conf", "a") as conf:  # local only; durability is not tested here
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {made.port}\nunix_socket_directories = "
                   f"'{root / 'socket'}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
    made.pg_ctl("start")
    try:
        admin = sa.create_engine(made.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
        admin.dispose()
        yield made
    finally:
        subprocess.run([str(made.bin / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, cwd=root, **run_as)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- sweeps


def write_spec(folder: Path, name: str, space: dict[str, list[Any]]) -> Path:
    """64 synthetic 16x16 images, each waiting 10 ms (a trial long enough to be caught running),
    and a 2 ms "accelerator"."""
    data = {
        "name": name,
        "source": {"kind": "synthetic_images", "num_examples": 64, "image_size": [16, 16], "num_classes": 2},
        "preprocess": [{"decode_image": {"key": "image"}}, {"sleep": {"ms": 10}}, {"normalize": {"key": "image"}}],
        "inputs": {"features": "image", "label": "label"},
        "model": {"step_time_ms": 2},
        "measure": {"mode": "simulate", "warmup_steps": 1, "steps": 4, "repeats": 2, "timeout_s": 60},
        "search": {"strategy": "grid", "budget_s": 600, "space": {**PINNED, **space}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


NAIVE = PipelineParams(batch_size=8, map_parallel=1, prefetch=0)


def expected_keys(space: dict[str, list[Any]]) -> set[str]:
    """The references (naive, autotune-default) and every candidate of ``space``, written out."""
    autotune = PipelineParams(batch_size=8, map_parallel="autotune", prefetch="autotune")
    candidates = [PipelineParams(batch_size=8, map_parallel=m, prefetch=p)
                  for m in space["map_parallel"] for p in space["prefetch"]]
    return {variant_key(p) for p in [NAIVE, autotune, *candidates]}


def environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "400"}  # no wrapped resume hint


class Worker:
    """``pipetune sweep`` in its own process group, output to files (a full pipe would block it)."""

    def __init__(self, args: list[str], cwd: Path, tag: str) -> None:
        self.stdout_path, self.stderr_path = cwd / f"{tag}.stdout", cwd / f"{tag}.stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "pipetune", *args], cwd=cwd,
                                            env=environment(), stdout=out, stderr=err, start_new_session=True)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=SWEEP_TIMEOUT_S)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def best(self) -> str:
        return json.loads(self.stdout_path.read_text())["best"]["key"]


def sweep_args(spec: Path, url: str, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(spec), "--storage", url, "--out", str(out), "--strategy", "grid", "--json", *extra]


def wait_for(condition: Callable[[], bool], worker: Worker, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if worker.process.poll() is not None:
            pytest.fail(f"the worker ended (exit {worker.process.returncode}) before {what}:\n{worker.stderr[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{worker.stderr[-3000:]}")


def stored(url: str, name: str) -> list[tuple[str, int, str]]:
    """(variant_key, rung, result JSON) of every finished measurement in the study."""
    if not claims(url, name):  # the study is created before the first claim: never create it here
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        # The search's measurements; the final race's rounds (RACE_RUNG) are checked apart.
        return [(t.user_attrs["variant_key"], t.user_attrs["rung"], t.user_attrs["result"])
                for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("result") and t.user_attrs["rung"] != RACE_RUNG]
    finally:
        rdb.engine.dispose()


def claims(url: str, name: str) -> list[tuple[str, str, bool]]:
    """(variant_key, owner, done) of the study's claims; [] before the table exists."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(CLAIMS.c.variant_key, CLAIMS.c.owner, CLAIMS.c.done)
                                .where(CLAIMS.c.study == name)).all()
        return [(key, owner, bool(done)) for key, owner, done in rows]
    except sa.exc.ProgrammingError:
        return []
    finally:
        engine.dispose()


def once_each(url: str, name: str, keys: set[str]) -> dict[tuple[str, int], str]:
    """Every variant stored exactly once, at the full rung, but naive, which is measured in the
    race only; every claim done."""
    rows = stored(url, name)
    pairs = [(key, rung) for key, rung, _ in rows]
    screened = keys - {variant_key(NAIVE)}
    assert sorted(pairs) == sorted((key, FULL_RUNG) for key in screened), "a variant is missing or stored twice"
    rounds = race_rounds(url, name)
    assert len(rounds) == len(set(rounds)), "a race round measured a variant twice"
    assert (variant_key(NAIVE), 0) in rounds
    assert all(done for *_, done in claims(url, name))
    return {(key, rung): text for key, rung, text in rows}


def race_rounds(url: str, name: str) -> list[tuple[str, int]]:
    """(variant_key, round) of every stored measurement of the final race."""
    rdb = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        return [(t.user_attrs["variant_key"], t.user_attrs["race_round"])
                for t in study.get_trials(deepcopy=False) if t.user_attrs.get("rung") == RACE_RUNG]
    finally:
        rdb.engine.dispose()


def running_trial(worker: Worker, out: Path, url: str, name: str) -> bool:
    """The worker holds an unfinished claim whose trial process is past its start-up."""
    mine = [key for key, owner, done in claims(url, name) if not done and f":{worker.process.pid}:" in owner]
    return any(any(out.glob(f"logs/trial-{key}-*.log")) for key in mine)  # the child made its log


def csv_keys(out: Path) -> list[str]:
    return sorted(pd.read_csv(out / "results.csv")["key"])


def assert_password_nowhere(folder: Path, password: str) -> None:
    """No file a sweep wrote (results, report, code, --json stdout, stderr, trial logs) holds it."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    for name in ("results.csv", "results.json", "report.html", "best_pipeline.py"):
        assert any(p.name == name for p in files), f"no {name} under {folder}"
    leaks = [str(p) for p in files if password.encode() in p.read_bytes()]
    assert leaks == [], f"the password is in {leaks}"


# --------------------------------------------------------------------------- tests


def test_the_check_names_refused_credentials_and_a_missing_database(cluster: Cluster) -> None:
    storage.check_storage(cluster.url)
    wrong = cluster.url.replace(cluster.password, "not-the-password")
    with pytest.raises(StorageError, match="refused the user name or password of 'pipetune'"):
        storage.check_storage(wrong)
    with pytest.raises(StorageError, match="the database 'nope' does not exist") as caught:
        storage.check_storage(cluster.url.rsplit("/", 1)[0] + "/nope")
    assert cluster.password not in str(caught.value)


class NoJitter:
    """Stands in for ``random`` in Optuna's RDB storage: its own retries of a failed add_trial
    then sleep 0 s instead of up to 2 s each (about 5 s a test)."""

    @staticmethod
    def random() -> float:
        return 0.0


def test_a_server_that_stays_down_stops_the_search_and_resume_completes(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with fake measurements and short retries: the server stops after the second
    measurement and stays down; the search gives up with the redacted URL; once the server is
    back, a resume measures only what was not stored."""
    monkeypatch.setattr(rdb_storage, "random", NoJitter)
    calls: list[str] = []
    state = fake_search.new_state(cluster.url, calls, study="gives-up", retry=storage.Retry((0.2, 0.2)))

    def measure_then_stop(variant: Any, steps: int, best_so_far: float | None) -> Any:
        result = fake_search.measure(variant, steps)
        calls.append(variant.key)
        if len(calls) == 2:
            cluster.pg_ctl("-m", "fast", "stop")
        return result

    state.measure = measure_then_stop
    try:
        with pytest.raises(StorageLostError) as caught:
            fake_search.run(state)
    finally:
        cluster.pg_ctl("start")
    message = str(caught.value)
    assert message.startswith(f"lost the study storage postgresql+psycopg://{USER}:***@127.0.0.1:{cluster.port}/")
    assert cluster.password not in message and caught.value.exit_code == 1
    kept = fake_search.stored_pairs(state)
    assert len(calls) == 2 and len(kept) == 1  # the second was measured, never stored

    again: list[str] = []
    resumed = fake_search.new_state(cluster.url, again, study="gives-up", grace_s=0.5)
    time.sleep(0.6)  # the stopped worker's claim is now past its grace period (same PID: not "dead")
    fake_search.run(resumed)
    assert again[0] == calls[1]  # the one measured but not stored is measured again, then the rest
    assert sorted(again) == sorted(v.key for v in fake_search.VARIANTS if v.key != calls[0])
    assert fake_search.stored_pairs(resumed) == fake_search.ALL_PAIRS


SPACE = {"map_parallel": [1, 2], "prefetch": [0, "autotune"]}  # 2 references + 3 other variants


def test_two_workers_a_kill_9_and_a_server_restart_lose_and_repeat_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    """One sweep, as a user would run it on two hosts, with both failures a shared storage meets.

    Workers a and b start together. b is killed (SIGKILL) in the middle of a trial: its claim
    must be taken over. Then the server goes down while a works, and comes back once a has met
    the outage: a either rides through (retries) or stops with exit 1, the message and a resume
    hint, and the resume completes. Last, b is resumed: it measures nothing again. (One sweep
    for all of it: every worker start costs two TensorFlow imports.)
    """
    spec = write_spec(tmp_path, "pg-two", SPACE)
    name, keys = study_name(load_spec(spec)), expected_keys(SPACE)
    a = Worker(sweep_args(spec, cluster.url, tmp_path / "a"), tmp_path, "a")
    b = Worker(sweep_args(spec, cluster.url, tmp_path / "b"), tmp_path, "b")
    try:
        wait_for(lambda: len(stored(cluster.url, name)) >= 1 and running_trial(b, tmp_path / "b", cluster.url, name),
                 b, "a stored result and worker b running a trial")
        os.killpg(b.process.pid, signal.SIGKILL)  # b dies holding a claim
        assert b.wait() == -signal.SIGKILL
        assert any(not done for *_, done in claims(cluster.url, name))
        before = {(key, rung): text for key, rung, text in stored(cluster.url, name)}
        cluster.pg_ctl("-m", "fast", "stop")
        try:  # down until a has met the outage (Optuna's own retries take a few seconds first)
            wait_for(lambda: "did not answer" in a.stderr, a, "worker a met the outage", 30.0)
        finally:
            cluster.pg_ctl("start")
        code = a.wait()
    finally:
        a.kill()
        b.kill()
    a = resume_if_stopped(a, code, cluster, tmp_path)
    measured = once_each(cluster.url, name, keys)  # b's claim was taken over, nothing measured twice
    assert all(measured[pair] == text for pair, text in before.items())  # kept, not measured again

    resumed = Worker(sweep_args(spec, cluster.url, tmp_path / "b", "--resume"), tmp_path, "b-resumed")
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert once_each(cluster.url, name, keys) == measured  # the resumed worker measured nothing again
    assert csv_keys(tmp_path / "a") == csv_keys(tmp_path / "b") == sorted(keys)
    assert a.best() == resumed.best()
    assert_password_nowhere(tmp_path, cluster.password)


def resume_if_stopped(worker: Worker, code: int, cluster: Cluster, cwd: Path) -> Worker:
    """The worker that finished the sweep: ``worker`` if it rode through the outage, else its
    resume, run as its own hint says (with the password typed in for the ***)."""
    if code == 0:
        assert "retrying in" in worker.stderr
        return worker
    assert code == 1, worker.stderr[-3000:]
    lines = worker.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("pipetune: error: lost the study storage"))
    assert f"postgresql+psycopg://{USER}:***@127.0.0.1:{cluster.port}/{DATABASE}" in lines[at]
    assert lines[at].endswith("Resume with:")
    hint = [arg.replace("***", cluster.password) for arg in shlex.split(lines[at + 1])]
    assert hint[:2] == ["pipetune", "sweep"] and "--resume" in hint
    resumed = Worker([*hint[1:], "--json"], cwd, "a-resumed")
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    return resumed
