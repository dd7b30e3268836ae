"""Cancel inside a forward pass, not only between passes.

A Cancel checked only between passes (the `callback` of `segment`, `segment_highres`, `segment_regions`) leaves
a CPU user waiting for the rest of the pass: seconds at 1024², about a minute at 2048². Inside
`checks_inside(model, check)`, `check()` runs before each of the model's submodules in CPU passes of this thread
(`pass_hooks`), so an exception it raises ends the pass at the next submodule. `check` raises to stop (ComfyUI's
interrupt check, a server's "the client left"); it should cost next to nothing when there is nothing to stop, as
it runs hundreds of times per pass.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from .pass_hooks import inside_cpu_passes


@contextlib.contextmanager
def checks_inside(model, check: Callable[[], None]) -> Iterator[None]:
    """`check()` before each submodule of `model`'s CPU forward passes in this thread, while inside (GPU,
    OpenVINO and `torch.compile`d passes run whole)."""
    with inside_cpu_passes(model, lambda module: check()):
        yield
