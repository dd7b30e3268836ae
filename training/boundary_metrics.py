"""The official evaluator's boundary and error metrics beside PySOD's: mBA, BIoU and MSE.

Each takes uint8 (H, W) prediction and ground truth of one size, like pysodmetrics'
measures (`step(pred=, gt=)`, `get_results()`), and keeps one value per image so that
per-process results can be joined in image order. Definitions (those of the official
BiRefNet evaluation):

* MSE: ground truth binarised at > 128; prediction scaled to [0, 1] and min-max
  normalised (unless constant); mean of (pred − gt)² per image, then over images.
* mBA (mean boundary accuracy): both maps binarised at > 128; for 5 radii from 1 towards
  (H + W) / 300, the band is the ground truth's morphological gradient with an elliptical
  disk of that radius, and the accuracy the share of band pixels where prediction and ground
  truth agree; the image's value is the mean over the radii, mBA the mean over images.
  (A ground truth without any boundary has no band: its accuracy counts as 1 here, where the
  official code divides by zero.)
* BIoU (boundary IoU): boundary of a map = map − its erosion by a 3x3 square repeated
  d = max(1, round(0.02 · diagonal)) times, the map padded by one zero pixel (so the image
  border counts as boundary). The ground truth is binarised (> 128) first; the prediction is
  normalised like MSE's and truncated to uint8. For every threshold t = 255 … 0:
  IoU(t) = |B_pred ≥ t ∩ B_gt| / (|B_gt| + |B_pred ≥ t outside B_gt|). The curve is averaged
  over images; `maxBIoU` and `meanBIoU` are its maximum and mean.
"""

from __future__ import annotations

import cv2
import numpy as np


def _normalised(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = pred.astype(np.float64) / 255
    low, high = pred.min(), pred.max()
    if high != low:
        pred = (pred - low) / (high - low)
    return pred, gt > 128


class MSE:
    def __init__(self):
        self.values: list[float] = []

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, target = _normalised(pred, gt)
        self.values.append(float(np.mean((pred - target) ** 2)))

    def get_results(self) -> dict:
        return {"mse": float(np.mean(self.values))}


class BoundaryAccuracy:
    steps = 5

    def __init__(self):
        self.values: list[float] = []

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, target = (pred > 128).astype(np.uint8), (gt > 128).astype(np.uint8)
        height, width = target.shape
        largest = (width + height) / 300
        accuracies = []
        for i in range(self.steps):
            radius = 1 + int((largest - 1) / self.steps * i)
            disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            band = cv2.morphologyEx(target, cv2.MORPH_GRADIENT, disk) > 0
            total = int(band.sum())
            accuracies.append(1.0 if total == 0 else float((pred[band] == target[band]).sum()) / total)
        self.values.append(sum(accuracies) / self.steps)

    def get_results(self) -> dict:
        return {"mba": float(np.mean(self.values))}


def boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """mask − erosion(mask), the mask padded with zeros so that the image border is boundary too."""
    height, width = mask.shape
    steps = max(1, int(round(ratio * np.sqrt(height**2 + width**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=steps)[1 : height + 1, 1 : width + 1]
    return mask - eroded


class BoundaryIoU:
    def __init__(self, ratio: float = 0.02):
        self.ratio = ratio
        self.curves: list[np.ndarray] = []

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, target = _normalised(pred, gt)
        pred_edge = boundary((pred * 255).astype(np.uint8), self.ratio)
        gt_edge = boundary(target.astype(np.uint8) * 255, self.ratio) > 128
        bins = np.arange(257)
        inside = np.cumsum(np.histogram(pred_edge[gt_edge], bins=bins)[0][::-1])  # >= t for t = 255..0
        outside = np.cumsum(np.histogram(pred_edge[~gt_edge], bins=bins)[0][::-1])
        self.curves.append(inside / (max(int(gt_edge.sum()), 1) + outside))

    def get_results(self) -> dict:
        return {"biou": {"curve": np.mean(np.array(self.curves, dtype=np.float64), axis=0)}}
