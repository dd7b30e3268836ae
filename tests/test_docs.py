"""What the documentation promises and a newcomer acts on, checked: every `birefnet.NAME` and
`python -m MODULE` it names exists, and CONTRIBUTING.md's module map names every module, only modules
that exist, and the order imports run in."""

from __future__ import annotations

import importlib
import re

from conftest import ROOT
from test_code_structure import PACKAGES, _graph

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE_SUFFIXES = (".safetensors", ".pth", ".zip", ".png")


def _resolves(dotted: str) -> bool:
    """`birefnet.a.b` as Python reads it: attributes of the package, importing submodules on the way."""
    parts = dotted.split(".")
    found = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if not hasattr(found, part):
            try:
                importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                return False
        found = getattr(found, part, None)
        if found is None:
            return False
    return True


def test_every_library_name_and_module_the_docs_use_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        names = set(re.findall(r"\bbirefnet\.[A-Za-z_][\w.]*\w", text))
        names |= set(re.findall(r"python -m ((?:birefnet|birefnet_training|nodes)[\w.]*\w)", text))
        missing += [f"{doc.name}: {n}" for n in sorted(names) if not n.endswith(FILE_SUFFIXES) and not _resolves(n)]
    assert not missing, "the docs name what does not exist:\n" + "\n".join(missing)


def _module_map() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    return text.split("## Module map", 1)[1].split("\n## ", 1)[0]


def _library_layers() -> list[dict[str, set[str]]]:
    """The `birefnet/` table's rows, top to bottom: per row, its modules ("" -> top-level names) and each
    subpackage's (`cli/` (`segment` ..., `flags` ...) -> "cli" -> {"segment", "flags"}); text in other
    parentheses describes and is left out."""
    rows = [line for line in _module_map().splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    layers = []
    for row in rows:
        column = row.split("|")[2]
        members = {
            p: set(re.findall(r"`([\w.]+)`", inner)) for p, inner in re.findall(r"`(\w+)/` \(([^()]*)\)", column)
        }
        top = set(re.findall(r"`(\w+)/?`", re.sub(r"\([^()]*\)", "", column)))
        layers.append({"": top, **members})
    return layers


def _library_modules() -> list[str]:
    """Every module of the library as the map names it: `inference`, `cli/segment`, `backbones/swin`."""
    root = PACKAGES["birefnet"]
    return sorted(
        str(p.relative_to(root).with_suffix("")).removesuffix("/__init__")
        for p in root.rglob("*.py")
        if p.name != "__init__.py" or p.parent != root
    )


def _layer_of(module: str, layers: list[dict[str, set[str]]]) -> int | None:
    """Row of a map name: a subpackage's modules are on their package's row."""
    package, _, leaf = module.partition("/")
    for row, names in enumerate(layers):
        if package in names[""] and (not leaf or leaf in names.get(package, ())):
            return row
    return None


def test_the_module_map_names_every_module_and_only_modules():
    layers = _library_layers()
    assert len(layers) >= 5, "the module map's table was not found"
    unlisted = [m for m in _library_modules() if _layer_of(m, layers) is None]
    assert not unlisted, f"CONTRIBUTING.md's module map does not list birefnet/: {unlisted}"
    root = PACKAGES["birefnet"]
    named = [(root / package, n) for names in layers for package, found in names.items() for n in found]
    gone = [f"{folder.name}/{n}" for folder, n in named if not ((folder / n).exists() or (folder / f"{n}.py").exists())]
    assert not gone, f"CONTRIBUTING.md's module map lists what birefnet/ does not hold: {sorted(gone)}"
    for package in ("birefnet_training", "nodes"):
        text = _module_map()
        for path in PACKAGES[package].glob("*.py"):
            if path.stem != "__init__":
                listed = re.search(rf"`(nodes/)?{path.stem}(\.py)?`", text)
                assert listed, f"CONTRIBUTING.md's module map does not list {package}.{path.stem}"


# The map's one named exception: `load_model(backend="openvino")` hands back the OpenVINO model.
UPWARD_BY_NAME = {("birefnet.loading", "birefnet.openvino_backend")}


def test_library_imports_run_down_the_module_map():
    """A module imports only from its own row of the map or the rows below (function-level imports too)."""
    layers = _library_layers()
    row = {}
    for module in _library_modules():
        row["birefnet." + module.replace("/", ".")] = _layer_of(module, layers)
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if row.get(name) is not None
        for target in sorted(targets)
        if row.get(target) is not None and row[target] < row[name] and (name, target) not in UPWARD_BY_NAME
    ]
    assert not upward, "imports that run up CONTRIBUTING.md's module map:\n" + "\n".join(upward)


def test_every_public_name_of_the_library_is_in_its_page():
    import birefnet

    page = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    undocumented = [n for n in birefnet.__all__ if not re.search(rf"`(birefnet\.)?{re.escape(n)}[`(]", page)]
    assert not undocumented, f"docs/library.md does not say what these are: {undocumented}"


def test_every_test_file_is_in_a_tier():
    tiers = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8").split("## Test tiers", 1)[1].split("\n## ", 1)[0]
    untiered = [p.stem for p in sorted((ROOT / "tests").glob("test_*.py")) if f"`{p.stem}`" not in tiers]
    assert not untiered, f"CONTRIBUTING.md's test tiers leave out: {untiered}"
