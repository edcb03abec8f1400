"""Existing TFRecord files (a sorted glob) of tf.train.Example records with declared features.

Resharding copies every record's raw bytes once; only the first record is parsed, to check
the declared features against what the files hold.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator
from pathlib import Path

from pipetune.errors import SourceError
from pipetune.sources.common import LIST_FIELD, Inspection, Problem, Schema
from pipetune.sources.shards import tf_compression
from pipetune.spec import FeatureSpec, Spec, TFRecordSource

_GLOB_MAGIC = frozenset("*?[")
READ_BATCH = 1024  # records per read from TensorFlow; Python sees one batch at a time


def schema_of(spec: Spec) -> Schema:
    """The declared features; nothing is read."""
    return dict(_source(spec).features)


def inspect(spec: Spec) -> Inspection:
    """Globs the files (sorted) and reports a glob that matches nothing or only empty files."""
    source = _source(spec)
    pattern = spec.resolve(source.files).absolute()  # absolute: messages name it
    matches = sorted(glob.glob(str(pattern), recursive=True))
    files = tuple(Path(match) for match in matches if Path(match).is_file())
    problems: list[Problem] = []
    where = ("source", "files")
    if not files:
        looked_in = _fixed_prefix(pattern)
        problems.append((where, f"glob {source.files!r} matches no file (looked in {looked_in})"))
    elif all(path.stat().st_size == 0 for path in files):
        message = f"glob {source.files!r} matches {len(files)} file(s), but all are empty"
        problems.append((where, message))
    return Inspection(schema=schema_of(spec), problems=tuple(problems), inputs=files)


def records(spec: Spec, inspection: Inspection) -> Iterator[bytes]:
    """Every record of every file, in file order, as raw bytes; the first one is checked."""
    source = _source(spec)
    first = True
    for path in inspection.inputs:
        for record in _read_file(path, source.compression):
            if first:
                check_record(record, path, source.features)
                first = False
            yield record


def _read_file(path: Path, compression: str) -> Iterator[bytes]:
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(str(path), compression_type=tf_compression(compression))
    try:
        for batch in dataset.batch(READ_BATCH).as_numpy_iterator():  # batches: 15x faster
            yield from batch
    except tf.errors.DataLossError as err:
        raise SourceError(
            f"{path}: corrupt record (is source.compression {compression!r} right?): {err.message}"
        ) from err


def check_record(record: bytes, path: Path, features: dict[str, FeatureSpec]) -> None:
    """Raises SourceError unless ``record`` is an Example holding every declared feature."""
    import google.protobuf.message
    import tensorflow as tf

    try:
        present = tf.train.Example.FromString(record).features.feature
    except google.protobuf.message.DecodeError as err:
        raise SourceError(f"{path}: the first record is not a tf.train.Example ({err})") from err
    for name, spec in features.items():
        if name not in present:
            raise SourceError(
                f"{path}: declared feature {name!r} is not in the first record, "
                f"which has {sorted(present)}"
            )
        kind = present[name].WhichOneof("kind")
        count = len(getattr(present[name], kind).value) if kind else 0
        expected = math.prod(spec.shape)
        if kind != LIST_FIELD[spec.type] or count != expected:
            raise SourceError(
                f"{path}: feature {name!r} is declared {spec.type} of shape {spec.shape} "
                f"({expected} values), but the first record holds {kind or 'no list'} "
                f"with {count} values"
            )


def _fixed_prefix(pattern: Path) -> Path:
    """The folder an absolute glob looks in: its leading parts without wildcards."""
    fixed = Path(pattern.anchor)
    for part in pattern.parent.parts[1:]:
        if _GLOB_MAGIC & set(part):
            break
        fixed /= part
    return fixed


def _source(spec: Spec) -> TFRecordSource:
    assert isinstance(spec.source, TFRecordSource), spec.source.kind
    return spec.source
