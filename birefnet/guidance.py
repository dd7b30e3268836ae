"""Guided segmentation: cut out what the user points at (boxes, or a region mask), one object each.

BiRefNet always answers "the salient object" of what it sees. Shown only a region around the
wanted object, at the checkpoint's working size (like the fine pass of coarse-to-fine), it
answers for that object, in more detail than a whole-image pass gives a small object. Each
box, and each connected region of a region mask (e.g. a SAM mask or a painted one), is grown
by a margin, segmented alone and pasted back inside its box only: the margin is context for the
network's input, and outside the boxes (a region's box: its bounding box) the mask is 0. The network
needs context around the object: the default margin of half the box on each side scored best
on a small object in a 4K frame (IoU 0.22 at 0.1, 0.63 at 0.25, 0.80 at 0.5, 0.71 at 1.0).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .inference import mask_values, segment, to_rgb_tensor


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' in pixels -> (x, y, w, h); inf, nan and 1e400 are refused like any other non-number."""
    try:
        x, y, w, h = (int(round(float(v))) for v in text.replace(" ", "").split(","))
    except (ValueError, OverflowError):  # OverflowError: int(round(inf)), and 1e400 parses as inf
        raise ValueError(f"box {text!r}: use x,y,w,h in pixels, e.g. 120,80,400,300") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"box {text!r}: width and height must be positive")
    return x, y, w, h


def mask_regions(region: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) of the connected regions (> 0.5, 8-connected) of a (H, W) mask, largest first."""
    from scipy import ndimage

    labels, _ = ndimage.label(region.float().cpu().numpy() > 0.5, structure=[[1, 1, 1]] * 3)
    boxes = [
        (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        for rows, cols in ndimage.find_objects(labels)
    ]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def region_masks(region: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
    """A region mask (H, W) or masks (N, H, W) as a list of (H, W) masks at the image's size: one of
    another size but the image's shape (a preview's, a downscaled one's) is scaled; one of another shape
    (a transposed array, another image's mask) would be stretched onto the wrong pixels, so it is refused."""
    if region.ndim == 2:
        region = region[None]
    if region.ndim != 3:
        raise ValueError(f"a region mask is (H, W) or (N, H, W), got shape {tuple(region.shape)}")
    mask_height, mask_width = region.shape[1:]
    if not _same_shape(mask_height, mask_width, height, width):
        raise ValueError(
            f"the region mask is {mask_width}x{mask_height} but the image is {width}x{height}: a mask of another "
            "shape would be stretched onto other pixels; give a mask of the image's size (or its shape, scaled)"
        )
    if region.shape[1:] != (height, width):
        region = F.interpolate(region.float()[:, None], (height, width), mode="bilinear", align_corners=False)[:, 0]
    return list(region)


def _same_shape(mask_height: int, mask_width: int, height: int, width: int) -> bool:
    """Whether a mask's aspect ratio is the image's, up to the rounding of a scaled mask (about a pixel)."""
    if not mask_height or not mask_width:
        return False  # no pixels: no shape to scale
    tolerance = 0.01 + 1 / min(mask_height, mask_width)
    return abs(mask_width / mask_height - width / height) <= tolerance * width / height


def clip_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the box's part inside the image; a box wholly outside is an error."""
    x, y, w, h = box
    top, left = max(0, y), max(0, x)
    bottom, right = min(height, y + h), min(width, x + w)
    if bottom <= top or right <= left:
        raise ValueError(
            f"box {x},{y},{w},{h} lies outside the {width}x{height} image; boxes are x,y,w,h in pixels of the image"
        )
    return top, left, bottom, right


def _grown(box, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the box grown by `margin` of its size on each side, inside the image."""
    x, y, w, h = box
    dx, dy = max(8, round(w * margin)), max(8, round(h * margin))
    return max(0, y - dy), max(0, x - dx), min(height, y + h + dy), min(width, x + w + dx)


def inside_boxes(boxes, height: int, width: int) -> torch.Tensor:
    """(H, W) mask: 1 inside any of the boxes (clipped to the image), 0 elsewhere."""
    inside = torch.zeros(height, width)
    for box in boxes:
        top, left, bottom, right = clip_box(box, height, width)
        inside[top:bottom, left:right] = 1
    return inside


def check_boxes_inside(boxes, height: int, width: int) -> None:
    """ValueError (one line) for a box wholly outside a height x width picture: that picture's problem
    (the CLI skips it), found before any forward pass."""
    for box in boxes:
        clip_box(box, height, width)


def segment_regions(
    model,
    image,
    *,
    boxes=(),
    region: torch.Tensor | None = None,
    margin: float = 0.5,
    resolution=None,
    max_megapixels: float | None = None,
    allow_empty: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(combined (H, W), objects (N, H, W)) masks in [0, 1] for the objects in `boxes` ((x, y, w, h) in
    pixels, floats rounded) and in the connected regions of `region` (a mask as `mask_values` reads it,
    (H, W), or (N, H, W): N masks for this image, e.g. one per object from a segment-anything node;
    > 0.5 inside). Each is segmented alone in its box grown by `margin` (a fraction of its size) and kept
    inside its box only: outside its box an object's mask is 0, outside every box the combined mask is 0.
    A box reaching over the image's border is clipped to it; one wholly outside is a ValueError. Nothing
    to segment (no box, an empty region) is a ValueError, or with `allow_empty` (video frames the object
    has left) an all-zero mask and no objects. callback(done, N) after each object's crop, as in
    `segment_boxes`."""
    rgb = to_rgb_tensor(image)
    height, width = rgb.shape[1:]
    regions = [] if region is None else region_masks(mask_values(region), height, width)
    boxes = [tuple(round(float(v)) for v in box) for box in boxes]  # a detector's boxes are floats
    found = boxes + [box for mask in regions for box in mask_regions(mask)]
    if not found and allow_empty:
        return torch.zeros(height, width), torch.zeros(0, height, width)
    if not found:
        raise ValueError("guided segmentation needs at least one box or a region mask with something in it")
    ((combined, objects),) = segment_boxes(
        model, [rgb], found, margin=margin, resolution=resolution, max_megapixels=max_megapixels, callback=callback
    )
    return combined, objects


def segment_boxes(
    model,
    images,
    boxes,
    *,
    margin: float = 0.5,
    resolution=None,
    max_megapixels: float | None = None,
    batch_size: int | str = 1,
    callback: Callable[[int, int], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(combined (H, W), objects (N, H, W)) for each of `images` (e.g. a clip's frames): the objects in
    the same `boxes` (at least one; (x, y, w, h) in pixels), each as `segment_regions` segments it. One
    box's crops of all the images go through the network together, `batch_size` at a time, so guided
    video keeps the throughput of batched frames. Every box is checked against every image (`clip_box`)
    before the first forward pass. callback(done, len(boxes)) after each box's crops (progress; an
    exception it raises stops the work there, and nothing is returned), so a host can show progress
    and cancel within one picture of many objects."""
    rgbs = [to_rgb_tensor(image) for image in images]
    boxes = [tuple(round(float(v)) for v in box) for box in boxes]
    kept = [[clip_box(box, *rgb.shape[1:]) for box in boxes] for rgb in rgbs]
    objects = [torch.zeros(len(boxes), *rgb.shape[1:]) for rgb in rgbs]
    for i, box in enumerate(boxes):
        grown = [_grown(box, margin, *rgb.shape[1:]) for rgb in rgbs]
        crops = [rgb[:, ctop:cbottom, cleft:cright] for rgb, (ctop, cleft, cbottom, cright) in zip(rgbs, grown)]
        contexts = segment(model, crops, resolution=resolution, max_megapixels=max_megapixels, batch_size=batch_size)
        for own, context, (ctop, cleft, _, _), inside in zip(objects, contexts, grown, kept):
            top, left, bottom, right = inside[i]
            own[i, top:bottom, left:right] = context[top - ctop : bottom - ctop, left - cleft : right - cleft]
        if callback is not None:
            callback(i + 1, len(boxes))
    return [(own.amax(dim=0), own) for own in objects]
