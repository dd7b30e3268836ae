"""PVT v2 backbone: timm's implementation (numerically the official one) behind the official key names.

The official checkpoints name PVT weights `patch_embed{n}`, `block{n}.{j}`, `norm{n}`
and `mlp.dwconv.dwconv`; timm names them `patch_embed`/`stages.{n-1}.downsample`,
`stages.{n-1}.blocks.{j}`, `stages.{n-1}.norm` and `mlp.dwconv`. The two rename
functions below convert between them at the checkpoint edge.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from ..errors import CheckpointError
from .base import Variant, count, rename

_WIDTHS = {"pvt_v2_b0": 32, "pvt_v2_b1": 64, "pvt_v2_b2": 64, "pvt_v2_b5": 64}
VARIANTS = {
    name: Variant(
        name,
        "pvt",
        (width, 2 * width, 5 * width, 8 * width),
        pretrained=f"{name}.in1k",
        size_rule="the decoder's inward reference cuts the image into stride-32 tiles",
    )
    for name, width in _WIDTHS.items()
}


class PVTv2(nn.Module):
    """Returns the four stage outputs (NCHW, strides 4/8/16/32), already normalised."""

    def __init__(self, variant: str, drop_path_rate: float = 0.1):
        super().__init__()
        self.body = timm.create_model(variant, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate)

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


def to_model_key(key: str) -> str:
    """Backbone key without `bb.`: official PVT name -> name inside `PVTv2`."""
    return rename(key, _OFFICIAL_TO_TIMM)


def to_official_key(key: str) -> str:
    """Inverse of `to_model_key`."""
    return rename(key, _TIMM_TO_OFFICIAL)


# ---------------------------------------------------------------------------------------------
# Registry interface (birefnet.backbones)


def build(variant: Variant) -> PVTv2:
    return PVTv2(variant.name)


def recognise(state_dict, where: str) -> str | None:
    """The PVT v2 variant from the first stage's width and the depth of stage 3."""
    if "bb.patch_embed1.proj.weight" not in state_dict:
        return None
    dim = state_dict["bb.patch_embed1.proj.weight"].shape[0]
    depth3 = count(state_dict, r"bb\.block3\.(\d+)\.")
    found = {(32, 2): "pvt_v2_b0", (64, 2): "pvt_v2_b1", (64, 6): "pvt_v2_b2", (64, 40): "pvt_v2_b5"}.get((dim, depth3))
    if found is None:
        raise CheckpointError(
            f"{where}: PVT v2 backbone with width {dim} and {depth3} blocks in stage 3 is not "
            "supported (supported: pvt_v2_b0, b1, b2, b5)"
        )
    return found


OPTIONAL_PRETRAINED = r"$^"  # every key comes from the ImageNet weights


def pretrained_state_dict(variant: Variant) -> dict:
    return timm.create_model(variant.pretrained, pretrained=True).state_dict()


def convert_pretrained(state_dict: dict, variant: Variant) -> dict:
    """ImageNet weights in the original PVT release's or timm's layout -> this module's keys."""
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("head", "norm.", "fc_norm"))}
    if "patch_embed1.proj.weight" in state_dict:  # the original release
        return {to_model_key(k): v for k, v in state_dict.items()}
    return {f"body.{k}": v for k, v in state_dict.items()}
