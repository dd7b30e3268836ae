"""What a request asks for, checked before it waits for the model: the image decoded within the
pixel limit (only the formats an editor sends; never a URL), boxes, resolution, refinement."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError, features

from ..files import cannot_be_decoded, cmyk_to_srgb, load_plugin, missing_plugin, pillow_limit, plugin_picture
from ..guidance import clip_box, parse_box
from ..highres import DEFAULT_FINE_MEGAPIXELS
from ..inference import upright
from ..pipeline import check_highres, parse_resolution
from ..refine import Refinement
from .errors import RequestError

# Decoders that read only the header on open (the pixel limit holds before decoding) and run no external
# program (EPS) or script. AVIF (phones, browsers' "save image") where Pillow has it built in (11.3+).
# GIF and animated AVIF/WebP: the first frame, as `birefnet segment` reads them.
FORMATS = ("PNG", "JPEG", "WEBP", *(("AVIF",) if features.check_module("avif") else ()), "TIFF", "BMP", "GIF")
# Pictures read with a plugin package (the `pictures` extra) when installed: HEIC/HEIF, whose decoder reads
# only the header on open, so the pixel limit holds before decoding as for the formats above. JPEG XL's
# (pillow-jxl-plugin) decodes the whole picture on open, before its size can be checked: a 5 kB file
# declaring 6000x6000 pixels costs 10 s and 200 MB before a 413, so it is refused (formats_for).
PLUGIN_FORMATS = {"pillow_heif": "HEIF"}
READ = ", ".join("WebP" if name == "WEBP" else name for name in FORMATS) + " or HEIC"
OUTPUTS = ("mask", "rgba")
# Pixels each way a refinement may reach. Their cost grows with the radius (the guided filter's with its
# square: on one CPU core and a 1-megapixel image, guided_radius 128 takes minutes), and the one model
# thread waits meanwhile; far larger values change nothing visible anyway.
MAX_RADIUS = {"grow": 64, "guided_radius": 32, "feather": 256, "foreground_radius": 256}
# The working area a request may ask for (resolution, the fine pass of highres): the largest checkpoint's
# own (BiRefNet_HR, 2048x2048, 4.2 megapixels). Larger gains nothing any checkpoint was trained for and costs
# minutes on a CPU while every other request waits.
MAX_WORKING_MEGAPIXELS = DEFAULT_FINE_MEGAPIXELS
MAX_BOXES = 32  # each box is one forward pass


@dataclass(frozen=True)
class Job:
    """One segmentation, as `birefnet segment` would run it."""

    image: Image.Image
    output: str = "mask"
    weights: str | None = None
    resolution: object = None
    boxes: tuple = ()
    refinement: Refinement = Refinement()
    highres: bool = False
    fine_megapixels: float = DEFAULT_FINE_MEGAPIXELS
    background: tuple[int, ...] | None = None  # rembg's bgc: the cut-out laid on this RGBA colour


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded file as `birefnet segment` reads a file (EXIF orientation applied, a CMYK picture
    in sRGB through its profile), or a RequestError."""
    if not data:
        raise RequestError(400, "the image upload is empty (0 bytes)")
    try:
        with pillow_limit(max_pixels):  # the check below decides
            image = Image.open(io.BytesIO(data), formats=formats_for(data))
    except UnidentifiedImageError:
        raise RequestError(400, f"the upload is not an image this server reads ({READ})") from None
    except Image.DecompressionBombError:
        image = None
    except (OSError, SyntaxError, ValueError) as err:  # a header cut short, a damaged or oversized chunk
        raise damaged(err) from None
    width, height = image.size if image is not None else (0, 0)
    if image is None or width * height > max_pixels:
        size = f"{width}x{height} ({width * height / 1e6:.1f} megapixels)" if image is not None else "too large"
        raise RequestError(
            413, f"the image is {size}; this server accepts up to {max_pixels / 1e6:g} megapixels (--max-megapixels-in)"
        )
    try:
        image.load()
        image = upright(image)  # no copy of an image that is upright already: a 100-megapixel copy is 300 MB
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise damaged(err) from None
    return cmyk_to_srgb(image)  # once here, not each time the picture is read


def formats_for(data: bytes) -> tuple[str, ...]:
    """The decoders that may open `data`: a picture that needs a plugin (told by its first bytes) only its
    plugin's, when it is installed and safe here; else 415 naming the extra or saying why not."""
    plugin = plugin_picture(data[:12])
    if plugin is None:
        return FORMATS
    kind, module, _ = plugin
    if module not in PLUGIN_FORMATS:
        raise RequestError(
            415,
            f"{kind} uploads are not read: its decoder decodes the whole picture before its size can be "
            "checked against --max-megapixels-in; convert it to PNG or JPEG",
        )
    if not load_plugin(module):
        raise RequestError(415, f"this server cannot read the upload: {missing_plugin(plugin)}")
    return (PLUGIN_FORMATS[module],)


def damaged(err: Exception) -> RequestError:
    return RequestError(400, f"the image {cannot_be_decoded(err)}")


def check_numbers(fields: dict) -> None:
    """Numbers a form may carry but no option means: inf and nan (Python parses "inf", "1e400"), and radii
    past MAX_RADIUS, which would hold the model thread for minutes. 400 naming the field."""
    for name, value in fields.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(400, f"{name} {value}: use a finite number")
        limit = MAX_RADIUS.get(name)
        if limit is not None and abs(value) > limit:
            raise RequestError(400, f"{name} {value}: this server accepts up to {limit} pixels for {name}")


def parse_job(
    image: Image.Image,
    *,
    output: str,
    weights: str | None,
    resolution: str,
    boxes: list[str],
    refinement: dict,
    highres: bool = False,
    fine_megapixels: float = DEFAULT_FINE_MEGAPIXELS,
    background: str | None = None,
) -> Job:
    """A Job from the form's fields, each checked (RequestError 400 naming the field)."""
    if output not in OUTPUTS:
        raise RequestError(400, f"output {output!r}: use mask or rgba")
    check_numbers({**refinement, "fine_megapixels": fine_megapixels})
    try:
        chosen = parse_resolution(resolution)
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    most = f"this server works at up to {MAX_WORKING_MEGAPIXELS} megapixels (2048x2048)"
    if isinstance(chosen, tuple) and chosen[0] * chosen[1] > MAX_WORKING_MEGAPIXELS * 1e6:
        raise RequestError(400, f"resolution {resolution}: {most}")
    if fine_megapixels > MAX_WORKING_MEGAPIXELS:
        raise RequestError(400, f"fine_megapixels {fine_megapixels}: {most}")
    if len(boxes) > MAX_BOXES:
        raise RequestError(400, f"{len(boxes)} boxes: this server takes up to {MAX_BOXES} per request")
    try:
        parsed = tuple(parse_box(text) for text in boxes)
        for box in parsed:
            clip_box(box, image.height, image.width)
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    try:
        options = Refinement(**refinement)
        check_highres(parsed, highres)
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    if not fine_megapixels > 0:
        raise RequestError(400, f"fine_megapixels {fine_megapixels} must be positive (the fine pass's working area)")
    return Job(
        image, output, weights or None, chosen, parsed, options, highres, fine_megapixels, parse_colour(background)
    )


def parse_colour(text: str | None) -> tuple[int, ...] | None:
    """rembg's `bgc`, R,G,B,A (or R,G,B: opaque) from 0 to 255; none or empty: None (transparent), as in rembg."""
    if not text:
        return None
    try:
        values = tuple(int(value) for value in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (3, 4) or not all(0 <= value <= 255 for value in values):
        raise RequestError(
            400, f"bgc {text!r}: give the background colour as R,G,B,A from 0 to 255, e.g. 255,255,255,255"
        )
    return values


def check_fields(given, allowed, repeatable=()) -> None:
    """Unknown form fields are mistakes (a typo would silently change nothing), and so is a field sent twice
    that takes one value (only the last would count: two images, one mask): 400 naming them. `given`: the
    form's field names, each as often as it was sent."""
    given = list(given)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; this endpoint takes: {', '.join(allowed)}")
    repeated = sorted({name for name in given if given.count(name) > 1} - set(repeatable))
    if repeated:
        may = f" (only {', '.join(repeatable)} may repeat)" if repeatable else ""
        raise RequestError(400, f"field(s) {', '.join(repeated)} sent more than once; send each once{may}")
