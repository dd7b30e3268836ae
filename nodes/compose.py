"""BiRefNetCompose: IMAGE + MASK -> RGBA, or composited on a colour or a background image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from birefnet.refine import composite, parse_colour

from . import host
from .spec import In, NodeSpec, Out


def compose(image, mask, background="#FFFFFF", invert_mask=False, background_image=None):
    mask = host.mask_batch("Compose", "mask", mask)
    if invert_mask:
        mask = 1 - mask
    rgb = host.rgb_channels_first(host.image_batch("Compose", "image", image))
    bg = None
    if background_image is not None:
        bg = host.rgb_channels_first(host.image_batch("Compose", "background_image", background_image)).to(rgb)
    batches = dict(images=rgb.shape[0], masks=mask.shape[0]) | ({} if bg is None else dict(backgrounds=bg.shape[0]))
    batch = host.common_batch("Compose", **batches)  # e.g. one image and Segment's objects: one cut-out each
    if mask.shape[-2:] != rgb.shape[-2:]:
        mask = F.interpolate(mask[:, None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    rgb, mask = rgb.expand(batch, -1, -1, -1), mask.to(rgb).expand(batch, -1, -1)
    if bg is not None:
        bg = F.interpolate(bg, size=rgb.shape[-2:], mode="bilinear", align_corners=False).expand(batch, -1, -1, -1)
    out = composite(rgb, mask, parse_colour(background) if bg is None else bg).permute(0, 2, 3, 1)
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
        In(
            "mask",
            "MASK",
            "Alpha, foreground = 1.0; resized to the image if needed. One mask for all images, one per image, "
            "or several for one image (e.g. Segment's objects: one cut-out each).",
        ),
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
