"""VGG16, VGG16-BN and ResNet-50 (torchvision) cut into the official four stages.

The official code slices torchvision's layers into `conv1`..`conv4` (strides 4, 8, 16, 32):
VGG's `features` at the pooling layers, ResNet's stem + `layer1`, then `layer2`..`layer4`.
This module builds the same `nn.Sequential` of named stages, so the keys are the official
ones (`conv1.0.weight`, `conv4.2.bn3.running_var`, ...) by construction.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.utils.checkpoint
from torch import nn

from ..errors import CheckpointError
from .base import Variant, count

VARIANTS = {
    "vgg16": Variant("vgg16", "torchvision_cnn", (128, 256, 512, 512), pretrained="vgg16"),
    "vgg16bn": Variant("vgg16bn", "torchvision_cnn", (128, 256, 512, 512), pretrained="vgg16_bn"),
    "resnet50": Variant("resnet50", "torchvision_cnn", (256, 512, 1024, 2048), pretrained="resnet50"),
}
_VGG_STAGES = {"vgg16": (10, 17, 24, 31), "vgg16bn": (14, 24, 34, 44)}  # end of each stage in `features`


class StagedCNN(nn.Sequential):
    """`conv1`..`conv4` run in turn; returns the four stage outputs (NCHW)."""

    grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self:
            if self.grad_checkpointing and torch.is_grad_enabled():  # recompute in backward: less memory
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(x)
        return outs

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def _torchvision_model(variant: Variant, weights=None) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(variant.pretrained, weights=weights)


def _stages(net: nn.Module, name: str) -> StagedCNN:
    if name in _VGG_STAGES:
        ends = _VGG_STAGES[name]
        starts = (0,) + ends[:3]
        parts = [net.features[a:b] for a, b in zip(starts, ends)]
    else:
        parts = [
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
            net.layer2,
            net.layer3,
            net.layer4,
        ]
    return StagedCNN(OrderedDict((f"conv{i + 1}", part) for i, part in enumerate(parts)))


# ---------------------------------------------------------------------------------------------
# Registry interface (birefnet.backbones)


def build(variant: Variant) -> StagedCNN:
    return _stages(_torchvision_model(variant), variant.name)


def recognise(state_dict, where: str) -> str | None:
    """VGG16 (3x3 stem, three convolutions in the last stage), with BatchNorm or not; ResNet-50 (7x7
    stem, 6 blocks in layer3)."""
    stem = state_dict.get("bb.conv1.0.weight")
    if stem is None:
        return None
    if stem.shape[-1] == 7:
        blocks = count(state_dict, r"bb\.conv3\.(\d+)\.conv1\.weight")
        if blocks == 6 and "bb.conv4.2.conv3.weight" in state_dict:
            return "resnet50"
        raise CheckpointError(
            f"{where}: ResNet backbone with {blocks} blocks in layer3 is not an official BiRefNet "
            "configuration (supported: resnet50)"
        )
    batch_norm = "bb.conv1.1.running_mean" in state_dict
    convs = count(state_dict, r"bb\.conv4\.(\d+)\.weight") // (2 if batch_norm else 1)
    if convs == 3:
        return "vgg16bn" if batch_norm else "vgg16"
    raise CheckpointError(
        f"{where}: VGG backbone with {convs} convolutions in its last stage is not an official "
        "BiRefNet configuration (supported: vgg16, vgg16bn)"
    )


OPTIONAL_PRETRAINED = r"$^"


def pretrained_state_dict(variant: Variant) -> dict:
    """torchvision's ImageNet weights (downloaded by torchvision: an explicit request)."""
    return _torchvision_model(variant, weights="DEFAULT").state_dict()


def convert_pretrained(state_dict: dict, variant: Variant) -> dict:
    """torchvision's layout (`features.N.*` / `conv1`, `bn1`, `layerK.*`) -> this module's keys."""
    with torch.device("meta"):
        reference = _torchvision_model(variant)
    stages = _stages(reference, variant.name)
    owner = {id(p): name for name, p in stages.state_dict(keep_vars=True).items()}
    return {
        owner[id(t)]: state_dict[k]
        for k, t in reference.state_dict(keep_vars=True).items()
        if id(t) in owner and k in state_dict
    }
