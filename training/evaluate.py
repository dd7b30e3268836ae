"""Score predictions: from a folder of masks, or by running a model over a dataset folder."""
from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import birefnet
from birefnet.inference import mask_to_image
from birefnet.io import IMAGE_SUFFIXES, read_image, save_image

from .data import find_backgrounds, find_pairs, read_mask, read_sample
from .metrics import MetricSet, parse_metrics


def _grey(path) -> np.ndarray:
    """A mask file as the metrics read it: 8-bit files as they are (uint8), deeper ones as float
    [0, 1] so that 16-bit soft values are rounded once, not clipped."""
    return _array(read_mask(path))


def _array(mask) -> np.ndarray:
    return np.asarray(mask) if mask.mode == "L" else np.asarray(mask, dtype=np.float32) / 255.0


def evaluate_folders(pred_dir, gt_dir, *, metrics=None, workers: int | None = None,
                     hce_convention: str = "pysod") -> MetricSet:
    """Predictions matched to ground truths by file stem; every ground truth needs one.

    The images are scored by `workers` processes (default: one per CPU core, at most 8), each
    over consecutive parts of the sorted list, joined in order: the numbers equal one process's.
    """
    files = lambda d: {p.stem: p for p in sorted(Path(d).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    preds, gts = files(pred_dir), files(gt_dir)
    missing = sorted(gts.keys() - preds.keys())
    if missing:
        raise ValueError(f"{pred_dir}: no prediction for {len(missing)} ground truth(s): {', '.join(missing[:5])}")
    names = parse_metrics(metrics)
    pairs = [(preds[stem], gts[stem]) for stem in sorted(gts)]
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, workers)
    size = max(1, min(32, len(pairs) // (4 * workers)))  # small parts: balanced load, steady progress
    parts = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    args = (parts, [names] * len(parts), [hce_convention] * len(parts))
    result = MetricSet(names, hce_convention)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(pairs), desc="evaluate", unit="img"))
        if workers == 1 or len(parts) == 1:
            scored = map(_score_part, *args)
        else:
            context = multiprocessing.get_context(_START_METHOD)
            scored = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)).map(_score_part, *args)
        for part in scored:  # in order: the numbers equal one process's
            for what, message in part.skipped:  # one unreadable file must not end a long evaluation
                bar.write(f"evaluate: skipped {what}: {message}", file=sys.stderr)
            part.skipped = [what for what, _ in part.skipped]
            result.join(part)
            bar.update(part.count + len(part.skipped))
    return result


# Linux: fork (the workers inherit the loaded modules, no import of torch per worker, and no second
# import of the packages by path, which picks the wrong `birefnet` when a checkout of that name sits
# on sys.path's parent); the workers use numpy, PIL and cv2 only, never torch's OpenMP pool (the
# one pool that cannot be used after a fork). Elsewhere the platform's default (spawn).
_START_METHOD = "fork" if sys.platform.startswith("linux") else None


def _score_part(pairs, names, hce_convention) -> MetricSet:
    """A share of the pairs, scored in order; unreadable pairs kept with their message for the caller."""
    cv2.setNumThreads(1)  # the processes are the parallelism
    metrics = MetricSet(names, hce_convention)
    for pred_path, gt_path in pairs:
        try:
            pred, gt = _grey(pred_path), _grey(gt_path)
        except (OSError, ValueError) as err:
            metrics.skipped.append((f"{pred_path} / {gt_path}", _first_line(err)))
            continue
        metrics.step(pred, gt)
    return metrics


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _skip(bar, metrics: MetricSet, what: str, err: Exception) -> None:
    metrics.skipped.append(what)
    bar.write(f"evaluate: skipped {what}: {_first_line(err)}", file=sys.stderr)


def evaluate_model(weights, data, *, save_pred=None, tile_layout=None, metrics=None,
                   hce_convention: str = "pysod") -> MetricSet:
    """Segment every image of dataset folder(s) `data` at the checkpoint's working size, score
    at the original size, optionally keeping the predicted masks."""
    model = birefnet.load_model(weights, tile_layout=tile_layout)
    metrics = MetricSet(metrics, hce_convention)
    backgrounds = find_backgrounds(data)
    bar = tqdm(find_pairs(data), desc="segment + evaluate", unit="img")
    for index, sample in enumerate(bar):
        try:
            if sample.cutout:  # the same backdrop every time this set is evaluated
                image, alpha = read_sample(sample, np.random.default_rng([0, index]), backgrounds)
                gt = _array(alpha)
            else:
                image, gt = read_image(sample.image), _grey(sample.mask)
        except (OSError, ValueError) as err:
            _skip(bar, metrics, f"{sample.image} / {sample.mask}", err)
            continue
        mask = birefnet.segment(model, image)
        if save_pred:
            save_image(mask_to_image(mask), Path(save_pred) / f"{sample.image.stem}.png")
        metrics.step(mask, gt)
    return metrics
