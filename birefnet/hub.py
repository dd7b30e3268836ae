"""Known checkpoints from the Hugging Face Hub: find a downloaded one, download one on request.

Downloads go through `huggingface_hub` (the optional `hub` extra): resumable, cached in the
Hub's own cache (or copied into a folder of the caller's), and checked by reading the file's
header and detecting its variant before it is used. Nothing is downloaded unless `download`
is called; `cached_file` only looks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoint_files import WEIGHT_SUFFIXES
from .detection import inspect_checkpoint
from .errors import CheckpointError, first_line
from .extras import require
from .zoo import KnownCheckpoint, find_checkpoint

LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN) after accepting its terms on"


def _hub():
    return require("huggingface_hub", "hub")


def resolve(name: str) -> KnownCheckpoint:
    try:
        return find_checkpoint(name)
    except KeyError as err:
        raise CheckpointError(str(err.args[0])) from None


def locate(source) -> Path:
    """A path as given, or for a known checkpoint's name (`hr`, `BiRefNet_HR`) its downloaded file."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in WEIGHT_SUFFIXES or os.sep in str(source):
        return path
    try:
        known = find_checkpoint(str(source))
    except KeyError:
        raise CheckpointError(
            f"{source}: no such file, and not a known checkpoint name (`birefnet list` shows them)"
        ) from None
    cached = cached_file(known)
    if cached is None:
        raise not_downloaded_error(known)
    return cached


def cached_file(known: KnownCheckpoint) -> Path | None:
    """The file in the Hugging Face cache, or None if it was not downloaded there."""
    hub = _hub()
    try:
        return Path(hub.hf_hub_download(known.repo, known.filename, revision=known.revision, local_files_only=True))
    except (hub.errors.LocalEntryNotFoundError, hub.errors.EntryNotFoundError, OSError):
        return None


def not_downloaded_error(known: KnownCheckpoint) -> CheckpointError:
    return CheckpointError(
        f"{known.name} is not downloaded yet; get it with `birefnet download {known.short}` "
        f"(or birefnet.download({known.short!r})), or pass the path of a copy of {known.url}"
    )


def check_licence(known: KnownCheckpoint, accept_license: str | None) -> None:
    """Non-commercial or gated weights need the caller to name their licence."""
    if known.accept and (accept_license or "").lower() != known.accept.lower():
        raise CheckpointError(
            f"{known.name} is licensed {known.license}; to download it, accept that licence explicitly "
            f"(--accept-license {known.accept}, or accept_license={known.accept!r})"
            + (f"; it is gated: {LOGIN_HINT} https://huggingface.co/{known.repo}" if known.gated else "")
        )


def verify(path: Path, known: KnownCheckpoint) -> None:
    """The file must be a BiRefNet of the expected backbone (read from its header alone)."""
    config = inspect_checkpoint(path)
    if config.backbone != known.backbone:
        raise CheckpointError(
            f"{path}: downloaded as {known.name} but holds a {config.backbone} BiRefNet, not {known.backbone}; "
            "delete it and download again"
        )


def download(
    name: str | KnownCheckpoint,
    folder: str | Path | None = None,
    *,
    accept_license: str | None = None,
    tqdm_class=None,
) -> Path:
    """Download a known checkpoint (resuming a partial download) and return its verified path.

    folder: None keeps it in the Hugging Face cache (`HF_HUB_CACHE`); a folder gets it as
    `<folder>/<file_name>` (e.g. `BiRefNet_HR.safetensors`, a name the loader recognises).
    accept_license: the licence id of non-commercial checkpoints (RMBG-2.0: "CC-BY-NC-4.0").
    tqdm_class: progress bar class passed to `huggingface_hub` (ComfyUI's bar in the nodes).
    """
    known = resolve(name) if isinstance(name, str) else name
    check_licence(known, accept_license)
    hub = _hub()
    target = None if folder is None else Path(folder).expanduser() / known.file_name
    if target is not None and target.is_file():
        verify(target, known)
        return target
    cached = None if target is None else cached_file(known)
    if cached is not None:  # downloaded before into the cache: a copy, offline too, instead of fetching again
        return _copied(cached, target, known)
    staging = None if target is None else target.parent / f".{known.file_name}.download"
    try:
        path = _fetch(hub, known, staging, tqdm_class, target)
    except CheckpointError:
        if staging is not None and not any(f.name.endswith(".incomplete") for f in staging.rglob("*")):
            shutil.rmtree(staging, ignore_errors=True)  # keep only what a later call can resume
        raise
    verify(path, known)
    if target is None:
        return path
    os.replace(path, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _copied(cached: Path, target: Path, known: KnownCheckpoint) -> Path:
    """The cache's verified file copied to `target` under a temporary name, then renamed (never half a file)."""
    verify(cached, known)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{known.file_name}.copy"
    try:
        shutil.copyfile(cached, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _fetch(hub, known: KnownCheckpoint, staging: Path | None, tqdm_class, target: Path | None) -> Path:
    import inspect

    # huggingface_hub < 1.2 (older ComfyUI installs) has no tqdm_class: its own bar is shown instead
    bar = (
        {"tqdm_class": tqdm_class}
        if tqdm_class and "tqdm_class" in inspect.signature(hub.hf_hub_download).parameters
        else {}
    )
    try:
        return Path(hub.hf_hub_download(known.repo, known.filename, revision=known.revision, local_dir=staging, **bar))
    except hub.errors.GatedRepoError:
        raise CheckpointError(f"{known.name} is gated: {LOGIN_HINT} https://huggingface.co/{known.repo}") from None
    except (hub.errors.LocalEntryNotFoundError, hub.errors.OfflineModeIsEnabled) as err:  # no connection
        raise _failed(known, target, _reason(err)) from None
    except (hub.errors.RepositoryNotFoundError, hub.errors.RevisionNotFoundError, hub.errors.EntryNotFoundError) as err:
        raise _failed(known, target, f"not found on the Hub: {type(err).__name__}") from None
    except (hub.errors.HfHubHTTPError, OSError) as err:
        raise _failed(known, target, _reason(err)) from None


def _reason(err: BaseException) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return "offline mode (HF_HUB_OFFLINE) is on"
    return first_line(err, 160)


def _failed(known: KnownCheckpoint, target: Path | None, why: str) -> CheckpointError:
    """One line: what failed, the URL, and where a copy fetched by other means goes."""
    place = target.parent if target is not None else Path.cwd()
    return CheckpointError(
        f"cannot download {known.name} ({why}); get {known.url} by other means and save it as "
        f"{place / known.file_name}, then pass that file as the weights"
    )
