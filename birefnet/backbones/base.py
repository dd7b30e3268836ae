"""What a backbone family module declares (see `birefnet.backbones`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Variant:
    """One backbone of the official code.

    channels: the four feature maps' channels, x1 (finest) to x4.
    strides: their strides; four equal strides (a ViT) make the decoder resample them to
      4..32 through its pyramid neck.
    size_multiple, size_rule: input heights and widths must be multiples of this; why.
    pretrained: the ImageNet/DINOv3 weights the official recipe starts from (timm or torchvision name).
    frozen: the official recipe trains the decoder only.
    """

    name: str
    family: str
    channels: tuple[int, int, int, int]
    strides: tuple[int, int, int, int] = (4, 8, 16, 32)
    size_multiple: int = 32
    size_rule: str = "the half-size pass must reach stride 32 on whole pixels"
    pretrained: str = ""
    frozen: bool = False

    @property
    def pyramid_neck(self) -> bool:
        return len(set(self.strides)) == 1


def count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct values the first group of `pattern` takes over the keys (e.g. blocks)."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key
