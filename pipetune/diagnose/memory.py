"""What a cache or a shuffle buffer would hold, from measured element sizes. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipetune.diagnose.measurements import Measurements, StageMeasurement


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Bytes held by a cache (every example) or a shuffle buffer (``elements`` of them)
    placed after ``position``, against the spec's RAM budget."""

    what: str  # "cache" | "shuffle buffer"
    position: str
    elements: int
    element_bytes: float
    ram_budget_bytes: int

    @property
    def total_bytes(self) -> float:
        return self.elements * self.element_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.ram_budget_bytes


def cache_positions(stages: Sequence[StageMeasurement]) -> list[StageMeasurement]:
    """The stages a cache may follow: every one before the first random op, since a cache
    after a random op would replay one draw of it every epoch."""
    valid = []
    for stage in stages:
        if stage.random:
            break
        valid.append(stage)
    return valid


def cache_needs(measurements: Measurements) -> tuple[MemoryNeed, ...]:
    """A whole-dataset memory cache at each valid position."""
    return tuple(MemoryNeed("cache", stage.name, measurements.num_examples, stage.element_bytes,
                            measurements.ram_budget_bytes)
                 for stage in cache_positions(measurements.stages))


def shuffle_need(measurements: Measurements) -> MemoryNeed | None:
    """The spec's first searched shuffle buffer at the position where elements are smallest
    (shuffling may sit anywhere before batching); None when the spec does not shuffle."""
    if not measurements.shuffle_buffer or not measurements.stages:
        return None
    cheapest = min(measurements.stages, key=lambda stage: stage.element_bytes)
    return MemoryNeed("shuffle buffer", cheapest.name, measurements.shuffle_buffer,
                      cheapest.element_bytes, measurements.ram_budget_bytes)
