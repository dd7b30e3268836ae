"""PVT v2 backbone: timm's implementation (exact, spec §6.2) behind the official key names.

The official checkpoints name PVT weights `patch_embed{n}`, `block{n}.{j}`, `norm{n}`
and `mlp.dwconv.dwconv`; timm names them `patch_embed`/`stages.{n-1}.downsample`,
`stages.{n-1}.blocks.{j}`, `stages.{n-1}.norm` and `mlp.dwconv`. The two rename
functions below convert between them at the checkpoint edge.
"""
from __future__ import annotations

import re

import timm
import torch
from torch import nn

PVT_VARIANTS = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5")


class PVTv2(nn.Module):
    """Returns the four stage outputs (NCHW, strides 4/8/16/32), already normalised."""

    def __init__(self, variant: str, drop_path_rate: float = 0.1):
        super().__init__()
        self.body = timm.create_model(variant, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate)
        self.dims = [stage.norm.normalized_shape[0] for stage in self.body.stages]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.body.patch_embed(x)
        outs = []
        for stage in self.body.stages:
            x = stage(x)
            outs.append(x)
        return outs


_OFFICIAL_TO_TIMM = [
    (r"^patch_embed1\.", "body.patch_embed."),
    (r"^patch_embed([234])\.", lambda m: f"body.stages.{int(m.group(1)) - 1}.downsample."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"body.stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^norm(\d)\.", lambda m: f"body.stages.{int(m.group(1)) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]
_TIMM_TO_OFFICIAL = [
    (r"^body\.patch_embed\.", "patch_embed1."),
    (r"^body\.stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}."),
    (r"^body\.stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}."),
    (r"^body\.stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}."),
    (r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv."),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def official_to_timm_key(key: str) -> str:
    """Backbone key without `bb.`: official PVT name -> name inside `PVTv2`."""
    return _rename(key, _OFFICIAL_TO_TIMM)


def timm_to_official_key(key: str) -> str:
    """Inverse of `official_to_timm_key`."""
    return _rename(key, _TIMM_TO_OFFICIAL)
