"""BiRefNet weight files: read any of them safely (safetensors, or pickles with `weights_only=True`),
unwrap and un-prefix their state dicts, and write our own in the official key layout.

Every failure is a `CheckpointError` whose message is one line naming the file, what was found and
what to do. Names of known checkpoints are resolved by `hub.locate` before a file is read here.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from . import backbones
from .errors import CheckpointError, first_line
from .files import atomic_path

if TYPE_CHECKING:
    from .model import BiRefNet

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "ema")
METADATA_LAYOUT = "birefnet.tile_layout"
METADATA_RESOLUTION = "birefnet.resolution"
METADATA_NAME = "birefnet.name"


def weight_file(path: Path) -> Path:
    """The weight file itself: a Hugging Face snapshot folder gives its model file."""
    if path.is_dir():
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
            f"{path}: not a readable safetensors file ({first_line(err)}); "
            "it is truncated or corrupt, download it again"
        ) from None


def _read_pickle(path: Path) -> dict:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # files from torch.save(_use_new_zipfile_serialization=False)
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
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
    """(state dict, metadata, display name) from a file, a snapshot folder or an in-memory state dict."""
    if isinstance(source, Mapping):
        return _unwrap(source, "<state dict>"), {}, "<state dict>"
    path = weight_file(Path(source).expanduser())
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
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
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def model_to_official_keys(state_dict: Mapping[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """The official key layout, as the official code, our loader and ComfyUI's node read it."""
    return backbones.to_official_keys(state_dict, backbone)


def save_checkpoint(
    model: BiRefNet, path, *, resolution: tuple[int, int] | None | str = "keep", name: str = ""
) -> None:
    """Write `model` as .safetensors in the official key layout, atomically, with its tile layout
    and working resolution in the metadata so `load_model` restores them."""
    from safetensors.torch import save_file

    if resolution == "keep":
        info = getattr(model, "info", None)
        resolution = info.resolution if info else (1024, 1024)
    state_dict = model_to_official_keys(model.state_dict(), model.config.backbone)
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {
        METADATA_LAYOUT: model.config.tile_layout,
        METADATA_RESOLUTION: "dynamic" if resolution is None else f"{resolution[0]}x{resolution[1]}",
        METADATA_NAME: name or Path(path).stem,
        "birefnet.backbone": model.config.backbone,
    }
    with atomic_path(path) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)
