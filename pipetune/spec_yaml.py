"""YAML with positions: load a document and remember where every key and item stood.

Uses PyYAML's SafeLoader (``yaml.safe_load`` semantics) and walks the node tree beside the
constructed value, so a validation error can name ``file:line:col`` and the dotted key.
Duplicate keys, which ``safe_load`` silently accepts, are reported here as errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from pipetune.errors import SpecError

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(frozen=True, slots=True)
class LocatedDocument:
    """A loaded YAML document plus the position of every dotted path in it."""

    filename: str
    data: Any
    positions: dict[Path, Position]

    def position_of(self, path: Path) -> Position:
        """Position of ``path``, or of its nearest ancestor that exists in the file."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, Position(1, 1))

    def problem(self, path: Path, message: str) -> str:
        pos = self.position_of(path)
        dotted = ".".join(path) or "<document>"
        return f"{self.filename}:{pos.line}:{pos.column}: {dotted}: {message}"


def load_located(text: str, filename: str) -> LocatedDocument:
    """Parse ``text`` with safe_load semantics and record positions; raise SpecError on bad YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError(
            [f"{filename}:{line}:{col}: <document>: YAML syntax error: {err.problem or err}"]
        ) from None
    except yaml.YAMLError as err:
        raise SpecError([f"{filename}:1:1: <document>: YAML error: {err}"]) from None
    finally:
        loader.dispose()
    positions: dict[Path, Position] = {}
    duplicates: list[str] = []
    if node is not None:
        _walk(node, (), positions, duplicates, filename)
    if duplicates:
        raise SpecError(duplicates)
    return LocatedDocument(filename, data, positions)


def _walk(
    node: yaml.Node,
    path: Path,
    positions: dict[Path, Position],
    duplicates: list[str],
    filename: str,
) -> None:
    positions.setdefault(path, _position(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, Position] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = _position(key_node)
            if key in seen:
                first = seen[key]
                dotted = ".".join((*path, key))
                duplicates.append(
                    f"{filename}:{here.line}:{here.column}: {dotted}: duplicate key; "
                    f"each key may appear once, but it is also at line {first.line}"
                )
                continue
            seen[key] = here
            positions[(*path, key)] = here
            _walk(value_node, (*path, key), positions, duplicates, filename)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, str(index)), positions, duplicates, filename)


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)
