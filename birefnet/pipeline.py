"""From one image to the mask and cut-out that `birefnet segment` writes and `birefnet serve` sends.

Both call these functions with the same options, so a script talking to the server gets the
pixels the command line would have written: the network's mask (whole image, or guided by
boxes), refined with the Refine Edges options, kept at 0 outside the boxes, and a cut-out with
the input's colours or the re-estimated foreground colours.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .guidance import inside_boxes, segment_regions
from .highres import DEFAULT_FINE_MEGAPIXELS, segment_highres
from .inference import (
    PIL_SCALES,
    check_float_range,
    cutout,
    model_device,
    parse_size,
    segment,
    to_rgb_tensor,
    with_colour_profile,
    working_size,
)
from .refine import Refinement, refine_mask


def parse_resolution(text: str | None):
    """'native' (or None) -> None; 'aspect'; '1024' -> 1024x1024; 'WIDTHxHEIGHT' -> (height, width).
    Sizes are checked against the library's size rules (ValueError, one line)."""
    if text is None or text == "native":
        return None
    if text == "aspect":
        return "aspect"
    try:
        height, width = parse_size(text)
    except ValueError:
        raise ValueError(f"resolution {text!r}: use native, aspect, 1024 or WIDTHxHEIGHT") from None
    working_size(height, width, (height, width))
    return (height, width)


def segment_image(
    model,
    image,
    *,
    boxes=(),
    resolution=None,
    max_megapixels: float | None = None,
    highres: bool = False,
    fine_megapixels: float = DEFAULT_FINE_MEGAPIXELS,
    callback=None,
):
    """(mask (H, W), objects: one mask per box) for one image; without boxes, the whole image's mask,
    left on the model's device for `finish` (no CPU round trip between the network and the refinement).
    `highres`: coarse to fine (`segment_highres`), for images far above the working size.
    callback(done, total) after each pass (progress; an exception it raises stops the work there)."""
    check_highres(boxes, highres)
    if highres:
        mask = segment_highres(
            model,
            image,
            resolution=resolution,
            max_megapixels=max_megapixels,
            fine_megapixels=fine_megapixels,
            callback=callback,
        )
        return mask, [mask]
    if boxes:
        combined, objects = segment_regions(
            model, image, boxes=boxes, resolution=resolution, max_megapixels=max_megapixels, callback=callback
        )
        return combined, list(objects)
    mask = segment(
        model,
        image,
        resolution=resolution,
        max_megapixels=max_megapixels,
        callback=callback,
        device=model_device(model),
    )
    return mask, [mask]


def check_pixel_values(image: Image.Image) -> None:
    """A 32-bit picture (float `F`, integer `I`: scientific or exported TIFFs) may hold values of any range;
    one the model cannot read as a picture is refused here, when it is read (the CLI skips that image),
    not in its batch's forward (which ended the whole run). One line naming the fix."""
    if image.mode not in ("F", "I"):
        return
    scale = PIL_SCALES[image.mode]
    values = np.asarray(image, dtype=np.float32)
    try:
        check_float_range(values / scale)
    except ValueError:
        kind, range_ = ("float", "0 to 1") if image.mode == "F" else ("integer", f"0 to {scale:.0f}")
        if np.isnan(values).any():
            raise ValueError(f"its 32-bit {kind} pixels include NaN; save it as an 8- or 16-bit image") from None
        low, high = (
            f"{float(value):{'.4g' if image.mode == 'F' else '.0f'}}" for value in (values.min(), values.max())
        )
        raise ValueError(
            f"its 32-bit {kind} pixels run from {low} to {high}, not {range_}; save it as an 8- or 16-bit image"
        ) from None


def check_highres(boxes, highres: bool) -> None:
    """Coarse to fine works on the whole image; boxes choose parts of it: one or the other."""
    if boxes and highres:
        raise ValueError(
            "highres and boxes do not combine: a box is segmented on its own already; use one or the other"
        )


def finish(image, mask: torch.Tensor, refinement: Refinement, *, boxes=(), device="cpu"):
    """(mask (H, W) on the CPU, foreground colours (3, H, W) or None): `mask` refined on `device`,
    then 0 outside the boxes (grow, feather and the guided filter must not leak out of them);
    colours only when the refinement re-estimates them."""
    rgb = to_rgb_tensor(image, device)[None] if refinement.reads_image else None  # moved as stored, converted there
    refined, colours = refine_mask(rgb, mask[None].to(device, torch.float32), refinement)
    refined = refined[0].cpu()
    if boxes:
        refined = refined * inside_boxes(boxes, *refined.shape)
    return refined, colours[0].cpu() if refinement.foreground else None


def cutout_image(image, mask: torch.Tensor, colours: torch.Tensor | None = None) -> Image.Image:
    """RGBA cut-out: alpha = mask x the input's own alpha; colours = the input's, or `colours` (3, H, W)."""
    rgba = cutout(image, mask)
    if colours is None:
        return rgba
    pixels = np.array(rgba)
    pixels[..., :3] = (colours.permute(1, 2, 0).float().numpy() * 255 + 0.5).astype(np.uint8)
    return with_colour_profile(Image.fromarray(pixels), image)
