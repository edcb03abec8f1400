"""Where examples come from, and how they are (re)written as N TFRecord shards.

Every source kind (synthetic images, TFRecord glob, image folder, CSV, Parquet, npz) becomes
``tf.train.Example`` records written round-robin into N shards with a manifest, under
``root/<content hash>/<shards>-<compression>/``. A shard set of an unchanged source is
reused, never rewritten. TensorFlow is imported only when records are written.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from pipetune.errors import SourceError
from pipetune.sources import image_folder, npz, synthetic, tabular, tfrecord
from pipetune.sources.common import Problem, format_problems
from pipetune.sources.shards import (
    COMPRESSIONS,
    Manifest,
    ShardSet,
    content_hash,
    find_complete,
    tf_compression,
    write_set,
)
from pipetune.spec import FeatureSpec, Spec

__all__ = [
    "Manifest",
    "ShardSet",
    "check_source",
    "prepare_shards",
    "schema_of",
    "tf_compression",
]

_KINDS: dict[str, ModuleType] = {
    "synthetic_images": synthetic,
    "tfrecord": tfrecord,
    "image_folder": image_folder,
    "csv": tabular,
    "parquet": tabular,
    "npz": npz,
}


def schema_of(spec: Spec) -> dict[str, FeatureSpec]:
    """Feature name -> FeatureSpec of the records the source produces; writes nothing.

    Synthetic images, image folders and TFRecord globs have a schema known from the spec and
    touch no file. CSV, Parquet and npz read only a header (a CSV's first rows).

    Raises:
        SourceError: the file is missing or unreadable, or its columns cannot be features.
    """
    return _KINDS[spec.source.kind].schema_of(spec)


def check_source(spec: Spec) -> list[Problem]:
    """Spec-time problems with the source as ``(dotted path in the YAML, message)``.

    Cheap: globs, folder listings, headers; no full read of the data and no TensorFlow.
    An empty list means the source looks readable. Corrupt records and a TFRecord schema that
    does not match the files are only found by :func:`prepare_shards`.
    """
    return list(_KINDS[spec.source.kind].inspect(spec).problems)


def prepare_shards(spec: Spec, shards: int, compression: str, root: Path) -> ShardSet:
    """The source's records as ``shards`` TFRecord files, written or reused.

    Records go round-robin (shard sizes differ by at most one; each record lands once) into
    ``root/<content hash>/<shards>-<compression>/``. The content hash covers the source's
    definition and its input files' (path, size, mtime_ns), so an unchanged source reuses the
    complete set already there (``ShardSet.written`` is False) and a changed one is written
    anew. A set without a manifest (an interrupted write) is never reused.

    Args:
        spec: the dataset spec; relative source paths resolve against ``spec.base_dir``.
        shards: number of shard files, ``>= 1``.
        compression: "none", "gzip" or "zlib".
        root: folder holding every source's shard sets.

    Raises:
        SourceError: the source has problems, a record is corrupt, or a TFRecord's features
            do not match the declared ones.
        ValueError: ``shards`` or ``compression`` is out of range.
    """
    if shards < 1:
        raise ValueError(f"`shards >= 1` must hold, but got {shards}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, but got {compression!r}")
    kind = _KINDS[spec.source.kind]
    inspection = kind.inspect(spec)
    if inspection.problems:
        raise SourceError(format_problems(inspection.problems))
    digest = content_hash(spec.source.model_dump(mode="json"), inspection.inputs, inspection.facts)
    folder = Path(root).absolute() / digest / f"{shards}-{compression}"
    reused = find_complete(folder, shards, compression, digest)
    if reused is not None:
        return reused
    records = kind.records(spec, inspection)
    return write_set(folder, records, shards, compression, inspection.require_schema(), digest)
