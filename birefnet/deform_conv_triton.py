"""Deformable convolution as one fused Triton kernel (inference on CUDA; any dtype, bf16 included).

torchvision's CUDA kernel first writes every bilinear sample into an im2col buffer of
C*k*k x H*W values (0.4 GB for the 7x7 at a quarter of a 1024² input in fp16, 6 GB at 4096²)
and then multiplies it with the weights; it has no bf16 form, so bf16 runs it in float32 with
casts. This kernel never writes that buffer: each program takes a tile of output channels and
output pixels, and for every kernel tap computes the sampling positions once (in float32),
gathers a block of channels at the four neighbours, scales them by the modulation mask and feeds
them straight to a matrix multiply on the tensor cores (`tl.dot`, float32 accumulation) in the
model's dtype. The tile sizes are tuned on the GPU at first use per (kernel size, channels, map
size class) among a few that compile without register spills on sm_90; Triton caches both the
compiled kernels and the choice on disk.

Same contract as `torchvision.ops.deform_conv2d` with stride 1, dilation 1 and one offset
group (what BiRefNet uses): for tap t = ky*k + kx, offset[:, 2t] shifts rows and
offset[:, 2t+1] columns; samples outside the map read 0. It runs as the custom op
`birefnet::deform_conv2d_triton` so fake tensors, `torch.compile` and CUDA graph capture see one
opaque call. Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1 set
before this module is imported), which is how the test suite checks it on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (output channels, pixels, input channels per step, warps): no register spills on sm_90 (ptxas).
CONFIGS = [
    triton.Config({"BLOCK_O": 128, "BLOCK_P": 64, "BLOCK_C": 32}, num_warps=8),
    triton.Config({"BLOCK_O": 256, "BLOCK_P": 64, "BLOCK_C": 32}, num_warps=8),  # sampling once per pixel
    triton.Config({"BLOCK_O": 128, "BLOCK_P": 128, "BLOCK_C": 32}, num_warps=8),
]

# The banded form's gather: channels per step (the positions are computed once for all), pixels per program.
IM2COL_TILES = triton.Config({"BLOCK_C": 32, "BLOCK_P": 128}, num_warps=4)


@triton.jit
def _deform_conv_kernel(
    x_ptr,
    offset_ptr,
    mask_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    channels,
    height,
    width,
    out_w,
    pixels,
    out_channels,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    so_b,
    so_c,
    sm_b,
    sm_c,
    sout_b,
    sout_c,
    size_class,  # only a tuning key: the map's pixel count rounded up to a power of two
    PADDING: tl.constexpr,
    KERNEL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """out[b, o, p] = sum over taps t and channels c of
    weight[t, o, c] * mask[b, t, p] * bilinear(x[b, c], p + tap + offset[b, t, p])."""
    pid_o = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < pixels
    row = (p // out_w).to(tl.float32)
    col = (p % out_w).to(tl.float32)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = o < out_channels
    x_base = x_ptr + b * sx_b
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for tap in range(KERNEL * KERNEL):  # a loop, not unrolled: 49 taps would make compiling slow
        ky = tap // KERNEL
        kx = tap % KERNEL
        dy = tl.load(offset_ptr + b * so_b + (2 * tap) * so_c + p, mask=p_ok, other=0.0).to(tl.float32)
        dx = tl.load(offset_ptr + b * so_b + (2 * tap + 1) * so_c + p, mask=p_ok, other=0.0).to(tl.float32)
        y = row + (ky - PADDING) + dy
        x = col + (kx - PADDING) + dx
        inside = p_ok & (y > -1.0) & (x > -1.0) & (y < height) & (x < width)
        y0f = tl.floor(y)
        x0f = tl.floor(x)
        ly = y - y0f
        lx = x - x0f
        hy = 1.0 - ly
        hx = 1.0 - lx
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        y1 = y0 + 1
        x1 = x0 + 1
        scale = tl.where(inside, 1.0, 0.0)
        if HAS_MASK:
            scale = scale * tl.load(mask_ptr + b * sm_b + tap * sm_c + p, mask=p_ok, other=0.0).to(tl.float32)
        ok00 = inside & (y0 >= 0) & (x0 >= 0)
        ok01 = inside & (y0 >= 0) & (x1 <= width - 1)
        ok10 = inside & (y1 <= height - 1) & (x0 >= 0)
        ok11 = inside & (y1 <= height - 1) & (x1 <= width - 1)
        w00 = hy * hx * scale
        w01 = hy * lx * scale
        w10 = ly * hx * scale
        w11 = ly * lx * scale
        at00 = y0 * sx_h + x0 * sx_w  # int32: one image's map is far below 2**31 values
        at01 = at00 + sx_w
        at10 = at00 + sx_h
        at11 = at10 + sx_w
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < channels
            chan = x_base + c[:, None] * sx_c
            v = w00[None, :] * tl.load(chan + at00[None, :], mask=c_ok[:, None] & ok00[None, :], other=0.0).to(
                tl.float32
            )
            v += w01[None, :] * tl.load(chan + at01[None, :], mask=c_ok[:, None] & ok01[None, :], other=0.0).to(
                tl.float32
            )
            v += w10[None, :] * tl.load(chan + at10[None, :], mask=c_ok[:, None] & ok10[None, :], other=0.0).to(
                tl.float32
            )
            v += w11[None, :] * tl.load(chan + at11[None, :], mask=c_ok[:, None] & ok11[None, :], other=0.0).to(
                tl.float32
            )
            w = tl.load(
                weight_ptr + (tap * out_channels + o[:, None]) * channels + c[None, :],
                mask=o_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            acc = tl.dot(w, v.to(w.dtype), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + b * sout_b + o[:, None].to(tl.int64) * sout_c + p[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=o_ok[:, None] & p_ok[None, :])


_tuned_kernel = triton.autotune(
    CONFIGS, key=["channels", "out_channels", "size_class", "KERNEL", "HAS_MASK"], cache_results=True
)(_deform_conv_kernel)


def _kernel_layouts(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input as (B, C, H, W) rows (neighbouring pixels' samples lie side by side) and the weights
    as (k, k, O, C) in the input's dtype: the (O, C) matrix of each tap."""
    return x.contiguous(), weight.to(x.dtype).permute(2, 3, 0, 1).contiguous()


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself where each (batch, channel) plane is one contiguous run (the kernel's assumption), else a copy."""
    return t if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] else t.contiguous()


def _launch(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    padding: int,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """Run the kernel: tuned on CUDA, else (Triton's interpreter) with `config` (default the first)."""
    batch, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    out_h, out_w = offset.shape[-2:]
    x, taps_first = _kernel_layouts(x, weight)
    offset = _rows_contiguous(offset)  # the model passes a channel slice of one convolution's output
    mask = None if mask is None else _rows_contiguous(mask)
    out = x.new_empty(batch, out_channels, out_h, out_w)
    pixels = out_h * out_w
    grid = lambda meta: (triton.cdiv(out_channels, meta["BLOCK_O"]), triton.cdiv(pixels, meta["BLOCK_P"]), batch)
    args = (
        x,
        offset,
        offset if mask is None else mask,
        taps_first,
        taps_first if bias is None else bias,
        out,
        channels,
        height,
        width,
        out_w,
        pixels,
        out_channels,
        *x.stride(),
        offset.stride(0),
        offset.stride(1),
        *((0, 0) if mask is None else (mask.stride(0), mask.stride(1))),
        out.stride(0),
        out.stride(1),
        triton.next_power_of_2(pixels),
    )
    flags = dict(
        PADDING=padding,
        KERNEL=kernel,
        HAS_MASK=mask is not None,
        HAS_BIAS=bias is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else None,  # no TF32 rounding of float32 inputs
    )
    if x.device.type == "cuda" and config is None:
        _tuned_kernel[grid](*args, **flags)
    else:
        config = config or CONFIGS[0]
        _deform_conv_kernel[grid(config.kwargs)](*args, **flags, **config.kwargs, num_warps=config.num_warps)
    return out


@triton.jit
def _im2col_kernel(
    x_ptr,
    offset_ptr,
    mask_ptr,
    cols_ptr,
    channels,
    height,
    width,
    out_w,
    first_pixel,
    pixels,
    sx_c,
    sx_h,
    so_c,
    sm_c,
    PADDING: tl.constexpr,
    KERNEL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """cols[c * taps + t, q] = mask[t, p] * bilinear(x[c], p + tap t + offset[t, p]) for the output
    pixels p = first_pixel + q of one image: torchvision's im2col, sampled in float32, written in
    cols' dtype, on the current stream."""
    tap = tl.program_id(1)
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    q_ok = q < pixels
    p = first_pixel + q
    ky = tap // KERNEL
    kx = tap % KERNEL
    dy = tl.load(offset_ptr + (2 * tap) * so_c + p, mask=q_ok, other=0.0).to(tl.float32)
    dx = tl.load(offset_ptr + (2 * tap + 1) * so_c + p, mask=q_ok, other=0.0).to(tl.float32)
    y = (p // out_w).to(tl.float32) + (ky - PADDING) + dy
    x = (p % out_w).to(tl.float32) + (kx - PADDING) + dx
    inside = q_ok & (y > -1.0) & (x > -1.0) & (y < height) & (x < width)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    ly = y - y0f
    lx = x - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    scale = tl.where(inside, 1.0, 0.0)
    if HAS_MASK:
        scale = scale * tl.load(mask_ptr + tap * sm_c + p, mask=q_ok, other=0.0).to(tl.float32)
    ok00 = inside & (y0 >= 0) & (x0 >= 0)
    ok01 = inside & (y0 >= 0) & (x0 + 1 <= width - 1)
    ok10 = inside & (y0 + 1 <= height - 1) & (x0 >= 0)
    ok11 = inside & (y0 + 1 <= height - 1) & (x0 + 1 <= width - 1)
    at00 = y0 * sx_h + x0
    w00 = ((1.0 - ly) * (1.0 - lx) * scale)[None, :]
    w01 = ((1.0 - ly) * lx * scale)[None, :]
    w10 = (ly * (1.0 - lx) * scale)[None, :]
    w11 = (ly * lx * scale)[None, :]
    for c0 in range(0, channels, BLOCK_C):  # the positions above serve every channel
        c = c0 + tl.arange(0, BLOCK_C)
        keep = (c < channels)[:, None]
        chan = x_ptr + c[:, None] * sx_c
        v = w00 * tl.load(chan + at00[None, :], mask=keep & ok00[None, :], other=0.0).to(tl.float32)
        v += w01 * tl.load(chan + (at00 + 1)[None, :], mask=keep & ok01[None, :], other=0.0).to(tl.float32)
        v += w10 * tl.load(chan + (at00 + sx_h)[None, :], mask=keep & ok10[None, :], other=0.0).to(tl.float32)
        v += w11 * tl.load(chan + (at00 + sx_h + 1)[None, :], mask=keep & ok11[None, :], other=0.0).to(tl.float32)
        rows = (c * (KERNEL * KERNEL) + tap).to(tl.int64)
        out = cols_ptr + rows[:, None] * pixels + q[None, :]
        tl.store(out, v.to(cols_ptr.dtype.element_ty), mask=keep & q_ok[None, :])


@torch.library.custom_op("birefnet::deform_im2col_triton", mutates_args=())
def im2col(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: int,
    padding: int,
    start: int,
    stop: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(C * k * k, stop - start) bilinear samples of one image x (C, H, W) for its output pixels
    start..stop (row-major over offset's (H', W')), scaled by `mask` (k*k, H', W'), in `dtype`: the
    columns `deform_conv.deform_conv2d_banded` multiplies with the weights. One launch, no float32
    copy of the image, on the current CUDA stream (unlike torchvision's, which a CUDA graph cannot
    capture)."""
    channels, height, width = x.shape
    out_w = offset.shape[-1]
    x = _rows_contiguous(x)
    offset = _rows_contiguous(offset)
    mask = None if mask is None else _rows_contiguous(mask)
    count = stop - start
    cols = torch.empty(channels * kernel * kernel, count, device=x.device, dtype=dtype)
    grid = (triton.cdiv(count, IM2COL_TILES.kwargs["BLOCK_P"]), kernel * kernel)
    _im2col_kernel[grid](
        x,
        offset,
        offset if mask is None else mask,
        cols,
        channels,
        height,
        width,
        out_w,
        start,
        count,
        x.stride(0),
        x.stride(1),
        offset.stride(0),
        0 if mask is None else mask.stride(0),
        PADDING=padding,
        KERNEL=kernel,
        HAS_MASK=mask is not None,
        **IM2COL_TILES.kwargs,
        num_warps=IM2COL_TILES.num_warps,
    )
    return cols


@im2col.register_fake
def _(x, offset, mask, kernel, padding, start, stop, dtype):
    return x.new_empty(x.shape[0] * kernel * kernel, stop - start, dtype=dtype)


@torch.library.custom_op("birefnet::deform_conv2d_triton", mutates_args=())
def deform_conv2d_triton(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    padding: int,
) -> torch.Tensor:
    """Modulated deformable convolution, stride 1, dilation 1, one offset group, output in x's dtype
    (inference only: no backward)."""
    return _launch(x, offset, weight, mask, bias, padding)


@deform_conv2d_triton.register_fake
def _(x, offset, weight, mask, bias, padding):
    _kernel_layouts(x, weight)  # the launch's temporaries, so memory estimates on fake tensors count them
    return x.new_empty(x.shape[0], weight.shape[0], *offset.shape[-2:])
