"""A sample of a source's records for the data check: the first, the last and a seeded random
few of every input file, each named by where it came from (file and record index or row).

Records are the ``tf.train.Example`` bytes the shards would hold, so the check parses them
with the spec's own ops. Uncompressed and gzip TFRecord files are framed in Python (a seek per
record), so a sample costs the records read, not the file.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipetune.errors import SourceError
from pipetune.spec import CsvSource, ImageFolderSource, NpzSource, ParquetSource, Spec, TFRecordSource

HEAD, TAIL, RANDOM = 8, 8, 16  # records per file: first, last, seeded random
MAX_IMAGE_FILES = 2000  # an image folder: every image up to this many, else a seeded sample
MAX_RECORDS = 2000  # TFRecord: records over all files; many files get fewer each (at least 2)
MAX_SCAN_RECORDS = 100_000  # TFRecord: records framed per file; a longer file's tail is not seen
MAX_FULL_READ_BYTES = 64 * 2**20  # a CSV/Parquet file larger than this: only its first rows
SYNTHETIC_RECORDS = 2  # generated from a seed: only the ops can be wrong
_SEED = 0


@dataclass(frozen=True, slots=True)
class Sample:
    where: str  # "path: record 3", "path: row 5" or an image's path
    record: bytes  # serialized tf.train.Example


def pick(count: int, head: int = HEAD, tail: int = TAIL, extra: int = RANDOM) -> list[int]:
    """Sorted indices: the first ``head``, the last ``tail`` and ``extra`` seeded others."""
    chosen = set(range(min(head, count))) | set(range(max(0, count - tail), count))
    rest = [i for i in range(count) if i not in chosen] if count <= 100_000 else None
    if rest is not None:
        chosen |= set(random.Random(_SEED).sample(rest, min(extra, len(rest))))
    else:  # huge: draw without listing every index
        chosen |= {random.Random(_SEED + i).randrange(count) for i in range(extra)}
    return sorted(chosen)


def sample_records(spec: Spec) -> Iterator[Sample]:
    """The sample of ``spec``'s source (it must pass ``check_source`` first)."""
    from pipetune import sources

    kind = sources._KINDS[spec.source.kind]
    inspection = kind.inspect(spec)
    if inspection.problems:
        raise SourceError(sources.format_problems(inspection.problems))
    source = spec.source
    if isinstance(source, TFRecordSource):
        per_file = max(2, min(HEAD + TAIL + RANDOM, MAX_RECORDS // len(inspection.inputs)))
        for path in inspection.inputs:
            yield from _tfrecord_sample(path, source.compression, per_file)
    elif isinstance(source, ImageFolderSource):
        yield from _image_sample(inspection)
    elif isinstance(source, (CsvSource, ParquetSource, NpzSource)):
        yield from _row_sample(spec, inspection)
    else:  # synthetic
        for index, record in enumerate(itertools.islice(kind.records(spec, inspection), SYNTHETIC_RECORDS)):
            yield Sample(f"synthetic image {index}", record)


def _tfrecord_sample(path: Path, compression: str, per_file: int) -> Iterator[Sample]:
    if compression == "zlib":  # no seekable zlib stream in Python: the first records only
        for index, record in enumerate(itertools.islice(_tf_read(path, "ZLIB"), per_file)):
            yield Sample(f"{path}: record {index}", record)
        return
    ends = max(1, per_file // 4)
    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rb") as stream:
        if compression == "none" and stream.read(2) == b"\x1f\x8b":
            raise SourceError(f"{path}: starts like a gzip file, but source.compression is 'none'; "
                              "set it to gzip")
        stream.seek(0)
        offsets = _record_offsets(stream, path)
        for index in pick(len(offsets), ends, ends, per_file - 2 * ends):
            stream.seek(offsets[index][0])
            yield Sample(f"{path}: record {index}", stream.read(offsets[index][1]))


def _record_offsets(stream, path: Path) -> list[tuple[int, int]]:
    """(data offset, length) of every record, from the TFRecord framing: length (8 bytes),
    its CRC (4), the data, the data's CRC (4)."""
    offsets, position = [], 0
    while len(offsets) < MAX_SCAN_RECORDS and (header := stream.read(12)):
        if len(header) < 12:
            raise SourceError(f"{path}: record {len(offsets)}: the file ends inside a record's "
                              "header (truncated, or source.compression is wrong)")
        (length,) = struct.unpack("<Q", header[:8])
        end = position + 16 + length
        # A plain file seeks past its end without complaint: compare with its size instead.
        size = os.fstat(stream.fileno()).st_size if isinstance(stream, io.BufferedReader) else None
        stream.seek(length + 4, 1)
        if (size is not None and end > size) or stream.tell() != end or length > 2**40:
            raise SourceError(f"{path}: record {len(offsets)}: the file ends inside the record "
                              f"(it declares {length} bytes; truncated, or source.compression is wrong)")
        offsets.append((position + 12, length))
        position = end
    return offsets


def _tf_read(path: Path, compression: str) -> Iterator[bytes]:
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(str(path), compression_type=compression).as_numpy_iterator():
        yield record


def _image_sample(inspection) -> Iterator[Sample]:
    from pipetune.sources.common import IMAGE_SCHEMA, example_encoder

    encode = example_encoder(IMAGE_SCHEMA)
    images: Sequence[Path] = inspection.inputs
    indices = range(len(images)) if len(images) <= MAX_IMAGE_FILES else pick(
        len(images), HEAD, TAIL, MAX_IMAGE_FILES - HEAD - TAIL)
    for index in indices:
        path, label = images[index], inspection.detail[index]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SourceError(f"{path}: cannot be read: {err.strerror}") from None
        yield Sample(str(path), encode({"image": [data], "label": [label]}))


def _row_sample(spec: Spec, inspection) -> Iterator[Sample]:
    import numpy as np
    import pandas as pd

    from pipetune.sources import tabular
    from pipetune.sources.common import as_feature_lists, example_encoder

    (path,) = inspection.inputs
    schema = inspection.require_schema()
    if isinstance(spec.source, NpzSource):
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in schema}
        indices = pick(len(next(iter(arrays.values()))))
        encode = example_encoder(schema)
        columns = {name: as_feature_lists(array[indices], schema[name].type) for name, array in arrays.items()}
        records = [encode({name: values[i] for name, values in columns.items()}) for i in range(len(indices))]
    else:
        frame = pd.concat(list(_frames(spec, inspection, path)))
        indices = pick(len(frame))
        records = list(tabular._frame_records([frame.iloc[indices]], schema, path))
    for index, record in zip(indices, records, strict=True):
        # Rows count from 1 as a person reads the file (the header is not a row).
        yield Sample(f"{path}: row {index + 1}", record)


def _frames(spec: Spec, inspection, path: Path) -> Iterator:
    from pipetune.sources import tabular

    chunks = (tabular._csv_chunks(path, inspection.detail) if isinstance(spec.source, CsvSource)
              else tabular._parquet_chunks(path, inspection.detail))
    if path.stat().st_size > MAX_FULL_READ_BYTES:
        return itertools.islice(chunks, 1)  # a large file: its first chunk of rows only
    return chunks
