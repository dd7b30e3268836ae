"""Pictures of the outward reference: where the model looks for detail.

`gradient_preview` returns colour-mapped maps at the image's size: the image-gradient
reference (|Laplacian| of the channel mean, the target the gradient heads are trained
towards) and the model's gradient attention at decoder stages 4, 3 and 2.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

from .decoder import gradient_reference
from .inference import model_resolution, normalise, resize, to_rgb_tensor, working_size

PREVIEW_NAMES = ("image gradient", "attention stage 4", "attention stage 3", "attention stage 2")


def _colour(maps: torch.Tensor, colormap: str) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, 3, H, W) RGB in [0, 1]."""
    cmap = kornia.color.ColorMap(colormap, num_colors=256, device=maps.device)
    return kornia.color.apply_colormap(maps, cmap)


def _stretch(x: torch.Tensor) -> torch.Tensor:
    """Scale each map so its 99th percentile is 1 (gradients are heavy-tailed)."""
    top = torch.quantile(x.flatten(1).float(), 0.99, dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return (x / top).clamp(0, 1)


@torch.inference_mode()
def gradient_preview(model, image, resolution=None, max_megapixels=None, colormap: str = "turbo") -> torch.Tensor:
    """(4, 3, H, W) RGB previews of one image, in the order of PREVIEW_NAMES."""
    rgb = to_rgb_tensor(image)
    height, width = rgb.shape[1:]
    size = working_size(height, width, resolution or model_resolution(model), max_megapixels)
    param = next(model.parameters())
    x = normalise(resize(rgb[None], size)).to(device=param.device, dtype=param.dtype)
    details = model.forward_details(x)
    edges = gradient_reference(x).abs()
    maps = [_stretch(edges)] + [a.float() for a in details.gradient_attention]
    maps = [F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False) for m in maps]
    return _colour(torch.cat(maps).clamp(0, 1), colormap).cpu()
