"""The BIREFNET object passed between nodes: the model, its ComfyUI patcher and its settings."""

from __future__ import annotations

import torch

import birefnet
from birefnet import cuda_graphs
from birefnet.batching import activation_bytes

from . import host


class BiRefNetHandle:
    def __init__(self, model: birefnet.BiRefNet, device: torch.device, dtype: torch.dtype, name: str):
        self.device, self.dtype, self.name = device, dtype, name
        self.info = model.info
        self.model = model.to(dtype=dtype)
        # An OpenVINO model lives outside torch's devices: ComfyUI's memory manager has nothing to move.
        outside = getattr(model, "outside_torch_devices", False)
        self.patcher = None if outside else host.make_patcher(self.model, device, host.offload_device())

    def ready(self, working_pixels: int = 0) -> birefnet.BiRefNet:
        """The model on its compute device (through ComfyUI's loader when there is one), with room for a
        forward of `working_pixels` input pixels (all images of the batch) beside it."""
        if self.patcher is not None:
            host.load_to_device(self.patcher, memory_required=activation_bytes(working_pixels, self.dtype))
            return self.patcher.model
        return self.model.to(self.device)

    def release_graphs(self) -> None:
        """Free the CUDA graphs of this run (a clip's frames share them within a run): memory they would
        keep between runs is memory ComfyUI's manager cannot see or free for other models."""
        cuda_graphs.release(self.model)

    def use_fp32(self) -> None:
        """Half precision overflowed (NaN): continue in fp32 for good."""
        host.log.warning("BiRefNet: %s produced NaN in %s; switching to fp32", self.name, self.dtype)
        self.dtype = torch.float32
        self.model.float()

    def __repr__(self) -> str:
        return f"BiRefNet({self.info.describe()}, {self.device}, {self.dtype})"
