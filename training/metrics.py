"""DIS/SOD evaluation: S-measure, E-measure, F-measure, weighted F, MAE (pysodmetrics, the
reference implementation the official code ports line for line), HCE (DIS paper) and the
official evaluator's mBA, BIoU and MSE (`boundary_metrics`)."""

from __future__ import annotations

import sys
import warnings

import cv2
import numpy as np
import py_sod_metrics as sod

from .boundary_metrics import MSE, BoundaryAccuracy, BoundaryIoU

# The official evaluator's metric names, and the report keys each one gives.
METRICS = {
    "S": ("Sm",),
    "E": ("meanEm", "maxEm", "adpEm"),
    "F": ("maxFm", "meanFm", "adpFm"),
    "WF": ("wFm",),
    "MAE": ("MAE",),
    "HCE": ("HCE",),
    "MBA": ("mBA",),
    "BIoU": ("maxBIoU", "meanBIoU"),
    "MSE": ("MSE",),
}
KEYS = tuple(key for keys in METRICS.values() for key in keys)
HCE_CONVENTIONS = ("pysod", "dis")


def _measure(name: str):
    with warnings.catch_warnings():  # Fmeasure is the one the official evaluation ports; keep it
        warnings.simplefilter("ignore", UserWarning)
        return {
            "S": sod.Smeasure,
            "E": sod.Emeasure,
            "F": sod.Fmeasure,
            "WF": sod.WeightedFmeasure,
            "MAE": sod.MAE,
            "HCE": sod.HumanCorrectionEffortMeasure,
            "MBA": BoundaryAccuracy,
            "BIoU": BoundaryIoU,
            "MSE": MSE,
        }[name]()


def parse_metrics(names) -> tuple[str, ...]:
    """Official names (S, E, F, WF, MAE, HCE, MBA, BIoU, MSE; any case) -> a checked tuple; None: all."""
    if names is None:
        return tuple(METRICS)
    by_lower = {name.lower(): name for name in METRICS}
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {' '.join(METRICS)}")
    return tuple(dict.fromkeys(by_lower[n.lower()] for n in names))


def to_uint8(image) -> np.ndarray:
    """Float in [0, 1] (tensor or array) or uint8 -> (H, W) uint8, as the metrics read PNGs."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch is loaded: scoring workers never load it
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[-1] in (1, 3, 4) else image[0]
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image


def binarised(pred: np.ndarray) -> np.ndarray:
    """0/255 uint8: above 128 is foreground, as the DIS benchmark and the official evaluator read a map."""
    return np.where(pred > 128, 255, 0).astype(np.uint8)


class MetricSet:
    """Accumulates one prediction/ground-truth pair at a time; `results()` gives the KEYS of the
    chosen `metrics` (official names; default all). Sets filled by separate processes over
    consecutive parts of a data set `join` into exactly the set one process would have."""

    def __init__(self, metrics=None, hce_convention: str = "pysod"):
        """hce_convention: "pysod" (each prediction min-max normalised, then > 0.5: PySOD's and this
        package's default) or "dis" (raw values > 128, as the DIS benchmark and the official
        evaluator: a faint prediction that never reaches 129 counts as background)."""
        if hce_convention not in HCE_CONVENTIONS:
            raise ValueError(f"unknown HCE convention {hce_convention!r}; use {' or '.join(HCE_CONVENTIONS)}")
        self.measures = {name: _measure(name) for name in parse_metrics(metrics)}
        self.hce_convention = hce_convention
        self.count = 0
        self.skipped: list[tuple[str, str]] = []  # (pair, reason): could not be read, reported, not scored

    def step(self, pred, gt, void=None) -> None:
        """One pair; `void` (bool, the ground truth's shape, or None) marks unlabelled pixels. The
        measures need whole images (S- and E-measure compare regions), so a void pixel is not cut
        out but made to agree: prediction and ground truth both get the prediction's side of 128,
        0 or 255, which counts as right at every threshold and adds nothing to MAE."""
        pred, gt = to_uint8(pred), to_uint8(gt)
        if pred.shape != gt.shape:  # the official evaluation resizes predictions to the GT (bilinear)
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        if void is not None:
            agreed = binarised(pred)
            pred, gt = np.where(void, agreed, pred), np.where(void, agreed, gt)
        for name, measure in self.measures.items():
            if name == "HCE" and self.hce_convention == "dis":  # binary 0/255: PySOD's normalisation keeps it
                measure.step(pred=binarised(pred), gt=gt)
            else:
                measure.step(pred=pred, gt=gt)
        self.count += 1

    def join(self, other: "MetricSet") -> None:
        """Append `other`'s images after this set's (every measure keeps per-image lists)."""
        for name, measure in self.measures.items():
            for attr, value in vars(measure).items():
                if isinstance(value, list):
                    value.extend(getattr(other.measures[name], attr))
        self.count += other.count
        self.skipped += other.skipped

    def results(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no prediction/ground-truth pairs were evaluated")
        m = {name: measure.get_results() for name, measure in self.measures.items()}
        out = {}
        if "S" in m:
            out["Sm"] = m["S"]["sm"]
        if "E" in m:
            em = m["E"]["em"]
            out.update(meanEm=em["curve"].mean(), maxEm=em["curve"].max(), adpEm=em["adp"])
        if "F" in m:
            fm = m["F"]["fm"]
            out.update(maxFm=fm["curve"].max(), meanFm=fm["curve"].mean(), adpFm=fm["adp"])
        if "WF" in m:
            out["wFm"] = m["WF"]["wfm"]
        if "MAE" in m:
            out["MAE"] = m["MAE"]["mae"]
        if "HCE" in m:
            out["HCE"] = m["HCE"]["hce"]
        if "MBA" in m:
            out["mBA"] = m["MBA"]["mba"]
        if "BIoU" in m:
            curve = m["BIoU"]["biou"]["curve"]
            out.update(maxBIoU=curve.max(), meanBIoU=curve.mean())
        if "MSE" in m:
            out["MSE"] = m["MSE"]["mse"]
        return {k: float(v) for k, v in out.items()}


def format_table(results: dict[str, float], title: str = "") -> str:
    keys = [k for k in KEYS if k in results]
    head = "| " + " | ".join(keys) + " |"
    rule = "|" + "---|" * len(keys)
    row = "| " + " | ".join(f"{results[k]:.1f}" if k == "HCE" else f"{results[k]:.4f}" for k in keys) + " |"
    return "\n".join(([title] if title else []) + [head, rule, row])
