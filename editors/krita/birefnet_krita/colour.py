"""Pixels in a colour profile other than sRGB, converted by Krita itself.

The model was trained on sRGB pictures: a layer in a linear-light or wide-gamut profile sent as its raw
bytes looks to it like other colours (linear light far darker) and gives another mask. Such pixels go to
the server converted to 8-bit sRGB, and Cut Out's colours come back converted into the image's profile.
Krita's Python API has no conversion of bytes, so a temporary document that never opens in a window holds
them while Krita converts it (Document.setColorSpace: Krita's own colour engine, as Image > Convert Image
Color Space runs it; Krita keeps its UI running while it waits for that conversion)."""

from krita import Krita

from .pixels import UnsupportedLayer
from .qt import QByteArray

SRGB = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")  # Krita's default profile: the server reads PNGs as this
# profiles whose pixels already are sRGB (their bytes are sent as they are); any other profile is converted
SRGB_PROFILES = frozenset(
    {
        "sRGB-elle-V2-srgbtrc.icc",
        "sRGB-elle-V4-srgbtrc.icc",
        "sRGB built-in",
        "sRGB IEC61966-2.1",
        "Gray-D50-elle-V2-srgbtrc.icc",
        "Gray-D50-elle-V4-srgbtrc.icc",
    }
)


def is_srgb(profile: str) -> bool:
    return profile in SRGB_PROFILES


def convert(data, width: int, height: int, source: tuple, target: tuple) -> QByteArray:
    """`data` (a width x height rectangle of raw pixels in the `source` (model, depth, profile)) in the
    `target` colour space, converted by Krita (on the UI thread: Krita's API)."""
    doc = Krita.instance().createDocument(width, height, "BiRefNet colour conversion", *source, 72.0)
    if doc is None:
        raise UnsupportedLayer(f"Krita could not hold pixels in {'/'.join(source)}: {_advice()}")
    try:
        doc.setBatchmode(True)
        layer = doc.topLevelNodes()[0]
        layer.setPixelData(data if isinstance(data, QByteArray) else QByteArray(data), 0, 0, width, height)
        if not doc.setColorSpace(*target):
            raise UnsupportedLayer(f"Krita could not convert {'/'.join(source)} to {'/'.join(target)}: {_advice()}")
        doc.waitForDone()
        return layer.pixelData(0, 0, width, height)
    finally:
        doc.close()


def _advice() -> str:
    return "convert the image to sRGB (Image > Convert Image Color Space) and try again."
