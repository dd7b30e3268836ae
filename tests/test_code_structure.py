"""The code's shape, checked: ruff (its configuration is in pyproject.toml), a one-way import graph, and
the boundaries the layout promises (the library never imports ComfyUI, only nodes/host.py does, the
editor plug-ins never import the library)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = {"birefnet": ROOT / "birefnet", "nodes": ROOT / "nodes", "birefnet_training": ROOT / "training"}
COMFYUI_MODULES = ("folder_paths", "comfy", "comfy_api", "comfy_extras", "comfy_execution", "server", "execution")


def _module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))


def _imports(package: str, path: Path) -> set[str]:
    """Every module this file imports, at module level or inside functions, as absolute names."""
    name = _module_name(package, path)
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")[: len(base.split(".")) - node.level + 1]
                module = ".".join(parent + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p, f): (p, f) for p, root in PACKAGES.items() for f in root.rglob("*.py")}
    return {name: {m for m in _imports(*where) if m in files and m != name} for name, where in files.items()}


def test_import_graph_has_no_circles():
    graph = _graph()
    # a package's __init__ only hands names on; its submodules import siblings, not the package face
    graph = {k: {m for m in v if not (graph.get(m) is not None and k.startswith(m + "."))} for k, v in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_layout_boundaries():
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            tops = {m.split(".")[0] for m in _imports(package, path)}
            comfy = tops & set(COMFYUI_MODULES)
            if package == "nodes" and path.name == "host.py":
                continue
            assert not comfy, f"{path.relative_to(ROOT)} imports {comfy}: ComfyUI imports belong in nodes/host.py"
            if package == "birefnet":
                assert not tops & {"nodes", "birefnet_training", "training"}, f"{path} imports the pack or training"
    for path in (ROOT / "editors").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        absolute = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        absolute += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        tops = {m.split(".")[0] for m in absolute}
        assert not tops & {"birefnet", "torch", "numpy"}, f"{path.relative_to(ROOT)}: the editor's Python has none"


def test_openvino_is_imported_and_its_core_made_in_extras_only():
    """OpenVINO imported elsewhere would send its usage reports; a Core made elsewhere would be freed out of
    order with the shared one and leave its thread a freed signal stack (the next signal killed the process)."""
    for path in [f for root in PACKAGES.values() for f in root.rglob("*.py")] + sorted((ROOT / "tests").glob("*.py")):
        if path == ROOT / "birefnet" / "extras.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
        assert not [m for m in imported if m.split(".")[0] == "openvino"], f"{path.relative_to(ROOT)} imports openvino"
        cores = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "Core"]
        assert not cores, f"{path.relative_to(ROOT)} makes an OpenVINO Core: use birefnet.extras.openvino_core()"


def test_ruff_lint_and_format():
    ruff = [sys.executable, "-m", "ruff"]
    if subprocess.run([*ruff, "--version"], capture_output=True).returncode != 0:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    lint = subprocess.run([*ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-4000:]
    style = subprocess.run([*ruff, "format", "--no-cache", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert style.returncode == 0, "run `ruff format .`:\n" + style.stdout[-2000:]
