"""Start a BiRefNet from pretrained backbone weights (ImageNet or DINOv3), in any layout its
family reads (timm's, torchvision's or the original release's: `birefnet.backbones`)."""

from __future__ import annotations

import os
import re

import torch

from birefnet import BiRefNet, backbones
from birefnet.errors import first_line


def convert_backbone_state_dict(state_dict: dict, backbone: str) -> dict[str, torch.Tensor]:
    """Pretrained backbone weights -> `model.bb` keys."""
    return backbones.family(backbone).convert_pretrained(state_dict, backbones.variant(backbone))


def load_backbone_weights(model: BiRefNet, source) -> None:
    """Fill `model.bb` from a file or, for source == "download", the weights the official recipe
    starts from (fetched by timm or torchvision: an explicit user choice)."""
    backbone = model.config.backbone
    family = backbones.family(backbone)
    if source in ("download", "timm"):
        state_dict = _downloaded(family, backbone)
    else:
        from birefnet import read_checkpoint

        state_dict = read_checkpoint(source)[0]
    converted = convert_backbone_state_dict(state_dict, backbone)
    own = model.bb.state_dict()
    optional = re.compile(family.OPTIONAL_PRETRAINED)
    missing = [k for k in own if k not in converted and not optional.fullmatch(k)]
    unexpected = [k for k in converted if k not in own]
    reshaped = [k for k in converted if k in own and converted[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{source}: not {backbone} backbone weights ({len(missing)} missing, e.g. {missing[:1]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:1]}; "
            f"{len(reshaped)} of another shape, e.g. {reshaped[:1]})"
        )
    model.bb.load_state_dict(converted, strict=False)


def _downloaded(family, backbone: str) -> dict:
    """The official starting weights, fetched by timm (from the Hugging Face Hub) or torchvision; no
    connection, or HF_HUB_OFFLINE set, is one line with the way out, not the hub's traceback."""
    try:
        return family.pretrained_state_dict(backbones.variant(backbone))
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, urllib's URLError
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")  # as the hub reads it
        cause = "HF_HUB_OFFLINE is set: unset it" if offline else f"{first_line(err, 120)}: connect to the internet"
        raise OSError(
            f"--backbone-weights download: the {backbone} weights could not be fetched ({cause}), "
            "or pass a weights file: --backbone-weights FILE"
        ) from None
