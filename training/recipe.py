"""The fine-tuning recipe for a small custom object set, measured end to end.

`python -m birefnet_training recipe --work out/recipe` writes an object family the embedded demo model
never saw (gears, stars and rings with spokes and stroke lettering, as RGBA cut-outs: the layout
users have), scores the embedded model on its held-out part, fine-tunes it with each variant
of the recipe and scores again. The README's before/after table comes from this command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from birefnet.files import atomic_path

from .config import TrainConfig
from .demo import INSTALLED
from .evaluate import evaluate_model
from .metrics import format_table
from .synthetic import SUPERSAMPLE
from .trainer import train

TRAIN_SAMPLES, VAL_SAMPLES, TEST_SAMPLES = 160, 20, 60
SIZE = (224, 224)  # the embedded model's working size; official checkpoints: their own (1024 or 2048)
COMMON = dict(task="general", epochs=4, finetune_last_epochs=-1, batch_size=4, size=SIZE, seed=3, best_metric="Sm")
VARIANTS = {
    "all weights, lr 1e-4": dict(lr=1e-4),
    "frozen backbone, lr 1e-4": dict(lr=1e-4, freeze_backbone=True),
}


def _gear_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A gear, star or ring with spokes, satellites and a stroke 'label': unlike the demo set's blobs."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.35, 0.65) * w * s, rng.uniform(0.35, 0.65) * h * s
    outer = rng.uniform(0.2, 0.32) * min(h, w) * s
    teeth = int(rng.integers(6, 18))
    inner = outer * rng.uniform(0.55, 0.85)
    angles = np.linspace(0, 2 * np.pi, 2 * teeth, endpoint=False) + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * teeth) % 2 == 0, outer, inner)
    draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=255)
    hole = inner * rng.uniform(0.3, 0.6)
    draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=0)  # a ring
    hub = hole * rng.uniform(0.2, 0.4)
    draw.ellipse([cx - hub, cy - hub, cx + hub, cy + hub], fill=255)
    for a in np.linspace(0, 2 * np.pi, int(rng.integers(3, 7)), endpoint=False) + rng.uniform(0, np.pi):
        draw.line([(cx, cy), (cx + hole * np.cos(a), cy + hole * np.sin(a))], fill=255, width=s * 2)  # spokes
    for _ in range(int(rng.integers(1, 4))):  # satellites on thin stalks
        a, d = rng.uniform(0, 2 * np.pi), outer * rng.uniform(1.2, 1.5)
        x, y, r = cx + d * np.cos(a), cy + d * np.sin(a), outer * rng.uniform(0.06, 0.12)
        draw.line([(cx + outer * 0.9 * np.cos(a), cy + outer * 0.9 * np.sin(a)), (x, y)], fill=255, width=s)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    x0, y0 = rng.uniform(0.1, 0.5) * w * s, rng.uniform(0.82, 0.9) * h * s
    for k in range(int(rng.integers(3, 7))):  # stroke lettering under the object
        x = x0 + k * 0.07 * w * s
        strokes = [
            [(x, y0), (x, y0 + 0.06 * h * s)],
            [(x, y0), (x + 0.04 * w * s, y0)],
            [(x, y0 + 0.03 * h * s), (x + 0.04 * w * s, y0 + 0.06 * h * s)],
        ]
        for stroke in strokes[: int(rng.integers(1, 4))]:
            draw.line(stroke, fill=255, width=s + 1)
    return np.asarray(canvas.resize((w, h), Image.BOX), np.float32) / 255


def write_object_set(folder, count: int, seed: int, size: tuple[int, int] = SIZE) -> Path:
    """`count` RGBA cut-outs (metallic-looking colours, alpha = the object) in folder/rgba/."""
    folder = Path(folder) / "rgba"
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for index in range(count):
        rng = np.random.default_rng([seed, index, 7])
        alpha = _gear_alpha(rng, h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        sheen = 0.6 + 0.4 * np.cos((xx + yy) / rng.uniform(8, 20))
        colour = sheen[..., None] * rng.uniform(0.4, 1.0, 3) + rng.normal(0, 0.02, (h, w, 3))
        rgba = np.dstack([np.clip(colour, 0, 1), alpha])
        Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(folder / f"{index:05d}.png")
    return folder.parent


def run_recipe(
    work, init=INSTALLED, variants=VARIANTS, counts=(TRAIN_SAMPLES, VAL_SAMPLES, TEST_SAMPLES), **overrides
) -> dict:
    """Scores of `init` on the held-out set, before and after each variant's fine-tune (best epoch)."""
    work = Path(work)
    for name, count, seed in zip(("train", "val", "test"), counts, (10, 11, 12)):
        if not (work / name).is_dir():
            write_object_set(work / name, count, seed)
    scores = {"before (embedded model)": evaluate_model(init, work / "test").results()}
    print(format_table(scores["before (embedded model)"], "before"), flush=True)
    for label, variant in variants.items():
        out = work / label.replace(" ", "_").replace(",", "")
        cfg = TrainConfig(
            data=[str(work / "train")],
            val=[str(work / "val")],
            out=str(out),
            init=str(init),
            **{**COMMON, **variant, **overrides},
        )
        train(cfg)
        scores[label] = evaluate_model(out / "best.safetensors", work / "test").results()
        print(format_table(scores[label], label), flush=True)
    with atomic_path(work / "scores.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "common": {k: str(v) for k, v in COMMON.items()},
                    "variants": {k: {a: str(b) for a, b in v.items()} for k, v in variants.items()},
                    "scores": scores,
                },
                indent=2,
            )
        )
    return scores
