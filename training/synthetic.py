"""Synthetic dichotomous-segmentation data: objects with thin structures, holes and soft
edges over textured backgrounds. Each sample is a pure function of (seed, index), so a
dataset can be regenerated bit for bit anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 3  # shapes are drawn larger and downsampled: antialiased, soft edges


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus one of stripes, checkers or a gradient."""
    coarse = rng.random((max(2, h // 48), max(2, w // 48), 3)).astype(np.float32)
    coarse = 0.5 * coarse + 0.5 * coarse.mean(axis=2, keepdims=True)  # less saturated
    base = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32) / 255
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    angle = rng.uniform(0, np.pi)
    if kind == 0:
        period = rng.uniform(6, 40)
        pattern = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:
        cell = int(rng.integers(8, 48))
        pattern = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        pattern = (xx * np.cos(angle) + yy * np.sin(angle)) / (h + w)
    tint = rng.random(3).astype(np.float32)
    strength = rng.uniform(0.1, 0.5)
    image = (1 - strength) * base + strength * pattern[..., None] * tint
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)


def _random_curve(rng, cx, cy, length, steps=12):
    points = [(cx, cy)]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        angle += rng.normal(0, 0.4)
        cx, cy = cx + np.cos(angle) * length / steps, cy + np.sin(angle) * length / steps
        points.append((cx, cy))
    return points


def _object_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Alpha in [0, 1]: a body (ellipse/polygon, maybe with holes) plus wires, a lattice or hair."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.3, 0.7) * w * s, rng.uniform(0.3, 0.7) * h * s
    rx, ry = rng.uniform(0.12, 0.3) * w * s, rng.uniform(0.12, 0.3) * h * s
    if rng.random() < 0.5:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n)
        draw.polygon([(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radius)], fill=255)
    for _ in range(int(rng.integers(0, 3))):  # holes
        hx, hy = cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.4) * ry
        hr = rng.uniform(0.08, 0.25) * min(rx, ry)
        draw.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=0)
    detail = rng.integers(0, 3)
    if detail == 0:  # wires leaving the body
        for _ in range(int(rng.integers(2, 6))):
            pts = _random_curve(rng, cx, cy, rng.uniform(0.3, 0.8) * max(h, w) * s)
            draw.line(pts, fill=255, width=int(rng.integers(1, 4)) * s // 2 + 1)
    elif detail == 1:  # a lattice
        x0, y0 = cx + rx * 0.5, cy - ry
        size = rng.uniform(0.2, 0.4) * min(h, w) * s
        step = rng.uniform(0.08, 0.2) * size
        width = int(rng.integers(1, 3)) * s // 2 + 1
        for k in np.arange(0, size + 1, step):
            draw.line([(x0 + k, y0), (x0 + k, y0 + size)], fill=255, width=width)
            draw.line([(x0, y0 + k), (x0 + size, y0 + k)], fill=255, width=width)
    else:  # hair: many thin curves from the rim
        for _ in range(int(rng.integers(20, 60))):
            a = rng.uniform(0, 2 * np.pi)
            pts = _random_curve(
                rng, cx + rx * np.cos(a), cy + ry * np.sin(a), rng.uniform(0.05, 0.2) * max(h, w) * s, 6
            )
            draw.line(pts, fill=255, width=1)
    if rng.random() < 0.3:  # soft (matting-like) edges
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3) * s))
    alpha = canvas.resize((w, h), Image.BOX)
    return np.asarray(alpha, np.float32) / 255


def _foreground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured object colour that differs from the background statistics."""
    colour = rng.random(3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.75 + 0.25 * np.sin(xx / rng.uniform(5, 30)) * np.cos(yy / rng.uniform(5, 30))
    return np.clip(colour * shade[..., None] + rng.normal(0, 0.03, (h, w, 3)), 0, 1).astype(np.float32)


def make_sample(seed: int, index: int, size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """(RGB image, L mask) number `index` of the dataset `seed`."""
    rng = np.random.default_rng([seed, index])
    h, w = size or (int(rng.integers(224, 417)), int(rng.integers(224, 417)))
    alpha = _object_mask(rng, h, w)
    image = _foreground(rng, h, w) * alpha[..., None] + background(rng, h, w) * (1 - alpha[..., None])
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(to8(image)), Image.fromarray(to8(alpha))


def write_dataset(folder, count: int, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """Write `count` samples as folder/im/NNNNN.jpg and folder/gt/NNNNN.png."""
    folder = Path(folder)
    (folder / "im").mkdir(parents=True, exist_ok=True)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = make_sample(seed, index, size)
        image.save(folder / "im" / f"{index:05d}.jpg", quality=95)
        mask.save(folder / "gt" / f"{index:05d}.png")
    return folder
