"""The package's layering, read from the source: every import statement of every module under remit/,
those inside functions included (they run too, only later).

- `remit.common` is the floor: it imports no other part of remit.
- `remit.shards` (the format) builds on the floor only: it imports neither `remit.annotate` nor `remit.train`.
- `remit.annotate` and `remit.train` never import each other.
- No import cycle between any two modules, and no import by a computed name (importlib), which
  would hide an edge from this test.
- vLLM is imported only by `remit.annotate.engines.vllm`, Megatron only under `remit.train`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "remit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every module `module` imports (absolute names; `from pkg import mod` counts as pkg.mod)."""
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path.name == "__init__.py", node)
            for a in node.names:
                found.add(f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source)
    return found


GRAPH = {m: {i for i in imports_of(m) if i in MODULES and i != m} for m in MODULES}


def _imports_anywhere(prefix: str) -> dict[str, set[str]]:
    return {
        m: hits for m in MODULES if (hits := {i for i in imports_of(m) if i == prefix or i.startswith(prefix + ".")})
    }


def test_the_graph_is_read():
    # Guards the test itself: a parser that found nothing would pass every rule below.
    assert "remit.common.atomic" in GRAPH["remit.shards.writer"]
    assert "remit.annotate.launch" in GRAPH["remit.annotate.cli"]  # an import inside a function
    assert "remit.common.atomic" in GRAPH["remit.train.metrics"]


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("remit.common", ("remit.shards", "remit.annotate", "remit.train")),
        ("remit.shards", ("remit.annotate", "remit.train")),
        ("remit.annotate", ("remit.train",)),
        ("remit.train", ("remit.annotate",)),
    ],
)
def test_layers(package, forbidden):
    bad = sorted(
        f"{m} imports {i}"
        for m, deps in GRAPH.items()
        if m == package or m.startswith(package + ".")
        for i in deps
        if any(i == f or i.startswith(f + ".") for f in forbidden)
    )
    assert not bad, bad


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_import_by_computed_name():
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in ("import_module", "__import__"):
                    bad.append(f"{module} line {node.lineno}")
    assert not bad, bad


def test_engines_live_in_their_modules():
    vllm = _imports_anywhere("vllm")
    assert set(vllm) == {"remit.annotate.engines.vllm"}, vllm
    megatron = _imports_anywhere("megatron")
    assert megatron and all(m.startswith("remit.train.") for m in megatron), megatron
