"""BiRefNetCompose: IMAGE + MASK -> RGBA, or composited on a colour or a background image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from birefnet.refine import composite, parse_colour

from . import host
from .spec import In, NodeSpec, Out


def compose(image, mask, background="#FFFFFF", invert_mask=False, background_image=None):
    if mask.ndim == 2:
        mask = mask[None]
    if invert_mask:
        mask = 1 - mask
    rgb = host.rgb_channels_first(image)
    if mask.shape[-2:] != rgb.shape[-2:]:
        mask = F.interpolate(mask[:, None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    mask = mask.to(rgb).expand(rgb.shape[0], -1, -1) if mask.shape[0] == 1 else mask.to(rgb)
    if background_image is not None:
        bg = host.rgb_channels_first(background_image).to(rgb)
        bg = F.interpolate(bg, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        bg = bg.expand(rgb.shape[0], -1, -1, -1) if bg.shape[0] == 1 else bg
    else:
        bg = parse_colour(background)
    out = composite(rgb, mask, bg).permute(0, 2, 3, 1)
    rgba = torch.cat([rgb, mask[:, None]], dim=1).permute(0, 2, 3, 1)
    return out, rgba


SPEC = NodeSpec(
    node_id="BiRefNetCompose",
    display_name="BiRefNet Compose",
    category="BiRefNet",
    description="Puts an image over a colour or a background image using a mask (foreground = 1.0), and builds "
    "the RGBA image. For masks in LoadImage's 1 - alpha convention, turn on invert_mask.",
    inputs=(
        In("image", "IMAGE", "Foreground image(s)."),
        In("mask", "MASK", "Alpha, foreground = 1.0; resized to the image if needed."),
        In("background", "STRING", "Background colour (#RRGGBB or r,g,b) when no background_image.", default="#FFFFFF"),
        In("invert_mask", "BOOLEAN", "Use 1 - mask.", default=False),
        In("background_image", "IMAGE", "Optional background picture (resized to the image).", optional=True),
    ),
    outputs=(
        Out("composite", "IMAGE", "RGB result."),
        Out("rgba", "IMAGE", "RGBA (alpha = mask)."),
    ),
    search_aliases=("composite", "replace background", "background swap", "cutout on image", "alpha over"),
    run=compose,
)
