"""Training data as users have it, the official augmentations, optional dynamic sizes and
background synthesis.

A dataset folder holds one of these layouts (files matched by stem):
- `im/` + `gt/` (or `mask/`): images and masks, binary or soft;
- `im/` + `alpha/` (or `matte/`): images and matting alphas, soft targets;
- `fg/` + `alpha/`: foreground colours and alphas (matting sets), composited over a background;
- `rgba/`, or RGBA files directly in the folder: cut-outs, the alpha is the target and the
  colours are composited over a background.
Cut-outs get a new background every epoch: a random image of `bg/` when the folder has one,
otherwise a synthesised texture.

All randomness of a sample is drawn from numpy's generator seeded by (seed, epoch, index)
and the batch sizes from (seed, epoch, batch), so an interrupted run resumes identically
and any number of loader workers or ranks sees the same data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from birefnet.files import is_image_name, pillow_limit, read_image
from birefnet.inference import PIL_SCALES, normalise, to_rgb_tensor

from .scoring import alpha_channel, has_alpha, read_mask
from .synthetic import background

log = logging.getLogger(__name__)
IMAGE_DIRS = ("im", "image", "images")
ALPHA_DIRS = ("alpha", "alphas", "matte")
MASK_DIRS = ("gt", "mask", "masks") + ALPHA_DIRS  # a matting alpha is a soft mask
FOREGROUND_DIRS = ("fg", "foreground")
CUTOUT_DIRS = ("rgba", "cutouts")
BACKGROUND_DIRS = ("bg", "backgrounds")
LAYOUTS = (
    "im/ + gt/ (images and masks), im/ + alpha/ (matting alphas), fg/ + alpha/ (foregrounds and "
    "alphas), rgba/ or RGBA files in the folder (cut-outs)"
)


class Sample(NamedTuple):
    """One training example: `image` and its `mask`; a `cutout` is composited over a background
    when read (`image` holds its colours, `mask` its alpha: the same file for RGBA)."""

    image: Path
    mask: Path
    cutout: bool = False


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; the message lists the problems."""


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and is_image_name(p.name)]


def _by_stem(folder: Path) -> tuple[dict[str, Path], set[str]]:
    """(the image files of `folder` by stem, the stems left out). Images and masks are matched by
    stem; a stem two files share (`a.jpg` and `a.png`: a picture saved twice, or two different ones)
    is ambiguous: listed and left out, where keeping one would pick it by the order of the extensions,
    unsaid."""
    by_stem: dict[str, list[Path]] = {}
    for path in _image_files(folder):
        by_stem.setdefault(path.stem, []).append(path)
    shared = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if shared:
        log.warning(
            "%s: %d name(s) held by more than one file, left out (keep one file of each): %s",
            folder,
            len(shared),
            _listing(" and ".join(path.name for path in paths) for paths in shared.values()),
        )
    return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}, set(shared)


def files_by_stem(folder: Path) -> dict[str, Path]:
    """The image files of `folder` by stem, a stem held by more than one file listed and left out."""
    return _by_stem(folder)[0]


def _sub(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _listing(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _folders(folders) -> list[Path]:
    return list(map(Path, [folders] if isinstance(folders, (str, Path)) else folders))


def _matched(folder: Path, first: Path, second: Path, what: str, cutout: bool) -> list[Sample]:
    (images, shared_images), (masks, shared_masks) = _by_stem(first), _by_stem(second)
    common = sorted(images.keys() & masks.keys())
    listed = shared_images | shared_masks  # named as ambiguous already: not again as unmatched
    lonely = sorted(images.keys() - masks.keys() - listed)
    orphan = sorted(masks.keys() - images.keys() - listed)
    if lonely:
        log.warning("%s: %d %s(s) without a %s left out: %s", folder, len(lonely), what[0], what[1], _listing(lonely))
    if orphan:
        log.warning("%s: %d %s(s) without a %s left out: %s", folder, len(orphan), what[1], what[0], _listing(orphan))
    if not common:
        raise DatasetError(
            f"{folder}: no {what[0]} in {first.name}/ has a {what[1]} of the same name in {second.name}/ "
            f"({len(images)} {what[0]}s, {len(masks)} {what[1]}s)"
        )
    return [Sample(images[stem], masks[stem], cutout) for stem in common]


def _has_alpha(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return has_alpha(image)
    except OSError:
        return False


def _cutouts(folder: Path, files: dict[str, Path]) -> list[Sample]:
    with_alpha = [path for path in files.values() if _has_alpha(path)]
    without = sorted(path.name for path in files.values() if path not in with_alpha)
    if with_alpha and without:
        log.warning("%s: %d file(s) without an alpha channel left out: %s", folder, len(without), _listing(without))
    return [Sample(path, path, True) for path in with_alpha]


def find_pairs(folders) -> list[Sample]:
    """The samples of each dataset folder, in any layout of the module docstring. Unmatched files
    are reported and left out; a folder without any sample is an error naming the layouts."""
    samples = []
    for folder in _folders(folders):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder not found")
        im_dir, gt_dir = _sub(folder, IMAGE_DIRS), _sub(folder, MASK_DIRS)
        fg_dir, alpha_dir, rgba_dir = _sub(folder, FOREGROUND_DIRS), _sub(folder, ALPHA_DIRS), _sub(folder, CUTOUT_DIRS)
        if im_dir and gt_dir:
            samples += _matched(folder, im_dir, gt_dir, ("image", "mask"), cutout=False)
        elif fg_dir and alpha_dir:
            samples += _matched(folder, fg_dir, alpha_dir, ("foreground", "alpha"), cutout=True)
        elif rgba_dir or _image_files(folder):
            found = _cutouts(folder, files_by_stem(rgba_dir or folder))
            if not found:
                raise DatasetError(
                    f"{rgba_dir or folder}: no image has an alpha channel; a dataset folder holds {LAYOUTS}"
                )
            samples += found
        else:
            raise DatasetError(
                f"{folder}: expected sub-folders im/ (images) and gt/ (masks) matched by file name, "
                f"or another layout: {LAYOUTS}"
            )
    return samples


GIT_LFS_POINTER = b"version https://git-lfs"  # how a Git LFS pointer file starts, in place of the file it names


def why_unreadable(path: Path) -> str | None:
    """Why `path` cannot be opened as an image, or None. Only its header is read (quick: no pixels
    decoded), which finds the usual broken files of a data set (empty, cut off at the start, a Git LFS
    pointer, a web page saved as .jpg); a file damaged further in is found when it is read."""
    try:
        with pillow_limit(math.inf), Image.open(path):
            return None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's plugins raise all three for a bad header
        with contextlib.suppress(OSError):
            with open(path, "rb") as file:
                if file.read(len(GIT_LFS_POINTER)) == GIT_LFS_POINTER:
                    return "a Git LFS pointer: fetch the files with git lfs pull"
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def readable(samples: list[Sample], what: str = "training") -> list[Sample]:
    """The samples whose files open, checked before any work: the others are listed in one warning and
    left out, instead of each being found when an epoch reaches it (and in every epoch after). None
    readable is an error naming a file and why."""
    kept, broken = [], []
    for sample in samples:
        found = ((path, why_unreadable(path)) for path in dict.fromkeys((sample.image, sample.mask)))
        problem = next(((path, reason) for path, reason in found if reason), None)
        (broken if problem else kept).append(problem or sample)
    if broken:
        listed = _listing(f"{path} ({reason})" for path, reason in broken)
        if not kept:
            raise DatasetError(f"none of the {len(samples)} {what} pair(s) can be read: {listed}")
        log.warning("%d %s pair(s) with a file that cannot be read left out: %s", len(broken), what, listed)
    return kept


def find_backgrounds(folders) -> list[Path]:
    """Background images for cut-outs: the files of each dataset folder's bg/ (or backgrounds/)."""
    found = []
    for folder in _folders(folders):
        bg_dir = _sub(folder, BACKGROUND_DIRS) if folder.is_dir() else None
        found += _image_files(bg_dir) if bg_dir else []
    return found


@dataclass(frozen=True)
class Augment:
    """The official augmentations (the official repository's `image_proc.py`); the defaults are the released recipe."""

    flip: bool = True
    rotate: bool = True
    enhance: bool = True
    pepper: bool = True
    crop: bool = False  # listed by the official code but not in its default set
    background_synthesis: bool = False  # recomposite on a new background (then only flip)

    def __call__(self, image: Image.Image, mask: Image.Image, rng: np.random.Generator):
        if self.background_synthesis:
            image = _synthesise_background(image, mask, rng)
            if self.flip and rng.random() < 0.5:
                image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
            return image, mask
        if self.flip and rng.random() < 0.5:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        if self.crop:  # window width in [w - b, w), height in [h - b, h), b = 10% of the short side
            w, h = image.size
            border = max(1, int(0.1 * min(w, h)))
            width, height = int(rng.integers(w - border, w)), int(rng.integers(h - border, h))
            image, mask = _centre_crop(image, width, height), _centre_crop(mask, width, height)
        if self.rotate and rng.random() < 0.2:
            angle = int(rng.integers(-15, 15))
            corners = (0, 255) if mask.mode == "LA" else None  # rotated-in corners: labelled background
            image, mask = image.rotate(angle, Image.BICUBIC), mask.rotate(angle, Image.BICUBIC, fillcolor=corners)
        if self.enhance:
            image = ImageEnhance.Brightness(image).enhance(rng.integers(5, 15) / 10)
            image = ImageEnhance.Contrast(image).enhance(rng.integers(5, 15) / 10)
            image = ImageEnhance.Color(image).enhance(rng.integers(0, 20) / 10)
            image = ImageEnhance.Sharpness(image).enhance(rng.integers(0, 30) / 10)
        if self.pepper:
            array = np.array(image)
            count = int(0.0015 * array.shape[0] * array.shape[1])
            ys, xs = rng.integers(0, array.shape[0], count), rng.integers(0, array.shape[1], count)
            array[ys, xs] = rng.choice([0, 255], size=(count, 1))
            image = Image.fromarray(array)
        return image, mask


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centred width x height window, resized back to the original size."""
    w, h = image.size
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height)).resize((w, h), Image.BILINEAR)


def _alpha(mask: Image.Image) -> np.ndarray:
    """A mask's levels as (h, w, 1) float alphas in [0, 1]; an 'LA' mask's grey channel (its
    unlabelled pixels read 0 there: they are left out of the loss, whatever they show)."""
    return np.asarray(mask.getchannel("L") if mask.mode == "LA" else mask, np.float32)[..., None] / 255


def _synthesise_background(image: Image.Image, mask: Image.Image, rng) -> Image.Image:
    """fg·α + bg·(1−α) with a grey (p .4), near-foreground (p .4, hard negative) or random (p .2) colour."""
    fg = np.asarray(image, np.float32)
    alpha = _alpha(mask)
    choice = rng.random()
    if choice < 0.4:
        colour = np.full(3, rng.integers(0, 256), np.float32)
    elif choice < 0.8:
        mean = (fg * alpha).sum((0, 1)) / max(alpha.sum(), 1.0)
        push = rng.uniform(-0.2, 0.2)
        colour = mean + push * np.where(push > 0, 255 - mean, mean)
    else:
        colour = rng.integers(0, 256, 3).astype(np.float32)
    return Image.fromarray(np.clip(fg * alpha + colour * (1 - alpha), 0, 255).astype(np.uint8))


def _report(message: str) -> None:
    """A warning on its own line, above the epoch's progress bar rather than through it."""
    from tqdm import tqdm

    tqdm.write(f"training: {message}", file=sys.stderr)


def rgb_image(image: Image.Image) -> Image.Image:
    """An image as 8-bit RGB for the augmentations, with the colours `birefnet segment` reads
    (`birefnet.inference.to_rgb_tensor`): a 16-bit picture scaled by 65535 and a float one read as
    [0, 1], where `convert("RGB")` would clip every 16-bit value above 255 to white. The other modes
    convert as that function converts them."""
    if image.mode not in PIL_SCALES:
        return image.convert("RGB")
    unit = to_rgb_tensor(image).permute(1, 2, 0).numpy()
    return Image.fromarray((unit * 255 + 0.5).astype(np.uint8))


def _read(sample: Sample) -> tuple[Image.Image, Image.Image]:
    """(RGB image, mask) of a sample; for a cut-out, (its colours, its alpha)."""
    if sample.cutout and sample.image == sample.mask:  # one RGBA file
        image = read_image(sample.image)
        return rgb_image(image), alpha_channel(image)
    return rgb_image(read_image(sample.image)), read_mask(sample.mask)


def _composite(colours: Image.Image, alpha: Image.Image, backdrop: np.ndarray) -> Image.Image:
    """colours·α + backdrop·(1−α), rounded to 8 bits like a photograph of the scene."""
    a = _alpha(alpha)
    mixed = np.asarray(colours.resize(alpha.size, Image.BILINEAR), np.float32) / 255 * a + backdrop * (1 - a)
    return Image.fromarray((np.clip(mixed, 0, 1) * 255 + 0.5).astype(np.uint8))


def _backdrop(backgrounds, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random file of `backgrounds` cropped to h x w at a random place, else a synthesised texture."""
    if not backgrounds:
        return background(rng, h, w)
    path = backgrounds[int(rng.integers(len(backgrounds)))]
    image = ImageOps.fit(rgb_image(read_image(path)), (w, h), Image.BILINEAR, centering=tuple(rng.random(2)))
    return np.asarray(image, np.float32) / 255


def read_sample(sample: Sample, rng: np.random.Generator, backgrounds=()) -> tuple[Image.Image, Image.Image]:
    """(RGB image, mask) of a sample at its size; a cut-out is composited over a backdrop drawn from `rng`."""
    image, mask = _read(sample)
    if sample.cutout:
        image = _composite(image, mask, _backdrop(backgrounds, rng, mask.size[1], mask.size[0]))
    return image, mask


class Item(NamedTuple):
    """A loaded sample: the ImageNet-normalised image (3, h, w), the mask (1, h, w) in [0, 1] and,
    for a mask with unlabelled pixels, `labelled` (1, h, w): 1 where labelled, 0 where not, soft
    where resizing mixed the two (None when every pixel is labelled)."""

    image: torch.Tensor
    mask: torch.Tensor
    labelled: torch.Tensor | None = None


class SegmentationDataset(torch.utils.data.Dataset):
    """Items are (index, (height, width)) from `SizedBatchSampler`; returns (image, mask, labelled,
    index) as `Item` says. Cut-outs are composited over one of `backgrounds` (image files), or a
    synthesised texture when none."""

    def __init__(self, pairs, augment: Augment | None, seed: int = 0, backgrounds=(), substitute: bool = True):
        self.pairs = [Sample(*pair) for pair in pairs]
        self.substitute = substitute  # an unreadable sample: the next one instead (training), or None (scoring)
        self.augment = augment
        self.seed = seed
        self.backgrounds = list(backgrounds)
        self.epoch = 0
        self.warned_size = False

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, size: tuple[int, int]) -> Item:
        sample = self.pairs[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])  # cut-outs: a new backdrop every epoch
        image, mask = read_sample(sample, rng, self.backgrounds)
        if image.size != mask.size and not self.warned_size:
            self.warned_size = True
            _report(
                f"mask {sample.mask} is {mask.size[0]}x{mask.size[1]}, its image {image.size[0]}x{image.size[1]}: "
                "it is stretched to the training size like its image (reported for the first such pair only)"
            )
        h, w = size
        image, mask = image.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.BILINEAR)
        if self.augment is not None:
            image, mask = self.augment(image, mask, rng)
        x = normalise(to_rgb_tensor(image)[None])[0]
        if mask.mode == "LA":  # resized and turned premultiplied: a mixed pixel's level is its labelled part's
            grey, labelled = (torch.from_numpy(np.array(mask.getchannel(c))).float().div(255)[None] for c in "LA")
            return Item(x, grey.clamp(0, 1), labelled.clamp(0, 1))
        return Item(x, torch.from_numpy(np.array(mask)).float().div(255).clamp(0, 1)[None])

    def __getitem__(self, item):
        """(image, mask, labelled, index). One bad file must not stop a long run: it is reported and, in
        training, the next sample read instead; without `substitute` (validation) the item is None and
        left out, as `evaluate` leaves it out: a stand-in would count another image twice in the scores."""
        index, size = item
        for offset in range(len(self) if self.substitute else 1):
            candidate = (index + offset) % len(self)
            try:
                return (*self.load(candidate, size), candidate)
            except Exception as err:
                _report(f"skipping unreadable sample {self.pairs[candidate][0]}: {err}")
        if not self.substitute:
            return None
        raise DatasetError("no sample of the dataset could be read")


class SizedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of (index, size): one working size per batch (fixed, or random
    multiples of 32 in `dynamic` ranges), sharded over distributed ranks."""

    def __init__(
        self, length, batch_size, size=(1024, 1024), dynamic=None, seed=0, shuffle=True, rank=0, world=1, drop_last=True
    ):
        self.length, self.batch_size, self.size, self.dynamic = length, batch_size, size, dynamic
        self.seed, self.shuffle, self.rank, self.world, self.drop_last = seed, shuffle, rank, world, drop_last
        self.epoch = 0

    def _batches(self):
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 1 << 20]).permutation(self.length)
        full = (
            self.length // self.batch_size * self.batch_size
            if self.drop_last and self.length >= self.batch_size
            else self.length
        )
        batches = [order[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
        usable = len(batches) // self.world * self.world if len(batches) >= self.world else len(batches)
        return batches[:usable]

    def _size(self, number: int) -> tuple[int, int]:
        if self.dynamic is None:
            return self.size
        rng = np.random.default_rng([self.seed, self.epoch, number, 1 << 21])
        (h_lo, h_hi), (w_lo, w_hi) = self.dynamic
        return int(rng.integers(h_lo, h_hi)) // 32 * 32, int(rng.integers(w_lo, w_hi)) // 32 * 32

    def __iter__(self):
        for number, batch in enumerate(self._batches()):
            if number % self.world == self.rank:
                size = self._size(number)
                yield [(int(i), size) for i in batch]

    def __len__(self) -> int:
        return len(self._batches()) // self.world if self.world > 1 else len(self._batches())


def collate(items):
    """(images, masks, labelled, indices); labelled is None when every pixel of the batch is. Items left
    out (None: unreadable, in validation) are dropped; a batch of nothing else is None."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    images, masks, labelled, indices = zip(*items)
    if all(weight is None for weight in labelled):
        weights = None
    else:
        weights = torch.stack([torch.ones_like(m) if w is None else w for m, w in zip(masks, labelled)])
    return torch.stack(images), torch.stack(masks), weights, torch.tensor(indices)
