"""The embedded demo model: pvt_v2_b0 BiRefNet trained from scratch on synthetic data.

A fixed, seeded recipe sized for a 2-core CPU (about 45 minutes); `--install` copies the
fp16 result to birefnet/weights/default.safetensors, the CLI's and workflows' default.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import birefnet
from birefnet.files import atomic_path

from .config import TrainConfig
from .evaluate import evaluate_model
from .metrics import format_table
from .run_folder import LOG_FILE
from .synthetic import write_dataset
from .trainer import train

INSTALLED = Path(birefnet.__file__).parent / "weights" / "default.safetensors"

RECIPE = dict(
    init="scratch",
    backbone="pvt_v2_b0",
    task="general",
    epochs=4,
    finetune_last_epochs=-1,
    batch_size=4,
    size=(224, 224),
    lr=4e-4,
    seed=7,
    precision="fp32",
)
TRAIN_SAMPLES, VAL_SAMPLES, TEST_SAMPLES = 600, 40, 100


def _best_epoch(run: Path) -> int:
    """The epoch with the best validation S-measure (the late BCE-free phase can hurt a run this short)."""
    records = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    return max(records, key=lambda r: r["val_Sm"])["epoch"]


def run_demo(work, install: bool = False) -> Path:
    work = Path(work)
    write_dataset(work / "train", TRAIN_SAMPLES, seed=0)
    write_dataset(work / "val", VAL_SAMPLES, seed=1)
    write_dataset(work / "test", TEST_SAMPLES, seed=2)
    cfg = TrainConfig(data=[str(work / "train")], val=[str(work / "val")], out=str(work / "run"), **RECIPE)
    train(cfg)  # resumes (and returns at once) when the run folder already holds a finished run
    best = _best_epoch(Path(cfg.out))
    model = birefnet.load_model(Path(cfg.out) / f"epoch_{best}.safetensors").half()
    shipped = work / "default.safetensors"
    birefnet.save_checkpoint(model, shipped, resolution=cfg.size, name="birefnet-demo-pvt_v2_b0-synthetic")
    results = evaluate_model(shipped, work / "test").results()
    results["epoch"] = best
    with atomic_path(work / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"recipe": {k: str(v) for k, v in RECIPE.items()}, "test": results}, indent=2))
    print(format_table(results, f"demo model on {TEST_SAMPLES} held-out synthetic images"))
    if install:
        shutil.copyfile(shipped, INSTALLED)
        print(f"installed {INSTALLED} ({INSTALLED.stat().st_size / 1e6:.1f} MB)")
    return shipped
