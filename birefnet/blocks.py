"""Decoder building blocks of BiRefNet (spec §3), with the official key names.

`norm` is a factory for the BatchNorm layers: the official code builds them only
when trained with batch size > 1 (every released checkpoint has them) and uses
Identity otherwise, so checkpoints of both kinds load.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ops import deform_conv2d

NormFactory = Callable[[int], nn.Module]


def interp(x: torch.Tensor, size) -> torch.Tensor:
    """The only resize inside the network: bilinear, align_corners=True, no antialias."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        mask = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(x, offset, self.regular_conv.weight, mask, self.padding)


class ASPPModuleDeformable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: NormFactory):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size, kernel_size // 2)
        self.bn = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """Branches [1x1, deformable 1x1/3x3/7x7, global pool] -> concat -> 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, kernel_sizes=(1, 3, 7), width: int = 256):
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
        branches = [self.aspp1(x)] + [branch(x) for branch in self.aspp_deforms]
        pooled = self.global_avg_pool(x)
        branches.append(pooled.expand(-1, -1, *x.shape[-2:]))  # bilinear resize of a 1x1 map = replicate
        return self.dropout(self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1)))))


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
        x = self.dec_att(self.relu_in(self.bn_in(self.conv_in(x))))
        return self.bn_out(self.conv_out(x))


class BasicLatBlk(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions with no norm or activation (the inward-reference encoders)."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
