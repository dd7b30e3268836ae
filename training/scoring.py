"""Mask files read and scored as the metrics expect, in this process or in spawned worker processes.

This is the module `evaluate_folders` runs in its workers, which are spawned (never forked: a fork
of a process that has loaded OpenCV's or torch's thread pools can hang, on macOS and with some BLAS
builds). A spawned worker imports this module by its package-qualified name, so it imports only
what scoring needs (numpy, Pillow, OpenCV, pysodmetrics): never torch and never the `birefnet`
library, whose name can resolve to another package in a fresh process (a checkout folder named
`birefnet` holds the ComfyUI pack). Keep it that way: the tests check that it loads no torch.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageOps

from .metrics import MetricSet

HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
VOID_INDEX = 255  # in a palette mask (VOC): unlabelled, the band along each outline and unsure regions


def read_mask(path) -> Image.Image:
    """A mask as an 8-bit 'L' image, or, when the file has more than 8 bits (16-bit PNG/TIFF, float
    TIFF), as an 'F' image of 0..255 floats: `convert("L")` would clip a 16-bit mask's soft edge to
    255. Scaled like the inference input: 16-bit by 65535, float files read as [0, 1]. A palette
    mask with unlabelled pixels (VOC's void index) is an 'LA' image: alpha 0 where unlabelled; an RGB
    label map in flat colours is read as its palette would be (`_colour_label_indices`). A
    file with an alpha channel that varies is read by its alpha (`shape_in_alpha`). The file is
    opened as `birefnet.files.read_image` opens images (EXIF orientation applied), without importing
    the library (and torch with it). Training and evaluation both read masks here."""
    with Image.open(path) as image:
        stored_as = image.format  # a turned copy (EXIF orientation) has none
        image = ImageOps.exif_transpose(image)
        image.load()
    alpha = shape_in_alpha(image)
    if alpha is not None:
        return alpha
    if image.mode == "P" and "transparency" not in image.info and not _grey_palette(image):
        return _palette_mask(image)
    colour_labels = _colour_label_indices(image, stored_as)
    if colour_labels is not None:
        return _palette_mask(colour_labels)
    if image.mode not in HIGH_BIT_MODES:
        grey = image.convert("L")
        return _stretched_if_binary(grey) if image.mode == "L" else grey
    array = np.asarray(image, dtype=np.float32)
    if image.mode != "F" and array.max() == 1:  # a 0/1 mask in a 16-bit file
        return Image.fromarray((array * 255).astype(np.float32))
    if image.mode == "F":
        scale = 255.0 if array.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 1.0
    return Image.fromarray((array * scale).astype(np.float32))  # float32 -> mode "F"


def has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette with a transparent entry (as PNG cut-outs and masks hold it)."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def alpha_channel(image: Image.Image) -> Image.Image:
    """The alpha of an image `has_alpha` accepts, as an 8-bit 'L' image."""
    return image.convert("RGBA").getchannel("A")


def shape_in_alpha(image: Image.Image) -> Image.Image | None:
    """The alpha of a mask whose shape is drawn in it (a white or coloured layer on transparency, a
    cut-out kept as its mask), or None. Its brightness would read a white layer as all foreground.
    When grey and alpha both vary, the alpha decides: in a cut-out the colours are the object's
    picture, not its mask. A constant alpha holds no shape (an opaque RGBA or grey+alpha mask is
    read by its grey), except an all-transparent file, which shows nothing: an empty mask."""
    if not has_alpha(image):
        return None
    alpha = alpha_channel(image)
    low, high = alpha.getextrema()
    return alpha if low != high or high == 0 else None


def _voc_colours(count: int) -> np.ndarray:
    """The first `count` colours of the VOC palette (class c's bits spread over R, G and B from
    the top bit down), which VOC-style tools write whatever classes a mask uses."""
    colours = np.zeros((count, 3), np.int32)
    for c in range(count):
        for bit in range(8):
            for channel in range(3):
                colours[c, channel] |= ((c >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours


VOC_FIRST_COLOURS = _voc_colours(8)  # background and classes 1-7: six of them are not grey


def _grey_palette(image: Image.Image) -> bool:
    """True when every colour the image uses is a grey: a grey mask some tool stored with a
    palette, whose grey levels are the mask (not class numbers). Never for the VOC palette, where
    a mask of class 7 alone (drawn (128, 128, 128)) uses only greys but holds class numbers."""
    colours = np.asarray(image.getpalette() or [], np.int32).reshape(-1, 3)
    if len(colours) >= 8 and (colours[:8] == VOC_FIRST_COLOURS).all():
        return False
    used = np.unique(np.asarray(image))
    used = used[used < len(colours)]
    return bool(len(colours)) and bool((colours[used] == colours[used][:, :1]).all())


VOC_VOID_COLOUR = (224, 224, 192)  # how VOC draws its void index
LABEL_COLOURS = 64  # an RGB label map's colours at most (VOC: 21 classes and void)


def _colour_label_indices(image: Image.Image, stored_as: str | None) -> Image.Image | None:
    """An RGB mask drawn in flat colours that are not all grey (a label map some tool saved as RGB, not
    with a palette: VOC's (128, 0, 0) for class 1) as the class indices it stands for: black index 0,
    VOC's void colour 255, every other colour a class. By its brightness a dark red object would be a
    faint one (38 of 255), no foreground at all when scored. None for anything else, which is read by
    its brightness: grey masks, soft masks (more than LABEL_COLOURS colours: an anti-aliased edge, even
    one tinted by a colour conversion, whose faint pixels a label reading would make foreground), masks
    with no clearly coloured colour, and JPEGs (compressed: no flat colours to tell classes by)."""
    if image.mode not in ("RGB", "RGBA") or stored_as == "JPEG":
        return None
    colours = image.convert("RGB").getcolors(LABEL_COLOURS)
    if colours is None or all(max(rgb) - min(rgb) < 64 for _, rgb in colours):
        return None
    rgb = np.asarray(image.convert("RGB"))
    indices = np.where(rgb.any(axis=2), 1, 0).astype(np.uint8)
    indices[(rgb == VOC_VOID_COLOUR).all(axis=2)] = VOID_INDEX
    return Image.fromarray(indices)  # read by `_palette_mask` as a palette image's indices


def _palette_mask(image: Image.Image) -> Image.Image:
    """A palette mask (VOC style: index 0 background, 1.. the classes, shown as (128, 0, 0) ...)
    holds class numbers, not grey levels: `convert("L")` would read index 1 as the dark red's
    luminance (38), a faint foreground. Every class index is foreground (255). VOC's void index
    (255, drawn cream along every outline) says "not labelled": counted as foreground it would
    widen every object by a band of a few pixels, counted as background narrow it, so it becomes
    alpha 0 of an 'LA' image, which training leaves out of the loss and evaluation makes agree in
    the scores (`void_pixels`)."""
    indices = np.asarray(image)
    grey = np.where((indices > 0) & (indices != VOID_INDEX), 255, 0).astype(np.uint8)
    void = indices == VOID_INDEX
    if not void.any():
        return Image.fromarray(grey)
    return Image.merge("LA", [Image.fromarray(grey), Image.fromarray(np.where(void, 0, 255).astype(np.uint8))])


def _stretched_if_binary(mask: Image.Image) -> Image.Image:
    """A mask whose largest value is 1 is a 0/1 mask (numpy's bool saved as 8-bit), not a
    255-scale mask whose object is 1/255 bright: 1 becomes 255. Other grey masks stay as they are."""
    low, high = mask.getextrema()
    return mask.point(lambda v: 255 if v else 0) if high == 1 else mask


def mask_array(mask: Image.Image) -> np.ndarray:
    """A mask image as the metrics read it: 8-bit masks as they are (uint8), deeper ones as float
    [0, 1] so that 16-bit soft values are rounded once, not clipped; an 'LA' mask's grey levels."""
    if mask.mode == "LA":
        mask = mask.getchannel("L")
    return np.asarray(mask) if mask.mode == "L" else np.asarray(mask, dtype=np.float32) / 255.0


def void_pixels(mask: Image.Image) -> np.ndarray | None:
    """Where a mask is not labelled (bool, alpha below half of an 'LA' mask); None when it all is."""
    if mask.mode != "LA":
        return None
    void = np.asarray(mask.getchannel("A")) < 128
    return void if void.any() else None


def read_mask_array(path) -> np.ndarray:
    return mask_array(read_mask(path))


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def skip(metrics: MetricSet, what: str, err: Exception) -> None:
    """Record a pair that could not be read, with the error's first line: one unreadable file must
    not end a long evaluation; the caller reports it."""
    metrics.skipped.append((what, first_line(err)))


def score_files(pairs, names, hce_convention) -> MetricSet:
    """(prediction file, ground-truth file) pairs scored in order, by one process; sets of
    consecutive parts `join` into exactly the set of the whole list."""
    cv2.setNumThreads(1)  # the processes are the parallelism
    metrics = MetricSet(names, hce_convention)
    for pred_path, gt_path in pairs:
        try:
            pred, gt = read_mask_array(pred_path), read_mask(gt_path)
        except (OSError, ValueError) as err:
            skip(metrics, f"{pred_path} / {gt_path}", err)
            continue
        metrics.step(pred, mask_array(gt), void=void_pixels(gt))
    return metrics
