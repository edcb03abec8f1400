"""Writing a source's records as N TFRecord shards with a manifest, and reusing them.

Layout: ``root/<content hash>/<shards>-<compression>/`` holds the shard files and
``manifest.json``. A set is written into a hidden temporary folder beside it, the manifest
last, and the folder is renamed into place only when complete; so a folder with a manifest
is complete, and anything else (an interrupted write) is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipetune.dimensions import TF_COMPRESSION
from pipetune.sources.common import Schema

# Bump when the records written for an unchanged source would differ: old sets are then unused.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPRESSIONS = ("none", "gzip", "zlib")
_SUFFIX = {"none": ".tfrecord", "gzip": ".tfrecord.gz", "zlib": ".tfrecord.zz"}
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a complete shard set holds; stored as ``manifest.json``, written last.

    Attributes:
        num_examples: records over all shards.
        total_bytes: size of all shard files on disk (after compression).
        schema: feature name -> ``{"type": ..., "shape": [...]}`` of every record.
        content_hash: hash of the source definition and its input files' identities.
        shard_counts: records per shard, in shard order; they differ by at most one.
        created_by: the writer and its format version, and the TensorFlow version.
    """

    num_examples: int
    total_bytes: int
    schema: dict[str, dict]
    content_hash: str
    shard_counts: tuple[int, ...]
    created_by: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**{**data, "shard_counts": tuple(data["shard_counts"])})


@dataclass(frozen=True, slots=True)
class ShardSet:
    """A complete set of TFRecord shards.

    Attributes:
        files: absolute shard paths, in shard order.
        compression: "none", "gzip" or "zlib"; :func:`tf_compression` gives TensorFlow's name.
        manifest: what the set holds.
        written: True when this call wrote the set, False when it reused a complete one
            (not compared: sets are equal when they hold the same shards).
    """

    files: tuple[str, ...]
    compression: str
    manifest: Manifest
    written: bool = field(default=False, compare=False)


def tf_compression(compression: str) -> str:
    """The ``compression_type`` string TensorFlow's TFRecord reader and writer take."""
    return TF_COMPRESSION[compression]


def content_hash(
    definition: dict[str, Any], inputs: Sequence[Path], facts: Sequence[str] = ()
) -> str:
    """Hash of a source definition, each input file's identity (path, size, mtime_ns) and facts.

    Files are stat-ed, never read: a changed file changes its size or mtime.
    """
    identities = []
    for path in inputs:
        stat = path.stat()
        identities.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps(
        {"format": FORMAT_VERSION, "source": definition, "inputs": identities, "facts": facts},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_names(shards: int, compression: str) -> list[str]:
    return [f"part-{i:05d}-of-{shards:05d}{_SUFFIX[compression]}" for i in range(shards)]


def find_complete(folder: Path, shards: int, compression: str, digest: str) -> ShardSet | None:
    """The shard set in ``folder`` if it is complete and of this content; otherwise None."""
    try:
        manifest = Manifest.from_json((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing (interrupted write) or unreadable
    files = tuple(str(folder / name) for name in shard_names(shards, compression))
    if manifest.content_hash != digest or len(manifest.shard_counts) != shards:
        return None
    if not all(os.path.isfile(path) for path in files):
        return None
    return ShardSet(files=files, compression=compression, manifest=manifest, written=False)


def write_set(
    folder: Path,
    records: Iterable[bytes],
    shards: int,
    compression: str,
    schema: Schema,
    digest: str,
) -> ShardSet:
    """Writes ``records`` round-robin into a temporary folder, then renames it to ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)
    temporary = folder.parent / f"{_TEMP_PREFIX}{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        counts, created_by = _write_shards(temporary, records, shards, compression)
        total = sum(path.stat().st_size for path in temporary.iterdir())
        manifest = Manifest(
            num_examples=sum(counts),
            total_bytes=total,
            schema={name: spec.model_dump(mode="json") for name, spec in schema.items()},
            content_hash=digest,
            shard_counts=tuple(counts),
            created_by=created_by,
        )
        _write_text_atomically(temporary / MANIFEST_NAME, manifest.to_json())
        return _move_into_place(temporary, folder, shards, compression, digest)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already unless something failed


def _write_shards(
    folder: Path, records: Iterable[bytes], shards: int, compression: str
) -> tuple[list[int], str]:
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=tf_compression(compression))
    counts = [0] * shards
    names = shard_names(shards, compression)
    writers = [tf.io.TFRecordWriter(str(folder / name), options) for name in names]
    try:
        for index, record in enumerate(records):
            writers[index % shards].write(record)  # round-robin: counts differ by at most one
            counts[index % shards] += 1
    finally:
        for writer in writers:
            writer.close()
    return counts, f"pipetune.sources/{FORMAT_VERSION} tensorflow/{tf.__version__}"


def _write_text_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _move_into_place(
    temporary: Path, folder: Path, shards: int, compression: str, digest: str
) -> ShardSet:
    if folder.exists():
        existing = find_complete(folder, shards, compression, digest)
        if existing is not None:  # another process finished the same set first
            return existing
        shutil.rmtree(folder)  # an incomplete or foreign set: never reused
    try:
        os.rename(temporary, folder)
    except OSError:
        existing = find_complete(folder, shards, compression, digest)
        if existing is None:
            raise
        return existing
    complete = find_complete(folder, shards, compression, digest)
    assert complete is not None, f"the set just written to {folder} must be complete"
    return ShardSet(complete.files, compression, complete.manifest, written=True)


def remove_stale_temporaries(parent: Path) -> None:
    """Removes temporary folders left by writers that are no longer running."""
    for path in parent.glob(f"{_TEMP_PREFIX}*"):
        try:
            pid = int(path.name.rsplit("-", 2)[-2])
        except (IndexError, ValueError):
            continue
        if not _process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
