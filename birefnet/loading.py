"""Load any BiRefNet checkpoint into a ready model: the one entry point, `load_model`.

A source is a file, a snapshot folder, a state dict or a known checkpoint's name (found by `hub`);
the variant comes from `detection`, the tensors from `checkpoint_files`. Every failure is a
`CheckpointError` whose message is one line naming the file, what was found and what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from . import backbones
from .checkpoint_files import METADATA_NAME, read_checkpoint, strip_prefixes
from .detection import choose_tile_layout, detect_config, file_dtype, resolution_from
from .device import SLOW_FP16, auto_dtype, parse_dtype, resolve_device, slow_fp16
from .errors import CheckpointError
from .hub import locate
from .model import BiRefNet, BiRefNetConfig
from .zoo import EMBEDDED_WEIGHTS, KnownCheckpoint, match_checkpoint

log = logging.getLogger("birefnet")
BACKENDS = ("torch", "openvino")
DEMO_NOTICE = (
    "note: this is the embedded demo model, a small BiRefNet trained on synthetic shapes, not for photos; "
    "get real weights with `birefnet download general` (or `birefnet list`)"
)


@dataclass(frozen=True)
class CheckpointInfo:
    """What was learned about a checkpoint while loading it."""

    source: str
    config: BiRefNetConfig
    known: KnownCheckpoint | None
    tile_layout_reason: str
    resolution: tuple[int, int] | None  # default working size (H, W); None = any (dynamic)
    file_dtype: torch.dtype | None

    @property
    def is_demo(self) -> bool:
        return self.source != "<state dict>" and _same_file(self.source, EMBEDDED_WEIGHTS)

    def describe(self) -> str:
        name = self.known.name if self.known else "unknown checkpoint"
        if self.is_demo:
            name = "embedded demo model, trained on synthetic shapes"
        res = "dynamic" if self.resolution is None else f"{self.resolution[1]}x{self.resolution[0]}"
        return (
            f"{self.source}: {self.config.backbone} ({name}), tile layout {self.config.tile_layout} "
            f"({self.tile_layout_reason}), default resolution {res}"
        )


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def default_weights() -> Path:
    """What to load when no weights are named: $BIREFNET_WEIGHTS, else the embedded demo model."""
    env = os.environ.get("BIREFNET_WEIGHTS")
    if env:
        return Path(env)
    if EMBEDDED_WEIGHTS.is_file():
        return EMBEDDED_WEIGHTS
    raise CheckpointError(
        "no weights given and this build has no embedded demo model; pass a weight file or a known name "
        "(e.g. `birefnet download general`, then --weights general)"
    )


def _describe_mismatch(model, state_dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[0]})")
    return "; ".join(parts)


def load_model(
    source=None,
    *,
    device="cpu",
    dtype=torch.float32,
    tile_layout: str | None = None,
    backend: str = "torch",
) -> BiRefNet:
    """Load BiRefNet weights: a .safetensors/.pth/.pt/.bin path, an HF snapshot folder, a state dict,
    or a known checkpoint's name (`general`, `hr`, ...) once downloaded (`birefnet.download`).
    No source: $BIREFNET_WEIGHTS, else the embedded demo model.

    The variant comes from the weights; the tile layout from `tile_layout`, else the file's
    metadata, else the known-checkpoint table, else the file's precision. Returns the model
    in eval mode with `model.info` (a `CheckpointInfo`).

    device "auto": CUDA, else Apple MPS, else the CPU; dtype "auto": the command line's choice for that
    device (bf16, else fp16, on CUDA; fp16 on MPS; fp32 on the CPU), so one call suits every machine.

    backend: "torch", or "openvino" (CPU only; `dtype` becomes OpenVINO's precision): an
    `OpenVINOModel` that is called and used like the PyTorch model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    device = resolve_device(device)
    dtype = auto_dtype(device) if isinstance(dtype, str) and dtype == "auto" else parse_dtype(dtype)
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError(
                f"the OpenVINO backend runs on the CPU, not {device}; use device cpu (or the torch backend)"
            )
        from .openvino_backend import OpenVINOModel

        return OpenVINOModel(load_model(source, tile_layout=tile_layout), precision=dtype)
    if source is None:
        source = default_weights()
    raw, metadata, where = read_checkpoint(source if isinstance(source, Mapping) else locate(source))
    state_dict = strip_prefixes(raw)
    config = detect_config(state_dict, where)
    known = match_checkpoint(where, config.backbone) if where != "<state dict>" else None
    if metadata.get(METADATA_NAME):
        known = None  # our own fine-tune: its metadata describes it
    stored_dtype = file_dtype(state_dict)
    layout, reason = choose_tile_layout(tile_layout, metadata, known, stored_dtype)
    config = config.with_(tile_layout=layout)

    with torch.device("meta"):
        model = BiRefNet(config)
    state_dict = backbones.to_model_keys(state_dict, config.backbone)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise CheckpointError(
            f"{where}: looks like BiRefNet {config.backbone} but its weights do not fit ({mismatch}); "
            "the file is incomplete or from a modified architecture"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    _compute_unsaved_buffers(model)
    model.to(device=device, dtype=dtype)
    model.info = CheckpointInfo(where, config, known, reason, resolution_from(metadata, known), stored_dtype)
    if model.info.is_demo:
        log.warning(DEMO_NOTICE)
    if slow_fp16(device, dtype):
        log.warning(SLOW_FP16)
    return model.eval()


def _compute_unsaved_buffers(model: torch.nn.Module) -> None:
    """Buffers that are not in a checkpoint (DINOv3's rotary-embedding periods) are still on the meta
    device after loading into a meta-built model: allocate them and let their module compute them."""
    for module in model.modules():
        if any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()  # timm's modules recompute their derived buffers here
