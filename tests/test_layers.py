"""The layers of src/vgic, as a newcomer should find them, and no import cycle between modules.

    checks, compiled, events, files, memory, regs -> gicv3 -> its -> gic, profiles -> pci, machine, unicorn (ucnative)
    -> snapshot -> driver, demo, tools -> cli

A module may import from its own layer or a lower one, never from a higher one; and no
two modules may import each other, directly or around a loop, whether the import is at
the top of the file or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "vgic"

LAYERS = [
    {"checks", "compiled", "events", "files", "memory", "regs"},
    {"gicv3"},
    {"its"},
    {"gic", "profiles"},
    {"pci", "machine", "unicorn", "ucnative"},
    {"snapshot"},
    {"driver", "demo", "tools"},
    {"cli", "__main__"},
]


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["vgic", *parts])


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for n, names in enumerate(LAYERS):
        if top in names:
            return n
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = {_module(p) for p in SRC.rglob("*.py")}
    for path in SRC.rglob("*.py"):
        here = _module(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name.startswith("vgic.") and name != here:
                    found.add(name)
        graph[here] = found
    return graph


def test_every_module_is_in_a_layer_and_imports_downwards() -> None:
    wrong = []
    for module, deps in _imports().items():
        if module == "vgic":
            continue
        for dep in deps:
            if _layer(dep) > _layer(module):
                wrong.append(f"{module} imports {dep}, a higher layer")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
