"""Coarse-to-fine segmentation for images far above the model's working size (4K, 8K, scans).

A first pass on the whole image (at the checkpoint's working size) finds the object. The
object's region, plus a margin, is then segmented again on its own, at the largest working
size the memory cap allows (`fine_megapixels`, default 4.2: 2048x2048 fits), so the network
sees the whole object, with its context, at several times the detail. The fine result
replaces the coarse one inside the region, feathered over the margin so there is no seam.
Memory is that of one pass at the capped size plus a few float maps of the image, whatever
the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .inference import model_working_size, predict, resize, to_rgb_tensor

DEFAULT_FINE_MEGAPIXELS = 4.2  # megapixels: 2048x2048 fits


@dataclass(frozen=True)
class HighResPlan:
    """What `segment_highres` does for one image: the working sizes of both passes, and the
    region (top, left, bottom, right, in image pixels) of the fine pass, or None for coarse only."""

    coarse_size: tuple[int, int]
    region: tuple[int, int, int, int] | None
    fine_size: tuple[int, int] | None


def object_region(coarse: torch.Tensor, height: int, width: int, margin: float, threshold: float = 0.1):
    """Box (top, left, bottom, right) of the pixels above `threshold` in a coarse probability
    map, in image pixels, widened by `margin` times the image's longer side; None if empty."""
    rows = torch.nonzero((coarse > threshold).any(dim=1)).flatten()
    cols = torch.nonzero((coarse > threshold).any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    ch, cw = coarse.shape
    pad = max(16, round(margin * max(height, width)))
    top = max(0, math.floor(rows[0].item() * height / ch) - pad)
    bottom = min(height, math.ceil((rows[-1].item() + 1) * height / ch) + pad)
    left = max(0, math.floor(cols[0].item() * width / cw) - pad)
    right = min(width, math.ceil((cols[-1].item() + 1) * width / cw) + pad)
    return top, left, bottom, right


def plan_highres(coarse: torch.Tensor, height: int, width: int, fine_megapixels: float, margin: float) -> HighResPlan:
    """The fine pass runs when it would see the object at least 1.25x larger than the coarse pass."""
    coarse_size = tuple(coarse.shape)
    region = object_region(coarse, height, width, margin)
    if region is None:
        return HighResPlan(coarse_size, None, None)
    top, left, bottom, right = region
    rh, rw = bottom - top, right - left
    scale = min(1.0, math.sqrt(fine_megapixels * 1e6 / (rh * rw)))
    fine_size = (max(64, int(rh * scale) // 32 * 32), max(64, int(rw * scale) // 32 * 32))
    gain = min(fine_size[0] / (rh * coarse_size[0] / height), fine_size[1] / (rw * coarse_size[1] / width))
    if gain < 1.25:
        return HighResPlan(coarse_size, None, None)
    return HighResPlan(coarse_size, region, fine_size)


def _ramp(length: int, feather: int, soft_start: bool, soft_end: bool) -> torch.Tensor:
    """1-D blend weights: 0 -> 1 over `feather` pixels at the region's inner edges, 1 at image borders."""
    weights = torch.ones(length)
    feather = min(feather, length // 2)
    if feather > 0:
        edge = (torch.arange(feather, dtype=torch.float32) + 0.5) / feather
        if soft_start:
            weights[:feather] = edge
        if soft_end:
            weights[-feather:] = torch.minimum(weights[-feather:], edge.flip(0))
    return weights


@torch.no_grad()  # not inference_mode: callers may edit the mask in place
def segment_highres(
    model,
    image,
    *,
    resolution=None,
    max_megapixels: float | None = None,
    fine_megapixels: float = DEFAULT_FINE_MEGAPIXELS,
    margin: float = 0.03,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Foreground mask (H, W) float32 in [0, 1] of one large image, coarse to fine.

    resolution / max_megapixels: the coarse pass's working size, as in `segment`.
    fine_megapixels: memory cap of the fine pass (its working area; memory grows with it).
    margin: context kept around the object, as a fraction of the image's longer side; the
    blend is feathered over it. callback(done, 2) after each pass (progress; an exception it raises
    stops the work there: raised after the coarse pass, the fine pass does not run, and nothing is
    returned), so a host can show progress and cancel within one large image. Images the fine pass
    would not see at 1.25x more detail get the coarse pass alone (same as `segment`).
    """
    if fine_megapixels <= 0:
        raise ValueError(f"fine_megapixels must be positive, got {fine_megapixels}")
    rgb = to_rgb_tensor(image)
    _, height, width = rgb.shape
    coarse_size = model_working_size(model, height, width, resolution, max_megapixels)
    coarse = predict(model, resize(rgb[None], coarse_size)).cpu()[0, 0]
    if callback is not None:
        callback(1, 2)
    mask = resize(coarse[None, None], (height, width))[0, 0].clamp(0, 1)
    plan = plan_highres(coarse, height, width, fine_megapixels, margin)
    if plan.region is not None:
        top, left, bottom, right = plan.region
        crop = rgb[None, :, top:bottom, left:right]
        fine = resize(predict(model, resize(crop, plan.fine_size)).cpu(), (bottom - top, right - left))[0, 0]
        feather = max(8, round(margin * max(height, width)))
        weight = (
            _ramp(bottom - top, feather, top > 0, bottom < height)[:, None]
            * _ramp(right - left, feather, left > 0, right < width)[None, :]
        )
        region = mask[top:bottom, left:right]
        region += weight * (fine.clamp(0, 1) - region)
    if callback is not None:
        callback(2, 2)
    return mask
