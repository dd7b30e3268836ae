"""File helpers: atomic writes and image reading that never leaves half-written files."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def cache_folder(feature: str) -> Path:
    """Where `feature` keeps what it can make again: $BIREFNET_CACHE/feature, else ~/.cache/birefnet/feature."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("BIREFNET_CACHE") or user_cache / "birefnet") / feature


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) create files private to the owner
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_image(path) -> Image.Image:
    """Open an image, apply its EXIF orientation and load the pixels (raises OSError if unreadable)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
    return image


def save_image(image: Image.Image, path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))


def list_images(inputs) -> list[tuple[Path, Path]]:
    """(file, path relative to its input) for every image file named or inside a named folder."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            for file in sorted(item.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((file, file.relative_to(item)))
        else:
            found.append((item, Path(item.name)))
    return found


def output_paths(relatives: list[Path], cutouts: bool) -> list[tuple[Path, Path]]:
    """(mask, cut-out) output paths, one pair per input, never the same path twice.

    `photo.png`, `photo_cutout.png` normally; inputs whose outputs would collide (`x.jpg` and
    `x.png`, or `a_cutout.jpg` beside `a.jpg` with cut-outs) keep their extension in the name
    (`x_jpg.png`), and a counter settles anything left.
    """

    def pair(rel: Path, stem: str) -> tuple[Path, Path]:
        return rel.parent / f"{stem}.png", rel.parent / f"{stem}_cutout.png"

    def names(p: tuple[Path, Path]) -> list[str]:
        return [str(p[0]).lower()] + ([str(p[1]).lower()] if cutouts else [])

    plan = [pair(rel, rel.stem) for rel in relatives]
    counts: dict[str, int] = {}
    for p in plan:
        for name in names(p):
            counts[name] = counts.get(name, 0) + 1
    plan = [
        pair(rel, f"{rel.stem}_{rel.suffix.lstrip('.').lower()}") if any(counts[n] > 1 for n in names(p)) else p
        for rel, p in zip(relatives, plan)
    ]
    taken: set[str] = set()
    for i, (rel, p) in enumerate(zip(relatives, plan)):
        number = 1
        while any(n in taken for n in names(p)):
            number += 1
            p = pair(rel, f"{rel.stem}_{rel.suffix.lstrip('.').lower()}_{number}")
        plan[i] = p
        taken.update(names(p))
    return plan
