"""Benchmark: `python -m birefnet_training evaluate` in parallel against a sequential pysodmetrics loop.

    python -m birefnet_training.bench_eval --pairs 500 --size 1024

Writes synthetic ground truths and noisy, blurred predictions (PNG) to a temporary folder,
then times, on the same files: a plain loop over pysodmetrics' six measures (what the official
evaluation did before it ran in parallel), this package's evaluation of the same six metrics
with 1 process and with one per core, and of all nine. Prints a table; checks the numbers agree.
The parallel rows include starting the spawned workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFilter

from .evaluate import evaluate_folders
from .synthetic import make_sample

PYSOD_SIX = ["S", "E", "F", "WF", "MAE", "HCE"]


def write_pairs(root: Path, count: int, size: int) -> None:
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        _, mask = make_sample(5, i, (size, size))
        mask.save(root / "gt" / f"{i:05d}.png")
        pred = np.asarray(mask.filter(ImageFilter.GaussianBlur(3)).rotate(2), np.float32)
        Image.fromarray(np.clip(pred + rng.normal(0, 20, pred.shape), 0, 255).astype(np.uint8)).save(
            root / "pred" / f"{i:05d}.png"
        )


def pysodmetrics_loop(root: Path) -> tuple[dict, float]:
    """The baseline's results and its running time."""
    import py_sod_metrics as sod

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measures = {
            "sm": sod.Smeasure(),
            "em": sod.Emeasure(),
            "fm": sod.Fmeasure(),
            "wfm": sod.WeightedFmeasure(),
            "mae": sod.MAE(),
            "hce": sod.HumanCorrectionEffortMeasure(),
        }
    for gt_path in sorted((root / "gt").iterdir()):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(root / "pred" / gt_path.name), cv2.IMREAD_GRAYSCALE)
        for measure in measures.values():
            measure.step(pred=pred, gt=gt)
    return {
        "Sm": measures["sm"].get_results()["sm"],
        "MAE": measures["mae"].get_results()["mae"],
        "HCE": measures["hce"].get_results()["hce"],
    }, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet_training.bench_eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        write_pairs(root, args.pairs, args.size)
        print(
            f"# {args.pairs} pairs at {args.size}x{args.size} written in {time.perf_counter() - start:.0f} s; "
            f"{os.cpu_count()} cores"
        )
        print("| evaluation | metrics | processes | seconds | vs pysodmetrics loop |")
        print("|---|---|---|---|---|")
        reference, base = pysodmetrics_loop(root)
        print(f"| pysodmetrics, sequential loop | S E F WF MAE HCE | 1 | {base:.1f} | 1.00x |", flush=True)
        for metrics, workers in ((PYSOD_SIX, args.workers), (None, args.workers), (PYSOD_SIX, 1)):
            start = time.perf_counter()
            results = evaluate_folders(root / "pred", root / "gt", metrics=metrics, workers=workers).results()
            seconds = time.perf_counter() - start
            for key in ("Sm", "MAE", "HCE"):
                assert abs(results[key] - reference[key]) <= 1e-9 * max(1.0, abs(reference[key])), key
            names = " ".join(metrics) if metrics else "all nine (+ MBA BIoU MSE)"
            print(
                f"| python -m birefnet_training evaluate | {names} | {workers} | {seconds:.1f} | "
                f"{base / seconds:.2f}x faster |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
