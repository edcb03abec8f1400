"""TrialResult <-> JSON, so raw measurements survive in the study storage and on disk."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pipetune.results import (
    MonitorReport,
    MonitorSample,
    RepeatTiming,
    Role,
    TrialResult,
    TrialState,
)


def trial_to_dict(result: TrialResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["role"] = result.role.value
    data["state"] = result.state.value
    # Samples as columns: about 3x smaller than a list of objects.
    samples = result.monitor.samples
    data["monitor"] = {
        "t_ns": [s.t_ns for s in samples],
        "metric": [s.metric for s in samples],
        "value": [s.value for s in samples],
        "unavailable": [list(pair) for pair in result.monitor.unavailable],
        "accelerator_note": result.monitor.accelerator_note,
    }
    return data


def trial_from_dict(data: dict[str, Any]) -> TrialResult:
    fields = dict(data)
    monitor = fields.pop("monitor")
    samples = tuple(MonitorSample(t, m, v) for t, m, v in
                    zip(monitor["t_ns"], monitor["metric"], monitor["value"]))
    fields["monitor"] = MonitorReport(samples, tuple(tuple(p) for p in monitor["unavailable"]),
                                      monitor["accelerator_note"])
    fields["repeats"] = tuple(
        RepeatTiming(tuple(r["request_ns"]), tuple(r["wait_ns"]), tuple(r["step_ns"]), r["examples"])
        for r in fields["repeats"]
    )
    fields["role"] = Role(fields["role"])
    fields["state"] = TrialState(fields["state"])
    return TrialResult(**fields)


def trial_to_json(result: TrialResult) -> str:
    return json.dumps(trial_to_dict(result), separators=(",", ":"))


def trial_from_json(text: str) -> TrialResult:
    return trial_from_dict(json.loads(text))
