"""The automatic space: what each diagnosis puts in it (pure, on synthetic diagnoses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_spec
from pipetune.autospace import auto_space
from pipetune.device import Device
from pipetune.diagnose.measurements import ConsumerLever, ConsumerMeasurement, PassTiming, StageMeasurement
from pipetune.diagnose.verdict import analyse
from test_diagnose import SIMULATED_1MS, measurements, stage

CPU = Device("Test CPU", 2, cpu_bf16=True)
GIB = 2**30


def spec(tmp: Path, **search):
    return make_spec(tmp, search={"space": {"auto": True, **search}})


def test_blocking_reads_get_concurrency_beyond_the_cores_sized_by_littles_law(tmp_path):
    consumer = ConsumerMeasurement("simulate", 64, 0.1, measured=False)  # 640/s
    diagnosis = analyse(measurements([
        stage("read", "read", 20.0, 0.05, 2.5, 3000, parallelism=8),
        stage("parse", "parse", 20.05, 0.08, 2.5, 3000),
    ], consumer))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    # 640/s x 20 ms = 12.8 -> 13 records in flight on average; twice that as headroom:
    # 26 files at once over 26 shards.
    assert chosen.space.shards == [26]
    assert chosen.space.interleave_cycle == ["autotune", 26]
    assert chosen.space.private_threadpool_size == [0, 26]
    assert chosen.space.deterministic == [True, False]
    # The data fits the RAM budget and 30 epochs are planned: a cache waits for nothing from
    # the second epoch on. A data set declared too big to cache lists `cache: [none]`.
    assert chosen.space.cache == ["none", "memory"]
    assert auto_space(spec(tmp_path, cache=["none"]), diagnosis, CPU).space.cache == ["none"]
    assert any("Little's law" in reason for reason in chosen.reasons)


def test_a_waiting_op_gets_map_calls_and_a_private_pool(tmp_path):
    consumer = ConsumerMeasurement("simulate", 64, 0.1, measured=False)
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("parse", "parse", 0.06, 0.06, 0.05, 3000),
        stage("sleep(4 ms)", "op", 4.06, 0.07, 2.1, 3000),
    ], consumer))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    assert diagnosis.bottleneck.kind == "blocking_io"
    # 640/s x 4 ms = 2.56 -> 3 on average, twice that as headroom; AUTOTUNE fills the pool.
    assert chosen.space.private_threadpool_size == [0, 6]
    assert chosen.space.map_parallel == ["autotune"]


def test_a_costly_deterministic_op_gets_a_cache_that_fits_and_parallel_map(tmp_path):
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 2.0, 2.0, 1.1, 30_000),
        stage("random_flip(image)", "op", 2.05, 2.05, 1.15, 30_000, random=True),
    ], SIMULATED_1MS))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    assert diagnosis.bottleneck.kind == "compute"
    assert chosen.space.cache == ["none", "memory"]
    assert chosen.space.prefetch == ["autotune", 0]
    assert chosen.space.map_parallel == ["autotune", 2]
    # One reader takes 33,333 records/s, over twice the ~1,000/s the ops allow: one file at a
    # time, the cores left to the ops.
    assert chosen.space.interleave_cycle == [1]
    assert any("one file read at a time" in reason for reason in chosen.reasons)
    # One epoch planned: a cache would be filled and never read, so it is not tried.
    one_epoch = make_spec(tmp_path, search={"space": {"auto": True}},
                          measure={"warmup_steps": 1, "steps": 3, "repeats": 2, "epochs_planned": 1})
    chosen = auto_space(one_epoch, diagnosis, CPU)
    assert chosen.space.cache == ["none"] and any("1 epoch planned" in r for r in chosen.reasons)
    assert chosen.space.prefetch == ["autotune"]


def test_a_read_that_barely_keeps_up_stays_parallel(tmp_path):
    """The other side of one reader: at 1.5 ms per record one reader takes 667/s, under twice
    the rate the computing stages allow (the read among them), so AUTOTUNE's readers stay."""
    ops = [stage("decode_image(image)", "op", 2.0, 2.0, 1.1, 30_000),
           stage("random_flip(image)", "op", 2.05, 2.05, 1.15, 30_000, random=True)]
    slow = [stage("read", "read", 1.5, 1.5, 1.5, 3000, parallelism=8),
            *(stage(s.name, s.kind, s.sequential.wall_s + 1.5, s.sequential.cpu_s + 1.5,
                    s.parallel.wall_s + 1.5, s.element_bytes, s.random) for s in ops)]
    diagnosis = analyse(measurements(slow, SIMULATED_1MS))
    assert diagnosis.bottleneck.kind == "compute"
    assert auto_space(spec(tmp_path), diagnosis, CPU).space.interleave_cycle == ["autotune"]
    # The same read at 0.03 ms (33,333/s) reads one file at a time, even where reading 8 at
    # once looked 3x faster: the ops cannot take more than ~870/s.
    fast = analyse(measurements([stage("read", "read", 0.03, 0.03, 0.01, 3000, parallelism=8), *ops],
                                SIMULATED_1MS))
    assert auto_space(spec(tmp_path), fast, CPU).space.interleave_cycle == [1]


def test_a_cache_over_the_ram_budget_goes_to_disk(tmp_path):
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 2.0, 2.0, 1.1, 300_000),  # 10,000 x 300 kB = 3 GB
    ], SIMULATED_1MS, ram_budget_bytes=1 * GIB))
    assert auto_space(spec(tmp_path), diagnosis, CPU).space.cache == ["none", "disk"]


def test_consumer_bound_searches_no_pipeline_grid(tmp_path):
    slow = ConsumerMeasurement("simulate", 64, 0.2, measured=False)
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 0.2, 0.2, 0.12, 30_000),
    ], slow))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    assert chosen.consumer_bound
    space = chosen.space.dimensions()
    assert all(len(values) == 1 for name, values in space.items()), space
    assert "no pipeline change will pay" in " ".join(chosen.reasons)


def test_consumer_bound_only_at_the_smallest_listed_batch_searches_the_pipeline(tmp_path):
    """320 examples/s at batch 64 is below the pipeline; at a listed batch of 1,024 the same
    simulated step takes 5,120/s, above it: the pipeline's own bottleneck is searched."""
    slow = ConsumerMeasurement("simulate", 64, 0.2, measured=False)
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 0.4, 0.4, 0.22, 30_000),
    ], slow))
    assert diagnosis.bottleneck.kind == "consumer"
    assert auto_space(spec(tmp_path, batch_size=[64, 256]), diagnosis, CPU).consumer_bound  # 1,280/s
    chosen = auto_space(spec(tmp_path, batch_size=[64, 1024]), diagnosis, CPU)
    assert not chosen.consumer_bound
    assert chosen.space.map_parallel == ["autotune", 2]  # compute-bound in decode: up to the cores
    assert chosen.space.batch_size == [64, 1024]
    assert any(r.startswith("at batch 1024 (listed) the consumer takes 5120 examples/s") for r in chosen.reasons)


def test_consumer_bound_in_train_mode_searches_the_consumers_levers(tmp_path):
    training = ConsumerMeasurement("train", 64, 0.2, measured=True,
                                   levers=(ConsumerLever("steps_per_execution", 8, 64, 0.1),))
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 0.2, 0.2, 0.12, 30_000),
    ], training))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    assert chosen.space.precision == ["float32", "mixed_bfloat16"]  # what this CPU runs fast
    assert chosen.space.batch_size == [64, 128]
    assert chosen.space.jit_compile == [False, True]  # from the spec's model.jit_compile (false)
    assert chosen.space.steps_per_execution == [1, 8]
    assert "each alone on one batch in memory: 8 training steps per call (steps_per_execution) x2.00" in chosen.reasons
    assert chosen.space.map_parallel == ["autotune"]


def test_the_dimensions_a_user_lists_are_kept(tmp_path):
    """E.g. a data set declared too big to cache: the auto space must not try one."""
    diagnosis = analyse(measurements([
        stage("read", "read", 0.03, 0.03, 0.03, 3000, parallelism=8),
        stage("decode_image(image)", "op", 2.0, 2.0, 1.1, 30_000),
    ], SIMULATED_1MS))
    chosen = auto_space(spec(tmp_path, cache=["none"]), diagnosis, CPU)
    assert chosen.space.cache == ["none"]
    assert chosen.space.map_parallel == ["autotune", 2]


SLOW_CONSUMER_SPEC = """name: auto-consumer
source: {kind: synthetic_images, num_examples: 128, image_size: [16, 16], num_classes: 3, seed: 0}
preprocess: [{decode_image: {key: image}}, {normalize: {key: image}}]
inputs: {features: image, label: label}
model: {step_time_ms: 200}
measure: {warmup_steps: 1, steps: 3, repeats: 2, timeout_s: 60}
search: {budget_s: 120}
"""


@pytest.mark.slow
def test_a_sweep_without_a_space_diagnoses_first_and_says_consumer_bound(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "data.yaml"
    path.write_text(SLOW_CONSUMER_SPEC, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pipetune", "sweep", str(path), "--out",
                           str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["diagnosis"]["bottleneck"]["kind"] == "consumer"
    assert {row["role"] for row in document["trials"]} <= {"naive", "autotune-default"}
    assert "Diagnosis" in done.stderr and "no pipeline change will pay" in done.stderr
    assert (tmp_path / "out" / "sweep_diagnosis.json").is_file()


def test_ops_that_act_per_batch_get_a_vectorised_map(tmp_path):
    """Tiny elements (parse + cheap maths): batch first, then map, is tried."""
    diagnosis = analyse(measurements([
        stage("read", "read", 0.01, 0.01, 0.01, 40, parallelism=8),
        stage("parse", "parse", 0.05, 0.05, 0.03, 40),
    ], SIMULATED_1MS))
    tabular = make_spec(tmp_path, preprocess=[], search={"space": {"auto": True}})
    assert auto_space(tabular, diagnosis, CPU).space.vectorized_map == [False, True]
    images = spec(tmp_path)  # decode_image acts per element
    assert auto_space(images, diagnosis, CPU).space.vectorized_map == [False]


def test_a_wait_is_sized_at_the_consumers_rate_and_at_the_cpu_estimate(tmp_path):
    # Workload 8's shape: 4.9 ms waits; the consumer takes 6,400/s, the CPU estimate (2 cores
    # over 0.8 ms per element) says 2,500/s. Both sizes are raced, with 2x headroom each:
    # 6400 x 4.87 ms = 31.2 -> 32 -> 64, and 2500 x 4.87 ms = 12.2 -> 13 -> 26.
    consumer = ConsumerMeasurement("simulate", 32, 0.005, measured=False)
    waiting = StageMeasurement("sleep(4 ms)", "op", False, PassTiming(1000, 4.9, 1.5, 1),
                               PassTiming(1000, 2.45, 0.8, 2), 800)
    diagnosis = analyse(measurements([stage("read", "read", 0.03, 0.03, 0.03, 800, parallelism=8),
                                      waiting], consumer))
    chosen = auto_space(spec(tmp_path), diagnosis, CPU)
    assert chosen.space.private_threadpool_size == [0, 26, 64]
    assert chosen.space.map_parallel == ["autotune"]
    assert any("a private pool of 26 or 64 threads" in reason for reason in chosen.reasons)
