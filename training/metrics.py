"""DIS/SOD evaluation: S-measure, E-measure, F-measure, weighted F, MAE (pysodmetrics, the
reference implementation the official code ports line for line) and HCE (DIS paper)."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import py_sod_metrics as sod
import torch

KEYS = ("Sm", "meanEm", "maxEm", "adpEm", "maxFm", "meanFm", "adpFm", "wFm", "MAE", "HCE")


def to_uint8(image) -> np.ndarray:
    """Float in [0, 1] (tensor or array) or uint8 -> (H, W) uint8, as the metrics read PNGs."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[-1] in (1, 3, 4) else image[0]
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image


class MetricSet:
    """Accumulates one prediction/ground-truth pair at a time; `results()` gives the KEYS."""

    def __init__(self, hce: bool = True):
        with warnings.catch_warnings():  # Fmeasure is the one the official evaluation ports; keep it
            warnings.simplefilter("ignore", UserWarning)
            self.sm, self.em, self.fm = sod.Smeasure(), sod.Emeasure(), sod.Fmeasure()
        self.wfm, self.mae = sod.WeightedFmeasure(), sod.MAE()
        self.hce = sod.HumanCorrectionEffortMeasure() if hce else None
        self.count = 0
        self.skipped: list[str] = []  # pairs that could not be read (reported, not scored)

    def step(self, pred, gt) -> None:
        pred, gt = to_uint8(pred), to_uint8(gt)
        if pred.shape != gt.shape:  # the official evaluation resizes predictions to the GT (bilinear)
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for metric in (self.sm, self.em, self.fm, self.wfm, self.mae, self.hce):
            if metric is not None:
                metric.step(pred=pred, gt=gt)
        self.count += 1

    def results(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no prediction/ground-truth pairs were evaluated")
        em, fm = self.em.get_results()["em"], self.fm.get_results()["fm"]
        out = {
            "Sm": self.sm.get_results()["sm"], "meanEm": em["curve"].mean(), "maxEm": em["curve"].max(),
            "adpEm": em["adp"], "maxFm": fm["curve"].max(), "meanFm": fm["curve"].mean(), "adpFm": fm["adp"],
            "wFm": self.wfm.get_results()["wfm"], "MAE": self.mae.get_results()["mae"],
        }
        if self.hce is not None:
            out["HCE"] = self.hce.get_results()["hce"]
        return {k: float(v) for k, v in out.items()}


def format_table(results: dict[str, float], title: str = "") -> str:
    keys = [k for k in KEYS if k in results]
    head = "| " + " | ".join(keys) + " |"
    rule = "|" + "---|" * len(keys)
    row = "| " + " | ".join(f"{results[k]:.1f}" if k == "HCE" else f"{results[k]:.4f}" for k in keys) + " |"
    return "\n".join(([title] if title else []) + [head, rule, row])
