"""The prior that orders a sweep's candidates: predicted rates from a diagnosis of known numbers.

Each case is a diagnosis document built from synthetic stage timings (the same document a
sweep stores), so the arithmetic is exact; what is asserted is the order a budget measures
in, and the large effects the model exists to see."""

from __future__ import annotations

import pytest

from pipetune import predict
from pipetune.diagnose.document import diagnosis_document
from pipetune.diagnose.measurements import ConsumerMeasurement
from pipetune.diagnose.verdict import analyse
from pipetune.space import Variant
from pipetune.spec import PipelineParams
from test_diagnose import measurements, stage

AUTOTUNE = PipelineParams(shards=8, interleave_cycle="autotune", map_parallel="autotune", prefetch="autotune")


# Input mode: nothing consumes, so a rate is the pipeline's own arithmetic.
NO_CONSUMER = ConsumerMeasurement("input", 64, None, measured=False)


def document(stages, consumer=NO_CONSUMER) -> dict:
    return diagnosis_document(analyse(measurements(stages, consumer)))


def variant(**changes) -> Variant:
    return Variant(AUTOTUNE.model_copy(update=changes))


# read 0.05 ms, parse 0.05 ms, then an op that waits 4 ms per element on 0.05 ms of CPU.
WAITING_OP = document([
    stage("read", "read", 0.05, 0.05, 0.03, 3000),
    stage("parse", "parse", 0.10, 0.10, 0.06, 3000),
    stage("lookup", "op", 4.10, 0.15, 2.06, 3000),
])


def rate(params: PipelineParams, diagnosis: dict, epochs: int = 1) -> float:
    return predict.predict(params, diagnosis, epochs).steady_rate


def test_a_waiting_op_needs_a_private_pool_for_calls_beyond_the_cores() -> None:
    # tf.data runs map calls on a pool of the 2 cores: 16 calls alone stay at 2 in flight.
    assert rate(AUTOTUNE, WAITING_OP) == pytest.approx(2 / 0.00405, rel=1e-3)
    assert rate(AUTOTUNE.model_copy(update={"map_parallel": 16}), WAITING_OP) == pytest.approx(
        rate(AUTOTUNE, WAITING_OP))
    pooled = AUTOTUNE.model_copy(update={"map_parallel": 16, "private_threadpool_size": 16})
    assert rate(pooled, WAITING_OP) == pytest.approx(16 / 0.00405, rel=1e-3)
    gains = predict.speedups([Variant(pooled)], WAITING_OP, "time_to_train", 1, AUTOTUNE)
    assert gains[Variant(pooled).key] == pytest.approx(8, rel=1e-3)


def test_waiting_reads_go_as_wide_as_the_interleave_and_the_shards_allow() -> None:
    reads = document([stage("read", "read", 2.0, 0.05, 0.25, 3000, parallelism=8),
                      stage("parse", "parse", 2.05, 0.1, 0.26, 3000)])
    wide = AUTOTUNE.model_copy(update={"shards": 16, "interleave_cycle": 16})
    few_files = AUTOTUNE.model_copy(update={"shards": 4, "interleave_cycle": 16})
    assert rate(wide, reads) == pytest.approx(16 / 0.002, rel=1e-3)
    assert rate(few_files, reads) == pytest.approx(4 / 0.002, rel=1e-3)
    assert rate(AUTOTUNE, reads) == pytest.approx(2 / 0.002, rel=1e-3)  # autotune: a file per core


def test_the_cpu_limit_is_what_the_parallel_pass_billed_not_the_slow_pass() -> None:
    """Reads that wait 3 ms: the sequential pass bills 1.05 ms of CPU per element (idle threads
    spin between waits), the parallel pass 0.42 ms. The CPU limit is the lower, as the
    verdict's cpu_bound takes it: 2 cores / 0.42 ms, not 2 / 1.05 ms."""
    from pipetune.diagnose.measurements import PassTiming, StageMeasurement

    waits = document([
        StageMeasurement("read", "read", False, PassTiming(1000, 3.0, 1.0, 1), PassTiming(1000, 0.4, 0.4, 8), 3000),
        StageMeasurement("parse", "parse", False, PassTiming(1000, 3.05, 1.05, 1), PassTiming(1000, 0.42, 0.42, 2), 3000),
    ])
    wide = AUTOTUNE.model_copy(update={"shards": 16, "interleave_cycle": 16})
    assert rate(wide, waits) == pytest.approx(2 / 0.00042, rel=1e-3)  # 4,762/s; 16 files at once allow 5,333/s


def test_a_cache_costs_what_the_diagnosis_measured_reading_it_back() -> None:
    """Reads that wait 3 ms, nothing random: from the second epoch on a memory cache is read
    back by one iterator at the cost measured (its CPU as measured, not scaled like a waiting
    pass's). 20 us per element: 50,000/s, predicted first over 30 epochs; a cache measured at
    1 ms per element (slower than 16 files at once) is predicted slower than none."""
    reads = document([stage("read", "read", 3.0, 0.05, 0.4, 3000, parallelism=8),
                      stage("parse", "parse", 3.05, 0.1, 0.42, 3000)])
    wide = AUTOTUNE.model_copy(update={"shards": 16, "interleave_cycle": 16})
    cached = wide.model_copy(update={"cache": "memory"})
    cheap = {**reads, "cache_read": {"wall_s": 20e-6, "cpu_s": 20e-6, "elements": 512}}
    assert rate(cached, cheap) == pytest.approx(1 / 20e-6, rel=1e-3)
    order = predict.best_first([Variant(wide), Variant(cached)], cheap, "time_to_train", 30, AUTOTUNE)
    assert order[0] == Variant(cached)
    costly = {**reads, "cache_read": {"wall_s": 1e-3, "cpu_s": 1e-3, "elements": 512}}
    assert rate(cached, costly) == pytest.approx(1000, rel=1e-3)
    assert rate(cached, costly) < rate(wide, costly)


# A costly deterministic decode (2 ms of CPU), then a cheap random flip: a cache fits between.
CACHEABLE = document([
    stage("read", "read", 0.05, 0.05, 0.03, 3000),
    stage("parse", "parse", 0.10, 0.10, 0.06, 3000),
    stage("decode", "op", 2.10, 2.10, 1.06, 150_000),
    stage("flip", "op", 2.15, 2.15, 1.09, 150_000, random=True),
])


def test_a_cache_is_predicted_first_over_many_epochs_and_last_over_one() -> None:
    candidates = [variant(cache=cache) for cache in ("none", "memory", "disk")]
    many = predict.best_first(candidates, CACHEABLE, "time_to_train", 30, AUTOTUNE)
    assert [v.params.cache for v in many] == ["memory", "disk", "none"]
    one = predict.best_first(candidates, CACHEABLE, "time_to_train", 1, AUTOTUNE)
    assert [v.params.cache for v in one] == ["none", "memory", "disk"]  # the fill pays nothing back
    # From the second epoch on only the flip runs: 0.05 ms on 2 cores, against 2.15 ms.
    assert rate(AUTOTUNE.model_copy(update={"cache": "memory"}), CACHEABLE) > 20 * rate(AUTOTUNE, CACHEABLE)


def test_a_pipeline_as_fast_as_its_consumer_delivers_less_than_either_and_a_cache_frees_it() -> None:
    """A bounded buffer joins the two: when their rates are close each waits for the other's
    slow moments. A cache that leaves the pipeline far ahead of the step is predicted to pay
    even where the step alone would cap both at the same rate."""
    step = ConsumerMeasurement("simulate", 32, 0.01, measured=False)  # 3,200/s at batch 32
    stages = [stage("read", "read", 0.05, 0.05, 0.03, 3000),
              stage("decode", "op", 0.68, 0.68, 0.36, 150_000),
              stage("flip", "op", 0.70, 0.70, 0.37, 150_000, random=True)]
    pipeline = rate(AUTOTUNE, document(stages))
    assert pipeline == pytest.approx(2 / 0.0007, rel=1e-3)  # 2,857/s on the 2 cores: near the step
    balanced = document(stages, step)
    delivered = rate(AUTOTUNE, balanced)
    assert 0.7 * pipeline < delivered < 0.9 * pipeline
    cached = AUTOTUNE.model_copy(update={"cache": "memory"})
    assert rate(cached, balanced) == pytest.approx(3200, rel=0.01)  # the pipeline is far ahead
    candidates = [variant(), Variant(cached)]
    assert predict.best_first(candidates, balanced, "time_to_train", 10, AUTOTUNE)[0] == Variant(cached)


def test_consumer_bound_variants_are_predicted_equal_and_a_bigger_simulated_batch_faster() -> None:
    slow_step = ConsumerMeasurement("simulate", 32, 0.2, measured=False)  # 160 examples/s
    cheap = document([stage("read", "read", 0.05, 0.05, 0.03, 300),
                      stage("parse", "parse", 0.10, 0.10, 0.06, 300)], slow_step)
    parallel = [variant(map_parallel=2), variant(interleave_cycle=4), variant()]
    assert [rate(v.params, cheap) for v in parallel] == pytest.approx([160.0] * 3, rel=1e-6)
    # Nothing runs ahead of the step without prefetch and parallelism: the times add up.
    serial = AUTOTUNE.model_copy(update={"interleave_cycle": 1, "map_parallel": 1, "prefetch": 0})
    assert rate(serial, cheap) == pytest.approx(1 / (1 / 160 + 0.0001), rel=1e-3)
    # A simulated step costs the same per batch: 8x the batch, 8x the consumer's rate.
    assert rate(AUTOTUNE.model_copy(update={"batch_size": 256}), cheap) == pytest.approx(1280, rel=1e-4)


def test_equal_predictions_spread_out_from_the_reference_whatever_the_input_order() -> None:
    cheap = document([stage("read", "read", 0.05, 0.05, 0.03, 300),
                      stage("parse", "parse", 0.10, 0.10, 0.06, 300)],
                     ConsumerMeasurement("simulate", 32, 0.2, measured=False))
    copy, one, two, far = (variant(), variant(map_parallel=2), variant(prefetch=1),
                           variant(map_parallel=2, private_threadpool_size=8, interleave_cycle=4))
    candidates = [copy, one, two, far]
    first = predict.best_first(candidates, cheap, "time_to_train", 10, AUTOTUNE)
    assert first == predict.best_first(list(reversed(candidates)), cheap, "time_to_train", 10, AUTOTUNE)
    # far differs from the reference in 3 dimensions, one and two in 1 each (their order: by
    # key), and the reference's copy in none: it comes last.
    assert first[0] == far and set(first[1:3]) == {one, two} and first[3] == copy
    # A prediction worse by more than the resolution comes last, however different: the serial
    # variant waits 0.1 ms per example beside a 6.25 ms step (-1.6%, one prediction with the
    # rest), but 1.2 ms beside it (-16%).
    slow = variant(map_parallel=1, interleave_cycle=1, prefetch=0, shards=1)
    assert predict.best_first([slow, *candidates], cheap, "time_to_train", 10, AUTOTUNE)[0] == slow
    costly = document([stage("read", "read", 0.1, 0.1, 0.06, 300),
                       stage("parse", "parse", 1.2, 1.2, 0.6, 300)],
                      ConsumerMeasurement("simulate", 32, 0.2, measured=False))
    assert predict.best_first([slow, *candidates], costly, "time_to_train", 10, AUTOTUNE)[-1] == slow


def test_gains_closer_than_the_resolution_order_alike_in_two_sweeps() -> None:
    """Workload 6: every gain ~1, one of them 0.9999995 in one sweep's diagnosis and a hair
    lower in the next; at 6 digits the two sweeps screened different variants first."""
    candidates = [variant(map_parallel=2), variant(prefetch=1), variant(interleave_cycle=4),
                  variant(map_parallel=1, interleave_cycle=1, prefetch=1)]
    first = {v.key: 1.0 for v in candidates} | {candidates[3].key: 0.9999995}
    second = {v.key: 1.0 for v in candidates} | {candidates[3].key: 0.9999994, candidates[0].key: 1.01}
    assert predict.by_gain(candidates, first, AUTOTUNE) == predict.by_gain(candidates, second, AUTOTUNE)
    assert predict.by_gain(candidates, second | {candidates[1].key: 1.06}, AUTOTUNE)[0] == candidates[1]
    # No usable prediction (a rate of 0, or NaN) comes after every real one, 0.5 included.
    broken = second | {candidates[0].key: 0.0, candidates[2].key: float("nan"), candidates[1].key: 0.5}
    assert predict.by_gain(candidates, broken, AUTOTUNE)[:2] == [candidates[3], candidates[1]]


def test_a_trained_consumer_takes_each_lever_the_diagnosis_timed_and_orders_by_them() -> None:
    """Consumer-bound in train mode: the levers timed alone scale the consumer's rate; a value
    the diagnosis did not try (batch 96) is neutral; gains combine; the order follows."""
    from pipetune.diagnose.measurements import ConsumerLever

    training = ConsumerMeasurement("train", 64, 0.064, measured=True, levers=(  # 1,000/s
        ConsumerLever("steps_per_execution", 8, 64, 0.032),  # x2
        ConsumerLever("jit_compile", True, 64, 0.128),  # x0.5
        ConsumerLever("batch_size", 128, 128, 0.096)))  # 1,333/s: x1.33
    cheap = document([stage("read", "read", 0.01, 0.01, 0.01, 3000, parallelism=8),
                      stage("parse", "parse", 0.02, 0.02, 0.015, 3000)], training)
    base = AUTOTUNE.model_copy(update={"batch_size": 64})
    assert rate(base, cheap) == pytest.approx(1000, rel=1e-3)
    assert rate(base.model_copy(update={"steps_per_execution": 8}), cheap) == pytest.approx(2000, rel=1e-3)
    assert rate(base.model_copy(update={"batch_size": 96}), cheap) == pytest.approx(1000, rel=1e-3)
    both = base.model_copy(update={"steps_per_execution": 8, "batch_size": 128})
    assert rate(both, cheap) == pytest.approx(2000 * 4 / 3, rel=1e-3)
    candidates = [Variant(base.model_copy(update=c)) for c in
                  ({"jit_compile": True}, {"steps_per_execution": 8}, {"batch_size": 128},
                   {"steps_per_execution": 8, "batch_size": 128})]
    order = predict.best_first(candidates, cheap, "time_to_train", 1, base)
    assert [v.params.model_dump(include={"jit_compile", "steps_per_execution", "batch_size"}) for v in order] == [
        {"batch_size": 128, "jit_compile": False, "steps_per_execution": 8},
        {"batch_size": 64, "jit_compile": False, "steps_per_execution": 8},
        {"batch_size": 128, "jit_compile": False, "steps_per_execution": 1},
        {"batch_size": 64, "jit_compile": True, "steps_per_execution": 1}]


def test_a_trained_model_and_the_pipeline_share_the_cores() -> None:
    """The model alone takes 1,000/s on both cores (2 ms CPU per example); the pipeline 0.51 ms
    per example: together 2 cores pay for 2 / 2.51 ms = 797/s, not the ~1,000/s either alone
    allows. A lever that halves the model's CPU (and runs 1.5x faster) is billed at its own CPU."""
    from pipetune.diagnose.measurements import ConsumerLever

    stages = [stage("read", "read", 0.01, 0.01, 0.01, 3000, parallelism=8),
              stage("parse", "parse", 0.51, 0.51, 0.26, 3000)]
    base = AUTOTUNE.model_copy(update={"batch_size": 64})
    unbilled = document(stages, ConsumerMeasurement("train", 64, 0.064, measured=True))
    assert rate(base, unbilled) > 990  # the buffer hides most of a pipeline 4x faster
    bf16 = ConsumerLever("precision", "mixed_bfloat16", 64, 0.064 / 1.5, cpu_s=0.064)
    billed = document(stages, ConsumerMeasurement("train", 64, 0.064, measured=True, levers=(bf16,), cpu_s=0.128))
    assert rate(base, billed) == pytest.approx(2 / (0.00051 + 0.002), rel=1e-3)
    assert rate(base.model_copy(update={"precision": "mixed_bfloat16"}), billed) == pytest.approx(
        2 / (0.00051 + 0.001), rel=1e-3)
    # A simulated step sleeps: nothing to bill, whatever the document says.
    simulated = document(stages, ConsumerMeasurement("simulate", 64, 0.064, measured=False, cpu_s=0.128))
    assert rate(base, simulated) == pytest.approx(rate(base, unbilled), rel=1e-6)
