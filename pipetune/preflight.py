"""Checks a sweep makes before it spends any budget: the options, the output folder, --resume.

Each failure is a UsageError (exit 2, one line) naming what is wrong; nothing has been written
to the output folder when one is raised, so a previous sweep there is left as it was.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipetune.errors import UsageError
from pipetune.spec import Spec

STUDY_FILE = "study.sqlite3"
_SCRATCH_PID = re.compile(r"^trial-.*-p(\d+)-")


def check_budget(budget_s: float | None) -> None:
    """A budget must be a number of seconds, like every duration in a spec."""
    if budget_s is not None and not (math.isfinite(budget_s) and budget_s > 0):
        raise UsageError(f"--budget: `SECONDS > 0` (and finite) must hold, but got {budget_s:g}")


def require_writable_dir(path: Path, flag: str = "--out") -> None:
    """Create ``path`` and prove a file can be written in it: an unwritable folder (read-only
    mount, immutable, /proc) or a file in its place must fail now, not after the trials."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, but must be a folder (or a path to create one)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot create the folder: {err.strerror}") from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".pipetune-write-test-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write files there: {err.strerror}") from None


def check_resume(out_dir: Path, study_name: str, spec: Spec, mode: str) -> None:
    """``--resume`` (default storage) must find this very study: refuse when there is nothing
    to resume, or when the spec or mode changed (a new study would overwrite the old outputs)."""
    import optuna

    database = out_dir / STUDY_FILE
    if not database.is_file():
        raise UsageError(f"--resume: nothing to resume in {out_dir} (no {STUDY_FILE}); "
                         "run the same command without --resume to start the sweep")
    url = f"sqlite:///{database.resolve()}"
    summaries = optuna.get_all_study_summaries(url, include_best_trial=False)
    if any(s.study_name == study_name for s in summaries):
        return
    if not summaries:
        raise UsageError(f"--resume: nothing to resume in {out_dir} ({STUDY_FILE} holds no sweep)")
    stored = summaries[-1]
    change = describe_change(_stored_facts(stored.user_attrs, out_dir), spec, mode) or (
        f"stored study {stored.study_name!r}, this spec's is {study_name!r}")
    raise UsageError(f"--resume: the sweep in {out_dir} measured something else ({change}); "
                     "a resumed sweep must measure the same spec and mode: undo the change, "
                     "or run without --resume into a new --out")


def _stored_facts(user_attrs: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The stored sweep's spec and mode: the study's own record, else its results.json."""
    if "pipetune" in user_attrs:
        return user_attrs["pipetune"]
    try:
        document = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
        return {"spec": document["stored"]["spec"], "mode": document["mode"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def describe_change(stored: dict[str, Any], spec: Spec, mode: str) -> str:
    """``measure.steps 20 -> 10, mode train -> input``: the first few differences."""
    if not stored:
        return ""
    changes = [f"mode {stored['mode']} -> {mode}"] if stored.get("mode") not in (None, mode) else []
    before, after = _flat(stored.get("spec", {})), _flat(spec.model_dump(mode="json"))
    for key in sorted(set(before) | set(after)):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changes.append(f"{key} {before.get(key, '<unset>')} -> {after.get(key, '<unset>')}")
    more = f", and {len(changes) - 3} more" if len(changes) > 3 else ""
    return ", ".join(changes[:3]) + more


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(value)}


def clean_stale_scratch(out_dir: Path) -> None:
    """Remove trial scratch folders left by a sweep process that no longer runs (kill -9).
    A folder names its sweep process (``-p<pid>-``): a live worker's are left alone."""
    import psutil

    for folder in (out_dir / "scratch").glob("trial-*"):
        match = _SCRATCH_PID.match(folder.name)
        if match is None or not psutil.pid_exists(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
