"""A NumPy ``.npz`` file of arrays with equal first dimension: one Example per row.

Every array is a feature named as the array (the label array too), of shape
``array.shape[1:]``. The look at the file reads only each array's ``.npy`` header.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipetune.sources.common import (
    Inspection,
    Problem,
    Schema,
    as_feature_lists,
    example_encoder,
    feature_type,
    label_problems,
    name_problems,
)
from pipetune.spec import FeatureSpec, NpzSource, Spec

CHUNK_ROWS = 1024  # rows converted to Python values at a time while writing
Header = tuple[tuple[int, ...], np.dtype]  # an array's shape and dtype


def schema_of(spec: Spec) -> Schema:
    """Array name -> FeatureSpec; raises SourceError when the file cannot give one."""
    return inspect(spec).require_schema()


def inspect(spec: Spec) -> Inspection:
    """Reads the arrays' headers (shape and dtype) and checks names, types and lengths."""
    source = _source(spec)
    path = spec.resolve(source.path).absolute()  # absolute: messages name it
    where = ("source", "path")
    if not path.is_file():
        message = f"npz file {source.path!r} must exist, but {path} does not"
        return Inspection(schema=None, problems=((where, message),))
    try:
        headers = read_headers(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return Inspection(schema=None, problems=((where, f"{path}: cannot be read as npz: {err}"),))
    problems = _array_problems(headers, path) + label_problems(source.label, list(headers), "array")
    schema = None
    if not problems:
        schema = {
            name: FeatureSpec(type=feature_type(dtype), shape=shape[1:])
            for name, (shape, dtype) in headers.items()
        }
    return Inspection(schema=schema, problems=tuple(problems), inputs=(path,))


def records(spec: Spec, inspection: Inspection) -> Iterator[bytes]:
    """One Example per row (index of the first dimension), in row order."""
    schema = inspection.require_schema()
    encode = example_encoder(schema)
    with np.load(inspection.inputs[0], allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in schema}
    rows = len(next(iter(arrays.values())))
    for start in range(0, rows, CHUNK_ROWS):
        chunk = {
            name: as_feature_lists(array[start : start + CHUNK_ROWS], schema[name].type)
            for name, array in arrays.items()
        }
        for index in range(len(next(iter(chunk.values())))):
            yield encode({name: values[index] for name, values in chunk.items()})


def read_headers(path: Path) -> dict[str, Header]:
    """Array name -> (shape, dtype), from each member's ``.npy`` header only."""
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            headers[member.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    return headers


def _array_problems(headers: dict[str, Header], path: Path) -> list[Problem]:
    where = ("source", "path")
    if not headers:
        return [(where, f"{path}: must hold at least one array, but holds none")]
    problems = name_problems(list(headers), where, f"{path}: array")
    for name, (shape, dtype) in headers.items():
        if not shape:
            message = f"{path}: array {name!r} must have a row dimension, but is 0-d"
            problems.append((where, message))
        if feature_type(dtype) is None:
            problems.append(
                (where, f"{path}: array {name!r} must be bool, int, float or str, but is {dtype}")
            )
    lengths = {name: shape[0] for name, (shape, _) in headers.items() if shape}
    if len(set(lengths.values())) > 1:
        message = f"{path}: arrays must have equal first dimensions, but have {lengths}"
        problems.append((where, message))
    elif lengths and not any(lengths.values()):
        problems.append((where, f"{path}: arrays must have at least one row, but have none"))
    return problems


def _source(spec: Spec) -> NpzSource:
    assert isinstance(spec.source, NpzSource), spec.source.kind
    return spec.source
