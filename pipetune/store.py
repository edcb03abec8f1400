"""Read a finished sweep back from its output folder (``results.json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipetune.device import Device, Gpu
from pipetune.errors import NoSweepError
from pipetune.serialize import trial_from_dict
from pipetune.space import Dropped
from pipetune.spec import PipelineParams, Spec
from pipetune.outcome import SweepOutcome, rank_sweep

RESULTS_NAME = "results.json"


def resolve_sweep_dir(spec_or_dir: str | Path) -> Path:
    """A sweep folder, or the default folder of a spec file (``reports/<name>/``)."""
    path = Path(spec_or_dir)
    if path.is_dir():
        return path
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from pipetune.validate import load_spec

        return Path("reports") / load_spec(path).name
    raise NoSweepError(f"{path} is neither a sweep folder nor a spec file")


def load_outcome(spec_or_dir: str | Path) -> SweepOutcome:
    """The stored sweep, re-ranked from its raw trials (ranking is a pure function)."""
    folder = resolve_sweep_dir(spec_or_dir)
    path = folder / RESULTS_NAME
    try:
        return _outcome_of(_read_document(path), folder)
    except _Unreadable as problem:
        why = str(problem)
    try:
        return _outcome_of(_rebuilt(folder, path, why), folder)
    except _Unreadable as problem:
        raise NoSweepError(f"{why}; the rebuild from the study failed too: {problem}") from None


class _Unreadable(Exception):
    """results.json is missing, corrupt or incomplete: the study may still hold the sweep."""


def _read_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _Unreadable(f"no {RESULTS_NAME}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError: truncated or not JSON
        raise _Unreadable(f"{path} is corrupt (not JSON: {err})") from None
    if not isinstance(document, dict) or "stored" not in document:
        raise _Unreadable(f"{path} is incomplete (no 'stored' section)")
    return document


def _rebuilt(folder: Path, path: Path, problem: str) -> dict[str, Any]:
    from pipetune.rebuild import document_from_study

    try:
        document = document_from_study(folder)
    except NoSweepError as why:
        if not path.exists():
            raise NoSweepError(f"no finished sweep in {folder} (no {RESULTS_NAME}); run "
                               f"`pipetune sweep <data.yaml> --out {folder}` first") from None
        raise NoSweepError(f"{problem}; it cannot be rebuilt either: {why}") from None
    print(f"note: {problem}; rebuilt the sweep from {folder / 'study.sqlite3'}", file=sys.stderr)
    return document


def _outcome_of(document: dict[str, Any], folder: Path) -> SweepOutcome:
    try:
        return _outcome(document, folder)
    except (KeyError, TypeError, ValueError) as err:  # a field missing or of the wrong kind
        raise _Unreadable(f"{folder / RESULTS_NAME} is incomplete or corrupt "
                          f"({type(err).__name__}: {err})") from None


def _outcome(document: dict[str, Any], folder: Path) -> SweepOutcome:
    stored = document["stored"]
    spec = Spec.model_validate({**stored["spec"], "base_dir": stored["base_dir"]})
    results = [trial_from_dict(t) for t in stored["trials"]]
    dropped = [Dropped(PipelineParams(**d["params"]), d["reason"]) for d in stored["dropped"]]
    device_fields = dict(stored["device"])
    device_fields["gpus"] = tuple(Gpu(g["name"], tuple(g["compute_capability"]) if g["compute_capability"]
                                      else None) for g in device_fields["gpus"])
    raced = [trial_from_dict(t) for t in stored.get("race", [])]
    ranking = rank_sweep(spec, results, document["objective"], raced)
    return SweepOutcome(spec, folder, document["strategy"], document["mode"], results, dropped,
                        ranking, Device(**device_fields), document["tuning_time_s"],
                        document.get("budget_s"), _stored_diagnosis(document), tuple(raced))


def _stored_diagnosis(document: dict) -> dict | None:
    diagnosis = document.get("diagnosis")
    if not diagnosis:
        return None
    return {k: v for k, v in diagnosis.items() if not k.startswith("pick_")}
