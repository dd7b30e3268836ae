"""The loader's weight list: files in the host's weight folders, the embedded demo model, and known
checkpoints offered for download (fetched into models/birefnet only when a workflow runs one)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from birefnet.checkpoint_files import WEIGHT_SUFFIXES
from birefnet.hub import download
from birefnet.zoo import EMBEDDED_WEIGHTS, find_checkpoint, listed

from . import host

log = logging.getLogger("birefnet")
EMBEDDED = "embedded demo model (synthetic)"
DOWNLOAD = "download: "  # prefix of the choices that fetch a known checkpoint into models/birefnet when run


def download_choice(known) -> str:
    """The combo entry of a known checkpoint that is not on disk yet; its licence is part of the choice."""
    extra = ""
    if known.accept:
        extra = f" ({known.license}" + (", gated: needs a Hugging Face login" if known.gated else "") + ")"
    return f"{DOWNLOAD}{known.name}{extra}"


def _download_choices() -> dict:
    """Every known checkpoint by its combo entry."""
    return {download_choice(k): k for k in listed()}


def _downloadable() -> dict:
    """Known checkpoints offered for download, by combo entry (only where huggingface_hub is installed).

    Every known checkpoint keeps its entry once downloaded, so that a saved or shared workflow
    stays valid: running it downloads the file once into models/birefnet, later runs use that file.
    """
    if not host.in_comfyui() or importlib.util.find_spec("huggingface_hub") is None:
        return {}
    return _download_choices()


def weight_choices() -> list[str]:
    """Weight files (the kinds `load_model` reads) in models/birefnet, then core's
    models/background_removal (prefixed), the demo model, then the known checkpoints as download choices
    (nothing is fetched unless one is run)."""
    names = []
    for folder in host.folders():
        prefix = "" if folder == host.FOLDER else f"{folder}/"
        names += [prefix + n for n in host.file_names(folder) if n.lower().endswith(WEIGHT_SUFFIXES)]
    return names + [EMBEDDED] + list(_downloadable())


def download_bar():
    """A tqdm class that also drives ComfyUI's progress bar (bytes of the download)."""
    from tqdm.auto import tqdm

    class DownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.comfy = host.Progress(max(int(self.total or 0), 1))

        def update(self, n=1):
            shown = super().update(n)
            self.comfy.update(min(int(self.n), self.comfy.total))
            return shown

    return DownloadBar


def checkpoint_for_choice(name: str):
    """The known checkpoint behind a download choice (its entry text names it exactly; a workflow saved
    with an older entry text is matched by the checkpoint name at its start)."""
    known = _download_choices().get(name)
    return known if known is not None else find_checkpoint(name[len(DOWNLOAD) :].split(" (")[0])


def fetch(name: str) -> Path:
    """Download the known checkpoint behind a download choice into models/birefnet (resumable)."""
    known = checkpoint_for_choice(name)
    folder = host.download_folder()
    log.info("BiRefNet: downloading %s from %s into %s", known.name, known.url, folder)
    # picking the entry, whose text names the licence, is the explicit acceptance
    path = download(known, folder, accept_license=known.accept or None, tqdm_class=download_bar())
    log.info("BiRefNet: %s saved as %s", known.name, path)
    return path


def weight_path(name: str) -> Path:
    if name == EMBEDDED:
        return EMBEDDED_WEIGHTS
    if name.startswith(DOWNLOAD):
        return fetch(name)
    core = host.CORE_FOLDER
    folder, rel = (core, name[len(core) + 1 :]) if name.startswith(core + "/") else (host.FOLDER, name)
    full = host.full_path(folder, rel)
    if full is None:
        # A path of any file is for calls from Python; a prompt names one of the choices (ComfyUI before December
        # 2025 does not check a V3 node's combo values, so a prompt could otherwise load any file on the server).
        if not host.in_comfyui() and Path(name).is_file():
            return Path(name)
        raise FileNotFoundError(
            f"BiRefNet weights {name!r} not found in models/{folder}; put the file there and refresh"
        )
    return Path(full)
