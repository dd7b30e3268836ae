"""Deformable convolution: torchvision's kernel and two exact `grid_sample` re-expressions.

torchvision's `deform_conv2d` is the reference, but it is missing for some device/dtype
pairs (bf16 on CPU, MPS before torchvision 0.23, broken CUDA builds) and on the CPU it is
slow: a scalar im2col into one buffer of C*k*k x H*W floats (822 MB for the 7x7 at 256^2),
then a GEMM. `deform_conv2d_banded` samples all taps of a band of output rows with one
`grid_sample` and multiplies them with one GEMM, keeping the buffer at a few MB; it is
2.5-3x faster on the CPU. `deform_conv2d_reference` (one `grid_sample` + 1x1 conv per tap)
has the cheapest backward and serves CPU training.

On GPUs torchvision's kernel is the default; its im2col buffer is kept within
`TORCHVISION_BUFFER_LIMIT` (2 GiB) by running a batch a few images at a time, and where one image
alone would pass it (the 7x7 at a quarter of a 4096^2 input needs 6 GiB in fp16) the banded form
keeps the same result in a few hundred MB. BIREFNET_DEFORM_CONV (or
`with implementation(...):`) overrides that choice: `banded` runs the banded form for every
inference call, on every device and dtype (sampling in float32, the GEMM in the model's dtype, so
on CUDA in fp16/bf16 it needs no float32 copy of the weights: torchvision has no bf16 kernel and
the default casts to float32; on an H200, gathering with grid_sample, 3.2x torchvision's time in
fp16 and 1.6x in bf16; it gathers with a Triton kernel on CUDA since, not yet measured there);
`torchvision` runs torchvision's kernel wherever it exists, whatever its buffer, CPU too;
`triton` runs the fused kernel of `deform_conv_triton` for inference on CUDA (no im2col buffer, bf16
native; elsewhere, and in training, as auto; on an H200 2.7x torchvision's time in fp16, 1.4x in
bf16). torchvision's kernel cannot be captured in a CUDA graph (`cuda_graphs`): graphs capture
Triton's kernel or the banded form, or cut the capture at each deformable convolution and run it
eager between the pieces (`outside_capture`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F

from .fastpath import plain_graph_requested, shortcuts
from .stopping import check_within_op

try:  # torchvision is a hard dependency of timm, but its C++ ops may fail to load
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except Exception:  # pragma: no cover - depends on the installation
    _tv_deform_conv2d = None

# (device type, dtype) pairs where torchvision's kernel raised; we stop trying there.
_TORCHVISION_UNSUPPORTED: set[tuple[str, torch.dtype]] = set()

ENV = "BIREFNET_DEFORM_CONV"
IMPLEMENTATIONS = ("auto", "banded", "torchvision", "triton")
_CHOICE: ContextVar[str | None] = ContextVar("birefnet_deform_conv", default=None)
# run_elsewhere(run, shape, dtype) -> the output tensor, set by `outside_capture`
_ELSEWHERE: ContextVar[Callable | None] = ContextVar("birefnet_deform_conv_elsewhere", default=None)
TORCHVISION_BUFFER_LIMIT = 2 << 30  # bytes


def torchvision_buffer_bytes(x: torch.Tensor, weight: torch.Tensor, out_h: int, out_w: int) -> int:
    """Bytes of the im2col buffer torchvision's kernel allocates: C*k*k x (images at once)*out_h*out_w,
    in the input's dtype (float32 where it upcasts), images at once = the largest divisor of the batch <= 32."""
    batch, channels = x.shape[:2]
    at_once = max(d for d in range(1, min(batch, 32) + 1) if batch % d == 0)
    itemsize = 4 if x.dtype == torch.bfloat16 else x.element_size()
    return channels * weight.shape[-2] * weight.shape[-1] * at_once * out_h * out_w * itemsize


def chosen_implementation() -> str:
    """The implementation in use: auto (the fastest measured form per device; the default), banded
    (grid_sample bands everywhere in inference), torchvision, or triton (the fused kernel on CUDA in
    inference); set by `implementation(...)`, else $BIREFNET_DEFORM_CONV."""
    choice = _CHOICE.get()
    if choice is None:
        choice = os.environ.get(ENV, "").strip().lower() or "auto"
    if choice not in IMPLEMENTATIONS:
        raise ValueError(f"{ENV}={choice!r}: use {', '.join(IMPLEMENTATIONS[:-1])} or {IMPLEMENTATIONS[-1]}")
    return choice


@contextmanager
def implementation(name: str):
    """Use deformable-convolution implementation `name` (one of IMPLEMENTATIONS) inside the block."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown deformable convolution {name!r}; use {', '.join(IMPLEMENTATIONS[:-1])} or {IMPLEMENTATIONS[-1]}"
        )
    token = _CHOICE.set(name)
    try:
        yield
    finally:
        _CHOICE.reset(token)


@contextmanager
def outside_capture(run_elsewhere: Callable | None):
    """Inside, every inference deformable convolution is handed to `run_elsewhere(run, shape, dtype)`
    instead of running: `run()` computes it (with the implementation chosen at the call) and
    `run_elsewhere` returns a tensor of that shape and dtype that will hold the result. A CUDA
    graph capture cuts itself there and runs `run()` eager between its pieces at each replay
    (`cuda_graphs`): torchvision's kernel, which a graph cannot hold, at its own speed. None: run as usual."""
    token = _ELSEWHERE.set(run_elsewhere)
    try:
        yield
    finally:
        _ELSEWHERE.reset(token)


def _sample_grid(offset: torch.Tensor, kh: int, kw: int, padding: int, height: int, width: int, rows: slice):
    """grid_sample coordinates (B, taps, rows*out_w, 2) of every tap for output rows `rows`.

    Tap t = ky*kw + kx of output pixel (r, c) reads input (r - padding + ky + dy, c - padding + kx + dx),
    with dy = offset[:, 2t], dx = offset[:, 2t+1] (torchvision's layout).
    """
    batch, _, _, out_w = offset.shape
    taps = kh * kw
    off = offset[:, :, rows].float().view(batch, taps, 2, -1, out_w)
    ky = torch.arange(kh, device=offset.device, dtype=torch.float32).repeat_interleave(kw).view(1, taps, 1, 1)
    kx = torch.arange(kw, device=offset.device, dtype=torch.float32).repeat(kh).view(1, taps, 1, 1)
    r = torch.arange(rows.start, rows.stop, device=offset.device, dtype=torch.float32).view(1, 1, -1, 1)
    c = torch.arange(out_w, device=offset.device, dtype=torch.float32).view(1, 1, 1, -1)
    y = r - padding + ky + off[:, :, 0]
    x = c - padding + kx + off[:, :, 1]
    # grid_sample's align_corners=False convention: pixel i sits at (2i+1)/size - 1.
    return torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1).view(batch, taps, -1, 2)


def deform_conv2d_reference(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    padding: int = 0,
) -> torch.Tensor:
    """Modulated deformable convolution (stride 1, dilation 1, one offset group).

    Same contract as `torchvision.ops.deform_conv2d`: for kernel tap t = ky*k + kx,
    `offset[:, 2t]` is the row shift and `offset[:, 2t+1]` the column shift; samples
    are bilinear and read 0 outside the map. Each tap is one `grid_sample` and one
    1x1 convolution, so memory stays at one sampled map at a time and the backward
    is cheap.
    """
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    grid = _sample_grid(offset, kh, kw, padding, height, width, slice(0, out_h))
    source = x.float()
    out = None
    for tap in range(kh * kw):
        sampled = F.grid_sample(
            source,
            grid[:, tap].view(batch, out_h, out_w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        if mask is not None:
            sampled = sampled * mask[:, tap : tap + 1]
        ky, kx = divmod(tap, kw)
        term = F.conv2d(sampled.to(weight.dtype), weight[:, :, ky : ky + 1, kx : kx + 1])
        out = term if out is None else out + term
    return out


def deform_conv2d_banded(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    padding: int = 0,
    bias: torch.Tensor | None = None,
    band_floats: int | None = None,
) -> torch.Tensor:
    """Inference formulation of `deform_conv2d_reference` (same contract, plus `bias`).

    For a band of output rows, one `grid_sample` gathers the C x taps bilinear samples
    (always in float32: bf16 coordinates would be off by pixels), the modulation mask
    scales them, and one GEMM with the (O, C*taps) weight writes the band in the weight's
    dtype. On CUDA one Triton kernel (`deform_conv_triton.im2col`) does the gathering,
    scaling and casting, positions still in float32, on the current stream (so a CUDA graph
    captures it). The sample buffer holds about `band_floats` values whatever the image
    size: by default 2M on the CPU (cache-sized) and 32M elsewhere (fewer, larger kernels).
    """
    if band_floats is None:
        band_floats = 1 << 21 if x.device.type == "cpu" else 1 << 25
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    taps = kh * kw
    out_h, out_w = offset.shape[-2:]
    kernels = triton_kernels() if x.is_cuda and kh == kw else None
    gather = None if kernels is None else kernels.im2col
    source = x if gather is not None else x.float()
    matrix = weight.reshape(out_channels, channels * taps)
    out = x.new_empty(batch, out_channels, out_h * out_w)
    band = max(1, band_floats // (channels * taps * out_w))
    for start in range(0, out_h, band):
        if not x.is_cuda:
            check_within_op()  # Cancel within the longest operation of a CPU pass (`stopping`)
        rows = slice(start, min(start + band, out_h))
        grid = None if gather is not None else _sample_grid(offset, kh, kw, padding, height, width, rows)
        for i in range(batch):
            if gather is not None:  # the same samples in one Triton kernel, written in the weight's dtype
                own_mask = None if mask is None else mask[i]
                pixels = (rows.start * out_w, rows.stop * out_w)
                cols = gather(source[i], offset[i], own_mask, kh, padding, *pixels, weight.dtype)
            else:
                cols = F.grid_sample(
                    source[i : i + 1], grid[i : i + 1], mode="bilinear", padding_mode="zeros", align_corners=False
                )  # (1, C, taps, pixels)
                if mask is not None:
                    cols = cols * mask[i, :, rows].reshape(taps, -1)
                cols = cols.view(channels * taps, -1).to(weight.dtype)
            dest = out[i, :, rows.start * out_w : rows.stop * out_w]
            if bias is None:
                dest.copy_(matrix @ cols)
            else:
                dest.copy_(torch.addmm(bias.view(-1, 1), matrix, cols))
    return out.view(batch, out_channels, out_h, out_w)


def triton_kernels():
    """The module of Triton kernels (`deform_conv_triton`), or None where Triton is missing (it comes
    with PyTorch's CUDA wheels on Linux)."""
    try:
        from . import deform_conv_triton
    except ImportError:
        return None
    return deform_conv_triton


def _triton_op():
    """The fused kernel's op, imported on first use (Triton comes with PyTorch's CUDA wheels on Linux)."""
    try:
        from .deform_conv_triton import deform_conv2d_triton
    except ImportError as err:
        raise ValueError(
            f"{ENV}=triton needs Triton ({err}); it comes with PyTorch's CUDA wheels on Linux "
            "(on Windows: pip install triton-windows), or unset the variable"
        ) from None
    return deform_conv2d_triton


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    padding: int = 0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fastest exact formulation for where and how it runs.

    The plain graph (`fastpath.plain_graph`, what exporters trace): torchvision's op.
    CPU: `deform_conv2d_banded` in inference; in training the reference, whose backward
    (grid_sample + conv) is 3-6x faster than torchvision's CPU backward kernel.
    Elsewhere: torchvision's kernel, in float32 where it has none for the dtype (bf16 on CUDA);
    in inference on as many images at a time as keep its buffer within `TORCHVISION_BUFFER_LIMIT`
    (a batch of 8 at 1024² asks for 3.3 GB in fp16), and banded where one image alone passes it.
    `chosen_implementation()` "banded": the banded form for every inference call; "torchvision":
    torchvision's kernel wherever it runs; "triton": the fused Triton kernel in CUDA inference.
    Inside `outside_capture(f)` an inference call is handed to f instead.
    """
    key = (x.device.type, x.dtype)
    choice = chosen_implementation()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or offset.requires_grad)
    run_elsewhere = _ELSEWHERE.get()
    if run_elsewhere is not None and not needs_grad:

        def run() -> torch.Tensor:
            with outside_capture(None), implementation(choice):
                return deform_conv2d(x, offset, weight, mask, padding, bias)

        return run_elsewhere(run, (x.shape[0], weight.shape[0], *offset.shape[-2:]), x.dtype)
    if choice == "triton" and not needs_grad and shortcuts() and x.device.type == "cuda":
        return _triton_op()(x, offset, weight, mask, bias, padding)
    one_image = torchvision_buffer_bytes(x[:1], weight, *offset.shape[-2:])
    if not needs_grad and shortcuts() and choice != "torchvision":
        if one_image > TORCHVISION_BUFFER_LIMIT or choice == "banded":
            return deform_conv2d_banded(x, offset, weight, mask, padding, bias)
    prefer_torchvision = x.device.type != "cpu" or plain_graph_requested() or choice == "torchvision"
    at_once = max(1, TORCHVISION_BUFFER_LIMIT // one_image)
    if prefer_torchvision and not needs_grad and shortcuts() and x.shape[0] > at_once:
        # a batch whose buffer would pass the limit: torchvision's kernel on as many images as fit, in turn
        chunks = [slice(i, i + at_once) for i in range(0, x.shape[0], at_once)]
        own_mask = lambda rows: None if mask is None else mask[rows]  # noqa: E731
        return torch.cat([deform_conv2d(x[r], offset[r], weight, own_mask(r), padding, bias) for r in chunks])
    if prefer_torchvision and _tv_deform_conv2d is not None:
        if key not in _TORCHVISION_UNSUPPORTED:
            try:
                return _tv_deform_conv2d(x, offset, weight, bias=bias, padding=(padding, padding), mask=mask)
            except (RuntimeError, NotImplementedError):
                _TORCHVISION_UNSUPPORTED.add(key)
        upcast = (x.device.type, torch.float32)
        if upcast not in _TORCHVISION_UNSUPPORTED:
            # No kernel for this dtype (bf16 on CUDA): the float32 kernel beats the grid_sample forms on GPUs.
            try:
                out = _tv_deform_conv2d(
                    x.float(),
                    offset.float(),
                    weight.float(),
                    padding=(padding, padding),
                    mask=None if mask is None else mask.float(),
                    bias=None if bias is None else bias.float(),
                )
                return out.to(x.dtype)
            except (RuntimeError, NotImplementedError):
                _TORCHVISION_UNSUPPORTED.add(upcast)
    if needs_grad or not shortcuts():
        out = deform_conv2d_reference(x, offset, weight, mask, padding)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    return deform_conv2d_banded(x, offset, weight, mask, padding, bias)
