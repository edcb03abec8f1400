"""Stop a sweep whose measurements keep failing for one reason: the rest would fail the same way.

The rule: nothing has completed yet, and the last ``REPEATS`` stored measurements all failed
with the same reason (numbers aside: "used 9.1 GiB" and "used 9.3 GiB" are one reason). A later
success (e.g. a resume after the cause was fixed) disarms it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pipetune.errors import SweepStopped

REPEATS = 3


def same_reason(reason: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", reason or "")


def repeated_failure(trials: Sequence[Any]) -> str | None:
    """The shared reason when ``trials`` (Optuna FrozenTrials of stored measurements, in the
    order stored) meet the rule, else None."""
    stored = [t.user_attrs for t in trials if "result" in t.user_attrs]
    if len(stored) < REPEATS or any(attrs.get("state") == "complete" for attrs in stored):
        return None
    last = stored[-REPEATS:]
    if all(a.get("state") == "failed" for a in last) and \
            len({same_reason(a.get("reason", "")) for a in last}) == 1:
        return last[-1].get("reason") or "unknown"
    return None


def stop_on_repeated_failure(study: Any) -> None:
    """Raise SweepStopped when the study's measurements meet the rule."""
    reason = repeated_failure(study.get_trials(deepcopy=False))
    if reason is not None:
        raise SweepStopped(f"stopped early: {REPEATS} measurements in a row failed with the same "
                           f"reason and none has succeeded, so the rest would fail too: {reason}")
