"""Import structure: which sdopt modules may import which (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Cycles that exist and are accepted, each a lazy import one way: a package importing the
# registrations that import it back, a renderer and its report, a CLI entry and what it exposes.
KNOWN_CYCLES = [
    {"sdopt", "sdopt.layouts", "sdopt.manifest", "sdopt.runtime.load", "sdopt.runtime.pipeline", "sdopt.runtime.image_parameters"},  # sdopt.load/__version__
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


# The distribution that brings a module the extras name by another name (the rest: the module's own top name).
DISTRIBUTION = {"optimum": "optimum-quanto", "modelopt": "nvidia-modelopt",
                "huggingface_hub": "diffusers"}  # huggingface_hub: a dependency of diffusers and transformers


def extras() -> dict[str | None, set[str]]:
    """pyproject's distributions per extra (None: the core install), each extra with the core's, `all` expanded."""
    import re
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]

    by_extra: dict[str, set[str]] = {}

    def names(requirements: list[str]) -> set[str]:
        out = set()
        for requirement in requirements:
            name, listed = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^]]*)\])?", requirement).groups()
            if name == "sdopt":  # sdopt[onnx,...]: those extras' distributions
                out |= {n for extra in listed.split(",") for n in by_extra[extra.strip()]}
            else:
                out.add(name.lower())
        return out

    core = names(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        by_extra[extra] = core | names(requirements)  # `all` lists sdopt[...] last, after the extras it names
    return {None: core, **by_extra}


def test_each_extra_installs_what_the_code_requires_of_it():
    """`pip install 'sdopt[X]'`, the extra an error names (errors.require) or a plug-in declares, must install every module that
    error or plug-in needs: the tensorrt extra lacked onnxruntime, which the TensorRT exporter requires (its ONNX graphs'
    parity check), so a user who installed it was told to install it again."""
    from sdopt.export import EXPORTERS
    from sdopt.quant import QUANTIZERS
    from sdopt.runtime.backends import BACKENDS

    wanted = {(p.extra, m) for registry in (EXPORTERS, QUANTIZERS, BACKENDS) for p in registry.values() for m in p.requires}
    for path in (SRC / "sdopt").rglob("*.py"):  # require("module", "extra") calls
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) == 2:
                module, extra = (getattr(a, "value", None) for a in node.args)
                if isinstance(module, str) and isinstance(extra, str):
                    wanted.add((extra, module))
    assert ("bench", "pandas") in wanted and ("tensorrt", "onnx") in wanted, "the requirements were not read from the sources"
    installs = extras()
    top = lambda module: module.split(".")[0]  # noqa: E731
    missing = sorted(f"sdopt[{extra}] lacks {module}" for extra, module in wanted
                     if DISTRIBUTION.get(top(module), top(module)).lower() not in installs[extra])
    assert missing == []
