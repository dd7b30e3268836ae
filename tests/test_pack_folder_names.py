"""Users clone the pack into a folder of their choosing: it registers its nodes under any name, in the
2024 ComfyUI (its real `nodes.load_custom_node`, which names the module after the folder, so a folder
named `birefnet` holds the library's name) and under current ComfyUI's naming (the folder's path)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

FOLDER_NAMES = ["birefnet", "ComfyUI-BiRefNet", "birefnet_toolkit", "birefnet.git", "training"]
NODES = ["BiRefNetCompose", "BiRefNetGradientPreview", "BiRefNetLoader", "BiRefNetRefineEdges", "BiRefNetSegment"]

HOST_2024 = """
import json, sys
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()  # as main.py does
import nodes
ok = nodes.load_custom_node(sys.argv_path)
mine = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("BiRefNet"))
import birefnet
print(json.dumps({"ok": ok, "nodes": mine, "library": callable(getattr(birefnet, "load_model", None))}))
"""

# Current ComfyUI (nodes.py, load_custom_node): a folder's module is named after its path, dots escaped.
HOST_CURRENT = """
import importlib.util, json, os, sys
path = sys.argv_path
name = path.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
import birefnet
print(json.dumps({"ok": True, "nodes": sorted(module.NODE_CLASS_MAPPINGS),
                  "library": callable(getattr(birefnet, "load_model", None))}))
"""


def _run(script: str, cwd, folder) -> dict:
    code = f"import sys; sys.argv_path = {str(folder)!r}\n" + script
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def comfyui_2024(tmp_path_factory):
    from test_comfyui_server import _comfyui_source

    return _comfyui_source()


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_any_folder_name_registers_the_nodes_in_the_2024_host(comfyui_2024, tmp_path, name):
    folder = tmp_path / "custom_nodes" / name
    folder.parent.mkdir()
    folder.symlink_to(ROOT, target_is_directory=True)
    found = _run(HOST_2024, comfyui_2024, folder)
    assert found == {"ok": True, "nodes": NODES, "library": True}


@pytest.mark.parametrize("name", FOLDER_NAMES)
def test_any_folder_name_registers_the_nodes_in_current_comfyui(tmp_path, name):
    folder = tmp_path / "custom_nodes" / name
    folder.parent.mkdir()
    folder.symlink_to(ROOT, target_is_directory=True)
    assert _run(HOST_CURRENT, tmp_path, folder) == {"ok": True, "nodes": NODES, "library": True}
