"""Mask post-processing and edge refinement, on (B, H, W) masks and (B, 3, H, W) images in [0, 1].

Everything runs on the tensors' device (GPU when there is one). The guided filter snaps a
mask's edges to the image's edges (kornia); `estimate_foreground` is the fast blur-fusion
foreground estimation the official repo ships, which removes colour halos when a cut-out is
composited on a new background. `refine_mask` is the whole pipeline, in one fixed order, shared
by the Refine Edges node, `birefnet segment` and `birefnet serve`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F


def levels(mask: torch.Tensor, black: float = 0.0, white: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """Map [black, white] to [0, 1] (clipping outside), then apply gamma."""
    if not 0 <= black < white <= 1:
        raise ValueError(f"levels need 0 <= black < white <= 1, got black={black}, white={white}")
    out = ((mask - black) / (white - black)).clamp(0, 1)
    return out if gamma == 1.0 else out.pow(1.0 / gamma)


def threshold(mask: torch.Tensor, value: float) -> torch.Tensor:
    """Binary mask: 1 where mask > value."""
    return (mask > value).to(mask.dtype)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) by a square of radius |pixels| (grey-level morphology).

    The square's maximum is the maximum along rows, then along columns: two 1-D passes give the same
    pixels at a cost linear in the radius (one 2-D window costs its area)."""
    if pixels == 0:
        return mask
    r = abs(int(pixels))
    x = mask[:, None] if pixels > 0 else -mask[:, None]
    x = F.max_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))
    out = F.max_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0))
    return (out if pixels > 0 else -out)[:, 0]


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian blur with sigma = radius / 2 (a soft edge about `radius` pixels wide)."""
    sigma = radius / 2
    size = 2 * int(3 * sigma) + 1
    if size == 1:  # a one-tap kernel changes nothing (and a sigma that rounds to 0 would be refused)
        return mask
    return kornia.filters.gaussian_blur2d(mask[:, None], (size, size), (sigma, sigma), border_type="replicate")[:, 0]


def fill_holes(mask: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """Set to 1 every background region (mask <= level) that does not touch the image border."""
    from scipy.ndimage import binary_fill_holes

    filled = [binary_fill_holes(m.cpu().numpy() > level) for m in mask.float()]
    filled = torch.from_numpy(np.stack(filled)).to(device=mask.device, dtype=mask.dtype)
    return torch.maximum(mask, filled)


def guided_filter(image: torch.Tensor, mask: torch.Tensor, radius: int = 8, eps: float = 1e-3) -> torch.Tensor:
    """Edge-aware smoothing of the mask guided by the image: edges follow the image's edges.

    The window is `radius` pixels each way, capped per axis to the image (its reflected border needs
    a side longer than the radius): thin or small images work, larger ones are filtered unchanged.
    """
    height, width = mask.shape[-2:]
    size = (2 * min(radius, height - 1) + 1, 2 * min(radius, width - 1) + 1)
    out = kornia.filters.guided_blur(image, mask[:, None], size, eps)
    return out[:, 0].clamp(0, 1)


def _blur(x: torch.Tensor, size: int) -> torch.Tensor:
    return kornia.filters.box_blur(x, (size, size), border_type="replicate")


def _fuse(image, fg, bg, alpha, size):
    """One blur-fusion pass: local foreground/background means corrected by the compositing error."""
    blurred_alpha = _blur(alpha, size)
    fg_mean = _blur(fg * alpha, size) / (blurred_alpha + 1e-5)
    bg_mean = _blur(bg * (1 - alpha), size) / ((1 - blurred_alpha) + 1e-5)
    fg = fg_mean + alpha * (image - alpha * fg_mean - (1 - alpha) * bg_mean)
    return fg.clamp(0, 1), bg_mean


def estimate_foreground(image: torch.Tensor, mask: torch.Tensor, radius: int = 90) -> torch.Tensor:
    """Foreground colours (B, 3, H, W) for compositing `image` with alpha `mask` elsewhere.

    Two blur-fusion passes (kernel `radius`, then 6), after the official `refine_foreground`
    (Photoroom's fast foreground estimation); odd kernels keep it centred.
    """
    alpha = mask[:, None].float()
    image = image.float()
    size = radius | 1
    fg, bg = _fuse(image, image, image, alpha, size)
    fg, _ = _fuse(image, fg, bg, alpha, 7)
    return fg


def composite(foreground: torch.Tensor, mask: torch.Tensor, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """foreground·α + background·(1 − α); background is an RGB triple or an image (B, 3, H, W)."""
    alpha = mask[:, None]
    if not isinstance(background, torch.Tensor):
        background = torch.tensor(background, device=foreground.device, dtype=foreground.dtype).view(1, 3, 1, 1)
    return foreground * alpha + background * (1 - alpha)


def parse_colour(text: str) -> tuple[float, float, float]:
    """'#RRGGBB', 'RRGGBB' or 'r,g,b' (0-255) -> floats in [0, 1]."""
    value = text.strip().lstrip("#")
    try:
        if "," in value:
            rgb = [int(v) for v in value.split(",")]
        else:
            rgb = [int(value[i : i + 2], 16) for i in (0, 2, 4)] if len(value) == 6 else []
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {text!r}: use #RRGGBB or r,g,b with values 0-255")
    return tuple(v / 255 for v in rgb)


# The guided filter's smoothness for images in [0, 1]: below 1e-6 it only copies the image's noise, above 1
# it is a plain blur of the mask (and far above, float32 overflows).
MIN_GUIDED_EPS, MAX_GUIDED_EPS = 1e-6, 1.0


@dataclass(frozen=True)
class Refinement:
    """The Refine Edges options; the defaults change nothing (so a default run keeps the network's mask)."""

    black_point: float = 0.0  # mask values below become 0
    white_point: float = 1.0  # mask values above become 1
    threshold: float = 0.0  # binarise at this value (0 = keep soft)
    fill_holes: bool = False  # fill background regions enclosed by the foreground
    grow: int = 0  # grow (+) or shrink (-) by this many pixels
    guided_radius: int = 0  # guided filter radius in pixels (0 = off)
    guided_eps: float = 1e-3  # guided filter smoothness
    feather: float = 0.0  # soften the edge over about this many pixels (0 = off)
    foreground: bool = False  # re-estimate the edge colours (removes halos in cut-outs)
    foreground_radius: int = 90  # blur size of the foreground estimation's first pass

    def __post_init__(self):
        numbers = {name: value for name, value in vars(self).items() if isinstance(value, (int, float))}
        infinite = [f"{name} {value}" for name, value in numbers.items() if not math.isfinite(value)]
        if infinite:
            raise ValueError(f"{', '.join(infinite)}: use finite numbers")
        problems = []
        if not 0 <= self.black_point < self.white_point <= 1:
            problems.append(
                f"black_point {self.black_point} and white_point {self.white_point} need "
                "0 <= black_point < white_point <= 1"
            )
        if not 0 <= self.threshold < 1:
            problems.append(f"threshold {self.threshold} must be from 0 (off) to below 1")
        if self.guided_radius < 0 or self.feather < 0:
            problems.append("guided_radius and feather must not be negative")
        if not MIN_GUIDED_EPS <= self.guided_eps <= MAX_GUIDED_EPS:
            problems.append(f"guided_eps {self.guided_eps} must be from {MIN_GUIDED_EPS:g} to {MAX_GUIDED_EPS:g}")
        if self.foreground_radius < 1:
            problems.append(f"foreground_radius {self.foreground_radius} must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def reads_image(self) -> bool:
        """Whether the image itself is needed (the guided filter, the foreground colours); the
        other steps work on the mask alone."""
        return self.guided_radius > 0 or self.foreground


def refine_mask(rgb: torch.Tensor | None, mask: torch.Tensor, options: Refinement = Refinement()):
    """(mask (B, H, W), colours (B, 3, H, W)) for images `rgb` (B, 3, H, W) and masks (B, H, W) in [0, 1].

    In order: levels, threshold, fill holes, grow/shrink, guided filter, feather; the colours are
    the re-estimated foreground with `options.foreground`, else `rgb` itself. `rgb` may be None
    where `options.reads_image` is False.
    """
    mask = levels(mask, options.black_point, options.white_point)
    if options.threshold > 0:
        mask = threshold(mask, options.threshold)
    if options.fill_holes:
        mask = fill_holes(mask)
    mask = grow(mask, options.grow)
    if options.guided_radius > 0:
        mask = guided_filter(rgb, mask, options.guided_radius, options.guided_eps)
    mask = feather(mask, options.feather)
    colours = estimate_foreground(rgb, mask, options.foreground_radius) if options.foreground else rgb
    return mask, colours
