"""What every source kind shares: the inspection result, type mapping and Example encoding.

TensorFlow is imported inside :func:`example_encoder` only, so inspecting a source (spec time)
never pays TensorFlow's start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipetune.errors import SourceError
from pipetune.spec import FeatureSpec

Problem = tuple[tuple[str, ...], str]  # (dotted path in the YAML, what is wrong)
Schema = dict[str, FeatureSpec]
Row = Mapping[str, Sequence[Any]]  # feature name -> flat list of values
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
IMAGE_SCHEMA: Schema = {"image": FeatureSpec(type="bytes"), "label": FeatureSpec(type="int64")}
LIST_FIELD = {"bytes": "bytes_list", "int64": "int64_list", "float32": "float_list"}


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a cheap look at a source found.

    Attributes:
        schema: the records' features, or None when problems prevent knowing them.
        problems: spec-time problems; empty when the source can be read.
        inputs: the input files whose identities (path, size, mtime) go into the content hash.
        facts: what else changes the records and so goes into the content hash (e.g. the
            class names of an image folder: an added empty class renumbers the labels).
        detail: kind-private data the records step reuses (e.g. each image's label).
    """

    schema: Schema | None
    problems: tuple[Problem, ...] = ()
    inputs: tuple[Path, ...] = ()
    facts: tuple[str, ...] = ()
    detail: Any = field(default=None, compare=False)

    def require_schema(self) -> Schema:
        """The schema; raises SourceError listing the problems when there is none."""
        if self.problems or self.schema is None:
            raise SourceError(format_problems(self.problems))
        return self.schema


def format_problems(problems: Sequence[Problem]) -> str:
    """One line per problem: ``source.path: message``."""
    return "\n".join(f"{'.'.join(path)}: {message}" for path, message in problems)


def feature_type(dtype: np.dtype) -> str | None:
    """The Example feature type that holds values of a numpy dtype, or None if unsupported."""
    kind = np.dtype(dtype).kind
    if kind in "biu":
        return "int64"
    if kind == "f":
        return "float32"
    if kind in "SU":
        return "bytes"
    return None


def name_problems(names: Sequence[str], where: tuple[str, ...], what: str) -> list[Problem]:
    """Problems for names that cannot be feature names (they become parse-spec keys)."""
    return [
        (where, f"{what} name {name!r} must match {IDENTIFIER.pattern}")
        for name in names
        if not IDENTIFIER.match(str(name))
    ]


def label_problems(label: str, names: Sequence[str], what: str) -> list[Problem]:
    """A problem when the declared label is not among ``names``."""
    if label in names:
        return []
    return [(("source", "label"), f"label {what} {label!r} not in {what}s {list(names)}")]


def example_encoder(schema: Schema) -> Callable[[Row], bytes]:
    """A function turning one row (feature name -> flat value list) into serialized Example bytes.

    Serialization is deterministic (map keys sorted), so equal rows give equal bytes.
    """
    import tensorflow as tf

    fields = [(name, LIST_FIELD[spec.type]) for name, spec in schema.items()]

    def encode(row: Row) -> bytes:
        example = tf.train.Example()
        feature = example.features.feature
        for name, list_field in fields:
            getattr(feature[name], list_field).value.extend(row[name])
        return example.SerializeToString(deterministic=True)

    return encode


def as_feature_lists(values: np.ndarray, feature: str) -> list[list[Any]]:
    """Rows of ``values`` (first axis) as flat Python lists of the feature type's values."""
    flat = values.reshape(len(values), -1)
    if feature == "int64":
        return flat.astype(np.int64).tolist()
    if feature == "float32":
        return flat.astype(np.float32).tolist()
    if flat.dtype.kind == "U":
        return [[item.encode("utf-8") for item in row] for row in flat.tolist()]
    return flat.tolist()
