"""Export a BiRefNet to ONNX or OpenVINO IR for deployment runtimes.

What is exported is the plain graph (`fastpath.plain_graph`: standard ops and torchvision's
deformable convolution, which becomes ONNX's `DeformConv`, opset 19) at one working size,
with a free batch size. The input is `image` (batch, 3, H, W) float, RGB in [0, 1]
normalised with the ImageNet mean and std; the output `logits` (batch, 1, H, W), a mask
after a sigmoid. The file's metadata says all of that (`birefnet.*` keys), so a runtime
needs nothing else. onnxruntime/onnx/onnxscript (extra `onnx`) and openvino (extra
`openvino`) are imported only here, when asked for.
"""

from __future__ import annotations

import copy
import logging
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .extras import import_openvino, require
from .fastpath import plain_graph
from .files import check_writable, current_umask
from .inference import IMAGENET_MEAN, IMAGENET_STD
from .version import __version__

FORMATS = ("onnx", "openvino")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}
OPSET = 19  # the first with DeformConv


def metadata(model, size: tuple[int, int], dtype: torch.dtype) -> dict[str, str]:
    """What a runtime needs to feed and read the exported graph (string values, as both formats store)."""
    info = getattr(model, "info", None)
    height, width = size
    return {
        "birefnet.input": "image: (batch, 3, height, width) RGB in [0, 1], normalised: (x - mean) / std",
        "birefnet.output": "logits: (batch, 1, height, width); mask = sigmoid(logits)",
        # The official code resizes without antialiasing, its model card with PIL; this library (and the
        # outputs the tests compare) antialias, so a runtime without the library is told which.
        "birefnet.resize": "image to (height, width) and mask back to the image's size: bilinear, antialiased "
        "when shrinking (PIL's BILINEAR; torch interpolate antialias=True)",
        "birefnet.height": str(height),
        "birefnet.width": str(width),
        "birefnet.mean": ",".join(map(str, IMAGENET_MEAN)),
        "birefnet.std": ",".join(map(str, IMAGENET_STD)),
        "birefnet.dtype": str(dtype).removeprefix("torch."),
        "birefnet.backbone": model.config.backbone,
        "birefnet.tile_layout": model.config.tile_layout,
        "birefnet.checkpoint": (info.known.name if info and info.known else Path(info.source).name if info else ""),
        "birefnet.toolkit": __version__,
    }


def _example(model, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """A batch of 2: torch.export specialises sizes 0 and 1, so 2 keeps the batch symbolic."""
    param = next(model.parameters())
    return torch.zeros(batch, 3, *size, device=param.device, dtype=param.dtype)


def check_request(fmt: str, dtype: torch.dtype, dynamic_size: bool = False) -> None:
    """Format, dtype, free size and the format's extra, checked before a model loads or any work."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(
            f"export dtype {dtype}: use fp32 or fp16 (bf16 is a runtime choice: OpenVINO's precision hint)"
        )
    if dynamic_size and fmt != "onnx":
        raise ValueError("--dynamic-size is for ONNX; OpenVINO IR is exported per working size")
    if fmt == "onnx":
        require("onnxscript", "onnx")
    else:
        import_openvino()


def _parts(path: Path, fmt: str) -> tuple[Path, ...]:
    """The files an export writes: the IR's .bin, or an ONNX file's external weights (`NAME.onnx.data`,
    written when the weights pass protobuf's 2 GB limit, e.g. DINOv3-H+ in fp32), the named file last."""
    extra = path.with_suffix(".bin") if fmt == "openvino" else path.with_name(path.name + ".data")
    return extra, path


def check_target(path, fmt: str) -> Path:
    """The output path, if it has the format's extension and does not exist yet (checked before any work)."""
    path = Path(path)
    # OpenVINO writes IR only under a lower-case .xml (model.XML failed after the whole conversion).
    if (path.suffix if fmt == "openvino" else path.suffix.lower()) != SUFFIXES[fmt]:
        wanted = path.with_suffix(SUFFIXES[fmt])
        raise ValueError(f"{path}: an {fmt} export is written as a {SUFFIXES[fmt]} file; choose --out {wanted}")
    for existing in _parts(path, fmt):
        if existing.exists():
            raise ValueError(f"{existing} exists; choose another --out or delete it (exports never overwrite a file)")
    try:
        check_writable(path.parent)  # made now, not after minutes of export
    except OSError as err:
        reason = "a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError)) else err.strerror
        raise ValueError(
            f"--out {path}: cannot write in {path.parent} ({reason or err}); choose another --out"
        ) from None
    return path


@contextmanager
def _staged(path: Path, fmt: str):
    """A fresh folder to write `path`'s files in under their final names (so the references between
    them hold); on success they move beside `path`, the named file last: it appears only when whole."""
    staging = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir(parents=True)
    try:
        yield staging / path.name
        for part in _parts(path, fmt):
            if (staging / part.name).exists():
                (staging / part.name).chmod(0o666 & ~current_umask())
                (staging / part.name).replace(part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_as(model, dtype: torch.dtype, device: torch.device | None = None):
    """`model` in `dtype` (on `device`): itself when it already is, else a converted copy, so an
    export never changes the caller's model (a round trip through fp16 would lose its fp32 weights)."""
    param = next(model.parameters())
    if param.dtype == dtype and (device is None or param.device == device):
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def _check_size(model, size) -> tuple[int, int]:
    from .model import MIN_SIZE

    height, width = size
    if height % 32 or width % 32 or height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"export size {width}x{height}: width and height must be multiples of 32, at least {MIN_SIZE}")
    return height, width


@contextmanager
def _quiet():
    """Exporters report every traced shape guard and ambiguous attribute; only errors matter here."""
    loggers = [
        logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _deform_conv_translation():
    """torchvision::deform_conv2d as ONNX DeformConv (same argument order but for offset/weight)."""
    from onnxscript import opset19 as op

    def deform_conv2d(
        input,
        weight,
        offset,
        mask,
        bias,
        stride_h: int,
        stride_w: int,
        pad_h: int,
        pad_w: int,
        dil_h: int,
        dil_w: int,
        n_weight_grps: int,
        n_offset_grps: int,
        use_mask: bool,
    ):
        return op.DeformConv(
            input,
            weight,
            offset,
            bias,
            mask,
            strides=[stride_h, stride_w],
            pads=[pad_h, pad_w, pad_h, pad_w],
            dilations=[dil_h, dil_w],
            group=n_weight_grps,
            offset_group=n_offset_grps,
        )

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}


def export_onnx(model, path, size: tuple[int, int], *, dynamic_size: bool = False) -> Path:
    """Write `model` as an ONNX file (opset 19) for (height, width) `size`, batch free.

    dynamic_size: also leave height and width free (multiples of 32 from 64 to 16384). Runtimes
    optimise a fixed size better (TensorRT wants one), so it is off by default.
    """
    require("onnxscript", "onnx")
    height, width = _check_size(model, size)  # before check_target makes --out's folder
    path = check_target(path, "onnx")
    dims = {0: torch.export.Dim("batch")}
    if dynamic_size:
        dims.update(
            {2: 32 * torch.export.Dim("height32", min=2, max=512), 3: 32 * torch.export.Dim("width32", min=2, max=512)}
        )
    model = model.eval()
    try:
        with torch.no_grad(), plain_graph(), _quiet():
            # A free size is traced at 352x480, whose 11 and 15 stride-32 cells cannot be mistaken for the
            # batch of 2 (equal example sizes get merged into one symbol).
            example = _example(model, (352, 480) if dynamic_size else (height, width))
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes={"x": dims},
                custom_translation_table=_deform_conv_translation(),
                verbose=False,
                report=False,
            )
    except Exception as err:
        if dynamic_size:
            raise ValueError(
                f"{model.config.backbone} does not export with a free height and width "
                f"({type(err).__name__}); export without --dynamic-size (one file per working size)"
            ) from None
        raise
    program.model.metadata_props.update(metadata(model, (height, width), next(model.parameters()).dtype))
    # height/width: the working size the checkpoint was made for; with a free size, any multiple of 32 runs.
    program.model.metadata_props["birefnet.free_size"] = "true" if dynamic_size else "false"
    with _staged(path, "onnx") as staged:
        program.save(str(staged), external_data=False)  # torch still writes NAME.onnx.data past 2 GB
    return path


def to_openvino(model, size: tuple[int, int]):
    """The plain graph as an `openvino.Model` for (height, width) `size`, batch free (not yet compiled)."""
    ov = import_openvino()
    height, width = _check_size(model, size)
    model = _copy_as(model, torch.float32, torch.device("cpu")).eval()
    with torch.no_grad(), plain_graph(), _quiet():
        converted = ov.convert_model(model, example_input=_example(model, (height, width)))
    # Height and width fixed, batch free: a traced graph may keep constants of its size (DINOv3's rotary
    # table did: 3% off at other sizes), so runtimes refuse another size rather than risk wrong masks.
    # OpenVINO 2026.4's CPU plugin compiles this for every backbone family (Swin-L 1024² too), f32 and bf16.
    converted.reshape({converted.inputs[0]: ov.PartialShape([-1, 3, height, width])})
    converted.inputs[0].get_tensor().set_names({"image"})
    converted.outputs[0].get_tensor().set_names({"logits"})
    return converted


def save_openvino(converted, path, meta: dict[str, str], *, compress_to_fp16: bool = False) -> Path:
    """Write an `openvino.Model` as IR (PATH.xml + PATH.bin) with `meta` in its rt_info, atomically."""
    ov = import_openvino()
    path = Path(path)
    for key, value in meta.items():
        converted.set_rt_info(value, ["birefnet", key.removeprefix("birefnet.")])
    with _staged(path, "openvino") as staged:
        ov.save_model(converted, str(staged), compress_to_fp16=compress_to_fp16)
    return path


def export_openvino(model, path, size: tuple[int, int], *, compress_to_fp16: bool = False) -> Path:
    """Write `model` as OpenVINO IR (PATH.xml + PATH.bin) for (height, width) `size`, batch free.
    compress_to_fp16 stores the weights in fp16 (half the file; computed in the runtime's precision)."""
    size = _check_size(model, size)  # before check_target makes --out's folder
    path = check_target(path, "openvino")
    converted = to_openvino(model, size)
    return save_openvino(
        converted,
        path,
        metadata(model, size, torch.float16 if compress_to_fp16 else torch.float32),
        compress_to_fp16=compress_to_fp16,
    )


def export(
    model, path, fmt: str, size: tuple[int, int], *, dtype: torch.dtype = torch.float32, dynamic_size: bool = False
) -> Path:
    """`export_onnx` or `export_openvino` by `fmt` ("onnx" or "openvino").

    dtype: float32, or float16 (ONNX: an fp16 graph for GPU runtimes such as onnxruntime's CUDA
    provider or TensorRT; OpenVINO: fp16 weights in the file). `model` itself is left as it was.
    """
    check_request(fmt, dtype, dynamic_size)
    if fmt == "onnx":
        return export_onnx(_copy_as(model, dtype), path, size, dynamic_size=dynamic_size)
    return export_openvino(model, path, size, compress_to_fp16=dtype == torch.float16)
