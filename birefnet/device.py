"""Device and precision choice, checked before anything is loaded: an unavailable device is one line
of error, not a traceback from deep inside torch."""

from __future__ import annotations

import torch


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA, else Apple MPS, else CPU) or an explicit device that must exist here."""
    if isinstance(name, str) and name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} is not available: this machine has no usable CUDA GPU; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} is not available (no Apple GPU); use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 (else fp16) on CUDA, fp16 on MPS, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


SLOW_FP16 = (
    "fp16 on this CPU runs about 100 times slower than fp32 (PyTorch has no fast fp16 kernels for it): "
    "use dtype auto (fp32 on CPUs) or bf16"
)


def slow_fp16(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `dtype` is fp16 on a CPU without fast fp16 kernels (oneDNN's need AVX512-FP16 or AMX-FP16):
    there fp16 convolutions fall back to a reference loop, 136 s against 1.1 s in fp32 for a 512² frame
    (AMD EPYC, AVX-512 bf16). Still correct, so it is said rather than refused."""
    if device.type != "cpu" or dtype != torch.float16:
        return False
    try:
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):  # a torch without the query
        return True


def parse_dtype(dtype) -> torch.dtype:
    """torch.dtype or a name: fp32/float32, fp16/float16/half, bf16/bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16") from None
