"""What the flags several commands share mean: value types checked while parsing (one line each,
before any model loads), the weights to load, the refinement options and the --out folder."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from ..batching import AUTO, check_batch_size
from ..device import auto_dtype, parse_dtype, resolve_device
from ..distributed import local_device
from ..files import check_writable, new_folders_removed_on_failure
from ..guidance import parse_box
from ..loading import load_model
from ..pipeline import parse_resolution as resolution_option
from ..refine import Refinement


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


def add_tile_layout_flag(parser: argparse.ArgumentParser) -> None:
    """--tile-layout, for the commands that load a checkpoint whose layout may be guessed wrong."""
    parser.add_argument(
        "--tile-layout",
        choices=("current", "legacy"),
        default=None,
        help="override the inward-reference tile layout (default: chosen per checkpoint)",
    )


def weights_source(name: str | None, download: bool, accept_license: str | None):
    """What to hand to `load_model` (which resolves paths and known names itself); with --download a
    known name is fetched first."""
    if not download or name is None or Path(name).expanduser().exists():
        return name
    from ..hub import download as fetch
    from ..hub import resolve

    known = resolve(name)
    path = fetch(known, accept_license=accept_license)
    print(f"birefnet: {known.name} is at {path}", file=sys.stderr)
    return path


def load_from_flags(args) -> torch.nn.Module:
    """The model --weights names, on --device in --dtype (auto: the device's best; OpenVINO: the CPU)."""
    device = resolve_device(
        "cpu" if args.backend == "openvino" and args.device == "auto" else local_device(args.device)
    )
    dtype = auto_dtype(device) if args.dtype == "auto" else parse_dtype(args.dtype)
    source = weights_source(args.weights, args.download, args.accept_license)
    return load_model(source, device=device, dtype=dtype, tile_layout=args.tile_layout, backend=args.backend)


def check_out(out_dir: Path) -> None:
    """--out must be a folder this process can create and write in, said before the model loads."""
    try:
        check_writable(out_dir)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"--out {out_dir}: cannot write there ({reason}); choose another --out") from None


def load_for(args, out_dir: Path) -> torch.nn.Module:
    """The model, once --out is known to be writable; the folders this run created for --out (its missing
    parents too) are removed again, if still empty, when the model does not load: a failed run leaves
    nothing behind."""
    with new_folders_removed_on_failure(out_dir):
        check_out(out_dir)
        return load_from_flags(args)


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
