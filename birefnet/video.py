"""Video: segment a stream of frames, read and write clips (PyAV, the `video` extra).

`segment_frames` takes any iterable of frames and yields masks one by one, so a long clip never
sits in memory; `temporal` turns on `temporal.TemporalSmoother`. Reading and writing use
PyAV (FFmpeg): any container and codec it decodes; mask videos as H.264, cut-outs with alpha
as ProRes 4444.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .batching import AUTO, batch_size_for, check_batch_size
from .extras import require
from .files import atomic_path
from .inference import image_tensor, model_device, model_working_size, segment, to_rgb_tensor
from .temporal import TemporalSmoother

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def segment_frames(
    model,
    frames: Iterable,
    *,
    temporal: float = 0.0,
    resolution=None,
    max_megapixels: float | None = None,
    batch_size: int | str = 1,
    with_frames: bool = False,
) -> Iterator[torch.Tensor]:
    """Masks (H, W) float32 in [0, 1] for `frames` (PIL, numpy or tensors), in order, one batch in
    memory at a time. temporal: 0 (off) to 1, the strength of the temporal stabilisation.
    batch_size: frames per forward, or "auto" (as many as the GPU's memory holds at the first frame's
    working size, up to 8; one on the CPU). with_frames: yield (frame, mask) pairs (for cut-outs of a stream).
    Masks come on the CPU; with temporal stability the frames are compared on the model's device."""
    smoother = TemporalSmoother(temporal)
    frames = iter(frames)
    if check_batch_size(batch_size) == AUTO:
        first = next(frames, None)
        if first is None:
            return
        height, width = image_tensor(first).shape[1:]
        batch_size = batch_size_for(
            AUTO, model, math.prod(model_working_size(model, height, width, resolution, max_megapixels))
        )
        frames = itertools.chain([first], frames)
    on = model_device(model)  # the smoother compares frames there, beside the masks
    while chunk := list(itertools.islice(frames, batch_size)):
        masks = segment(
            model,
            chunk,
            resolution=resolution,
            max_megapixels=max_megapixels,
            batch_size=batch_size,
            device=on if temporal else "cpu",
        )
        for frame, mask in zip(chunk, masks):
            if temporal:  # off, a frame need not be converted again
                mask = smoother(to_rgb_tensor(frame, on), mask).cpu()
            yield (frame, mask) if with_frames else mask


def _av():
    return require("av", "video")


class VideoSource:
    """A clip opened for decoding: `fps`, `count` (frames, 0 when the container does not say),
    `size` (width, height), and `frames()` yielding RGB PIL images."""

    def __init__(self, path):
        av = _av()
        self.path = Path(path)
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as err:
            raise ValueError(
                f"{path}: not a readable video ({str(err).splitlines()[0] if str(err) else 'no video stream'})"
            ) from None
        self.stream.thread_type = "AUTO"
        self.fps = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.count = self.stream.frames or 0
        self.size = (self.stream.codec_context.width, self.stream.codec_context.height)

    def frames(self) -> Iterator[Image.Image]:
        for frame in self.container.decode(self.stream):
            yield frame.to_image()

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoWriter:
    """Writes frames to `path` atomically (a temporary name until `close`): "mask" frames (H, W)
    as H.264, or "rgba" frames (H, W, 4) uint8 as ProRes 4444 with alpha (.mov). An existing `path`
    is refused unless `replace` (the CLI's --overwrite)."""

    def __init__(self, path, fps, size: tuple[int, int], kind: str, replace: bool = False):
        self.av = av = _av()
        self.path, self.kind = Path(path), kind
        if self.path.exists() and not replace:
            raise FileExistsError(
                f"{self.path} exists; choose another --out, or add --overwrite to replace earlier outputs"
            )
        self._atomic = atomic_path(self.path, replace)
        self._tmp = self._atomic.__enter__()
        self.container = av.open(str(self._tmp), mode="w", format="mov" if kind == "rgba" else "mp4")
        width, height = size
        if kind == "rgba":
            self.stream = self.container.add_stream("prores_ks", rate=Fraction(fps).limit_denominator(100000))
            self.stream.pix_fmt, self.stream.options = "yuva444p10le", {"profile": "4444"}
        else:
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
            even = width % 2 == 0 and height % 2 == 0
            self.stream.pix_fmt, self.stream.options = ("yuv420p" if even else "yuv444p"), {"crf": "12"}
        self.stream.width, self.stream.height = width, height

    def write(self, array: np.ndarray) -> None:
        if self.kind == "rgba":
            frame = self.av.VideoFrame.from_ndarray(array, format="rgba")
        else:
            frame = self.av.VideoFrame.from_ndarray(np.repeat(array[..., None], 3, axis=2), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self._atomic.__exit__(None, None, None)  # the temporary file becomes `path`

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:  # a failed write leaves nothing behind
            self.container.close()
            self._atomic.__exit__(kind, error, traceback)
