"""`torch.compile` for inference, with the compiler's caches kept between runs.

Compiling BiRefNet takes minutes (Inductor generates and tunes a few hundred kernels), and a
new working size or dtype compiles again. Inductor caches what it made (graphs, kernels, tuning
results) under one folder, by default in /tmp, which a reboot or a temp cleaner empties; here it
lives in the user cache folder instead ($BIREFNET_CACHE/inductor, else ~/.cache/birefnet/inductor),
so a second run at the same size starts in seconds of tracing instead of minutes of compiling.
A folder the user chose with TORCHINDUCTOR_CACHE_DIR is kept.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .files import cache_folder

MODES = ("default", "reduce-overhead", "max-autotune")


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """The model under `torch.compile` in `mode` (one of MODES), its caches in the user cache folder."""
    if mode not in MODES:
        raise ValueError(f"compile mode {mode!r}: use {', '.join(MODES)}")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_folder("inductor")))
    return torch.compile(model, mode=None if mode == "default" else mode)
