"""The diagnosis as one JSON document (``diagnosis.json``, ``pipetune diagnose --json``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipetune.diagnose.verdict import Diagnosis

SCHEMA_VERSION = 1


def diagnosis_document(diagnosis: Diagnosis) -> dict[str, Any]:
    """Plain JSON values; an infinite rate (no consumer, nothing after a cache) is null."""
    m = diagnosis.measurements
    cores = m.cores
    return _finite({
        "schema_version": SCHEMA_VERSION,
        "spec": m.spec_name,
        "cores": cores,
        "shards": m.shards,
        "num_examples": m.num_examples,
        "measure_seconds": m.measure_seconds,
        "bottleneck": dataclasses.asdict(diagnosis.bottleneck),
        "measured_rate": diagnosis.measured_rate,
        "compute_rate": diagnosis.compute_rate,
        "predicted_rate": diagnosis.predicted_rate,
        "consumer": {**dataclasses.asdict(m.consumer), "rate": m.consumer.rate,
                     "levers": [{**dataclasses.asdict(lever), "rate": lever.rate} for lever in m.consumer.levers]},
        "cpu_bound_rate": diagnosis.cpu_bound,
        "stages": [_stage(stage, cost, cores) for stage, cost in zip(m.stages, diagnosis.costs)],
        "caches": [_memory(need) for need in diagnosis.caches],
        "cache_read": _cache_read(m.cache_read),
        "shuffle": _memory(diagnosis.shuffle) if diagnosis.shuffle else None,
        "levers": [dataclasses.asdict(lever) for lever in diagnosis.levers],
    })


def _stage(stage, cost, cores: int) -> dict[str, Any]:
    def timing(t):
        return {**dataclasses.asdict(t), "rate": t.rate, "cpu_per_element": t.cpu_per_element}

    return {"name": stage.name, "kind": stage.kind, "random": stage.random,
            "element_bytes": stage.element_bytes,
            "cumulative": {"sequential": timing(stage.sequential), "parallel": timing(stage.parallel)},
            "alone": {"wall_s": cost.wall_s, "cpu_s": cost.cpu_s, "rate_1": cost.rate_1,
                      "speedup": cost.speedup, "blocking": cost.blocking,
                      "ceiling": cost.ceiling(cores)}}


def _cache_read(timing) -> dict[str, Any] | None:
    """Per element, read back from a memory cache (None: not measured, an older diagnosis)."""
    if timing is None:
        return None
    return {"wall_s": timing.typical_wall_per_element, "cpu_s": timing.typical_cpu_per_element,
            "elements": timing.elements}


def _memory(need) -> dict[str, Any]:
    return {**dataclasses.asdict(need), "total_bytes": need.total_bytes, "fits": need.fits}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
