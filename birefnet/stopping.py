"""Cancel inside a forward pass, not only between passes.

On a CPU one forward pass takes seconds at 1024² and about a minute at 2048², so a Cancel that
is checked only between passes (the `callback` of `segment`, `segment_highres`,
`segment_regions`) leaves the user waiting that long. Inside `checks_inside(model, check)`,
`check()` runs before each of the model's submodules, so an exception it raises ends the pass
at the next submodule. `check` raises to stop (ComfyUI's interrupt check, a server's "the client
left"); it should cost next to nothing when there is nothing to stop, as it runs hundreds of
times per pass (250 in a Swin-L pass; 1.5 s apart at most at 1024² on 2 CPU cores, where the pass
takes 15 s: the longest single operation is a deformable convolution).

The checks run on CPU passes of the thread that entered the `with` only: on a GPU a pass takes
tens of milliseconds and may be a captured CUDA graph (a Python exception inside a capture would
leave it broken), and another thread's pass on the same model is not this caller's to stop.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def checks_inside(model, check: Callable[[], None]) -> Iterator[None]:
    """`check()` before each submodule of `model`'s CPU forward passes in this thread, while inside.
    Models that are not plain modules (OpenVINO, `torch.compile`d) run their passes whole, and a model
    already on a GPU gets no hooks at all (an eager GPU pass would pay for calling them)."""
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if first is None or first.device.type != "cpu" or hasattr(model, "_orig_mod"):
        yield
        return
    owner = threading.get_ident()

    def before(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].is_cpu and threading.get_ident() == owner:
            check()

    handles = [module.register_forward_pre_hook(before) for module in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
