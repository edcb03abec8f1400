"""The final race's decision, on seeded simulated timings (no wall clock, no TensorFlow)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipetune import race
from pipetune.ranking import rank
from pipetune.results import RepeatTiming, Role, TrialResult, TrialState
from pipetune.serialize import trial_from_json, trial_to_json

MS = 1_000_000


def simulate(truth: dict[str, float], sigma: float, seed: int, cap: int = race.MAX_ROUNDS):
    """A race as race.run plays it: a round of every variant (lognormal noise on its true
    seconds), then the stopping rule, until separated or ``cap`` rounds."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {key: [] for key in truth}
    for round_ in range(cap):
        if round_ and race.decide_values(values, "time_to_train").separated:
            break
        for key, seconds in truth.items():
            values[key].append(seconds * float(rng.lognormal(0.0, sigma)))
    return race.decide_values(values, "time_to_train")


@pytest.mark.parametrize("variants", [2, 4])
@pytest.mark.parametrize("sigma", [0.03, 0.05, 0.10])
def test_identical_variants_are_a_tie_in_at_least_95_percent_of_races(variants, sigma):
    truth = {f"v{i}": 10.0 for i in range(variants)}
    ties = sum(not simulate(truth, sigma, seed).separated for seed in range(200))
    assert ties >= 190, f"{ties}/200 ties at {sigma:.0%} noise"


def test_a_40x_gap_is_separated_in_every_race():
    truth = {"fast": 1.0, "slow": 40.0}
    for seed in range(50):
        decision = simulate(truth, 0.10, seed)
        assert decision.separated and decision.leader == "fast"
        assert decision.speedup.rounds == race.MIN_ROUNDS  # stops as soon as a claim can be made


def test_two_rounds_never_claim():
    decision = race.decide_values({"fast": [1.0, 1.0], "slow": [40.0, 40.0]}, "time_to_train")
    assert decision.leader == "fast" and not decision.separated


def test_rotation_and_round_cap():
    assert race.rotation(["a", "b", "c", "d"], 0) == ["a", "b", "c", "d"]
    assert race.rotation(["a", "b", "c", "d"], 1) == ["b", "c", "d", "a"]
    assert race.rotation(["a", "b", "c", "d"], 5) == ["b", "c", "d", "a"]
    assert race.round_cap(round_cost_s=10.0, remaining_s=0.0) == race.MIN_ROUNDS
    assert race.round_cap(round_cost_s=10.0, remaining_s=45.0) == 4
    assert race.round_cap(round_cost_s=10.0, remaining_s=1e6) == race.MAX_ROUNDS


# --------------------------------------------------------------------------- ranking from the race


def trial(key: str, step_ms: float, role: Role = Role.CANDIDATE, race_round: int | None = None,
          cpu: float | None = None, spread: float = 0.0) -> TrialResult:
    """A trial of two repeats at ``step_ms`` per step, ``spread`` apart (relative range)."""
    def repeat(ms: float) -> RepeatTiming:
        step = round(ms * MS)
        return RepeatTiming(tuple(i * step for i in range(10)), (0,) * 10, (step,) * 10, 320)
    return TrialResult(key=key, role=role, params={"k": key}, state=TrialState.COMPLETE,
                       batch_size=32, steps_per_epoch=100,
                       repeats=(repeat(step_ms * (1 - spread / 2)), repeat(step_ms * (1 + spread / 2))),
                       cpu_s_per_example=cpu, race_round=race_round)


def raced(steps_ms: dict[str, list[float]], roles: dict[str, Role] | None = None,
          cpu: dict[str, float] | None = None) -> list[TrialResult]:
    roles, cpu = roles or {}, cpu or {}
    return [trial(key, ms, roles.get(key, Role.CANDIDATE), round_, cpu.get(key))
            for key, per_round in steps_ms.items() for round_, ms in enumerate(per_round)]


def test_the_race_not_the_screening_decides_and_claims():
    # Screening flattered "lucky" (selection bias); in the race "steady" is faster each round.
    screening = [trial("lucky", 1.0), trial("steady", 1.5), trial("naive", 4.0, Role.NAIVE)]
    race_results = raced({"lucky": [3.0, 3.1, 3.0], "steady": [1.5, 1.5, 1.6],
                          "naive": [4.0, 4.2, 4.1]}, {"naive": Role.NAIVE})
    ranking = rank(screening, "time_to_train", epochs=3, race=race_results)
    assert [r.trial.key for r in ranking.ranked] == ["steady", "lucky", "naive"]
    (versus_naive,) = ranking.comparisons
    assert versus_naive.rounds == 3 and versus_naive.significant
    # Paired per round: 4.0/1.5, 4.2/1.5, 4.1/1.6 -> median 2.67 (not the screening 4.0/1.0)
    assert versus_naive.speedup == pytest.approx(4.0 / 1.5, rel=1e-3)


def test_a_race_tie_is_broken_by_cpu_seconds_per_example():
    screening = [trial("a", 1.0), trial("b", 1.0), trial("naive", 1.0, Role.NAIVE)]
    race_results = raced({"a": [1.0, 1.01, 0.99], "b": [1.0, 0.99, 1.01], "naive": [1.0, 1.0, 1.0]},
                         {"naive": Role.NAIVE}, cpu={"a": 0.004, "b": 0.001, "naive": 0.002})
    ranking = rank(screening, "time_to_train", race=race_results)
    assert [r.trial.key for r in ranking.ranked] == ["b", "naive", "a"]
    assert all(r.tied_with_previous for r in ranking.ranked[1:])
    assert not any(c.significant for c in ranking.comparisons)


def test_variants_that_did_not_race_follow_the_raced_ones():
    screening = [trial("a", 1.0), trial("b", 1.2), trial("far", 9.0)]
    ranking = rank(screening, "time_to_train", race=raced({"a": [1.0] * 3, "b": [1.2] * 3}))
    assert [(r.trial.key, r.raced) for r in ranking.ranked] == [("a", True), ("b", True), ("far", False)]
    assert [r.tie_group for r in ranking.ranked] == [1, 2, 3]


def test_a_stored_race_ranks_the_same():
    screening = [trial("a", 1.0), trial("naive", 3.0, Role.NAIVE)]
    race_results = raced({"a": [1.0, 1.1, 0.9], "naive": [3.0, 3.3, 2.9]}, {"naive": Role.NAIVE})
    stored = [trial_from_json(trial_to_json(r)) for r in race_results]
    assert rank(screening, "time_to_train", race=stored) == rank(screening, "time_to_train", race=race_results)


def test_racers_are_the_leading_candidates_and_the_references():
    screening = rank([trial(f"c{i}", 1.0 + 0.05 * i) for i in range(8)]
                     + [trial("naive", 20.0, Role.NAIVE), trial("auto", 0.5, Role.AUTOTUNE_DEFAULT)],
                     "time_to_train")
    assert race.racers(screening) == ["auto", "c0", "c1", "c2", "naive"]


@pytest.mark.parametrize("objective", ["time_to_train", "throughput"])
def test_the_race_is_not_padded_with_a_candidate_screened_far_slower(objective):
    # Workload 8: two candidates at ~9 s, the third at 68 s; padding to three raced the 68 s one.
    screening = rank([trial("fast", 1.0), trial("close", 1.1), trial("far", 7.0),
                      trial("naive", 15.0, Role.NAIVE)], objective)
    assert race.racers(screening) == ["fast", "close", "naive"]
    noisy = rank([trial("fast", 1.0, spread=0.3), trial("close", 1.1), trial("far", 7.0),
                  trial("naive", 15.0, Role.NAIVE)], objective)
    assert race.racers(noisy) == ["fast", "close", "naive"]  # beyond PAD_WITHIN however noisy


@pytest.mark.parametrize("objective", ["time_to_train", "throughput"])
def test_how_far_behind_a_padded_candidate_may_be_follows_the_screening_noise(objective):
    # Workloads 4 and 7: runners-up 1.3x behind in screening, with repeats within 3% of each
    # other, were 1.3x behind in the race too; racing them bought nothing.
    def screening(spread: float):
        return rank([trial("fast", 1.0, spread=spread), trial("close", 1.1), trial("near", 1.35),
                     trial("naive", 15.0, Role.NAIVE)], objective)
    assert race.pad_band(screening(0.03).ranked) == race.PAD_FLOOR
    assert race.racers(screening(0.03)) == ["fast", "close", "naive"]
    # Train mode: repeats 15% apart, and a runner-up screened 1.35x behind the best won the race.
    assert race.pad_band(screening(0.15).ranked) == pytest.approx(1.5, rel=0.02)
    assert race.racers(screening(0.15)) == ["fast", "close", "near", "naive"]


def test_no_measured_noise_pads_as_far_as_padding_goes():
    one_repeat = [replace(t, repeats=t.repeats[:1]) for t in (trial("fast", 1.0), trial("near", 1.4))]
    assert race.pad_band(rank(one_repeat, "time_to_train").ranked) == race.PAD_WITHIN


def test_the_best_candidate_races_even_far_behind_a_reference():
    screening = rank([trial("c0", 2.0), trial("c1", 9.0), trial("auto", 1.0, Role.AUTOTUNE_DEFAULT)],
                     "time_to_train")
    assert race.racers(screening) == ["auto", "c0"]


def test_a_tight_budget_races_the_references_and_the_top_three_only():
    from pipetune.race import affordable
    from pipetune.results import Role
    from pipetune.space import Variant
    from pipetune.spec import PipelineParams

    variants = {f"c{i}": Variant(PipelineParams(batch_size=8 + i)) for i in range(4)}
    variants |= {"naive": Variant(PipelineParams(batch_size=1), Role.NAIVE),
                 "auto": Variant(PipelineParams(batch_size=2), Role.AUTOTUNE_DEFAULT)}
    keys = ["c0", "auto", "c1", "c2", "naive", "c3"]  # screening order
    assert affordable(keys, variants, 0) == ["c0", "auto", "c1", "c2", "naive"]
    assert affordable(keys, variants, 5) == ["c0", "auto", "c1", "c2", "naive"]
    assert affordable(keys, variants, 6) == keys


def test_only_autotune_default_is_screened_of_the_references():
    from pipetune.space import Variant
    from pipetune.spec import PipelineParams

    references = [Variant(PipelineParams(batch_size=1), Role.NAIVE),
                  Variant(PipelineParams(batch_size=2), Role.AUTOTUNE_DEFAULT),
                  Variant(PipelineParams(batch_size=3), Role.BASELINE)]
    assert race.race_only(references) == {references[0].key, references[2].key}
    # A user already on AUTOTUNE everywhere: the baseline is autotune-default's point.
    same = [*references[:2], Variant(references[1].params, Role.BASELINE)]
    assert race.race_only(same) == {references[0].key}


def test_unscreened_references_race_after_the_screened_variants():
    screening = rank([trial("c0", 1.0), trial("c1", 1.05), trial("auto", 2.0, Role.AUTOTUNE_DEFAULT)],
                     "time_to_train")
    assert race.racers(screening, ["naive", "baseline"]) == ["c0", "c1", "auto", "naive", "baseline"]
    # Every candidate failed: autotune-default and naive still race, so the sweep has a verdict.
    only_auto = rank([trial("auto", 2.0, Role.AUTOTUNE_DEFAULT)], "time_to_train")
    assert race.racers(only_auto, ["naive"]) == ["auto", "naive"]
    assert race.racers(rank([], "time_to_train"), ["naive"]) == []  # nothing to race it with


def test_a_reference_measured_in_the_race_only_is_recorded_by_its_first_round():
    screened = [trial("c0", 1.0), trial("auto", 2.0, Role.AUTOTUNE_DEFAULT)]
    rounds = raced({"c0": [1.0, 1.1, 1.0], "auto": [2.0, 2.1, 2.0], "naive": [4.0, 4.4, 4.2]},
                   {"auto": Role.AUTOTUNE_DEFAULT, "naive": Role.NAIVE})
    results = race.with_race_records(screened, list(reversed(rounds)))
    assert results[:2] == screened  # a screened variant keeps its screening record
    (naive,) = results[2:]
    assert (naive.key, naive.race_round, naive.role) == ("naive", 0, Role.NAIVE)
    ranking = rank(results, "time_to_train", race=rounds)
    assert [r.trial.key for r in ranking.ranked] == ["c0", "auto", "naive"]
    assert {c.reference.trial.key: c.significant for c in ranking.comparisons} == {"auto": True, "naive": True}
