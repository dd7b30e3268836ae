"""Swin Transformer v1 backbone with the official BiRefNet semantics.

Stock timm Swin differs from the detection-style Swin that BiRefNet was trained
with (the official repository's `models/backbones/swin_v1.py`) whenever a stage's size is not a
window multiple, i.e. at every stage at 1024²: the official block zero-pads the token map to a window multiple
*before* the cyclic shift, never shrinks the window on small stages, and every
stage output goes through its own LayerNorm (`norm0..norm3`). This module keeps
those semantics and the official key names (`layers.{i}.blocks.{j}...`,
`layers.{i}.downsample`, `norm{i}`), and builds on timm's Mlp/DropPath and
PyTorch's scaled_dot_product_attention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from ..device_constants import device_constant
from ..errors import CheckpointError
from ..fastpath import shortcuts
from ..fused_linear import linear
from .base import Variant, count


@dataclass(frozen=True)
class SwinSpec:
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    window_size: int


SWIN_SPECS = {
    "swin_v1_t": SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_v1_s": SwinSpec(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_v1_b": SwinSpec(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_v1_l": SwinSpec(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
_PRETRAINED = {  # the ImageNet-22k weights the released models started from, in timm
    "swin_v1_t": "swin_tiny_patch4_window7_224.ms_in22k_ft_in1k",
    "swin_v1_s": "swin_small_patch4_window7_224.ms_in22k_ft_in1k",
    "swin_v1_b": "swin_base_patch4_window12_384.ms_in22k_ft_in1k",
    "swin_v1_l": "swin_large_patch4_window12_384.ms_in22k_ft_in1k",
}
VARIANTS = {
    name: Variant(
        name,
        "swin",
        tuple(spec.embed_dim * 2**i for i in range(4)),
        pretrained=_PRETRAINED[name],
        size_rule="the decoder's inward reference cuts the image into stride-32 tiles",
    )
    for name, spec in SWIN_SPECS.items()
}


def relative_position_index(window: int) -> torch.Tensor:
    """Index into the (2w-1)^2 bias table for every token pair of a w*w window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def windows_of(grid: torch.Tensor, window: int) -> torch.Tensor:
    """(H, W) map -> (nW, window*window): its values window by window, row-major (the official partition)."""
    h, w = grid.shape
    return grid.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)


def window_order(h: int, w: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that replace the official pad -> roll -> window-partition -> reverse -> crop.

    `order` (nW*N,) lists, window by window, which token of the h*w map each window slot
    holds; slots in the zero padding point at index h*w (an extra row the caller supplies).
    `inverse` (h*w,) is where each token sits in that window order. One gather each way
    replaces five copies.
    """
    hp, wp = h + (-h) % window, w + (-w) % window
    rows = torch.arange(hp).view(hp, 1)
    cols = torch.arange(wp).view(1, wp)
    grid = torch.where((rows < h) & (cols < w), rows * w + cols, h * w)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(0, 1))
    order = windows_of(grid, window).reshape(-1)
    # Every padding slot writes to the extra index h*w, which is dropped: no data-dependent shapes.
    inverse = torch.zeros(h * w + 1, dtype=torch.long).scatter_(0, order, torch.arange(order.numel()))[: h * w]
    return order, inverse


def window_orders(h: int, w: int, window: int, shift: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`window_order` on `like`'s device, made once: every block of a stage asks for the same two.
    Per image, so that the batch size stays free (dynamic batch in exported graphs)."""
    return device_constant(("swin_window_order", h, w, window, shift), like, lambda: window_order(h, w, window, shift))


@dataclass(frozen=True)
class ShiftMask:
    """Additive masks that keep attention inside each shifted region.

    Only windows on the last row or column of the window grid straddle regions; `masks`
    (nM, 1, N, N) holds theirs and `windows` (nM,) their index in an image's window order.
    Every other window needs no mask, so it never gets a materialised (heads, N, N) copy.
    Blocked pairs get a large finite negative rather than -inf: exp() of it is exactly 0 in
    every float type, and SDPA skips its -inf bookkeeping.
    """

    masks: torch.Tensor
    windows: torch.Tensor


def shift_mask(hp: int, wp: int, window: int, shift: int, device, dtype) -> ShiftMask:
    labels = torch.zeros(hp, wp, device=device)
    region = 0
    for rows in (slice(0, hp - window), slice(hp - window, hp - shift), slice(hp - shift, hp)):
        for cols in (slice(0, wp - window), slice(wp - window, wp - shift), slice(wp - shift, wp)):
            labels[rows, cols] = region
            region += 1
    ids = windows_of(labels, window)  # (nW, N)
    allowed = ids[:, :, None] == ids[:, None, :]
    # The straddling windows, known from the shapes alone (no data-dependent sizes for exporters):
    # the last column of the window grid above its last row, then the last row, in window order.
    grid = torch.arange(hp // window * (wp // window), device=device).view(hp // window, wp // window)
    windows = torch.cat([grid[:-1, -1], grid[-1]])
    blocked = -1e4 if dtype == torch.float16 else -1e9
    masks = torch.zeros(allowed[windows].shape, device=device, dtype=dtype).masked_fill(~allowed[windows], blocked)
    return ShiftMask(masks.unsqueeze(1), windows)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        # Contiguous, or every mask built from it inherits the permuted strides and SDPA copies it.
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def attend(self, qkv: torch.Tensor, mask: ShiftMask | None) -> torch.Tensor:
        """qkv: (B, nW*N, 3C) in window order -> (B, nW*N, C), before `proj`."""
        b, tokens, c3 = qkv.shape
        n = self.window * self.window
        heads = self.num_heads
        c = c3 // 3
        q, k, v = qkv.view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, N, hd)
        bias = self.position_bias().to(q.dtype).unsqueeze(0)  # 4-D: CPU flash attention takes no 3-D mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        if mask is not None and mask.windows.numel():
            # Windows that straddle shifted regions again, with their masks.
            per_image = q.shape[0] // b
            rows = (mask.windows + torch.arange(b, device=q.device).view(b, 1) * per_image).flatten()
            masked = (bias + mask.masks).repeat(b, 1, 1, 1)
            fixed = F.scaled_dot_product_attention(q[rows], k[rows], v[rows], attn_mask=masked)
            out = out.index_copy(0, rows, fixed) if torch.is_grad_enabled() else out.index_copy_(0, rows, fixed)
        return out.transpose(1, 2).reshape(b, tokens, c)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, drop_path: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, h: int, w: int, mask: ShiftMask | None) -> torch.Tensor:
        out = self.attention(x, h, w, mask)
        if not shortcuts(self):
            x = x + self.drop_path(self.attn.proj(out))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = linear(out, self.attn.proj, residual=x)
        del out
        return linear(linear(self.norm2(x), self.mlp.fc1, gelu=True), self.mlp.fc2, residual=x)

    def attention(self, x: torch.Tensor, h: int, w: int, mask: ShiftMask | None) -> torch.Tensor:
        """Official order: norm1, zero-pad to the window grid, shift, window attention, undo all
        (before `proj`). qkv runs on the real tokens only (a zero-padded token's qkv is just the
        qkv bias: one extra token per image stands for the padding), then one gather into window
        order replaces pad, roll and partition. Each intermediate is dropped as soon as the next
        exists (at 4096² in fp16 the qkv map alone is 1.2 GB)."""
        b, tokens, c = x.shape
        order, inverse = window_orders(h, w, self.window, self.shift, x)
        y = self.norm1(x)
        if order.numel() != tokens:
            y = torch.cat([y, y.new_zeros(b, 1, c)], dim=1)
        qkv = linear(y, self.attn.qkv)
        del y
        windows = qkv.index_select(1, order)
        del qkv
        out = self.attn.attend(windows, mask if self.shift else None)
        del windows
        return out.reshape(b, -1, c).index_select(1, inverse)


class PatchMerging(nn.Module):
    """2x2 token merge: (even, even), (odd, even), (even, odd), (odd, odd) on channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return linear(self.norm(x.view(b, -1, 4 * c)), self.reduction)


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, drop_paths: list[float], downsample: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else self.shift, drop_paths[j]) for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        hp, wp = h + (-h) % self.window, w + (-w) % self.window
        mask = shift_mask(hp, wp, self.window, self.shift, x.device, x.dtype) if len(self.blocks) > 1 else None
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, h, w, mask, use_reentrant=False)
            else:
                x = block(x, h, w, mask)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Image (B, 3, H, W) -> tokens (B, h*w, C), zero-padding H and W to the patch size."""
        h, w = x.shape[-2:]
        x = self.proj(F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch)))
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class SwinTransformer(nn.Module):
    """Returns the four stage outputs (NCHW, strides 4/8/16/32), each through `norm{i}`."""

    def __init__(self, spec: SwinSpec, drop_path_rate: float = 0.2):
        super().__init__()
        self.spec = spec
        dims = [spec.embed_dim * 2**i for i in range(4)]
        self.patch_embed = PatchEmbed(spec.embed_dim)
        total = sum(spec.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear, as timm/official
        self.layers = nn.ModuleList()
        for i, depth in enumerate(spec.depths):
            start = sum(spec.depths[:i])
            self.layers.append(
                SwinStage(dims[i], depth, spec.num_heads[i], spec.window_size, rates[start : start + depth], i < 3)
            )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, h, w = self.patch_embed(x)
        b = x.shape[0]
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, h, w)
            out = getattr(self, f"norm{i}")(x)
            outs.append(out.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
            if layer.downsample is not None:
                x = layer.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outs


# ---------------------------------------------------------------------------------------------
# Registry interface (birefnet.backbones)


def build(variant: Variant) -> SwinTransformer:
    return SwinTransformer(SWIN_SPECS[variant.name])


def recognise(state_dict, where: str) -> str | None:
    """The Swin variant from embed width, window (bias-table rows) and stage-3 depth."""
    if "bb.layers.0.blocks.0.attn.relative_position_bias_table" not in state_dict:
        return None
    embed = state_dict["bb.patch_embed.proj.weight"].shape[0]
    rows = state_dict["bb.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(rows**0.5) + 1) // 2
    depth3 = count(state_dict, r"bb\.layers\.2\.blocks\.(\d+)\.")
    for name, spec in SWIN_SPECS.items():
        if (spec.embed_dim, spec.window_size, spec.depths[2]) == (embed, window, depth3):
            return name
    raise CheckpointError(
        f"{where}: Swin backbone with embed {embed}, window {window}, {depth3} blocks in stage 3 "
        "is not an official BiRefNet configuration (supported: swin_v1_t/s/b/l)"
    )


OPTIONAL_PRETRAINED = r"norm\d\.(weight|bias)|.*relative_position_index"  # BiRefNet's own additions


def pretrained_state_dict(variant: Variant) -> dict:
    import timm

    return timm.create_model(variant.pretrained, pretrained=True).state_dict()


def convert_pretrained(state_dict: dict, variant: Variant) -> dict:
    """ImageNet weights in the original Swin release's or timm's layout -> this module's keys."""
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith(("head", "norm.", "fc_norm")) and not k.endswith(("relative_position_index", "attn_mask"))
    }
    if "layers.0.downsample.reduction.weight" in state_dict:  # the original release merges at the stage end, like ours
        return state_dict
    # timm merges at the start of the next stage
    return {
        re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
        for k, v in state_dict.items()
    }
