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
from pipetune.spec import OP_TYPES, Call, PreprocessStep, Spec, SOURCE_TYPES as _SOURCE_TYPES
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
    except UnicodeDecodeError as err:
        raise SpecError([f"{path}:1:1: <document>: the spec must be UTF-8 text, but byte "
                         f"{err.start} is not ({err.reason})"]) from None
    document = load_located(text, str(path))
    if not isinstance(document.data, dict):
        given = "an empty file" if document.data is None else f"a {type(document.data).__name__}"
        message = f"the spec must be a mapping of keys to values, but got {given}"
        raise SpecError([document.problem((), message)])
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
    # Each branch of a union (e.g. ``PositiveInt | "autotune"``) reports at the same place:
    # merge them into one line that lists every alternative.
    found: dict[tuple[str, ...], list[str]] = {}
    for item in err.errors(include_url=False):
        where = _yaml_path(item["loc"], document.data, item["type"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):  # e.g. source.kind
            where = (*where, item["ctx"]["discriminator"].strip("'"))
        messages = found.setdefault(where, [])
        message = _message(item, where, document.data)
        if message not in messages:
            messages.append(message)
    return [document.problem(where, _alternatives(messages)) for where, messages in found.items()]


def _alternatives(messages: list[str]) -> str:
    """``should be A, but got x`` and ``should be B, but got x``: ``should be A or B, but got x``."""
    got = messages[0].rpartition(", but got ")[2]
    suffix = f", but got {got}"
    if len(messages) == 1 or not all(m.endswith(suffix) for m in messages):
        return "; ".join(messages)
    wants = [m.removesuffix(suffix) for m in messages]
    wants[1:] = [w.removeprefix("input should be ") for w in wants[1:]]
    return " or ".join(wants) + suffix


def _yaml_path(loc: tuple[Any, ...], data: Any, kind: str) -> tuple[str, ...]:
    """The error's path as written in the YAML: drops union tags that pydantic adds to ``loc``."""
    path: list[str] = []
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif not (last and kind == "missing"):
            continue  # a union tag such as the source's kind or "constrained-int": not in the file
        path.append(str(part))
    return tuple(path)


def _message(item: dict[str, Any], where: tuple[str, ...], data: Any) -> str:
    kind, given = item["type"], item.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(where, data)
    if kind in ("missing", "union_tag_not_found"):
        return "is required but missing"
    if kind == "union_tag_invalid":
        return f"must be one of {item['ctx']['expected_tags']}, but got {item['ctx']['tag']!r}"
    if kind == "too_short":
        return f"must list at least {item['ctx']['min_length']} value(s), but got {given!r}"
    text = item["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "assertion_error"):
        return text
    return f"{_lower_first(text)}, but got {given!r}"


def _unknown_key(where: tuple[str, ...], data: Any) -> str:
    known = _known_keys(where[:-1], data)
    close = difflib.get_close_matches(where[-1], known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown key {where[-1]!r}{hint}"


def _known_keys(parent: tuple[str, ...], data: Any) -> list[str]:
    """Field names of the model at ``parent``, following the source kind and op names."""
    model: Any = Spec
    node = data
    for part in parent:
        node = node[int(part)] if isinstance(node, list) else node.get(part, {})
        if part.isdigit():
            continue
        if model is Spec and part == "source":
            model = _SOURCE_TYPES.get(node.get("kind") if isinstance(node, dict) else None)
        elif part in OP_TYPES and model is PreprocessStep:
            model = OP_TYPES[part]
        else:
            field = getattr(model, "model_fields", {}).get(part)
            model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return [k for k in getattr(model, "model_fields", {}) if k != "base_dir"]


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


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
