"""The backbone registry: every backbone of the official code, one family module each.

A family module (`swin`, `pvt`, `torchvision_cnn`, `dinov3`) declares `VARIANTS` (name ->
`Variant`: channels, strides, input-size rule, pretrained weights) and five functions:
`build(variant)` (an `nn.Module` returning the four feature maps x1..x4, NCHW),
`recognise(state_dict, where)` (the variant of official-layout weights; None when they are
another family's), and, for training, `pretrained_state_dict(variant)` and
`convert_pretrained(state_dict, variant)` (ImageNet/DINOv3 weights -> the module's keys), with
`OPTIONAL_PRETRAINED` naming keys those weights may lack. Adding a backbone = one module here
plus its fixtures. A family whose modules do not carry the official key names (PVT, which reuses
timm's) also declares `to_model_key`/`to_official_key` (backbone keys without `bb.`, converted at
the checkpoint edge); the others are official by construction.
"""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

from ..errors import CheckpointError
from . import dinov3, pvt, swin, torchvision_cnn
from .base import Variant

FAMILIES: dict[str, ModuleType] = {"swin": swin, "pvt": pvt, "torchvision_cnn": torchvision_cnn, "dinov3": dinov3}
VARIANTS: dict[str, Variant] = {name: v for family in FAMILIES.values() for name, v in family.VARIANTS.items()}
NAMES = tuple(VARIANTS)


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(NAMES)}")
    return VARIANTS[name]


def family(name: str) -> ModuleType:
    return FAMILIES[variant(name).family]


def build(name: str):
    return family(name).build(variant(name))


def recognise(state_dict: Mapping, where: str = "<state dict>") -> str:
    """The backbone of official-layout BiRefNet weights, from key names and shapes alone."""
    for module in FAMILIES.values():
        found = module.recognise(state_dict, where)
        if found:
            return found
    raise CheckpointError(
        f"{where}: BiRefNet-like keys but no recognisable backbone under bb. (supported: {', '.join(NAMES)})"
    )


def _renamed_backbone_keys(state_dict: Mapping, name: str, direction: str) -> dict:
    convert = getattr(family(name), direction, None)
    if convert is None:  # the family's modules carry the official names
        return dict(state_dict)
    return {("bb." + convert(k[3:]) if k.startswith("bb.") else k): v for k, v in state_dict.items()}


def to_model_keys(state_dict: Mapping, name: str) -> dict:
    return _renamed_backbone_keys(state_dict, name, "to_model_key")


def to_official_keys(state_dict: Mapping, name: str) -> dict:
    return _renamed_backbone_keys(state_dict, name, "to_official_key")


__all__ = [
    "FAMILIES",
    "NAMES",
    "VARIANTS",
    "Variant",
    "build",
    "family",
    "recognise",
    "to_model_keys",
    "to_official_keys",
    "variant",
]
