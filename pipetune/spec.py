"""The dataset spec (``data.yaml``): frozen, validated models and the loader.

Every value that can later appear in generated code is validated here: names that become
identifiers or dictionary keys match a strict pattern, numbers have ranges, and choices are
literals. Nothing in a spec is ever evaluated; the plan renders validated values with repr().
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from pipetune.dimensions import DIMENSIONS, NAMES, Compression, Dimension, NonNegativeInt, PositiveInt

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
SpecName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# "package.module:function" - imported, never evaluated.
CallRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
    ),
]
Size2 = tuple[PositiveInt, PositiveInt]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sources


class FeatureSpec(Strict):
    type: Literal["bytes", "int64", "float32"]
    shape: tuple[NonNegativeInt, ...] = ()


class SyntheticImagesSource(Strict):
    kind: Literal["synthetic_images"]
    num_examples: PositiveInt = 4096
    image_size: Size2 = (128, 128)
    num_classes: Annotated[int, Field(ge=2)] = 10
    seed: int = 0
    format: Literal["jpeg", "png"] = "jpeg"


class TFRecordSource(Strict):
    kind: Literal["tfrecord"]
    files: str  # glob, relative to the spec's folder
    compression: Compression = "none"
    features: dict[Identifier, FeatureSpec] = Field(min_length=1)


class ImageFolderSource(Strict):
    kind: Literal["image_folder"]
    root: str  # class sub-folders of JPEG/PNG files, relative to the spec's folder


class CsvSource(Strict):
    kind: Literal["csv"]
    path: str
    label: Identifier


class ParquetSource(Strict):
    kind: Literal["parquet"]
    path: str
    label: Identifier


class NpzSource(Strict):
    kind: Literal["npz"]
    path: str
    label: Identifier  # name of the label array; every other array is a feature


SOURCE_TYPES: dict[str, type[Strict]] = {
    "synthetic_images": SyntheticImagesSource,
    "tfrecord": TFRecordSource,
    "image_folder": ImageFolderSource,
    "csv": CsvSource,
    "parquet": ParquetSource,
    "npz": NpzSource,
}

Source = Annotated[
    Union[
        SyntheticImagesSource, TFRecordSource, ImageFolderSource, CsvSource, ParquetSource, NpzSource
    ],
    Field(discriminator="kind"),
]

# --------------------------------------------------------------------------- preprocess ops


class Op(Strict):
    RANDOM: ClassVar[bool] = False  # True for ops that draw random numbers
    # True for ops whose rendered lines give the same result on a batch as on each element
    # stacked (elementwise maths, casts, one_hot): a vectorised map may run them per batch.
    PER_BATCH: ClassVar[bool] = False

    @property
    def is_random(self) -> bool:
        """Whether the op draws random numbers: a cache may only sit before the first such op."""
        return self.RANDOM

    @property
    def acts_per_batch(self) -> bool:
        """Whether the op may run on whole batches with the same result (``vectorized_map``)."""
        return self.PER_BATCH


class DecodeImage(Op):
    key: Identifier
    channels: Literal[1, 3, 4] = 3


class Resize(Op):
    key: Identifier
    size: Size2
    method: Literal["bilinear", "nearest", "bicubic", "area"] = "bilinear"


class RandomCrop(Op):
    key: Identifier
    size: Size2
    RANDOM: ClassVar[bool] = True


class RandomFlip(Op):
    key: Identifier
    mode: Literal["horizontal", "vertical", "both"] = "horizontal"
    RANDOM: ClassVar[bool] = True


class ColorJitter(Op):
    key: Identifier
    brightness: Annotated[float, Field(ge=0, le=1)] = 0.1
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.1
    RANDOM: ClassVar[bool] = True


class Normalize(Op):
    """``(x - mean) / std`` in float32; the default maps 8-bit pixels to [0, 1]."""

    key: Identifier
    mean: float = 0.0
    std: Annotated[float, Field(gt=0)] = 255.0
    PER_BATCH: ClassVar[bool] = True


class Cast(Op):
    key: Identifier
    dtype: Literal["float32", "float16", "bfloat16", "int32", "int64"]
    PER_BATCH: ClassVar[bool] = True


class OneHot(Op):
    key: Identifier
    depth: PositiveInt
    PER_BATCH: ClassVar[bool] = True


class Sleep(Op):
    """A known per-element cost (a blocking wait, like a remote read). For benchmarks and tests."""

    ms: Annotated[float, Field(gt=0, le=10_000)]


class Call(Op):
    """A user function ``dict of tensors -> dict of tensors``; it must declare ``random``."""

    fn: CallRef
    random: bool  # required: pipetune cannot know whether user code draws random numbers

    @property
    def is_random(self) -> bool:
        return self.random


OP_TYPES: dict[str, type[Op]] = {
    "decode_image": DecodeImage,
    "resize": Resize,
    "random_crop": RandomCrop,
    "random_flip": RandomFlip,
    "color_jitter": ColorJitter,
    "normalize": Normalize,
    "cast": Cast,
    "one_hot": OneHot,
    "sleep": Sleep,
    "call": Call,
}


def describe_op(op: Op) -> str:
    """An op as a user wrote it, short: ``resize(image)``, ``sleep(5 ms)``, ``call(mod:fn)``."""
    name = next(name for name, kind in OP_TYPES.items() if isinstance(op, kind))
    detail = getattr(op, "key", None) or getattr(op, "fn", None) or (
        f"{op.ms:g} ms" if isinstance(op, Sleep) else "")
    return f"{name}({detail})" if detail else name


class PreprocessStep(Strict):
    """One item of ``preprocess``: a mapping with exactly one op name as its key."""

    decode_image: DecodeImage | None = None
    resize: Resize | None = None
    random_crop: RandomCrop | None = None
    random_flip: RandomFlip | None = None
    color_jitter: ColorJitter | None = None
    normalize: Normalize | None = None
    cast: Cast | None = None
    one_hot: OneHot | None = None
    sleep: Sleep | None = None
    call: Call | None = None

    @model_validator(mode="before")
    @classmethod
    def _call_shorthand(cls, value: Any) -> Any:
        # `- call: "pkg.mod:fn"` is short for `- call: {fn: "pkg.mod:fn"}` (then random is missing).
        if isinstance(value, dict) and isinstance(value.get("call"), str):
            return {**value, "call": {"fn": value["call"]}}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PreprocessStep:
        given = [name for name in OP_TYPES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"each step must name exactly one op of {sorted(OP_TYPES)}, but got {given or 'none'}"
            )
        return self

    @property
    def name(self) -> str:
        return next(name for name in OP_TYPES if getattr(self, name) is not None)

    @property
    def op(self) -> Op:
        return getattr(self, self.name)


# --------------------------------------------------------------------------- model, measure


class ModelSpec(Strict):
    """Exactly one of: a builtin burst model, a user ``call``, or a simulated accelerator."""

    builtin: Literal["small_cnn", "resnet_small", "mlp"] | None = None
    call: CallRef | None = None
    step_time_ms: Annotated[float, Field(gt=0, le=60_000)] | None = None
    num_classes: PositiveInt | None = None  # default: the source's; 1 means regression
    # Set explicitly: Keras' "auto" differs between CPU and GPU. The value of the jit_compile
    # dimension wherever search.space and baseline leave it out (Spec._jit_compile_default).
    jit_compile: bool = False
    learning_rate: Annotated[float, Field(gt=0)] = 0.001

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSpec:
        given = [k for k in ("builtin", "call", "step_time_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of builtin, call, step_time_ms must be set, but got {given or 'none'}"
            )
        return self


class InputsSpec(Strict):
    features: Identifier | tuple[Identifier, ...]
    label: Identifier

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return (self.features,) if isinstance(self.features, str) else self.features


class MeasureSpec(Strict):
    mode: Literal["train", "input", "simulate"] = "train"
    warmup_steps: NonNegativeInt = 10
    steps: PositiveInt = 50
    repeats: PositiveInt = 3
    epochs_planned: PositiveInt = 30
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    objective: Literal["auto", "time_to_train", "throughput"] = "auto"

    @property
    def resolved_objective(self) -> str:
        """The objective ranked by, the one place ``auto`` is resolved: projected time to train
        ``epochs_planned`` epochs in every mode, unless throughput is asked for."""
        return "time_to_train" if self.objective == "auto" else self.objective


# --------------------------------------------------------------------------- pipeline params


class _SpaceBase(Strict):
    """The values to try per dimension (fields from ``dimensions.DIMENSIONS``). A dimension
    left out gets its registry search values: the knobs that most often matter are searched,
    the rest keep tf.data's defaults. With ``auto`` (``space: auto``, or no ``space:`` at all),
    the sweep derives the space from its diagnosis and keeps only the dimensions listed here."""

    auto: bool = False

    @field_validator(*NAMES, check_fields=False)
    @classmethod
    def _no_repeated_values(cls, values: list[Any]) -> list[Any]:
        # A field validator (not a model one) so the error names the dimension's own line.
        repeated = sorted({repr(v) for v in values if list(map(repr, values)).count(repr(v)) > 1})
        if repeated:
            raise ValueError(
                f"each value may appear once, but {', '.join(repeated)} repeats in {values}"
            )
        return values

    def dimensions(self) -> dict[str, list[Any]]:
        return {name: list(getattr(self, name)) for name in NAMES}

    def listed(self) -> tuple[str, ...]:
        """The dimensions the spec itself lists (the others have their registry values)."""
        return tuple(name for name in NAMES if name in self.model_fields_set)


def _choices(dimension: Dimension) -> tuple[Any, Any]:
    default = list(dimension.search)
    return list[dimension.annotation], Field(min_length=1, default_factory=lambda: list(default))


# One point of the search space: every knob of a tf.data pipeline, written out.
PipelineParams = create_model(
    "PipelineParams", __base__=Strict, __module__=__name__,
    **{d.name: (d.annotation, d.default) for d in DIMENSIONS},
)
SearchSpace = create_model(
    "SearchSpace", __base__=_SpaceBase, __module__=__name__,
    **{d.name: _choices(d) for d in DIMENSIONS},
)


class SearchSpec(Strict):
    strategy: Literal["auto", "grid", "halving", "tpe"] = "auto"
    budget_s: Annotated[float, Field(gt=0)] = 600.0
    seed: int = 0
    space: SearchSpace = Field(default_factory=lambda: SearchSpace(auto=True))

    @field_validator("space", mode="before")
    @classmethod
    def _auto_shorthand(cls, value: Any) -> Any:
        # `space: auto` is short for `space: {auto: true}`.
        return {"auto": True} if value == "auto" else value


class StorageSpec(Strict):
    """Simulated storage: a blocking wait per record read, in the read stage (per file), as a
    remote or network file system would add. For benchmarks and what-if planning."""

    read_latency_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class ResourcesSpec(Strict):
    ram_budget_gb: Annotated[float, Field(gt=0)] = 8.0


class Spec(Strict):
    name: SpecName
    source: Source
    preprocess: tuple[PreprocessStep, ...] = ()
    inputs: InputsSpec
    model: ModelSpec
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    baseline: PipelineParams | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    # Where the spec lives: relative paths and user modules resolve against it. Not in the YAML.
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _jit_compile_default(cls, data: Any) -> Any:
        """``model.jit_compile`` fills the jit_compile dimension where the spec leaves it out:
        the dimension is what trials use, the model section says what it is when not searched."""
        model = data.get("model") if isinstance(data, dict) else None
        if not (isinstance(model, dict) and model.get("jit_compile") is True):
            return data
        data = dict(data)
        search = data.get("search", {})
        if isinstance(search, dict) and isinstance(search.get("space", {}), dict):
            space = search.get("space", {})
            data["search"] = {**search, "space": {"jit_compile": [True], **space}}
        if isinstance(data.get("baseline"), dict):
            data["baseline"] = {"jit_compile": True, **data["baseline"]}
        return data

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(step.op for step in self.preprocess)

    @property
    def has_random_ops(self) -> bool:
        return any(op.is_random for op in self.ops)

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def content_hash(self) -> str:
        """Hash of what the spec says (not where it lives), for headers and result reuse."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def dump_spec(spec: Spec) -> str:
    """YAML text that loads back into an equal Spec (given the same base_dir)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
