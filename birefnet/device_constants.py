"""Small constant tensors (window index maps, resize matrices), made once per shape and device.

They are computed on the CPU and copied to the model's device the first time only: a copy in
every forward would make the GPU wait each time (a copy from pageable host memory synchronises)
and cannot be captured in a CUDA graph. They are made outside inference mode, so that a constant
first asked for in inference also serves training. Traced or fake tensors (torch.compile, export,
memory estimates) are never kept. A captured CUDA graph reads its constants by address, so it
keeps a reference to every constant alive at its capture (`alive()`): one dropped from this cache
later stays allocated for the graph.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

LIMIT = 256  # entries: a few per working size
_CACHE: OrderedDict = OrderedDict()


def _to(value, device: torch.device, dtype: torch.dtype | None):
    if isinstance(value, tuple):
        return tuple(_to(v, device, dtype) for v in value)
    return value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else value.dtype)


def device_constant(key: tuple, like: torch.Tensor, make: Callable[[], object], dtype: torch.dtype | None = None):
    """`make()` (a tensor or a tuple of tensors, on the CPU) on `like`'s device, floats in `dtype`,
    kept under `key` + device + dtype for later eager calls."""
    if torch.compiler.is_compiling() or type(like) is not torch.Tensor:
        return _to(make(), like.device, dtype)
    full = (*key, str(like.device), dtype)
    if full in _CACHE:
        _CACHE.move_to_end(full)
        return _CACHE[full]
    with torch.inference_mode(False), torch.no_grad():
        value = _to(make(), like.device, dtype)
    _CACHE[full] = value
    if len(_CACHE) > LIMIT:
        _CACHE.popitem(last=False)
    return value


def alive() -> tuple:
    """Every constant kept now (a CUDA graph holds these so that none is freed under it)."""
    return tuple(_CACHE.values())
