"""Optional dependencies: imported only by the feature that needs them, named in one line when missing."""

from __future__ import annotations

import importlib


def require(module: str, extra: str):
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{module} is not installed; install the extra: pip install 'birefnet-toolkit[{extra}]'"
        ) from None
