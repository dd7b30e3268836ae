"""From pictures to masks: conversion, working-size choice, batching, resizing back.

The pipeline, fixed so results are reproducible (the official repository's evaluation script
resizes with cv2 without antialiasing and its model card with PIL; this one is documented):
the RGB image in [0, 1] is resized to the working size with bilinear filtering and
antialiasing (as torchvision/PIL do on the HF model card), normalised with ImageNet
statistics, run through the model; the sigmoid probabilities are resized back to the
original size with bilinear filtering (antialiased when shrinking) and kept as floats.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps

from . import cuda_graphs
from .batching import batch_size_for, check_batch_size
from .device_constants import device_constant
from .errors import OutOfMemory
from .files import cmyk_to_srgb
from .model import MIN_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = (1024, 1024)


def to_rgb_tensor(image, device=None) -> torch.Tensor:
    """PIL image, numpy array (H, W[, C]) or tensor ([B,] C, H, W / H, W) -> float (3, H, W) in [0, 1],
    on `device` (default: where a tensor is, else the CPU).

    Grey is repeated to RGB; an alpha channel is dropped. uint8 and uint16 data is scaled by its
    type's maximum, bool is 0/1; float data must already be in [0, 1] (highlights above 1 are
    clamped; 0-255 values, normalised inputs and NaN are refused: `check_float_range`). PIL's 16/32-bit
    modes are scaled by their mode, never by their pixels: 16-bit (I;16*, I) by 65535, float (F)
    as is, so a dark 16-bit picture stays dark.
    """
    return rgb_unit(image_tensor(image), device)


def image_tensor(image) -> torch.Tensor:
    """An image as stored, (C, H, W) with 1 to 4 channels of uint8, uint16, bool or float, checked;
    it shares memory with a numpy or tensor input where it can. No float copy yet: `rgb_unit`
    makes it, after the move to the device that needs it (a third of the bytes to move for uint8,
    and a GPU converts and resizes a frame in a fraction of a CPU core's time)."""
    if isinstance(image, Image.Image):
        image = cmyk_to_srgb(upright(image))
        if image.mode in PIL_SCALES:
            return image_tensor(np.asarray(image, dtype=np.float32) / PIL_SCALES[image.mode])
        return image_tensor(np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB")))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"numpy images must be (H, W) or (H, W, C), got shape {image.shape}")
        if image.dtype.kind == "f" and image.size:
            check_float_range(image)
        # torch shares neither read-only memory (PIL's arrays) nor reversed views (BGR[..., ::-1]) nor
        # the other byte order (big-endian data from FITS or scientific TIFF readers)
        if not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        elif not image.flags.writeable or any(stride < 0 for stride in image.strides):
            image = image.copy()
        tensor = torch.from_numpy(image).permute(2, 0, 1)
        layout = "numpy images are (H, W, C); a (C, H, W) array: pass array.transpose(1, 2, 0)"
    elif isinstance(image, torch.Tensor):
        tensor = image.detach()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise ValueError(f"tensor images must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        if tensor.is_floating_point() and tensor.numel():
            check_float_range(tensor)
        layout = "tensor images are (C, H, W); an (H, W, C) one (ComfyUI's): pass tensor.permute(2, 0, 1)"
    else:
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a PIL image, numpy array or tensor")
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"images need 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got {tensor.shape[0]} ({layout})"
        )
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise ValueError(f"image has no pixels (shape {tuple(tensor.shape)})")
    check_pixel_type(tensor.dtype, "image")
    return tensor


def check_float_range(values) -> None:
    """Float pictures mean [0, 1] (HDR highlights above 1 are clamped); data far outside it, told by
    its minimum and mean, would be clamped into a white or black picture and a meaningless mask:
    0-255 values, a normalised network input, NaN. A picture within [0, 1.5] is passed after one read
    (`within_zero_and_1_5`); the minimum and mean, two more reads, only decide the others: a ComfyUI
    frame is checked each time it is segmented, and those two reads took longer than converting it
    (docs/benchmarks.md). numpy pictures are read with numpy (under FakeTensorMode torch's copy is fake)."""
    if within_zero_and_1_5(values):
        return
    if isinstance(values, np.ndarray):
        low, mean = float(values.min()), float(values.mean(dtype=np.float64))
    else:
        flat = memory_order(values)
        low, mean = float(flat.min()), float(flat.mean(dtype=torch.float32))
    if low >= -0.5 and mean <= 1.5:
        return
    if low >= -0.5:
        hint = "0-255 values? divide by 255, or pass uint8"
    elif mean == mean:
        hint = "a normalised input? pass the picture itself"
    else:
        hint = "NaN values"
    raise ValueError(f"float images need values from 0 to 1, got a minimum of {low:g} and a mean of {mean:g} ({hint})")


def within_zero_and_1_5(values) -> bool:
    """Whether every value lies in [0, 1.5] (no NaN), from one read of the memory: `torch.aminmax`, or
    for numpy, which has no one-pass minimum and maximum, the largest bit pattern of the values read
    as unsigned integers (non-negative floats are ordered as their patterns; -0.0, negative values and
    NaN have patterns above 1.5's)."""
    if not isinstance(values, np.ndarray):
        low, high = torch.aminmax(memory_order(values))
        return 0 <= float(low) and float(high) <= 1.5
    if values.dtype.itemsize not in (2, 4, 8):  # long double: no unsigned type of its size
        return False
    patterns = values.dtype.str.replace("f", "u")  # the same size and byte order
    return values.view(patterns).max() <= np.array(1.5, values.dtype).view(patterns)


def memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """The elements as one flat view in the order memory holds them, when they fill it densely (a
    ComfyUI frame seen as (C, H, W) is its (H, W, C) memory permuted), else the tensor: torch reduces a
    permuted view element by element, about 30 times slower than the same memory in order."""
    order = sorted(range(tensor.ndim), key=lambda dim: tensor.stride(dim), reverse=True)
    view = tensor.permute(order)
    return view.view(-1) if view.is_contiguous() else tensor


def upright(image: Image.Image) -> Image.Image:
    """A PIL image as it is shown: turned by its EXIF orientation (a phone's portrait photo is stored
    sideways), so masks and cut-outs line up with what the user sees."""
    return ImageOps.exif_transpose(image) if image.getexif().get(ExifTags.Base.Orientation, 1) != 1 else image


def rgb_unit(stored: torch.Tensor, device=None) -> torch.Tensor:
    """An `image_tensor` as float RGB (3, H, W) in [0, 1] on `device` (None: where it is): the colour
    channels are picked and moved as stored (uint8, bool, float16/32; float64 and uint16, which
    not every device holds (Apple's MPS), become float32 first), then scaled there."""
    colour = stored[:3] if stored.shape[0] >= 3 else stored[:1]
    if device is not None and torch.device(device) != colour.device:
        if colour.dtype not in MOVED_AS_STORED:
            colour = unit_range(colour, "image")
        colour = colour.to(device)
    tensor = unit_range(colour, "image").expand(3, -1, -1)  # grey repeated, still one channel's memory
    return tensor.clamp(0, 1) if stored.is_floating_point() or stored.shape[0] < 3 else tensor


PIL_SCALES = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}
UNSIGNED_MAXIMA = {torch.uint8: 255.0, torch.uint16: 65535.0}
MOVED_AS_STORED = (torch.uint8, torch.bool, torch.float16, torch.float32)


def check_pixel_type(dtype: torch.dtype, what: str) -> None:
    """Refuse integer types other than uint8 / uint16: their range says nothing about the pixels."""
    if dtype != torch.bool and not dtype.is_floating_point and dtype not in UNSIGNED_MAXIMA:
        raise ValueError(
            f"{what} of type {str(dtype).removeprefix('torch.')}: pass uint8 (0-255), uint16 (0-65535), "
            "bool, or float in [0, 1]"
        )


def unit_range(values, what: str) -> torch.Tensor:
    """Float values in [0, 1] from a tensor or numpy array: bool as 0/1, uint8 / uint16 by their range,
    floats as they are (`check_pixel_type` says which types)."""
    tensor = torch.from_numpy(np.array(values)) if isinstance(values, np.ndarray) else values
    check_pixel_type(tensor.dtype, what)
    if tensor.dtype in UNSIGNED_MAXIMA:
        return tensor.float().div_(UNSIGNED_MAXIMA[tensor.dtype])  # as ToTensor (CUDA: within an ulp of it)
    return tensor.float()


def working_size(height: int, width: int, resolution=None, max_megapixels: float | None = None) -> tuple[int, int]:
    """Network input size (multiples of 32) for an image of `height` x `width`.

    resolution: int or (height, width) for a fixed size; "aspect" to keep the aspect ratio
    at an area of `max_megapixels` (default: 1024x1024's area).
    """
    if resolution == "aspect":
        area = (max_megapixels * 1e6) if max_megapixels else DEFAULT_RESOLUTION[0] * DEFAULT_RESOLUTION[1]
        return aspect_size(height, width, area)
    if resolution is None:
        resolution = DEFAULT_RESOLUTION
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    h, w = (int(v) for v in resolution)
    if h < MIN_SIZE or w < MIN_SIZE or h % 32 or w % 32:
        nearest = lambda v: max(MIN_SIZE, round(v / 32) * 32)
        raise ValueError(
            f"resolution {w}x{h} (WxH) must be multiples of 32, at least {MIN_SIZE}, e.g. {nearest(w)}x{nearest(h)}"
        )
    if max_megapixels and h * w > max_megapixels * 1e6:
        scale = math.sqrt(max_megapixels * 1e6 / (h * w))
        h, w = max(MIN_SIZE, int(h * scale) // 32 * 32), max(MIN_SIZE, int(w * scale) // 32 * 32)
    return h, w


def aspect_size(height: int, width: int, area: float) -> tuple[int, int]:
    """The image's aspect ratio at about `area` pixels, in multiples of 32. A side raised to MIN_SIZE
    (a very thin image) shortens the other, so the area stays within the cap (the memory bound)."""
    scale = math.sqrt(area / (height * width))
    h, w = round(height * scale / 32) * 32, round(width * scale / 32) * 32
    if h < MIN_SIZE:
        h, w = MIN_SIZE, min(w, int(area / MIN_SIZE) // 32 * 32)
    if w < MIN_SIZE:
        h, w = min(h, int(area / MIN_SIZE) // 32 * 32), MIN_SIZE
    return max(MIN_SIZE, h), max(MIN_SIZE, w)


def parse_size(text: str) -> tuple[int, int]:
    """'1024' -> (1024, 1024); 'WIDTHxHEIGHT' -> (height, width), the way sizes are written on command lines."""
    try:
        if "x" in text.lower():
            width, height = (int(v) for v in text.lower().split("x"))
            return height, width
        return int(text), int(text)
    except ValueError:
        raise ValueError(f"size {text!r}: use 1024 or WIDTHxHEIGHT") from None


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W), antialiased when shrinking.

    PyTorch's CUDA kernel refuses large shrink factors (its filter must fit in shared memory: an
    8K image to 512 px, say); there the same filter runs as two matrix products."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    try:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    except RuntimeError as err:
        if "shared memory" not in str(err):
            raise
    rows = antialiased_bilinear_matrix(x.shape[-2], size[0], x.device)
    cols = antialiased_bilinear_matrix(x.shape[-1], size[1], x.device)
    out = torch.einsum("oh,bchw,pw->bcop", rows, x.float(), cols)
    return out.to(x.dtype)


def antialiased_bilinear_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """(n_out, n_in) weights of PyTorch's (and PIL's) antialiased bilinear resize along one axis:
    output i averages the inputs within `scale` of its centre (scale = n_in / n_out, at least 1)
    with a triangle filter stretched by the scale, normalised to sum 1."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centre = scale * (torch.arange(n_out, dtype=torch.float64) + 0.5)
    first = (centre - support + 0.5).trunc().clamp(min=0)
    last = (centre + support + 0.5).trunc().clamp(max=n_in)
    j = torch.arange(n_in, dtype=torch.float64)
    inside = (j >= first[:, None]) & (j < last[:, None])
    weights = (1 - ((j[None] - centre[:, None] + 0.5) / support).abs()).clamp(min=0) * inside
    return (weights / weights.sum(dim=1, keepdim=True)).to(device=device, dtype=torch.float32)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation, with the statistics on x's device (made once: no copy per call)."""
    mean, std = device_constant(
        ("imagenet",),
        x,
        lambda: (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)),
        x.dtype,
    )
    return (x - mean) / std


def model_resolution(model):
    """The checkpoint's working size, or "aspect" for dynamic models."""
    info = getattr(model, "info", None)
    if info is None:
        return DEFAULT_RESOLUTION
    return "aspect" if info.resolution is None else info.resolution


def native_megapixels(model) -> float:
    """The area the checkpoint was trained at (1024x1024's for dynamic models): "aspect" without a cap."""
    resolution = model_resolution(model)
    height, width = DEFAULT_RESOLUTION if resolution == "aspect" else resolution
    return height * width / 1e6


def model_device(model) -> torch.device:
    """Where the model's inputs go (its first parameter's device); conversion and refinement run there too."""
    return next(model.parameters()).device


def model_working_size(model, height: int, width: int, resolution=None, max_megapixels: float | None = None):
    """`working_size` with the checkpoint's defaults: its own size for None, its own area for "aspect"
    without a cap."""
    if resolution is None:
        resolution = model_resolution(model)
    if resolution == "aspect" and not max_megapixels:
        max_megapixels = native_megapixels(model)
    return working_size(height, width, resolution, max_megapixels)


@torch.inference_mode()
def predict(model, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities (B, 1, h, w) float32 for an RGB batch (B, 3, h, w) in [0, 1], h, w multiples of 32,
    on the model's device. On CUDA the forward is a replayed CUDA graph per input shape and dtype
    (`cuda_graphs`; BIREFNET_CUDA_GRAPHS=0 turns it off)."""
    param = next(model.parameters())
    x = batch.to(device=param.device, dtype=torch.float32)
    forward = lambda x: torch.sigmoid(model(normalise(x).to(param.dtype)).float())
    try:
        if cuda_graphs.enabled(model, param.device):
            return cuda_graphs.run(model, forward, x)
        return forward(x)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        if param.device.type == "cuda":
            torch.cuda.empty_cache()  # what the failed forward held goes back: the next, smaller call can run
        b, _, h, w = batch.shape
        ways_out = "fp16, or the CPU" if param.device.type != "cpu" else "or bf16 where the CPU has it"
        raise OutOfMemory(
            f"{param.device} ran out of memory for {b} image(s) at working size {w}x{h} in "
            f"{str(param.dtype).removeprefix('torch.')}: use a smaller resolution or batch size, coarse-to-fine "
            f"for large images, {ways_out}"
        ) from err


def is_out_of_memory(err: BaseException) -> bool:
    """A device allocator's out-of-memory error; the CPU's comes as a plain RuntimeError from its allocator."""
    return isinstance(err, torch.OutOfMemoryError) or "DefaultCPUAllocator" in str(err)


def segment(
    model,
    images,
    *,
    resolution=None,
    max_megapixels: float | None = None,
    batch_size: int | str = 1,
    callback: Callable[[int, int], None] | None = None,
    device="cpu",
):
    """Foreground masks (H, W) float32 in [0, 1] at each image's original size, on `device`.

    images: one image or a sequence (PIL, numpy or tensor; see `to_rgb_tensor`), or a batch tensor
    (B, C, H, W), whose masks come as one (B, H, W) tensor, also for B = 1.
    resolution: None for the checkpoint's default; an int or (height, width); or "aspect" (the image's
    aspect ratio at an area of `max_megapixels`, default the checkpoint's own area).
    batch_size: images of equal working size are run together in one forward, this many at a time;
    "auto": as many as the GPU's free memory holds, up to 8 (one on the CPU; `batching`).
    callback(done, total) is called after each batch (progress, cancellation by raising).
    device: where the masks go (default the CPU); the model's device keeps a GPU pipeline on the GPU.
    The images go to the model's device as stored (uint8: a quarter of float's bytes) and are
    converted and resized there; the masks are resized back there too.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:  # a batch tensor, of one image too
        if not images.shape[0]:
            return torch.zeros(0, *images.shape[2:], device=device)
        options = dict(resolution=resolution, max_megapixels=max_megapixels, callback=callback, device=device)
        return torch.stack(segment(model, list(images), batch_size=batch_size, **options))
    single = not isinstance(images, (list, tuple))
    stored = [image_tensor(images)] if single else [image_tensor(im) for im in images]  # all checked first
    sizes = [model_working_size(model, t.shape[1], t.shape[2], resolution, max_megapixels) for t in stored]
    check_batch_size(batch_size)  # a bad value fails before any work
    on = model_device(model)  # each image converted and shrunk there, one at a time
    masks: list[torch.Tensor | None] = [None] * len(stored)
    order = sorted(range(len(stored)), key=lambda i: sizes[i])  # group equal sizes, stable
    done = 0
    start = 0
    while start < len(order):
        group = [order[start]]
        most = batch_size_for(batch_size, model, math.prod(sizes[group[0]]))
        while (
            len(group) < most
            and start + len(group) < len(order)
            and sizes[order[start + len(group)]] == sizes[group[0]]
        ):
            group.append(order[start + len(group)])
        batch = torch.stack([at_working_size(stored[i], sizes[i], on) for i in group])
        probs = predict(model, batch)
        for row, i in enumerate(group):
            mask = resize(probs[row : row + 1], stored[i].shape[1:])[0, 0].clamp(0, 1)  # a normal tensor
            masks[i] = mask.to(device)
        start += len(group)
        done += len(group)
        if callback is not None:
            callback(done, len(stored))
    return masks[0] if single else masks


def at_working_size(stored: torch.Tensor, size, device) -> torch.Tensor:
    """One `image_tensor` as float RGB (3, *size) on `device`, converted and resized there; a picture
    too large for the device's free memory as float (a 32K panorama beside the model on a small
    card) is converted and resized on the CPU instead, and only its working-size result moves."""
    try:
        return resize(rgb_unit(stored, device)[None], size)[0]
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err) or torch.device(device).type == "cpu":
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the failed conversion held
    return resize(rgb_unit(stored.cpu())[None], size)[0].to(device)


def input_alpha(image) -> torch.Tensor | None:
    """The image's own transparency (H, W) in [0, 1], or None when it has none (a palette's or a
    tRNS colour's transparency counts: PNG keeps one transparent colour for RGB and grey pictures)."""
    if isinstance(image, Image.Image):
        image = upright(image)
        if "transparency" in image.info and image.mode in ("P", "RGB", "L") or image.mode in ("PA", "La"):
            image = image.convert("RGBA")
        if "A" not in image.getbands():
            return None
        return torch.from_numpy(np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (2, 4):
            return None
        alpha = torch.from_numpy(np.array(image[:, :, -1]))
    elif isinstance(image, torch.Tensor):
        tensor = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if tensor.ndim != 3 or tensor.shape[0] not in (2, 4):
            return None
        alpha = tensor[-1].detach().cpu()
    else:
        return None
    return unit_range(alpha, "alpha").clamp(0, 1)


def cutout(image, mask: torch.Tensor) -> Image.Image:
    """RGBA image: the RGB pixels with the mask as alpha, times the input's own alpha if it has one
    (what was transparent in the input stays transparent)."""
    rgb = to_rgb_tensor(image)
    alpha = mask_values(mask)
    if tuple(alpha.shape) != tuple(rgb.shape[1:]):
        raise ValueError(f"mask {tuple(alpha.shape)} and image {tuple(rgb.shape[1:])} differ in size")
    own = input_alpha(image)
    if own is not None:
        alpha = alpha * own
    rgba = torch.cat([rgb, alpha[None]], dim=0)
    return with_colour_profile(Image.fromarray((rgba.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)), image)


def with_colour_profile(picture: Image.Image, source) -> Image.Image:
    """`picture` carrying the RGB colour profile of `source` (an Adobe RGB or Display P3 photo's colours
    are only right with it), a palette picture's too (its colours are RGB); grey and CMYK profiles do
    not describe RGB pixels and stay behind (bytes 16-19 of a profile's header name its colour space):
    a CMYK picture's colours come as untagged sRGB (`cmyk_to_srgb`)."""
    profile = source.info.get("icc_profile") if isinstance(source, Image.Image) else None
    if profile and source.mode in ("RGB", "RGBA", "P", "PA") and profile[16:20] == b"RGB ":
        picture.info["icc_profile"] = profile
    return picture


def mask_to_image(mask: torch.Tensor) -> Image.Image:
    """8-bit greyscale PNG-ready image of a [0, 1] mask (rounded, not truncated)."""
    return Image.fromarray((mask_values(mask).numpy() * 255 + 0.5).astype(np.uint8))


def mask_values(mask) -> torch.Tensor:
    """A mask (tensor, numpy (H, W) or a PIL grey image) as float on the CPU in [0, 1]: uint8 / uint16 masks by their
    range (255 is fully opaque, not 255 times), bool as 0/1, floats clamped."""
    if isinstance(mask, Image.Image):  # a mask file opened with PIL: its grey levels
        mask = np.asarray(mask.convert("L") if mask.mode not in ("L", "1", "F", "I;16") else mask)
    return unit_range(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, "mask").clamp(0, 1)
