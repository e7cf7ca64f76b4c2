"""The layout rules of the package, checked on its source (no import needed).

- No import cycles between edgekit modules, counting imports inside functions too:
  a lazy import hides a cycle from Python but not from a reader.
- ``structure`` (layer shapes as data) does not depend on ``models`` (the zoo).
- ``resolve_preprocess`` lives beside ``Preprocess``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgekit"


def import_graph() -> dict[str, set[str]]:
    """Module -> the edgekit modules it imports anywhere in its source."""
    files = {
        ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PKG.rglob("*.py")
    }
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep, [*stack, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert "edgekit.pipeline" in graph and graph["edgekit.pipeline"], "the graph is empty"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_structure_does_not_import_models():
    assert "edgekit.models" not in import_graph()["edgekit.structure"]


def test_resolve_preprocess_beside_preprocess():
    from edgekit import pipeline, preprocess

    assert hasattr(preprocess, "resolve_preprocess")
    assert not hasattr(pipeline, "resolve_preprocess")
