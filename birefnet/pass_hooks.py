"""Calls before each submodule of a model's CPU forward passes: where Cancel (`stopping`) and progress within a
pass (`pass_clock`) get in.

On a CPU one forward pass takes seconds at 1024² and about a minute at 2048² (250 submodule calls in a Swin-L
pass on 2 CPU cores, where a deformable convolution takes over a second between two of them), so what
happens only between passes comes late. The calls run on CPU passes of the thread that entered the `with` only:
on a GPU a pass takes tens of milliseconds and may be a captured CUDA graph (a Python exception inside a capture
would leave it broken), and another thread's pass on the same model is not this caller's.
"""

from __future__ import annotations

import contextlib
import threading
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn


def watchable_on_cpu(model) -> bool:
    """Whether `model`'s passes can be watched here: a plain module whose parameters are on the CPU (not a
    `torch.compile`d one, whose passes run whole)."""
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return first is not None and first.device.type == "cpu" and not hasattr(model, "_orig_mod")


@contextlib.contextmanager
def inside_cpu_passes(
    model, before: Callable[[nn.Module], None], after_pass: Callable[[], None] | None = None
) -> Iterator[bool]:
    """While inside (as True; False where no hooks were put in): `before(module)` before each submodule of
    `model`'s CPU forward passes in this thread (the model itself first, as a pass starts), and `after_pass()` as
    each pass ends whole. A `torch.compile`d model runs its passes whole, and a model already on a GPU gets no
    hooks at all (an eager GPU pass would pay for calling them). A model with `pass_modules()` names the modules
    its passes may run (OpenVINO's: its own, and those of the PyTorch model it keeps)."""
    if not watchable_on_cpu(model):
        yield False
        return
    owner = threading.get_ident()

    def ours(args) -> bool:
        return bool(args) and isinstance(args[0], torch.Tensor) and args[0].is_cpu and threading.get_ident() == owner

    def before_module(module, args):
        if ours(args):
            before(module)

    def after_model(module, args, output):
        if ours(args):
            after_pass()

    modules = model.pass_modules() if hasattr(model, "pass_modules") else model.modules()  # OpenVINO's: 2 models
    handles = [module.register_forward_pre_hook(before_module) for module in modules]
    if after_pass is not None:
        handles.append(model.register_forward_hook(after_model))
    try:
        yield True
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def setting(variable: ContextVar, value) -> Iterator[None]:
    """`variable` holds `value` while inside, in this thread (how a long operation inside a pass finds the
    caller's check or progress report: `stopping.check_within_op`, `pass_clock.report_within_pass`)."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)
