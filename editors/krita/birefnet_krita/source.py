"""What a job works on: the layer's pixels on the canvas and the guiding box, read through Krita's API on
the UI thread, and their conversions to and from the server's PNGs, which need no Krita API and run on a
worker thread (background.py)."""

from . import colour, settings
from .pixels import UnsupportedLayer, check_colour_space, decode_bgra, decode_mask, encode_png, from_bgra8, to_bgra8
from .qt import QRect

PIXEL_LAYERS = ("paintlayer",)  # their own pixels; other layers are read through their projection


class Source:
    """The document, the layer, its raw pixels on the canvas (`model`, `depth`: their layout; converted to
    sRGB when the layer's profile is another), the guiding box and what the answer becomes (`output`:
    "mask", or "rgba" for a new layer in the image's colour space)."""

    def __init__(self, doc, node, output: str):
        self.doc, self.node, self.output = doc, node, output
        self.model, self.depth = node.colorModel(), node.colorDepth()
        check_colour_space(self.model, self.depth)
        self.image_space = (doc.colorModel(), doc.colorDepth(), doc.colorProfile())
        bounds = node.bounds().intersected(QRect(0, 0, doc.width(), doc.height()))
        if bounds.isEmpty():
            raise UnsupportedLayer(f'The layer "{node.name()}" has no pixels on the canvas.')
        self.x, self.y, self.width, self.height = bounds.x(), bounds.y(), bounds.width(), bounds.height()
        read = node.pixelData if node.type() in PIXEL_LAYERS else node.projectionPixelData
        self.raw = read(self.x, self.y, self.width, self.height)  # a QByteArray: copied to bytes off the UI thread
        self.selection = doc.selection()
        self.box = self._box(bounds)
        profile = node.colorProfile()  # last: Krita's conversion runs its UI, which may change the selection
        if not colour.is_srgb(profile):
            self.raw = colour.convert(self.raw, self.width, self.height, (self.model, self.depth, profile), colour.SRGB)
            self.model, self.depth = colour.SRGB[:2]

    def _box(self, bounds):
        """The selection's bounding box in the uploaded pixels' coordinates, or None for no (or an all
        covering) selection."""
        if self.selection is None:
            return None
        sel = self.selection
        box = QRect(sel.x(), sel.y(), sel.width(), sel.height()).intersected(bounds)
        if box.isEmpty():
            raise UnsupportedLayer(
                "The selection does not overlap the layer: select around the object, or "
                "deselect (Ctrl+Shift+A) to use the whole layer."
            )
        if box == bounds:
            return None
        return f"{box.x() - self.x},{box.y() - self.y},{box.width()},{box.height()}"

    def fields(self) -> list:
        fields = settings.request_fields(self.output, boxed=bool(self.box))
        if self.box:
            fields.append(("box", self.box))
        return fields

    def png(self) -> bytes:
        """The pixels as the PNG the server takes (no Krita API: runs off the UI thread)."""
        return encode_png(to_bgra8(self.raw.data(), self.model, self.depth), self.width, self.height)

    def answer(self, body: bytes) -> bytes:
        """The server's PNG as the bytes Krita takes: a mask, or the cut-out's pixels in the image's colour
        space, or in 8-bit sRGB when the image has another profile (see `layer_pixels`) (no Krita API: runs
        off the UI thread)."""
        if self.output == "rgba":
            bgra = decode_bgra(body, self.width, self.height)
            return from_bgra8(bgra, *self.image_space[:2]) if colour.is_srgb(self.image_space[2]) else bgra
        return decode_mask(body, self.width, self.height)

    def layer_pixels(self, pixels: bytes):
        """`answer`'s cut-out pixels in the image's colour space (Krita converts those from another profile:
        on the UI thread)."""
        if colour.is_srgb(self.image_space[2]):
            return pixels
        return colour.convert(pixels, self.width, self.height, colour.SRGB, self.image_space)
