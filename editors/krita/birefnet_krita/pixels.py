"""Krita layer pixels to and from the PNGs the server speaks, with Qt and the standard library only.

Krita hands out raw bytes in the layer's own colour space: integer RGBA as B,G,R,A and grey as
grey,alpha, with 1 byte per channel at 8 bit and 2 (little-endian) at 16 bit. Everything is turned into
8-bit BGRA, which is Qt's ARGB32 on little-endian machines; 16-bit keeps its high byte, the same 8-bit
value an image library reads from a 16-bit PNG. Masks and selections are always 1 byte per pixel."""

from .qt import QBuffer, QByteArray, QImage, QIODevice

SUPPORTED_MODELS = ("RGBA", "GRAYA")
SUPPORTED_DEPTHS = ("U8", "U16")


class UnsupportedLayer(ValueError):
    """A layer the plug-in cannot read or write; the message says what to do instead."""


def check_colour_space(model: str, depth: str, what: str = "This layer") -> None:
    if model not in SUPPORTED_MODELS or depth not in SUPPORTED_DEPTHS:
        raise UnsupportedLayer(
            f"{what} is {model}/{depth}; BiRefNet works on 8- and 16-bit integer RGB or grey images. "
            "Convert it with Image > Convert Image Color Space (e.g. RGB/Alpha, 8-bit integer) and try again."
        )


def _high_bytes(data: bytes) -> bytes:
    return data[1::2]  # little-endian 16-bit: the second byte of each value is its top 8 bits


def to_bgra8(data: bytes, model: str, depth: str) -> bytes:
    """Raw Krita pixels (see the module docstring) -> 8-bit B,G,R,A."""
    check_colour_space(model, depth)
    if depth == "U16":
        data = _high_bytes(data)
    if model == "RGBA":
        return data
    grey, alpha = data[0::2], data[1::2]
    out = bytearray(len(grey) * 4)
    out[0::4] = out[1::4] = out[2::4] = grey
    out[3::4] = alpha
    return bytes(out)


def from_bgra8(bgra: bytes, model: str, depth: str) -> bytes:
    """8-bit B,G,R,A -> raw Krita pixels of a layer in this colour space (grey takes the red channel,
    which equals the others for a grey image)."""
    check_colour_space(model, depth, "This image")
    data = bgra if model == "RGBA" else _interleave(bgra[2::4], bgra[3::4])
    if depth == "U16":
        return _interleave(data, data)  # v * 257: 0 -> 0, 255 -> 65535
    return data


def _interleave(first: bytes, second: bytes) -> bytes:
    out = bytearray(len(first) * 2)
    out[0::2] = first
    out[1::2] = second
    return bytes(out)


def encode_png(bgra: bytes, width: int, height: int) -> bytes:
    image = QImage(bgra, width, height, width * 4, QImage.Format.Format_ARGB32)
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG", 80):  # quality 80: light compression, quick for large layers
        raise UnsupportedLayer(f"could not encode the {width}x{height} layer as PNG")
    return buffer.data().data()


def _decode(png: bytes, width: int, height: int, fmt, bytes_per_pixel: int) -> bytes:
    image = QImage.fromData(QByteArray(png), "PNG")
    if image.isNull():
        raise ValueError("the server's answer is not a PNG image")
    if (image.width(), image.height()) != (width, height):
        raise ValueError(f"the server answered {image.width()}x{image.height()} for a {width}x{height} image")
    image = image.convertToFormat(fmt)
    bits = image.constBits()
    bits.setsize(image.bytesPerLine() * height)
    data = bytes(bits)
    row = width * bytes_per_pixel
    stride = image.bytesPerLine()
    if stride == row:
        return data
    return b"".join(data[y * stride : y * stride + row] for y in range(height))  # drop Qt's 4-byte row padding


def decode_mask(png: bytes, width: int, height: int) -> bytes:
    """A greyscale PNG -> 1 byte per pixel, the layout of Krita masks and selections."""
    return _decode(png, width, height, QImage.Format.Format_Grayscale8, 1)


def decode_bgra(png: bytes, width: int, height: int) -> bytes:
    """An RGBA PNG -> 8-bit B,G,R,A (not premultiplied)."""
    return _decode(png, width, height, QImage.Format.Format_ARGB32, 4)
