"""CSV and Parquet files through pandas: one Example per row, one scalar feature per column.

Integer and bool columns become int64, float columns float32, string columns bytes (UTF-8).
The label column is a feature like any other, named as the column. The schema comes from a
cheap look (a CSV's first rows, a Parquet file's footer); the full read keeps to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipetune.errors import SourceError
from pipetune.sources.common import (
    Inspection,
    Problem,
    Schema,
    example_encoder,
    label_problems,
    name_problems,
)
from pipetune.spec import CsvSource, FeatureSpec, ParquetSource, Spec

SAMPLE_ROWS = 1000  # rows a CSV's column types are inferred from
CHUNK_ROWS = 8192  # rows held in memory at a time while writing
_SUPPORTED = "integer, float, bool or string"


def schema_of(spec: Spec) -> Schema:
    """Column name -> FeatureSpec; raises SourceError when the file cannot give one."""
    return inspect(spec).require_schema()


def inspect(spec: Spec) -> Inspection:
    """Reads a CSV's header and first rows, or a Parquet file's schema, and checks the columns."""
    source = spec.source
    assert isinstance(source, (CsvSource, ParquetSource)), source.kind
    path = spec.resolve(source.path).absolute()  # absolute: messages name it
    if not path.is_file():
        message = f"{source.kind} file {source.path!r} must exist, but {path} does not"
        return Inspection(schema=None, problems=((("source", "path"), message),))
    look = _look_csv if isinstance(source, CsvSource) else _look_parquet
    types, problems, detail = look(path)
    if types is not None:
        problems += _column_problems(types, source.label, path)
    schema = None if problems else {name: FeatureSpec(type=t) for name, t in types.items()}
    return Inspection(schema=schema, problems=tuple(problems), inputs=(path,), detail=detail)


def records(spec: Spec, inspection: Inspection) -> Iterator[bytes]:
    """One Example per row, in file order."""
    source = spec.source
    (path,) = inspection.inputs
    if isinstance(source, CsvSource):
        frames = _csv_chunks(path, inspection.detail)
    else:
        frames = _parquet_chunks(path, inspection.detail)
    return _frame_records(frames, inspection.require_schema(), path)


def _look_csv(path: Path) -> tuple[dict[str, str | None] | None, list[Problem], Any]:
    import pandas as pd

    try:
        sample = pd.read_csv(path, nrows=SAMPLE_ROWS)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # EmptyDataError, ParserError
        return None, [(("source", "path"), f"{path}: cannot be read as CSV: {err}")], None
    if sample.empty:
        return None, [_no_rows(path)], None
    types = {str(name): _pandas_type(dtype) for name, dtype in sample.dtypes.items()}
    return types, [], dict(sample.dtypes)  # the full read keeps the sample's dtypes


def _look_parquet(path: Path) -> tuple[dict[str, str | None] | None, list[Problem], Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        return None, [(("source", "path"), f"{path}: cannot be read as Parquet: {err}")], None
    if parquet.metadata.num_rows == 0:
        return None, [_no_rows(path)], None
    # pandas stores a default index as __index_level_N__: it is not data.
    fields = [f for f in parquet.schema_arrow if not f.name.startswith("__index_level_")]
    types = {f.name: _arrow_type(f.type) for f in fields}
    return types, [], list(types)


def _no_rows(path: Path) -> Problem:
    return ("source", "path"), f"{path}: must hold at least one row, but has none"


def _column_problems(types: dict[str, str | None], label: str, path: Path) -> list[Problem]:
    problems = name_problems(list(types), ("source", "path"), f"{path}: column")
    problems += [
        (("source", "path"), f"{path}: column {name!r} must be {_SUPPORTED}, but is not")
        for name, kind in types.items()
        if kind is None
    ]
    return problems + label_problems(label, list(types), "column")


def _pandas_type(dtype: Any) -> str | None:
    from pandas.api import types

    if types.is_bool_dtype(dtype) or types.is_integer_dtype(dtype):
        return "int64"
    if types.is_float_dtype(dtype):
        return "float32"
    if types.is_string_dtype(dtype) or types.is_object_dtype(dtype):
        return "bytes"
    return None


def _arrow_type(arrow_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):  # pandas categoricals
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "float32"
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    is_binary = pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
    return "bytes" if is_text or is_binary else None


def _csv_chunks(path: Path, dtypes: dict[str, Any]) -> Iterator[Any]:
    import pandas as pd

    try:
        yield from pd.read_csv(path, dtype=dtypes, chunksize=CHUNK_ROWS)
    except (ValueError, TypeError) as err:  # e.g. "Integer column has NA values"
        raise SourceError(
            f"{path}: a later row does not fit the column types inferred from the first "
            f"{SAMPLE_ROWS} rows ({err})"
        ) from err


def _parquet_chunks(path: Path, columns: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=columns):
        yield batch.to_pandas(ignore_metadata=True)


def _frame_records(frames: Iterable[Any], schema: Schema, path: Path) -> Iterator[bytes]:
    encode = example_encoder(schema)
    names = list(schema)
    for frame in frames:
        columns = [_column_values(frame[name], schema[name].type, path) for name in names]
        for row in zip(*columns, strict=True):
            yield encode({name: [value] for name, value in zip(names, row)})


def _column_values(column: Any, feature: str, path: Path) -> list[Any]:
    if feature == "float32":  # NaN is a float32 value like any other
        return column.to_numpy(np.float32).tolist()
    missing = column.isna().to_numpy()
    if missing.any():
        row = column.index[missing.argmax()]
        raise SourceError(
            f"{path}: column {column.name!r} must have a value in every row, but row {row} has none"
        )
    if feature == "int64":
        return column.to_numpy(np.int64).tolist()
    return [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in column.tolist()]
