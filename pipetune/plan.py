"""A Plan: the ordered stages of one tf.data pipeline, rendered as one Python module.

The dataset a trial measures is built by executing ``Plan.render()``, and ``best_pipeline.py``
is the same text with comments, so what is measured and what is emitted cannot drift apart.
Values reach the source only through ``repr()`` of validated values.
"""

from __future__ import annotations

import importlib.util
import textwrap
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipetune.dimensions import TF_COMPRESSION
from pipetune.render_ops import WAIT_HELPER, render_op
from pipetune.spec import Call, FeatureSpec, PipelineParams, Sleep, Spec

_TF_TYPES = {"bytes": "tf.string", "int64": "tf.int64", "float32": "tf.float32"}
_AUTOTUNE = "tf.data.AUTOTUNE"


@dataclass(frozen=True, slots=True)
class DataLayout:
    """Where the TFRecord shards are and what their records hold."""

    file_pattern: str
    compression: str  # none | gzip | zlib
    schema: Mapping[str, FeatureSpec]
    mean_record_bytes: float | None = None  # serialized size of one record, when known

    @classmethod
    def of(cls, files: Sequence[str], compression: str, schema: Mapping[str, FeatureSpec],
           mean_record_bytes: float | None = None) -> DataLayout:
        """The layout of a shard set's ``files`` (all in one folder, one suffix)."""
        first = Path(files[0])
        return cls(str(first.parent / f"*{''.join(first.suffixes)}"), compression, schema,
                   mean_record_bytes)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of ``make_dataset``: its name, whether it draws random numbers, its source."""

    name: str
    lines: tuple[str, ...]
    random: bool = False
    training_only: bool = False


@dataclass(frozen=True)
class Plan:
    spec_name: str
    params: PipelineParams
    data: DataLayout
    stages: tuple[Stage, ...]
    definitions: tuple[str, ...] = field(default=())  # module-level source blocks
    imports: tuple[str, ...] = field(default=())

    @classmethod
    def from_variant(cls, spec: Spec, params: PipelineParams, data: DataLayout) -> Plan:
        """Order the stages: list files (shuffled each epoch when shuffling), read, shuffle,
        prepare (parse + deterministic ops), cache, augment (from the first random op on),
        model inputs, batch, prefetch, options, prefetch to the GPU.

        The element shuffle sits where its buffer is cheapest without changing what the model
        sees: on serialized records before parsing when nothing is cached (``prepare`` is
        deterministic per element), else right after the cache so every epoch is reshuffled.
        A vectorised map batches the shuffled records first, then prepares whole batches.
        """
        ops = spec.ops
        first_random = next((i for i, op in enumerate(ops) if op.is_random), len(ops))
        aliases = {i: f"user_fn_{i}" for i, op in enumerate(ops) if isinstance(op, Call)}
        stages = _read_stages(params, spec.storage.read_latency_ms)
        stages += _vectorized_stages(params, ops) if params.vectorized_map else _element_stages(
            params, has_random=first_random < len(ops))
        stages += [Stage("options", ("ds = ds.with_options(make_options())",)), _to_device_stage(params)]
        if params.vectorized_map:  # every op acts per batch (checked above): all of them, on batches
            prepare = _function("prepare_batch", "records", ops, aliases, start=0,
                                first_line="example = tf.io.parse_example(records, FEATURES)")
        else:
            prepare = _function("prepare", "record", ops[:first_random], aliases, start=0,
                                first_line="example = tf.io.parse_single_example(record, FEATURES)")
        definitions = [
            _constants(spec, params, data),
            prepare,
            _to_inputs(spec),
            _options_function(params),
            _precision_function(),
        ]
        if first_random < len(ops):
            definitions.insert(2, _function("augment", "example, training=True", ops[first_random:],
                                            aliases, start=first_random))
        if any(isinstance(op, Sleep) for op in ops) or spec.storage.read_latency_ms:
            definitions.insert(1, WAIT_HELPER.strip("\n"))
        imports = tuple(_user_import(ops[i], alias) for i, alias in aliases.items())
        plan = cls(spec.name, params, data, tuple(stages), tuple(definitions), imports)
        check_cache_before_random(plan.stages)
        return plan

    @property
    def uses_sleep(self) -> bool:
        return any("wait_then_pass" in block for block in self.definitions)

    def render(self, header: str = "", comments: Mapping[str, str] | None = None) -> str:
        """The module's source. ``comments`` maps a stage name to a one-line comment."""
        comments = comments or {}
        stdlib = ["import time"] if self.uses_sleep else []
        head = [header.rstrip("\n")] if header else []
        top = head + ["from __future__ import annotations", "", *stdlib, *(["" ] if stdlib else []),
                      "import keras", "import tensorflow as tf", *self.imports]
        body = [_make_dataset_signature()]
        in_training_block = False
        for stage in self.stages:
            indent = "        " if stage.training_only else "    "
            if stage.training_only and not in_training_block:
                body.append("    if training:")
            in_training_block = stage.training_only
            if stage.name in comments:
                body += comment_lines(comments[stage.name], indent)
            body += [indent + line for line in stage.lines]
        body.append("    return ds")
        blocks = ["\n".join(top), *self.definitions, "\n".join(body)]
        return "\n\n\n".join(blocks) + "\n"

    def load_module(self, folder: Path) -> types.ModuleType:
        """Write the rendered module to ``folder`` and import it (``make_dataset`` etc.).

        A real file, not ``exec``: AutoGraph reads a function's source, as it will for the
        user's ``best_pipeline.py``.
        """
        path = Path(folder) / "measured_pipeline.py"
        path.write_text(self.render(), encoding="utf-8")
        loader_spec = importlib.util.spec_from_file_location(f"pipetune_plan_{id(self)}", path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        return module


def one_line(text: str) -> str:
    """Text safe inside a ``#`` comment: every kind of line break becomes a space."""
    return " ".join(str(text).splitlines())


def comment_lines(text: str, indent: str, width: int = 99) -> list[str]:
    """``text`` as ``#`` comment lines wrapped to ``width``; nothing in it can end the comment."""
    wrapped = textwrap.wrap(one_line(text), width=width - len(indent) - 2) or [""]
    return [f"{indent}# {line}" for line in wrapped]


def _call(target: str, arguments: Sequence[str], indent: str = "    ", width: int = 99) -> tuple[str, ...]:
    """``target(arg, ...)`` on one line if it fits, else one argument per line."""
    single = f"{target}({', '.join(arguments)})"
    if len(indent) + len(single) <= width:
        return (single,)
    return (f"{target}(", *(f"    {argument}," for argument in arguments), ")")


def check_cache_before_random(stages: Sequence[Stage]) -> None:
    """Guard for the validity rule: a cache after a random stage would freeze its randomness."""
    seen_random = False
    for stage in stages:
        if stage.random:
            seen_random = True
        if stage.name == "cache" and seen_random:
            raise ValueError("a cache after a random op would replay one draw of it every epoch")


def _num(value: int | str) -> str:
    return _AUTOTUNE if value == "autotune" else repr(value)


def _shuffle_stage(params: PipelineParams) -> Stage:
    return Stage("shuffle", (f"ds = ds.shuffle({params.shuffle_buffer!r}, seed=SHUFFLE_SEED)",),
                 random=True, training_only=True)


def _element_stages(params: PipelineParams, has_random: bool) -> list[Stage]:
    """Parse and run the ops per element, then batch."""
    stages = [_shuffle_stage(params)] if params.shuffle_buffer and params.cache == "none" else []
    stages.append(_map_stage("prepare", params))
    if params.cache != "none":
        stages.append(_cache_stage(params))
        if params.shuffle_buffer:
            stages.append(_shuffle_stage(params))
    if has_random:
        stages.append(_map_stage("augment", params, random=True,
                                 function="lambda example: augment(example, training)"))
    return [*stages, _map_stage("to_model_inputs", params), _batch_stage(params), _prefetch_stage(params)]


def _vectorized_stages(params: PipelineParams, ops: Sequence) -> list[Stage]:
    """Shuffle the records, batch them, then parse and run the ops on whole batches."""
    check_per_batch(ops, params.cache)
    shuffle = [_shuffle_stage(params)] if params.shuffle_buffer else []
    return [*shuffle, _batch_stage(params), _map_stage("prepare", params, function="prepare_batch"),
            _map_stage("to_model_inputs", params), _prefetch_stage(params)]


def check_per_batch(ops: Sequence, cache: str) -> None:
    """Guard for the validity rule: a vectorised map runs only ops that act alike per batch."""
    if cache != "none" or not all(op.acts_per_batch for op in ops):
        raise ValueError("a vectorised map needs no cache and only ops that act the same per batch")


def _read_stages(params: PipelineParams, latency_ms: float = 0.0) -> list[Stage]:
    """List the files (in a new seeded order each epoch when the data is shuffled), then read."""
    stages = [Stage("list_files", ("files = tf.data.Dataset.list_files(file_pattern, shuffle=False)",))]
    if params.shuffle_buffer:
        # Order only, not a draw a cache could freeze: marked non-random for the cache rule.
        stages.append(Stage("shuffle_files", ("files = files.shuffle(files.cardinality(), seed=SHUFFLE_SEED)",),
                            training_only=True))
    return [*stages, _read_stage(params, latency_ms)]


def _read_stage(params: PipelineParams, latency_ms: float = 0.0) -> Stage:
    # Simulated storage: each file is read as one stream that waits per record.
    slow = f".map(lambda record: wait_then_pass(record, {latency_ms / 1000.0!r}))" if latency_ms else ""
    if params.interleave_cycle == 1 and params.parallel_reads == 1:
        return Stage("read", (f"ds = tf.data.TFRecordDataset(files, compression_type=COMPRESSION){slow}",))
    if params.interleave_cycle == 1 and not slow:
        return Stage("read", _call("ds = tf.data.TFRecordDataset", [
            "files", "compression_type=COMPRESSION", f"num_parallel_reads={_num(params.parallel_reads)}"]))
    if params.interleave_cycle == 1:
        return _parallel_reads_spelled_out(params, slow)
    parallel = _AUTOTUNE if params.interleave_parallel else "None"
    return Stage("read", tuple(_call("ds = files.interleave", [
        f"lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION){slow}",
        f"cycle_length={_num(params.interleave_cycle)}",
        f"block_length={params.interleave_block!r}",
        f"num_parallel_calls={parallel}",
        f"deterministic={params.deterministic!r}",
    ])))


def _parallel_reads_spelled_out(params: PipelineParams, slow: str) -> Stage:
    """TFRecordDataset(num_parallel_reads=N) is this interleave (TF's readers.py): cycle N, block
    1, N parallel calls, always in order for a number, following the options for AUTOTUNE.
    Written out so the simulated wait sits inside each file's stream."""
    reads = params.parallel_reads
    return Stage("read", (
        f"# num_parallel_reads={_num(reads)} spelled out, so the simulated storage waits per file",
        *_call("ds = files.interleave", [
            f"lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION){slow}",
            f"cycle_length={_num(reads)}",
            "block_length=1",
            f"num_parallel_calls={_num(reads)}",
            f"deterministic={params.deterministic if reads == 'autotune' else True!r}",
        ])))


def _map_stage(name: str, params: PipelineParams, random: bool = False, function: str = "") -> Stage:
    lines = _call("ds = ds.map", [function or name, f"num_parallel_calls={_num(params.map_parallel)}",
                                  f"deterministic={params.deterministic!r}"])
    return Stage(name, lines, random=random)


_CACHE_LINES = {"memory": "ds = ds.cache()", "disk": "ds = ds.cache(cache_path)",
                # First epoch writes a snapshot in the folder cache_path, later ones read it.
                "snapshot": "ds = ds.snapshot(cache_path)"}


def _cache_stage(params: PipelineParams) -> Stage:
    return Stage("cache", (_CACHE_LINES[params.cache],))


def _batch_stage(params: PipelineParams) -> Stage:
    return Stage("batch", (f"ds = ds.batch({params.batch_size!r}, "
                           f"drop_remainder={params.drop_remainder!r})",))


def _prefetch_stage(params: PipelineParams) -> Stage:
    if params.prefetch == 0:
        return Stage("prefetch", ())  # no line; best_pipeline.py's comment says why
    return Stage("prefetch", (f"ds = ds.prefetch({_num(params.prefetch)})",))


def _to_device_stage(params: PipelineParams) -> Stage:
    # Must be the last transformation; after with_options so the options reach the CPU side.
    if not params.prefetch_to_device:
        return Stage("prefetch_to_device", ())
    return Stage("prefetch_to_device", ("ds = ds.apply(tf.data.experimental.prefetch_to_device('/gpu:0'))",))


def _constants(spec: Spec, params: PipelineParams, data: DataLayout) -> str:
    features = "\n".join(
        f"    {name!r}: tf.io.FixedLenFeature({list(f.shape)!r}, {_TF_TYPES[f.type]}),"
        for name, f in data.schema.items()
    )
    return "\n".join([
        f"FILE_PATTERN = {data.file_pattern!r}",
        f"COMPRESSION = {TF_COMPRESSION[data.compression]!r}",
        f"CACHE_PATH = {'pipetune-cache-' + spec.name!r}  # used only by a disk or snapshot cache",
        f"PRECISION_POLICY = {params.precision!r}",
        f"SHUFFLE_SEED = {spec.search.seed!r}  # file and element order: a new order each epoch, reproducible",
        "FEATURES = {", features, "}",
    ])


def _function(name: str, argument: str, ops: Sequence, aliases: Mapping[int, str], start: int,
              first_line: str = "") -> str:
    """A map function; random ops run only ``if training`` (decided when tf.data traces it)."""
    lines = [f"def {name}({argument}):", "    " + (first_line or "example = dict(example)")]
    for offset, op in enumerate(ops):
        indent = "        " if op.is_random else "    "
        if op.is_random:
            lines.append("    if training:")
        lines += [indent + line for line in render_op(op, aliases.get(start + offset, ""))]
    lines.append("    return example")
    return "\n".join(lines)


def _to_inputs(spec: Spec) -> str:
    keys = spec.inputs.feature_keys
    if len(keys) == 1:
        features = f"example[{keys[0]!r}]"
    else:
        columns = ", ".join(f"tf.cast(example[{k!r}], tf.float32)" for k in keys)
        features = f"tf.stack([{columns}], axis=-1)"
    return "\n".join([
        "def to_model_inputs(example):",
        f"    return {features}, example[{spec.inputs.label!r}]",
    ])


def _options_function(params: PipelineParams) -> str:
    lines = [
        "def make_options():",
        "    options = tf.data.Options()",
        f"    options.deterministic = {params.deterministic!r}",
        f"    options.experimental_optimization.map_and_batch_fusion = {params.map_and_batch_fusion!r}",
    ]
    if params.private_threadpool_size:
        lines.append(f"    options.threading.private_threadpool_size = {params.private_threadpool_size!r}")
    if params.autotune_ram_budget_mb:
        lines.append(f"    options.autotune.ram_budget = {params.autotune_ram_budget_mb * 2**20!r}")
    if params.autotune_cpu_budget:
        lines.append(f"    options.autotune.cpu_budget = {params.autotune_cpu_budget!r}")
    lines.append("    return options")
    return "\n".join(lines)


def _precision_function() -> str:
    return "\n".join([
        "def apply_precision_policy():",
        '    """Set the Keras mixed-precision policy this pipeline was measured with.',
        "",
        "    Call it once, before building the model. Keep the model's output layer float32.",
        '    """',
        "    keras.mixed_precision.set_global_policy(PRECISION_POLICY)",
    ])


def _make_dataset_signature() -> str:
    return "\n".join([
        "def make_dataset(file_pattern=FILE_PATTERN, training=True, cache_path=CACHE_PATH):",
        '    """The measured tf.data pipeline; ``training=False`` skips shuffling and random ops."""',
    ])


def _user_import(op: Call, alias: str) -> str:
    module, _, function = op.fn.partition(":")
    return f"from {module} import {function} as {alias}"
