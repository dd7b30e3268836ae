"""The library's error for unusable weights (its own module: loading and the backbone registry both raise it)."""


class CheckpointError(ValueError):
    """A file that cannot be used as BiRefNet weights; the message says why and what to do."""
