"""What the float-range check costs against the conversion it precedes, for ComfyUI-like frames.

A batch of 24 float32 1920x1080 RGB frames in [0, 1], as a torch tensor (B, H, W, C) whose frames go in
as (C, H, W) views (as the Segment node passes them) and as numpy arrays (H, W, C). For each frame, in
turn: the check as it was (minimum, then mean), the check now (`birefnet.inference.check_float_range`),
the conversion to float RGB in [0, 1] (`rgb_unit`) and the conversion with the resize to 1024x1024
(`at_working_size`). Milliseconds per frame, median (and minimum) over every frame of every round; the
check as a share of the conversion. Results: docs/benchmarks.md.

    python -m birefnet.bench_float_check [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from birefnet.inference import at_working_size, check_float_range, rgb_unit


def check_before(values) -> bool:
    """The check before it was folded: the minimum and the mean, two reads of the picture."""
    if isinstance(values, np.ndarray):
        low, mean = float(values.min()), float(values.mean(dtype=np.float64))
    else:
        low, mean = float(values.min()), float(values.mean(dtype=torch.float32))
    return low >= -0.5 and mean <= 1.5


def cpu_name() -> str:
    """The processor's name and widest vector instructions (the reductions are vectorised)."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({simd})"


def timed(run, frames, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each variant for each frame of each round, the variants taking turns per frame
    (a slower moment of the machine falls on all of them)."""
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(rounds):
        for frame in frames:
            for name, function in run.items():
                start = time.perf_counter()
                function(frame)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = torch.rand(24, 1080, 1920, 3, generator=torch.Generator().manual_seed(0))
    inputs = {
        "torch (C, H, W) view": [frame.permute(2, 0, 1) for frame in batch],
        "numpy (H, W, C)": list(batch.numpy()),
    }
    stored = lambda frame: torch.from_numpy(frame).permute(2, 0, 1) if isinstance(frame, np.ndarray) else frame
    run = {
        "before": check_before,
        "now": check_float_range,
        "conversion": lambda frame: rgb_unit(stored(frame)),
        "resize": lambda frame: at_working_size(stored(frame), (1024, 1024), "cpu"),
    }
    for frame in inputs["torch (C, H, W) view"][:2]:  # warm-up: first allocations, thread pool
        for function in run.values():
            function(frame)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds of 24 frames")
    print("ms per frame, median (min)\n")
    print("| input | conversion | + resize to 1024² | check before | share | check now | share |")
    print("|---|---|---|---|---|---|---|")
    for label, frames in inputs.items():
        times = timed(run, frames, args.rounds)
        median = {name: statistics.median(values) for name, values in times.items()}
        shown = {name: f"{median[name]:.2f} ({min(values):.2f})" for name, values in times.items()}
        share = lambda name: f"{100 * median[name] / median['conversion']:.0f}%"
        print(
            f"| {label} | {shown['conversion']} | {shown['resize']} | {shown['before']} | {share('before')} "
            f"| {shown['now']} | {share('now')} |"
        )


if __name__ == "__main__":
    main()
