"""Cancel inside a forward pass, not only between passes.

A Cancel checked only between passes (the `callback` of `segment`, `segment_highres`, `segment_regions`) leaves
a CPU user waiting for the rest of the pass: seconds at 1024², about a minute at 2048². Inside
`checks_inside(model, check)`, `check()` runs before each of the model's submodules in CPU passes of this thread
(`pass_hooks`), so an exception it raises ends the pass at the next submodule. `check` raises to stop (ComfyUI's
interrupt check, a server's "the client left"); it should cost next to nothing when there is nothing to stop, as
it runs hundreds of times per pass. The longest single operation, the CPU deformable convolution (over 1 s
for Swin-L's 7x7 at 1024² on 2 cores, 4x that at 2048²), runs in bands of rows and checks between them
(`check_within_op`): Swin-L's checks are 0.33 s apart at most at 1024², 455 in a 12 s pass.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

from .pass_hooks import inside_cpu_passes, setting

_WITHIN_OPS: ContextVar[Callable[[], None] | None] = ContextVar("birefnet_check_within_ops", default=None)


@contextlib.contextmanager
def checks_inside(model, check: Callable[[], None]) -> Iterator[None]:
    """`check()` before each submodule of `model`'s CPU forward passes in this thread, and between the steps of
    their longest operations, while inside (GPU and `torch.compile`d passes run whole)."""
    with inside_cpu_passes(model, lambda module: check()) as hooked, setting(_WITHIN_OPS, check if hooked else None):
        yield


def check_within_op() -> None:
    """For a long single CPU operation (the deformable convolution's bands): the check of the `checks_inside`
    this thread is in, if any (a context variable: other threads' operations are not checked)."""
    check = _WITHIN_OPS.get()
    if check is not None:
        check()
