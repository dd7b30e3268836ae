"""The Krita plug-in (editors/krita) as the zip Krita's "Tools > Scripts > Import Python Plugin from File"
takes: `birefnet_krita.desktop` beside the `birefnet_krita/` package, with a directory entry for every
folder (Krita's importer finds the package by its directory entry) and no compiled files."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from .files import atomic_path

ZIP_NAME = "birefnet_krita.zip"  # what the server's page offers too

PLUGIN_NAME = "birefnet_krita"
_FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # the same files give the same zip


def plugin_dir() -> Path:
    """editors/krita inside the installed package (a wheel ships it there), else in the repository clone."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "editors" / "krita", package.parent / "editors" / "krita"):
        if (candidate / f"{PLUGIN_NAME}.desktop").is_file() and (candidate / PLUGIN_NAME / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"the Krita plug-in files (editors/krita/{PLUGIN_NAME}) are missing from this "
        "installation; reinstall birefnet-toolkit or run from a clone of the repository"
    )


def _wanted(path: Path) -> bool:
    return not any(part.startswith(".") or part == "__pycache__" for part in path.parts) and path.suffix != ".pyc"


def zip_bytes() -> bytes:
    """The importable zip, in memory (the server offers it for download)."""
    root = plugin_dir()
    package = root / PLUGIN_NAME
    entries = [package] + sorted(p for p in package.rglob("*") if _wanted(p.relative_to(root)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            zipfile.ZipInfo(f"{PLUGIN_NAME}.desktop", _FIXED_TIME),
            (root / f"{PLUGIN_NAME}.desktop").read_bytes(),
            zipfile.ZIP_DEFLATED,
        )
        for path in entries:
            name = path.relative_to(root).as_posix()
            if path.is_dir():
                info = zipfile.ZipInfo(name + "/", _FIXED_TIME)
                info.external_attr = 0o40755 << 16 | 0x10  # a directory, for every unzip tool
                archive.writestr(info, b"")
            else:
                info = zipfile.ZipInfo(name, _FIXED_TIME)
                info.external_attr = 0o100644 << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def build_zip(path) -> Path:
    """Write the zip to `path` (atomically; an existing file is never replaced); a folder (existing, or
    named with a trailing slash) gets `birefnet_krita.zip` in it."""
    if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
        path = Path(path) / ZIP_NAME
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another --out (files are never overwritten)")
    data = zip_bytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
