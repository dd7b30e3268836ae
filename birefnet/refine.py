"""Mask post-processing and edge refinement, on (B, H, W) masks and (B, 3, H, W) images in [0, 1].

Everything runs on the tensors' device (GPU when there is one). The guided filter snaps a
mask's edges to the image's edges (kornia); `estimate_foreground` is the fast blur-fusion
foreground estimation the official repo ships (spec §7), which removes colour halos when a
cut-out is composited on a new background.
"""
from __future__ import annotations

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
    """Dilate (pixels > 0) or erode (pixels < 0) by a square of radius |pixels| (grey-level morphology)."""
    if pixels == 0:
        return mask
    r = abs(int(pixels))
    x = mask[:, None]
    out = F.max_pool2d(x if pixels > 0 else -x, 2 * r + 1, stride=1, padding=r)
    return (out if pixels > 0 else -out)[:, 0]


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian blur with sigma = radius / 2 (a soft edge about `radius` pixels wide)."""
    if radius <= 0:
        return mask
    sigma = radius / 2
    size = 2 * int(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(mask[:, None], (size, size), (sigma, sigma), border_type="replicate")[:, 0]


def fill_holes(mask: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """Set to 1 every background region (mask <= level) that does not touch the image border."""
    from scipy.ndimage import binary_fill_holes

    filled = [binary_fill_holes(m.cpu().numpy() > level) for m in mask.float()]
    filled = torch.from_numpy(np.stack(filled)).to(device=mask.device, dtype=mask.dtype)
    return torch.maximum(mask, filled)


def guided_filter(image: torch.Tensor, mask: torch.Tensor, radius: int = 8, eps: float = 1e-3) -> torch.Tensor:
    """Edge-aware smoothing of the mask guided by the image: edges follow the image's edges."""
    out = kornia.filters.guided_blur(image, mask[:, None], 2 * radius + 1, eps)
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
