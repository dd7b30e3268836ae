"""BiRefNetRefineEdges: IMAGE + MASK -> refined MASK, foreground IMAGE, RGBA IMAGE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from birefnet import refine
from birefnet.refine import MAX_GUIDED_EPS, MIN_GUIDED_EPS

from . import host
from .spec import In, NodeSpec, Out


def refine_edges(
    image,
    mask,
    black_point=0.0,
    white_point=1.0,
    threshold=0.0,
    grow=0,
    fill_holes=False,
    guided_radius=0,
    guided_eps=0.001,
    feather=0.0,
    estimate_foreground=True,
    foreground_radius=90,
    background="#FFFFFF",
    invert_mask=False,
):
    image = host.image_batch("RefineEdges", "image", image)
    mask = host.mask_batch("RefineEdges", "mask", mask)
    batch = host.common_batch("RefineEdges", images=image.shape[0], masks=mask.shape[0])
    colour = refine.parse_colour(background)
    options = refine.Refinement(
        black_point=black_point,
        white_point=white_point,
        threshold=threshold,
        grow=grow,
        fill_holes=fill_holes,
        guided_radius=guided_radius,
        guided_eps=guided_eps,
        feather=feather,
        foreground=estimate_foreground,
        foreground_radius=foreground_radius,
    )
    device = host.torch_device("auto")
    out = host.intermediate_device()
    progress = host.Progress(batch)
    masks, foregrounds = [], []
    for i in range(batch):
        host.check_interrupt()
        own = min(i, image.shape[0] - 1)
        rgb = host.rgb_channels_first(image[own : own + 1]).to(device, torch.float32)
        m = mask[min(i, mask.shape[0] - 1)][None].to(device, torch.float32)
        if invert_mask:
            m = 1 - m
        if m.shape[-2:] != rgb.shape[-2:]:  # e.g. a mask made at another size
            m = F.interpolate(m[None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[0]
        m, fg = refine.refine_mask(rgb, m, options)
        masks.append(m.to(out))
        foregrounds.append(fg.to(out))
        progress.update(i + 1)
    mask = torch.cat(masks)
    fg = torch.cat(foregrounds)
    composited = refine.composite(fg, mask, colour).permute(0, 2, 3, 1)
    rgba = torch.cat([fg, mask[:, None]], dim=1).permute(0, 2, 3, 1)
    return mask, composited, rgba


SPEC = NodeSpec(
    node_id="BiRefNetRefineEdges",
    display_name="BiRefNet Refine Edges",
    category="BiRefNet",
    description=(
        "Cleans a mask and fixes cut-out edges. In order: levels (black/white point), threshold, fill holes, "
        "grow/shrink, guided filter (snaps the mask to the image's edges), feather; then fast foreground colour "
        "estimation (blur-fusion) so hair and soft edges lose the old background's halo. Runs on the GPU."
    ),
    inputs=(
        In("image", "IMAGE", "The images the masks belong to."),
        In(
            "mask",
            "MASK",
            "Foreground = 1.0 (BiRefNet Segment's output). One mask for all images, one per image, or "
            "several for one image (Segment's objects).",
        ),
        In("black_point", "FLOAT", "Mask values below become 0.", default=0.0, min=0.0, max=0.99, step=0.01),
        In("white_point", "FLOAT", "Mask values above become 1.", default=1.0, min=0.01, max=1.0, step=0.01),
        In("threshold", "FLOAT", "Binarise at this value (0 = keep soft).", default=0.0, min=0.0, max=0.99, step=0.01),
        In("grow", "INT", "Grow (+) or shrink (-) the mask by this many pixels.", default=0, min=-256, max=256),
        In("fill_holes", "BOOLEAN", "Fill background regions enclosed by the foreground.", default=False),
        In(
            "guided_radius",
            "INT",
            "Guided-filter radius in pixels (0 = off); 4-16 snaps edges to the image.",
            default=0,
            min=0,
            max=128,
        ),
        In(
            "guided_eps",
            "FLOAT",
            "Guided-filter smoothness: higher keeps the mask, lower follows the image.",
            default=0.001,
            min=MIN_GUIDED_EPS,
            max=MAX_GUIDED_EPS,
            step=0.0001,
            advanced=True,
        ),
        In(
            "feather",
            "FLOAT",
            "Soften the edge over about this many pixels (0 = off).",
            default=0.0,
            min=0.0,
            max=256.0,
            step=0.5,
        ),
        In(
            "estimate_foreground", "BOOLEAN", "Re-estimate edge colours (removes halos; for compositing).", default=True
        ),
        In(
            "foreground_radius",
            "INT",
            "Blur size of the foreground estimation's first pass.",
            default=90,
            min=3,
            max=512,
            advanced=True,
        ),
        In("background", "STRING", "Colour behind the composited output (#RRGGBB or r,g,b).", default="#FFFFFF"),
        In(
            "invert_mask",
            "BOOLEAN",
            "Invert the input first (for masks in LoadImage's 1 - alpha convention).",
            default=False,
            advanced=True,
        ),
    ),
    outputs=(
        Out("refined_mask", "MASK", "Refined mask, foreground = 1.0."),
        Out("foreground", "IMAGE", "Foreground composited on the background colour (RGB)."),
        Out("rgba", "IMAGE", "Foreground colours with the mask as alpha (4 channels)."),
    ),
    search_aliases=("refine mask", "matte", "alpha matting", "guided filter", "hair edges", "feather mask"),
    run=refine_edges,
)
