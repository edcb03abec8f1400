from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipetune import stats
from pipetune.ranking import Ranking, beats, rank
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState

US = 1_000
MS = 1_000_000
STEPS = 10


def make_repeat(step_ns: int, batch_size: int = 32) -> RepeatTiming:
    """A repeat of ``STEPS`` steps of ``step_ns`` each, no input wait."""
    return RepeatTiming(
        request_ns=tuple(i * step_ns for i in range(STEPS)),
        wait_ns=(0,) * STEPS,
        step_ns=(step_ns,) * STEPS,
        examples=STEPS * batch_size,
    )


def make_trial(
    key: str,
    step_ms: list[float],
    role: Role = Role.CANDIDATE,
    state: TrialState = TrialState.COMPLETE,
    cpu_s_per_example: float | None = None,
    peak_rss_bytes: int | None = None,
    batch_size: int = 32,
    fill_ns: int | None = None,
    reason: str = "",
) -> TrialResult:
    """One repeat per entry of ``step_ms``: throughput = batch_size / step time."""
    return TrialResult(
        key=key,
        role=role,
        params={"prefetch": 2, "key": key},
        state=state,
        reason=reason,
        batch_size=batch_size,
        steps_per_epoch=1000,
        fill_ns=fill_ns,
        repeats=tuple(make_repeat(round(ms * MS), batch_size) for ms in step_ms),
        cpu_s_per_example=cpu_s_per_example,
        peak_rss_bytes=peak_rss_bytes,
    )


def positions(ranking: Ranking) -> dict[str, int]:
    return {r.trial.key: r.position for r in ranking.ranked}


# --- properties ---------------------------------------------------------------


@st.composite
def trial_lists(draw) -> list[TrialResult]:
    count = draw(st.integers(1, 6))
    trials = []
    for i in range(count):
        trials.append(
            TrialResult(
                key=f"v{i}",
                role=draw(st.sampled_from(Role)),
                params={"i": i},
                state=draw(st.sampled_from(TrialState)),
                batch_size=draw(st.sampled_from([16, 32])),
                steps_per_epoch=100,
                fill_ns=draw(st.none() | st.integers(1, 50).map(lambda ms: ms * MS)),
                # Few distinct step times, so equal values and overlaps are common.
                repeats=tuple(
                    make_repeat(step_us * US)
                    for step_us in draw(st.lists(st.integers(1, 12), max_size=4))
                ),
                cpu_s_per_example=draw(st.none() | st.sampled_from([0.5, 1.0, 1.5])),
                peak_rss_bytes=draw(st.none() | st.sampled_from([10, 20])),
            )
        )
    return trials


objectives = st.sampled_from(["throughput", "time_to_train"])
epochs_counts = st.integers(1, 5)


def values_of(trial: TrialResult, objective: str, epochs: int) -> list[float]:
    if objective == "throughput":
        return stats.repeat_throughputs(trial)
    return stats.repeat_time_to_train_s(trial, epochs)


def better_on_every_repeat(s: list[float], t: list[float], higher_is_better: bool) -> bool:
    if not higher_is_better:
        s, t = [-v for v in s], [-v for v in t]
    if len(s) == len(t):
        return all(a > b for a, b in zip(s, t))
    return min(s) > max(t)


@settings(max_examples=60, deadline=None)
@given(trials=trial_lists(), objective=objectives, epochs=epochs_counts, data=st.data())
def test_rank_is_invariant_under_permutation(trials, objective, epochs, data):
    shuffled = data.draw(st.permutations(trials))
    assert rank(shuffled, objective, epochs) == rank(trials, objective, epochs)


@settings(max_examples=60, deadline=None)
@given(trials=trial_lists(), objective=objectives, epochs=epochs_counts)
def test_only_complete_trials_with_repeats_rank(trials, objective, epochs):
    ranking = rank(trials, objective, epochs)
    rankable = {t.key for t in trials if t.state is TrialState.COMPLETE and t.repeats}
    assert set(positions(ranking)) == rankable
    assert {t.key for t in ranking.unranked} == {t.key for t in trials} - rankable
    assert [r.position for r in ranking.ranked] == list(range(1, len(rankable) + 1))
    assert len(ranking.to_rows()) == len(trials)


@settings(max_examples=60, deadline=None)
@given(trials=trial_lists(), objective=objectives, epochs=epochs_counts)
def test_a_trial_better_on_every_repeat_ranks_above(trials, objective, epochs):
    ranking = rank(trials, objective, epochs)
    place = positions(ranking)
    higher_is_better = objective == "throughput"
    for s in ranking.ranked:
        for t in ranking.ranked:
            s_values = values_of(s.trial, objective, epochs)
            t_values = values_of(t.trial, objective, epochs)
            if better_on_every_repeat(s_values, t_values, higher_is_better):
                assert place[s.trial.key] < place[t.trial.key]


@settings(max_examples=60, deadline=None)
@given(trials=trial_lists(), objective=objectives, epochs=epochs_counts)
def test_no_trial_is_placed_above_one_that_beats_it(trials, objective, epochs):
    ranked = rank(trials, objective, epochs).ranked
    higher_is_better = objective == "throughput"
    for i, upper in enumerate(ranked):
        assert upper.ci_low <= upper.median <= upper.ci_high
        for lower in ranked[i + 1 :]:
            assert not beats(lower, upper, higher_is_better)


# --- examples -----------------------------------------------------------------


def sweep_with_clear_winner() -> list[TrialResult]:
    return [
        make_trial("winner", [1.0, 1.05, 0.95], cpu_s_per_example=1.8),
        make_trial("middling", [1.5, 1.6, 1.4]),
        make_trial("naive", [3.0, 3.1, 2.9], role=Role.NAIVE),
        make_trial("autotune", [2.0, 2.1, 1.9], role=Role.AUTOTUNE_DEFAULT),
        make_trial("baseline", [2.5, 2.6, 2.4], role=Role.BASELINE),
    ]


def test_clear_winner_is_significant_against_every_reference():
    ranking = rank(sweep_with_clear_winner(), "throughput")
    assert ranking.best.trial.key == "winner"
    assert [r.trial.key for r in ranking.ranked] == [
        "winner", "middling", "autotune", "baseline", "naive"
    ]
    assert [r.tie_group for r in ranking.ranked] == [1, 2, 3, 4, 5]
    assert not any(r.tied_with_previous for r in ranking.ranked)
    speedups = {c.reference.trial.key: c for c in ranking.comparisons}
    assert list(speedups) == ["autotune", "baseline", "naive"]  # by key
    # Median throughputs: 32 examples per 1.0 ms vs per 3.0 ms.
    assert speedups["naive"].speedup == pytest.approx(3.0)
    assert speedups["autotune"].speedup == pytest.approx(2.0)
    for comparison in ranking.comparisons:
        assert comparison.significant
        assert 1.0 < comparison.speedup_ci_low <= comparison.speedup <= comparison.speedup_ci_high
        assert not comparison.batch_size_differs


def test_time_to_train_speedup_keeps_faster_means_above_one():
    ranking = rank(sweep_with_clear_winner(), "time_to_train", epochs=3)
    assert ranking.best.trial.key == "winner"
    naive = next(c for c in ranking.comparisons if c.reference.trial.key == "naive")
    assert naive.speedup == pytest.approx(3.0)
    # 1000 steps per epoch at 1 ms per step, 3 epochs, less the first step (start-up's).
    assert ranking.best.median == pytest.approx(3.0 - 0.001)


def test_overlapping_intervals_tie_and_lower_cpu_goes_first():
    # "fast" has the better median, but repeat 2 is worse than "frugal"'s repeat 2:
    # no domination, intervals overlap, so cost decides.
    trials = [
        make_trial("fast", [10.0, 11.0, 12.0], cpu_s_per_example=1.5),
        make_trial("frugal", [11.5, 10.5, 12.5], cpu_s_per_example=0.9),
        make_trial("slow", [30.0, 31.0, 32.0], cpu_s_per_example=0.1),
    ]
    ranked = rank(trials, "throughput").ranked
    assert [r.trial.key for r in ranked] == ["frugal", "fast", "slow"]
    assert ranked[1].median > ranked[0].median
    assert [r.tied_with_previous for r in ranked] == [False, True, False]
    assert [r.tie_group for r in ranked] == [1, 1, 2]


def test_tie_with_equal_cpu_is_broken_by_memory_then_key():
    trials = [
        make_trial("b", [10.0, 11.0, 12.0], cpu_s_per_example=1.0, peak_rss_bytes=5),
        make_trial("a", [11.5, 10.5, 12.5], cpu_s_per_example=1.0, peak_rss_bytes=9),
        make_trial("c", [11.5, 10.5, 12.5], cpu_s_per_example=1.0, peak_rss_bytes=5),
        make_trial("d", [12.0, 10.0, 11.0]),  # unknown cost counts as most expensive
    ]
    assert [r.trial.key for r in rank(trials, "throughput").ranked] == ["b", "c", "a", "d"]


def test_cache_fill_decides_with_few_epochs_and_pays_off_with_many():
    trials = [
        make_trial("cached", [1.0, 1.0, 1.0], fill_ns=50_000 * MS),  # steady 1 s/epoch
        make_trial("uncached", [2.0, 2.0, 2.0]),  # steady 2 s/epoch
    ]
    assert rank(trials, "time_to_train", epochs=1).best.trial.key == "uncached"
    best = rank(trials, "time_to_train", epochs=100).best
    assert best.trial.key == "cached"
    assert best.median == pytest.approx(50.0 + 99 * 1.0)


def test_batch_size_differs_from_baseline():
    trials = [
        make_trial("winner", [1.0, 1.0, 1.0], batch_size=64),
        make_trial("naive", [9.0, 9.0, 9.0], role=Role.NAIVE, batch_size=64),
        make_trial("baseline", [5.0, 5.0, 5.0], role=Role.BASELINE, batch_size=32),
    ]
    comparisons = rank(trials, "throughput").comparisons
    assert [c.batch_size_differs for c in comparisons] == [True, True]


def test_batch_size_falls_back_to_naive_without_baseline():
    trials = [
        make_trial("winner", [1.0, 1.0, 1.0], batch_size=64),
        make_trial("naive", [9.0, 9.0, 9.0], role=Role.NAIVE, batch_size=64),
    ]
    assert not rank(trials, "throughput").comparisons[0].batch_size_differs
    trials[1] = make_trial("naive", [9.0, 9.0, 9.0], role=Role.NAIVE, batch_size=16)
    assert rank(trials, "throughput").comparisons[0].batch_size_differs


def test_failed_baseline_still_sets_the_batch_size_but_is_not_compared():
    trials = [
        make_trial("winner", [1.0], batch_size=64),
        make_trial("naive", [9.0], role=Role.NAIVE, batch_size=64),
        make_trial("baseline", [], role=Role.BASELINE, state=TrialState.FAILED, batch_size=32),
    ]
    comparisons = rank(trials, "throughput").comparisons
    assert [c.reference.trial.key for c in comparisons] == ["naive"]
    assert comparisons[0].batch_size_differs


def test_winning_reference_is_not_compared_with_itself():
    trials = [
        make_trial("autotune", [1.0, 1.0], role=Role.AUTOTUNE_DEFAULT),
        make_trial("naive", [3.0, 3.0], role=Role.NAIVE),
    ]
    ranking = rank(trials, "throughput")
    assert ranking.best.trial.key == "autotune"
    assert [c.reference.trial.key for c in ranking.comparisons] == ["naive"]


def test_unranked_trials_keep_their_reason_and_fill_rows():
    trials = [
        make_trial("ok", [1.0, 1.1]),
        make_trial("oom", [], state=TrialState.FAILED, reason="OOM: 9 GiB > 8 GiB budget"),
        make_trial("pruned", [2.0], state=TrialState.PRUNED, reason="rung 1"),
        make_trial("empty", []),
    ]
    ranking = rank(trials, "throughput")
    assert [t.key for t in ranking.unranked] == ["empty", "oom", "pruned"]
    rows = {row["key"]: row for row in ranking.to_rows()}
    assert rows["oom"]["reason"] == "OOM: 9 GiB > 8 GiB budget"
    assert rows["oom"]["state"] == "failed"
    assert rows["oom"]["position"] is None
    assert rows["empty"]["reason"] == "no timed repeats"
    assert rows["ok"]["position"] == 1
    assert rows["ok"]["role"] == "candidate"
    assert rows["ok"]["param.prefetch"] == 2
    # The median of two repeats is the mean of their throughputs.
    assert rows["ok"]["median"] == pytest.approx((32 / 1.0e-3 + 32 / 1.1e-3) / 2)


def test_no_rankable_trial_gives_no_best():
    ranking = rank([make_trial("x", [], state=TrialState.SKIPPED)], "throughput")
    assert ranking.best is None
    assert ranking.ranked == ()
    assert ranking.comparisons == ()


@pytest.mark.parametrize(
    "objective, epochs, trials",
    [
        ("latency", 1, []),
        ("throughput", 0, []),
        ("throughput", 1, [make_trial("x", [1.0]), make_trial("x", [2.0])]),
    ],
)
def test_rank_rejects_bad_arguments(objective, epochs, trials):
    with pytest.raises(ValueError):
        rank(trials, objective, epochs)


def test_domination_outranks_cheaper_cost():
    trials = [
        make_trial("cheap", [11.5, 10.5, 12.5], cpu_s_per_example=0.1),
        make_trial("dominant", [11.0, 10.0, 12.0]),  # better on every paired repeat
    ]
    ranked = rank(trials, "throughput").ranked
    assert [r.trial.key for r in ranked] == ["dominant", "cheap"]
    assert not ranked[1].tied_with_previous


def test_a_frugal_variant_with_a_clearly_worse_median_is_not_placed_first():
    """Seen in a race: a disk-cached variant 1.3-2.4x slower in every round, not separated
    (3 noisy rounds), won the tie on CPU per example. Cost decides only between near-equal
    medians; a clearly worse median goes after."""
    fast = make_trial("autotune", [13.8, 13.3, 13.5], Role.AUTOTUNE_DEFAULT, cpu_s_per_example=0.0005)
    frugal = make_trial("cached", [24.5, 12.9, 32.8], cpu_s_per_example=0.00015)  # overlaps: a tie
    ranked = rank([frugal, fast], "throughput").ranked
    assert [r.trial.key for r in ranked] == ["autotune", "cached"]
    assert ranked[1].tied_with_previous  # the data still cannot separate them: a tie, not a claim


def test_a_verdict_says_why_no_claim_is_made_when_the_interval_clears_one():
    from pipetune.ranking import Comparison

    def verdict(low: float, significant: bool = False, rounds: int = 4) -> str:
        return Comparison(None, 1.5, low, 2.0, significant, False, rounds).verdict

    assert verdict(1.2, significant=True) == "significantly faster"
    assert verdict(0.9) == "not significantly different"
    assert verdict(1.2, rounds=2) == "not significant: 2 paired round(s), a claim needs 3"
    assert verdict(1.2).startswith("not significant: over 4 paired rounds the Student-t bound does not clear 1.02")
    assert verdict(1.2, rounds=0) == "not significant: the screening repeats overlap"
