"""`birefnet segment` on clips: OUT/<clip>/000001.png ... frame by frame, optionally the mask and
cut-out as videos, batched and temporally steadied by `birefnet.video`."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..files import (
    CUTOUT,
    check_outputs,
    kept_note,
    output_paths,
    remove_killed_writes,
    remove_unwritten,
    save_image,
    unfinished,
)
from ..guidance import check_boxes_inside
from ..inference import cutout, mask_to_image
from ..write_behind import WriteBehind
from .flags import load_for


def segment_videos(args, videos: list[Path], others: list[str]) -> int:
    """Each clip as a stream: OUT/<clip>/000001.png ...; --cutout adds OUT/<clip>/000001_cutout.png ...
    (RGBA), or with --video OUT/<clip>_cutout.mov (ProRes 4444, alpha, the clip's sound) beside OUT/<clip>_mask.mp4;
    frames decoded and written one batch at a time. --box guides every frame (the masks hold the boxes'
    objects together: no per-object files, which would multiply a clip's outputs; one run per box gives
    them). A clip that cannot be read, or that a box lies outside of, is skipped with one line and the
    others go on (exit 1), as such an image is. --skip-existing leaves the clips that are
    done (`clip_plan`) undecoded, and loads no model when all are."""
    from ..video import VideoSource, odd_size_note

    started = time.time()
    if others:
        raise ValueError("give videos and images in separate runs (videos: " + ", ".join(map(str, videos)) + ")")
    if args.highres:
        raise ValueError("--highres is for images; for video use --resolution / --max-megapixels")
    out_dir = Path(args.out)
    names = clip_names(videos)
    renamed = [name for path, name in zip(videos, names) if name != path.stem]
    if renamed:
        print(
            f"birefnet: {len(renamed)} clip(s) share a name with another input; their outputs keep the "
            f"extension in the name (e.g. {renamed[0]}/, {renamed[0]}_mask.mp4)",
            file=sys.stderr,
        )
    check_video_outputs(videos, names, out_dir, args)
    folders = {out_dir, *(out_dir / name for name in names)}  # every clip's, done before or not
    total, kept = len(videos), 0
    if args.skip_existing:
        plans = [clip_plan(path, name, out_dir, args) for path, name in zip(videos, names)]
        kept, _, (videos, names) = unfinished(plans, videos, names)
    model = load_for(args, out_dir) if videos else None  # all done already: no model to load
    if model is not None:
        print(model.info.describe(), file=sys.stderr)
    skipped, said = 0, set()  # the notes given once a run: "odd size", "sound"
    for path, name in zip(videos, names):
        try:
            source = VideoSource(path)
        except ValueError as err:  # not a video, damaged, no video stream: said, and the next clip goes on
            skipped += 1
            print(f"birefnet: skipped {err}", file=sys.stderr)
            continue
        try:  # a box outside the frame: said before any frame is segmented, as for an image
            check_boxes_inside(args.box or (), source.size[1], source.size[0])
        except ValueError as err:
            source.close()
            skipped += 1
            print(f"birefnet: skipped {path}: {err}", file=sys.stderr)
            continue
        note = odd_size_note(path, source.size) if args.video and "odd size" not in said else None
        if note:
            said.add("odd size")
            print(f"birefnet: {note}; the PNG masks in {out_dir / name} are the same frames", file=sys.stderr)
        with source:
            damage = segment_clip(model, source, name, out_dir, args, said)
        if damage is not None:  # the frames before it are written, whole; the rest cannot be read
            skipped += 1
            print(f"birefnet: skipped the rest of {damage}", file=sys.stderr)
    remove_killed_writes(folders, before=started)  # an earlier run killed while writing left them
    if skipped or args.skip_existing:
        print(
            f"birefnet: segmented {len(videos) - skipped} of {total} clip(s) into {out_dir}"
            + (f", {skipped} skipped or cut short (said above)" if skipped else "")
            + (kept_note(kept, "clip(s)") if args.skip_existing else ""),
            file=sys.stderr,
        )
    return 1 if skipped else 0


def clip_plan(path: Path, name: str, out_dir: Path, args) -> list[Path]:
    """--skip-existing: the outputs whose presence marks a clip done (`files.unfinished`). With --video its
    videos: they are renamed into place after all the clip's frame PNGs are written, so they stand for the
    frames too. Frames only: every frame file, FOLDER/000001.png to the clip's stored frame count
    (`video.stored_frames`, nothing decoded); none when it cannot be counted (the clip is then done again)."""
    from ..video import stored_frames

    if args.video:
        return clip_videos(out_dir, name, args)
    folder = out_dir / name
    return [frame for number in range(1, stored_frames(path) + 1) for frame in frame_paths(folder, number, args.cutout)]


def segment_clip(model, source, name: str, out_dir: Path, args, said: set) -> ValueError | None:
    """One opened clip to OUT/<name>/000001.png ... (and its videos), said in one line when done; returns
    the damage that ended it early, if any (what came before is written, videos included, the cut-out
    video's sound up to its last frame). With --skip-existing the clip is segmented whole (temporal
    stability needs the frames before) and only its missing files are written: existing frames and videos
    are kept as they are. `said`: the notes this run gave already (each is given once)."""
    from tqdm import tqdm

    from ..video import VideoWriter, segment_frames

    folder, keep = out_dir / name, args.skip_existing
    missing = [path for path in clip_videos(out_dir, name, args) if not (keep and path.exists())]
    with contextlib.ExitStack() as outputs:
        writers = [  # (mask video, cut-out video), each None when not written
            outputs.enter_context(
                VideoWriter(
                    path,
                    source.fps,
                    source.size,
                    kind,
                    replace=args.overwrite,
                    time_base=source.time_base,
                    colours=source.colours,
                    sound=clip_sound(source, said) if kind == "rgba" else None,
                )
            )
            if path in missing
            else None
            for path, kind in zip(video_paths(out_dir, name), ("mask", "rgba"))
        ]
        bar = tqdm(total=source.count or None, unit="frame", disable=args.quiet, desc=source.path.name)
        number, written, damage = 0, 0, []
        pairs = segment_frames(
            model,
            readable_part(source.frames(), damage),
            temporal=args.temporal,
            resolution=args.resolution,
            max_megapixels=args.max_megapixels,
            batch_size=args.batch_size,
            with_frames=True,
            boxes=args.box or (),
        )
        # PNGs saved by a few threads, video frames encoded by one in order, all behind the model
        png_cutouts = args.cutout and not args.video  # without --video: an RGBA PNG sequence beside the masks
        with WriteBehind() as pictures, WriteBehind(workers=1) as encoder:
            for number, (frame, mask) in enumerate(pairs, start=1):
                grey = mask_to_image(mask)  # once, for the PNG and the video
                planned = frame_paths(folder, number, png_cutouts)
                paths = [path for path in planned if not (keep and path.exists())]
                if paths:
                    pictures.submit(save_frame, frame, mask, grey, paths, args.overwrite)
                written += planned[0] in paths
                if missing:
                    encoder.submit(encode_frame, writers, frame, mask, grey)
                bar.update(1)
        bar.close()
        for writer in writers:
            if writer is not None and damage:
                writer.end_sound_with_frames()
    stopped = next((w.sound.stopped for w in writers if w is not None and w.sound is not None), None)
    if stopped:
        print(
            f"birefnet: {source.path}: its sound is damaged; the cut-out video's ends there ({stopped})",
            file=sys.stderr,
        )
    if args.overwrite:
        remove_earlier_frames(folder, number, cutouts=png_cutouts)
    print(
        f"birefnet: {source.path}: wrote {written} mask(s) to {folder} at {float(source.fps):.3g} fps"
        + (f" ({number - written} were there already)" if written < number else "")
        + "".join(f", {path.name}" for path in missing),
        file=sys.stderr,
    )
    return damage[0] if damage else None


def clip_sound(source, said: set):
    """The clip's sound for its cut-out video (`clip_sound.ClipSound`), or None: a silent clip, or a sound that
    can be neither copied nor converted, said once a run (the video is written without it)."""
    try:
        from ..clip_sound import ClipSound

        return ClipSound.of(source)
    except ValueError as err:
        if "sound" not in said:
            said.add("sound")
            print(f"birefnet: {err}; its cut-out video is written without sound", file=sys.stderr)
        return None


def readable_part(frames, damage: list):
    """`frames` up to damage in the clip, which goes into `damage` instead of stopping the run."""
    try:
        yield from frames
    except ValueError as err:
        damage.append(err)


def frame_paths(folder: Path, number: int, with_cutout: bool) -> list[Path]:
    """Frame `number`'s mask FOLDER/000001.png and, with cut-outs, FOLDER/000001_cutout.png: named as
    `files.output_paths` names an image's (the frame number is the stem), so one rule finds stale ones."""
    return [folder / f"{number:06d}.png", *([folder / f"{number:06d}{CUTOUT}.png"] if with_cutout else [])]


def save_frame(frame, mask, grey, paths: list[Path], replace: bool) -> None:
    """A clip's frame files among `frame_paths`: the mask FOLDER/000001.png (as `grey`), its RGBA cut-out
    FOLDER/000001_cutout.png."""
    for path in paths:
        save_image(cutout(frame, mask) if path.stem.endswith(CUTOUT) else grey, path, replace=replace)


def encode_frame(writers, frame, mask, grey) -> None:
    """One frame into the mask video (`grey`) and the cut-out video, those of the two `writers` there are,
    at the frame's own time in the clip and for its duration (`VideoSource.frames`)."""
    mask_video, cutout_video = writers
    shown_at, shown_for = frame.info.get("time"), frame.info.get("duration")
    if mask_video is not None:
        mask_video.write(np.asarray(grey), shown_at, shown_for)
    if cutout_video is not None:
        cutout_video.write(np.asarray(cutout(frame, mask)), shown_at, shown_for)


def remove_earlier_frames(folder: Path, count: int, cutouts: bool) -> None:
    """After --overwrite: the frames an earlier run left in `folder` beyond this clip's `count` (a longer
    clip), and its cut-out frames when this run wrote none, would pass for this run's; removed (only
    frame names: the user's own files in the folder stay)."""
    written = {path for number in range(1, count + 1) for path in frame_paths(folder, number, cutouts)}
    remove_unwritten(folder, lambda stem: re.fullmatch(r"\d{6}", stem) is not None, written, objects=False)


def clip_names(videos: list[Path]) -> list[str]:
    """The name each clip's outputs start with (OUT/<name>/, <name>_mask.mp4), chosen for all clips
    before any is processed, as images' are (`files.output_paths`): the stem, or where two clips share
    one (`clip.mp4` and `clip.mov`, `a/clip.mp4` and `b/clip.mp4`) the extension kept (`clip_mp4`) and
    a counter after it, so no clip writes over another's outputs."""
    return [mask.stem for mask, *_ in output_paths([Path(path.name) for path in videos], cutouts=False)]


def check_video_outputs(videos: list[Path], names: list[str], out_dir: Path, args) -> None:
    """Before the model loads: no two clips' outputs may share a path (`a_mask.mp4.mp4`'s frame folder
    is `a.mp4`'s mask video), each clip's frame folder must be empty and its videos absent (unless
    --overwrite or --skip-existing), and no output may land on an input clip (ever)."""
    owner: dict[str, int] = {}
    for number, (path, name) in enumerate(zip(videos, names)):
        for out in [out_dir / name, *clip_videos(out_dir, name, args)]:
            first = owner.setdefault(str(out).lower(), number)
            if first != number:
                raise ValueError(f"{videos[first]} and {path} would both write {out}; rename one of them")
        folder = out_dir / name
        if not (args.overwrite or args.skip_existing) and folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} already holds files; choose another --out, or add --overwrite to replace earlier outputs"
            )
    clips = [out for name in names for out in clip_videos(out_dir, name, args)]
    check_outputs(clips, videos, args.overwrite or args.skip_existing)  # --skip-existing writes only missing ones


def clip_videos(out_dir: Path, name: str, args) -> list[Path]:
    """The videos a clip named `name` writes beside its frame folder: with --video its mask video, and
    with --cutout too its cut-out video."""
    mask_video, cutout_video = video_paths(out_dir, name)
    return ([mask_video] if args.video else []) + ([cutout_video] if args.video and args.cutout else [])


def video_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    """The names of a clip's mask video and cut-out video, beside its frame folder (written or not)."""
    return out_dir / f"{name}_mask.mp4", out_dir / f"{name}_cutout.mov"
