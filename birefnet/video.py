"""Video: segment a stream of frames, read and write clips (PyAV, the `video` extra).

`segment_frames` takes any iterable of frames and yields masks one by one, so a long clip never
sits in memory; `temporal` turns on `temporal.TemporalSmoother`. Reading and writing use
PyAV (FFmpeg): any container and codec it decodes; mask videos as H.264 (VP9 for odd sizes, kept
exact), cut-outs with alpha as ProRes 4444 carrying the clip's sound (`clip_sound.ClipSound`).
"""

from __future__ import annotations

import itertools
import math
import struct
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .batching import AUTO, batch_size_for, check_batch_size
from .extras import require
from .files import atomic_path
from .guidance import segment_boxes
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
    boxes=(),
) -> Iterator[torch.Tensor]:
    """Masks (H, W) float32 in [0, 1] for `frames` (PIL, numpy or tensors), in order, one batch in
    memory at a time. temporal: 0 (off) to 1, the strength of the temporal stabilisation.
    batch_size: frames per forward, or "auto" (as many as the GPU's memory holds at the first frame's
    working size, up to 8; one on the CPU). with_frames: yield (frame, mask) pairs (for cut-outs of a stream).
    boxes: (x, y, w, h) in the frames' pixels: every frame's mask holds only the objects in them, each
    segmented as for an image (`guidance.segment_boxes`), 0 outside the boxes.
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
    options = dict(resolution=resolution, max_megapixels=max_megapixels, batch_size=batch_size)
    while chunk := list(itertools.islice(frames, batch_size)):
        if boxes:
            masks = [combined for combined, _ in segment_boxes(model, chunk, boxes, **options)]
        else:
            masks = segment(model, chunk, device=on if temporal else "cpu", **options)
        for frame, mask in zip(chunk, masks):
            if temporal:  # off, a frame need not be converted again
                mask = smoother(to_rgb_tensor(frame, on), mask).cpu()
            yield (frame, mask) if with_frames else mask


def _av():
    return require("av", "video")


# How players turn a frame for the display matrix its clip carries (phones store portrait clips
# sideways and say so there): the signs of (a, b, c, d), where a stored pixel (x, y) is shown at
# (a x + c y, b x + d y) with y pointing down, to the PIL transpose that does the same. FFmpeg's
# angles are counter-clockwise: PyAV's `frame.rotation` 90 is (0, -1, 1, 0), ROTATE_90.
TURNS = {
    (1, 0, 0, 1): None,
    (0, -1, 1, 0): Image.Transpose.ROTATE_90,
    (-1, 0, 0, -1): Image.Transpose.ROTATE_180,
    (0, 1, -1, 0): Image.Transpose.ROTATE_270,
    (-1, 0, 0, 1): Image.Transpose.FLIP_LEFT_RIGHT,
    (1, 0, 0, -1): Image.Transpose.FLIP_TOP_BOTTOM,
    (0, 1, 1, 0): Image.Transpose.TRANSPOSE,
    (0, -1, -1, 0): Image.Transpose.TRANSVERSE,
}
SIDEWAYS = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def display_turn(frame) -> Image.Transpose | None:
    """The transpose that shows `frame` (a PyAV VideoFrame) as players do, from its display matrix;
    None without one, or for an angle that is not a multiple of 90 degrees (left as stored)."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return None
    matrix = struct.unpack("=9i", bytes(side)[:36])
    abcd = np.array([matrix[i] for i in (0, 1, 3, 4)], dtype=float)
    signs = np.sign(abcd) * (np.abs(abcd) > np.abs(abcd).max() / 2)  # any scale; 45 degrees: no match
    return TURNS.get(tuple(int(sign) for sign in signs))


def reason(err: Exception) -> str:
    """What FFmpeg says went wrong, without its error number and the path the message already names."""
    said = getattr(err, "strerror", None) or str(err).strip()
    return said.splitlines()[0] if said else type(err).__name__


class VideoSource:
    """A clip opened for decoding: `fps`, `count` (frames, 0 when the container does not say),
    `size` (width, height), and `frames()` yielding PIL images, both as players show the clip
    (turned by its display rotation, so masks come out upright). `time_base` and `colours` are what
    a `VideoWriter` needs to write the clip's frames at their own times and in its colours. A file
    that cannot be decoded, or has no video stream, is a one-line ValueError here, before any frame
    is asked for."""

    def __init__(self, path):
        av = _av()
        self.path = Path(path)
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as err:
            raise ValueError(f"{path}: not a readable video ({reason(err)})") from None
        try:
            if not self.container.streams.video:
                raise ValueError(f"{path}: not a readable video (no video stream)")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
            self._decoded = decode(self.container, self.stream)
            try:  # the first frame carries the display matrix, and shows the clip decodes
                self._first = next(self._decoded, None)
            except av.error.FFmpegError as err:
                raise ValueError(f"{path}: not a readable video ({reason(err)})") from None
        except BaseException:
            self.container.close()
            raise
        self.fps = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.count = self.stream.frames or 0
        self.time_base = self.stream.time_base or 1 / Fraction(self.fps)
        first_pts = self._first.pts if self._first is not None else None
        self.start = (
            Fraction(first_pts) * (self._first.time_base or self.time_base) if first_pts is not None else Fraction(0)
        )
        self.turn = display_turn(self._first) if self._first is not None else None
        self.colours = colour_tags(self._first) if self._first is not None else UNTAGGED
        width, height = self.stream.codec_context.width, self.stream.codec_context.height
        self.size = (height, width) if self.turn in SIDEWAYS else (width, height)

    def frames(self) -> Iterator[Image.Image]:
        """Every frame, upright, turned as the first one is (one size for the whole clip): RGB, or RGBA
        where the clip has alpha (ProRes 4444, PNG or VP9 with alpha), which cut-outs keep as an image's.
        Each image's info["time"] is its presentation time after the first frame's, in seconds (a
        Fraction; None where the container stores none), and info["duration"] how long it is shown (None
        where the container does not say): a variable frame rate clip's times, which `VideoWriter.write`
        keeps, its last frame's duration included (so the written clip lasts as long as this one). Damage
        FFmpeg cannot decode past ends the clip with a ValueError naming the last good frame."""
        first, self._first = self._first, None  # not held once handed on
        decoded = itertools.chain([first] if first is not None else [], self._decoded)
        start = None
        for number in itertools.count():
            try:
                frame = next(decoded, None)
            except _av().error.FFmpegError as err:
                raise ValueError(f"{self.path}: damaged after frame {number} ({reason(err)})") from None
            if frame is None:
                return
            if any(component.is_alpha for component in frame.format.components):
                image = Image.fromarray(frame.to_ndarray(format="rgba"), "RGBA")
            else:
                image = frame.to_image()
            image = image.transpose(self.turn) if self.turn is not None else image
            if frame.pts is not None and start is None:
                start = frame.pts
            ticks = frame.time_base or self.time_base
            image.info["time"] = None if frame.pts is None else (frame.pts - start) * ticks
            image.info["duration"] = frame.duration * ticks if frame.duration else None
            yield image

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decode(container, stream) -> Iterator:
    """The stream's frames in presentation order. WebM's VP9 with alpha keeps its alpha in a side channel
    that only libvpx's decoder reads (FFmpeg's own VP9 decoder drops it), so such a clip is decoded by libvpx."""
    av = _av()
    if stream.metadata.get("alpha_mode") != "1" or stream.codec_context.name != "vp9":
        return container.decode(stream)
    if "libvpx-vp9" not in av.codecs_available:  # a PyAV built without libvpx: the colours, without alpha
        return container.decode(stream)
    decoder = av.CodecContext.create("libvpx-vp9", "r")
    decoder.thread_type = "AUTO"
    return (frame for packet in container.demux(stream) for frame in decoder.decode(packet))


# FFmpeg's colour tags (matrix, primaries, transfer): 2 is "unspecified", where players guess (BT.709 for HD)
UNTAGGED = (2, 2, 2)


def colour_tags(frame) -> tuple[int, int, int]:
    """(matrix, primaries, transfer) a clip's frames are tagged with: frames are read to RGB by the tagged
    matrix, and a cut-out video converts back by the same one and carries the same tags, so a player shows
    the cut-out's colours as it shows the clip's (an untagged clip's cut-out stays untagged: guessed alike)."""
    return (int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc))


def stored_frames(path) -> int:
    """How many frames a clip holds, without decoding any (the CLI's --skip-existing counts a clip's frame
    folder against it): from the header, or where the container does not say (Matroska, WebM) by counting
    the video stream's packets. 0 for a file that cannot be read or holds no video."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            stream = container.streams.video[0]
            return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError:
        return 0


def mask_encoding(width: int, height: int) -> tuple[str, str, dict]:
    """(encoder, pixel format, options) of a mask video at the clip's exact size (compositing needs it).
    Even sizes: H.264 4:2:0, which every player plays. H.264 4:2:0 cannot code an odd width or height
    (its frame cropping moves in 2-pixel steps; libx264 refuses, even with crop-rect), so odd sizes are
    VP9 4:2:0 in the same .mp4: exact size, 5x faster to encode than the H.264 4:4:4 it replaces, and
    played by browsers and VLC, where H.264 4:4:4 plays in FFmpeg-based players only; neither plays in
    QuickTime. A grey mask loses nothing to 4:2:0 (its colour planes are flat). H.264 without B-frames:
    with them a variable frame rate clip's decode times end the MP4 before its last frames (browsers stop there)."""
    if width % 2 == 0 and height % 2 == 0:
        return "libx264", "yuv420p", {"crf": "12", "bf": "0"}
    if "libvpx-vp9" not in _av().codecs_available:  # a PyAV built without libvpx: the exact size still
        return "libx264", "yuv444p", {"crf": "12", "bf": "0"}
    return "libvpx-vp9", "yuv420p", {"crf": "12", "b": "0", "row-mt": "1", "cpu-used": "4"}


def odd_size_note(path, size: tuple[int, int]) -> str | None:
    """The trade-off an odd-sized clip's mask video makes (`mask_encoding`), in one line; None for even sizes."""
    width, height = size
    if width % 2 == 0 and height % 2 == 0:
        return None
    codec = "VP9" if mask_encoding(width, height)[0] == "libvpx-vp9" else "H.264 4:4:4"
    return (
        f"{path} is {width}x{height}: H.264 as every player plays it needs even sizes, so its mask video is "
        f"{codec} at the exact size (browsers and VLC play it, QuickTime does not)"
    )


class VideoWriter:
    """Writes frames to `path` atomically (a temporary name until `close`): "mask" frames (H, W)
    as H.264 (`mask_encoding`), or "rgba" frames (H, W, 4) uint8 as ProRes 4444 with alpha (.mov). An existing `path`
    is refused unless `replace` (the CLI's --overwrite). `time_base` and `colours` (a `VideoSource`'s) keep
    the clip's frame times exact and its colours as players show them; frames written without a time
    follow each other at `fps`. `sound` (a cut-out's: `clip_sound.ClipSound`) is written beside the frames,
    each packet before the first frame after its time; at `close` the rest, to the clip's end, unless
    `end_sound_with_frames` (the frames ended early)."""

    def __init__(
        self,
        path,
        fps,
        size: tuple[int, int],
        kind: str,
        replace: bool = False,
        *,
        time_base: Fraction | None = None,
        colours: tuple[int, int, int] = UNTAGGED,
        sound=None,
    ):
        self.av = av = _av()
        self.path, self.kind = Path(path), kind
        if self.path.exists() and not replace:
            raise FileExistsError(
                f"{self.path} exists; choose another --out, or add --overwrite to replace earlier outputs"
            )
        self._atomic = atomic_path(self.path, replace)
        self._tmp = self._atomic.__enter__()
        self.sound, self._sound_end = sound, None
        # written in time order already: FFmpeg need not hold 10 s of frames where the sound starts late or ends early
        self.container = av.open(
            str(self._tmp),
            mode="w",
            format="mov" if kind == "rgba" else "mp4",
            container_options={"max_interleave_delta": "500000"},
        )
        width, height = size
        self.fps = Fraction(fps).limit_denominator(100000)
        if kind == "rgba":
            codec, self.pix_fmt, options = "prores_ks", "yuva444p10le", {"profile": "4444"}
        else:
            codec, self.pix_fmt, options = mask_encoding(width, height)
        self.stream = self.container.add_stream(codec, rate=self.fps)
        self.stream.pix_fmt, self.stream.options = self.pix_fmt, options
        self.stream.width, self.stream.height = width, height
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps
        self.stream.codec_context.time_base = self.stream.time_base = self.time_base
        self.colours = colours if kind == "rgba" else UNTAGGED  # a grey mask has no colours to get wrong
        self._written, self._last, self._shown_for = 0, None, None
        self._durations: dict[int, int] = {}  # pts -> duration of the frames the encoder still holds
        if sound is not None:
            sound.add_to(self.container)

    def write(self, array: np.ndarray, time: Fraction | None = None, duration: Fraction | None = None) -> None:
        """One frame, shown from `time` (seconds after the first frame; None: 1/fps after the one before)
        for `duration` seconds (the clip's frame's; None: until the next frame, the last one for 1/fps). The
        last frame's duration sets where the video ends: a variable frame rate clip's is its own, not 1/fps."""
        if self.kind == "rgba":
            frame = self.av.VideoFrame.from_ndarray(array, format="rgba")
            frame = frame.reformat(format=self.pix_fmt, dst_colorspace=self.colours[0], dst_color_range=1)
            frame.colorspace, frame.color_primaries, frame.color_trc = self.colours  # the encoder tags what it is given
        else:
            frame = self.av.VideoFrame.from_ndarray(np.repeat(array[..., None], 3, axis=2), format="rgb24")
        pts = round((time if time is not None else self._written / self.fps) / self.time_base)
        if self._last is not None and pts <= self._last:  # times must grow: a damaged or untimed frame goes next
            pts = self._last + max(1, round(1 / (self.fps * self.time_base)))
        frame.pts, frame.time_base = pts, self.time_base
        self._written, self._last, self._shown_for = self._written + 1, pts, duration
        if duration:  # the encoders here leave a packet's duration 0: the muxer would take 1/fps
            self._durations[pts] = max(1, round(duration / self.time_base))
        self._mux_sound(until=pts * self.time_base)
        self._mux_frames(self.stream.encode(frame))

    def _mux_frames(self, packets) -> None:
        for packet in packets:
            packet.duration = self._durations.pop(packet.pts, packet.duration)
            self.container.mux(packet)

    def end_sound_with_frames(self) -> None:
        """The clip's frames ended early (damage): its sound stops with the last frame written (packets
        that start after that frame's end are left out), not at the clip's end."""
        if self._last is not None:
            self._sound_end = self._last * self.time_base + (self._shown_for or 1 / self.fps)

    def _mux_sound(self, until: Fraction | None) -> None:
        if self.sound is not None:
            for packet in self.sound.packets(until):
                self.container.mux(packet)

    def close(self) -> None:
        try:
            self._mux_frames(self.stream.encode())
            self._mux_sound(until=self._sound_end)
            self.container.close()
        except BaseException as err:  # a full disk: nothing left behind, as from a failed write
            self.__exit__(type(err), err, err.__traceback__)
            raise
        self._close_sound()
        self._atomic.__exit__(None, None, None)  # the temporary file becomes `path`

    def _close_sound(self) -> None:
        if self.sound is not None:
            self.sound.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:  # a failed write leaves nothing behind
            try:
                self.container.close()
            finally:
                self._close_sound()
                self._atomic.__exit__(kind, error, traceback)
