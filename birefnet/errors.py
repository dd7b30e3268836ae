"""The library's error for unusable weights, and the one-line form of any error (its own module: the
loading, detection, download and backbone modules all raise and shorten errors)."""


class CheckpointError(ValueError):
    """A file that cannot be used as BiRefNet weights; the message says why and what to do."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (at most `limit` characters), or its type's name."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
