"""The Plan renders one module; measurement builds the dataset by running that source."""

from __future__ import annotations

import ast
import collections
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_spec
from pipetune import sources
from pipetune.plan import DataLayout, Plan, Stage, check_cache_before_random, one_line
from pipetune.space import SpaceFacts, enumerate_space, first_problem, reference_variants
from pipetune.device import Device
from pipetune.spec import FeatureSpec, PipelineParams

CPU = Device(cpu_model="test", cpu_cores=2, cpu_bf16=False)
SCHEMA = {"image": FeatureSpec(type="bytes"), "label": FeatureSpec(type="int64")}
ALLOWED_IMPORTS = {"__future__", "keras", "tensorflow", "time"}


def _layout(pattern: str = "/data/shard-*.tfrecord", compression: str = "none") -> DataLayout:
    return DataLayout(pattern, compression, SCHEMA)


params_strategy = st.builds(
    PipelineParams,
    shards=st.integers(1, 16),
    compression=st.sampled_from(["none", "gzip", "zlib"]),
    interleave_cycle=st.one_of(st.integers(1, 8), st.just("autotune")),
    interleave_block=st.integers(1, 4),
    interleave_parallel=st.booleans(),
    map_parallel=st.one_of(st.integers(1, 8), st.just("autotune")),
    cache=st.sampled_from(["none", "memory", "disk"]),
    shuffle_buffer=st.integers(0, 4096),
    batch_size=st.integers(1, 256),
    drop_remainder=st.booleans(),
    prefetch=st.one_of(st.integers(0, 8), st.just("autotune")),
    precision=st.sampled_from(["float32", "mixed_bfloat16", "mixed_float16"]),
    deterministic=st.booleans(),
    private_threadpool_size=st.integers(0, 16),
    map_and_batch_fusion=st.booleans(),
)

op_strategy = st.sampled_from([
    {"decode_image": {"key": "image"}},
    {"resize": {"key": "image", "size": [8, 8]}},
    {"random_flip": {"key": "image", "mode": "both"}},
    {"random_crop": {"key": "image", "size": [4, 4]}},
    {"color_jitter": {"key": "image"}},
    {"normalize": {"key": "image", "mean": 0.5, "std": 2.0}},
    {"cast": {"key": "label", "dtype": "int32"}},
    {"one_hot": {"key": "label", "depth": 3}},
    {"sleep": {"ms": 0.5}},
])


@settings(max_examples=60, deadline=None)
@given(params=params_strategy, ops=st.lists(op_strategy, max_size=6))
def test_every_rendered_plan_parses_and_imports_only_what_it_should(tmp_path_factory, params, ops):
    spec = make_spec(tmp_path_factory.getbasetemp(), preprocess=ops)
    source = Plan.from_variant(spec, params, _layout()).render()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= ALLOWED_IMPORTS


@settings(max_examples=40, deadline=None)
@given(shards=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
       cycles=st.lists(st.one_of(st.integers(1, 4), st.just("autotune")), min_size=1, max_size=3,
                       unique=True),
       precisions=st.lists(st.sampled_from(["float32", "mixed_bfloat16", "mixed_float16"]),
                           min_size=1, max_size=3, unique=True),
       cache=st.lists(st.sampled_from(["none", "memory", "disk"]), min_size=1, max_size=3, unique=True))
def test_every_variant_the_space_produces_passes_the_rules(tmp_path_factory, shards, cycles,
                                                            precisions, cache):
    space = {"shards": shards, "interleave_cycle": cycles, "precision": precisions, "cache": cache}
    spec = make_spec(tmp_path_factory.getbasetemp(), search={"space": space})
    facts = SpaceFacts(CPU, cache_bytes_estimate=10**6, ram_budget_bytes=10**9)
    valid, dropped = enumerate_space(spec, facts)
    assert all(first_problem(v.params, facts) is None for v in valid)
    assert all(d.reason for d in dropped)
    assert len({v.key for v in valid}) == len(valid)


def test_interleave_over_one_shard_is_dropped(tmp_path):
    spec = make_spec(tmp_path, search={"space": {"shards": [1], "interleave_cycle": [1, 4]}})
    valid, dropped = enumerate_space(spec, SpaceFacts(CPU))
    assert {v.params.interleave_cycle for v in valid} == {1}
    assert "single shard" in dropped[0].reason


def test_precisions_the_device_cannot_run_fast_are_dropped(tmp_path):
    spec = make_spec(tmp_path, search={"space": {"precision": ["float32", "mixed_float16", "mixed_bfloat16"]}})
    _, dropped = enumerate_space(spec, SpaceFacts(CPU))
    reasons = {d.params.precision: d.reason for d in dropped}
    assert "280x" in reasons["mixed_float16"]
    assert "bf16" in reasons["mixed_bfloat16"]
    bf16_cpu = Device(cpu_model="test", cpu_cores=2, cpu_bf16=True)
    _, dropped = enumerate_space(spec, SpaceFacts(bf16_cpu))
    assert {d.params.precision for d in dropped} == {"mixed_float16"}


def test_mixed_float16_runs_on_a_volta_or_newer_gpu(tmp_path):
    """Stands in for a GPU machine: the device facts come from NVML there."""
    from pipetune.device import Gpu

    volta = Device("test", 2, False, gpus=(Gpu("Tesla V100", (7, 0)),))
    kepler = Device("test", 2, False, gpus=(Gpu("Tesla K80", (3, 7)),))
    assert volta.precision_problem("mixed_float16") is None
    assert kepler.precision_problem("mixed_float16") is not None


def test_memory_cache_over_the_ram_budget_is_dropped(tmp_path):
    spec = make_spec(tmp_path, search={"space": {"cache": ["none", "memory", "disk"]}})
    facts = SpaceFacts(CPU, cache_bytes_estimate=3 * 2**30, ram_budget_bytes=2 * 2**30)
    valid, dropped = enumerate_space(spec, facts)
    assert {v.params.cache for v in valid} == {"none", "disk"}
    assert "RAM budget" in dropped[0].reason


def test_a_cache_after_a_random_stage_is_refused():
    stages = [Stage("read", ("ds = ...",)), Stage("augment", ("ds = ...",), random=True),
              Stage("cache", ("ds = ds.cache()",))]
    with pytest.raises(ValueError, match="cache after a random op"):
        check_cache_before_random(stages)


def test_the_plan_places_the_cache_before_the_first_random_op(tmp_path):
    spec = make_spec(tmp_path, preprocess=[{"decode_image": {"key": "image"}},
                                           {"random_flip": {"key": "image"}},
                                           {"normalize": {"key": "image"}}])
    plan = Plan.from_variant(spec, PipelineParams(cache="memory", shuffle_buffer=8), _layout())
    names = [s.name for s in plan.stages]
    assert names.index("cache") < names.index("shuffle") < names.index("augment")
    assert "random_flip" not in next(d for d in plan.definitions if d.startswith("def prepare"))


def test_reference_variants_are_naive_and_autotune_default(tmp_path):
    spec = make_spec(tmp_path, search={"space": {"shards": [8], "batch_size": [64]}},
                     baseline={"shards": 8, "batch_size": 32, "map_parallel": 4})
    naive, autotune, baseline = reference_variants(spec, CPU)
    assert (naive.params.map_parallel, naive.params.prefetch, naive.params.interleave_cycle) == (1, 0, 1)
    assert (autotune.params.map_parallel, autotune.params.prefetch,
            autotune.params.interleave_cycle) == ("autotune", "autotune", "autotune")
    assert naive.params.cache == autotune.params.cache == "none"
    assert baseline.params.batch_size == 32 and baseline.role.value == "baseline"


HOSTILE = ['"); import os; os.system("echo pwned")  #', "line\nbreak\r\u2028x", "'''\"\"\"", "ünï©ødé ✓"]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_stay_data(tmp_path, text):
    plan = Plan.from_variant(make_spec(tmp_path), PipelineParams(), _layout(pattern=f"/d/{text}/*"))
    source = plan.render(header=f"# {one_line(text)}", comments={"read": text, "batch": text})
    tree = ast.parse(source)
    constants = {node.targets[0].id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    assert constants["FILE_PATTERN"] == f"/d/{text}/*"
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not any("system" in name or name == "exec" for name in calls)
    assert all(isinstance(node, (ast.ImportFrom, ast.Import, ast.Assign, ast.FunctionDef, ast.Expr))
               for node in tree.body)


def _body(plan: Plan) -> list[str]:
    return [line.strip() for line in plan.render().split("def make_dataset")[1].splitlines()]


def test_the_shuffle_holds_serialized_records_when_nothing_is_cached(tmp_path):
    """Was: the buffer sat after decode and resize, holding float32 images."""
    body = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(shuffle_buffer=64), _layout()))
    assert body.index("ds = ds.shuffle(64, seed=SHUFFLE_SEED)") < body.index(
        "ds = ds.map(prepare, num_parallel_calls=1, deterministic=True)")


def test_the_shuffle_follows_a_cache_so_every_epoch_is_reshuffled(tmp_path):
    body = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(shuffle_buffer=64, cache="memory"),
                                   _layout()))
    assert body.index("ds = ds.cache()") < body.index("ds = ds.shuffle(64, seed=SHUFFLE_SEED)")


def test_files_are_reshuffled_each_epoch_only_when_the_data_is_shuffled(tmp_path):
    """Was: files listed with shuffle=False and never shuffled between epochs."""
    shuffled = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(shuffle_buffer=8), _layout()))
    plain = _body(Plan.from_variant(make_spec(tmp_path), PipelineParams(), _layout()))
    line = "files = files.shuffle(files.cardinality(), seed=SHUFFLE_SEED)"
    assert line in shuffled and line not in plain


def test_shuffled_epochs_keep_the_examples_and_change_their_order(tf, tmp_path):
    """Shuffling is training semantics: each epoch holds naive's multiset, in a new order each
    epoch, and the seeded order is the same run after run."""
    spec = make_spec(tmp_path)
    params = PipelineParams(shards=4, interleave_cycle=2, shuffle_buffer=16)
    shard_set = sources.prepare_shards(spec, 4, "none", tmp_path / "shards")
    layout = DataLayout(_pattern(shard_set), "none", sources.schema_of(spec))
    runs = []
    for run in range(2):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        dataset = Plan.from_variant(spec, params, layout).load_module(folder).make_dataset(training=True)
        runs.append([_hashes(dataset) for _ in range(2)])
    first, second = runs[0]
    assert collections.Counter(first) == collections.Counter(second) and len(first) == 48
    assert first != second  # reshuffled between epochs
    assert runs[0] == runs[1]  # seeded: reproducible


def _hashes(dataset) -> list[tuple[str, int]]:
    return [(hashlib.sha1(image.tobytes()).hexdigest(), int(label))
            for images, labels in dataset.as_numpy_iterator() for image, label in zip(images, labels)]


# --------------------------------------------------------------------------- data integrity


def _elements(tf, plan: Plan, folder) -> list[tuple[str, int]]:
    folder.mkdir()
    dataset = plan.load_module(folder).make_dataset(training=True, cache_path=str(folder / "cache"))
    out = []
    for images, labels in dataset.as_numpy_iterator():
        for image, label in zip(images, labels):
            out.append((hashlib.sha1(image.tobytes()).hexdigest(), int(label)))
    return out


INTEGRITY_VARIANTS = [
    PipelineParams(shards=1),
    # Same read layout as the next one, differing only in how it runs: same order expected.
    PipelineParams(shards=4, interleave_cycle=2, map_parallel=1, prefetch=0),
    PipelineParams(shards=4, interleave_cycle=2, map_parallel="autotune", prefetch="autotune"),
    PipelineParams(shards=4, interleave_cycle="autotune", interleave_block=3, map_parallel=3,
                   cache="memory", prefetch=2, private_threadpool_size=2),
    PipelineParams(shards=3, cache="disk", batch_size=5, map_parallel="autotune"),
    PipelineParams(shards=5, compression="gzip", interleave_cycle=5, batch_size=7,
                   map_and_batch_fusion=False, deterministic=False, map_parallel=4),
]


def test_tuning_never_changes_the_data(tf, tmp_path):
    """No random ops, no shuffle: every variant yields naive's multiset of examples. With
    ``deterministic: true`` the order is fixed by the read layout (shards, interleave): variants
    that differ only in parallelism, cache, prefetch or options yield the very same sequence."""
    spec = make_spec(tmp_path)
    schema = sources.schema_of(spec)
    epochs = {}
    for index, params in enumerate(INTEGRITY_VARIANTS):
        shard_set = sources.prepare_shards(spec, params.shards, params.compression, tmp_path / "shards")
        layout = DataLayout(_pattern(shard_set), params.compression, schema)
        epochs[index] = _elements(tf, Plan.from_variant(spec, params, layout), tmp_path / f"v{index}")
    naive = epochs[0]
    assert len(naive) == 48 and len(set(naive)) > 40  # distinct images, so order is meaningful
    for index, elements in epochs.items():
        assert collections.Counter(elements) == collections.Counter(naive), INTEGRITY_VARIANTS[index]
    assert epochs[1] == epochs[2]  # parallel map + prefetch: same order as sequential


def _pattern(shard_set) -> str:
    from pathlib import Path

    first = Path(shard_set.files[0])
    return str(first.parent / ("*" + "".join(first.suffixes)))
