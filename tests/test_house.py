"""The house rules: values flow one way (no import cycles), one registry of dimensions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipetune import dimensions
from pipetune.space import describe
from pipetune.spec import PipelineParams, SearchSpace

PACKAGE = Path(__file__).resolve().parents[1] / "pipetune"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """pipetune module -> the pipetune modules it imports, lazily inside functions too."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if not node.level else ".".join(
                    name.split(".")[:len(name.split(".")) - node.level] + [node.module])
                found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        edges[name] = {m for m in found if m in modules and m not in (name, "pipetune")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_among_pipetune_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    """Negative control: the check above can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_params_and_space_are_derived_from_the_registry():
    assert tuple(PipelineParams.model_fields) == dimensions.NAMES
    assert tuple(name for name in SearchSpace.model_fields if name != "auto") == dimensions.NAMES
    defaults = PipelineParams()
    space = SearchSpace()
    for dimension in dimensions.DIMENSIONS:
        assert getattr(defaults, dimension.name) == dimension.default
        assert getattr(space, dimension.name) == list(dimension.search)


@pytest.mark.parametrize("dimension", dimensions.DIMENSIONS, ids=lambda d: d.name)
def test_two_variants_that_differ_in_any_dimension_read_differently(dimension):
    """Was: determinism, the thread pool and compression were left out of the description."""
    values = {"interleave_cycle": 4} if dimension.name.startswith("interleave_") else {}
    base = PipelineParams(shards=4, **values)
    other_value = next(v for v in _candidates(dimension) if v != getattr(base, dimension.name))
    other = base.model_copy(update={dimension.name: other_value})
    assert describe(base) != describe(other)


def _candidates(dimension: dimensions.Dimension) -> list[object]:
    annotation = repr(dimension.annotation)
    if dimension.annotation is bool:
        return [True, False]
    if "Literal" in annotation and "int" not in annotation:
        return list(dimension.annotation.__args__)
    return [1, 2, 3]


def test_a_new_lever_at_its_default_changes_no_variant_key():
    """Keys hash only non-default values: stored studies keep their keys as levers are added."""
    import hashlib
    import json

    from pipetune.space import variant_key

    params = PipelineParams(shards=8, map_parallel="autotune", batch_size=64)
    written_out = {"shards": 8, "map_parallel": "autotune", "batch_size": 64}
    expected = hashlib.sha256(json.dumps(written_out, sort_keys=True).encode()).hexdigest()[:12]
    assert variant_key(params) == expected
