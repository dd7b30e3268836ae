"""Read any BiRefNet checkpoint safely, detect its variant from the weights, build the model.

`load_model` is the one entry point. Every failure is a `CheckpointError` whose message
is one line naming the file, what was found and what to do.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .device import resolve_device
from .io import atomic_path
from . import backbones
from .errors import CheckpointError
from .model import BiRefNet, BiRefNetConfig
from .zoo import EMBEDDED_WEIGHTS, KnownCheckpoint, find_checkpoint, match_checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema")
_METADATA_LAYOUT = "birefnet.tile_layout"
_METADATA_RESOLUTION = "birefnet.resolution"
_METADATA_NAME = "birefnet.name"


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


# ---------------------------------------------------------------------------------------------
# Reading


def parse_dtype(dtype) -> torch.dtype:
    """torch.dtype or a name: fp32/float32, fp16/float16/half, bf16/bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None


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


def resolve_source(source) -> Path:
    """A path as given, or for a known checkpoint's name (`hr`, `BiRefNet_HR`) its downloaded file."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in WEIGHT_SUFFIXES or os.sep in str(source):
        return path
    try:
        known = find_checkpoint(str(source))
    except KeyError:
        raise CheckpointError(
            f"{source}: no such file, and not a known checkpoint name (`birefnet list` shows them)"
        ) from None
    from .hub import cached_file, not_downloaded_error

    cached = cached_file(known)
    if cached is None:
        raise not_downloaded_error(known)
    return cached


def _resolve_path(source: str | Path) -> Path:
    path = resolve_source(source)
    if path.is_dir():  # a downloaded Hugging Face snapshot folder
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: is a folder without model.safetensors; pass the weight file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    return path


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(err)}); it is truncated or corrupt, download it again"
        ) from None


def _read_pickle(path: Path) -> dict:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # files from torch.save(_use_new_zipfile_serialization=False)
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        objects = _pickled_globals(path)
        if objects is None:  # not even a pickle stream: random bytes or a cut download
            raise _damaged(path) from None
        named = f" ({', '.join(objects[:3])})" if objects else ""
        raise CheckpointError(
            f"{path}: holds Python objects{named} that safe loading refuses; "
            "convert it to .safetensors with the code that made it"
        ) from None
    except Exception:  # garbage makes the unpickler raise anything (RuntimeError, KeyError, EOFError, ...)
        raise _damaged(path) from None
    return obj


def _pickled_globals(path: Path) -> list[str] | None:
    """The classes/functions a pickle names (what safe loading refused), or None if it is no valid pickle."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif opcode.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # invalid opcode, cut short, broken archive
        return None
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]


def _damaged(path: Path) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt); download it again")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict or one nested under a usual wrapper key."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: holds no tensors (found {type(obj).__name__}); this is not a weight file")


def read_checkpoint(source) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(state dict, metadata, display name) from a path or an in-memory state dict."""
    if isinstance(source, Mapping):
        return _unwrap(source, "<state dict>"), {}, "<state dict>"
    path = _resolve_path(source)
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        state_dict, metadata = _read_safetensors(path)
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        state_dict, metadata = _unwrap(_read_pickle(path), path), {}
    else:
        raise CheckpointError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    if not state_dict:
        raise CheckpointError(f"{path}: holds no tensors; this is not a weight file")
    return state_dict, metadata, str(path)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove `module.` (DDP/accelerate) and `_orig_mod.` (torch.compile) in any order and number."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def inspect_checkpoint(source) -> BiRefNetConfig:
    """The variant of a weight file from its safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    path = _resolve_path(source)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        state_dict, _, where = read_checkpoint(path)
        return detect_config(strip_prefixes(state_dict), where)
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            meta = {k: torch.empty(v.get_shape(), dtype=dtypes.get(v.get_dtype(), torch.float32), device="meta")
                    for k, v in slices.items()}
    except Exception:
        raise CheckpointError(f"{path}: not a readable safetensors file; it is truncated or corrupt, download it again") from None
    return detect_config(strip_prefixes(meta), str(path))


# ---------------------------------------------------------------------------------------------
# Detection


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


# ---------------------------------------------------------------------------------------------
# Key conversion between the official layout and this module tree


def official_to_model_keys(state_dict: Mapping[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    return backbones.to_model_keys(state_dict, backbone)


def model_to_official_keys(state_dict: Mapping[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """The official key layout, as the official code, our loader and ComfyUI's node read it."""
    return backbones.to_official_keys(state_dict, backbone)


def _file_dtype(state_dict) -> torch.dtype | None:
    for key, value in state_dict.items():
        if key.endswith(".weight") and value.is_floating_point():
            return value.dtype
    return None


def _choose_tile_layout(requested, metadata, known, file_dtype) -> tuple[str, str]:
    if requested is not None:
        return requested, "set by the caller"
    if metadata.get(_METADATA_LAYOUT):
        return metadata[_METADATA_LAYOUT], "from the file's metadata"
    if known is not None:
        return known.tile_layout, f"known checkpoint {known.name}"
    if file_dtype in (torch.float16, torch.bfloat16):
        return "current", "half-precision file: the 2025 releases (HR, dynamic, 512x512) were published so"
    return "legacy", "full-precision file: the 2024 releases were published so; override if trained with current code"


def _resolution_from(metadata, known) -> tuple[int, int] | None:
    text = metadata.get(_METADATA_RESOLUTION)
    if text:
        if text == "dynamic":
            return None
        h, w = (int(v) for v in text.split("x"))
        return (h, w)
    if known is not None:
        return known.resolution
    return (1024, 1024)


def _describe_mismatch(model, state_dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
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

    backend: "torch", or "openvino" (CPU only; `dtype` becomes OpenVINO's precision): an
    `OpenVINOModel` that is called and used like the PyTorch model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    dtype = parse_dtype(dtype)
    device = resolve_device(device)
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError(f"the OpenVINO backend runs on the CPU, not {device}; use device cpu (or the torch backend)")
        from .openvino_backend import OpenVINOModel

        return OpenVINOModel(load_model(source, tile_layout=tile_layout), precision=dtype)
    raw, metadata, where = read_checkpoint(default_weights() if source is None else source)
    state_dict = strip_prefixes(raw)
    config = detect_config(state_dict, where)
    known = match_checkpoint(where, config.backbone) if where != "<state dict>" else None
    if metadata.get(_METADATA_NAME):
        known = None  # our own fine-tune: its metadata describes it
    file_dtype = _file_dtype(state_dict)
    layout, reason = _choose_tile_layout(tile_layout, metadata, known, file_dtype)
    config = config.with_(tile_layout=layout)

    with torch.device("meta"):
        model = BiRefNet(config)
    state_dict = official_to_model_keys(state_dict, config.backbone)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise CheckpointError(
            f"{where}: looks like BiRefNet {config.backbone} but its weights do not fit ({mismatch}); "
            "the file is incomplete or from a modified architecture"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    _compute_unsaved_buffers(model)
    model.to(device=device, dtype=dtype)
    model.info = CheckpointInfo(where, config, known, reason, _resolution_from(metadata, known), file_dtype)
    if model.info.is_demo:
        log.warning(DEMO_NOTICE)
    return model.eval()


def _compute_unsaved_buffers(model: torch.nn.Module) -> None:
    """Buffers that are not in a checkpoint (DINOv3's rotary-embedding periods) are still on the meta
    device after loading into a meta-built model: allocate them and let their module compute them."""
    for module in model.modules():
        if any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            module.reset_parameters()  # timm's modules recompute their derived buffers here


def save_checkpoint(model: BiRefNet, path, *, resolution: tuple[int, int] | None | str = "keep", name: str = "") -> None:
    """Write `model` as .safetensors in the official key layout, atomically, with its tile layout
    and working resolution in the metadata so `load_model` restores them."""
    from safetensors.torch import save_file

    if resolution == "keep":
        info = getattr(model, "info", None)
        resolution = info.resolution if info else (1024, 1024)
    state_dict = model_to_official_keys(model.state_dict(), model.config.backbone)
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {
        _METADATA_LAYOUT: model.config.tile_layout,
        _METADATA_RESOLUTION: "dynamic" if resolution is None else f"{resolution[0]}x{resolution[1]}",
        _METADATA_NAME: name or Path(path).stem,
        "birefnet.backbone": model.config.backbone,
    }
    with atomic_path(path) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)
