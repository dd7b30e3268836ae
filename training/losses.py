"""The official BiRefNet training objective (the official repository's `loss.py` and `config.py`): region
losses on every side output,
the outward-reference gradient loss, task presets and the late fine-tuning reweighting."""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from birefnet import DecoderOutput
from birefnet.decoder import gradient_reference

# The official config's lambdas_pix_last per task and its finetune_last_epochs.
PRESETS = {
    "DIS": {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 0.0},
    "general": {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0},
    "matting": {"bce": 30.0, "iou": 0.0, "ssim": 10.0, "mae": 100.0},
}
FINETUNE_LAST_EPOCHS = {"DIS": -40, "general": -20, "matting": -10}
# Factors applied once per epoch in the fine-tuning phase; they compound.
_FINETUNE_FACTORS = {
    "DIS": {"bce": 0.0, "iou": 0.5, "mae": 0.9, "ssim": 1.0},
    "general": {"bce": 0.0, "iou": 0.5, "mae": 0.9, "ssim": 1.0},
    "matting": {"mae": 1.0, "ssim": 0.9},
}


def finetune_phase_length(task: str, finetune_last_epochs: int | None = None) -> int:
    """The number of epochs of the late fine-tuning phase (0: none). The official config writes it
    negative (`finetune_last_epochs = -20`, an offset from the end); a command line says a length:
    both forms mean the same phase."""
    return abs(FINETUNE_LAST_EPOCHS[task] if finetune_last_epochs is None else finetune_last_epochs)


def loss_weights(task: str, epoch: int, epochs: int, finetune_last_epochs: int | None = None) -> dict[str, float]:
    """λ for 1-based `epoch`: the preset, compounded by the fine-tuning factors once for every
    epoch run in the last `finetune_last_epochs` epochs (the official code mutates them in place at
    the start of each such epoch, so a run shorter than the phase has k factors at epoch k)."""
    if task not in PRESETS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(PRESETS)}")
    length = finetune_phase_length(task, finetune_last_epochs)
    steps = max(0, epoch - max(0, epochs - length)) if length else 0
    return {k: v * _FINETUNE_FACTORS[task].get(k, 1.0) ** steps for k, v in PRESETS[task].items()}


def ssim_loss(prob: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """1 - (1 + SSIM) / 2 with an 11x11 Gaussian (σ 1.5) and zero padding, as the official
    loss (kornia's SSIM pads by reflection, which differs at the borders).

    With `labelled` (1 labelled, 0 unlabelled), each window's statistics are taken over its
    labelled pixels only (normalised convolution, scaled so that a fully labelled window is the
    official one) and the mean over labelled centres: unlabelled pixels have no effect at all."""
    window = kornia.filters.get_gaussian_kernel2d((11, 11), (1.5, 1.5)).to(prob)[None]  # (1, 1, 11, 11)
    channels = prob.shape[1]
    window = window.expand(channels, 1, 11, 11)
    blur = lambda x: F.conv2d(x, window, padding=5, groups=channels)
    if labelled is not None:
        coverage = blur(torch.ones_like(labelled)) / blur(labelled).clamp_min(1e-6)
        plain, blur = blur, lambda x: plain(x * labelled) * coverage
    mu_p, mu_t = blur(prob), blur(target)
    var_p = blur(prob * prob) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(prob * target) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1 - (1 + _mean(ssim, labelled)) / 2


def iou_loss(prob: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over samples of 1 - IoU (a sum, not a mean, as in the official code), over labelled pixels."""
    if labelled is not None:
        prob, target = prob * labelled, target * labelled
    inter = (prob * target).flatten(1).sum(1)
    union = (prob + target).flatten(1).sum(1) - inter
    return (1 - inter / union.clamp_min(1e-8)).sum()


def _mean(values: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """The mean, over labelled pixels (weighted by `labelled`) when given."""
    if labelled is None:
        return values.mean()
    return (values * labelled).sum() / labelled.sum().clamp_min(1e-8)


def pixel_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: dict[str, float], labelled: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Weighted region terms for one prediction (upsampled to the target's size). `labelled`
    (the target's shape; 1 labelled, 0 not, e.g. VOC's void band) leaves unlabelled pixels out of
    every term: neither their value nor their gradient counts. None: every pixel, the official loss."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    logits = logits.float()
    prob = torch.sigmoid(logits)
    terms = {}
    if weights.get("bce"):
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none" if labelled is not None else "mean")
        terms["bce"] = weights["bce"] * _mean(bce, labelled)
    if weights.get("iou"):
        terms["iou"] = weights["iou"] * iou_loss(prob, target, labelled)
    if weights.get("ssim"):
        terms["ssim"] = weights["ssim"] * ssim_loss(prob, target, labelled)
    if weights.get("mae"):
        terms["mae"] = weights["mae"] * _mean((prob - target).abs(), labelled)
    return terms


@dataclass
class LossResult:
    total: torch.Tensor
    terms: dict[str, float]


def birefnet_loss(
    out: DecoderOutput,
    image: torch.Tensor,
    target: torch.Tensor,
    weights: dict[str, float],
    labelled: torch.Tensor | None = None,
) -> LossResult:
    """Pixel loss on [m4, m3, m2, final] plus the gradient loss at stages 4, 3, 2 (which compares
    the model with the image's own edges, not with the target: `labelled` does not enter it)."""
    target = target.float().clamp(0, 1)
    labelled = None if labelled is None else labelled.float().clamp(0, 1)
    totals: dict[str, torch.Tensor] = {}
    for logits in [*out.side_logits, out.logits]:
        for name, value in pixel_loss(logits, target, weights, labelled).items():
            totals[name] = totals.get(name, 0) + value
    if out.gradient_preds:
        size = image.shape[-2:]
        edges = gradient_reference(image)
        grad = 0
        for pred, side in zip(out.gradient_preds, out.side_logits):
            label = edges * F.interpolate(side.float(), size=size, mode="bilinear", align_corners=True)
            pred = F.interpolate(pred.float(), size=size, mode="bilinear", align_corners=True)
            grad = grad + F.binary_cross_entropy_with_logits(pred, torch.sigmoid(label))
        totals["gradient"] = grad
    total = sum(totals.values())
    return LossResult(total, {k: float(v.detach()) for k, v in totals.items()})
