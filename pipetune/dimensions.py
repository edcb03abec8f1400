"""The one registry of pipeline dimensions: every knob pipetune can turn, described once.

``PipelineParams`` and ``SearchSpace`` (spec.py), the plain-words description of a variant,
the terminal and report column labels, the dimensions whose effects are measured, and the
stage each evidence comment sits on are all derived from ``DIMENSIONS``. Adding a lever means
one entry here, its rendering in the Plan, and tests.

This module imports nothing from pipetune: it is the floor every other module stands on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Compression = Literal["none", "gzip", "zlib"]
Precision = Literal["float32", "mixed_bfloat16", "mixed_float16"]
CacheKind = Literal["none", "memory", "disk", "snapshot"]
Autotune = Literal["autotune"]

# TensorFlow's compression_type for each spec value (TFRecordDataset, TFRecordOptions).
TF_COMPRESSION = {"none": "", "gzip": "GZIP", "zlib": "ZLIB"}


@dataclass(frozen=True, slots=True)
class Dimension:
    """One knob of a tf.data pipeline.

    Attributes:
        name: the field name in ``PipelineParams``, the spec's ``search.space`` and results.
        annotation: the pydantic type of one value.
        default: the value when nothing says otherwise (tf.data's own default where it has one).
        search: the values searched when the spec's space does not list the dimension.
        short: a column label for tables.
        stage: the Plan stage whose line the value appears on (where its evidence is written).
        changes_training: whether a change alters what the model learns from (order, numerics,
            batch composition), not only how fast the data arrives.
        words: the value in plain words, for descriptions and comments.
        always_described: described even at its default value (the pipeline's main shape).
    """

    name: str
    annotation: Any
    default: Any
    search: tuple[Any, ...]
    short: str
    stage: str
    changes_training: bool
    words: Callable[[Any], str]
    always_described: bool = False


def _plural(value: int, noun: str) -> str:
    return f"{value} {noun}{'s' if value != 1 else ''}"


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("shards", PositiveInt, 1, (8,), "shards", "read", False,
              lambda v: _plural(v, "shard"), always_described=True),
    Dimension("compression", Compression, "none", ("none",), "compr.", "read", False,
              lambda v: "uncompressed" if v == "none" else f"{v} records"),
    Dimension("interleave_cycle", PositiveInt | Autotune, 1, (1, "autotune"), "inter.", "read", False,
              lambda v: "sequential read" if v == 1 else f"interleave {v}", always_described=True),
    Dimension("interleave_block", PositiveInt, 1, (1,), "block", "read", False,
              lambda v: f"interleave block {v}"),
    Dimension("interleave_parallel", bool, True, (True,), "par. il.", "read", False,
              lambda v: "parallel interleave" if v else "serial interleave"),
    # TFRecordDataset(num_parallel_reads=N): N files read at once, records taken from each in
    # turn. Only for a sequential read (space.canonical pins it to 1 under an interleave).
    Dimension("parallel_reads", PositiveInt | Autotune, 1, (1,), "par. reads", "read", False,
              lambda v: "one file read at a time" if v == 1 else f"parallel reads {v}"),
    Dimension("map_parallel", PositiveInt | Autotune, 1, (1, "autotune"), "map", "prepare", False,
              lambda v: "sequential map" if v == 1 else f"parallel map {v}", always_described=True),
    # Batch first, then parse and run the ops on whole batches (space.py says when that is valid).
    Dimension("vectorized_map", bool, False, (False,), "vect.", "prepare", False,
              lambda v: "parse and ops on whole batches" if v else "parse and ops per element"),
    Dimension("cache", CacheKind, "none", ("none", "memory"), "cache", "cache", False,
              lambda v: "no cache" if v == "none" else f"{v} cache"),
    Dimension("shuffle_buffer", NonNegativeInt, 0, (1024,), "shuffle", "shuffle", True,
              lambda v: "no shuffle" if v == 0 else f"shuffle {v}"),
    Dimension("batch_size", PositiveInt, 32, (64,), "batch", "batch", True,
              lambda v: f"batch {v}", always_described=True),
    Dimension("drop_remainder", bool, False, (False,), "drop rem.", "batch", True,
              lambda v: "drop the last partial batch" if v else "keep the last partial batch"),
    Dimension("prefetch", NonNegativeInt | Autotune, 0, (0, "autotune"), "prefetch", "prefetch", False,
              lambda v: "no prefetch" if v == 0 else f"prefetch {v}", always_described=True),
    # The last transformation: batches are copied to the GPU ahead of the step (GPU only).
    Dimension("prefetch_to_device", bool, False, (False,), "to GPU", "prefetch_to_device", False,
              lambda v: "prefetch to the GPU" if v else "no prefetch to the GPU"),
    Dimension("precision", Precision, "float32", ("float32",), "precision", "model", True,
              lambda v: v),
    # The consumer, not the pipeline: model.compile(jit_compile=...), XLA for the model's step.
    # Its default is the spec's model.jit_compile (spec.py); pipetune's builtin models use it.
    Dimension("jit_compile", bool, False, (False,), "XLA", "model", False,
              lambda v: "model compiled with XLA (jit_compile)" if v else "model without XLA"),
    # The consumer too: model.compile(steps_per_execution=N), N training steps per call of the
    # compiled step, so Python's dispatch and the host sync are paid once per N batches. Train
    # mode only (space.py); Keras' callbacks then see every Nth batch.
    Dimension("steps_per_execution", PositiveInt, 1, (1,), "steps/call", "model", False,
              lambda v: "one training step per call" if v == 1 else f"{v} training steps per call "
              "(steps_per_execution)"),
    Dimension("deterministic", bool, True, (True,), "determ.", "options", True,
              lambda v: "deterministic order" if v else "non-deterministic order"),
    Dimension("private_threadpool_size", NonNegativeInt, 0, (0,), "pool", "options", False,
              lambda v: "tf.data's shared thread pool" if v == 0 else f"private thread pool {v}"),
    Dimension("map_and_batch_fusion", bool, True, (True,), "fusion", "options", False,
              lambda v: "map-and-batch fusion" if v else "no map-and-batch fusion"),
    Dimension("autotune_ram_budget_mb", NonNegativeInt, 0, (0,), "ram MB", "options", False,
              lambda v: "default autotune RAM budget" if v == 0 else f"autotune RAM budget {v} MB"),
    Dimension("autotune_cpu_budget", NonNegativeInt, 0, (0,), "cpu budget", "options", False,
              lambda v: "default autotune CPU budget" if v == 0 else f"autotune CPU budget {v}"),
)

BY_NAME: Mapping[str, Dimension] = {d.name: d for d in DIMENSIONS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def describe_values(values: Mapping[str, Any]) -> str:
    """Plain words for a point of the space: its main shape, then every non-default value,
    so two different variants never read the same."""
    return ", ".join(d.words(values[d.name]) for d in DIMENSIONS
                     if d.always_described or values[d.name] != d.default)


def short_label(name: str) -> str:
    return BY_NAME[name].short


def of_stage(stage: str) -> tuple[Dimension, ...]:
    return tuple(d for d in DIMENSIONS if d.stage == stage)
