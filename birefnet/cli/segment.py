"""`birefnet segment`: a mask PNG (and an RGBA cut-out) per image of files and folders, read a few
at a time, batched through the model and written behind it; clips go to `segment_video`."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from ..batching import AUTO, AUTO_MOST
from ..compiled import compile_model
from ..distributed import rank_and_world, shard, summed
from ..files import (
    check_outputs,
    kept_note,
    list_images,
    named_for,
    output_paths,
    read_frames,
    remove_killed_writes,
    remove_unwritten,
    save_image,
    unfinished,
)
from ..guidance import check_boxes_inside
from ..highres import DEFAULT_FINE_MEGAPIXELS
from ..inference import mask_to_image, model_device, segment
from ..pass_clock import learn_from_a_small_pass, pass_shares
from ..pipeline import check_highres, check_pixel_values, cutout_image, finish, segment_image
from ..refine import Refinement
from ..write_behind import WriteBehind
from .flags import (
    add_refinement_flags,
    add_tile_layout_flag,
    batch_size_argument,
    box_argument,
    fraction,
    load_for,
    parse_resolution,
    positive,
    refinement_of,
)
from .segment_video import segment_videos


def add_parser(sub) -> None:
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
        help="torch.compile the model (torch backend, images): a few %% faster per image after a warm-up of minutes "
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
        "them all and <name>_objectN.png each one); outside the boxes the mask is 0. On a clip every "
        "frame is guided by the box(es); its masks and videos hold all the boxes' objects (no per-object "
        "files: one run per box gives them)",
    )
    seg.add_argument(
        "--video",
        action="store_true",
        help="video inputs: also write OUT/<clip>_mask.mp4 "
        "(with --cutout also <clip>_cutout.mov, ProRes 4444 with alpha and the clip's sound)",
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
        help="replace outputs an earlier run left in --out, and remove that run's other outputs of the same "
        "inputs (e.g. <name>_cutout.png when this run has no --cutout, <name>_object3.png with two boxes), so "
        "--out holds one run; without it, existing outputs are refused; an input file is never written onto",
    )
    seg.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume an interrupted run: inputs whose outputs all exist in --out are not read again (outputs are "
        "written whole or not at all), missing ones are written; nothing is replaced. A clip is done when its "
        "videos exist (--video) or, frames only, its folder holds every frame; one not done is segmented again "
        "from its first frame, writing only the frame files and videos it lacks",
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    add_refinement_flags(seg)
    seg.set_defaults(func=cmd_segment)
    add_tile_layout_flag(seg)
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    seg.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    seg.add_argument(
        "--backend",
        choices=("torch", "openvino"),
        default="torch",
        help="openvino: the fastest CPU runtime (extra `openvino`); converts once per working size "
        "(minutes), cached for later runs",
    )


def cmd_segment(args) -> int:
    from tqdm import tqdm

    started = time.time()
    if args.overwrite and args.skip_existing:
        raise ValueError("--overwrite replaces existing outputs and --skip-existing keeps them; use one or the other")
    if args.compile and args.backend == "openvino":  # it was ignored
        raise ValueError("--compile is torch.compile, for the torch backend; OpenVINO compiles its own: drop --compile")
    missing = [item for item in args.inputs if not Path(item).exists()]
    if missing:
        raise ValueError(f"input not found: {', '.join(missing)}")
    from ..video import VIDEO_SUFFIXES

    videos = [
        Path(item) for item in args.inputs if Path(item).is_file() and Path(item).suffix.lower() in VIDEO_SUFFIXES
    ]
    refinement = refinement_of(args)
    if videos:
        if refinement != Refinement():
            raise ValueError("the refinement flags are for images; refine video masks with the Refine Edges node")
        if args.compile:  # it was ignored: clips are segmented by the model as loaded
            raise ValueError("--compile is for images; clips run without torch.compile: drop --compile")
        return segment_videos(args, videos, [item for item in args.inputs if Path(item) not in videos])
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
    writes = [written_paths(paths, args.cutout) for paths in outputs]  # what each input writes, named before sharding
    planned = {path for paths in writes for path in paths}  # every process's
    files, outputs, writes = (shard(column, rank, world) for column in (files, outputs, writes))
    check_outputs(
        [path for paths in writes for path in paths],
        inputs,
        args.overwrite or args.skip_existing,  # --skip-existing never replaces: it writes only missing outputs
    )
    wanted = [set(paths) for paths in writes]
    kept = 0
    if args.skip_existing:  # only the missing outputs of the inputs not done
        kept, wanted, (files, outputs) = unfinished(wanted, files, outputs)
    model = load_for(args, out_dir) if files else None  # all done already: no model to load
    if rank == 0 and model is not None:
        print(model.info.describe(), file=sys.stderr)
    if world > 1:
        print(f"birefnet: process {rank + 1}/{world}: {len(files)} of {total} input(s)", file=sys.stderr)
    if args.compile and model is not None:  # pays off on long runs at one working size; the first image compiles
        model = compile_model(model)
    skipped, segmented, masks_written, cutouts_written = 0, [], 0, 0
    bar = tqdm(
        total=len(files),
        unit="img",
        disable=args.quiet or not files,  # --skip-existing with all done: the summary says so, no empty bar
        desc=f"rank {rank}" if world > 1 else None,
        position=rank if world > 1 else None,
    )
    source_of = {paths[0]: file for (file, _), paths in zip(files, outputs)}  # for --overwrite's clean-up
    per_chunk = AUTO_MOST if args.batch_size == AUTO else args.batch_size  # images read at a time
    shown = [None]

    def show_pass(share: float) -> None:
        """How far the pass now running is, beside the count of images (a large image on a CPU takes a minute)."""
        percent = min(99, int(share * 100))
        if percent and percent != shown[0]:  # 0 throughout a model's first pass: nothing to go by yet
            shown[0] = percent
            bar.set_postfix_str(f"pass {percent}%")

    within = contextlib.nullcontext()
    if model is not None and not args.quiet:
        learn_from_a_small_pass(model)  # on a CPU (0.9 s for Swin-L on 2 cores): the first pass shows progress too
        within = pass_shares(model, show_pass)
    with WriteBehind() as saver, within:  # the PNGs are compressed behind the model, by a few threads
        for start in range(0, len(files), per_chunk):
            chunk = []
            for (file, _), paths, writes in zip(
                files[start : start + per_chunk], outputs[start : start + per_chunk], wanted[start : start + per_chunk]
            ):
                try:
                    image, frames = read_frames(file)
                    check_pixel_values(image)
                    if args.box:
                        check_boxes_inside(args.box, image.height, image.width)
                    chunk.append((image, paths, writes))
                except Exception as err:  # unreadable, not an image, or a box outside it: report and go on
                    skipped += 1
                    bar.write(f"birefnet: skipped {file}: {err}", file=sys.stderr)
                    bar.update(1)
                    continue
                if frames > 1:  # each named: a later one was segmented from its first frame unsaid
                    bar.write(f"birefnet: {file} is animated; only its first frame is segmented", file=sys.stderr)
            if not chunk:
                continue
            if args.box:
                guided = [
                    segment_image(
                        model, image, boxes=args.box, resolution=args.resolution, max_megapixels=args.max_megapixels
                    )
                    for image, *_ in chunk
                ]
                masks = [combined for combined, _ in guided]
                for (image, paths, writes), (_, objects) in zip(chunk, guided):
                    for box, single, path in zip(args.box, objects, paths[2:]):
                        if path in writes:
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
                    for image, *_ in chunk
                ]
            else:
                masks = segment(
                    model,
                    [image for image, *_ in chunk],
                    resolution=args.resolution,
                    max_megapixels=args.max_megapixels,
                    batch_size=args.batch_size,
                    device=model_device(model),  # `finish` refines there: no CPU round trip
                )
            if shown[0] is not None:  # the chunk's passes are done
                shown[0] = None
                bar.set_postfix_str("", refresh=False)
            for (image, (mask_path, cutout_path, *_), writes), mask in zip(chunk, masks):
                mask, colours = finish(image, mask, refinement, boxes=args.box or (), device=model_device(model))
                if mask_path in writes:
                    saver.submit(save_image, mask_to_image(mask), mask_path, args.overwrite)
                    masks_written += 1
                if cutout_path in writes:
                    saver.submit(save_image, cutout_image(image, mask, colours), cutout_path, args.overwrite)
                    cutouts_written += 1
                segmented.append((mask_path, source_of[mask_path]))
                bar.update(1)
    bar.close()
    removed = remove_earlier_outputs(segmented, planned) if args.overwrite else 0
    counts = [masks_written, cutouts_written, skipped, kept, removed]
    masks_written, cutouts_written, skipped, kept, removed = summed(counts)  # all processes' writes are done
    if rank == 0:  # an earlier run killed while writing left temporaries in this run's folders
        remove_killed_writes({path.parent for path in planned}, before=started)
    if rank == 0 and kept == total:
        print(
            f"birefnet: all {total} input(s) have their outputs in {out_dir} already (--skip-existing); nothing to do",
            file=sys.stderr,
        )
    elif rank == 0:
        print(
            f"birefnet: wrote {masks_written} mask(s)"
            + (f" and {cutouts_written} cut-out(s)" if cutouts_written else "")
            + f" to {out_dir}"
            + (f", skipped {skipped}" if skipped else "")
            + (kept_note(kept) if args.skip_existing else "")
            + (f", removed {removed} output(s) of an earlier run this run did not write again" if removed else "")
            + (f" ({world} processes)" if world > 1 else ""),
            file=sys.stderr,
        )
    return 1 if skipped else 0


def remove_earlier_outputs(segmented: list[tuple[Path, Path]], planned: set[Path]) -> int:
    """--overwrite: the other outputs an earlier run wrote for the inputs this run segmented ((mask path,
    input file) each) and this run did not write again, found by name (`files.named_for`, under any name
    an earlier run may have given them: `x.png` or `x_jpg.png`) one folder at a time; never one of this
    run's `planned` outputs (`a_cutout.png` may be the input `a_cutout.jpg`'s mask)."""
    inputs: dict[Path, list[Path]] = {}
    stems: dict[Path, set[str]] = {}  # this run's names are its inputs' own whatever lies beside them
    for mask, file in segmented:
        inputs.setdefault(mask.parent, []).append(file)
        stems.setdefault(mask.parent, set()).add(mask.stem)

    def owner(folder: Path):
        earlier = named_for(inputs[folder])
        return lambda stem: stem in stems[folder] or earlier(stem)

    return sum(remove_unwritten(folder, owner(folder), planned) for folder in inputs)


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


def written_paths(paths: tuple[Path, ...], cutouts: bool) -> list[Path]:
    """The planned (mask, cut-out, objects...) paths this run writes: the cut-out only with --cutout."""
    return [paths[0], *([paths[1]] if cutouts else []), *paths[2:]]
