"""`birefnet` command line: segment images into mask PNGs (and RGBA cut-outs), inspect weights,
list and download the known checkpoints, export to ONNX / OpenVINO."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

from . import backbones
from .batching import AUTO, AUTO_MOST, check_batch_size
from .compiled import compile_model
from .device import auto_dtype, parse_dtype, resolve_device
from .distributed import local_device, rank_and_world, shard, summed
from .errors import CheckpointError, OutOfMemory
from .files import check_outputs, check_writable, list_images, output_paths, read_frames, save_image
from .guidance import clip_box, parse_box
from .highres import DEFAULT_FINE_MEGAPIXELS
from .inference import cutout, mask_to_image, segment
from .loading import load_model
from .pipeline import check_highres, cutout_image, finish, model_device, segment_image
from .pipeline import parse_resolution as resolution_option
from .refine import Refinement
from .version import __version__
from .write_behind import WriteBehind
from .zoo import listed


def parse_resolution(text: str | None):
    """'native' -> None; 'aspect'; '1024' -> 1024; 'WIDTHxHEIGHT' -> (height, width), checked before loading."""
    try:
        return resolution_option(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def export_size(text: str):
    """'1024' or 'WIDTHxHEIGHT' -> (height, width), checked like --resolution."""
    size = parse_resolution(text)
    if not isinstance(size, tuple):
        raise argparse.ArgumentTypeError(f"size {text!r}: use 1024 or WIDTHxHEIGHT (multiples of 32)")
    return size


def box_argument(text: str):
    try:
        return parse_box(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def fraction(text: str) -> float:
    """A number from 0 to 1 (a strength)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def batch_size_argument(text: str) -> int | str:
    """--batch-size: a positive whole number or auto."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return check_batch_size(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive whole number nor auto") from None


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value

    return parse


def weights_source(name: str | None, download: bool, accept_license: str | None):
    """What to hand to `load_model` (which resolves paths and known names itself); with --download a
    known name is fetched first."""
    if not download or name is None or Path(name).expanduser().exists():
        return name
    from .hub import download as fetch
    from .hub import resolve

    known = resolve(name)
    path = fetch(known, accept_license=accept_license)
    print(f"birefnet: {known.name} is at {path}", file=sys.stderr)
    return path


def _load(args) -> torch.nn.Module:
    device = resolve_device(
        "cpu" if args.backend == "openvino" and args.device == "auto" else local_device(args.device)
    )
    dtype = auto_dtype(device) if args.dtype == "auto" else parse_dtype(args.dtype)
    source = weights_source(args.weights, args.download, args.accept_license)
    return load_model(source, device=device, dtype=dtype, tile_layout=args.tile_layout, backend=args.backend)


def refinement_of(args) -> Refinement:
    """The Refine Edges options given as flags (checked before the model loads)."""
    return Refinement(
        black_point=args.black_point,
        white_point=args.white_point,
        threshold=args.threshold,
        fill_holes=args.fill_holes,
        grow=args.grow,
        guided_radius=args.guided_radius,
        guided_eps=args.guided_eps,
        feather=args.feather,
        foreground=args.foreground,
        foreground_radius=args.foreground_radius,
    )


def cmd_segment(args) -> int:
    from tqdm import tqdm

    missing = [item for item in args.inputs if not Path(item).exists()]
    if missing:
        raise ValueError(f"input not found: {', '.join(missing)}")
    from .video import VIDEO_SUFFIXES

    videos = [
        Path(item) for item in args.inputs if Path(item).is_file() and Path(item).suffix.lower() in VIDEO_SUFFIXES
    ]
    refinement = refinement_of(args)
    if videos:
        if refinement != Refinement():
            raise ValueError("the refinement flags are for images; refine video masks with the Refine Edges node")
        return _segment_videos(args, videos, [item for item in args.inputs if Path(item) not in videos])
    check_highres(args.box, args.highres)
    out_dir = Path(args.out)
    if is_an_input_folder(out_dir, args.inputs):
        raise ValueError(
            f"--out {out_dir} is an input folder: the masks written there would be read as images by the next "
            f"run; choose another --out, e.g. {out_dir / 'masks'}"
        )
    files = list_images(args.inputs, exclude=out_dir if inside_an_input(out_dir, args.inputs) else None)
    if not files:
        raise ValueError("no images found in the given inputs (" + ", ".join(args.inputs) + ")")
    outputs = planned_outputs(args, files, out_dir)
    rank, world = rank_and_world()
    renamed = sum(mask.stem != rel.stem for (_, rel), (mask, *_) in zip(files, outputs))
    if renamed and rank == 0:
        print(
            f"birefnet: {renamed} input(s) share a name with another input; their outputs keep the "
            "extension in the name (e.g. photo_jpg.png)",
            file=sys.stderr,
        )
    total = len(files)
    inputs = [file for file, _ in files]
    files, outputs = shard(files, rank, world), shard(outputs, rank, world)  # names chosen before sharding
    check_outputs([path for paths in outputs for path in written_paths(paths, args.cutout)], inputs, args.overwrite)
    model = load_for(args, out_dir)
    if rank == 0:
        print(model.info.describe(), file=sys.stderr)
    if world > 1:
        print(f"birefnet: process {rank + 1}/{world}: {len(files)} of {total} input(s)", file=sys.stderr)
    if args.compile and args.backend == "torch":  # pays off on long runs at one working size; the first image compiles
        model = compile_model(model)
    skipped, animated_said = 0, False
    bar = tqdm(
        total=len(files),
        unit="img",
        disable=args.quiet,
        desc=f"rank {rank}" if world > 1 else None,
        position=rank if world > 1 else None,
    )
    per_chunk = AUTO_MOST if args.batch_size == AUTO else args.batch_size  # images read at a time
    with WriteBehind() as saver:  # the PNGs are compressed behind the model, by a few threads
        for start in range(0, len(files), per_chunk):
            chunk = []
            for (file, _), paths in zip(files[start : start + per_chunk], outputs[start : start + per_chunk]):
                try:
                    image, frames = read_frames(file)
                    if args.box:
                        check_boxes_inside(args.box, image)
                    chunk.append((image, paths))
                except Exception as err:  # unreadable, not an image, or a box outside it: report and go on
                    skipped += 1
                    bar.write(f"birefnet: skipped {file}: {err}", file=sys.stderr)
                    bar.update(1)
                    continue
                if frames > 1 and not animated_said:
                    animated_said = True
                    bar.write(f"birefnet: {file} is animated; only its first frame is segmented", file=sys.stderr)
            if not chunk:
                continue
            if args.box:
                guided = [
                    segment_image(
                        model, image, boxes=args.box, resolution=args.resolution, max_megapixels=args.max_megapixels
                    )
                    for image, _ in chunk
                ]
                masks = [combined for combined, _ in guided]
                for (image, paths), (_, objects) in zip(chunk, guided):
                    for box, single, path in zip(args.box, objects, paths[2:]):
                        single, _ = finish(image, single, refinement, boxes=[box], device=model_device(model))
                        save_image(mask_to_image(single), path, replace=args.overwrite)
            elif args.highres:
                masks = [
                    segment_image(
                        model,
                        image,
                        resolution=args.resolution,
                        max_megapixels=args.max_megapixels,
                        highres=True,
                        fine_megapixels=args.fine_megapixels,
                    )[0]
                    for image, _ in chunk
                ]
            else:
                masks = segment(
                    model,
                    [image for image, _ in chunk],
                    resolution=args.resolution,
                    max_megapixels=args.max_megapixels,
                    batch_size=args.batch_size,
                    device=model_device(model),  # `finish` refines there: no CPU round trip
                )
            for (image, (mask_path, cutout_path, *_)), mask in zip(chunk, masks):
                mask, colours = finish(image, mask, refinement, boxes=args.box or (), device=model_device(model))
                saver.submit(save_image, mask_to_image(mask), mask_path, args.overwrite)
                if args.cutout:
                    saver.submit(save_image, cutout_image(image, mask, colours), cutout_path, args.overwrite)
                bar.update(1)
    bar.close()
    done, skipped = summed([len(files) - skipped, skipped])
    if rank == 0:
        print(
            f"birefnet: wrote {done} mask(s) to {out_dir}"
            + (f", skipped {skipped}" if skipped else "")
            + (f" ({world} processes)" if world > 1 else ""),
            file=sys.stderr,
        )
    return 1 if skipped else 0


def planned_outputs(args, files, out_dir: Path) -> list[tuple[Path, ...]]:
    """(mask, cut-out, object 1, ...) under --out for every input, chosen together so no two collide
    (objects are written only for two boxes or more)."""
    objects = len(args.box) if args.box and len(args.box) > 1 else 0
    plan = output_paths([rel for _, rel in files], args.cutout, objects)
    return [tuple(out_dir / path for path in paths) for paths in plan]


def input_folders(inputs) -> list[Path]:
    return [Path(item).resolve() for item in inputs if Path(item).is_dir()]


def is_an_input_folder(out_dir: Path, inputs) -> bool:
    return out_dir.resolve() in input_folders(inputs)


def inside_an_input(out_dir: Path, inputs) -> bool:
    """Whether --out lies strictly inside an input folder (its files are then earlier outputs, not inputs)."""
    out = out_dir.resolve()
    return any(out != folder and out.is_relative_to(folder) for folder in input_folders(inputs))


def check_out(out_dir: Path) -> None:
    """--out must be a folder this process can create and write in, said before the model loads."""
    try:
        check_writable(out_dir)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"--out {out_dir}: cannot write there ({reason}); choose another --out") from None


def load_for(args, out_dir: Path) -> torch.nn.Module:
    """The model, once --out is known to be writable; an --out this run created is removed again (if still
    empty) when the model does not load, so a failed run leaves nothing behind."""
    created = not out_dir.exists()
    check_out(out_dir)
    try:
        return _load(args)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def written_paths(paths: tuple[Path, ...], cutouts: bool) -> list[Path]:
    """The planned (mask, cut-out, objects...) paths this run writes: the cut-out only with --cutout."""
    return [paths[0], *([paths[1]] if cutouts else []), *paths[2:]]


def check_boxes_inside(boxes, image) -> None:
    """A box wholly outside this image is this image's problem (skipped), not the run's (ValueError)."""
    for box in boxes:
        clip_box(box, image.height, image.width)


def _segment_videos(args, videos: list[Path], others: list[str]) -> int:
    """Each clip as a stream: OUT/<clip>/000001.png ...; --cutout adds OUT/<clip>/000001_cutout.png ...
    (RGBA), or with --video OUT/<clip>_cutout.mov (ProRes 4444, alpha) beside OUT/<clip>_mask.mp4;
    frames decoded and written one batch at a time."""
    from tqdm import tqdm

    from .video import VideoSource, VideoWriter, segment_frames

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


def cmd_info(args) -> int:
    for weights in args.weights:
        model = load_model(weights, tile_layout=args.tile_layout)
        params = sum(p.numel() for p in model.parameters())
        print(f"{model.info.describe()}, {params / 1e6:.1f} M parameters, stored as {model.info.file_dtype}")
    return 0


LIST_ROW = "{:16} {:26} {:10} {:10} {:8} {:38} {}"


def cmd_list(args) -> int:
    print(LIST_ROW.format("short name", "checkpoint", "backbone", "size (WxH)", "layout", "licence", "download"))
    for known in listed():
        licence = known.license + (" (gated)" if known.gated else "")
        print(
            LIST_ROW.format(
                known.short, known.name, known.backbone, known.size_text, known.tile_layout, licence, known.url
            )
        )
    print("get one with `birefnet download SHORT_NAME`, then use it with --weights SHORT_NAME")
    print()
    print(
        BACKBONE_ROW.format(
            "backbone", "family", "feature channels", "strides", "size multiple", "official checkpoints"
        )
    )
    for name, variant in backbones.VARIANTS.items():
        released = sum(known.backbone == name for known in listed())
        print(
            BACKBONE_ROW.format(
                name,
                variant.family,
                ",".join(map(str, variant.channels)),
                ",".join(map(str, variant.strides)),
                str(variant.size_multiple),
                f"{released} above" if released else "none released; your fine-tunes load",
            )
        )
    return 0


BACKBONE_ROW = "{:16} {:16} {:22} {:12} {:14} {}"


def cmd_download(args) -> int:
    from .hub import download, resolve

    for name in args.names:
        known = resolve(name)
        path = download(known, args.dir, accept_license=args.accept_license)
        print(f"birefnet: {known.name} ({known.backbone}, {known.size_text}) is at {path}", file=sys.stderr)
        print(path)
    return 0


def cmd_export(args) -> int:
    import time

    from .export import check_target, export

    fmt = args.format or {".onnx": "onnx", ".xml": "openvino"}.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {args.out}: name it .onnx or .xml (OpenVINO IR), or give --format")
    check_target(args.out, fmt)
    dtype = parse_dtype(args.dtype)
    model = load_model(weights_source(args.weights, args.download, args.accept_license), tile_layout=args.tile_layout)
    size = args.size or model.info.resolution or (1024, 1024)
    print(
        f"{model.info.describe()}\nbirefnet: exporting to {fmt} at {size[1]}x{size[0]} (minutes for large backbones)",
        file=sys.stderr,
    )
    start = time.perf_counter()
    path = export(model, args.out, fmt, size, dtype=dtype, dynamic_size=args.dynamic_size)
    print(f"birefnet: wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(path)
    return 0


def cmd_serve(args) -> int:
    from .extras import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "server")
    from .server import serve

    return serve(args)


def cmd_krita_plugin(args) -> int:
    from .krita_plugin import build_zip

    path = build_zip(args.out)
    print(
        f"birefnet: wrote {path}; in Krita: Tools > Scripts > Import Python Plugin from File, then restart Krita",
        file=sys.stderr,
    )
    return 0


def add_refinement_flags(parser: argparse.ArgumentParser) -> None:
    """The Refine Edges node's options (same names, meaning and defaults: all off)."""
    group = parser.add_argument_group("refinement (the Refine Edges node's options, in this order; all off by default)")
    group.add_argument("--black-point", type=float, default=0.0, help="mask values below become 0")
    group.add_argument("--white-point", type=float, default=1.0, help="mask values above become 1")
    group.add_argument("--threshold", type=float, default=0.0, help="binarise at this value (0 = keep soft)")
    group.add_argument("--fill-holes", action="store_true", help="fill background regions enclosed by the foreground")
    group.add_argument("--grow", type=int, default=0, help="grow (+) or shrink (-) the mask by this many pixels")
    group.add_argument(
        "--guided-radius",
        type=int,
        default=0,
        help="guided filter radius in pixels (0 = off); 4-16 snaps the mask's edges to the image's",
    )
    group.add_argument(
        "--guided-eps",
        type=float,
        default=1e-3,
        help="guided filter smoothness: higher keeps the mask, lower follows the image",
    )
    group.add_argument("--feather", type=float, default=0.0, help="soften the edge over about this many pixels")
    group.add_argument(
        "--foreground",
        action="store_true",
        help="cut-outs: re-estimate the edge colours (removes the old background's halo)",
    )
    group.add_argument(
        "--foreground-radius", type=int, default=90, help="blur size of the foreground estimation's first pass"
    )


def add_serve_parser(sub) -> None:
    srv = sub.add_parser(
        "serve",
        help="a local HTTP server: POST an image, get its mask or cut-out PNG back "
        "(image editors, scripts; extra `server`)",
    )
    srv.add_argument(
        "--weights",
        help="weights to serve: a file or a known name (downloaded); default: "
        "$BIREFNET_WEIGHTS or the embedded demo model",
    )
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default %(default)s; any other needs --allow-remote and a token)",
    )
    srv.add_argument("--port", type=int, default=7853, help="default %(default)s")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    srv.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    srv.add_argument(
        "--token", help="require `Authorization: Bearer TOKEN` on every request (default: $BIREFNET_SERVER_TOKEN)"
    )
    srv.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host to be a non-loopback address (other machines can connect; needs a token)",
    )
    srv.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of this origin (e.g. https://example.com) call the server; repeatable",
    )
    srv.add_argument(
        "--max-upload-mb", type=positive(float), default=100.0, help="largest upload (default %(default)g)"
    )
    srv.add_argument(
        "--max-megapixels-in",
        type=positive(float),
        default=100.0,
        help="largest image accepted, in decoded megapixels (default %(default)g)",
    )
    srv.add_argument(
        "--max-queue",
        type=positive(int),
        default=64,
        help="requests waiting for the model at most; more get 503 (default %(default)s)",
    )
    srv.add_argument(
        "--allow-weights",
        action="append",
        default=[],
        metavar="FILE_DIR_OR_NAME",
        help="weights clients may pick with the `weights` field: a file, a folder of files, or a "
        "known name (downloaded); repeatable",
    )
    srv.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birefnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"birefnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="write a mask PNG (and optionally an RGBA cut-out) per image")
    seg.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    seg.add_argument("--out", required=True, help="output folder (mirrors the input folders)")
    seg.add_argument(
        "--weights",
        help="weight file (.safetensors/.pth) or a known name from `birefnet list` (e.g. "
        "general, hr, lite); default: $BIREFNET_WEIGHTS or the embedded demo model",
    )
    seg.add_argument(
        "--download",
        action="store_true",
        help="download --weights NAME now if it is not downloaded yet (Hugging Face cache)",
    )
    seg.add_argument(
        "--accept-license",
        metavar="LICENCE",
        help="with --download: accept a non-commercial licence by its id (RMBG-2.0: CC-BY-NC-4.0)",
    )
    seg.add_argument(
        "--resolution",
        type=parse_resolution,
        default=None,
        help="native (checkpoint default), aspect, 1024, or WIDTHxHEIGHT (multiples of 32)",
    )
    seg.add_argument(
        "--max-megapixels", type=positive(float), default=None, help="cap on the working size (aspect mode: its area)"
    )
    seg.add_argument(
        "--highres",
        action="store_true",
        help="coarse to fine for large images (4K+): a pass on the whole image finds the object, "
        "a second pass re-segments its region at up to --fine-megapixels",
    )
    seg.add_argument(
        "--fine-megapixels",
        type=positive(float),
        default=DEFAULT_FINE_MEGAPIXELS,
        help="memory cap of the --highres fine pass (working area; default %(default).1f)",
    )
    seg.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: a few %% faster per image after a warm-up of minutes "
        "(and one more per new working size; cached for later runs in ~/.cache/birefnet/inductor); "
        "for long batch jobs",
    )
    seg.add_argument("--cutout", action="store_true", help="also write <name>_cutout.png with the mask as alpha")
    seg.add_argument(
        "--batch-size",
        type=batch_size_argument,
        default=AUTO,
        help="images or video frames per forward: a number, or auto (the default: as many as the GPU's free "
        f"memory holds, up to {AUTO_MOST}; 1 on the CPU)",
    )
    seg.add_argument(
        "--box",
        action="append",
        type=box_argument,
        metavar="X,Y,W,H",
        help="segment only the object in this box (pixels; repeat for several objects: the mask holds "
        "them all and <name>_objectN.png each one); outside the boxes the mask is 0",
    )
    seg.add_argument(
        "--video",
        action="store_true",
        help="video inputs: also write OUT/<clip>_mask.mp4 "
        "(with --cutout also <clip>_cutout.mov, ProRes 4444 with alpha)",
    )
    seg.add_argument(
        "--temporal",
        type=fraction,
        default=0.0,
        metavar="S",
        help="video inputs: temporal stability from 0 (off, default) to 1 (strongest); smooths only where "
        "the image does not change",
    )
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs an earlier run left in --out (without it, existing outputs are refused; "
        "an input file is never written onto)",
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    add_refinement_flags(seg)
    seg.set_defaults(func=cmd_segment)

    info = sub.add_parser("info", help="print what a weight file is (variant, layout, resolution)")
    info.add_argument("weights", nargs="+", help="weight files or known names (downloaded ones)")
    info.set_defaults(func=cmd_info)

    lst = sub.add_parser("list", help="known released checkpoints with their download URLs")
    lst.set_defaults(func=cmd_list)

    down = sub.add_parser("download", help="download known checkpoints (resumable; Hugging Face cache or --dir)")
    down.add_argument("names", nargs="+", help="short names from `birefnet list` (general, lite, hr, ...)")
    down.add_argument(
        "--dir",
        help="put the file here as <name>.safetensors instead of the Hugging Face cache (e.g. ComfyUI/models/birefnet)",
    )
    down.add_argument(
        "--accept-license", metavar="LICENCE", help="accept a non-commercial licence by its id (RMBG-2.0: CC-BY-NC-4.0)"
    )
    down.set_defaults(func=cmd_download)

    exp = sub.add_parser("export", help="write an ONNX file or OpenVINO IR for deployment (batch size free)")
    exp.add_argument("weights", help="weight file or a known name (downloaded)")
    exp.add_argument("--out", required=True, help="model.onnx, or model.xml for OpenVINO IR (never overwritten)")
    exp.add_argument("--format", choices=("onnx", "openvino"), help="default: from --out's extension")
    exp.add_argument(
        "--size",
        type=export_size,
        default=None,
        help="working size WIDTHxHEIGHT or 1024 (multiples of 32); default: the checkpoint's",
    )
    exp.add_argument("--dtype", default="fp32", help="fp32, or fp16 (ONNX: for GPU runtimes; OpenVINO: fp16 weights)")
    exp.add_argument(
        "--dynamic-size",
        action="store_true",
        help="ONNX: leave height and width free too (any multiple of 32; a fixed size runs faster)",
    )
    exp.add_argument("--download", action="store_true", help="download a known name first if needed")
    exp.add_argument("--accept-license", metavar="LICENCE", help="with --download: accept a non-commercial licence")
    exp.set_defaults(func=cmd_export)

    add_serve_parser(sub)

    krita = sub.add_parser(
        "krita-plugin",
        help="write the Krita plug-in as a zip for Krita's Tools > Scripts > Import Python Plugin from File",
    )
    krita.add_argument("--out", required=True, help="the zip file to write (never overwritten)")
    krita.set_defaults(func=cmd_krita_plugin)

    for p in (seg, info, exp):
        p.add_argument(
            "--tile-layout",
            choices=("current", "legacy"),
            default=None,
            help="override the inward-reference tile layout (default: chosen per checkpoint)",
        )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    seg.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    seg.add_argument(
        "--backend",
        choices=("torch", "openvino"),
        default="torch",
        help="openvino: the fastest CPU runtime (extra `openvino`); converts once per working size "
        "(minutes), cached for later runs",
    )
    return parser


def os_error_line(err: OSError) -> str:
    """`/sys/x: Permission denied` rather than `[Errno 13] Permission denied: '/sys/x'`."""
    if err.filename is None or err.strerror is None:
        return str(err)
    return f"{err.filename}: {err.strerror}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (tests and embedding programs replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_library_messages(quiet: bool) -> None:
    """The library's log lines on stderr as "birefnet: ..." (info too, e.g. a CUDA graph's capture time,
    the first call's cost; warnings only with --quiet), set up once per process."""
    logger = logging.getLogger("birefnet")
    if not any(getattr(handler, "birefnet_cli", False) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("birefnet: %(message)s"))
        handler.birefnet_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    show_library_messages(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileExistsError) as err:
        print(f"birefnet: {err}", file=sys.stderr)
        return 2
    except OutOfMemory as err:
        print(f"birefnet: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a folder that cannot be created or written, a full disk: one line, no traceback
        print(f"birefnet: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("birefnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
