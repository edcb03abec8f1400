"""Pure measurement arithmetic: throughput, spread, bootstrap intervals, input wait.

No TensorFlow and no pandas: every number a report shows can be recomputed from the raw
timestamps in :mod:`pipetune.results` with these functions alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipetune.results import TrialResult

NS_PER_S = 1_000_000_000
# TF Profiler bands for the input-wait fraction.
MODERATELY_INPUT_BOUND = 0.05
HIGHLY_INPUT_BOUND = 0.20

Statistic = Callable[..., np.ndarray]  # reduces the last axis, like np.median(a, axis=-1)


def throughput(examples: int, seconds: float) -> float:
    """Examples per second. Raises ValueError unless ``seconds > 0``."""
    if seconds <= 0:
        raise ValueError(f"`seconds > 0` must hold, but got {seconds}")
    return examples / seconds


def median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """Returns ``(median, q1, q3)`` with numpy's default linear interpolation."""
    array = _non_empty(values, "values")
    median, q1, q3 = np.percentile(array, [50, 25, 75])
    return float(median), float(q1), float(q3)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Statistic = np.median,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(values)``.

    Args:
        values: The observations, e.g. one throughput per repeat.
        statistic: Reduces the last axis of an array (called as ``statistic(a, axis=-1)``),
            like ``np.median`` or ``np.mean``.
        confidence: Two-sided coverage in (0, 1).
        resamples: Number of bootstrap resamples.
        seed: Seed of the resampling; the same seed gives the same interval.

    Returns:
        ``(low, high)`` as the bootstrap gives it (with few values it may even miss
        ``statistic(values)``: read such an interval as wide); ``(v, v)`` for one value.
    """
    array = _non_empty(values, "values")
    _check_confidence(confidence, resamples)
    rng = np.random.default_rng(seed)
    estimates = statistic(_resample(array, resamples, rng), axis=-1)
    return _percentile_interval(estimates, confidence)


def ratio_ci(
    numerator_values: Sequence[float],
    denominator_values: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Ratio of medians with a percentile bootstrap interval.

    Both samples are resampled independently (the repeats of two trials are not paired).

    Returns:
        ``(ratio, low, high)`` with ``ratio = median(numerator) / median(denominator)``.

    Raises:
        ValueError: A sample is empty or a denominator value is not positive.
    """
    numerator = _non_empty(numerator_values, "numerator_values")
    denominator = _non_empty(denominator_values, "denominator_values")
    if np.any(denominator <= 0):
        raise ValueError(f"every denominator value must be > 0, but got {denominator.tolist()}")
    _check_confidence(confidence, resamples)
    point = float(np.median(numerator) / np.median(denominator))
    rng = np.random.default_rng(seed)
    numerator_medians = np.median(_resample(numerator, resamples, rng), axis=-1)
    denominator_medians = np.median(_resample(denominator, resamples, rng), axis=-1)
    low, high = _percentile_interval(numerator_medians / denominator_medians, confidence)
    return point, low, high


def input_wait_fraction(wait_ns: Sequence[int], wall_ns: int) -> float:
    """Share of the window's wall time spent blocked in ``next()``, clipped to [0, 1]."""
    if wall_ns <= 0:
        raise ValueError(f"`wall_ns > 0` must hold, but got {wall_ns}")
    return min(1.0, max(0.0, sum(wait_ns) / wall_ns))


def input_bound_band(fraction: float) -> str:
    """TF Profiler band: "not" (< 5%), "moderately" (5% to < 20%) or "highly" (>= 20%)."""
    if fraction < MODERATELY_INPUT_BOUND:
        return "not"
    if fraction < HIGHLY_INPUT_BOUND:
        return "moderately"
    return "highly"


def projected_time_s(startup_s: float, fill_s: float | None, boundary_s: float,
                     steady_epoch_s: float, epochs: int, steps_per_epoch: int = 0) -> float:
    """Projected seconds to train ``epochs`` epochs.

    ``startup + fill + boundary * epochs + steady * (epochs - 1)`` for a cached variant (its
    start-up and fill *are* its first epoch), ``startup + boundary * epochs + steady * (epochs
    - 1/steps_per_epoch)`` otherwise: start-up already holds the first epoch's first step, so it
    is not counted twice (``steps_per_epoch`` 0: unknown, the whole epoch counted). So a cache
    wins only when the planned epochs amortise its fill.
    """
    if epochs < 1:
        raise ValueError(f"`epochs >= 1` must hold, but got {epochs}")
    first_step = 1 / steps_per_epoch if steps_per_epoch > 0 else 0.0
    steady_epochs = epochs - first_step if fill_s is None else epochs - 1
    return startup_s + (fill_s or 0.0) + boundary_s * epochs + steady_epoch_s * steady_epochs


@dataclass(frozen=True, slots=True)
class ObjectiveParts:
    """The parts of a trial's projected time to train, in seconds (medians over repeats)."""

    startup_s: float
    fill_s: float | None
    boundary_s: float
    steady_epoch_s: float
    time_to_train_s: float


def repeat_throughputs(trial: TrialResult) -> list[float]:
    """Examples per second of each timed repeat of ``trial``."""
    return [throughput(r.examples, r.wall_ns / NS_PER_S) for r in trial.repeats]


def repeat_wait_fractions(trial: TrialResult) -> list[float]:
    """Input-wait fraction of each timed repeat of ``trial``."""
    return [input_wait_fraction(r.wait_ns, r.wall_ns) for r in trial.repeats]


def repeat_steady_epoch_s(trial: TrialResult) -> list[float]:
    """Per repeat, ``steps_per_epoch`` steps at the repeat's mean wall time per step (a repeat
    that is a whole epoch gives its own wall time)."""
    if trial.steps_per_epoch <= 0:
        raise ValueError(
            f"`steps_per_epoch > 0` must hold to project time to train, "
            f"but got {trial.steps_per_epoch} for trial {trial.key!r}"
        )
    return [trial.steps_per_epoch * r.wall_ns / NS_PER_S / len(r.step_ns) for r in trial.repeats]


def repeat_time_to_train_s(trial: TrialResult, epochs: int) -> list[float]:
    """Projected seconds to train ``epochs`` epochs, one value per timed repeat.

    Start-up, fill and boundary are measured once per trial and shared by its repeats.
    """
    startup_s, fill_s, boundary_s = _once_parts(trial)
    return [projected_time_s(startup_s, fill_s, boundary_s, steady, epochs, trial.steps_per_epoch)
            for steady in repeat_steady_epoch_s(trial)]


def objective_parts(trial: TrialResult, epochs: int) -> ObjectiveParts:
    """The formula's parts for ``trial``: what the report and ``results.csv`` show."""
    startup_s, fill_s, boundary_s = _once_parts(trial)
    steady = median_iqr(repeat_steady_epoch_s(trial))[0]
    return ObjectiveParts(startup_s, fill_s, boundary_s, steady,
                          projected_time_s(startup_s, fill_s, boundary_s, steady, epochs,
                                           trial.steps_per_epoch))


def planned_cpu_s_per_example(trial: TrialResult, epochs: int) -> float | None:
    """CPU-seconds per example over the planned run: a cached variant's fill epoch costs what
    it costs (its steady windows only read the cache), then ``epochs - 1`` steady epochs."""
    steady = trial.cpu_s_per_example
    if steady is None or trial.fill_cpu_s is None:
        return steady
    fill_examples = max(1, (trial.steps_per_epoch - 1) * trial.batch_size)
    return (trial.fill_cpu_s / fill_examples + steady * (epochs - 1)) / epochs


def _once_parts(trial: TrialResult) -> tuple[float, float | None, float]:
    startup_s = (trial.startup_ns or 0) / NS_PER_S
    fill_s = None if trial.fill_ns is None else trial.fill_ns / NS_PER_S
    return startup_s, fill_s, (trial.boundary_ns or 0) / NS_PER_S


def speedup_of(better: Sequence[float], worse: Sequence[float], objective: str) -> list[float]:
    """Paired speed-ups of ``better`` over ``worse`` (>1 = better is faster), index by index:
    a throughput ratio, or the inverse ratio of times."""
    pairs = zip(better, worse, strict=True)
    if objective == "throughput":
        return [b / w for b, w in pairs]
    return [w / b for b, w in pairs]


def paired_speedup_ci(speedups: Sequence[float], confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """Median of paired speed-ups (one per race round) with its bootstrap interval over rounds.

    Pairing within a round cancels what the round shares (machine load, drift); resampling
    rounds, not repeats, keeps each resample made of independent measurements.
    """
    low, high = bootstrap_ci(speedups, confidence=confidence, seed=seed)
    return median_iqr(speedups)[0], low, high


# Two-sided 99% Student-t quantiles by degrees of freedom (1-10); beyond, 10's is conservative.
# 99%, not 95%: a race looks at its data after every round from the third, and each look is a
# chance for two equal variants to look separated (simulated in tests/test_race.py).
_T_995 = (63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169)


def t_lower_bound(speedups: Sequence[float]) -> float:
    """Student-t lower bound (99% two-sided) of the geometric mean speed-up (on log ratios).

    A bootstrap interval can never be wider than the data: with three rounds it is their
    min..max, so two equal variants look "better in every round" too often. The t bound widens
    with few rounds and with noisy ones; a claim needs it too. 0 for a single round.
    """
    logs = np.log(_non_empty(speedups, "speedups"))
    if logs.size < 2:
        return 0.0
    t = _T_995[min(logs.size - 1, len(_T_995)) - 1]
    return float(np.exp(logs.mean() - t * logs.std(ddof=1) / np.sqrt(logs.size)))


def repeat_objective_values(trial: TrialResult, objective: str, epochs: int) -> list[float]:
    """Per repeat, the value ranked by: examples/s ("throughput", higher is better) or the
    projected seconds for ``epochs`` epochs ("time_to_train", lower is better)."""
    if objective == "throughput":
        return repeat_throughputs(trial)
    return repeat_time_to_train_s(trial, epochs)


def trial_objective_value(trial: TrialResult, objective: str, epochs: int) -> float:
    """One number per trial: the median over its repeats (what a race round records)."""
    return median_iqr(repeat_objective_values(trial, objective, epochs))[0]


def trial_wait_fraction(trial: TrialResult) -> float:
    """Input-wait fraction of ``trial`` pooled over its repeats (total wait / total wall)."""
    if not trial.repeats:
        raise ValueError(f"trial {trial.key!r} has no timed repeats")
    total_wait_ns = sum(sum(r.wait_ns) for r in trial.repeats)
    total_wall_ns = sum(r.wall_ns for r in trial.repeats)
    return input_wait_fraction([total_wait_ns], total_wall_ns)


def _non_empty(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence, but got {values!r}")
    return array


def _check_confidence(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"`0 < confidence < 1` must hold, but got {confidence}")
    if resamples < 1:
        raise ValueError(f"`resamples >= 1` must hold, but got {resamples}")


def _resample(array: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` rows, each ``len(array)`` draws with replacement."""
    return array[rng.integers(0, array.size, size=(resamples, array.size))]


def _percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    # Reported as the bootstrap gives it, even where it misses ``point`` (skewed or discrete
    # resamples of few repeats): widening it to fit would hide how little a few repeats say.
    return float(low), float(high)
