"""Benchmark: median warm latency, first call, peak memory and error, printed as a table.

    python -m birefnet.bench --variant swin_v1_l --resolution 1024 --dtype fp32 bf16 --threads 2
    python -m birefnet.bench --device cuda --dtype fp32 fp16 bf16 --official ../BiRefNet

Backends: `torch` (this library, eager or `--compile`d), `official` (the official model
from a checkout of ZhengPeng7/BiRefNet given by `--official DIR`, loaded with the same
weights, as the baseline of the same series), `openvino` (`OpenVINOModel`, CPU; its IR cache
lives in --cache, so the first row of a variant and size converts ("cold") and later rows load
it ("warm")) and `onnxruntime` (the `birefnet export` file on the CPU provider; fp32). The
setup column is the time from nothing to a model ready to run: build and load, plus
conversion/compilation or export. Each row runs in a fresh subprocess so that
peak resident memory (CPU) or peak allocated memory (CUDA) belongs to that row alone.
Weights are random (seeded); speed and memory do not depend on their values. The error
column is the final logits' ‖out − ref‖ / ‖ref‖ against this library in fp32 on the same
weights; the last column the median time over the official model's in fp32. The device defaults
to $BIREFNET_DEVICE, else the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from .inference import parse_size

BACKENDS = ("torch", "official", "openvino", "onnxruntime")


def official_model(directory: str | os.PathLike, variant: str) -> torch.nn.Module:
    """The official BiRefNet (`models.birefnet.BiRefNet`) from a checkout, built for `variant`.

    The official `Config` picks its backbone by an index into a list literal; the index is
    pointed at `variant` in a copy of its source, nothing on disk changes.
    """
    directory = Path(directory).resolve()
    source = (directory / "config.py").read_text()
    choice = re.search(r"self\.bb = \[(.*?)\]\[(\d+)\]", source, re.S)
    if choice is None:
        raise SystemExit(
            f"{directory / 'config.py'}: no `self.bb = [...][N]` choice found; is this a BiRefNet checkout?"
        )
    names = re.findall(r"'([^']+)'", choice.group(1))
    if variant not in names:
        raise SystemExit(f"the official code at {directory} has no backbone {variant!r}")
    start, end = choice.span(2)
    config = types.ModuleType("config")
    config.__file__ = str(directory / "config.py")
    exec(compile(source[:start] + str(names.index(variant)) + source[end:], config.__file__, "exec"), config.__dict__)
    sys.modules["config"] = config
    sys.path.insert(0, str(directory))
    return importlib.import_module("models.birefnet").BiRefNet(bb_pretrained=False)


def _worker(args) -> dict:
    from .checkpoint_files import model_to_official_keys
    from .device import parse_dtype
    from .model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype)
    h, w = args.resolution
    x = torch.randn(args.batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    setup = time.perf_counter()
    reference = build_model(args.variant).eval()  # this library in fp32: the error's reference and the weights
    label = args.backend
    if args.backend == "official":
        model = official_model(args.official, args.variant).eval()
        model.load_state_dict(model_to_official_keys(reference.state_dict(), args.variant))
        model = model.to(device=device, dtype=dtype)
        run = lambda: model(x.to(device=device, dtype=dtype))[-1]  # its eval forward returns a list of maps
    elif args.backend == "openvino":
        from .openvino_backend import OpenVINOModel

        reference.info = None
        model = OpenVINOModel(reference, precision=dtype, cache=args.cache, threads=args.threads)
        label += " (warm cache)" if model.ir_path((h, w)).exists() else " (cold cache)"
        model.prepare((h, w))
        run = lambda: model(x)
    elif args.backend == "onnxruntime":
        import onnxruntime

        if dtype != torch.float32:
            raise SystemExit("n/a: the ONNX export runs in fp32 on the CPU provider")

        from .export import export_onnx

        path = Path(args.cache) / f"{args.variant}-{w}x{h}-{os.getpid()}.onnx"
        export_onnx(reference, path, (h, w))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        path.unlink()
        run = lambda: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    else:
        model = build_model(args.variant).eval()
        model.load_state_dict(reference.state_dict())
        model = model.to(device=device, dtype=dtype)
        if args.compile:
            model = torch.compile(model)
        run = lambda: model(x.to(device=device, dtype=dtype))
    setup = time.perf_counter() - setup
    if args.highres:  # the whole coarse-to-fine pipeline on one random RGB image of that size
        from .highres import segment_highres

        picture = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
        run = lambda: segment_highres(model, picture, fine_megapixels=args.fine_megapixels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for _ in range(max(args.warmup, 1) + args.runs):
            sync()
            start = time.perf_counter()
            out = run()
            sync()
            times.append(time.perf_counter() - start)
    first, times = times[0], times[max(args.warmup, 1) :]
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    error = None
    if not args.highres and (dtype != torch.float32 or args.backend != "torch" or args.compile):
        with torch.inference_mode():
            ref = reference.to(device)(x.to(device)).float()
            error = ((out.float() - ref).norm() / ref.norm()).item()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "first_s": first,
        "peak_gb": peak_gb,
        "rel_err": error,
        "setup_s": setup,
        "label": label,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birefnet.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", nargs="+", default=["swin_v1_l"])
    parser.add_argument("--resolution", nargs="+", default=["1024"], help="1024 or WIDTHxHEIGHT")
    parser.add_argument("--backend", nargs="+", default=["torch"], choices=BACKENDS)
    parser.add_argument(
        "--official",
        metavar="DIR",
        help="a checkout of ZhengPeng7/BiRefNet: adds the official model as the first backend",
    )
    parser.add_argument("--device", default=os.environ.get("BIREFNET_DEVICE", "cpu"))
    parser.add_argument("--dtype", nargs="+", default=["fp32"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (first call = compilation)")
    parser.add_argument(
        "--highres",
        action="store_true",
        help="time segment_highres on an image of each --resolution (e.g. 7680x4320) instead of one forward",
    )
    parser.add_argument("--fine-megapixels", type=float, default=4.2, help="with --highres: the fine pass's cap")
    parser.add_argument("--cache", help="OpenVINO IR cache and ONNX scratch folder (default: a fresh temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.variant, args.dtype, args.resolution = args.variant[0], args.dtype[0], parse_size(args.resolution[0])
        args.backend = args.backend[0]
        print(json.dumps(_worker(args)))
        return 0
    backends = list(dict.fromkeys((["official"] if args.official else []) + args.backend))
    if args.cache is None:
        import tempfile

        args.cache = tempfile.mkdtemp(prefix="birefnet-bench-")
    if "official" in backends and not args.official:
        parser.error("--backend official needs --official DIR (a checkout of ZhengPeng7/BiRefNet)")

    name = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )
    print(
        f"# {name}, torch {torch.__version__}, {args.threads} threads, device {args.device}, batch {args.batch}, "
        f"{args.runs} warm runs"
        + (", torch.compile" if args.compile else "")
        + (f", segment_highres (fine pass <= {args.fine_megapixels} MP)" if args.highres else "")
    )
    print(
        "| variant | resolution | backend | dtype | median s | min s | first call s | setup s | peak GB | rel. err "
        "| vs official fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in args.variant:
        for resolution in args.resolution:
            baseline = None  # the official model's fp32 time: every ratio of this variant and size is to it
            for dtype in args.dtype:
                for backend in backends:
                    cmd = [
                        sys.executable,
                        "-m",
                        "birefnet.bench",
                        "--worker",
                        "--variant",
                        variant,
                        "--backend",
                        backend,
                        "--resolution",
                        resolution,
                        "--dtype",
                        dtype,
                        "--device",
                        args.device,
                        "--batch",
                        str(args.batch),
                        "--runs",
                        str(args.runs),
                        "--warmup",
                        str(args.warmup),
                        "--threads",
                        str(args.threads),
                        "--fine-megapixels",
                        str(args.fine_megapixels),
                        "--cache",
                        args.cache,
                    ]
                    cmd += ["--official", args.official] if args.official else []
                    cmd += (["--compile"] if args.compile else []) + (["--highres"] if args.highres else [])
                    result = subprocess.run(cmd, capture_output=True, text=True)
                    if result.returncode != 0:
                        reason = (result.stderr.strip().splitlines() or ["failed"])[-1][:160]
                        print(
                            f"| {variant} | {resolution} | {backend} | {dtype} | failed: {reason} | | | | | | |",
                            flush=True,
                        )
                        continue
                    r = json.loads(result.stdout.strip().splitlines()[-1])
                    if backend == "official" and dtype in ("fp32", "float32"):
                        baseline = r["median_s"]
                    ratio = f"{r['median_s'] / baseline:.2f}x" if baseline else ""
                    error = "" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
                    print(
                        f"| {variant} | {resolution} | {r['label']} | {dtype} | {r['median_s']:.3f} | {r['min_s']:.3f} "
                        f"| {r['first_s']:.3f} | {r['setup_s']:.1f} | {r['peak_gb']:.2f} | {error} | {ratio} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
