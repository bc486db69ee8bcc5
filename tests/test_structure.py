"""Import structure: which sdopt modules may import which (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Cycles that exist and are accepted, each a lazy import one way: a package importing the
# registrations that import it back, a renderer and its report, a CLI entry and what it exposes.
KNOWN_CYCLES = [
    {"sdopt", "sdopt.layouts", "sdopt.manifest", "sdopt.runtime.load", "sdopt.runtime.pipeline"},  # sdopt.load/__version__
    {"sdopt.export", "sdopt.export.targets"},  # the exporter registrations, imported last by their registry
    {"sdopt.quant", "sdopt.quant.schemes"},  # the capability table reads the registrations
    {"sdopt.bench.html", "sdopt.bench.report"},
    {"sdopt.export.onnx", "sdopt.export.onnx_fp16", "sdopt.export.onnx_optimize"},
]


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in (SRC / "sdopt").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_new_import_cycle():
    found = cycles(import_graph())
    assert found, "the known cycles were not found: is the graph built from the sources?"
    assert [c for c in found if c not in KNOWN_CYCLES] == []


def test_quant_builds_on_runtime_and_runtime_reaches_quantizers_only_through_their_registry():
    graph = import_graph()
    runtime_to_quant = {(m, t) for m, ts in graph.items() if m.startswith("sdopt.runtime") for t in ts if t.startswith("sdopt.quant")}
    assert runtime_to_quant == {("sdopt.runtime.torch", "sdopt.quant")}
    assert ("sdopt.quant.torch_weights", "sdopt.runtime.torch") in {(m, t) for m, ts in graph.items() for t in ts}
