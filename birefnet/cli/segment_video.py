"""`birefnet segment` on clips: OUT/<clip>/000001.png ... frame by frame, optionally the mask and
cut-out as videos, batched and temporally steadied by `birefnet.video`."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import numpy as np

from ..files import check_outputs, save_image
from ..inference import cutout, mask_to_image
from ..write_behind import WriteBehind
from .flags import load_for


def segment_videos(args, videos: list[Path], others: list[str]) -> int:
    """Each clip as a stream: OUT/<clip>/000001.png ...; --cutout adds OUT/<clip>/000001_cutout.png ...
    (RGBA), or with --video OUT/<clip>_cutout.mov (ProRes 4444, alpha) beside OUT/<clip>_mask.mp4;
    frames decoded and written one batch at a time."""
    from tqdm import tqdm

    from ..video import VideoSource, VideoWriter, segment_frames

    if others:
        raise ValueError("give videos and images in separate runs (videos: " + ", ".join(map(str, videos)) + ")")
    if args.highres or args.box:
        raise ValueError("--highres and --box are for images; for video use --resolution / --max-megapixels")
    out_dir = Path(args.out)
    check_video_outputs(videos, out_dir, args)
    model = load_for(args, out_dir)
    print(model.info.describe(), file=sys.stderr)
    for path in videos:
        with VideoSource(path) as source, contextlib.ExitStack() as outputs:
            folder = out_dir / path.stem
            writers = []
            if args.video:
                writers.append(
                    outputs.enter_context(
                        VideoWriter(
                            out_dir / f"{path.stem}_mask.mp4", source.fps, source.size, "mask", replace=args.overwrite
                        )
                    )
                )
                if args.cutout:
                    writers.append(
                        outputs.enter_context(
                            VideoWriter(
                                out_dir / f"{path.stem}_cutout.mov",
                                source.fps,
                                source.size,
                                "rgba",
                                replace=args.overwrite,
                            )
                        )
                    )
            bar = tqdm(total=source.count or None, unit="frame", disable=args.quiet, desc=path.name)
            number = 0
            pairs = segment_frames(
                model,
                source.frames(),
                temporal=args.temporal,
                resolution=args.resolution,
                max_megapixels=args.max_megapixels,
                batch_size=args.batch_size,
                with_frames=True,
            )
            # PNGs saved by a few threads, video frames encoded by one in order, all behind the model
            png_cutouts = args.cutout and not args.video  # without --video: an RGBA PNG sequence beside the masks
            with WriteBehind() as pictures, WriteBehind(workers=1) as encoder:
                for number, (frame, mask) in enumerate(pairs, start=1):
                    grey = mask_to_image(mask)  # once, for the PNG and the video
                    pictures.submit(save_frame, frame, mask, grey, folder, number, png_cutouts, args.overwrite)
                    if args.video:
                        encoder.submit(encode_frame, writers, frame, mask, grey)
                    bar.update(1)
            bar.close()
        if args.overwrite:
            remove_earlier_frames(folder, number, cutouts=png_cutouts)
        print(
            f"birefnet: {path.name}: wrote {number} mask(s) to {folder} at {float(source.fps):.3g} fps"
            + (f", {path.stem}_mask.mp4" if args.video else "")
            + (f", {path.stem}_cutout.mov" if args.video and args.cutout else ""),
            file=sys.stderr,
        )
    return 0


def save_frame(frame, mask, grey, folder: Path, number: int, with_cutout: bool, replace: bool) -> None:
    """A clip's frame `number` as FOLDER/000001.png (the mask as `grey`), with its RGBA cut-out beside it."""
    save_image(grey, folder / f"{number:06d}.png", replace=replace)
    if with_cutout:
        save_image(cutout(frame, mask), folder / f"{number:06d}_cutout.png", replace=replace)


def encode_frame(writers, frame, mask, grey) -> None:
    """One frame into the mask video (`grey`) and, when there is a second writer, the cut-out video."""
    writers[0].write(np.asarray(grey))
    if len(writers) > 1:
        writers[1].write(np.asarray(cutout(frame, mask)))


def remove_earlier_frames(folder: Path, count: int, cutouts: bool) -> None:
    """After --overwrite: the frames an earlier run left in `folder` beyond this clip's `count` (a longer
    clip), and its cut-out frames when this run wrote none, would pass for this run's; removed."""
    for path in folder.glob("*.png") if folder.is_dir() else ():
        match = re.fullmatch(r"(\d{6})(_cutout)?\.png", path.name)
        if match and (int(match[1]) > count or (match[2] and not cutouts)):
            path.unlink()


def check_video_outputs(videos: list[Path], out_dir: Path, args) -> None:
    """Before the model loads: each clip's frame folder must be empty and its videos absent (unless
    --overwrite), and no output may land on an input clip (ever)."""
    for path in videos:
        folder = out_dir / path.stem
        if not args.overwrite and folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} already holds files; choose another --out, or add --overwrite to replace earlier outputs"
            )
    clips = [out_dir / f"{path.stem}_mask.mp4" for path in videos] if args.video else []
    clips += [out_dir / f"{path.stem}_cutout.mov" for path in videos] if args.video and args.cutout else []
    check_outputs(clips, videos, args.overwrite)
