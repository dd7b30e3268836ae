"""Benchmark: median warm latency, first call, peak memory and error, printed as a table.

    python -m birefnet.bench --variant swin_v1_l --resolution 1024 --dtype fp32 bf16 --threads 2
    python -m birefnet.bench --device cuda --dtype fp32 fp16 bf16 --official ../BiRefNet
    python -m birefnet.bench --device cuda --official ../BiRefNet --row fp16/eager/1 fp16/graphs/1 bf16/banded+graphs/8

Backends: `torch` (this library), `official` (the official model from a checkout of
ZhengPeng7/BiRefNet given by `--official DIR`, loaded with the same weights, as the baseline of
the same series), `openvino` (`OpenVINOModel`, CPU; its IR cache lives in --cache, so the first
row of a variant and size converts ("cold") and later rows load it ("warm")) and `onnxruntime`
(the `birefnet export` file on the CPU provider; fp32).

Paths of the torch backend (`--path`, features joined by "+", e.g. channels-last+graphs):
eager; graphs (the forward replayed as a CUDA graph, `birefnet.cuda_graphs`); channels-last
(weights and input in NHWC); cudnn-benchmark (cuDNN picks each convolution's algorithm by timing
them on the first call per shape); banded (the grid_sample deformable convolution in the model's
dtype, `BIREFNET_DEFORM_CONV=banded`); triton (the fused Triton deformable convolution,
`BIREFNET_DEFORM_CONV=triton`, CUDA); torchvision (torchvision's kernel whatever its buffer,
`BIREFNET_DEFORM_CONV=torchvision`; with graphs it runs eager between graph pieces); between (with
graphs: the deformable convolution eager between graph pieces, as eager chooses it: torchvision's
kernel within its buffer limit); compile, compile:reduce-overhead, compile:max-autotune
(`torch.compile` modes). Rows are every --dtype x --path x --batch, or the `--row DTYPE/PATH/BATCH`
list; the official model runs first at batch 1 in each `--official-dtype`.

The setup column is the time from nothing to a model ready to run: build and load, plus
conversion or export. The first call includes CUDA graph capture or compilation. Each row runs
in a fresh subprocess so that peak resident memory (CPU) or peak allocated memory (CUDA) belongs
to that row alone. Weights are random (seeded); speed and memory do not depend on their values.
The error column is the final logits' ‖out − ref‖ / ‖ref‖ against this library in fp32 on the
same weights and input; the last column the time per image over the official model's fp32 time
per image. `--frames WxH` times the path a clip's frames take instead of one forward: this
library's `segment()` on --batch random uint8 frames of that size at the working size
--resolution (conversion, resize in, forward, resize out, masks to the CPU), and the official
model through the official inference recipe (torchvision's Resize, ToTensor and Normalize on
the CPU per PIL frame; the mask back through ToPILImage and a PIL resize). `--profile` prints
each row's top kernels (torch.profiler, self device time on CUDA, self CPU time on the CPU)
below the table. The device defaults to $BIREFNET_DEVICE, else the CPU.
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
from contextlib import nullcontext
from pathlib import Path

import torch

from .compiled import MODES, compile_model
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


DEFORM_FEATURES = ("banded", "triton", "torchvision", "between")  # deformable-convolution choices: one per path
FEATURES = ("eager", "graphs", "channels-last", "cudnn-benchmark", *DEFORM_FEATURES, "compile")


def parse_path(text: str) -> dict:
    """'channels-last+graphs' -> {"graphs": True, "channels_last": True, ...}; unknown parts are one-line errors."""
    path = {"graphs": False, "channels_last": False, "cudnn_benchmark": False, "deform": None, "compile": None}
    for part in text.split("+"):
        feature, _, mode = part.partition(":")
        if feature not in FEATURES or (mode and feature != "compile"):
            raise ValueError(f"path {text!r}: unknown part {part!r}; use {', '.join(FEATURES)} joined by +")
        if feature == "compile":
            if (mode or "default") not in MODES:
                raise ValueError(f"path {text!r}: compile mode {mode!r}; use compile:{' or compile:'.join(MODES)}")
            path["compile"] = mode or "default"
        elif feature in DEFORM_FEATURES:
            if path["deform"] not in (None, feature):
                choices = f"{', '.join(DEFORM_FEATURES[:-1])} or {DEFORM_FEATURES[-1]}"
                raise ValueError(f"path {text!r}: choose one of {choices}")
            path["deform"] = feature
        elif feature != "eager":
            path[feature.replace("-", "_")] = True
    return path


def parse_row(text: str) -> tuple[str, str, int]:
    """'fp16/graphs/8' -> ("fp16", "graphs", 8)."""
    try:
        dtype, path, batch = text.split("/")
        parse_path(path)
        return dtype, path, int(batch)
    except ValueError as err:
        raise ValueError(f"row {text!r}: use DTYPE/PATH/BATCH, e.g. fp16/graphs/1 ({err})") from None


def _torch_run(model, args, x, device, dtype):
    """(run, label) for this library's model on `args.path`."""
    from . import cuda_graphs
    from .deform_conv import implementation

    path = parse_path(args.path)
    if path["graphs"] and device.type != "cuda":
        raise SystemExit("n/a: CUDA graphs need a CUDA device")
    between = path["deform"] == "between"
    if between and not path["graphs"]:
        raise SystemExit("n/a: between is a form of CUDA graphs: between+graphs")
    layout = torch.channels_last if path["channels_last"] else torch.contiguous_format
    torch.backends.cudnn.benchmark = path["cudnn_benchmark"]  # cuDNN times its algorithms per shape in the warm-up
    model = model.to(device=device, dtype=dtype, memory_format=layout)
    if path["compile"]:
        model = compile_model(model, path["compile"])
    forward = model
    if path["graphs"]:
        # the first call captures: its time is the cost
        cache = cuda_graphs.GraphCache(model, capture_at=1, deform="between" if between else None)
        forward = lambda t: cache.run(model, t)
    choice = (lambda: implementation(path["deform"])) if path["deform"] and not between else nullcontext
    return lambda: _call(forward, x.to(device=device, dtype=dtype, memory_format=layout), choice), model


def _call(forward, x, context):
    """forward(x) inside `context()` (the path's deformable-convolution choice, around the graphs too)."""
    with context():
        return forward(x)


def _profile(run, sync, cuda: bool, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(3):
            run()
            sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


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
        run, model = _torch_run(model, args, x, device, dtype)
    setup = time.perf_counter() - setup
    if args.highres:  # the whole coarse-to-fine pipeline on one random RGB image of that size
        from .highres import segment_highres

        picture = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
        run = lambda: segment_highres(model, picture, fine_megapixels=args.fine_megapixels)
    if args.frames:
        run = _frames_run(args, model, device, dtype)
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
    profile = _profile(run, sync, device.type == "cuda", args.profile_rows) if args.profile else None
    error = None
    whole_path = args.highres or args.frames  # no logits to compare
    if not whole_path and (dtype != torch.float32 or args.backend != "torch" or args.path != "eager"):
        out = out.float().cpu()
        del model, run
        with torch.inference_mode():
            ref = reference.to(device)(x.to(device)).float().cpu()
        error = ((out - ref).norm() / ref.norm()).item()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "first_s": first,
        "peak_gb": peak_gb,
        "rel_err": error,
        "setup_s": setup,
        "label": label,
        "profile": profile,
    }


def _frames_run(args, model, device, dtype):
    """One call over --batch uint8 frames (H, W, 3) of size --frames, as decoded video gives them."""
    import numpy as np

    height, width = args.frames
    frames = [np.random.default_rng(i).integers(0, 256, (height, width, 3), np.uint8) for i in range(args.batch)]
    if args.backend == "torch":
        from . import cuda_graphs
        from .inference import segment

        if args.path not in ("eager", "graphs"):
            raise SystemExit("n/a: --frames runs segment() as users get it: path eager or graphs")
        cuda_graphs.enable(model, args.path == "graphs")  # graphs: segment()'s own cache, captured at the 2nd call
        return lambda: segment(model, frames, resolution=args.resolution, batch_size=args.batch)
    from PIL import Image
    from torchvision import transforms

    prepare = transforms.Compose(
        [
            transforms.Resize(args.resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def official_recipe():
        pictures = [Image.fromarray(frame) for frame in frames]
        batch = torch.stack([prepare(picture) for picture in pictures]).to(device=device, dtype=dtype)
        preds = model(batch)[-1].sigmoid().float().cpu()
        return [transforms.ToPILImage()(pred).resize(picture.size) for pred, picture in zip(preds, pictures)]

    return official_recipe


def _series(args, backends) -> list[tuple[str, str, str, int]]:
    """(backend, dtype, path, batch) rows of one variant and size, the official baseline first."""
    rows = [("official", dtype, "eager", 1) for dtype in args.official_dtype] if "official" in backends else []
    torch_rows = [parse_row(r) for r in args.row] or [
        (dtype, path, batch) for dtype in args.dtype for path in args.path for batch in args.batch
    ]
    for backend in backends:
        if backend == "torch":
            rows += [("torch", dtype, path, batch) for dtype, path, batch in torch_rows]
        elif backend != "official":
            rows += [(backend, dtype, "eager", batch) for dtype in args.dtype for batch in args.batch]
    return rows


def _run_row(args, variant, resolution, backend, dtype, path, batch) -> tuple[dict | None, str]:
    cmd = [sys.executable, "-m", "birefnet.bench", "--worker", "--variant", variant, "--backend", backend]
    cmd += ["--resolution", resolution, "--dtype", dtype, "--path", path, "--device", args.device]
    cmd += ["--batch", str(batch), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads), "--fine-megapixels", str(args.fine_megapixels), "--cache", args.cache]
    cmd += ["--official", args.official] if args.official else []
    cmd += (["--highres"] if args.highres else []) + (["--profile"] if args.profile else [])
    cmd += ["--frames", f"{args.frames[1]}x{args.frames[0]}"] if args.frames else []
    cmd += ["--profile-rows", str(args.profile_rows)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.row_timeout:.0f} s"
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return json.loads(result.stdout.strip().splitlines()[-1]), ""


def build_parser() -> argparse.ArgumentParser:
    """The command line, apart from main so that the prepared GPU check's commands can be checked on any machine."""
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
    parser.add_argument("--official-dtype", nargs="+", default=["fp32"], help="the official model's rows (batch 1)")
    parser.add_argument("--device", default=os.environ.get("BIREFNET_DEVICE", "cpu"))
    parser.add_argument("--dtype", nargs="+", default=["fp32"])
    parser.add_argument("--path", nargs="+", default=["eager"], help="torch paths, e.g. eager graphs triton+graphs")
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--row", nargs="+", default=[], help="explicit torch rows DTYPE/PATH/BATCH instead of all")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="the same as --path compile")
    parser.add_argument("--row-timeout", type=float, default=None, help="seconds before a row is given up")
    parser.add_argument("--profile", action="store_true", help="print each row's top kernels (torch.profiler)")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument(
        "--highres",
        action="store_true",
        help="time segment_highres on an image of each --resolution (e.g. 7680x4320) instead of one forward",
    )
    parser.add_argument("--fine-megapixels", type=float, default=4.2, help="with --highres: the fine pass's cap")
    parser.add_argument(
        "--frames",
        type=parse_size,
        metavar="WxH",
        help="time segment() (official: its inference recipe) on --batch uint8 frames of this size, not one forward",
    )
    parser.add_argument("--cache", help="OpenVINO IR cache and ONNX scratch folder (default: a fresh temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The options, with every --path and --row checked before anything is built."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compile:
        args.path = ["compile"]
    try:
        for text in args.path:
            parse_path(text)
        for text in args.row:
            parse_row(text)
    except ValueError as err:
        parser.error(str(err))
    if (args.compile or args.path != ["eager"]) and "torch" not in args.backend:  # they would run eager, unsaid
        parser.error("--path and --compile choose how the torch backend runs: add --backend torch")
    if "official" in args.backend and not args.official:
        parser.error("--backend official needs --official DIR (a checkout of ZhengPeng7/BiRefNet)")
    if args.frames and (args.highres or set(args.backend) - {"torch", "official"}):
        parser.error("--frames times segment() and the official recipe: backends torch and official, without --highres")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        args.variant, args.dtype, args.resolution = args.variant[0], args.dtype[0], parse_size(args.resolution[0])
        args.backend, args.path, args.batch = args.backend[0], args.path[0], args.batch[0]
        print(json.dumps(_worker(args)))
        return 0
    backends = list(dict.fromkeys((["official"] if args.official else []) + args.backend))
    if args.cache is not None:
        return _table(args, backends)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="birefnet-bench-") as cache:  # this run's exports, removed after
        args.cache = cache
        return _table(args, backends)


def _table(args, backends) -> int:
    """Run every row of the series, each in its own process, and print the table."""

    name = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )
    print(
        f"# {name}, torch {torch.__version__}, {args.threads} threads, device {args.device}, {args.runs} warm runs"
        f" after {max(args.warmup, 1)} warm-up"
        + (f", segment_highres (fine pass <= {args.fine_megapixels} MP)" if args.highres else "")
        + (f", whole path on uint8 frames of {args.frames[1]}x{args.frames[0]}" if args.frames else "")
    )
    print(
        "| variant | resolution | backend | path | dtype | batch | median s | min s | images/s | first call s "
        "| setup s | peak GB | rel. err | vs official fp32 per image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    profiles = []
    for variant in args.variant:
        for resolution in args.resolution:
            baseline = None  # the official model's fp32 time per image: every ratio of this variant and size is to it
            for backend, dtype, path, batch in _series(args, backends):
                r, reason = _run_row(args, variant, resolution, backend, dtype, path, batch)
                head = (
                    f"| {variant} | {resolution} | {backend if r is None else r['label']} | {path} | {dtype} | {batch}"
                )
                if r is None:
                    print(f"{head} | failed: {reason} | | | | | | | |", flush=True)
                    continue
                per_image = r["median_s"] / batch
                if backend == "official" and dtype in ("fp32", "float32"):
                    baseline = per_image
                ratio = f"{per_image / baseline:.2f}x" if baseline else ""
                error = "" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
                print(
                    f"{head} | {r['median_s']:.4f} | {r['min_s']:.4f} | {batch / r['median_s']:.2f} "
                    f"| {r['first_s']:.3f} | {r['setup_s']:.1f} | {r['peak_gb']:.2f} | {error} | {ratio} |",
                    flush=True,
                )
                if r["profile"]:
                    profiles.append((f"{variant} {resolution} {backend} {path} {dtype} batch {batch}", r["profile"]))
    for title, table in profiles:
        print(f"\n## Top kernels: {title}\n\n```\n{table}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
