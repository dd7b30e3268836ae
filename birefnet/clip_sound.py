"""A clip's sound carried into its cut-out video (`ClipSound`): copied where a .mov takes the codec,
else converted to AAC, and written beside the frames of its time by `video.VideoWriter`."""

from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .extras import require
from .video import VideoSource, reason


def _av():
    return require("av", "video")


def mov_takes(stream) -> bool:
    """Whether FFmpeg's .mov muxer stores `stream`'s codec as it is (AAC, MP3, PCM, ALAC, AC-3, ...; not
    Opus, Vorbis or FLAC): asked of the muxer itself, by writing a header in memory."""
    av = _av()
    try:
        with av.open(io.BytesIO(), mode="w", format="mov") as probe:
            probe.add_stream_from_template(stream)
            probe.start_encoding()
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def skipped_at_start(packet) -> int:
    """The samples a decoder drops from `packet`'s start: an encoder's delay (AAC's 1024 or 2112) that the
    clip's edit list hides."""
    if not packet.has_sidedata("skip_samples"):
        return 0
    return int.from_bytes(bytes(packet.get_sidedata("skip_samples"))[:4], "little")


def aac_settings(stream) -> tuple[int, str]:
    """(sample rate, layout) of the AAC a sound is converted to: its own where AAC has them, else 48 kHz
    or stereo."""
    av = _av()
    rate = stream.rate if stream.rate in (av.Codec("aac", "w").audio_rates or ()) else 48000
    try:  # the encoder refuses a layout it has no channel map for (2.1, 6.1, ...)
        context = av.CodecContext.create("aac", "w")
        context.sample_rate, context.layout, context.format = rate, stream.layout, "fltp"
        context.open()
    except (av.error.FFmpegError, ValueError):
        return rate, "stereo"
    return rate, stream.layout.name


class ClipSound:
    """A clip's first audio stream, carried into its cut-out video. Read by a demuxer of its own over the
    clip, so `VideoWriter.write` puts each packet in beside the frame of its time (memory stays flat over a
    long clip, where FFmpeg would hold every frame to interleave sound added at the end), and timed from
    the clip's first frame (`start`, seconds in the clip), so sound that starts later or earlier than the
    picture keeps its place (before the first frame it is cut by the .mov's edit list).

    Packets are copied as they are where a .mov takes the codec (`mov_takes`: AAC, MP3, PCM, ALAC, AC-3,
    ...), else (Opus, Vorbis, FLAC) decoded and encoded as AAC, its samples counted from its first, with
    silence from the first frame to a sound that starts later. One exception to copying: a sound that
    starts after the first frame and whose first samples the decoder drops (`skipped_at_start`) is
    converted too, since FFmpeg's .mov muxer would play that encoder delay, the sound that much early.
    A sound that can be neither is a one-line ValueError here; damage in it ends it (`stopped` says why)."""

    @classmethod
    def of(cls, source: VideoSource) -> ClipSound | None:
        """An opened clip's first audio stream, timed from its first frame; None for a silent clip."""
        return cls(source.path, source.start) if source.container.streams.audio else None

    def __init__(self, path, start: Fraction):
        av = _av()
        self.path, self.start, self.stopped, self.out = Path(path), Fraction(start), None, None
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as err:
            raise ValueError(f"{path}: its sound cannot be read ({reason(err)})") from None
        try:
            self.stream = self.container.streams.audio[0]
            self._read = self._demux()
            first = next(self._read, None)
            if first is None:
                raise ValueError(f"{path}: its sound stream holds no sound ({self.stopped or 'no packets'})")
            self._read = itertools.chain([first], self._read)
            late = first.pts is not None and first.pts * first.time_base > self.start
            self.copied = mov_takes(self.stream) and not (late and skipped_at_start(first))
            context = self.stream.codec_context
            if not self.copied and (context is None or "aac" not in av.codecs_available):
                raise ValueError(
                    f"{path}: its sound ({context.name if context else 'unknown codec'}) can be neither stored "
                    "in a .mov as it is nor converted to AAC by this PyAV (no decoder, or no AAC encoder)"
                )
        except BaseException:
            self.container.close()
            raise
        self._packets, self._ahead = None, None

    def add_to(self, container) -> None:
        """The sound's stream in `container`, before its first packet is written."""
        if self.copied:
            self.out = container.add_stream_from_template(self.stream)
            self._packets = self._copied()
        else:
            rate, layout = aac_settings(self.stream)
            self.out = container.add_stream("aac", rate=rate, layout=layout)
            self.out.bit_rate = 96000 * self.out.codec_context.channels
            self._packets = self._encoded()

    def packets(self, until: Fraction | None = None) -> Iterator:
        """The next packets, in order, that start before `until` (seconds after the first frame; None: all)."""
        while True:
            if self._ahead is None:
                self._ahead = next(self._packets, None)
                if self._ahead is None:
                    return
            packet = self._ahead
            if until is not None and packet.pts is not None and packet.pts * packet.time_base >= until:
                return
            self._ahead = None
            yield packet

    def _demux(self) -> Iterator:
        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    yield packet
        except _av().error.FFmpegError as err:
            self.stopped = reason(err)

    def _copied(self) -> Iterator:
        shift = round(self.start / self.stream.time_base)  # the first frame's time in the sound's units
        for packet in self._read:
            if packet.pts is not None:
                packet.pts -= shift
            packet.dts = packet.pts if packet.dts is None else packet.dts - shift
            packet.stream = self.out
            yield packet

    def _encoded(self) -> Iterator:
        """AAC packets of the decoded sound. Its samples are counted on from its first frame's time (frame
        times are rounded to the container's units, milliseconds in WebM), after silence from the first
        frame of the picture to a sound that starts later (FFmpeg's .mov muxer plays the AAC encoder's
        delay where a track starts late; from the first frame, its edit list hides it). Damage ends it
        where it is: the encoder still gives the samples it holds (AAC's delay: 20-50 ms more)."""
        av, decoder, written = _av(), self.stream.codec_context, None
        try:
            for packet in itertools.chain(self._read, [None]):
                for frame in decoder.decode(packet):
                    rate = frame.sample_rate
                    if written is None:
                        time = Fraction(frame.pts) * frame.time_base if frame.pts is not None else self.start
                        written = round((time - self.start) * rate)
                        if written > 0:
                            yield from self._silence(frame, written)
                    frame.pts, frame.time_base = written, Fraction(1, rate)
                    written += frame.samples
                    yield from self.out.encode(frame)
        except (av.error.FFmpegError, ValueError) as err:  # ValueError: the sound changed its format midway
            self.stopped = reason(err)
        yield from self.out.encode(None)

    def _silence(self, like, end: int) -> Iterator:
        """AAC packets of silence from the first frame to sample `end`, a second at a time, in `like`'s format."""
        av, rate, planar = _av(), like.sample_rate, like.format.is_planar
        channels = len(like.layout.channels)
        for first in range(0, end, rate):
            samples = min(rate, end - first)
            shape = (channels, samples) if planar else (1, samples * channels)
            silence = av.AudioFrame.from_ndarray(
                np.zeros(shape, av.audio.frame.format_dtypes[like.format.name]),
                format=like.format.name,
                layout=like.layout.name,
            )
            silence.sample_rate, silence.pts, silence.time_base = rate, first, Fraction(1, rate)
            yield from self.out.encode(silence)

    def close(self) -> None:
        self.container.close()
