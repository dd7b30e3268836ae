"""`birefnet` command line: segment images into mask PNGs (and RGBA cut-outs), inspect weights."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .inference import cutout, mask_to_image, parse_size, segment
from .highres import DEFAULT_FINE_MEGAPIXELS, segment_highres
from .io import list_images, read_image, save_image
from .loading import CheckpointError, load_model, parse_dtype
from .zoo import KNOWN_CHECKPOINTS, find_checkpoint

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"


def default_weights() -> Path:
    """$BIREFNET_WEIGHTS, else the embedded default model; a clear error when neither exists."""
    env = os.environ.get("BIREFNET_WEIGHTS")
    if env:
        return Path(env)
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    general = find_checkpoint("BiRefNet")
    raise CheckpointError(
        "no weights given and this build has no embedded default model; pass --weights FILE "
        f"(or set BIREFNET_WEIGHTS), e.g. the general model from {general.url}"
    )


def parse_resolution(text: str | None):
    """'native' -> None; 'aspect'; '1024' -> 1024; 'WIDTHxHEIGHT' -> (height, width)."""
    if text is None or text == "native":
        return None
    if text == "aspect":
        return "aspect"
    try:
        height, width = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {text!r}: use native, aspect, 1024 or WIDTHxHEIGHT") from None
    return (height, width)


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return parse_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def _load(args) -> torch.nn.Module:
    device = pick_device(args.device)
    weights = Path(args.weights) if args.weights else default_weights()
    return load_model(weights, device=device, dtype=pick_dtype(args.dtype, device), tile_layout=args.tile_layout)


def cmd_segment(args) -> int:
    from tqdm import tqdm

    files = list_images(args.inputs)
    if not files:
        print("birefnet: no images found in the given inputs", file=sys.stderr)
        return 2
    model = _load(args)
    print(model.info.describe(), file=sys.stderr)
    if args.compile:  # pays off on long runs at one working size; the first image compiles
        model = torch.compile(model)
    out_dir = Path(args.out)
    skipped = 0
    bar = tqdm(total=len(files), unit="img", disable=args.quiet)
    for start in range(0, len(files), args.batch_size):
        chunk = []
        for file, rel in files[start : start + args.batch_size]:
            try:
                chunk.append((read_image(file), rel))
            except Exception as err:  # unreadable or not an image: report and go on
                skipped += 1
                bar.write(f"birefnet: skipped {file}: {err}", file=sys.stderr)
                bar.update(1)
        if not chunk:
            continue
        if args.highres:
            masks = [segment_highres(model, image, resolution=args.resolution, max_megapixels=args.max_megapixels,
                                     fine_megapixels=args.fine_megapixels) for image, _ in chunk]
        else:
            masks = segment(
                model, [image for image, _ in chunk], resolution=args.resolution,
                max_megapixels=args.max_megapixels, batch_size=args.batch_size,
            )
        for (image, rel), mask in zip(chunk, masks):
            save_image(mask_to_image(mask), out_dir / rel.with_suffix(".png"))
            if args.cutout:
                save_image(cutout(image, mask), out_dir / rel.parent / f"{rel.stem}_cutout.png")
            bar.update(1)
    bar.close()
    done = len(files) - skipped
    print(f"birefnet: wrote {done} mask(s) to {out_dir}" + (f", skipped {skipped}" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0


def cmd_info(args) -> int:
    for weights in args.weights:
        model = load_model(weights, tile_layout=args.tile_layout)
        params = sum(p.numel() for p in model.parameters())
        print(f"{model.info.describe()}, {params / 1e6:.1f} M parameters, stored as {model.info.file_dtype}")
    return 0


def cmd_list(args) -> int:
    for known in KNOWN_CHECKPOINTS:
        res = "dynamic" if known.resolution is None else f"{known.resolution[1]}x{known.resolution[0]}"
        print(f"{known.name:26} {known.backbone:10} {res:10} {known.tile_layout:8} {known.license:30} {known.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birefnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="write a mask PNG (and optionally an RGBA cut-out) per image")
    seg.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    seg.add_argument("--out", required=True, help="output folder (mirrors the input folders)")
    seg.add_argument("--weights", help="BiRefNet weights (.safetensors/.pth); default: $BIREFNET_WEIGHTS or the embedded model")
    seg.add_argument("--resolution", type=parse_resolution, default=None,
                     help="native (checkpoint default), aspect, 1024, or WIDTHxHEIGHT (multiples of 32)")
    seg.add_argument("--max-megapixels", type=float, default=None, help="cap on the working size (aspect mode: its area)")
    seg.add_argument("--highres", action="store_true",
                     help="coarse to fine for large images (4K+): a pass on the whole image finds the object, "
                          "a second pass re-segments its region at up to --fine-megapixels")
    seg.add_argument("--fine-megapixels", type=float, default=DEFAULT_FINE_MEGAPIXELS,
                     help="memory cap of the --highres fine pass (working area; default %(default).1f)")
    seg.add_argument("--compile", action="store_true",
                     help="torch.compile the model: a few %% faster per image after a warm-up of minutes "
                          "(and one more per new working size); for long batch jobs")
    seg.add_argument("--cutout", action="store_true", help="also write <name>_cutout.png with the mask as alpha")
    seg.add_argument("--batch-size", type=int, default=1)
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    info = sub.add_parser("info", help="print what a weight file is (variant, layout, resolution)")
    info.add_argument("weights", nargs="+")
    info.set_defaults(func=cmd_info, device="cpu", dtype="fp32")

    lst = sub.add_parser("list", help="known released checkpoints with their download URLs")
    lst.set_defaults(func=cmd_list)

    for p in (seg, info):
        p.add_argument("--tile-layout", choices=("current", "legacy"), default=None,
                       help="override the inward-reference tile layout (default: chosen per checkpoint)")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    seg.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("birefnet: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (CheckpointError, ValueError) as err:
        print(f"birefnet: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("birefnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
