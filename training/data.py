"""Training data: folders of images (`im/`) and masks (`gt/`) matched by file stem, the
official augmentations (spec §8.4), optional dynamic sizes and background synthesis.

All randomness of a sample is drawn from numpy's generator seeded by (seed, epoch, index)
and the batch sizes from (seed, epoch, batch), so an interrupted run resumes identically
and any number of loader workers or ranks sees the same data.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from birefnet.inference import normalise, to_rgb_tensor
from birefnet.io import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)
IMAGE_DIRS = ("im", "image", "images")
MASK_DIRS = ("gt", "mask", "masks")


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; the message lists the problems."""


def _files_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _sub(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _listing(items, limit: int = 5) -> str:
    items = [str(i) for i in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def find_pairs(folders) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from each folder's im/ and gt/ (matched by stem). Unmatched files
    are reported and left out; a folder without any pair is an error."""
    pairs = []
    for folder in map(Path, [folders] if isinstance(folders, (str, Path)) else folders):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder not found")
        im_dir, gt_dir = _sub(folder, IMAGE_DIRS), _sub(folder, MASK_DIRS)
        if im_dir is None or gt_dir is None:
            raise DatasetError(f"{folder}: expected sub-folders im/ (images) and gt/ (masks) matched by file name")
        images, masks = _files_by_stem(im_dir), _files_by_stem(gt_dir)
        common = sorted(images.keys() & masks.keys())
        lonely = sorted(images.keys() - masks.keys())
        orphan = sorted(masks.keys() - images.keys())
        if lonely:
            log.warning("%s: %d image(s) without a mask left out: %s", folder, len(lonely), _listing(lonely))
        if orphan:
            log.warning("%s: %d mask(s) without an image left out: %s", folder, len(orphan), _listing(orphan))
        if not common:
            raise DatasetError(
                f"{folder}: no image in {im_dir.name}/ has a mask of the same name in {gt_dir.name}/ "
                f"({len(images)} images, {len(masks)} masks)"
            )
        pairs += [(images[s], masks[s]) for s in common]
    return pairs


@dataclass(frozen=True)
class Augment:
    """Official augmentations (spec §8.4); the defaults are the released recipe."""

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
            image, mask = image.rotate(angle, Image.BICUBIC), mask.rotate(angle, Image.BICUBIC)
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


def _synthesise_background(image: Image.Image, mask: Image.Image, rng) -> Image.Image:
    """fg·α + bg·(1−α) with a grey (p .4), near-foreground (p .4, hard negative) or random (p .2) colour."""
    fg = np.asarray(image, np.float32)
    alpha = np.asarray(mask, np.float32)[..., None] / 255
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


HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_mask(path) -> Image.Image:
    """A mask as an 8-bit 'L' image, or, when the file has more than 8 bits (16-bit PNG/TIFF, float
    TIFF), as an 'F' image of 0..255 floats: `convert("L")` would clip a 16-bit mask's soft edge to
    255. Scaled like the inference input: 16-bit by 65535, float files read as [0, 1]."""
    image = read_image(path)
    if image.mode not in HIGH_BIT_MODES:
        return image.convert("L")
    array = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        scale = 255.0 if array.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 1.0
    return Image.fromarray((array * scale).astype(np.float32))  # float32 -> mode "F"


class SegmentationDataset(torch.utils.data.Dataset):
    """Items are (index, (height, width)) from `SizedBatchSampler`; returns (image, mask, index)
    with the image ImageNet-normalised (3, h, w) and the mask (1, h, w) in [0, 1]."""

    def __init__(self, pairs, augment: Augment | None, seed: int = 0):
        self.pairs = list(pairs)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.warned_size = False

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, size: tuple[int, int]):
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path).convert("RGB")
        mask = read_mask(mask_path)
        if image.size != mask.size and not self.warned_size:
            self.warned_size = True
            _report(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]}, its image {image.size[0]}x{image.size[1]}: "
                    "it is stretched to the training size like its image (reported for the first such pair only)")
        h, w = size
        image, mask = image.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.BILINEAR)
        if self.augment is not None:
            image, mask = self.augment(image, mask, np.random.default_rng([self.seed, self.epoch, index]))
        x = to_rgb_tensor(image)
        y = torch.from_numpy(np.array(mask)).float().div(255).clamp(0, 1)[None]
        return normalise(x[None])[0], y

    def __getitem__(self, item):
        index, size = item
        for offset in range(len(self)):  # one bad file must not stop a long run: report it, use the next
            candidate = (index + offset) % len(self)
            try:
                x, y = self.load(candidate, size)
                return x, y, candidate
            except Exception as err:
                _report(f"skipping unreadable sample {self.pairs[candidate][0]}: {err}")
        raise DatasetError("no sample of the dataset could be read")


class SizedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of (index, size): one working size per batch (fixed, or random
    multiples of 32 in `dynamic` ranges), sharded over distributed ranks."""

    def __init__(self, length, batch_size, size=(1024, 1024), dynamic=None, seed=0, shuffle=True,
                 rank=0, world=1, drop_last=True):
        self.length, self.batch_size, self.size, self.dynamic = length, batch_size, size, dynamic
        self.seed, self.shuffle, self.rank, self.world, self.drop_last = seed, shuffle, rank, world, drop_last
        self.epoch = 0

    def _batches(self):
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 1 << 20]).permutation(self.length)
        full = self.length // self.batch_size * self.batch_size if self.drop_last and self.length >= self.batch_size else self.length
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
    images, masks, indices = zip(*items)
    return torch.stack(images), torch.stack(masks), torch.tensor(indices)
