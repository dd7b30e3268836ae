"""What the documentation promises and a newcomer acts on, checked: every `birefnet.NAME` and
`python -m MODULE` it names exists, every command line parses with the command's own parser, every
`--flag`, keyword argument and pip extra it names exists, and CONTRIBUTING.md's module map names every
module, only modules that exist, and the order imports run in."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import re
import shlex

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


def _fenced(text: str, languages: tuple[str, ...]) -> list[str]:
    return re.findall(rf"```(?:{'|'.join(languages)})\n(.*?)```", text, re.S)


def _inline(text: str) -> list[str]:
    """Inline code spans (outside fenced blocks), a span's line breaks as spaces."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))]


class _Parsed(Exception):
    """Raised in place of parsing: carries the parser a command's main() built."""


def _parser(module: str) -> argparse.ArgumentParser:
    """The argument parser of `python -m module`: its build_parser(), else the one its main() builds
    (caught at parse_args, before the command does anything)."""
    found = importlib.import_module(module)
    if hasattr(found, "build_parser"):
        return found.build_parser()
    real = argparse.ArgumentParser.parse_args

    def caught(self, *args, **kwargs):
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = caught
    try:
        found.main(*([[]] if inspect.signature(found.main).parameters else []))
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{module}.main() parsed no arguments")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _command(words: list[str]) -> tuple[str, list[str]] | None:
    """(module whose parser reads them, arguments) of a command line that runs one of ours, else None:
    `birefnet ...`, `.venv/bin/birefnet ...`, `python -m birefnet_training ...`, `torchrun ... -m MODULE ...`."""
    for i, word in enumerate(words):
        module = words[i + 1] if word == "-m" and i + 1 < len(words) else None
        if word == "birefnet" or word.endswith("/birefnet") or module == "birefnet":
            return "birefnet.cli", words[i + (2 if module else 1) :]
        if module and module.split(".")[0] in ("birefnet", "birefnet_training"):
            return (f"{module}.__main__" if module == "birefnet_training" else module), words[i + 2 :]
    return None


def _shell_commands(block: str) -> list[list[str]]:
    lines = block.replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        code = line.split(" #", 1)[0].strip()
        if code and not code.startswith("#"):
            commands += [shlex.split(part.strip().removesuffix("&")) for part in re.split(r"&&|\|\||;|\|", code)]
    return commands


def _parse_error(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    from birefnet.cli import joined_negative_values

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(joined_negative_values(args))
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


def _flags(words) -> list[str]:
    return [w.split("=", 1)[0] for w in words if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_command_line_in_the_docs_parses():
    """A shell block's command runs as written, as far as its parser can tell (`...` elides the rest:
    its flags must still be the command's); an inline `birefnet SUB --flag ...` names flags SUB has."""
    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _fenced(text, ("bash", "sh", "shell", "console")):
            for words in _shell_commands(block):
                found = _command(words)
                if found is None:
                    continue
                module, args = found
                parser = _parser(module)
                if "..." in args:
                    args = args[: args.index("...")]
                    sub = _subparsers(parser).get(args[0], parser) if args else parser
                    unknown = [f for f in _flags(args) if f not in _options(sub)]
                    error = f"unrecognized arguments: {' '.join(unknown)}" if unknown else None
                else:
                    error = _parse_error(parser, args)
                if error:
                    wrong.append(f"{doc.name}: {' '.join(words)}\n    {error}")
        for span in _inline(text):
            words = re.split(r"[\s\[\]|]+", span)  # a synopsis: `--out FILE.onnx|FILE.xml [--size WxH]`
            found = _command(words) if span.startswith(("birefnet", "python -m", "torchrun")) else None
            if found is None:
                continue
            module, args = found
            parser = _parser(module)
            parser = _subparsers(parser).get(args[0], parser) if args else parser
            unknown = [f for f in _flags(args) if f not in _options(parser)]
            if unknown:
                wrong.append(f"{doc.name}: `{span}`\n    unknown flags {unknown}")
    assert not wrong, "command lines in the docs that their parser refuses:\n" + "\n".join(wrong)


# Flags of other programs the docs show (pip, pytest, git, torchrun, TensorRT's trtexec).
OTHER_TOOLS_FLAGS = {
    "--no-deps", "--index-url", "--only-binary", "--platform", "--python-version", "--implementation",
    "--dist", "--git-dir", "--short", "--nproc_per_node", "--nnodes", "--rdzv-endpoint",
    "--onnx", "--fp16", "--shapes",
}  # fmt: skip
COMMAND_MODULES = [
    "birefnet.cli",
    "birefnet_training.__main__",
    "birefnet.bench",
    "birefnet.bench_deform",
    "birefnet.bench_float_check",
    "birefnet.peak_memory",
    "birefnet.server.bench",
    "birefnet_training.bench_eval",
    "birefnet_training.bench_train",
]


def test_every_flag_the_docs_name_exists():
    """A `--flag` named anywhere, in prose too (`--skip-existing`), is one of our commands' options: a
    renamed or removed flag is caught where the docs still send users to it."""
    known = set(OTHER_TOOLS_FLAGS)
    for module in COMMAND_MODULES:
        parser = _parser(module)
        known |= _options(parser)
        for sub in _subparsers(parser).values():
            known |= _options(sub)
    unknown = [
        f"{doc.name}: {flag}"
        for doc in DOCS
        for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", doc.read_text(encoding="utf-8"))) - known)
    ]
    assert not unknown, "flags the docs name that no command has:\n" + "\n".join(unknown)


def test_every_extra_the_docs_install_exists():
    import tomllib  # Python 3.11+, as in test_nodes

    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    unknown = [
        f"{doc.name}: {extra}"
        for doc in DOCS
        for group in re.findall(r"(?:birefnet-toolkit|\.)\[([\w,-]+)\]", doc.read_text(encoding="utf-8"))
        for extra in group.split(",")
        if extra not in extras
    ]
    assert not unknown, f"pip extras the docs install that pyproject.toml does not define: {unknown}"


def _callable(dotted: str):
    """`birefnet.NAME...` or a top-level name of `birefnet`, else None."""
    dotted = dotted if dotted.startswith("birefnet.") else f"birefnet.{dotted}"
    if not _resolves(dotted):
        return None
    found = importlib.import_module("birefnet")
    for part in dotted.split(".")[1:]:
        found = getattr(found, part)
    return found if callable(found) else None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _documented_calls() -> list[tuple[str, str, list[str]]]:
    """(doc, function, keyword names) of the calls the docs show: in python blocks (names imported
    from `birefnet.*` resolved) and in inline spans like `segment(model, images, batch_size=, ...)`."""
    calls = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _fenced(text, ("python",)):
            tree = ast.parse(block)
            imported = {
                alias.asname or alias.name: f"{node.module}.{alias.name}"
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("birefnet")
                for alias in node.names
            }
            for node in ast.walk(tree):
                name = _dotted(node.func) if isinstance(node, ast.Call) else None
                if name and (name.startswith("birefnet.") or name in imported):
                    function = imported.get(name, name)
                    calls.append((doc.name, function, [k.arg for k in node.keywords if k.arg]))
        for span in _inline(text):
            call = re.fullmatch(r"([\w.]+)\((.*)\)", span)
            if call and _callable(call.group(1)):
                calls.append((doc.name, call.group(1), re.findall(r"(?<![\w.])(\w+)=", call.group(2))))
    return calls


def test_every_keyword_argument_the_docs_show_exists():
    calls = _documented_calls()
    assert any(function == "segment" for _, function, _ in calls), "no documented call was found"
    wrong = []
    for doc, function, keywords in calls:
        found = _callable(function)
        assert found is not None, f"{doc}: {function} does not exist"
        parameters = inspect.signature(found).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            continue
        wrong += [f"{doc}: {function}({k}=)" for k in keywords if k not in parameters]
    assert not wrong, "keyword arguments the docs show that the functions do not take:\n" + "\n".join(wrong)
