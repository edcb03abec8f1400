"""Read a finished sweep back from its output folder (``results.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from pipetune.device import Device, Gpu
from pipetune.errors import NoSweepError
from pipetune.serialize import trial_from_dict
from pipetune.space import Dropped
from pipetune.spec import PipelineParams, Spec
from pipetune.runner import SweepOutcome, rank_sweep

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
    if not path.is_file():
        raise NoSweepError(f"no finished sweep in {folder} (no {RESULTS_NAME}); run "
                           f"`pipetune sweep <data.yaml> --out {folder}` first")
    document = json.loads(path.read_text(encoding="utf-8"))
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
                        document.get("budget_s"), tuple(raced))
