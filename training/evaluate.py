"""Score predictions: from a folder of masks, or by running a model over a dataset folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import birefnet
from birefnet.inference import mask_to_image
from birefnet.io import IMAGE_SUFFIXES, read_image, save_image

from .data import find_pairs
from .metrics import MetricSet


def _grey(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def evaluate_folders(pred_dir, gt_dir) -> MetricSet:
    """Predictions matched to ground truths by file stem; every ground truth needs one."""
    files = lambda d: {p.stem: p for p in sorted(Path(d).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    preds, gts = files(pred_dir), files(gt_dir)
    missing = sorted(gts.keys() - preds.keys())
    if missing:
        raise ValueError(f"{pred_dir}: no prediction for {len(missing)} ground truth(s): {', '.join(missing[:5])}")
    metrics = MetricSet()
    for stem in tqdm(sorted(gts), desc="evaluate", unit="img"):
        metrics.step(_grey(preds[stem]), _grey(gts[stem]))
    return metrics


def evaluate_model(weights, data, *, save_pred=None, tile_layout=None) -> MetricSet:
    """Segment every image of dataset folder(s) `data` at the checkpoint's working size, score
    at the original size, optionally keeping the predicted masks."""
    model = birefnet.load_model(weights, tile_layout=tile_layout)
    metrics = MetricSet()
    for image_path, gt_path in tqdm(find_pairs(data), desc="segment + evaluate", unit="img"):
        mask = birefnet.segment(model, read_image(image_path))
        if save_pred:
            save_image(mask_to_image(mask), Path(save_pred) / f"{image_path.stem}.png")
        metrics.step(mask, _grey(gt_path))
    return metrics
