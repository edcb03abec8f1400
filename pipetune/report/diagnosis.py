"""The numbers of the report's Diagnosis section, from the diagnosis behind an automatic space.

Pure; no TensorFlow. The input is ``documents.diagnosis_summary`` (the diagnosis document, the
space and its reasons, and the pick's measured rate), so the page and ``results.json`` agree.
A document is read defensively: a missing or non-finite number is None ("unknown" or "—" on
the page), never 0, and a missing list is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LOG_SCALE_SPAN = 100.0  # the chart's axis turns logarithmic when its values span more than this


@dataclass(frozen=True, slots=True)
class StageRow:
    """One stage of the diagnosed pipeline (read, parse, each op), in pipeline order.

    ``sequential_rate`` and ``parallel_rate`` are of the pipeline up to and including this
    stage; ``alone_rate``, the times and the speed-up are of the stage by itself.
    """

    name: str
    kind: str
    random: bool  # a random op: no cache at or after it
    sequential_rate: float | None  # examples/s, one element at a time
    parallel_rate: float | None  # examples/s, ``parallelism`` elements at a time
    parallelism: int | None
    alone_rate: float | None  # examples/s of the stage alone, one at a time
    wall_s: float | None  # per element, the stage alone
    cpu_s: float | None  # CPU per element, the stage alone
    speedup: float | None  # the stage's parallel speed-up seen at ``parallelism``
    waits: bool  # wall > 2x CPU: blocking, not computing
    element_bytes: float | None  # the element's size after this stage


@dataclass(frozen=True, slots=True)
class LeverBar:
    """One lever's predicted ceiling of the pipeline; None when unknown until measured."""

    label: str
    note: str
    ceiling: float | None  # examples/s
    lowest: bool = False  # the lowest known ceiling: the one that binds


@dataclass(frozen=True, slots=True)
class DiagnosisSection:
    bottleneck_kind: str  # consumer | compute | blocking_io | bandwidth
    bottleneck_stage: str | None
    bottleneck_sentence: str
    cores: int | None
    shards: int | None
    measure_s: float | None  # how long the diagnosis measured
    stages: tuple[StageRow, ...]
    levers: tuple[LeverBar, ...]
    consumer_mode: str
    consumer_rate: float | None  # examples/s; None: no consumer (input mode) or unknown
    diagnosed_rate: float | None  # the pipeline as measured by the diagnosis, examples/s
    reasons: tuple[str, ...]  # why the automatic space holds what it holds
    space: tuple[tuple[str, tuple[str, ...]], ...]  # (dimension, its values) of the automatic space
    consumer_bound: bool
    predicted_rate: float | None  # the diagnosis' prediction for the pick, examples/s
    pick_measured_rate: float | None  # the sweep's pick, median over repeats, examples/s
    log_scale: bool  # the ceilings chart's axis

    @property
    def measured_over_predicted(self) -> float | None:
        return ratio(self.pick_measured_rate, self.predicted_rate)

    @property
    def searched(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The dimensions of the automatic space with more than one value."""
        return tuple((name, values) for name, values in self.space if len(values) > 1)

    @property
    def fixed(self) -> tuple[tuple[str, str], ...]:
        """The dimensions of the automatic space held at one value."""
        return tuple((name, values[0]) for name, values in self.space if len(values) == 1)


def build_diagnosis(summary: dict[str, Any] | None) -> DiagnosisSection | None:
    """The section's numbers from ``documents.diagnosis_summary``; None for a hand-listed space."""
    if summary is None:
        return None
    bottleneck = summary.get("bottleneck") or {}
    consumer = summary.get("consumer") or {}
    sentence = str(bottleneck.get("sentence", ""))
    levers = lever_bars(summary.get("levers") or [])
    consumer_rate, measured = number(consumer.get("rate")), number(summary.get("pick_measured_rate"))
    return DiagnosisSection(
        bottleneck_kind=str(bottleneck.get("kind", "")),
        bottleneck_stage=bottleneck.get("stage"), bottleneck_sentence=sentence,
        cores=summary.get("cores"), shards=summary.get("shards"),
        measure_s=number(summary.get("measure_seconds")),
        stages=tuple(stage_row(stage) for stage in summary.get("stages") or []),
        levers=levers, consumer_mode=str(consumer.get("mode", "")), consumer_rate=consumer_rate,
        diagnosed_rate=number(summary.get("measured_rate")),
        # The first reason restates the bottleneck sentence, which the section shows already.
        reasons=tuple(str(r) for r in summary.get("reasons") or [] if r != f"diagnosis: {sentence}"),
        space=tuple((name, tuple(_value(v) for v in values))
                    for name, values in (summary.get("space") or {}).items()),
        consumer_bound=bool(summary.get("consumer_bound", False)),
        predicted_rate=number(summary.get("pick_predicted_rate")), pick_measured_rate=measured,
        log_scale=needs_log_scale([b.ceiling for b in levers] + [consumer_rate, measured]),
    )


def stage_row(stage: dict[str, Any]) -> StageRow:
    cumulative = stage.get("cumulative") or {}
    sequential, parallel = cumulative.get("sequential") or {}, cumulative.get("parallel") or {}
    alone = stage.get("alone") or {}
    return StageRow(
        name=str(stage.get("name", "")), kind=str(stage.get("kind", "")),
        random=bool(stage.get("random", False)),
        sequential_rate=number(sequential.get("rate")), parallel_rate=number(parallel.get("rate")),
        parallelism=parallel.get("parallelism"), alone_rate=number(alone.get("rate_1")),
        wall_s=number(alone.get("wall_s")), cpu_s=number(alone.get("cpu_s")),
        speedup=number(alone.get("speedup")), waits=bool(alone.get("blocking", False)),
        element_bytes=number(stage.get("element_bytes")),
    )


def lever_bars(levers: list[dict[str, Any]]) -> tuple[LeverBar, ...]:
    """One bar per lever, in the diagnosis' order; the lowest known ceiling marked."""
    ceilings = [number(lever.get("ceiling")) for lever in levers]
    known = [c for c in ceilings if c is not None]
    lowest = min(known) if known else None
    return tuple(LeverBar(lever_label(lever), str(lever.get("note", "")), ceiling,
                          lowest=ceiling is not None and ceiling == lowest)
                 for lever, ceiling in zip(levers, ceilings))


def lever_label(lever: dict[str, Any]) -> str:
    """"parallel map, 2 calls: resize(image)"; the stage is left out where the lever names it."""
    name, stage = str(lever.get("lever", "")), lever.get("stage")
    return f"{name}: {stage}" if stage and str(stage) not in name else name


def needs_log_scale(values: list[float | None]) -> bool:
    """True when the positive known values span more than ``LOG_SCALE_SPAN`` times."""
    positive = [v for v in values if v is not None and v > 0]
    return bool(positive) and max(positive) > LOG_SCALE_SPAN * min(positive)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def number(value: Any) -> float | None:
    """A finite number as float; None for null, infinities, NaN and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
