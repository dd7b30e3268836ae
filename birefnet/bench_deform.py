"""Benchmark of the deformable convolution alone, at the shapes one forward of BiRefNet runs.

    python -m birefnet.bench_deform --device cuda --resolution 1024 --dtype fp16 bf16

Every decoder ASPP runs four modulated deformable convolutions from 64 to 256 channels (kernels
1, 1, 3 and 7), and one forward has five ASPPs, on maps at strides 32, 32, 16, 8 and 4 of the
working size: 20 calls. Each row times one shape with each implementation the library has:
torchvision's kernel (in float32 for bf16, as the default path does), the banded `grid_sample`
form, and on CUDA the fused Triton kernel (its tile sizes tuned before timing). The last rows sum
the 20 calls, the deformable convolution's share of one forward. Times are medians over
`--runs` calls after a warm-up, synchronised on CUDA; error = ‖out − torchvision fp32‖ / ‖·‖.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from .deform_conv import deform_conv2d as library_deform_conv2d
from .deform_conv import implementation
from .device import parse_dtype
from .inference import parse_size

KERNELS = (1, 1, 3, 7)  # one ASPP: its 1x1 branch and the deformable 1x1, 3x3 and 7x7 branches
STRIDES = (32, 32, 16, 8, 4)  # the five ASPPs of the decoder, in the order a forward runs them
CHANNELS_IN, CHANNELS_OUT = 64, 256


def forward_shapes(height: int, width: int) -> list[tuple[int, int, int]]:
    """(map height, map width, kernel) of every deformable convolution of one forward."""
    return [(height // s, width // s, k) for s in STRIDES for k in KERNELS]


def _inputs(batch: int, height: int, width: int, kernel: int, device: torch.device):
    generator = torch.Generator().manual_seed(height * 10 + kernel)
    taps = kernel * kernel
    x = torch.randn(batch, CHANNELS_IN, height, width, generator=generator)
    offset = 2 * torch.randn(batch, 2 * taps, height, width, generator=generator)
    mask = 2 * torch.rand(batch, taps, height, width, generator=generator)
    weight = torch.randn(CHANNELS_OUT, CHANNELS_IN, kernel, kernel, generator=generator) / (CHANNELS_IN * taps) ** 0.5
    bias = torch.randn(CHANNELS_OUT, generator=generator)
    return [t.to(device) for t in (x, offset, weight, mask, bias)]


def _timed(run, device: torch.device, runs: int) -> tuple[float, torch.Tensor]:
    """(median seconds, last output) of `runs` calls after one warm-up (which also compiles and tunes)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = run()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        out = run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(
    resolution: tuple[int, int], dtype: torch.dtype, device: torch.device, batch: int = 1, runs: int = 10
) -> list[dict]:
    """One row per distinct shape of a forward: {shape, calls, times {implementation: s}, errors}."""
    names = ["torchvision", "banded"] + (["triton"] if device.type == "cuda" else [])
    shapes = forward_shapes(*resolution)
    rows = []
    with torch.inference_mode():
        for shape in dict.fromkeys(shapes):
            height, width, kernel = shape
            x, offset, weight, mask, bias = _inputs(batch, height, width, kernel, device)
            with implementation("torchvision"):
                reference = library_deform_conv2d(x, offset, weight, mask, kernel // 2, bias)
            low = [t.to(dtype) for t in (x, offset, weight, mask, bias)]
            row = {"shape": shape, "calls": shapes.count(shape), "times": {}, "errors": {}}
            for name in names:

                def run(name=name):
                    with implementation(name):
                        return library_deform_conv2d(*low[:4], kernel // 2, low[4])

                row["times"][name], out = _timed(run, device, runs)
                row["errors"][name] = ((out.float() - reference).norm() / reference.norm()).item()
            rows.append(row)
    return rows


def table(rows: list[dict], dtype_name: str, batch: int, header: bool = True) -> str:
    """Markdown rows of `measure`'s result, with a last row summing one forward's calls."""
    names = list(rows[0]["times"])
    lines = []
    if header:
        lines.append(
            "| dtype | batch | map | kernel | calls | "
            + " | ".join(f"{n} ms" for n in names)
            + " | "
            + " | ".join(f"{n} err" for n in names[1:])
            + " |"
        )
        lines.append("|" + "---|" * (5 + 2 * len(names) - 1))
    for r in rows:
        h, w, k = r["shape"]
        times = " | ".join(f"{r['times'][n] * 1e3:.3f}" for n in names)
        errors = " | ".join(f"{r['errors'][n]:.1e}" for n in names[1:])
        lines.append(f"| {dtype_name} | {batch} | {w}x{h} | {k} | {r['calls']} | {times} | {errors} |")
    totals = {n: sum(r["times"][n] * r["calls"] for r in rows) for n in names}
    ratios = " | ".join(f"{totals[n] / totals['torchvision']:.2f}x of torchvision's time" for n in names[1:])
    lines.append(
        f"| {dtype_name} | {batch} | one forward | all | {sum(r['calls'] for r in rows)} | "
        + " | ".join(f"**{totals[n] * 1e3:.2f}**" for n in names)
        + f" | {ratios} |"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from main so that the prepared GPU check's command can be checked on any machine."""
    parser = argparse.ArgumentParser(
        prog="python -m birefnet.bench_deform",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default=os.environ.get("BIREFNET_DEVICE", "cpu"))
    parser.add_argument("--resolution", default="1024", help="working size: 1024 or WIDTHxHEIGHT")
    parser.add_argument("--dtype", nargs="+", default=["fp16"], help="fp32, fp16, bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    resolution = parse_size(args.resolution)
    height, width = resolution
    print(f"# deformable convolution at a {width}x{height} working size, {device}, medians of {args.runs} calls")
    for i, name in enumerate(args.dtype):
        rows = measure(resolution, parse_dtype(name), device, args.batch, args.runs)
        print(table(rows, name, args.batch, header=i == 0), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
