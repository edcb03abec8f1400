"""The search space as data: variants, the reference variants, and the validity rules.

A variant is a point of the space (``PipelineParams``) plus the role it plays in the sweep.
Invalid points are never run: they are dropped before the sweep with a reason a user can read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

from pipetune.device import Device
from pipetune.dimensions import BY_NAME, describe_values
from pipetune.results import Role
from pipetune.spec import DecodeImage, Normalize, Op, PipelineParams, Resize, Spec, describe_op

# Parameters that mean nothing without interleave; pinned so equal pipelines get one key.
_INTERLEAVE_ONLY = ("interleave_block", "interleave_parallel")


@dataclass(frozen=True, slots=True)
class Variant:
    params: PipelineParams
    role: Role = Role.CANDIDATE

    @property
    def key(self) -> str:
        return variant_key(self.params)

    @property
    def label(self) -> str:
        return self.role.value if self.role is not Role.CANDIDATE else self.key


@dataclass(frozen=True, slots=True)
class Dropped:
    """A point of the space that will not run, and why."""

    params: PipelineParams
    reason: str

    @property
    def key(self) -> str:
        return variant_key(self.params)


@dataclass(frozen=True, slots=True)
class SpaceFacts:
    """What the validity rules need to know beyond the spec."""

    device: Device
    cache_bytes_estimate: int | None = None  # decoded size of the cached dataset
    ram_budget_bytes: int = 8 * 2**30
    ops: tuple[Op, ...] = ()  # the spec's preprocess ops (enumerate_space fills them in)
    mode: str = "train"  # the spec's measure.mode (enumerate_space fills it in)


def variant_key(params: PipelineParams) -> str:
    """Canonical key: a hash of the sorted parameters that differ from the registry's defaults.
    Equal pipelines have equal keys, and adding a lever (at its default) changes no stored key."""
    values = canonical(params).model_dump(mode="json")
    text = json.dumps({name: value for name, value in values.items() if value != BY_NAME[name].default},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def canonical(params: PipelineParams) -> PipelineParams:
    """Pin parameters that have no effect, so two spellings of one pipeline are one variant."""
    defaults = PipelineParams()
    # Interleave knobs mean nothing for a sequential read, parallel_reads nothing under an
    # interleave (it is the sequential read's parallelism), fusion nothing when the map
    # follows the batch.
    pinned = _INTERLEAVE_ONLY if params.interleave_cycle == 1 else ("parallel_reads",)
    if params.vectorized_map:
        pinned += ("map_and_batch_fusion",)
    return params.model_copy(update={k: getattr(defaults, k) for k in pinned})


def reference_variants(spec: Spec, device: Device) -> list[Variant]:
    """``naive``, ``autotune-default`` and, if the spec has one, the user's ``baseline``.

    Both built-in references keep the first searched value of the dimensions they do not
    define (batch size, shuffle buffer, options) and float32, so they differ from the
    candidates only in how the pipeline runs. naive reads the fewest shards; autotune-default
    the most, since parallel interleave needs files to interleave.
    """
    dims = spec.search.space.dimensions()
    first = {name: values[0] for name, values in dims.items()}
    base = PipelineParams(**first).model_copy(update={"cache": "none", "precision": "float32"})
    # Both process per element and stay on the host, as the pipelines users write do.
    base = base.model_copy(update={"vectorized_map": False, "prefetch_to_device": False})
    naive = base.model_copy(update={
        "shards": min(dims["shards"]), "interleave_cycle": 1, "parallel_reads": 1, "map_parallel": 1,
        "prefetch": 0, "private_threadpool_size": 0,
    })
    most_shards = max(dims["shards"])  # parallel interleave needs files to interleave
    autotune = base.model_copy(update={
        "shards": most_shards, "interleave_cycle": "autotune" if most_shards > 1 else 1,
        "interleave_parallel": True, "map_parallel": "autotune", "prefetch": "autotune",
        "private_threadpool_size": 0, "autotune_ram_budget_mb": 0, "autotune_cpu_budget": 0,
    })
    variants = [Variant(canonical(naive), Role.NAIVE), Variant(canonical(autotune), Role.AUTOTUNE_DEFAULT)]
    if spec.baseline is not None:
        variants.append(Variant(canonical(spec.baseline), Role.BASELINE))
    return variants


def enumerate_space(spec: Spec, facts: SpaceFacts) -> tuple[list[Variant], list[Dropped]]:
    """Every valid candidate of the spec's space (deduplicated), and the dropped points."""
    dims = spec.search.space.dimensions()
    facts = dataclasses.replace(facts, ops=spec.ops, mode=spec.measure.mode)
    valid: dict[str, Variant] = {}
    dropped: dict[str, Dropped] = {}
    for values in itertools.product(*dims.values()):
        params = canonical(PipelineParams(**dict(zip(dims, values))))
        key = variant_key(params)
        if key in valid or key in dropped:
            continue
        reason = first_problem(params, facts)
        if reason:
            dropped[key] = Dropped(params, reason)
        else:
            valid[key] = Variant(params)
    return list(valid.values()), list(dropped.values())


Rule = Callable[[PipelineParams, SpaceFacts], "str | None"]


def interleave_over_one_shard(params: PipelineParams, facts: SpaceFacts) -> str | None:
    if params.shards == 1 and params.interleave_cycle != 1:
        return "interleave over a single shard reads one file: nothing to interleave"
    return None


def parallel_reads_over_one_shard(params: PipelineParams, facts: SpaceFacts) -> str | None:
    if params.shards == 1 and params.parallel_reads != 1:
        return "parallel reads over a single shard read one file: nothing to read in parallel"
    return None


def vectorized_map_needs_per_batch_ops(params: PipelineParams, facts: SpaceFacts) -> str | None:
    """Batch-then-map gives the same batches only if every op acts alike on a batch, and no
    cache sits after the batch (it would hold whole batches and replay them every epoch)."""
    if not params.vectorized_map:
        return None
    if params.cache != "none":
        return (f"vectorised map needs cache none, but got {params.cache}: a cache after the batch "
                "would replay the first epoch's batches every epoch")
    blocking = next((op for op in facts.ops if not op.acts_per_batch), None)
    if blocking is not None:
        return f"vectorised map needs every op to act per batch, but {describe_op(blocking)} does not"
    return None


def prefetch_to_device_needs_gpu(params: PipelineParams, facts: SpaceFacts) -> str | None:
    if params.prefetch_to_device and not facts.device.has_gpu:
        return "prefetch_to_device needs a GPU, and this machine has none"
    return None


def steps_per_execution_needs_training(params: PipelineParams, facts: SpaceFacts) -> str | None:
    if params.steps_per_execution != 1 and facts.mode != "train":
        return (f"steps_per_execution {params.steps_per_execution} needs measure.mode train: in "
                f"{facts.mode} mode no model step runs, so there is no call overhead to save")
    return None


def precision_too_slow(params: PipelineParams, facts: SpaceFacts) -> str | None:
    return facts.device.precision_problem(params.precision)


def memory_cache_over_budget(params: PipelineParams, facts: SpaceFacts) -> str | None:
    estimate = facts.cache_bytes_estimate
    if params.cache == "memory" and estimate is not None and estimate > facts.ram_budget_bytes:
        return (f"memory cache needs about {estimate / 2**30:.1f} GiB, more than the RAM budget "
                f"of {facts.ram_budget_bytes / 2**30:.1f} GiB")
    return None


RULES: tuple[Rule, ...] = (interleave_over_one_shard, parallel_reads_over_one_shard,
                           vectorized_map_needs_per_batch_ops, prefetch_to_device_needs_gpu,
                           steps_per_execution_needs_training, precision_too_slow,
                           memory_cache_over_budget)


def first_problem(params: PipelineParams, facts: SpaceFacts) -> str | None:
    """The first validity rule ``params`` breaks, or None. (Cache placement is checked by the plan.)"""
    for rule in RULES:
        reason = rule(params, facts)
        if reason:
            return reason
    return None


def estimate_cache_bytes(spec: Spec, num_examples: int, mean_record_bytes: float) -> int:
    """Rough decoded size of everything a cache would hold, from the source manifest.

    Walks the deterministic ops before the first random op: a decoded image of known size is
    H*W*C bytes, a resize makes float32 H*W*C*4, normalize turns the tensor into float32. An
    image of unknown size is taken as 10x its encoded size (a typical JPEG ratio).
    """
    sizes = {"__record__": mean_record_bytes}
    shapes: dict[str, tuple[int, int, int]] = {}
    known = getattr(spec.source, "image_size", None)
    for op in spec.ops:
        if op.is_random:
            break
        if isinstance(op, DecodeImage):
            if known:
                shapes[op.key] = (known[0], known[1], op.channels)
                sizes[op.key] = known[0] * known[1] * op.channels
            else:
                sizes[op.key] = 10 * mean_record_bytes
        elif isinstance(op, Resize):
            channels = shapes.get(op.key, (0, 0, 3))[2]
            shapes[op.key] = (op.size[0], op.size[1], channels)
            sizes[op.key] = op.size[0] * op.size[1] * channels * 4
        elif isinstance(op, Normalize) and op.key in shapes:
            h, w, c = shapes[op.key]
            sizes[op.key] = h * w * c * 4
    return int(num_examples * sum(sizes.values()))


def describe(params: PipelineParams) -> str:
    """A short plain-words description, e.g. for the report and the terminal table."""
    return describe_values(params.model_dump())
