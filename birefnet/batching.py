"""How many images one forward takes when the caller asks for "auto".

On a GPU at 1024² batch 1 the card mostly waits on kernel launches (an H200's profile), so a forward
of several images should cost far less than one forward per image (the GPU benchmark's batch rows
measure it); memory grows with every image. "auto" takes as many images as the free device
memory holds with a margin, up to `AUTO_MOST`; on the CPU, which gains nothing from batching, one.
The memory of one image is a bound from measurements: 650 bytes per input pixel in fp16/bf16
(Swin-L on an H200, peak above the 0.42 GB of weights: 610 bytes per pixel at 1024², 560 at 2048²),
twice that in fp32.
"""

from __future__ import annotations

import numbers

import torch

AUTO = "auto"
AUTO_MOST = 8  # images per forward at most: the batch the GPU benchmark measures
FREE_SHARE = 0.7  # of the free memory: the rest for the allocator's fragmentation and the masks' resizing
HALF_BYTES_PER_PIXEL = 650  # activation memory per input pixel in fp16/bf16 (a bound on what was measured)


def activation_bytes(pixels: int, dtype: torch.dtype) -> int:
    """Device memory a forward needs beside the weights for `pixels` input pixels (all images together)."""
    return pixels * HALF_BYTES_PER_PIXEL * (2 if dtype.itemsize >= 4 else 1)


def free_memory(device: torch.device) -> int | None:
    """Bytes a forward on `device` can still take: the driver's free memory plus what PyTorch's allocator
    holds unused; None where it is not known (the CPU)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def images_that_fit(free: int, pixels: int, dtype: torch.dtype, most: int = AUTO_MOST) -> int:
    """Images of `pixels` input pixels each whose forward fits `FREE_SHARE` of `free` bytes, 1 to `most`."""
    return max(1, min(most, int(FREE_SHARE * free) // activation_bytes(pixels, dtype)))


def auto_batch_size(model, pixels: int, free: int | None = None, most: int = AUTO_MOST) -> int:
    """Images of `pixels` input pixels each (the working size's) per forward of `model`: one off CUDA; on
    CUDA as many as fit in `free` bytes (default: what the device has free now), up to `most`."""
    param = next(model.parameters())
    if param.device.type != "cuda":
        return 1
    return images_that_fit(free_memory(param.device) if free is None else free, pixels, param.dtype, most)


def check_batch_size(batch_size: int | str) -> int | str:
    """`batch_size` when it is a positive whole number or "auto"; anything else is a one-line error."""
    if batch_size == AUTO:
        return AUTO
    if isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1:
        return int(batch_size)
    raise ValueError(f"batch_size must be a positive whole number or 'auto', got {batch_size!r}")


def batch_size_for(batch_size: int | str, model, pixels: int) -> int:
    """Images per forward of `pixels` input pixels each: `batch_size`, or `auto_batch_size` for "auto"."""
    if check_batch_size(batch_size) == AUTO:
        return auto_batch_size(model, pixels)
    return int(batch_size)
