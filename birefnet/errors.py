"""The library's errors for unusable weights and for a device out of memory, and the one-line form
of any error (its own module: the loading, detection, download and backbone modules all raise and
shorten errors)."""

import torch


class CheckpointError(ValueError):
    """A file that cannot be used as BiRefNet weights; the message says why and what to do."""


class OutOfMemory(torch.OutOfMemoryError):
    """The device had no memory left for one forward; the message names the size and the ways out.
    A `torch.OutOfMemoryError`, so hosts that recover from those (ComfyUI unloads models) still do."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (at most `limit` characters), or its type's name."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
