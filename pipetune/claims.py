"""Who measures what: an atomic claim per (variant, rung), in the study's own database.

Several ``pipetune sweep`` processes (on one host or many) share one storage URL. A claim is a
row with a primary key, so the database itself guarantees that two workers never take the same
variant. A claim whose worker died (``kill -9``, a lost host) is taken over: at once when the
worker was on this host and its PID is gone, otherwise once its heartbeat is older than the
grace period.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil
import sqlalchemy as sa

from pipetune import storage

T = TypeVar("T")
_METADATA = sa.MetaData()
CLAIMS = sa.Table(
    "pipetune_claims", _METADATA,
    sa.Column("study", sa.String(256), primary_key=True),
    sa.Column("variant_key", sa.String(64), primary_key=True),
    sa.Column("rung", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
)


def retry_schema_race(create: Callable[[], T], attempts: int = 5) -> T:
    """Run ``create`` (tables, a study), again if it loses a race with another worker.

    Workers started together on a fresh storage all see no table and all CREATE it; every one
    but the first then fails ("table ... already exists", a duplicate schema-version row).
    Trying again finds what the winner made.
    """
    for attempt in range(attempts - 1):
        try:
            return create()
        except sa.exc.DatabaseError:
            time.sleep(0.1 * (attempt + 1))
    return create()


@dataclass(frozen=True, slots=True)
class Claim:
    variant_key: str
    rung: int


class ClaimBoard:
    """Claims for one study in one database. Thread-safe heartbeats for the claim being run."""

    def __init__(self, storage_url: str, study: str, grace_s: float = 60.0,
                 retry: storage.Retry = storage.Retry()) -> None:
        self.url, self.retry = storage_url, retry  # also what the search's own storage calls use
        self.engine = sa.create_engine(storage_url, **storage.engine_options(storage_url))
        storage.call(lambda: retry_schema_race(lambda: _METADATA.create_all(self.engine)), storage_url,
                     "creating the claims table", retry)
        self.study = study
        self.grace_s = grace_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._beating: Claim | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._thread.start()

    def stored(self, action: Callable[[], T], what: str) -> T:
        """``action()`` on the study's database, retried through a short outage."""
        return storage.call(action, self.url, what, self.retry)

    def try_claim(self, variant_key: str, rung: int) -> bool:
        """Take (variant, rung) if nobody has it or its owner is dead. Atomic."""
        return self.stored(lambda: self._try_claim(variant_key, rung), "claiming a measurement")

    def _try_claim(self, variant_key: str, rung: int) -> bool:
        now = time.time()
        row = {"study": self.study, "variant_key": variant_key, "rung": rung,
               "owner": self.owner, "heartbeat": now, "done": False}
        try:
            with self.engine.begin() as conn:
                conn.execute(CLAIMS.insert().values(**row))
            return True
        except sa.exc.IntegrityError:
            return self._take_over(variant_key, rung, now)

    def _take_over(self, variant_key: str, rung: int, now: float) -> bool:
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(CLAIMS.c.owner, CLAIMS.c.heartbeat, CLAIMS.c.done)
                                   .where(*self._where(variant_key, rung))).one_or_none()
            if current is not None and current.owner == self.owner and not current.done:
                return True  # our own insert, committed before a lost connection hid the answer
            if current is None or current.done or not self._is_dead(current.owner, current.heartbeat, now):
                return False
            # Compare-and-swap on the owner we saw: only one worker wins the takeover.
            taken = conn.execute(CLAIMS.update()
                                 .where(*self._where(variant_key, rung), CLAIMS.c.owner == current.owner,
                                        CLAIMS.c.done.is_(False))
                                 .values(owner=self.owner, heartbeat=now))
            return taken.rowcount == 1

    def _is_dead(self, owner: str, heartbeat: float, now: float) -> bool:
        host, pid, _ = owner.split(":", 2)
        if host == socket.gethostname() and not psutil.pid_exists(int(pid)):
            return True
        return now - heartbeat > self.grace_s

    def is_done(self, variant_key: str, rung: int) -> bool:
        def read() -> bool:
            with self.engine.connect() as conn:
                return bool(conn.execute(sa.select(CLAIMS.c.done).where(*self._where(variant_key, rung))).scalar())

        return self.stored(read, "reading the claims")

    def mark_done(self, variant_key: str, rung: int) -> None:
        def update() -> None:
            with self.engine.begin() as conn:
                conn.execute(CLAIMS.update().where(*self._where(variant_key, rung)).values(done=True))

        self.stored(update, "marking a measurement done")

    def beat_for(self, claim: Claim | None) -> None:
        """Keep ``claim`` alive with heartbeats while it runs (None: stop)."""
        self._beating = claim
        if claim is not None:
            self._heartbeat(claim)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.engine.dispose()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.grace_s / 4):
            claim = self._beating
            if claim is not None:
                self._heartbeat(claim)

    def _heartbeat(self, claim: Claim) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(CLAIMS.update().where(*self._where(claim.variant_key, claim.rung),
                                                   CLAIMS.c.owner == self.owner)
                             .values(heartbeat=time.time()))
        except sa.exc.SQLAlchemyError:
            pass  # a busy or restarting database misses one beat; the grace period covers several

    def _where(self, variant_key: str, rung: int) -> tuple:
        return (CLAIMS.c.study == self.study, CLAIMS.c.variant_key == variant_key, CLAIMS.c.rung == rung)
