"""Decoder building blocks of BiRefNet (the official repository's `models/modules/`), with the official key names.

`norm` is a factory for the BatchNorm layers: the official code builds them only
when trained with batch size > 1 (every released checkpoint has them) and uses
Identity otherwise, so checkpoints of both kinds load.

Every block has two forward paths with the same result, chosen by `fastpath.shortcuts`.
The plain graph runs the modules as the official code does. The shortcuts fold each eval-mode BatchNorm
into the convolution before it (weights are folded per call: cheap, and the state dict
never changes), runs 1x1 convolutions as matrix products (mkldnn is 3-10x slower on them
in NCHW), and computes the ASPP projection branch by branch, so the five-branch
concatenation is never built and the global-pool branch becomes a per-image bias.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import deform_conv2d
from .device_constants import device_constant
from .fastpath import shortcuts

NormFactory = Callable[[int], nn.Module]


def fold_norm(
    weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of `norm(conv(x))` as one convolution, for an eval-mode BatchNorm (or Identity)."""
    if isinstance(norm, nn.Identity):
        return weight, bias
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.view(-1, *([1] * (weight.ndim - 1))), shift


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution as one matrix product per image (NCHW is already (C, H*W))."""
    b, c, h, w = x.shape
    matrix = weight.reshape(weight.shape[0], c)
    flat = x.reshape(b, c, h * w)
    if bias is None:
        out = matrix @ flat
    elif b == 1:  # addmm: baddbmm copies its operands when the batch matrix is an expanded view
        out = torch.addmm(bias.view(-1, 1), matrix, flat[0])
    else:
        out = torch.baddbmm(bias.view(1, -1, 1), matrix.expand(b, -1, -1), flat)
    return out.view(b, -1, h, w)


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inference `norm(conv(x))` with the norm folded in."""
    weight, bias = fold_norm(conv.weight, conv.bias, norm)
    if conv.kernel_size == (1, 1):
        return conv1x1(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=conv.padding)


def interp(x: torch.Tensor, size) -> torch.Tensor:
    """The only resize inside the network: bilinear, align_corners=True, no antialias.

    Shrinking in inference runs as two small matrix products (bilinear is separable):
    PyTorch's CPU kernel copies the whole input to channels-last and back first, which
    costs more than the resize (the context fusion shrinks 384-1536-channel maps 2-8x).
    """
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if shortcuts() and size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        rows = bilinear_matrix(x.shape[-2], size[0], x)
        cols = bilinear_matrix(x.shape[-1], size[1], x)
        return rows @ (x @ cols.T)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def bilinear_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True, on `like`'s
    device and in its dtype, made once per size."""
    return device_constant(("bilinear", n_in, n_out), like, lambda: _bilinear_weights(n_in, n_out), like.dtype)


def _bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    # Positions in float32 as PyTorch's kernel computes them, so both agree to float rounding.
    scale = torch.tensor((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0, dtype=torch.float32)
    source = (torch.arange(n_out, dtype=torch.float32) * scale).double()
    low = source.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = source - low
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    matrix[torch.arange(n_out), low] += 1 - frac
    matrix[torch.arange(n_out), high] += frac
    return matrix


class DeformableConv2d(nn.Module):
    """Modulated deformable conv (DCNv2): offsets and a 2*sigmoid mask predicted from the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        taps = kernel_size * kernel_size
        self.padding = padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * taps, kernel_size, padding=padding)
        self.modulator_conv = nn.Conv2d(in_channels, taps, kernel_size, padding=padding)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        for conv in (self.offset_conv, self.modulator_conv):  # start as a plain convolution
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`weight`/`bias` replace the regular conv's (inference passes them with a norm folded in)."""
        weight = self.regular_conv.weight if weight is None else weight
        if not shortcuts(self):
            offset = self.offset_conv(x)
            mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        else:  # both predictors read the same input: one convolution
            taps = self.modulator_conv.out_channels
            both = F.conv2d(
                x,
                torch.cat([self.offset_conv.weight, self.modulator_conv.weight]),
                torch.cat([self.offset_conv.bias, self.modulator_conv.bias]),
                padding=self.padding,
            )
            offset, mask = both[:, : 2 * taps], torch.sigmoid(both[:, 2 * taps :]).mul_(2.0)
        return deform_conv2d(x, offset, weight, mask, self.padding, bias)


class ASPPModuleDeformable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: NormFactory):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size, kernel_size // 2)
        self.bn = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not shortcuts(self):
            return self.relu(self.bn(self.atrous_conv(x)))
        weight, bias = fold_norm(self.atrous_conv.regular_conv.weight, None, self.bn)
        return self.atrous_conv(x, weight, bias).relu_()


class ASPPDeformable(nn.Module):
    """Branches [1x1, deformable 1x1/3x3/7x7, global pool] -> concat -> 1x1 projection."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: NormFactory, kernel_sizes=(1, 3, 7), width: int = 256
    ):
        super().__init__()
        self.aspp1 = ASPPModuleDeformable(in_channels, width, 1, norm)
        self.aspp_deforms = nn.ModuleList(ASPPModuleDeformable(in_channels, width, k, norm) for k in kernel_sizes)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, width, 1, bias=False), norm(width), nn.ReLU(inplace=True)
        )
        self.conv1 = nn.Conv2d(width * (2 + len(kernel_sizes)), out_channels, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if shortcuts(self):
            return self._forward_inference(x)
        branches = [self.aspp1(x)] + [branch(x) for branch in self.aspp_deforms]
        pooled = self.global_avg_pool(x)
        branches.append(pooled.expand(-1, -1, *x.shape[-2:]))  # bilinear resize of a 1x1 map = replicate
        return self.dropout(self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1)))))

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """conv1(cat(branches)) = sum of conv1's slice times each branch; the pooled branch is constant."""
        weight, bias = fold_norm(self.conv1.weight.flatten(1), None, self.bn1)
        slices = weight.split(self.conv1.in_channels // (2 + len(self.aspp_deforms)), dim=1)
        _, pool_conv, pool_norm, _ = self.global_avg_pool
        pooled = conv_norm(pool_conv, pool_norm, x.mean(dim=(2, 3), keepdim=True)).relu_()
        out = conv1x1(pooled, slices[-1], bias).expand(-1, -1, *x.shape[-2:]).contiguous()
        for branch, part in zip([self.aspp1, *self.aspp_deforms], slices):
            flat = branch(x).flatten(2)
            for image in range(flat.shape[0]):
                out[image].view(-1, flat.shape[-1]).addmm_(part, flat[image])
            del flat  # before the next branch runs: each is 256 channels at the stage's resolution
        return out.relu_()  # dropout is the identity in eval


class BasicDecBlk(nn.Module):
    """conv3x3 -> BN -> ReLU -> ASPPDeformable -> conv3x3 -> BN (no final activation)."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, inter_channels: int = 64):
        super().__init__()
        # Registration order follows the official state_dict: conv_in, dec_att, conv_out, bn_in, bn_out.
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = ASPPDeformable(inter_channels, inter_channels, norm)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)
        self.bn_in = norm(inter_channels)
        self.bn_out = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leave(self.enter(x))

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """conv_in -> BN -> ReLU: to 64 channels. Separate so that a caller can drop the wide input
        (up to 480 channels at a quarter of the image) before the ASPP runs."""
        if shortcuts(self):
            return conv_norm(self.conv_in, self.bn_in, x).relu_()
        return self.relu_in(self.bn_in(self.conv_in(x)))

    def leave(self, x: torch.Tensor) -> torch.Tensor:
        """ASPPDeformable -> conv_out -> BN, on the output of `enter`."""
        x = self.dec_att(x)
        if shortcuts(self):
            return conv_norm(self.conv_out, self.bn_out, x)
        return self.bn_out(self.conv_out(x))


class BasicLatBlk(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(x, self.conv.weight, self.conv.bias) if shortcuts(self) else self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions with no norm or activation (the inward-reference encoders)."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
