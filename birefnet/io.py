"""File helpers: atomic writes and image reading that never leaves half-written files."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
