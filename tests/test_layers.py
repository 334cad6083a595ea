"""The layer rule of the design notes: imports only point down; siblings in L1 do not import each other."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "visionlab"
LEVEL = {"config": 0, "registry": 0, "utils": 0,
         "data": 1, "models": 1, "metrics": 1, "engine": 1, "deploy": 1, "explain": 1, "search": 1,
         "tasks": 2, "run": 3, "experiments": 4, "api": 5, "cli": 5, "cli_experiments": 5, "cli_sweep": 5, "cli_explain": 5, "cli_similar": 5, "cli_args": 5,
         "cli_data": 5, "cli_app": 5, "cli_deploy": 5, "cli_stream": 5, "app": 5,
         "__main__": 5, "__init__": 5}
L1 = {"data", "models", "metrics", "engine", "deploy", "explain", "search"}


def _room(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_rooms(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("visionlab"):
                parts = node.module.split(".")[1:]
            elif node.level > 0:
                here = list(path.relative_to(PKG).parent.parts)
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
            else:
                continue
            names = parts or [a.name for a in node.names]
            yield node.lineno, names[0]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("visionlab."):
                    yield node.lineno, a.name.split(".")[1]


def test_imports_point_down():
    bad = []
    for path in PKG.rglob("*.py"):
        room = _room(path)
        for line, target in _imported_rooms(path):
            if target == room or target not in LEVEL:
                continue
            if LEVEL[target] > LEVEL[room] or (room in L1 and target in L1) or (
                    LEVEL[target] == LEVEL[room] and room not in ("api", "cli", "cli_experiments", "cli_sweep", "cli_explain", "cli_similar", "cli_args", "cli_data", "cli_app", "cli_deploy", "cli_stream", "__main__",
                                                         "__init__") and LEVEL[room] != 0):
                bad.append(f"{path.relative_to(PKG)}:{line} ({room}, L{LEVEL[room]}) imports {target} (L{LEVEL[target]})")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_engine_names_no_task_dataset_or_model():
    words = ("classification", "mnist", "cifar", "resnet")
    for path in (PKG / "engine").rglob("*.py"):
        text = path.read_text().lower()
        assert not any(w in text for w in words), f"{path.name} names a task, dataset or model"
