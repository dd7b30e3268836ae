"""Benchmark: median warm latency, peak memory and error against fp32, printed as a table.

    python -m birefnet.bench --variant swin_v1_l --resolution 1024 --dtype fp32 bf16 --threads 2

Each configuration runs in a fresh subprocess so that peak resident memory (CPU) or peak
allocated memory (CUDA) belongs to that configuration alone. Weights are random
(seeded); speed and memory do not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from .inference import parse_size


def _worker(args) -> dict:
    from .loading import parse_dtype
    from .model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype)
    model = build_model(args.variant).eval().to(device=device, dtype=dtype)
    eager = model
    if args.compile:
        model = torch.compile(model)
    h, w = args.resolution
    x = torch.randn(args.batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    run = lambda: model(x.to(device=device, dtype=dtype))
    if args.highres:  # the whole coarse-to-fine pipeline on one random RGB image of that size
        from .highres import segment_highres

        picture = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
        run = lambda: segment_highres(model, picture, fine_megapixels=args.fine_megapixels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for i in range(max(args.warmup, 1) + args.runs):
            sync()
            start = time.perf_counter()
            out = run()
            sync()
            times.append(time.perf_counter() - start)
    first, times = times[0], times[max(args.warmup, 1):]
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    error = 0.0
    if dtype != torch.float32 and not args.highres:
        with torch.inference_mode():
            ref = eager.float()(x.to(device)).float()
            error = ((out.float() - ref).norm() / ref.norm()).item()
    return {"median_s": statistics.median(times), "min_s": min(times), "first_s": first, "peak_gb": peak_gb,
            "rel_err": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m birefnet.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=["swin_v1_l"])
    parser.add_argument("--resolution", nargs="+", default=["1024"], help="1024 or WIDTHxHEIGHT")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["fp32"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (first call = warm-up)")
    parser.add_argument("--highres", action="store_true",
                        help="time segment_highres on an image of each --resolution (e.g. 7680x4320) instead of one forward")
    parser.add_argument("--fine-megapixels", type=float, default=4.2, help="with --highres: the fine pass's cap")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.variant, args.dtype, args.resolution = args.variant[0], args.dtype[0], parse_size(args.resolution[0])
        print(json.dumps(_worker(args)))
        return 0

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}, batch {args.batch}, {args.runs} warm runs"
          + (", torch.compile" if args.compile else "")
          + (f", segment_highres (fine pass <= {args.fine_megapixels} MP)" if args.highres else ""))
    print("| variant | resolution | dtype | median s | min s | first call s | peak GB | rel. err vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variant:
        for resolution in args.resolution:
            for dtype in args.dtype:
                cmd = [sys.executable, "-m", "birefnet.bench", "--worker", "--variant", variant,
                       "--resolution", resolution, "--dtype", dtype, "--device", args.device,
                       "--batch", str(args.batch), "--runs", str(args.runs), "--warmup", str(args.warmup),
                       "--threads", str(args.threads), "--fine-megapixels", str(args.fine_megapixels)]
                cmd += (["--compile"] if args.compile else []) + (["--highres"] if args.highres else [])
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
                    print(f"| {variant} | {resolution} | {dtype} | failed: {reason} | | | | |")
                    continue
                r = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"| {variant} | {resolution} | {dtype} | {r['median_s']:.3f} | {r['min_s']:.3f} "
                      f"| {r['first_s']:.3f} | {r['peak_gb']:.2f} | {r['rel_err']:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
