"""The levers of issue 13: parallel_reads, the snapshot cache, vectorized_map,
prefetch_to_device, jit_compile and steps_per_execution. Each renders, builds, keeps the data, obeys its rules,
and carries its evidence into best_pipeline.py."""

from __future__ import annotations

import re

import ast
import collections
import datetime
import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import make_spec
from pipetune import sources
from pipetune.device import Device, Gpu
from pipetune.emit import render_best
from pipetune.outcome import SweepOutcome
from pipetune.plan import DataLayout, Plan
from pipetune.ranking import rank
from pipetune.results import Role
from pipetune.space import SpaceFacts, canonical, enumerate_space, reference_variants, variant_key
from pipetune.spec import PipelineParams, Spec, dump_spec
from test_emit import _trial

CPU = Device(cpu_model="test", cpu_cores=2, cpu_bf16=False)
GPU = Device("test", 2, False, gpus=(Gpu("H200", (9, 0)),))
NUMERIC_OPS = [{"normalize": {"key": "x", "mean": 0.5, "std": 2.0}}, {"cast": {"key": "y", "dtype": "int32"}},
               {"one_hot": {"key": "y", "depth": 3}}]


def numeric_spec(base: Path, **overrides: object) -> Spec:
    """40 examples of a float32 (3,) feature and a class label, from an npz file."""
    rng = np.random.default_rng(0)
    np.savez(base / "d.npz", x=rng.normal(size=(40, 3)).astype(np.float32), y=rng.integers(0, 3, 40))
    fields = {"source": {"kind": "npz", "path": "d.npz", "label": "y"}, "preprocess": NUMERIC_OPS,
              "inputs": {"features": "x", "label": "y"}, "model": {"step_time_ms": 1}}
    return make_spec(base, **{**fields, **overrides})


def _layout(spec: Spec, params: PipelineParams, folder: Path) -> DataLayout:
    shard_set = sources.prepare_shards(spec, params.shards, params.compression, folder / "shards")
    return DataLayout.of(shard_set.files, params.compression, sources.schema_of(spec))


def _dataset(spec: Spec, params: PipelineParams, folder: Path, name: str):
    (folder / name).mkdir()
    plan = Plan.from_variant(spec, params, _layout(spec, params, folder))
    return plan.load_module(folder / name).make_dataset(training=True, cache_path=str(folder / name / "cache"))


def _epochs(dataset, batches_per_epoch: int, epochs: int) -> tuple[list[list[tuple]], list[int]]:
    """Examples per epoch (hash of the features, label bytes) and every batch's size, read as a
    trial does: from ``dataset.repeat()``."""
    examples, sizes = [], []
    for features, labels in dataset.repeat().take(batches_per_epoch * epochs).as_numpy_iterator():
        sizes.append(len(labels))
        examples += [(hashlib.sha1(x.tobytes()).hexdigest(), hashlib.sha1(y.tobytes()).hexdigest())
                     for x, y in zip(features, labels)]
    ends = np.cumsum([sum(sizes[i * batches_per_epoch:(i + 1) * batches_per_epoch]) for i in range(epochs)])
    return [examples[a:b] for a, b in zip([0, *ends[:-1]], ends)], sizes


def _body(plan: Plan) -> list[str]:
    return [line.strip() for line in plan.render().split("def make_dataset")[1].splitlines() if line.strip()]


# --------------------------------------------------------------------------- parallel_reads


def test_parallel_reads_render_as_tfrecord_dataset_argument(tmp_path):
    layout = DataLayout("/d/*.tfrecord", "none", sources.schema_of(make_spec(tmp_path)))
    body = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(shards=4, parallel_reads=3), layout))
    assert "ds = tf.data.TFRecordDataset(files, compression_type=COMPRESSION, num_parallel_reads=3)" in body
    sequential = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(shards=4), layout))
    assert "ds = tf.data.TFRecordDataset(files, compression_type=COMPRESSION)" in sequential


def test_parallel_reads_mean_nothing_under_an_interleave_or_over_one_shard(tmp_path):
    interleaved = PipelineParams(shards=4, interleave_cycle=2)
    assert variant_key(interleaved) == variant_key(interleaved.model_copy(update={"parallel_reads": 4}))
    assert canonical(interleaved.model_copy(update={"parallel_reads": 4})).parallel_reads == 1
    assert canonical(PipelineParams(shards=4, parallel_reads=4)).parallel_reads == 4
    spec = make_spec(tmp_path, search={"space": {"shards": [1], "parallel_reads": [1, 2]}})
    valid, dropped = enumerate_space(spec, SpaceFacts(CPU))
    assert {v.params.parallel_reads for v in valid} == {1}
    assert dropped[0].reason == "parallel reads over a single shard read one file: nothing to read in parallel"


def test_parallel_reads_keep_the_data_and_simulated_storage_keeps_their_order(tf, tmp_path):
    """num_parallel_reads=N reads what interleave(cycle N, block 1) reads, in that order; the
    spelled-out interleave under simulated storage is the same order, even with
    deterministic: false (TF's reader passes sloppy=False for a number)."""
    spec = make_spec(tmp_path)
    slow = make_spec(tmp_path, storage={"read_latency_ms": 0.05})
    naive = _epochs(_dataset(spec, PipelineParams(shards=1), tmp_path, "naive"), 2, 1)[0][0]
    runs = {
        "interleave": (spec, PipelineParams(shards=4, interleave_cycle=3)),
        "reads": (spec, PipelineParams(shards=4, parallel_reads=3)),
        "reads-slow": (slow, PipelineParams(shards=4, parallel_reads=3)),
        "reads-slow-nondet": (slow, PipelineParams(shards=4, parallel_reads=3, deterministic=False)),
        "reads-autotune": (spec, PipelineParams(shards=4, parallel_reads="autotune")),
        "reads-autotune-slow": (slow, PipelineParams(shards=4, parallel_reads="autotune")),
    }
    epochs = {name: _epochs(_dataset(s, p, tmp_path, name), 2, 1)[0][0] for name, (s, p) in runs.items()}
    for name, elements in epochs.items():
        assert collections.Counter(elements) == collections.Counter(naive), name
    assert epochs["reads"] == epochs["interleave"] == epochs["reads-slow"] == epochs["reads-slow-nondet"]
    assert epochs["reads-autotune"] == epochs["reads-autotune-slow"]


# --------------------------------------------------------------------------- snapshot


def test_snapshot_writes_once_and_every_epoch_holds_the_data(tf, tmp_path):
    """The first epoch writes the snapshot, later ones read it (in one process, as a trial
    reads ``dataset.repeat()``); reshuffled after it each epoch."""
    spec = make_spec(tmp_path)
    naive = _epochs(_dataset(spec, PipelineParams(shards=1, batch_size=5), tmp_path, "naive"), 10, 1)[0][0]
    params = PipelineParams(shards=3, cache="snapshot", batch_size=5, shuffle_buffer=16, map_parallel=2)
    assert "ds = ds.snapshot(cache_path)" in _body(Plan.from_variant(spec, params, _layout(spec, params, tmp_path)))
    epochs, sizes = _epochs(_dataset(spec, params, tmp_path, "snap"), 10, 3)
    assert sizes == [5] * 9 + [3] + [5] * 9 + [3] + [5] * 9 + [3]
    for elements in epochs:
        assert collections.Counter(elements) == collections.Counter(naive)
    assert epochs[0] != epochs[1]  # the shuffle after the snapshot reorders every epoch
    assert any((tmp_path / "snap" / "cache").iterdir())


def test_snapshot_runs_its_input_once_for_many_epochs(tf, tmp_path):
    """TF 2.21 fact the snapshot cache rests on: later epochs read, the input runs once."""
    calls = []
    counted = tf.data.Dataset.range(30).map(
        lambda x: tf.py_function(lambda v: calls.append(1) is None and v, [x], tf.int64))
    snapshot = counted.snapshot(str(tmp_path / "snap")).batch(4)
    epochs = [sorted(int(v) for batch in snapshot.as_numpy_iterator() for v in batch) for _ in range(3)]
    assert epochs == [list(range(30))] * 3 and len(calls) == 30


# --------------------------------------------------------------------------- vectorized_map


def test_vectorized_map_batches_first_then_parses_whole_batches(tmp_path):
    spec = numeric_spec(tmp_path)
    params = PipelineParams(shards=2, vectorized_map=True, shuffle_buffer=8)
    plan = Plan.from_variant(spec, params, DataLayout("/d/*.tfrecord", "none", sources.schema_of(spec)))
    body = _body(plan)
    shuffle, batch = body.index("ds = ds.shuffle(8, seed=SHUFFLE_SEED)"), body.index(
        "ds = ds.batch(32, drop_remainder=False)")
    assert shuffle < batch < body.index("ds = ds.map(prepare_batch, num_parallel_calls=1, deterministic=True)")
    assert "    example = tf.io.parse_example(records, FEATURES)" in plan.render()


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_vectorized_map_yields_the_same_batches_as_per_element(tf, tmp_path, drop_remainder):
    """Same records, same shuffle, same batches: per batch or per element, the model sees the
    very same sequence, partial last batch included (or dropped)."""
    spec = numeric_spec(tmp_path)
    base = PipelineParams(shards=2, batch_size=7, shuffle_buffer=16, drop_remainder=drop_remainder)
    per_batch = base.model_copy(update={"vectorized_map": True, "map_parallel": 2})
    batches = 5 if drop_remainder else 6
    element_epochs, element_sizes = _epochs(_dataset(spec, base, tmp_path, "element"), batches, 2)
    batch_epochs, batch_sizes = _epochs(_dataset(spec, per_batch, tmp_path, "batch"), batches, 2)
    assert batch_epochs == element_epochs and batch_sizes == element_sizes
    assert element_sizes == ([7] * 5 if drop_remainder else [7] * 5 + [5]) * 2
    assert element_epochs[0] != element_epochs[1]


def test_vectorized_map_needs_per_batch_ops_and_no_cache(tmp_path):
    numeric = numeric_spec(tmp_path, search={"space": {"vectorized_map": [False, True],
                                                        "cache": ["none", "memory"]}})
    valid, dropped = enumerate_space(numeric, SpaceFacts(CPU))
    assert {(v.params.vectorized_map, v.params.cache) for v in valid} == {
        (False, "none"), (False, "memory"), (True, "none")}
    assert dropped[0].reason.startswith("vectorised map needs cache none, but got memory")
    images = make_spec(tmp_path, search={"space": {"vectorized_map": [False, True], "cache": ["none"]}})
    _, dropped = enumerate_space(images, SpaceFacts(CPU))
    assert dropped[0].reason == "vectorised map needs every op to act per batch, but decode_image(image) does not"
    with pytest.raises(ValueError, match="vectorised map"):
        Plan.from_variant(images, PipelineParams(vectorized_map=True), DataLayout("/d/*", "none", {}))


# --------------------------------------------------------------------------- prefetch_to_device


def test_prefetch_to_device_is_the_last_transformation_and_builds(tf, tmp_path):
    """GPU-only lever: this CPU machine checks the text and that tf.data builds it (no run)."""
    spec = make_spec(tmp_path)
    params = PipelineParams(shards=2, prefetch="autotune", prefetch_to_device=True)
    plan = Plan.from_variant(spec, params, _layout(spec, params, tmp_path))
    ast.parse(plan.render())
    body = _body(plan)
    assert body[-3:] == ["ds = ds.with_options(make_options())",
                         "ds = ds.apply(tf.data.experimental.prefetch_to_device('/gpu:0'))", "return ds"]
    (tmp_path / "gpu").mkdir()
    dataset = plan.load_module(tmp_path / "gpu").make_dataset()
    assert dataset.element_spec[1].dtype == tf.int64
    assert "prefetch_to_device" not in "".join(_body(Plan.from_variant(spec, PipelineParams(), plan.data)))


def test_prefetch_to_device_needs_a_gpu(tmp_path):
    spec = make_spec(tmp_path, search={"space": {"prefetch_to_device": [False, True]}})
    valid, dropped = enumerate_space(spec, SpaceFacts(CPU))
    assert {v.params.prefetch_to_device for v in valid} == {False} and len(valid) == len(dropped)
    assert dropped[0].reason == "prefetch_to_device needs a GPU, and this machine has none"
    valid, dropped = enumerate_space(spec, SpaceFacts(GPU))  # stands in for a GPU machine
    assert {v.params.prefetch_to_device for v in valid} == {False, True} and not dropped
    assert all(not r.params.prefetch_to_device for r in reference_variants(spec, GPU))


# --------------------------------------------------------------------------- jit_compile


def test_model_jit_compile_is_the_dimension_default(tmp_path):
    spec = make_spec(tmp_path, model={"builtin": "mlp", "jit_compile": True}, baseline={"shards": 2})
    assert spec.search.space.jit_compile == [True] and spec.baseline.jit_compile is True
    assert all(r.params.jit_compile for r in reference_variants(spec, CPU))
    searched = make_spec(tmp_path, model={"builtin": "mlp", "jit_compile": True},
                         search={"space": {"jit_compile": [False, True]}})
    assert searched.search.space.jit_compile == [False, True]
    assert make_spec(tmp_path).search.space.jit_compile == [False]
    import yaml

    assert Spec.model_validate({**yaml.safe_load(dump_spec(spec)), "base_dir": str(tmp_path)}) == spec


def test_build_model_compiles_with_the_variants_jit_compile(tf, tmp_path):
    from pipetune.models import build_model

    spec = make_spec(tmp_path, model={"builtin": "mlp", "jit_compile": False})
    assert build_model(spec, (4,), "float32", True).jit_compile is True
    assert build_model(spec, (4,), "float32", False).jit_compile is False


# --------------------------------------------------------------------------- steps_per_execution


def test_steps_per_execution_runs_up_to_n_steps_per_call_and_stamps_each(tf, tmp_path):
    """One call trains on each batch it fetches, once; an epoch's end makes a shorter call;
    every batch comes back with its wait, its step and its examples."""
    from pipetune.burst import multi_step_consumer
    from pipetune.models import build_model

    spec = make_spec(tmp_path, model={"builtin": "mlp"})
    model = build_model(spec, (4,), "float32", False)
    data = tf.data.Dataset.from_tensor_slices((tf.random.uniform((70, 4)), tf.zeros((70,), tf.int64))).batch(8)
    model.train_on_batch = None  # a built model's first batch is traced in the loop, not here
    consume = multi_step_consumer(model)
    iterator = iter(data)  # 9 batches: 8 of 8 examples, 1 of 6
    first = consume(iterator, 1)
    before = [w.numpy().copy() for w in model.trainable_weights]
    calls = [consume(iterator, 4), consume(iterator, 4), consume(iterator, 4)]
    assert [len(records) for records in calls] == [4, 4, 0]
    assert int(model.optimizer.iterations.numpy()) == 9
    records = first + [r for call in calls for r in call]
    assert [examples for _, _, examples in records] == [8] * 8 + [6]
    assert all(wait >= 0 and step > 0 for wait, step, _ in records)
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, model.trainable_weights))


def test_steps_per_execution_builds_an_unbuilt_model_on_its_first_batch(tf):
    """A model without variables yet (no input shape) gets them from its first batch, through
    train_on_batch; the loop then trains it."""
    import keras

    from pipetune.burst import multi_step_consumer

    model = keras.Sequential([keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    assert not model.built
    data = tf.data.Dataset.from_tensor_slices((tf.ones((24, 4)), tf.zeros((24, 3)))).batch(8)
    consume = multi_step_consumer(model)
    iterator = iter(data)
    records = consume(iterator, 1) + consume(iterator, 4)
    assert [examples for _, _, examples in records] == [8, 8, 8]
    assert int(model.optimizer.iterations.numpy()) == 3


def test_steps_per_execution_needs_train_mode(tmp_path):
    space = {"steps_per_execution": [1, 8]}
    simulated = make_spec(tmp_path, search={"space": space}, model={"step_time_ms": 5},
                          measure={"mode": "simulate"})
    valid, dropped = enumerate_space(simulated, SpaceFacts(CPU))
    assert {v.params.steps_per_execution for v in valid} == {1}
    assert dropped[0].reason.startswith("steps_per_execution 8 needs measure.mode train")
    training = make_spec(tmp_path, search={"space": space}, model={"builtin": "mlp"},
                         measure={"mode": "train"})
    valid, dropped = enumerate_space(training, SpaceFacts(CPU))
    assert {v.params.steps_per_execution for v in valid} == {1, 8} and not dropped


# --------------------------------------------------------------------------- evidence


def test_searched_levers_carry_their_evidence_into_best_pipeline(tmp_path):
    """The evidence lands on the line of each lever's stage: parallel reads on the read, the
    vectorised map on the batched map, jit_compile with the options and precision."""
    space = {"parallel_reads": [1, 4], "vectorized_map": [False, True], "jit_compile": [False, True],
             "steps_per_execution": [1, 8], "shards": [4]}
    spec = numeric_spec(tmp_path, search={"space": space}, model={"builtin": "mlp"})
    best = PipelineParams(shards=4, parallel_reads=4, vectorized_map=True, jit_compile=True,
                          steps_per_execution=8)
    trials = [
        _trial(best.model_copy(update={"parallel_reads": 1, "vectorized_map": False, "jit_compile": False,
                                       "steps_per_execution": 1}),
               Role.NAIVE, [40, 41, 42]),
        _trial(best, Role.CANDIDATE, [10, 10.5, 11]),
        _trial(best.model_copy(update={"parallel_reads": 1}), Role.CANDIDATE, [20, 21, 22]),
        _trial(best.model_copy(update={"vectorized_map": False}), Role.CANDIDATE, [15, 16, 17]),
        _trial(best.model_copy(update={"jit_compile": False}), Role.CANDIDATE, [12, 13, 14]),
        _trial(best.model_copy(update={"steps_per_execution": 1}), Role.CANDIDATE, [18, 19, 20]),
    ]
    outcome = SweepOutcome(spec, tmp_path, "grid", "train", trials, [], rank(trials, "time_to_train", epochs=30),
                           CPU, 100.0)
    layout = DataLayout("/d/part-*.tfrecord", "none", sources.schema_of(spec))
    lines = render_best(outcome, today=datetime.date(2026, 1, 2), data=layout).splitlines()
    ast.parse("\n".join(lines))

    def comment_before(code: str) -> str:
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(code))
        start = at
        while lines[start - 1].strip().startswith("#"):
            start -= 1
        return " ".join(line.strip().lstrip("# ") for line in lines[start:at])

    read = comment_before("ds = tf.data.TFRecordDataset(files, compression_type=COMPRESSION, num_parallel_reads=4)")
    assert re.search(r"parallel reads 4: \d\.\d\dx vs one file read at a time \(95% CI", read), read
    batched = comment_before("ds = ds.map(prepare_batch")
    assert re.search(r"parse and ops on whole batches: \d\.\d\dx vs parse and ops per element", batched), batched
    options = comment_before("ds = ds.with_options(make_options())")
    assert re.search(r"model compiled with XLA \(jit_compile\): \d\.\d\dx vs model without XLA", options), options
    assert re.search(r"8 training steps per call \(steps_per_execution\): \d\.\d\dx vs one training step "
                     r"per call", options), options
    assert "#     model.compile(..., jit_compile=True, steps_per_execution=8)  # as measured" in lines
