"""Deformable convolution with a pure-PyTorch fallback.

torchvision's `deform_conv2d` is the reference kernel, but it is missing for some
device/dtype pairs (bf16 on CPU, MPS before torchvision 0.23, broken CUDA builds).
`deform_conv2d` uses it where it works and otherwise an exact re-expression with
`grid_sample`, so the model runs everywhere with the same numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # torchvision is a hard dependency of timm, but its C++ ops may fail to load
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except Exception:  # pragma: no cover - depends on the installation
    _tv_deform_conv2d = None

# (device type, dtype) pairs where torchvision's kernel raised; we stop trying there.
_TORCHVISION_UNSUPPORTED: set[tuple[str, torch.dtype]] = set()


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
    1x1 convolution, so memory stays at one sampled map at a time.
    """
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = height + 2 * padding - kh + 1
    out_w = width + 2 * padding - kw + 1
    rows = torch.arange(out_h, device=x.device, dtype=x.dtype).view(1, out_h, 1) - padding
    cols = torch.arange(out_w, device=x.device, dtype=x.dtype).view(1, 1, out_w) - padding
    out = x.new_zeros(batch, out_channels, out_h, out_w)
    for ky in range(kh):
        for kx in range(kw):
            tap = ky * kw + kx
            y = rows + ky + offset[:, 2 * tap]
            x_pos = cols + kx + offset[:, 2 * tap + 1]
            # grid_sample's align_corners=False convention: pixel i sits at (2i+1)/size - 1.
            grid = torch.stack(((2 * x_pos + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if mask is not None:
                sampled = sampled * mask[:, tap : tap + 1]
            out = out + F.conv2d(sampled, weight[:, :, ky : ky + 1, kx : kx + 1])
    return out


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    padding: int = 0,
) -> torch.Tensor:
    """torchvision's kernel where available for this device and dtype, else the reference.

    CPU training also takes the reference: its backward (grid_sample + conv) is 3-6x faster
    than torchvision's CPU backward kernel, with the same numbers.
    """
    key = (x.device.type, x.dtype)
    if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return deform_conv2d_reference(x, offset, weight, mask, padding)
    if _tv_deform_conv2d is not None and key not in _TORCHVISION_UNSUPPORTED:
        try:
            return _tv_deform_conv2d(x, offset, weight, bias=None, padding=(padding, padding), mask=mask)
        except (RuntimeError, NotImplementedError):
            _TORCHVISION_UNSUPPORTED.add(key)
    return deform_conv2d_reference(x, offset, weight, mask, padding)
