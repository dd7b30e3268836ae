"""DINOv3 ViTs (timm) as the official code uses them: four intermediate blocks, all at stride 16.

The official backbone is `timm.create_model(name, features_only=True, dynamic_img_size=True,
out_indices=...)`, whose weights sit under `model.` (`bb.model.blocks.0...` in a checkpoint):
this module keeps that attribute, so the keys are the official ones by construction. The
decoder's pyramid neck (`decoder.pyramid_neck_x1..x4`) resamples the four stride-16 maps to
strides 4..32. The official recipe trains these backbones frozen.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import RotaryEmbeddingDinoV3
from torch import nn

from ..device_constants import device_constant
from ..errors import CheckpointError
from ..fastpath import plain_graph_requested
from .base import Variant, count

_SPECS = {  # name: (timm model, blocks tapped, embed width, depth, SwiGLU MLP)
    "dino_v3_s": ("vit_small_patch16_dinov3.lvd1689m", (3, 5, 7, 11), 384, 12, False),
    "dino_v3_s_plus": ("vit_small_plus_patch16_dinov3.lvd1689m", (3, 5, 7, 11), 384, 12, True),
    "dino_v3_b": ("vit_base_patch16_dinov3.lvd1689m", (3, 5, 7, 11), 768, 12, False),
    "dino_v3_l": ("vit_large_patch16_dinov3.lvd1689m", (5, 11, 17, 23), 1024, 24, False),
    "dino_v3_h_plus": ("vit_huge_plus_patch16_dinov3.lvd1689m", (7, 15, 23, 31), 1280, 32, True),
    "dino_v3_7b": ("vit_7b_patch16_dinov3.lvd1689m", (9, 19, 29, 39), 4096, 40, True),
}
VARIANTS = {
    name: Variant(
        name,
        "dinov3",
        (width,) * 4,
        strides=(16,) * 4,
        pretrained=model,
        frozen=True,
        size_rule="the half-size pass must be whole 16-pixel patches",
    )
    for name, (model, _, width, _, _) in _SPECS.items()
}


class RopeTablesOnDevice(RotaryEmbeddingDinoV3):
    """timm's DINOv3 rotary embedding, with the table of each grid shape kept on the device in eval.

    timm builds the coordinate grid on the CPU and copies it to the device in every forward of a
    dynamic-size model: a copy that makes the CPU wait for the GPU each time and that a CUDA graph
    cannot capture. Outside training (where coordinate augmentation may change it) the table of
    a grid shape is a constant: it is made once by timm's own code and kept (`device_constant`).

    In the plain graph (`fastpath.plain_graph`, what exporters trace) the grid is built from the
    shape by tensor arithmetic instead: timm divides by `float(size)`, which a tracer records as
    the traced size's value, so a free-size export ran at other sizes with a wrong table.
    """

    def get_embed(self, shape=None, *args, **kwargs) -> torch.Tensor:
        # Whatever timm passes after the shape (newer releases add a dtype) goes through unchanged.
        if shape is None or self.training:
            return super().get_embed(shape, *args, **kwargs)
        if plain_graph_requested():
            return self._traced_embed(shape, *args, **kwargs)
        settings = (self.dim, self.temperature, self.min_period, self.max_period, self.normalize_coords)
        settings += (self.grid_offset, self.grid_indexing, self.rotate_half, tuple(shape), args)
        settings += tuple(sorted(kwargs.items()))
        make = lambda: super(RopeTablesOnDevice, self).get_embed(shape, *args, **kwargs)
        return device_constant(("dinov3_rope", *settings), self.periods, make)

    def _traced_embed(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """timm's table (`_build_grid`'s centred grid, then its sin/cos) with each axis divided by its
        size as a number in the graph; in eager mode the same values, bit for bit."""
        sizes = list(shape)[:: -1 if self.grid_indexing == "xy" else 1]
        denominators = sizes
        if self.normalize_coords != "separate":  # "min" or "max": both axes by the smaller or larger size
            denominators = [{"min": torch.sym_min, "max": torch.sym_max}[self.normalize_coords](*sizes)] * 2
        axes = [
            (torch.arange(size, device=self.periods.device, dtype=torch.float32) + 0.5 + self.grid_offset) / denominator
            for size, denominator in zip(sizes, denominators)
        ]
        grid = 2.0 * torch.stack(torch.meshgrid(axes, indexing=self.grid_indexing), dim=-1) - 1.0
        table = torch.cat(self._get_pos_embed_from_coords(grid.flatten(0, -2)), dim=-1)
        return table if dtype is None else table.to(dtype)


class DINOv3(nn.Module):
    """Returns the outputs of four blocks as (B, C, H/16, W/16) maps (no final norm)."""

    def __init__(self, name: str):
        super().__init__()
        model, indices = _SPECS[name][:2]
        net = timm.create_model(model, pretrained=False, features_only=True, dynamic_img_size=True, out_indices=indices)
        self.model = net.model  # pruned after the last tapped block, final norm and head removed
        self.indices = net.out_indices
        if type(self.model.rope) is RotaryEmbeddingDinoV3:  # same module and buffers, one method more
            self.model.rope.__class__ = RopeTablesOnDevice

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=self.indices, norm=False, output_fmt="NCHW", intermediates_only=True
        )


# ---------------------------------------------------------------------------------------------
# Registry interface (birefnet.backbones)


def build(variant: Variant) -> DINOv3:
    return DINOv3(variant.name)


def recognise(state_dict, where: str) -> str | None:
    """The DINOv3 variant from embed width, depth and the MLP kind (SwiGLU for s_plus, h_plus, 7b)."""
    embed = state_dict.get("bb.model.patch_embed.proj.weight")
    if embed is None:
        return None
    depth = count(state_dict, r"bb\.model\.blocks\.(\d+)\.")
    swiglu = "bb.model.blocks.0.mlp.fc1_g.weight" in state_dict
    for name, (_, _, width, blocks, gated) in _SPECS.items():
        if (width, blocks, gated) == (embed.shape[0], depth, swiglu):
            return name
    raise CheckpointError(
        f"{where}: ViT backbone with width {embed.shape[0]}, {depth} blocks"
        f"{', SwiGLU' if swiglu else ''} is not an official BiRefNet configuration "
        f"(supported: {', '.join(_SPECS)})"
    )


OPTIONAL_PRETRAINED = r"$^"


def pretrained_state_dict(variant: Variant) -> dict:
    """timm's DINOv3 weights (downloaded by timm from the Hugging Face hub: an explicit request)."""
    return timm.create_model(variant.pretrained, pretrained=True).state_dict()


def convert_pretrained(state_dict: dict, variant: Variant) -> dict:
    """DINOv3 weights in timm's layout or Meta's release layout (converted by timm's own
    `checkpoint_filter_fn`) -> this module's keys; the final norm and any head are dropped."""
    from timm.models.eva import checkpoint_filter_fn

    with torch.device("meta"):
        model = timm.create_model(variant.pretrained, pretrained=False)
    state_dict = checkpoint_filter_fn(state_dict, model)
    depth = _SPECS[variant.name][3]
    kept = {k: v for k, v in state_dict.items() if not k.startswith(("norm.", "head.", "fc_norm.", "head_drop"))}
    return {f"model.{k}": v for k, v in kept.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < depth}
