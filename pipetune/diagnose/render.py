"""The module the diagnosis child imports: the Plan's own module, plus one function per stage.

The read stage is the Plan's (simulated storage latency included), rendered once sequential and
once interleaving every shard; each cumulative prefix (parse, then each op) is a map function
made of the same op source (``render_op``) that sweeps measure and ``best_pipeline.py`` holds.
Random ops always run: the diagnosis measures the training pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipetune.plan import DataLayout, Plan
from pipetune.render_ops import render_op
from pipetune.spec import Call, Op, PipelineParams, Spec, describe_op

PARSE_LINE = "example = tf.io.parse_single_example(record, FEATURES)"


@dataclass(frozen=True, slots=True)
class StageInfo:
    """A stage the child measures; ``function`` is its name in the rendered module."""

    name: str
    kind: str  # read | parse | op
    random: bool
    function: str  # "" for read: the stage is the read itself


def stage_infos(spec: Spec) -> tuple[StageInfo, ...]:
    infos = [StageInfo("read", "read", False, ""), StageInfo("parse", "parse", False, "stage_1")]
    for index, (step, op) in enumerate(zip(spec.preprocess, spec.ops)):
        infos.append(StageInfo(describe_op(op), "op", op.is_random, f"stage_{index + 2}"))
    return tuple(infos)


def render_stage_module(spec: Spec, data: DataLayout, shards: int) -> str:
    """Source of a module with ``read_sequential``, ``read_parallel`` and ``stage_<k>``.

    It starts with the Plan's module (constants, the wait helper, ``to_model_inputs``, the
    user imports), so a stage here reads and computes exactly what a measured trial does.
    """
    sequential = Plan.from_variant(spec, PipelineParams(shards=shards, interleave_cycle=1), data)
    parallel = Plan.from_variant(spec, PipelineParams(
        shards=shards, interleave_cycle=shards, interleave_parallel=True, deterministic=False), data)
    blocks = [sequential.render().rstrip("\n"), *_user_imports(spec),
              _read_function("read_sequential", sequential),
              _read_function("read_parallel", parallel)]
    for count in range(len(spec.ops) + 1):
        blocks.append(_prefix_function(f"stage_{count + 1}", spec.ops[:count]))
    return "\n\n\n".join(blocks) + "\n"


def _read_function(name: str, plan: Plan) -> str:
    # In file order (no shuffle): listing the files, then reading them.
    read = [line for stage in plan.stages if stage.name in ("list_files", "read") for line in stage.lines]
    lines = [f"def {name}(file_pattern=FILE_PATTERN):", *("    " + line for line in read), "    return ds"]
    return "\n".join(lines)


def _prefix_function(name: str, ops: tuple[Op, ...]) -> str:
    lines = [f"def {name}(record):", "    " + PARSE_LINE]
    for index, op in enumerate(ops):
        lines += ["    " + line for line in render_op(op, _alias(index))]
    lines.append("    return example")
    return "\n".join(lines)


def _alias(index: int) -> str:
    return f"diagnose_fn_{index}"


def _user_imports(spec: Spec) -> list[str]:
    # Our own aliases: the Plan's naming of user functions is its business.
    imports = []
    for index, op in enumerate(spec.ops):
        if isinstance(op, Call):
            module, _, function = op.fn.partition(":")
            imports.append(f"from {module} import {function} as {_alias(index)}")
    return imports
