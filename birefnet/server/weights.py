"""Which weights a client may pick with the `weights` field: the served model, and what the
operator offered with --allow-weights (files, folders of files, known names). A client names
them; it never hands the server a path to open."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint_files import WEIGHT_SUFFIXES
from ..zoo import find_checkpoint
from .errors import RequestError


def model_name(model) -> str:
    """How /health and /v1/models name a loaded model."""
    info = model.info
    if info.is_demo:
        return "demo"
    return info.known.short if info.known else Path(info.source).name


class Catalog:
    def __init__(self, allowed: tuple[str, ...]):
        self.files: dict[str, Path] = {}
        self.known: dict[str, str] = {}  # short name -> what load_model takes
        for entry in allowed:
            path = Path(entry).expanduser()
            if path.is_dir():
                self.files.update({p.name: p for p in sorted(path.iterdir()) if p.suffix.lower() in WEIGHT_SUFFIXES})
            elif path.is_file():
                self.files[path.name] = path
            else:
                try:
                    self.known[find_checkpoint(entry).short] = entry
                except KeyError:
                    raise ValueError(
                        f"--allow-weights {entry}: no such file or folder, and not a known name (`birefnet list`)"
                    ) from None

    def names(self) -> list[str]:
        return sorted(self.known) + sorted(self.files)

    def source(self, name: str):
        """What to load for the client's `weights` name (RequestError 400 when it is not offered)."""
        if name in self.files:
            return self.files[name]
        try:
            short = find_checkpoint(name).short
        except KeyError:
            short = None
        if short in self.known:
            return self.known[short]
        offered = ", ".join(self.names()) or "none besides the served model (start it with --allow-weights)"
        raise RequestError(400, f"weights {name!r} are not offered by this server; it offers: {offered}")
