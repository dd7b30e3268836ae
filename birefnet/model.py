"""BiRefNet: localization module (backbone on the image and a half-size copy, context
fusion, squeeze block) followed by the reconstruction module (`decoder.Decoder`).

One `BiRefNetConfig` describes every released model; `build_model` makes one. The
module names (`bb`, `squeeze_module`, `decoder`) are the official state-dict prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from . import backbones
from .blocks import BasicDecBlk, interp
from .decoder import TILE_LAYOUTS, Decoder, DecoderOutput

BACKBONES = backbones.NAMES
MIN_SIZE = 64  # the half-size pass must leave PVT's first stage as large as its 8x8 reduction conv


@dataclass(frozen=True)
class BiRefNetConfig:
    """What varies between BiRefNet checkpoints.

    backbone: one of BACKBONES.
    tile_layout: inward-reference tile order, "current" or "legacy" (see `image_tiles`).
    batch_norm: False only for models trained with batch size 1 (BatchNorm becomes Identity).
    """

    backbone: str = "swin_v1_l"
    tile_layout: str = "current"
    batch_norm: bool = True

    def __post_init__(self):
        backbones.variant(self.backbone)  # a clear error for an unknown name
        if self.tile_layout not in TILE_LAYOUTS:
            raise ValueError(f"tile_layout must be one of {TILE_LAYOUTS}, got {self.tile_layout!r}")

    def with_(self, **changes) -> "BiRefNetConfig":
        return replace(self, **changes)


def _norm_factory(batch_norm: bool):
    return nn.BatchNorm2d if batch_norm else (lambda channels: nn.Identity())


class BiRefNet(nn.Module):
    """`model(x)` maps an ImageNet-normalised batch (B, 3, H, W), H and W multiples of 32,
    to the final logits (B, 1, H, W). `model.forward_details(x)` also returns the side
    outputs and the outward-reference maps (see `DecoderOutput`)."""

    def __init__(self, config: BiRefNetConfig = BiRefNetConfig()):
        super().__init__()
        self.config = config
        self.variant = backbones.variant(config.backbone)
        self.bb = backbones.build(config.backbone)
        norm = _norm_factory(config.batch_norm)
        channels = [2 * d for d in reversed(self.variant.channels)]  # 'cat' multi-scale input doubles them
        context = sum(channels[1:])  # x1, x2, x3 pooled into x4
        self.squeeze_module = nn.Sequential(BasicDecBlk(channels[0] + context, channels[0], norm))
        self.decoder = Decoder(channels, norm, config.tile_layout, pyramid_neck=self.variant.pyramid_neck)

    @property
    def tile_layout(self) -> str:
        return self.decoder.tile_layout

    @tile_layout.setter
    def tile_layout(self, layout: str) -> None:
        self.config = self.config.with_(tile_layout=layout)
        self.decoder.tile_layout = layout

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Localization module: multi-scale backbone features x1..x4, x4 fused with context."""
        height, width = x.shape[-2:]
        full = self.bb(x)
        half = self.bb(interp(x, (height // 2, width // 2)))
        feats = [torch.cat([f, interp(h, f.shape[-2:])], dim=1) for f, h in zip(full, half)]
        x1, x2, x3, x4 = feats
        size = x4.shape[-2:]
        x4 = torch.cat([interp(x1, size), interp(x2, size), interp(x3, size), x4], dim=1)
        return [x1, x2, x3, self.squeeze_module(x4)]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BiRefNet expects a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        multiple = self.variant.size_multiple
        if h % multiple or w % multiple or h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(
                f"BiRefNet ({self.variant.name}) needs H and W to be multiples of {multiple} "
                f"({self.variant.size_rule}) and at least {MIN_SIZE}, got {h}x{w}; "
                "resize first (birefnet.segment does this for you)"
            )

    def forward_details(self, x: torch.Tensor) -> DecoderOutput:
        self._check_input(x)
        return self.decoder(x, self.encode(x), details=True)

    def forward(self, x: torch.Tensor):
        """Eval: final logits (B, 1, H, W). Train: the full `DecoderOutput` for the losses."""
        self._check_input(x)
        out = self.decoder(x, self.encode(x))
        return out if self.training else out.logits


def build_model(config: BiRefNetConfig | str = "swin_v1_l", **overrides) -> BiRefNet:
    """A randomly initialised BiRefNet, e.g. `build_model("pvt_v2_b0")`."""
    if isinstance(config, str):
        config = BiRefNetConfig(backbone=config)
    return BiRefNet(config.with_(**overrides) if overrides else config)
