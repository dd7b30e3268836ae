"""The commands around segmenting: what a weight file is (`info`), the known checkpoints (`list`,
`download`), deployment files (`export`), the local server (`serve`) and the Krita plug-in's zip."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import backbones
from ..device import parse_dtype
from ..files import new_folders_removed_on_failure
from ..loading import load_model
from ..zoo import listed
from .flags import add_tile_layout_flag, export_size, positive, weights_source


def add_parsers(sub) -> None:
    """info, list, download, export, serve, krita-plugin."""
    info = sub.add_parser("info", help="print what a weight file is (variant, layout, resolution)")
    info.add_argument("weights", nargs="+", help="weight files or known names (downloaded ones)")
    add_tile_layout_flag(info)
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
    add_tile_layout_flag(exp)
    exp.set_defaults(func=cmd_export)

    add_serve_parser(sub)

    krita = sub.add_parser(
        "krita-plugin",
        help="write the Krita plug-in as a zip for Krita's Tools > Scripts > Import Python Plugin from File",
    )
    krita.add_argument("--out", required=True, help="the zip file to write (never overwritten)")
    krita.set_defaults(func=cmd_krita_plugin)


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
        "--backend",
        choices=("torch", "openvino"),
        default="torch",
        help="openvino: the fastest CPU runtime (extra `openvino`); the checkpoint's working size is converted at "
        "start (minutes the first time, cached), other sizes run in PyTorch",
    )
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
    from ..hub import download, resolve

    for name in args.names:
        known = resolve(name)
        path = download(known, args.dir, accept_license=args.accept_license)
        print(f"birefnet: {known.name} ({known.backbone}, {known.size_text}) is at {path}", file=sys.stderr)
        print(path)
    return 0


def cmd_export(args) -> int:
    import time

    from ..export import check_request, check_target, export

    fmt = args.format or {".onnx": "onnx", ".xml": "openvino"}.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {args.out}: name it .onnx or .xml (OpenVINO IR), or give --format")
    dtype = parse_dtype(args.dtype)
    check_request(fmt, dtype, args.dynamic_size)
    with new_folders_removed_on_failure(Path(args.out).parent):  # a failed export leaves no folder behind
        check_target(args.out, fmt)
        source = weights_source(args.weights, args.download, args.accept_license)
        model = load_model(source, tile_layout=args.tile_layout)
        size = args.size or model.info.resolution or (1024, 1024)
        print(
            f"{model.info.describe()}\nbirefnet: exporting to {fmt} at {size[1]}x{size[0]} (minutes for large "
            "backbones)",
            file=sys.stderr,
        )
        start = time.perf_counter()
        path = export(model, args.out, fmt, size, dtype=dtype, dynamic_size=args.dynamic_size)
    print(f"birefnet: wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(path)
    return 0


def cmd_serve(args) -> int:
    from ..extras import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "server")
    from ..server import serve

    return serve(args)


def cmd_krita_plugin(args) -> int:
    from ..krita_plugin import build_zip

    path = build_zip(args.out)
    print(
        f"birefnet: wrote {path}; in Krita: Tools > Scripts > Import Python Plugin from File, then restart Krita",
        file=sys.stderr,
    )
    return 0
