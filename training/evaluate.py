"""Score predictions: from a folder of masks, or by running a model over a dataset folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

import birefnet
from birefnet.inference import mask_to_image
from birefnet.io import IMAGE_SUFFIXES, read_image, save_image

from .data import find_pairs, read_mask
from .metrics import MetricSet


def _grey(path) -> np.ndarray:
    """A mask file as float [0, 1] (16-bit files keep their soft values)."""
    return np.asarray(read_mask(path), dtype=np.float32) / 255.0


def evaluate_folders(pred_dir, gt_dir) -> MetricSet:
    """Predictions matched to ground truths by file stem; every ground truth needs one."""
    files = lambda d: {p.stem: p for p in sorted(Path(d).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    preds, gts = files(pred_dir), files(gt_dir)
    missing = sorted(gts.keys() - preds.keys())
    if missing:
        raise ValueError(f"{pred_dir}: no prediction for {len(missing)} ground truth(s): {', '.join(missing[:5])}")
    metrics = MetricSet()
    bar = tqdm(sorted(gts), desc="evaluate", unit="img")
    for stem in bar:
        try:
            pred, gt = _grey(preds[stem]), _grey(gts[stem])
        except (OSError, ValueError) as err:  # one unreadable file must not end a long evaluation
            _skip(bar, metrics, f"{preds[stem]} / {gts[stem]}", err)
            continue
        metrics.step(pred, gt)
    return metrics


def _skip(bar, metrics: MetricSet, what: str, err: Exception) -> None:
    metrics.skipped.append(what)
    bar.write(f"evaluate: skipped {what}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


def evaluate_model(weights, data, *, save_pred=None, tile_layout=None) -> MetricSet:
    """Segment every image of dataset folder(s) `data` at the checkpoint's working size, score
    at the original size, optionally keeping the predicted masks."""
    model = birefnet.load_model(weights, tile_layout=tile_layout)
    metrics = MetricSet()
    bar = tqdm(find_pairs(data), desc="segment + evaluate", unit="img")
    for image_path, gt_path in bar:
        try:
            image, gt = read_image(image_path), _grey(gt_path)
        except (OSError, ValueError) as err:
            _skip(bar, metrics, f"{image_path} / {gt_path}", err)
            continue
        mask = birefnet.segment(model, image)
        if save_pred:
            save_image(mask_to_image(mask), Path(save_pred) / f"{image_path.stem}.png")
        metrics.step(mask, gt)
    return metrics
