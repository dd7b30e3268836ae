"""Reconstruction module: four decoder stages with the bilateral reference.

Inward reference: the full-resolution image is cut into a grid of tiles of the
stage's size, stacked on channels and encoded by `ipt_blk*`. Outward reference:
`gdt_convs_k` predicts a gradient feature whose sigmoid attention (`gdt_convs_attn_k`)
gates the stage output; in training `gdt_convs_pred_k` is supervised with the image
Laplacian times the stage's side output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BasicDecBlk, BasicLatBlk, NormFactory, SimpleConvs, conv1x1, conv_norm, interp
from .fastpath import shortcuts

TILE_LAYOUTS = ("current", "legacy")


def image_tiles(image: torch.Tensor, size, layout: str = "current") -> torch.Tensor:
    """Cut `image` (B, C, H, W) into (H//h)*(W//w) tiles of `size` (h, w), stacked on channels.

    `current` (official code since 2024-11-05): channel = c*Gh*Gw + i*Gw + j.
    `legacy` (earlier code; RMBG-2.0, ComfyUI's port): channel = (j*Gh + i)*C + c.
    """
    b, c, height, width = image.shape
    h, w = size
    gh, gw = height // h, width // w
    tiles = image.reshape(b, c, gh, h, gw, w)
    if layout == "current":
        tiles = tiles.permute(0, 1, 2, 4, 3, 5)
    elif layout == "legacy":
        tiles = tiles.permute(0, 4, 2, 1, 3, 5)
    else:
        raise ValueError(f"tile layout must be one of {TILE_LAYOUTS}, got {layout!r}")
    return tiles.reshape(b, c * gh * gw, h, w)


@dataclass
class DecoderOutput:
    """Everything the decoder computes; `logits` is the model's answer.

    side_logits: side outputs m4, m3, m2 at stage resolution (taken before the gradient gating).
    gradient_features: g4, g3, g2 (16 channels each).
    gradient_attention: sigmoid attention maps a4, a3, a2 (1 channel, stage resolution).
    gradient_preds: gdt_convs_pred outputs (logits) at stage resolution.
    """

    logits: torch.Tensor
    side_logits: list[torch.Tensor] = field(default_factory=list)
    gradient_features: list[torch.Tensor] = field(default_factory=list)
    gradient_attention: list[torch.Tensor] = field(default_factory=list)
    gradient_preds: list[torch.Tensor] = field(default_factory=list)


def gradient_reference(image: torch.Tensor) -> torch.Tensor:
    """The outward reference's target: 5x5 Laplacian of the channel mean of the normalised image."""
    import kornia  # only training and previews need it, not loading or inference

    return kornia.filters.laplacian(image.float().mean(dim=1, keepdim=True), kernel_size=5)


def sum_shifted_taps(taps: torch.Tensor, kernel_size, padding) -> torch.Tensor:
    """Finish a one-output-channel convolution from its per-tap maps.

    taps (B, kh*kw, H, W) holds, for tap (ky, kx), the kernel tap applied at every pixel; the
    output at (r, c) sums tap (ky, kx) read at (r - p + ky, c - p + kx), zero outside the map
    (the convolution's zero padding).
    """
    (kh, kw), (ph, pw) = kernel_size, padding
    b, _, h, w = taps.shape
    padded = F.pad(taps, (pw, pw, ph, ph))
    out = taps.new_zeros(b, 1, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1)
    for t in range(kh * kw):
        ky, kx = divmod(t, kw)
        out += padded[:, t : t + 1, ky : ky + out.shape[2], kx : kx + out.shape[3]]
    return out


def _gradient_head(channels: int, norm: NormFactory) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), norm(16), nn.ReLU(inplace=True))


# The decoder widths behind a pyramid neck: the official code fixes them to Swin-L's (doubled by
# the multi-scale concatenation), whatever the ViT's width.
NECK_CHANNELS = (3072, 1536, 768, 384)


class Decoder(nn.Module):
    def __init__(
        self, channels: list[int], norm: NormFactory, tile_layout: str = "current", pyramid_neck: bool = False
    ):
        """channels: [c0, c1, c2, c3], deepest first, after the multi-scale concatenation.
        pyramid_neck: the features all have one stride (a ViT); `pyramid_neck_x1..x4` resample
        them to strides 4, 8, 16, 32 and project them to `NECK_CHANNELS`."""
        super().__init__()
        self.pyramid_neck = pyramid_neck
        i0, i1, i2, i3 = (c // 8 for c in channels)  # inward-reference widths follow the backbone's channels
        if pyramid_neck:
            for k, (given, wanted) in enumerate(zip(channels, NECK_CHANNELS)):
                self.add_module(f"pyramid_neck_x{4 - k}", BasicLatBlk(given, wanted))
            channels = NECK_CHANNELS
        c0, c1, c2, c3 = channels
        self.tile_layout = tile_layout
        patches = [3 * 32 * 32, 3 * 16 * 16, 3 * 8 * 8, 3 * 4 * 4, 3]
        self.ipt_blk5 = SimpleConvs(patches[0], i0)
        self.ipt_blk4 = SimpleConvs(patches[1], i0)
        self.ipt_blk3 = SimpleConvs(patches[2], i1)
        self.ipt_blk2 = SimpleConvs(patches[3], i2)
        self.ipt_blk1 = SimpleConvs(patches[4], i3)
        self.decoder_block4 = BasicDecBlk(c0 + i0, c1, norm)
        self.decoder_block3 = BasicDecBlk(c1 + i0, c2, norm)
        self.decoder_block2 = BasicDecBlk(c2 + i1, c3, norm)
        self.decoder_block1 = BasicDecBlk(c3 + i2, c3 // 2, norm)
        self.conv_out1 = nn.Sequential(nn.Conv2d(c3 // 2 + i3, 1, 1))
        self.lateral_block4 = BasicLatBlk(c1, c1)
        self.lateral_block3 = BasicLatBlk(c2, c2)
        self.lateral_block2 = BasicLatBlk(c3, c3)
        self.conv_ms_spvn_4 = nn.Conv2d(c1, 1, 1)
        self.conv_ms_spvn_3 = nn.Conv2d(c2, 1, 1)
        self.conv_ms_spvn_2 = nn.Conv2d(c3, 1, 1)
        self.gdt_convs_4 = _gradient_head(c1, norm)
        self.gdt_convs_3 = _gradient_head(c2, norm)
        self.gdt_convs_2 = _gradient_head(c3, norm)
        for k in (4, 3, 2):
            self.add_module(f"gdt_convs_pred_{k}", nn.Sequential(nn.Conv2d(16, 1, 1)))
        for k in (4, 3, 2):
            self.add_module(f"gdt_convs_attn_{k}", nn.Sequential(nn.Conv2d(16, 1, 1)))

    def _inward(self, block: nn.Module, image: torch.Tensor, size) -> torch.Tensor:
        return block(image_tiles(image, size, self.tile_layout))

    def _stage(self, k: int, x: torch.Tensor, out: DecoderOutput, details: bool) -> torch.Tensor:
        """Outward reference of stage k on its decoder output x."""
        if self.training or details:
            out.side_logits.append(getattr(self, f"conv_ms_spvn_{k}")(x))
        head = getattr(self, f"gdt_convs_{k}")
        g = conv_norm(head[0], head[1], x).relu_() if shortcuts(self) else head(x)
        attention = torch.sigmoid(getattr(self, f"gdt_convs_attn_{k}")(g))
        if self.training or details:
            out.gradient_features.append(g)
            out.gradient_attention.append(attention)
            out.gradient_preds.append(getattr(self, f"gdt_convs_pred_{k}")(g))
        return x * attention

    def forward(self, image: torch.Tensor, features: list[torch.Tensor], details: bool = False) -> DecoderOutput:
        """`features`: the encoder's [x1, x2, x3, x4]. The list is emptied and each map, and each
        stage's input, is dropped as soon as it has been used (at 4096² they are GBs)."""
        out = DecoderOutput(logits=None)
        x1, x2, x3, x4 = features
        features.clear()
        if self.pyramid_neck:
            h, w = image.shape[-2:]
            x1, x2, x3, x4 = (
                getattr(self, f"pyramid_neck_x{k}")(interp(x, (h // 2 ** (k + 1), w // 2 ** (k + 1))))
                for k, x in zip((1, 2, 3, 4), (x1, x2, x3, x4))
            )
        # Each block's wide input (a concatenation) lives only until its first convolution returns.
        p = self.decoder_block4.enter(torch.cat([x4, self._inward(self.ipt_blk5, image, x4.shape[-2:])], dim=1))
        del x4
        p = self._stage(4, self.decoder_block4.leave(p), out, details)
        p = interp(p, x3.shape[-2:]) + self.lateral_block4(x3)
        del x3
        p = self.decoder_block3.enter(torch.cat([p, self._inward(self.ipt_blk4, image, p.shape[-2:])], dim=1))
        p = self._stage(3, self.decoder_block3.leave(p), out, details)
        p = interp(p, x2.shape[-2:]) + self.lateral_block3(x2)
        del x2
        p = self.decoder_block2.enter(torch.cat([p, self._inward(self.ipt_blk3, image, p.shape[-2:])], dim=1))
        p = self._stage(2, self.decoder_block2.leave(p), out, details)
        p = interp(p, x1.shape[-2:]) + self.lateral_block2(x1)
        del x1
        p = self.decoder_block1.enter(torch.cat([p, self._inward(self.ipt_blk2, image, p.shape[-2:])], dim=1))
        out.logits = self._head(self.decoder_block1.leave(p), image)
        return out

    def _head(self, p1: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """conv_out1(cat(upsampled p1, ipt_blk1(image))): the full-resolution output."""
        if not shortcuts(self):
            p1 = interp(p1, image.shape[-2:])
            return self.conv_out1(torch.cat([p1, self._inward(self.ipt_blk1, image, image.shape[-2:])], dim=1))
        # conv_out1 is linear, so in inference its p1 part runs before the upsampling (bilinear
        # weights sum to 1, so bias and all commute), and its inward part folds into ipt_blk1
        # (conv3x3 3->64, conv3x3 64->48, no activation): per tap t of the second conv the
        # output gets K_t (W1 cols + b1), with cols the 3x3 patches of the image (one tile of
        # the whole image is the image itself, in both layouts). So the full-resolution maps
        # are 27 patch values and 9 tap maps instead of 64-, 48-, 240- and 192-channel ones.
        head = self.conv_out1[0]
        split = p1.shape[1]
        w_p1, w_ipt = head.weight[:, :split].flatten(1), head.weight[:, split:].flatten(1)
        first, last = self.ipt_blk1.conv1, self.ipt_blk1.conv_out
        kernel = torch.einsum("oc,cikl->klio", w_ipt, last.weight).flatten(0, 1).squeeze(-1)  # (taps, 64)
        patches = F.unfold(image, first.kernel_size, padding=first.padding)  # (B, 27, H*W)
        per_patch = (kernel @ first.weight.flatten(1)).expand(image.shape[0], -1, -1)  # (B, taps, 27)
        taps = torch.baddbmm((kernel @ first.bias).view(1, -1, 1), per_patch, patches)
        fine = sum_shifted_taps(taps.view(image.shape[0], -1, *image.shape[-2:]), last.kernel_size, last.padding)
        fine = fine + (head.bias + w_ipt @ last.bias).view(1, -1, 1, 1)
        return interp(conv1x1(p1, w_p1), image.shape[-2:]) + fine
