"""Released BiRefNet checkpoints: backbone, working resolution, licence, tile layout.

The weights do not tell the working resolution or the inward-reference tile layout
(spec §10.5, pitfall 1), so they are carried here, keyed by checkpoint. Layout
evidence (spec §10b): models released in 2024 were trained with the legacy layout
(RMBG-2.0's own code and ComfyUI's port use it); the 2025 releases (HR, dynamic,
512x512) with the current one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    repo: str  # Hugging Face repo id
    filename: str  # file inside the repo
    backbone: str
    resolution: tuple[int, int] | None  # (height, width); None = any size (dynamic models)
    license: str
    tile_layout: str
    task: str
    pattern: str  # regex on the normalised file stem (lowercase, '_' and ' ' -> '-')

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.filename}"


def _zp(name, backbone, resolution, layout, task, pattern, license="MIT", repo=None, filename="model.safetensors"):
    return KnownCheckpoint(name, repo or f"ZhengPeng7/{name}", filename, backbone, resolution, license, layout, task, pattern)


# Most specific patterns first: the first match whose backbone agrees with the weights wins.
KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    _zp("BiRefNet_HR-matting", "swin_v1_l", (2048, 2048), "current", "matting", r"hr-matting"),
    _zp("BiRefNet_dynamic-matting", "swin_v1_l", None, "current", "matting", r"dynamic-matting"),
    _zp("BiRefNet_lite-2K", "swin_v1_t", (1440, 2560), "legacy", "general", r"lite-2k"),
    _zp("BiRefNet_HR", "swin_v1_l", (2048, 2048), "current", "general", r"(^|-)hr($|-)"),
    _zp("BiRefNet_dynamic", "swin_v1_l", None, "current", "general", r"dynamic"),
    _zp("BiRefNet_512x512", "swin_v1_l", (512, 512), "current", "general", r"512x512|reso-512"),
    _zp("BiRefNet_lite", "swin_v1_t", (1024, 1024), "legacy", "general", r"lite|swin-v1-tiny"),
    _zp("BiRefNet-portrait", "swin_v1_l", (1024, 1024), "legacy", "portrait", r"portrait"),
    _zp("BiRefNet-matting", "swin_v1_l", (1024, 1024), "legacy", "matting", r"matting"),
    _zp("BiRefNet-DIS5K-TR_TEs", "swin_v1_l", (1024, 1024), "legacy", "DIS", r"tr-tes"),
    _zp("BiRefNet-DIS5K", "swin_v1_l", (1024, 1024), "legacy", "DIS", r"(^|-)dis(5k)?($|-)"),
    _zp("BiRefNet-HRSOD", "swin_v1_l", (1024, 1024), "legacy", "HRSOD", r"hrsod"),
    _zp("BiRefNet-COD", "swin_v1_l", (1024, 1024), "legacy", "COD", r"(^|-)cod($|-)"),
    _zp("BiRefNet-legacy", "swin_v1_l", (1024, 1024), "legacy", "general", r"massive|birefnet-legacy"),
    KnownCheckpoint(
        "RMBG-2.0", "briaai/RMBG-2.0", "model.safetensors", "swin_v1_l", (1024, 1024),
        "CC BY-NC 4.0 (non-commercial)", "legacy", "background removal", r"rmbg",
    ),
    KnownCheckpoint(
        "Lucida (Comfy-Org)", "Comfy-Org/BiRefNet", "background_removal/lucida.safetensors", "swin_v1_l",
        (1024, 1024), "MIT", "legacy", "background removal", r"lucida",
    ),
    _zp("BiRefNet", "swin_v1_l", (1024, 1024), "legacy", "general", r"birefnet|general"),
)


def normalised_stem(path: str | Path) -> str:
    return re.sub(r"[_\s]+", "-", Path(path).stem.lower())


def match_checkpoint(path: str | Path, backbone: str) -> KnownCheckpoint | None:
    """The known checkpoint a file name refers to, if its backbone agrees with the weights."""
    stem = normalised_stem(path)
    for known in KNOWN_CHECKPOINTS:
        if known.backbone == backbone and re.search(known.pattern, stem):
            return known
    return None


def find_checkpoint(name: str) -> KnownCheckpoint:
    for known in KNOWN_CHECKPOINTS:
        if known.name.lower() == name.lower():
            return known
    raise KeyError(f"no known checkpoint named {name!r}; known: {', '.join(k.name for k in KNOWN_CHECKPOINTS)}")
