"""Load ``data.yaml`` into a Spec, or fail before any work runs with precise error lines.

Each problem reads ``file:line:col: dotted.key: what must hold, but got what``. Checks run in
three layers: YAML syntax and duplicate keys, the pydantic models, then facts about the world
(files exist, user functions import, input keys exist in the source's schema).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipetune import sources
from pipetune.errors import SpecError
from pipetune.spec import Call, Spec
from pipetune.spec_yaml import LocatedDocument, load_located


def load_spec(path: str | Path) -> Spec:
    """Read and validate a dataset spec.

    Args:
        path: the ``data.yaml`` file.

    Returns:
        The frozen, validated Spec; relative paths in it resolve against the file's folder.

    Raises:
        SpecError: with one line per problem, each naming ``file:line:col`` and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError([f"{path}:1:1: <document>: cannot read the spec: {err.strerror}"]) from None
    document = load_located(text, str(path))
    if not isinstance(document.data, dict):
        raise SpecError([document.problem((), "the spec must be a mapping of keys to values")])
    data = {**document.data, "base_dir": str(path.resolve().parent)}
    if "base_dir" in document.data:
        raise SpecError([document.problem(("base_dir",), "is not a spec key; it is set by pipetune")])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_explain(err, document)) from None
    problems = [document.problem(where, what) for where, what in _world_problems(spec)]
    if problems:
        raise SpecError(problems)
    return spec


def _explain(err: ValidationError, document: LocatedDocument) -> list[str]:
    lines = []
    for item in err.errors(include_url=False):
        where = tuple(str(part) for part in item["loc"])
        lines.append(document.problem(where, _message(item, where)))
    return list(dict.fromkeys(lines))  # unions can repeat one problem


def _message(item: dict[str, Any], where: tuple[str, ...]) -> str:
    kind, given = item["type"], item.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(where)
    if kind == "missing":
        return "is required but missing"
    text = item["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return text
    return f"{_lower_first(text)}, but got {given!r}"


def _unknown_key(where: tuple[str, ...]) -> str:
    known = _known_keys(where[:-1])
    close = difflib.get_close_matches(where[-1], known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown key {where[-1]!r}{hint}"


def _known_keys(parent: tuple[str, ...]) -> list[str]:
    """Field names of the model at ``parent`` (best effort: walks the Spec's annotations)."""
    model: Any = Spec
    for part in parent:
        if part.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return _source_keys() if part == "source" else []
        model = _model_in(field.annotation)
    keys = list(getattr(model, "model_fields", {}))
    return [k for k in keys if k != "base_dir"] or _source_keys()


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _source_keys() -> list[str]:
    from pipetune import spec as spec_module

    names: set[str] = set()
    for cls in (spec_module.SyntheticImagesSource, spec_module.TFRecordSource, spec_module.CsvSource,
                spec_module.ImageFolderSource, spec_module.NpzSource):
        names.update(cls.model_fields)
    return sorted(names)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _world_problems(spec: Spec) -> Iterator[tuple[tuple[str, ...], str]]:
    yield from sources.check_source(spec)
    yield from _call_problems(spec)
    try:
        schema = sources.schema_of(spec)
    except Exception as err:  # noqa: BLE001 - any failure to read the schema is a spec problem
        yield ("source",), f"cannot read the source's schema: {err}"
        return
    yield from _key_problems(spec, set(schema))


def _call_problems(spec: Spec) -> Iterator[tuple[tuple[str, ...], str]]:
    refs = [(("preprocess", str(i), "call", "fn"), op.fn) for i, op in enumerate(spec.ops)
            if isinstance(op, Call)]
    if spec.model.call:
        refs.append((("model", "call"), spec.model.call))
    for where, ref in refs:
        problem = import_problem(ref, spec.base_dir)
        if problem:
            yield where, problem


def import_problem(ref: str, base_dir: str) -> str | None:
    """Why ``module:function`` cannot be imported from ``base_dir`` or site-packages, or None."""
    module_name, _, attr = ref.partition(":")
    with on_sys_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - user code may raise anything on import
            return f"cannot import module {module_name!r} for {ref!r}: {type(err).__name__}: {err}"
    if not callable(getattr(module, attr, None)):
        return f"module {module_name!r} has no callable {attr!r}"
    return None


@contextmanager
def on_sys_path(folder: str) -> Iterator[None]:
    """Make the spec's folder importable, as the user expects, for the duration of a block."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _key_problems(spec: Spec, known: set[str]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Feature keys must exist when they are used. User calls may add keys, so stop checking there."""
    available = set(known)
    for i, op in enumerate(spec.ops):
        if isinstance(op, Call):
            return
        key = getattr(op, "key", None)
        if key is not None and key not in available:
            yield ("preprocess", str(i)), f"key {key!r} is not a feature; known: {sorted(available)}"
    for key in spec.inputs.feature_keys:
        if key not in available:
            yield ("inputs", "features"), f"{key!r} is not a feature; known: {sorted(available)}"
    if spec.inputs.label not in available:
        yield ("inputs", "label"), f"{spec.inputs.label!r} is not a feature; known: {sorted(available)}"
