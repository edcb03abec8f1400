"""``pipetune diagnose``: the verdict on synthetic numbers (exact), then on real stages with
sleep-costed and compute-costed stages of known rates (large effects only)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from conftest import make_spec
from pipetune import predict
from pipetune.cli import main
from pipetune.diagnose import DiagnoseOptions, diagnose
from pipetune.diagnose.measurements import (
    ConsumerMeasurement,
    Measurements,
    PassTiming,
    StageMeasurement,
)
from pipetune.diagnose.verdict import analyse, littles_law_concurrency, outruns
from pipetune.queue_model import delivered_share
from pipetune.spec import PipelineParams, Spec

USERFNS = Path(__file__).resolve().parent / "userfns"
GIB = 2**30
FAST = DiagnoseOptions(seconds_per_pass=0.3, timeout_s=180)


# --------------------------------------------------------------------------- pure arithmetic


def test_littles_law_concurrency_is_exact() -> None:
    assert littles_law_concurrency(400, 0.02) == 8
    assert littles_law_concurrency(401, 0.02) == 9
    assert littles_law_concurrency(1000, 0.0105) == 11
    assert littles_law_concurrency(3, 0.1) == 1
    assert littles_law_concurrency(10, 0.5) == 5
    with pytest.raises(ValueError):
        littles_law_concurrency(math.inf, 0.01)
    with pytest.raises(ValueError):
        littles_law_concurrency(100, 0)


def stage(name: str, kind: str, seq_ms: float, cpu_ms: float, par_ms: float, element_bytes: float,
          random: bool = False, parallelism: int = 2) -> StageMeasurement:
    """A cumulative stage from per-element milliseconds (1000 elements per pass)."""
    return StageMeasurement(name, kind, random, PassTiming(1000, seq_ms, cpu_ms, 1),
                            PassTiming(1000, par_ms, cpu_ms, parallelism), element_bytes)


def measurements(stages: list[StageMeasurement], consumer: ConsumerMeasurement,
                 ram_budget_bytes: int = 8 * GIB) -> Measurements:
    return Measurements("synthetic", cores=2, shards=8, num_examples=10_000, stages=tuple(stages),
                        consumer=consumer, ram_budget_bytes=ram_budget_bytes, shuffle_buffer=1024)


SIMULATED_1MS = ConsumerMeasurement("simulate", 64, 0.001, measured=False)


def test_a_waiting_read_is_blocking_io_sized_by_littles_law() -> None:
    # 20 ms per record and 0.05 ms of CPU; 8 files at once read 8x faster; parse is cheap. The
    # consumer takes 64 examples per 100 ms: 640/s, more than the 400/s the reads give.
    consumer = ConsumerMeasurement("simulate", 64, 0.1, measured=False)
    diagnosis = analyse(measurements([
        stage("read", "read", 20.0, 0.05, 2.5, 3000, parallelism=8),
        stage("parse", "parse", 20.05, 0.08, 2.5, 3000),
    ], consumer))
    assert diagnosis.bottleneck.kind == "blocking_io"
    assert diagnosis.bottleneck.stage == "read"
    read = diagnosis.costs[0]
    assert read.blocking and read.speedup == pytest.approx(8.0)
    # Parse's 0.05 ms at the pipeline's speed-up (x8 seen) capped at the 2 cores: 40,000/s.
    assert diagnosis.compute_rate == pytest.approx(2 / 0.00005, rel=1e-6)
    # The consumer's 640/s is the lowest limit waiting cannot lift: 640 * 0.020 = 12.8 -> 13.
    lever = next(lever for lever in diagnosis.levers if lever.stage == "read")
    assert lever.lever == "13 in flight, beyond the cores"
    assert lever.ceiling == pytest.approx(13 / 0.020)
    assert "13 elements in flight" in diagnosis.bottleneck.sentence
    assert diagnosis.predicted_rate == pytest.approx(640)


def test_a_waiting_stage_is_sized_for_the_consumer_not_the_cpu_estimate() -> None:
    # Workload 8's shape: a 4.9 ms wait per element. The sequential pass bills 1.5 ms of CPU per
    # element (idle threads spinning), the parallel pass 0.8 ms: all cores busy is 2 / 0.8 ms =
    # 2,500/s, the lower pass. The pool is sized for the consumer's 6,400/s all the same: the
    # CPU estimate is a prior, and a pool sized short of the real rate loses throughput.
    consumer = ConsumerMeasurement("simulate", 32, 0.005, measured=False)
    waiting = StageMeasurement("sleep(4 ms)", "op", False, PassTiming(1000, 4.9, 1.5, 1),
                               PassTiming(1000, 2.45, 0.8, 2), 800)
    diagnosis = analyse(measurements([stage("read", "read", 0.03, 0.03, 0.03, 800, parallelism=8),
                                      waiting], consumer))
    assert diagnosis.bottleneck.kind == "blocking_io"
    assert diagnosis.cpu_bound == pytest.approx(2 / 0.0008)
    assert "6400/s needs 32 elements in flight" in diagnosis.bottleneck.sentence  # 6400 x 4.87 ms
    assert diagnosis.predicted_rate == pytest.approx(2 / 0.0008)  # the prediction keeps the CPU roof


def test_a_costly_computing_op_is_named() -> None:
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("parse", "parse", 0.06, 0.06, 0.05, 3000),
        stage("call(heavy:burn)", "op", 10.06, 10.0, 5.1, 3000),
    ], SIMULATED_1MS))
    assert diagnosis.bottleneck.kind == "compute"
    assert diagnosis.bottleneck.stage == "call(heavy:burn)"
    assert "call(heavy:burn)" in diagnosis.bottleneck.sentence
    # 10.06 ms of computing shared on the cores with the x1.97 speed-up of the whole pipeline.
    assert diagnosis.predicted_rate == pytest.approx(1 / 0.01006 * (10.06 / 5.1), rel=1e-6)


def test_a_slow_consumer_is_the_bottleneck() -> None:
    slow = ConsumerMeasurement("simulate", 64, 0.2, measured=False)  # 320 examples/s
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 0.2, 0.2, 0.12, 30_000),
    ], slow))
    assert diagnosis.bottleneck.kind == "consumer"
    assert diagnosis.predicted_rate == pytest.approx(320)


def test_a_pipeline_barely_faster_than_its_consumer_is_still_searched() -> None:
    # The pipeline as measured delivers ~3,570/s. Against 64 examples per 27 ms (2,370/s, x1.5)
    # four batches in flight leave the consumer waiting ~8% of the time: its own bottleneck is
    # named. Against 64 per 40 ms (1,600/s, x2.2) it waits ~2%: the consumer is the bottleneck.
    pipeline = [stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
                stage("decode_image(image)", "op", 0.55, 0.55, 0.28, 30_000)]
    diagnosis = analyse(measurements(pipeline, ConsumerMeasurement("simulate", 64, 0.027, measured=False)))
    assert diagnosis.measured_rate == pytest.approx(1 / 0.00028)
    assert diagnosis.bottleneck.kind == "compute"
    slower = analyse(measurements(pipeline, ConsumerMeasurement("simulate", 64, 0.04, measured=False)))
    assert slower.bottleneck.kind == "consumer"


def test_consumer_bound_means_a_faster_pipeline_gains_under_5_percent_in_the_queue_model() -> None:
    """The verdict's rule and predict.py's ranking read one model of a pipeline running ahead."""
    for ratio in (1.25, 1.5, 1.7, 1.8, 2.0, 3.0):
        gain = 1 / delivered_share(ratio * 1000, 1000)
        assert outruns(ratio * 1000, 1000) == (gain <= 1 / 0.95)
    assert not outruns(1700, 1000) and outruns(1800, 1000)
    assert not outruns(1e9, math.inf)  # input mode: nothing consumes, never consumer-bound


def test_a_waiting_read_that_parallelism_does_not_help_is_bandwidth() -> None:
    diagnosis = analyse(measurements([
        stage("read", "read", 5.0, 0.05, 5.0, 1_000_000, parallelism=8),
        stage("parse", "parse", 5.05, 0.1, 5.0, 1_000_000),
    ], SIMULATED_1MS))
    assert diagnosis.bottleneck.kind == "bandwidth"


def test_memory_of_caches_before_the_first_random_op_and_the_cheapest_shuffle() -> None:
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 0.2, 0.2, 0.12, 300_000),
        stage("random_flip(image)", "op", 0.21, 0.21, 0.13, 300_000, random=True),
        stage("normalize(image)", "op", 0.3, 0.3, 0.2, 1_200_000),
    ], SIMULATED_1MS, ram_budget_bytes=1 * GIB))
    assert [need.position for need in diagnosis.caches] == ["read", "decode_image(image)"]
    assert [need.total_bytes for need in diagnosis.caches] == [3000 * 10_000, 300_000 * 10_000]
    assert [need.fits for need in diagnosis.caches] == [True, False]  # 3 GB > 1 GiB
    assert diagnosis.shuffle.position == "read"
    assert diagnosis.shuffle.total_bytes == 1024 * 3000


def test_a_cache_lever_is_capped_by_reading_the_cache_back() -> None:
    """A decode worth caching, then a cheap random flip: after the cache only the flip runs,
    fed by one iterator reading the cache back, at the rate the diagnosis measured."""
    base = measurements([stage("read", "read", 0.05, 0.05, 0.03, 3000),
                         stage("decode", "op", 2.05, 2.05, 1.03, 150_000),
                         stage("flip", "op", 2.06, 2.06, 1.04, 150_000, random=True)], SIMULATED_1MS)

    def cache_lever(m: Measurements):
        return next(lever for lever in analyse(m).levers if lever.lever == "cache after decode")

    slow_read_back = dataclasses.replace(base, cache_read=PassTiming(1000, 0.5, 0.5, 1))  # 0.5 ms
    assert cache_lever(slow_read_back).ceiling == pytest.approx(2000)
    assert "read back from memory at 2,000/s" in cache_lever(slow_read_back).note
    assert cache_lever(base).ceiling > 10 * 2000  # not measured: the flip alone


# --------------------------------------------------------------------------- real stages


def spec_with(tmp: Path, preprocess: list[dict], model: dict, **extra: object) -> Spec:
    source = {"kind": "synthetic_images", "num_examples": 64, "image_size": [16, 16],
              "num_classes": 3, "seed": 1}
    return make_spec(USERFNS, name="diagnosed", source=source, preprocess=preprocess, model=model,
                     measure={"mode": "simulate"}, **extra)


CHEAP = [{"decode_image": {"key": "image"}}, {"normalize": {"key": "image"}}]


@pytest.mark.slow
def test_storage_latency_is_diagnosed_as_blocking_io(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, CHEAP, {"step_time_ms": 1}, storage={"read_latency_ms": 20})
    diagnosis = diagnose(spec, tmp_path / "out", FAST)
    read = diagnosis.costs[0]
    assert diagnosis.bottleneck.kind == "blocking_io", diagnosis.bottleneck.sentence
    assert diagnosis.bottleneck.stage == "read"
    assert read.blocking and read.wall_s > 0.015  # 20 ms simulated per record
    assert read.speedup > 3  # 8 files read at once
    # Read back from a memory cache, an element waits for no storage.
    assert diagnosis.measurements.cache_read.typical_wall_per_element < read.wall_s / 20
    document = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert document["cache_read"]["wall_s"] < read.wall_s / 20


@pytest.mark.slow
def test_a_heavy_user_op_is_named_as_the_compute_bottleneck(tmp_path: Path) -> None:
    preprocess = [*CHEAP, {"call": {"fn": "heavy:burn", "random": False}}]
    spec = spec_with(tmp_path, preprocess, {"step_time_ms": 1})
    diagnosis = diagnose(spec, tmp_path / "out", FAST)
    assert diagnosis.bottleneck.kind == "compute", diagnosis.bottleneck.sentence
    assert diagnosis.bottleneck.stage == "call(heavy:burn)"
    heavy = diagnosis.costs[-1]
    costs = [(c.name, round(c.wall_s * 1e3, 3), round(c.cpu_s * 1e3, 3)) for c in diagnosis.costs]
    assert not heavy.blocking, costs
    assert heavy.wall_s > 5 * sum(c.wall_s for c in diagnosis.costs[:-1]), costs
    # A cache after the heavy op (nothing is random) leaves only reading it back.
    assert diagnosis.measurements.cache_read.typical_wall_per_element < heavy.wall_s / 5


@pytest.mark.slow
def test_a_trained_consumer_is_timed_with_each_of_its_levers_alone(tmp_path: Path) -> None:
    """Train mode: the plain step, then twice the batch, 8 steps per call and XLA flipped, each
    timed on the batch in memory; they reach the levers table and predict.py's consumer."""
    from pipetune.diagnose.document import diagnosis_document

    spec = spec_with(tmp_path, CHEAP, {"builtin": "mlp"}).model_copy(
        update={"measure": make_spec(tmp_path).measure.model_copy(update={"mode": "train"})})
    diagnosis = diagnose(spec, tmp_path / "out", FAST)
    consumer = diagnosis.measurements.consumer
    assert consumer.mode == "train" and consumer.step_s > 0
    assert consumer.cpu_s > 0  # the model computes on the cores the pipeline needs
    batch = spec.search.space.batch_size[0]
    tried = {(lever.dimension, lever.value): lever for lever in consumer.levers}
    assert {("batch_size", 2 * batch), ("steps_per_execution", 8), ("jit_compile", True)} <= set(tried)
    assert tried[("batch_size", 2 * batch)].batch_size == 2 * batch
    assert all(lever.step_s > 0 and lever.cpu_s > 0 for lever in consumer.levers)
    rows = {row.lever: row for row in diagnosis.levers}
    assert rows["the consumer: 8 training steps per call (steps_per_execution)"].ceiling == pytest.approx(
        tried[("steps_per_execution", 8)].rate)
    stored = diagnosis_document(diagnosis)["consumer"]  # what a sweep's prediction reads
    eight = PipelineParams(batch_size=batch, steps_per_execution=8)
    assert predict._consumer_rate(eight, stored) == pytest.approx(tried[("steps_per_execution", 8)].rate)
    assert predict._consumer_rate(PipelineParams(batch_size=batch), stored) == pytest.approx(consumer.rate)
    assert predict._consumer_cpu(PipelineParams(batch_size=batch), stored) == pytest.approx(consumer.cpu_s / batch)


@pytest.fixture(scope="module")
def consumer_bound(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """A 200 ms step per batch of 64 (320 examples/s) behind a cheap pipeline, through the CLI."""
    root = tmp_path_factory.mktemp("consumer-bound")
    (root / "data.yaml").write_text(json.dumps({
        "name": "slow-consumer",
        "source": {"kind": "synthetic_images", "num_examples": 64, "image_size": [16, 16],
                   "num_classes": 3, "seed": 1},
        "preprocess": CHEAP, "inputs": {"features": "image", "label": "label"},
        "model": {"step_time_ms": 200}, "search": {"space": {"batch_size": [64]}},
    }))
    code = main(["diagnose", str(root / "data.yaml"), "--out", str(root / "out"), "--json"])
    return code, root / "out"


@pytest.mark.slow
def test_a_slow_step_is_diagnosed_as_consumer_bound_through_the_cli(consumer_bound) -> None:
    code, out = consumer_bound
    assert code == 0
    document = json.loads((out / "diagnosis.json").read_text())
    assert document["bottleneck"]["kind"] == "consumer"
    assert document["consumer"]["rate"] == pytest.approx(320)
    assert [s["name"] for s in document["stages"]] == ["read", "parse", "decode_image(image)",
                                                       "normalize(image)"]


@pytest.mark.slow
def test_the_cache_estimate_matches_the_materialised_elements(consumer_bound, tf) -> None:
    from pipetune import sources
    from pipetune.validate import load_spec

    _, out = consumer_bound
    document = json.loads((out / "diagnosis.json").read_text())
    spec = load_spec(out.parent / "data.yaml")
    files = sources.prepare_shards(spec, 8, "none", out / "shards").files
    features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def after_normalize(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        return {"image": tf.cast(image, tf.float32) / 255.0, "label": example["label"]}

    records = list(tf.data.TFRecordDataset(list(files)))
    record_bytes = sum(len(r.numpy()) for r in records)
    normalized = sum(e["image"].numpy().nbytes + e["label"].numpy().nbytes
                     for e in tf.data.TFRecordDataset(list(files)).map(after_normalize))
    estimates = {c["position"]: c["total_bytes"] for c in document["caches"]}
    assert estimates["read"] == pytest.approx(record_bytes, rel=0.15)
    assert estimates["normalize(image)"] == pytest.approx(normalized, rel=0.15)


def test_a_bad_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "data.yaml").write_text("name: x\nsource: {kind: nowhere}\n")
    assert main(["diagnose", str(tmp_path / "data.yaml")]) == 2
