from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipetune import stats
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState

MS = 1_000_000


def make_repeat(step_ns: int, steps: int = 10, wait_ns: int = 0, batch_size: int = 32):
    """``steps`` back-to-back steps, each waiting ``wait_ns`` then stepping ``step_ns``."""
    period = wait_ns + step_ns
    return RepeatTiming(
        request_ns=tuple(1_000 + i * period for i in range(steps)),
        wait_ns=(wait_ns,) * steps,
        step_ns=(step_ns,) * steps,
        examples=steps * batch_size,
    )


def make_trial(*repeats: RepeatTiming, steps_per_epoch: int = 100, fill_ns: int | None = None):
    return TrialResult(
        key="t",
        role=Role.CANDIDATE,
        params={},
        state=TrialState.COMPLETE,
        batch_size=32,
        steps_per_epoch=steps_per_epoch,
        fill_ns=fill_ns,
        repeats=repeats,
    )


# --- throughput -------------------------------------------------------------


def test_throughput_is_examples_per_second():
    assert stats.throughput(640, 2.0) == 320.0
    assert stats.throughput(0, 1.0) == 0.0


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_throughput_rejects_non_positive_seconds(seconds):
    with pytest.raises(ValueError, match="seconds > 0"):
        stats.throughput(10, seconds)


# --- median_iqr -------------------------------------------------------------


def test_median_iqr_uses_linear_interpolation():
    assert stats.median_iqr([1, 2, 3, 4]) == (2.5, 1.75, 3.25)
    assert stats.median_iqr([4, 1, 3, 2]) == (2.5, 1.75, 3.25)
    assert stats.median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0, 4.0)
    assert stats.median_iqr([7]) == (7.0, 7.0, 7.0)


def test_median_iqr_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        stats.median_iqr([])


# --- bootstrap_ci -----------------------------------------------------------


def test_bootstrap_ci_of_one_value_is_that_value():
    assert stats.bootstrap_ci([7.0]) == (7.0, 7.0)


def test_bootstrap_ci_of_two_values_spans_both():
    # Resampled medians of [1, 2] are 1 (p=1/4), 1.5 (p=1/2) or 2 (p=1/4).
    assert stats.bootstrap_ci([1.0, 2.0]) == (1.0, 2.0)


def test_bootstrap_ci_is_deterministic_for_a_seed():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)


def test_bootstrap_ci_accepts_another_statistic():
    low, high = stats.bootstrap_ci([1.0, 2.0, 3.0, 10.0], statistic=np.mean)
    assert low <= 4.0 <= high


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
    confidence=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_bootstrap_ci_lies_within_the_values(values, seed, confidence):
    # No widening to contain the point estimate: the interval is what the bootstrap gives,
    # and a median of resampled values never leaves their range.
    low, high = stats.bootstrap_ci(values, confidence=confidence, resamples=200, seed=seed)
    assert min(values) <= low <= high <= max(values)


def test_bootstrap_ci_is_the_plain_percentile_interval():
    # Exactly the 2.5th and 97.5th percentiles of the resampled medians: nothing widened to
    # contain the point estimate.
    values = [1.0, 1.0, 1.0, 2.0, 50.0, 51.0]
    rng = np.random.default_rng(4)
    medians = np.median(np.asarray(values)[rng.integers(0, 6, size=(500, 6))], axis=-1)
    expected = tuple(float(v) for v in np.percentile(medians, [2.5, 97.5]))
    assert stats.bootstrap_ci(values, resamples=500, seed=4) == expected


@pytest.mark.parametrize(
    "kwargs", [{"confidence": 0.0}, {"confidence": 1.0}, {"resamples": 0}]
)
def test_bootstrap_ci_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0], **kwargs)


def test_bootstrap_ci_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])


# --- ratio_ci ---------------------------------------------------------------


def test_ratio_ci_of_constant_samples_is_exact():
    assert stats.ratio_ci([4.0, 4.0, 4.0], [2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert stats.ratio_ci([6.0], [3.0]) == (2.0, 2.0, 2.0)


def test_ratio_ci_point_is_ratio_of_medians():
    ratio, low, high = stats.ratio_ci([1.0, 2.0, 3.0], [1.0, 2.0])
    assert ratio == pytest.approx(2.0 / 1.5)
    assert low <= ratio <= high
    assert stats.ratio_ci([1.0, 2.0, 3.0], [1.0, 2.0], seed=5) == stats.ratio_ci(
        [1.0, 2.0, 3.0], [1.0, 2.0], seed=5
    )


@pytest.mark.parametrize("numerator, denominator", [([], [1.0]), ([1.0], []), ([1.0], [0.0])])
def test_ratio_ci_rejects_empty_or_non_positive_denominator(numerator, denominator):
    with pytest.raises(ValueError):
        stats.ratio_ci(numerator, denominator)


# --- input wait -------------------------------------------------------------


def test_input_wait_fraction_is_total_wait_over_wall():
    assert stats.input_wait_fraction([10, 20, 30], 120) == 0.5
    assert stats.input_wait_fraction([], 120) == 0.0


def test_input_wait_fraction_is_clipped():
    assert stats.input_wait_fraction([200], 100) == 1.0
    assert stats.input_wait_fraction([-5], 100) == 0.0


def test_input_wait_fraction_rejects_empty_window():
    with pytest.raises(ValueError, match="wall_ns > 0"):
        stats.input_wait_fraction([1], 0)


@pytest.mark.parametrize(
    "fraction, band",
    [
        (0.0, "not"),
        (0.049, "not"),
        (0.05, "moderately"),
        (0.199, "moderately"),
        (0.2, "highly"),
        (1.0, "highly"),
    ],
)
def test_input_bound_band_edges(fraction, band):
    assert stats.input_bound_band(fraction) == band


# --- projected time ---------------------------------------------------------


def test_projected_time_without_fill_is_epochs_times_steady():
    assert stats.projected_time_s(0.0, None, 0.0, 3.0, 4) == 12.0


def test_projected_time_with_fill_counts_fill_as_first_epoch():
    assert stats.projected_time_s(0.0, 10.0, 0.0, 3.0, 4) == 19.0
    assert stats.projected_time_s(0.0, 10.0, 0.0, 3.0, 1) == 10.0


def test_projected_time_counts_start_up_once_and_the_boundary_every_epoch():
    # start-up 2 + fill 10 + boundary 0.5 x 4 + steady 3 x 3
    assert stats.projected_time_s(2.0, 10.0, 0.5, 3.0, 4) == 2.0 + 10.0 + 2.0 + 9.0
    # uncached: start-up 2 + boundary 0.5 x 4 + steady 3 x 4
    assert stats.projected_time_s(2.0, None, 0.5, 3.0, 4) == 2.0 + 2.0 + 12.0


def test_projected_time_rejects_zero_epochs():
    with pytest.raises(ValueError, match="epochs >= 1"):
        stats.projected_time_s(0.0, None, 0.0, 3.0, 0)


# --- adapters on TrialResult ------------------------------------------------


def test_make_repeat_wall_is_sum_of_wait_and_step():
    assert make_repeat(100 * MS, wait_ns=25 * MS).wall_ns == 1_250 * MS


def test_repeat_throughputs_divide_examples_by_wall_seconds():
    # 10 steps x 32 examples in 1 s, then in 2 s.
    trial = make_trial(make_repeat(100 * MS), make_repeat(200 * MS))
    assert stats.repeat_throughputs(trial) == [320.0, 160.0]


def test_repeat_wait_fractions_per_repeat():
    # 10 x (25 ms wait + 75 ms step): 250 ms of 1 s waiting.
    trial = make_trial(make_repeat(75 * MS, wait_ns=25 * MS), make_repeat(100 * MS))
    assert stats.repeat_wait_fractions(trial) == [0.25, 0.0]


def test_trial_wait_fraction_pools_over_repeats():
    # 0 s of 1 s, then 1 s of 2 s: pooled 1/3 (a mean of fractions would say 1/4).
    trial = make_trial(make_repeat(100 * MS), make_repeat(100 * MS, wait_ns=100 * MS))
    assert stats.trial_wait_fraction(trial) == pytest.approx(1 / 3)


def test_trial_wait_fraction_needs_repeats():
    with pytest.raises(ValueError, match="no timed repeats"):
        stats.trial_wait_fraction(make_trial())


def test_repeat_time_to_train_without_fill():
    # 100 steps/epoch at 0.1 s/step = 10 s/epoch; then 20 s/epoch. Start-up (0 here) holds the
    # first epoch's first step, so 3 epochs are 2.99 steady epochs after it.
    trial = make_trial(make_repeat(100 * MS), make_repeat(200 * MS), steps_per_epoch=100)
    assert stats.repeat_time_to_train_s(trial, epochs=3) == pytest.approx([29.9, 59.8])


def test_one_epoch_costs_a_cache_what_it_costs_without_one():
    """Was: the uncached variant counted its first step twice (start-up and a whole steady
    epoch), so over one epoch a cache whose fill ran at the uncached rate came out faster."""
    step_s, steps = 0.1, 8
    startup = step_s  # the first batch and its step
    uncached = stats.projected_time_s(startup, None, 0.0, steps * step_s, 1, steps)
    cached = stats.projected_time_s(startup, (steps - 1) * step_s, 0.0, 0.1 * step_s, 1, steps)
    assert uncached == pytest.approx(cached) == pytest.approx(steps * step_s)


def test_the_cpu_tie_break_counts_a_caches_fill_over_the_planned_epochs():
    """A cache's steady windows only read memory; over one planned epoch its cost is its fill."""
    base = make_trial(make_repeat(100 * MS), steps_per_epoch=9)
    cached = dataclasses.replace(base, cpu_s_per_example=0.0001, fill_cpu_s=8 * 32 * 0.01)
    assert stats.planned_cpu_s_per_example(cached, 1) == pytest.approx(0.01)
    assert stats.planned_cpu_s_per_example(cached, 100) == pytest.approx((0.01 + 99 * 0.0001) / 100)
    plain = dataclasses.replace(base, cpu_s_per_example=0.005)
    assert stats.planned_cpu_s_per_example(plain, 1) == 0.005


def test_repeat_time_to_train_with_fill():
    trial = make_trial(make_repeat(100 * MS), steps_per_epoch=100, fill_ns=25_000 * MS)
    assert stats.repeat_time_to_train_s(trial, epochs=3) == [45.0]
    assert stats.repeat_time_to_train_s(trial, epochs=1) == [25.0]


def test_repeat_time_to_train_needs_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch > 0"):
        stats.repeat_time_to_train_s(make_trial(make_repeat(MS), steps_per_epoch=0), epochs=1)


def test_objective_parts_of_a_trial():
    trial = make_trial(make_repeat(100 * MS), make_repeat(300 * MS), steps_per_epoch=100,
                       fill_ns=25_000 * MS)
    trial = dataclasses.replace(trial, startup_ns=2_000 * MS, boundary_ns=500 * MS)
    parts = stats.objective_parts(trial, epochs=3)
    # steady epochs 10 s and 30 s: median 20 s; 2 + 25 + 0.5 x 3 + 20 x 2
    assert parts == stats.ObjectiveParts(2.0, 25.0, 0.5, 20.0, 2.0 + 25.0 + 1.5 + 40.0)
    assert stats.repeat_time_to_train_s(trial, epochs=3) == [2.0 + 25.0 + 1.5 + 20.0,
                                                            2.0 + 25.0 + 1.5 + 60.0]


def test_paired_speedups_divide_within_each_round():
    # times: lower is better, so a speed-up of a over b is b / a
    assert stats.speedup_of([1.0, 2.0], [2.0, 6.0], "time_to_train") == [2.0, 3.0]
    assert stats.speedup_of([2.0, 6.0], [1.0, 2.0], "throughput") == [2.0, 3.0]
    assert stats.paired_speedup_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
