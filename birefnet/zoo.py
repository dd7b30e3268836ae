"""Released BiRefNet checkpoints: backbone, working resolution, licence, tile layout.

The weights do not tell the working resolution or the inward-reference tile layout (the
official code changed the order of the image tiles on 2024-11-05 without a change of shapes),
so they are carried here, keyed by checkpoint. Models released in 2024 were trained with the
legacy layout (RMBG-2.0's own code and ComfyUI's port use it); the 2025 releases (HR, dynamic,
512x512) with the current one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"


@dataclass(frozen=True)
class KnownCheckpoint:
    """A released checkpoint: where to download it, what it is, and the names that find it again."""

    name: str
    repo: str  # Hugging Face repo id
    filename: str  # file inside the repo
    backbone: str
    resolution: tuple[int, int] | None  # (height, width); None = any size (dynamic models)
    license: str
    tile_layout: str
    task: str
    pattern: str  # regex on the normalised file stem (lowercase, '_' and ' ' -> '-')
    short: str = ""  # the name for `birefnet download` / `--weights`
    accept: str = ""  # licence id a download must name explicitly (non-commercial terms); "" = none
    gated: bool = False  # the Hub asks for a login and accepted terms
    revision: str = "main"
    local_name: str = ""  # file name in a models folder; default <name>.safetensors

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.filename}"

    @property
    def file_name(self) -> str:
        """Name for a downloaded copy outside the Hub cache; it is recognised again by `match_checkpoint`."""
        return self.local_name or f"{self.name}.safetensors"

    @property
    def size_text(self) -> str:
        return "dynamic" if self.resolution is None else f"{self.resolution[1]}x{self.resolution[0]}"


def _zp(name, short, backbone, resolution, layout, task, pattern):
    return KnownCheckpoint(
        name, f"ZhengPeng7/{name}", "model.safetensors", backbone, resolution, "MIT", layout, task, pattern, short=short
    )


# Most specific patterns first: the first match whose backbone agrees with the weights wins.
KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    _zp("BiRefNet_HR-matting", "hr-matting", "swin_v1_l", (2048, 2048), "current", "matting", r"hr-matting"),
    _zp("BiRefNet_dynamic-matting", "dynamic-matting", "swin_v1_l", None, "current", "matting", r"dynamic-matting"),
    _zp("BiRefNet_lite-2K", "lite-2k", "swin_v1_t", (1440, 2560), "legacy", "general", r"lite-2k"),
    _zp("BiRefNet_HR", "hr", "swin_v1_l", (2048, 2048), "current", "general", r"(^|-)hr($|-)"),
    _zp("BiRefNet_dynamic", "dynamic", "swin_v1_l", None, "current", "general", r"dynamic"),
    _zp("BiRefNet_512x512", "512", "swin_v1_l", (512, 512), "current", "general", r"512x512|reso-512"),
    _zp("BiRefNet_lite", "lite", "swin_v1_t", (1024, 1024), "legacy", "general", r"lite|swin-v1-tiny"),
    _zp("BiRefNet-portrait", "portrait", "swin_v1_l", (1024, 1024), "legacy", "portrait", r"portrait"),
    _zp("BiRefNet-matting", "matting", "swin_v1_l", (1024, 1024), "legacy", "matting", r"matting"),
    _zp("BiRefNet-DIS5K-TR_TEs", "dis-tr-tes", "swin_v1_l", (1024, 1024), "legacy", "DIS", r"tr-tes"),
    _zp("BiRefNet-DIS5K", "dis", "swin_v1_l", (1024, 1024), "legacy", "DIS", r"(^|-)dis(5k)?($|-)"),
    _zp("BiRefNet-HRSOD", "hrsod", "swin_v1_l", (1024, 1024), "legacy", "HRSOD", r"hrsod"),
    _zp("BiRefNet-COD", "cod", "swin_v1_l", (1024, 1024), "legacy", "COD", r"(^|-)cod($|-)"),
    _zp("BiRefNet-legacy", "legacy", "swin_v1_l", (1024, 1024), "legacy", "general", r"massive|birefnet-legacy"),
    KnownCheckpoint(
        "RMBG-2.0",
        "briaai/RMBG-2.0",
        "model.safetensors",
        "swin_v1_l",
        (1024, 1024),
        "CC BY-NC 4.0 (non-commercial)",
        "legacy",
        "background removal",
        r"rmbg",
        short="rmbg-2.0",
        accept="CC-BY-NC-4.0",
        gated=True,
    ),
    KnownCheckpoint(
        "Lucida (Comfy-Org)",
        "Comfy-Org/BiRefNet",
        "background_removal/lucida.safetensors",
        "swin_v1_l",
        (1024, 1024),
        "MIT",
        "legacy",
        "background removal",
        r"lucida",
        short="lucida",
        local_name="lucida.safetensors",
    ),
    # Comfy-Org's copy of the general model, as ComfyUI's own node ships it; by file name it is the general model.
    KnownCheckpoint(
        "BiRefNet (Comfy-Org)",
        "Comfy-Org/BiRefNet",
        "background_removal/birefnet.safetensors",
        "swin_v1_l",
        (1024, 1024),
        "MIT",
        "legacy",
        "general",
        r"(?!)",
        short="comfy-general",
        local_name="birefnet.safetensors",
    ),
    _zp("BiRefNet", "general", "swin_v1_l", (1024, 1024), "legacy", "general", r"birefnet|general"),
)


def normalised_stem(path: str | Path) -> str:
    return re.sub(r"[_\s]+", "-", Path(path).stem.lower())


def listed() -> list[KnownCheckpoint]:
    """The table in the order users read it: the general model first, then as declared."""
    return sorted(KNOWN_CHECKPOINTS, key=lambda k: k.short != "general")


def _hub_cache_entry(path: Path) -> KnownCheckpoint | None:
    """The known checkpoint behind a file in Hugging Face's cache (models--OWNER--NAME/snapshots/REV/FILE)."""
    parts = path.parts
    for i, part in enumerate(parts[:-3]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            repo = part[len("models--") :].replace("--", "/", 1)
            filename = "/".join(parts[i + 3 :])
            return next((k for k in KNOWN_CHECKPOINTS if k.repo == repo and k.filename == filename), None)
    return None


def match_checkpoint(path: str | Path, backbone: str) -> KnownCheckpoint | None:
    """The known checkpoint a file refers to (by its place in the Hub cache, else by its name),
    if its backbone agrees with the weights."""
    cached = _hub_cache_entry(Path(path))
    if cached is not None:
        return cached if cached.backbone == backbone else None
    stem = normalised_stem(path)
    for known in KNOWN_CHECKPOINTS:
        if known.backbone == backbone and re.search(known.pattern, stem):
            return known
    return None


def find_checkpoint(name: str) -> KnownCheckpoint:
    """A known checkpoint by its short name (`hr`) or its full name (`BiRefNet_HR`), any case."""
    wanted = name.lower()
    for known in KNOWN_CHECKPOINTS:
        if wanted in (known.short.lower(), known.name.lower()):
            return known
    raise KeyError(
        f"no known checkpoint named {name!r}; `birefnet list` shows them ({', '.join(k.short for k in listed())})"
    )
