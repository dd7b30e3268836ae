"""Which BiRefNet a set of weights is: backbone, BatchNorm, tile layout and working size, from the
weights themselves (key names and shapes), a file's metadata and the known-checkpoint table; never
from a file name alone. Variants this library cannot run exactly are refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from . import backbones
from .checkpoint_files import (
    METADATA_LAYOUT,
    METADATA_RESOLUTION,
    SAFETENSORS_SUFFIXES,
    read_checkpoint,
    strip_prefixes,
    weight_file,
)
from .errors import CheckpointError
from .model import BiRefNetConfig


def inspect_checkpoint(source) -> BiRefNetConfig:
    """The variant of a weight file (a path) from its safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    path = weight_file(Path(source).expanduser())
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        state_dict, _, where = read_checkpoint(path)
        return detect_config(strip_prefixes(state_dict), where)
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            meta = {
                k: torch.empty(v.get_shape(), dtype=dtypes.get(v.get_dtype(), torch.float32), device="meta")
                for k, v in slices.items()
            }
    except Exception:
        raise CheckpointError(
            f"{path}: not a readable safetensors file; it is truncated or corrupt, download it again"
        ) from None
    return detect_config(strip_prefixes(meta), str(path))


def detect_backbone(state_dict: Mapping[str, torch.Tensor], where: str = "<state dict>") -> str:
    """Backbone name from key names and shapes (each family of `birefnet.backbones` recognises its own)."""
    if not any(k.startswith(("bb.", "decoder.", "squeeze_module.")) for k in state_dict):
        sample = ", ".join(list(state_dict)[:3])
        raise CheckpointError(
            f"{where}: not a BiRefNet checkpoint (no bb./squeeze_module./decoder. keys; first keys: {sample})"
        )
    return backbones.recognise(state_dict, where)


def detect_config(state_dict: Mapping[str, torch.Tensor], where: str = "<state dict>") -> BiRefNetConfig:
    """Architecture from the weights alone; refuses variants this library cannot run exactly."""
    backbone = detect_backbone(state_dict, where)
    if "decoder.ipt_blk5.conv1.weight" not in state_dict or "decoder.gdt_convs_4.0.weight" not in state_dict:
        raise CheckpointError(
            f"{where}: pre-May-2024 BiRefNet architecture (no stage-4 inward/outward reference) is not supported; "
            "download the current release of this model"
        )
    if "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight" not in state_dict:
        raise CheckpointError(
            f"{where}: old single-branch ASPPDeformable decoder (before May 2024) is not supported; "
            "download the current release of this model"
        )
    if state_dict["decoder.ipt_blk1.conv1.weight"].shape[1] != 3:
        raise CheckpointError(f"{where}: inward reference without image tiles (dec_ipt_split=False) is not supported")
    batch_norm = "squeeze_module.0.bn_in.running_mean" in state_dict
    return BiRefNetConfig(backbone=backbone, batch_norm=batch_norm)


def file_dtype(state_dict) -> torch.dtype | None:
    for key, value in state_dict.items():
        if key.endswith(".weight") and value.is_floating_point():
            return value.dtype
    return None


def choose_tile_layout(requested, metadata, known, file_dtype) -> tuple[str, str]:
    if requested is not None:
        return requested, "set by the caller"
    if metadata.get(METADATA_LAYOUT):
        return metadata[METADATA_LAYOUT], "from the file's metadata"
    if known is not None:
        return known.tile_layout, f"known checkpoint {known.name}"
    if file_dtype in (torch.float16, torch.bfloat16):
        return "current", "half-precision file: the 2025 releases (HR, dynamic, 512x512) were published so"
    return "legacy", "full-precision file: the 2024 releases were published so; override if trained with current code"


def resolution_from(metadata, known) -> tuple[int, int] | None:
    text = metadata.get(METADATA_RESOLUTION)
    if text:
        if text == "dynamic":
            return None
        h, w = (int(v) for v in text.split("x"))
        return (h, w)
    if known is not None:
        return known.resolution
    return (1024, 1024)
