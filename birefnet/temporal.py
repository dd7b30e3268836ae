"""Temporal stability for video masks: smooth where nothing moves, follow where something does.

Segmenting frames one by one makes soft edges flicker: sensor noise changes the input a
little and the uncertain band of the mask answers differently each frame. A plain moving
average removes the flicker but drags the mask behind a moving object. `TemporalSmoother`
blends each mask with the previous output only where two gates agree that the pixel is
static:

- image change: the frame difference, block-averaged so that sensor noise cancels out and
  compared with the frame's own noise level (the median block difference, at most that of heavy
  sensor noise: at a cut to another shot, or in a pan, every block changes and the median is no
  noise, so the blocks that changed more than noise can are still seen moving, and the previous
  shot's subject does not linger in the next), dilated by a few blocks (the network's answer near
  a moving edge changes too);
- mask change: a change of the mask larger than flicker (from 0.1, fully from 0.3) is taken
  as real and followed, whatever the image says (e.g. a camera pan, where every block moves
  and the median no longer measures noise).

Where both say static, the output is an exponential moving average whose weight on the
past is `0.9 * strength`; elsewhere it is the new mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_KEEP = 0.9  # strength 1 still lets 10% of each new mask in: a static scene never freezes
FLICKER, REAL = 0.1, 0.3  # mask changes up to FLICKER may be smoothed; from REAL on they are followed
REACH = 8  # blocks around a changed block that count as moving (the network sees beyond the pixel)
MAX_NOISE = 8 / 255  # the median block difference of heavy sensor noise (sigma 7/255): more is a change


def static_weight(previous: torch.Tensor, current: torch.Tensor, block: int) -> torch.Tensor:
    """(H, W) in [0, 1]: how surely each pixel of two RGB frames (3, H, W) in [0, 1] shows the
    same scene (1: only noise differs; 0: the image changed there)."""
    h, w = current.shape[-2:]
    diff = (current - previous).abs().mean(0, keepdim=True)[None]  # (1, 1, H, W)
    blocks = F.avg_pool2d(diff, block, ceil_mode=True)
    noise = blocks.median().clamp(max=MAX_NOISE)
    threshold = 3 * noise + 2 / 255
    moving = ((blocks - threshold) / threshold).clamp(0, 1)
    moving = F.max_pool2d(moving, 2 * REACH + 1, stride=1, padding=REACH)
    return 1 - F.interpolate(moving, size=(h, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


class TemporalSmoother:
    """Feed masks in frame order: `smoother(frame, mask)` returns the stabilised mask.

    strength: 0 (off: masks pass unchanged) to 1 (strongest). A change of frame size starts over.
    """

    def __init__(self, strength: float):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"temporal strength must be between 0 (off) and 1 (strongest), got {strength}")
        self.strength = strength
        self.frame: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def __call__(self, frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        frame = frame.float()
        if self.strength == 0 or self.mask is None or self.mask.shape != mask.shape:
            out = mask
        else:
            block = max(2, min(mask.shape) // 64)
            keep = MAX_KEEP * self.strength * static_weight(self.frame.to(frame.device), frame, block).to(mask.device)
            real_change = (((mask - self.mask).abs() - FLICKER) / (REAL - FLICKER)).clamp(0, 1)
            keep = keep * (1 - real_change)
            out = keep * self.mask + (1 - keep) * mask
        self.frame, self.mask = frame, out
        return out
