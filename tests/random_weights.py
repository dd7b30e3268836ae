"""Deterministic random BiRefNet weights in the official key layout, bit for bit the tensors
behind the parity references in `fixtures/parity/reference/`.

A manifest lists every official state-dict entry as `[key, shape, dtype]`. Entries are filled
in manifest order from one NumPy PCG64 stream (`default_rng(seed)`), one `standard_normal`
draw of the entry's size each (in float64, then rounded to float32), scaled by what the key
is, so activations stay near unit variance through any depth:

| entry | value |
|---|---|
| `*num_batches_tracked` | 0 (no draw) |
| `*relative_position_index` | Swin's index for a window of sqrt(rows) (no draw) |
| `*running_var` | 1 + 0.1·abs(z) |
| `*running_mean` | 0.1·z |
| `*relative_position_bias_table*` | 0.02·z |
| 1-D `*weight` (norm scales) | 1 + 0.1·z |
| `*bias` | 0.02·z |
| anything else (conv/linear weights, tokens) | z / sqrt(fan-in), fan-in = product of dims after the first (1 for 1-D) |

All arithmetic after the draw is float32, which is what makes the result reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def swin_relative_position_index(window: int) -> np.ndarray:
    """(window², window²) index into the (2·window − 1)² bias table, as Swin builds it."""
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :] + (window - 1)
    dx = xs[:, None] - xs[None, :] + (window - 1)
    return dy * (2 * window - 1) + dx


def _scaled(key: str, shape: list[int], z: np.ndarray) -> np.ndarray:
    leaf = key.rsplit(".", 1)[-1]
    one, tenth, small = np.float32(1.0), np.float32(0.1), np.float32(0.02)
    if leaf == "running_var":
        return one + tenth * np.abs(z)
    if leaf == "running_mean":
        return tenth * z
    if "relative_position_bias_table" in key:
        return small * z
    if leaf == "weight" and len(shape) == 1:
        return one + tenth * z
    if leaf == "bias":
        return small * z
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return z / np.float32(math.sqrt(fan_in))


def random_state_dict(manifest: dict, seed: int) -> dict[str, torch.Tensor]:
    """A fresh official-layout state dict for `manifest`, identical on every machine."""
    rng = np.random.default_rng(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape, _dtype in manifest["entries"]:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("relative_position_index"):
            out[key] = torch.from_numpy(swin_relative_position_index(math.isqrt(shape[0])).astype(np.int64))
        else:
            z = rng.standard_normal(math.prod(shape)).astype(np.float32).reshape(shape)
            out[key] = torch.from_numpy(np.ascontiguousarray(_scaled(key, shape, z), dtype=np.float32))
    return out


def random_input(seed: int, height: int, width: int, batch: int = 1) -> torch.Tensor:
    """An ImageNet-normalised image batch (batch, 3, height, width): uniform [0, 1) pixels from PCG64."""
    pixels = np.random.default_rng(seed).random((batch, 3, height, width), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy((pixels - mean) / std)
