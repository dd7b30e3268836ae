"""BiRefNetGradientPreview: BIREFNET + IMAGE -> the outward-reference maps as an IMAGE batch."""

from __future__ import annotations

import torch

from birefnet.preview import PREVIEW_NAMES, gradient_preview
from birefnet.stopping import checks_inside

from . import host
from .spec import In, NodeSpec, Out

COLORMAPS = ("turbo", "viridis", "plasma", "hot", "bone")


def preview(birefnet_model, image, colormap="turbo"):
    if host.image_batch("GradientPreview", "image", image).shape[0] == 0:
        raise ValueError("GradientPreview got an empty IMAGE batch")
    model = birefnet_model.ready()
    frames = []
    with checks_inside(model, host.check_interrupt):  # Cancel inside a CPU pass too
        for i in range(image.shape[0]):
            host.check_interrupt()
            frames.append(gradient_preview(model, image[i].permute(2, 0, 1), colormap=colormap))
    return (torch.cat(frames).permute(0, 2, 3, 1).to(host.intermediate_device()),)


SPEC = NodeSpec(
    node_id="BiRefNetGradientPreview",
    display_name="BiRefNet Gradient Preview",
    category="BiRefNet",
    description=(
        "Shows where BiRefNet looks for detail (its outward reference): for each input image, four pictures "
        f"in this order: {', '.join(PREVIEW_NAMES)}. Bright = high image gradient / strong attention."
    ),
    inputs=(
        In("birefnet_model", "BIREFNET", "From Load BiRefNet."),
        In("image", "IMAGE", "Image(s) to inspect."),
        In("colormap", "COMBO", "Colour map of the previews.", default="turbo", options=COLORMAPS),
    ),
    outputs=(Out("previews", "IMAGE", "4 colour-mapped maps per input image, at its size."),),
    search_aliases=("edge map", "outward reference", "attention preview", "birefnet debug"),
    run=preview,
)
