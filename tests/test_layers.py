"""The layer rule of the design notes: imports only point down (lazy imports inside functions included), L1 siblings
do not import each other, no import cycles between modules, and the engine names no task, metric or target."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "visionlab"
LEVEL = {"config": 0, "registry": 0, "utils": 0,
         "data": 1, "models": 1, "metrics": 1, "engine": 1, "deploy": 1, "explain": 1, "search": 1,
         "tasks": 2, "run": 3, "views": 4, "experiments": 4.5,
         "api": 5, "cli": 5, "app": 5, "__main__": 5, "__init__": 6}
L1 = {"data", "models", "metrics", "engine", "deploy", "explain", "search"}
FACES = {"api", "cli", "app", "__main__", "__init__"}        # L5 faces may use each other (cli -> api, cli -> app)


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path):
    """(line, imported module path inside the package) for every import, lazy ones too."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("visionlab"):
                    continue
                base = node.module.split(".")[1:]
            else:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            for a in node.names:                 # `from . import x` imports the module x when it is one
                full = base + [a.name]
                yield node.lineno, ".".join(full if _exists(full) else base) or "__init__"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("visionlab."):
                    yield node.lineno, ".".join(a.name.split(".")[1:])


def _exists(parts: list[str]) -> bool:
    p = PKG.joinpath(*parts)
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def test_imports_point_down():
    bad = []
    for path in PKG.rglob("*.py"):
        room = _room(_module(path))
        for line, target in _imports(path):
            troom = _room(target)
            if troom == room:
                continue
            if troom not in LEVEL:
                bad.append(f"{path.relative_to(PKG)}:{line} imports {target}, a room test_layers does not know")
            elif LEVEL[troom] > LEVEL[room] or (room in L1 and troom in L1) or (
                    LEVEL[troom] == LEVEL[room] and room not in FACES and LEVEL[room] != 0):
                bad.append(f"{path.relative_to(PKG)}:{line} ({room}, L{LEVEL[room]}) imports {target} "
                           f"(L{LEVEL[troom]})")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_no_import_cycles():
    """Module-level graph, lazy imports included: a cycle hidden behind a function-level import still counts."""
    graph = {}
    for path in PKG.rglob("*.py"):
        graph.setdefault(_module(path), set()).update(
            t for _, t in _imports(path) if t != _module(path) and t != "__init__")
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t in graph and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)
    # a package __init__ that re-exports its own modules is not a cycle with them
    real = [c for c in cycles if not all(c[0].startswith(x) or x.startswith(c[0]) for x in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_engine_names_no_task_metric_or_target():
    words = ("classification", "segmentation", "mnist", "cifar", "resnet", '"acc"', "miou", "labels", "masks")
    for path in (PKG / "engine").rglob("*.py"):
        text = path.read_text().lower()
        found = [w for w in words if w in text]
        assert not found, f"engine/{path.name} names {found}: that knowledge belongs in tasks/"
