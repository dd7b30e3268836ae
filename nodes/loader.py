"""BiRefNetLoader: weights file -> BIREFNET (variant detected from the weights)."""

from __future__ import annotations

import torch

import birefnet
from birefnet.device import SLOW_FP16, parse_dtype, slow_fp16
from birefnet.pass_clock import learn_from_a_small_pass

from . import host
from .handle import BiRefNetHandle
from .spec import In, NodeSpec, Out
from .weights import weight_choices, weight_path

DTYPES = ("auto", "fp32", "fp16", "bf16")


OPENVINO = "cpu (OpenVINO)"
DEVICES = ("auto", "cpu", OPENVINO)


def load(weights: str, device: str = "auto", dtype: str = "auto", tile_layout: str = "auto"):
    path = weight_path(weights)
    layout = None if tile_layout == "auto" else tile_layout
    if device == OPENVINO:  # compiled for the CPU by OpenVINO; fp32 unless bf16/fp16 is asked for
        torch_dtype = torch.float32 if dtype == "auto" else parse_dtype(dtype)
        model = birefnet.load_model(path, tile_layout=layout, backend="openvino", dtype=torch_dtype)
        host.log.info("BiRefNet: %s, on OpenVINO (%s)", model.info.describe(), torch_dtype)
        return (BiRefNetHandle(model, torch.device("cpu"), torch.float32, path.name),)
    torch_device = host.torch_device(device)
    torch_dtype = host.auto_dtype(torch_device) if dtype == "auto" else parse_dtype(dtype)
    if slow_fp16(torch_device, torch_dtype):  # a frame takes minutes, not seconds: said where ComfyUI logs
        host.log.warning("BiRefNet: %s", SLOW_FP16)
    model = birefnet.load_model(path, tile_layout=layout)
    host.log.info("BiRefNet: %s", model.info.describe())
    handle = BiRefNetHandle(model, torch_device, torch_dtype, path.name)
    if torch_device.type == "cpu":  # the bar moves within the first frame's passes too
        learn_from_a_small_pass(handle.model)
    return (handle,)


SPEC = NodeSpec(
    node_id="BiRefNetLoader",
    display_name="Load BiRefNet",
    category="BiRefNet",
    description=(
        "Loads any BiRefNet checkpoint (.safetensors, .pth and the other PyTorch kinds) from models/birefnet or "
        "models/background_removal: general, lite (Swin-T), lite-2K, HR, matting, portrait, dynamic, "
        "DIS/COD/HRSOD, RMBG-2.0, Lucida, PVT fine-tunes. The variant is read from the weights; no remote code "
        "runs. 'download: NAME' entries fetch an official checkpoint into models/birefnet the first time they "
        "run. The embedded demo model is trained on synthetic shapes only: use it to try the nodes, not on "
        "photos."
    ),
    inputs=(
        In(
            "weights",
            "COMBO",
            "Weight file in models/birefnet (or extra_model_paths.yaml). 'download: NAME' entries "
            "fetch that official checkpoint into models/birefnet the first time the workflow runs (with progress), "
            "then use the file; nothing is downloaded unless such an entry is chosen.",
            options=weight_choices,
        ),
        In(
            "device",
            "COMBO",
            "auto: ComfyUI's GPU with memory management; cpu: always the CPU; cpu (OpenVINO): the "
            "fastest CPU runtime (pip install openvino), converted once per working size (minutes for large models), "
            "then cached on disk.",
            default="auto",
            options=DEVICES,
        ),
        In(
            "dtype",
            "COMBO",
            "auto: fp16/bf16 on GPUs that support it, fp32 on CPU. NaN output falls back to fp32. On most CPUs "
            "fp16 is about 100x slower than fp32 (bf16 is fast on CPUs with AVX-512 bf16 or AMX).",
            default="auto",
            options=DTYPES,
        ),
        In(
            "tile_layout",
            "COMBO",
            "Inward-reference tile order. auto: per checkpoint (2024 releases: legacy, "
            "2025 releases: current). Override only for your own fine-tunes.",
            default="auto",
            options=("auto", "current", "legacy"),
            advanced=True,
        ),
    ),
    outputs=(Out("birefnet", "BIREFNET", "The loaded model for the BiRefNet nodes."),),
    search_aliases=("birefnet", "rmbg", "rmbg 2.0", "load background removal model", "matting model"),
    run=load,
)
