"""The data check: before any trial, a sample of every input file goes through the spec's own
parse and preprocess ops, so bad data stops the sweep with one line instead of failing every trial.

Two layers. The cheap one needs no TensorFlow (a CSV column of numbers with a stray word in it).
The full one renders the Plan with default parameters, runs the sample through its ``prepare``,
``augment`` and ``to_model_inputs`` as tf.data does (graph mode, errors dropped and counted), then
re-runs the first failing record eagerly to name the file, the record, the feature and the op.
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipetune.errors import SourceError
from pipetune.render_ops import render_op
from pipetune.spec import Call, CsvSource, DecodeImage, PipelineParams, Spec

CHUNK = 256  # records per tf.data pass: bounds memory for an image folder's files
NEEDS_TENSORFLOW = "data check skipped: parsing a sample of the data needs TensorFlow " \
                   "(pip install 'pipetune[cpu]')"


def tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def check_data(spec: Spec, log_path: Path | None = None) -> None:
    """Raise SourceError with one line naming the file, record, feature and problem, or return.

    Args:
        spec: a validated spec whose source passed ``check_source``.
        log_path: where TensorFlow's and libjpeg's own chatter goes (default: nowhere).
    """
    cheap_check(spec)
    with quiet_stderr(log_path):
        _tensorflow_check(spec)


def cheap_check(spec: Spec) -> None:
    """What needs no TensorFlow: a CSV column used as a number that holds a word in a row."""
    if isinstance(spec.source, CsvSource):
        problem = _numeric_column_problem(spec)
        if problem:
            raise SourceError(problem)


def _numerically_used(spec: Spec) -> set[str]:
    """Keys the ops or the model read as numbers, up to the first user call (it may convert)."""
    used: set[str] = set()
    for op in spec.ops:
        if isinstance(op, Call):
            return used
        if getattr(op, "key", None) and not isinstance(op, DecodeImage):
            used.add(op.key)
    return used | set(spec.inputs.feature_keys) | {spec.inputs.label}


def _numeric_column_problem(spec: Spec) -> str | None:
    import pandas as pd

    from pipetune.sources import schema_of
    from pipetune.sources.tabular import SAMPLE_ROWS

    path = spec.resolve(spec.source.path).absolute()
    text_columns = [name for name, feature in schema_of(spec).items()
                    if feature.type == "bytes" and name in _numerically_used(spec)]
    if not text_columns:
        return None
    sample = pd.read_csv(path, nrows=SAMPLE_ROWS, dtype=str, usecols=text_columns)
    for name in text_columns:
        values = sample[name].dropna()
        not_numbers = pd.to_numeric(values, errors="coerce").isna()
        numbers = int((~not_numbers).sum())
        if not_numbers.any() and numbers >= not_numbers.sum():
            row = not_numbers.idxmax()
            return (f"{path}: row {row + 1}: column {name!r}: {values[row]!r} is not a number, but "
                    f"{numbers} of the first {len(values)} values are; the column is used as a number")
    return None


def _tensorflow_check(spec: Spec) -> None:
    from pipetune.sources.sample import sample_records
    from pipetune.user_code import on_sys_path

    with tempfile.TemporaryDirectory(prefix="pipetune-datacheck-") as folder, on_sys_path(spec.base_dir):
        module = _pipeline_module(spec, Path(folder))
        pipeline = _pipeline_function(module)
        batch: list[Any] = []
        for sample in sample_records(spec):
            batch.append(sample)
            if len(batch) == CHUNK:
                _check_chunk(spec, module, pipeline, batch)
                batch = []
        if batch:
            _check_chunk(spec, module, pipeline, batch)


def _pipeline_module(spec: Spec, folder: Path) -> Any:
    from pipetune.plan import DataLayout, Plan
    from pipetune.sources import schema_of

    layout = DataLayout(str(folder / "none.tfrecord"), "none", schema_of(spec))
    return Plan.from_variant(spec, PipelineParams(), layout).load_module(folder)


def _pipeline_function(module: Any) -> Any:
    """Record -> model inputs, through every op as in training (random ops included)."""
    augment = getattr(module, "augment", lambda example, training=True: example)
    return lambda record: module.to_model_inputs(augment(module.prepare(record), True))


def _check_chunk(spec: Spec, module: Any, pipeline: Any, samples: Sequence[Any]) -> None:
    import tensorflow as tf

    records = [s.record for s in samples]
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(records)), records))
    dataset = dataset.map(lambda index, record: (index, pipeline(record)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    try:
        passed = {int(index) for index, _ in dataset.as_numpy_iterator()}
    except tf.errors.OpError:  # fails for every record (e.g. no kernel for a cast of text)
        passed = set()
    failed = [i for i in range(len(records)) if i not in passed]
    if failed:
        sample = samples[failed[0]]
        raise SourceError(explain(spec, module, pipeline, sample.where, sample.record))


def explain(spec: Spec, module: Any, pipeline: Any, where: str, record: bytes) -> str:
    """One line: where, which feature and op, what TensorFlow said. Re-runs eagerly to know."""
    try:
        pipeline(record)
    except Exception as err:  # noqa: BLE001 - any failure of the user's pipeline is the answer
        what = tensorflow_text(err)
        return f"{where}: {_stage(spec, err, module.__file__, what)}{what}"
    return f"{where}: fails in tf.data's graph mode but not eagerly (a user function?)"


def _stage(spec: Spec, err: BaseException, module_file: str, what: str) -> str:
    """``feature 'image' (preprocess op 1, decode_image): `` from the failing line of the module."""
    lines = [f.line.strip() for f in traceback.extract_tb(err.__traceback__)
             if f.filename == module_file and f.line]
    line = lines[-1] if lines else ""
    if "parse_single_example" in line:
        missing = re.search(r"Feature: (\w+)", what)
        if missing:
            return f"feature {missing.group(1)!r}: "
        return "not a tf.train.Example: " if "Could not parse example" in what else "parse: "
    for index, step in enumerate(spec.preprocess):
        if line and line in (text.strip() for text in render_op(step.op, f"user_fn_{index}")):
            key = getattr(step.op, "key", None)
            feature = f"feature {key!r} " if key else ""
            return f"{feature}(preprocess op {index + 1}, {step.name}): "
    if line.startswith("return") and "example[" in line:
        return f"model inputs (inputs: features {list(spec.inputs.feature_keys)}, label {spec.inputs.label!r}): "
    return ""


def tensorflow_text(err: BaseException) -> str:
    """TensorFlow's own words, without its function-node and op decorations, on one line."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^]]*\]\]|\[Op:\w+\].*$", "", text, flags=re.S)
    # A record that is not an Example is quoted back: keep binary bytes off the terminal.
    text = " ".join("".join(c if c.isprintable() or c.isspace() else "?" for c in text).split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def quiet_stderr(log_path: Path | None) -> Iterator[None]:
    """TensorFlow's start-up lines and libjpeg's warnings go to ``log_path`` (or nowhere),
    not over the terminal: they are written by C code straight to file descriptor 2."""
    target = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(2)
    os.dup2(target, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)
