"""Score predictions: from a folder of masks, or by running a model over a dataset folder."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import birefnet
from birefnet.files import read_image, save_image
from birefnet.inference import mask_to_image

from .data import MASK_DIRS, files_by_stem, find_backgrounds, find_pairs, read_sample
from .metrics import MetricSet, parse_metrics
from .scoring import mask_array, read_mask, score_files, skip, void_pixels


def evaluate_folders(
    pred_dir, gt_dir, *, metrics=None, workers: int | None = None, hce_convention: str = "pysod"
) -> MetricSet:
    """Predictions matched to ground truths by file stem; every ground truth needs one (a stem two
    files share is listed and left out: `files_by_stem`).

    The images are scored by `workers` processes (default: one per CPU core, at most 8), each
    over consecutive parts of the sorted list, joined in order: the numbers equal one process's.
    The workers are spawned, so a script that calls this with several workers needs the usual
    `if __name__ == "__main__":` guard (a spawned process imports the script that started it).
    """
    preds, gts = files_by_stem(Path(pred_dir)), files_by_stem(Path(gt_dir))
    if not gts:
        raise ValueError(_no_masks(Path(gt_dir)))
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
            scored = map(score_files, *args)
        else:
            # Spawned, not forked: a fork of a process holding OpenCV's or torch's threads can hang.
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            scored = stack.enter_context(pool).map(score_files, *args)
        for part in scored:  # in order: the numbers equal one process's
            _report_skipped(bar, part.skipped)
            result.join(part)
            bar.update(part.count + len(part.skipped))
    return result


def _no_masks(gt_dir: Path) -> str:
    """An empty --gt folder named, with its mask sub-folder when it is a dataset folder (im/ + gt/):
    otherwise the run ends with nothing evaluated and no word of which folder or why."""
    inner = next((gt_dir / name for name in MASK_DIRS if (gt_dir / name).is_dir()), None)
    fix = f"--gt {inner}, its mask folder" if inner else "the folder that holds the ground-truth mask files"
    return f"--gt {gt_dir}: no mask files in it; name {fix}"


def _report_skipped(bar, skipped) -> None:
    for what, reason in skipped:
        bar.write(f"evaluate: skipped {what}: {reason}", file=sys.stderr)


def evaluate_model(
    weights, data, *, save_pred=None, tile_layout=None, metrics=None, hce_convention: str = "pysod"
) -> MetricSet:
    """Segment every image of dataset folder(s) `data` at the checkpoint's working size, score
    at the original size, optionally keeping the predicted masks."""
    folders = [data] if isinstance(data, (str, Path)) else list(data)
    per_folder = [find_pairs(folder) for folder in folders]
    samples = [sample for found in per_folder for sample in found]
    targets = prediction_paths(folders, per_folder, save_pred) if save_pred else None
    model = birefnet.load_model(weights, tile_layout=tile_layout)
    metrics = MetricSet(metrics, hce_convention)
    backgrounds = find_backgrounds(folders)
    bar = tqdm(samples, desc="segment + evaluate", unit="img")
    for index, sample in enumerate(bar):
        try:
            if sample.cutout:  # the same backdrop every time this set is evaluated
                image, truth = read_sample(sample, np.random.default_rng([0, index]), backgrounds)
            else:
                image, truth = read_image(sample.image), read_mask(sample.mask)
        except (OSError, ValueError) as err:
            skip(metrics, f"{sample.image} / {sample.mask}", err)
            _report_skipped(bar, metrics.skipped[-1:])
            continue
        mask = birefnet.segment(model, image)
        if targets:
            save_image(mask_to_image(mask), targets[index])
        metrics.step(mask, mask_array(truth), void=void_pixels(truth))
    return metrics


def prediction_paths(folders, per_folder, save_pred) -> list[Path]:
    """Where each sample of `per_folder` (each folder's `find_pairs`) has its predicted mask written:
    save_pred/STEM.png for one dataset folder; save_pred/FOLDER/STEM.png for several (stems repeat
    across folders: 0001.png in each), FOLDER made unique by a number when two folders share a
    name. A file left by an earlier run is refused before any work: a prediction is never
    overwritten."""
    root = Path(save_pred)
    names: list[str] = []
    for folder in map(Path, folders):
        name = folder.resolve().name or "data"
        names.append(name if name not in names else f"{name}_{len(names) + 1}")
    paths = []
    for found, name in zip(per_folder, names):
        where = root if len(folders) == 1 else root / name
        paths += [where / f"{sample.image.stem}.png" for sample in found]
    existing = [path for path in paths if path.exists()]
    if existing:
        raise ValueError(
            f"--save-pred: {existing[0]} exists (from an earlier run; {len(existing)} file(s) in all): "
            "name another --save-pred folder"
        )
    return paths
