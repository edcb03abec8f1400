"""A pipeline running ahead of its consumer through a bounded buffer: one model for both the
verdict (is the job consumer-bound?) and the prediction (which variant is faster?). Pure."""

from __future__ import annotations

import math

# Batches between the pipeline and the step when the pipeline runs ahead: one being made, two
# buffered, one being trained on. Measured on benchmark workload 1 (a 3,150/s pipeline, a
# 3,200/s simulated step): ~2,000 examples/s delivered, where min() of the two predicted
# 3,150/s and ranked a cache (which frees the pipeline) as no gain; the cache ran 1.27x.
IN_FLIGHT = 4


def delivered_share(pipeline: float, consumer: float) -> float:
    """The share of its own rate a consumer gets from a pipeline running ahead of it: how much
    a faster pipeline could still gain (the verdict's consumer-bound rule)."""
    return tandem(pipeline, consumer) / consumer


def tandem(producer: float, consumer: float) -> float:
    """Two stages with IN_FLIGHT batches between them (M/M/1/K): below the slower of the two,
    the more so the closer they are (K/(K+1) of it when equal), since each waits whenever the
    other runs slow for a moment."""
    if math.isclose(producer, consumer, rel_tol=1e-9):
        return producer * IN_FLIGHT / (IN_FLIGHT + 1)
    slow, fast = sorted((producer, consumer))
    ratio = slow / fast
    return slow * (1 - ratio**IN_FLIGHT) / (1 - ratio ** (IN_FLIGHT + 1))
