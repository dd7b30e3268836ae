"""BiRefNetSegment: BIREFNET + IMAGE batch -> MASK, cut-out IMAGE, RGBA IMAGE."""

from __future__ import annotations

import torch

import birefnet
from birefnet.batching import auto_batch_size
from birefnet.guidance import parse_box, segment_regions
from birefnet.highres import DEFAULT_FINE_MEGAPIXELS
from birefnet.inference import model_working_size
from birefnet.pass_clock import WorkProgress, pass_shares
from birefnet.refine import composite, parse_colour
from birefnet.stopping import checks_inside
from birefnet.temporal import TemporalSmoother

from . import host
from .spec import In, NodeSpec, Out

RESOLUTION_MODES = ("native", "custom", "aspect")
AUTO_BATCH = 0  # batch_size 0: `birefnet.batching.auto_batch_size`
# What nodes connected to cutout or rgba say when cutouts is off (ComfyUI shows it as "Execution Blocked: ...")
CUTOUTS_OFF = "Segment's cutouts is off (mask only); turn it on for cutout and rgba"
HIGHRES_PASSES = 2  # coarse_to_fine: a frame's coarse pass, then its fine pass
STEPS_PER_FRAME = 100  # of the progress bar: it moves within a frame's passes too


def resolution_for(mode: str, width: int, height: int):
    if mode == "native":
        return None
    if mode == "custom":
        return (height, width)
    if mode == "aspect":
        return "aspect"
    raise ValueError(f"resolution mode must be one of {RESOLUTION_MODES}, got {mode!r}")


def working_pixels(handle, frame: torch.Tensor, resolution, max_megapixels: float) -> int:
    """Pixels of the network input for one (H, W, C) frame: what a forward's activation memory grows with."""
    height, width = model_working_size(handle, frame.shape[0], frame.shape[1], resolution, max_megapixels or None)
    return height * width


class FrameProgress:
    """The progress bar and Cancel, within frames too: the bar counts STEPS_PER_FRAME steps per frame, moved by
    the library's callback after each unit of work (coarse-to-fine's passes, a frame's objects) and, on a CPU,
    within each pass (`pass_clock`), so one large frame on a CPU shows progress and stops on Cancel inside it,
    not only between chunks. The bar ends at frames x steps (100%)."""

    def __init__(self, frames: int):
        self.bar = host.Progress(frames * STEPS_PER_FRAME)
        self.frames = (0, 1)  # the frames the work now running is for: the first (0-based), and how many
        self.work = WorkProgress()

    def at(self, frames_done: float) -> None:
        """Stop here if Cancel was pressed; else the bar at `frames_done` frames."""
        host.check_interrupt()
        self.bar.update(round(frames_done * STEPS_PER_FRAME))

    def work_on(self, first: int, frames: int = 1, passes: int = 0):
        """Follows the work on `frames` frames from `first` on, done in `passes` passes (0: not known before
        the first ends); returns the library's callback(done, total) for it."""
        self.frames, self.work = (first, frames), WorkProgress(passes)

        def callback(done: int, total: int) -> None:
            self.work.pass_done(done, total)
            self.at(self.frames_done())

        return callback

    def in_pass(self, share: float) -> None:
        """`pass_shares`' report, before each submodule of a CPU pass (Cancel is `checks_inside`'s)."""
        self.work.in_pass(share)
        self.bar.update(round(self.frames_done() * STEPS_PER_FRAME))

    def frames_done(self) -> float:
        first, frames = self.frames
        return first + frames * self.work.fraction


def with_fp32_fallback(handle, run):
    """`run()`'s tensors; where half precision overflowed (NaN), the handle switches to fp32 and runs it again."""
    result = run()
    if handle.dtype != torch.float32 and any(torch.isnan(t).any() for t in result):
        handle.use_fp32()
        result = run()
    return result


def segment_batch(
    handle,
    frames: torch.Tensor,
    resolution,
    max_megapixels: float,
    batch_size: int,
    coarse_to_fine: bool = False,
    fine_megapixels: float = DEFAULT_FINE_MEGAPIXELS,
    temporal: float = 0.0,
) -> torch.Tensor:
    """Masks (B, H, W) for ComfyUI images (B, H, W, C), in chunks, with progress and Cancel between chunks
    and between a frame's coarse_to_fine passes; `temporal` > 0 stabilises them across the batch in order."""
    smoother = TemporalSmoother(temporal)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"BiRefNet needs a non-empty IMAGE batch (B, H, W, C), got shape {tuple(frames.shape)}")
    total = frames.shape[0]
    per_frame = working_pixels(handle, frames[0], resolution, max_megapixels)
    if batch_size == AUTO_BATCH:  # as many as the free memory beside the loaded model holds (ComfyUI's count)
        batch_size = auto_batch_size(handle.ready(per_frame), per_frame, free=host.free_memory(handle.device))
    pixels = per_frame * min(batch_size, total)
    if coarse_to_fine:
        pixels = max(pixels, int(fine_megapixels * 1e6))
    progress = FrameProgress(total)
    masks = []
    for start in range(0, total, batch_size):
        host.check_interrupt()
        chunk = [frames[i].permute(2, 0, 1) for i in range(start, min(start + batch_size, total))]
        if coarse_to_fine:
            run = lambda: [
                birefnet.segment_highres(
                    handle.ready(pixels),
                    frame,
                    resolution=resolution,
                    max_megapixels=max_megapixels or None,
                    fine_megapixels=fine_megapixels,
                    callback=progress.work_on(start + j, passes=HIGHRES_PASSES),
                )
                for j, frame in enumerate(chunk)
            ]
        else:
            run = lambda: birefnet.segment(
                handle.ready(pixels),
                chunk,
                resolution=resolution,
                max_megapixels=max_megapixels or None,
                batch_size=batch_size,
                callback=progress.work_on(start, len(chunk), passes=1),
            )
        with pass_shares(handle.model, progress.in_pass):
            result = with_fp32_fallback(handle, run)
        masks += [smoother(frame[:3], mask) for frame, mask in zip(chunk, result)]
        progress.at(len(masks))
    return torch.stack(masks).to(host.intermediate_device())


def parse_boxes(text: str) -> list[tuple[int, int, int, int]]:
    """'x,y,w,h; x,y,w,h' (or one per line) -> boxes; empty text -> none."""
    return [parse_box(part) for part in text.replace("\n", ";").split(";") if part.strip()]


def segment_guided(handle, frames: torch.Tensor, boxes, region, resolution, max_megapixels: float):
    """(masks (B, H, W), objects (B*N, H, W)): each frame's objects in its boxes and region mask
    (one region mask for all frames, one per frame, or for a single image any number: one per object,
    as segment-anything nodes give them). A frame whose region is empty (the object left the picture)
    and that has no box gets an all-zero mask and one all-zero object mask; a region mask empty in
    every frame is an error (regions count where the mask is above 0.5). Progress and Cancel after each object."""
    if region is not None:
        region = host.mask_batch("Segment", "region", region)
        if frames.shape[0] == 1:
            region = region[None]  # every mask is this image's
        elif region.shape[0] in (1, frames.shape[0]):
            region = region[:, None]  # one mask per frame, or the same one for all
        else:
            raise ValueError(
                f"Segment got {region.shape[0]} region masks for {frames.shape[0]} images; "
                "give one region mask for all images or one per image (several per image: one image at a time)"
            )
        if not boxes and not (region > 0.5).any():
            raise ValueError(
                f"Segment: the region mask has nothing above 0.5 (its largest value is {float(region.max()):.2f}); "
                "regions count where the mask is above 0.5: connect a mask that covers the object"
            )
    pixels = working_pixels(handle, frames[0], resolution, max_megapixels)
    masks, objects = [], []
    progress = FrameProgress(frames.shape[0])
    for i in range(frames.shape[0]):
        host.check_interrupt()
        own_region = None if region is None else region[min(i, region.shape[0] - 1)]
        with pass_shares(handle.model, progress.in_pass):
            combined, singles = with_fp32_fallback(
                handle,
                lambda: segment_regions(
                    handle.ready(pixels),
                    frames[i].permute(2, 0, 1),
                    boxes=boxes,
                    region=own_region,
                    resolution=resolution,
                    max_megapixels=max_megapixels or None,
                    allow_empty=True,
                    callback=progress.work_on(i, passes=len(boxes) if region is None else 0),
                ),
            )
        masks.append(combined)
        objects.append(singles if len(singles) else combined[None])
        progress.at(i + 1)
    device = host.intermediate_device()
    return torch.stack(masks).to(device), torch.cat(objects).to(device)


def segment(
    birefnet_model,
    image,
    resolution="native",
    width=1024,
    height=1024,
    max_megapixels=0.0,
    batch_size=AUTO_BATCH,
    background="#FFFFFF",
    coarse_to_fine=False,
    fine_megapixels=DEFAULT_FINE_MEGAPIXELS,
    temporal=0.0,
    boxes="",
    region=None,
    cutouts=True,
):
    chosen = resolution_for(resolution, width, height)
    box_list = parse_boxes(boxes)
    if (box_list or region is not None) and (coarse_to_fine or temporal > 0):
        raise ValueError(
            "Segment: boxes and region do not combine with coarse_to_fine or temporal (each object is "
            "segmented on its own, in detail); turn those off, or remove the boxes and region"
        )
    try:
        with checks_inside(birefnet_model.model, host.check_interrupt):  # Cancel inside a CPU pass too
            if box_list or region is not None:
                mask, objects = segment_guided(birefnet_model, image, box_list, region, chosen, max_megapixels)
            else:
                mask = segment_batch(
                    birefnet_model, image, chosen, max_megapixels, batch_size, coarse_to_fine, fine_megapixels, temporal
                )
                objects = mask
    finally:
        birefnet_model.release_graphs()
    skipped = None if cutouts else host.not_made(CUTOUTS_OFF)
    if skipped is not None:
        return mask, skipped, skipped, objects
    rgb = host.rgb_channels_first(image).to(mask.device)
    cutout = composite(rgb, mask, parse_colour(background)).permute(0, 2, 3, 1)
    rgba = torch.cat([rgb, mask[:, None]], dim=1).permute(0, 2, 3, 1)
    return mask, cutout, rgba, objects


SPEC = NodeSpec(
    node_id="BiRefNetSegment",
    display_name="BiRefNet Segment",
    category="BiRefNet",
    description=(
        "Finds the foreground of every image in the batch (photos, video frames; any size; RGB, RGBA or grey). "
        "MASK is 1.0 on the foreground. Note: core's JoinImageWithAlpha expects 1 - alpha (LoadImage's convention), "
        "so put InvertMask before it, or use this node's rgba output directly."
    ),
    inputs=(
        In("birefnet_model", "BIREFNET", "From Load BiRefNet."),
        In("image", "IMAGE", "Image batch; frames are processed in chunks of batch_size."),
        In(
            "resolution",
            "COMBO",
            "native: the checkpoint's size (1024, 2048 for HR, 2560x1440 for lite-2K, "
            "aspect-preserving for dynamic). custom: width x height below. aspect: keep the aspect ratio at "
            "max_megapixels (or the native area).",
            default="native",
            options=RESOLUTION_MODES,
        ),
        In("width", "INT", "custom working width (multiple of 32).", default=1024, min=64, max=8192, step=32),
        In("height", "INT", "custom working height (multiple of 32).", default=1024, min=64, max=8192, step=32),
        In(
            "max_megapixels",
            "FLOAT",
            "Cap on the working size (0 = none); the area in aspect mode.",
            default=0.0,
            min=0.0,
            max=64.0,
            step=0.05,
            advanced=True,
        ),
        In(
            "batch_size",
            "INT",
            "Frames per model call; more is faster on GPUs and uses more memory. 0 = auto: as many as the "
            "GPU's free memory holds, up to 8 (1 off CUDA).",
            default=AUTO_BATCH,
            min=AUTO_BATCH,
            max=64,
        ),
        In("background", "STRING", "Colour behind the cut-out output (#RRGGBB or r,g,b).", default="#FFFFFF"),
        In(
            "coarse_to_fine",
            "BOOLEAN",
            "For 4K+ images: after the pass on the whole image, segment the object's "
            "region again at up to fine_megapixels and blend it in (finer hair and edges; about twice the time). "
            "Images not much larger than the working size are unaffected.",
            default=False,
        ),
        In(
            "fine_megapixels",
            "FLOAT",
            "Memory cap of the coarse_to_fine second pass (its working area; 4.2 = "
            "2048x2048). Lower it if the GPU runs out of memory.",
            default=DEFAULT_FINE_MEGAPIXELS,
            min=0.25,
            max=64.0,
            step=0.05,
            advanced=True,
        ),
        In(
            "temporal",
            "FLOAT",
            "Video: temporal stability across the batch's frames, in order (0 = off, each frame "
            "alone; 1 = strongest). Smooths soft edges only where the image does not change, so moving objects "
            "do not lag; 0.5 halves the flicker.",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.05,
        ),
        In(
            "boxes",
            "STRING",
            "Guided: segment only the objects in these boxes, 'x,y,w,h' in pixels, several "
            "separated by ';'. Each box (with context around it) is segmented alone; outside, the mask is 0. "
            "Empty: the whole image.",
            default="",
            optional=True,
        ),
        In(
            "region",
            "MASK",
            "Guided: segment only the objects in this mask's connected regions (above 0.5; e.g. from a SAM "
            "node or painted), one object per region; combines with boxes. Video: one mask per frame or one for "
            "all; a single image: any number of masks (one per object).",
            optional=True,
        ),
        In(
            "cutouts",
            "BOOLEAN",
            "Also make the cutout and rgba images (7 floats per pixel beside the mask's 1). Off for long clips: "
            "mask only; nodes connected to cutout or rgba then stop, saying so (ComfyUI from August 2024).",
            default=True,
            optional=True,
        ),
    ),
    outputs=(
        Out("mask", "MASK", "Foreground = 1.0, at the input size."),
        Out("cutout", "IMAGE", "RGB image composited on the background colour."),
        Out("rgba", "IMAGE", "RGBA image, alpha = mask (4 channels: not every node accepts it)."),
        Out(
            "objects",
            "MASK",
            "Guided: one mask per box/region (all of the first image's objects, then the "
            "next image's); without guidance the same as mask.",
        ),
    ),
    search_aliases=(
        "remove background",
        "rmbg",
        "background removal",
        "matte",
        "cutout",
        "cut out",
        "mask foreground",
        "salient object",
        "dichotomous segmentation",
        "video matting",
    ),
    run=segment,
)
