"""Where examples come from, and how they are (re)written as N TFRecord shards.

Every source kind (synthetic images, TFRecord glob, image folder, CSV, Parquet, npz) becomes
``tf.train.Example`` records written round-robin into N shards with a manifest, under
``root/<content hash>/<shards>-<compression>/``. A shard set of an unchanged source is
reused, never rewritten. TensorFlow is imported only when records are written.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from pipetune.errors import SourceError, UsageError
from pipetune.sources import image_folder, npz, synthetic, tabular, tfrecord
from pipetune.sources.common import Inspection, Problem, format_problems
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
    "export_shards",
    "find_shards",
    "num_classes",
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


def num_classes(spec: Spec) -> int | None:
    """How many classes the source itself says it has (synthetic: its setting; an image
    folder: its class sub-folders), or None when only the data could tell."""
    if spec.source.kind == "synthetic_images":
        return spec.source.num_classes
    if spec.source.kind == "image_folder":
        inspection = image_folder.inspect(spec)
        return None if inspection.problems else len(inspection.facts)
    return None


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
    inspection, digest, folder = _where(spec, shards, compression, root)
    reused = find_complete(folder, shards, compression, digest)
    if reused is not None:
        return reused
    records = _KINDS[spec.source.kind].records(spec, inspection)
    return write_set(folder, records, shards, compression, inspection.require_schema(), digest)


def export_shards(spec: Spec, shards: int, compression: str, folder: Path) -> ShardSet:
    """The source's records as shards directly in ``folder`` (new or empty): the layout a
    ``best_pipeline.py`` reads, for the user's full or a new data set.

    Raises:
        UsageError: ``folder`` holds anything but this very shard set (nothing is deleted).
    """
    folder = Path(folder).absolute()
    inspection, digest, _ = _where(spec, shards, compression, folder)
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"--out {folder} is a file: pass a new or empty folder")
        existing = find_complete(folder, shards, compression, digest)
        if existing is not None:
            return existing
        if any(folder.iterdir()):
            raise UsageError(f"--out {folder} is not empty: pass a new or empty folder")
    records = _KINDS[spec.source.kind].records(spec, inspection)
    return write_set(folder, records, shards, compression, inspection.require_schema(), digest)


def find_shards(spec: Spec, shards: int, compression: str, root: Path) -> ShardSet | None:
    """The complete shard set that :func:`prepare_shards` would reuse, or None. Never writes:
    readers of a finished sweep (emit, report, ``best_pipeline()``) use this."""
    try:
        _, digest, folder = _where(spec, shards, compression, root)
    except SourceError:
        return None
    return find_complete(folder, shards, compression, digest)


def _where(spec: Spec, shards: int, compression: str, root: Path) -> tuple[Inspection, str, Path]:
    """The source's inspection, its content hash and the folder its shard set belongs in."""
    inspection = _KINDS[spec.source.kind].inspect(spec)
    if inspection.problems:
        raise SourceError(format_problems(inspection.problems))
    digest = content_hash(spec.source.model_dump(mode="json"), inspection.inputs, inspection.facts)
    return inspection, digest, Path(root).absolute() / digest / f"{shards}-{compression}"
