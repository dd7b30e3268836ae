"""The fused Triton deformable convolution against torchvision's kernel.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, which must be set before
Triton compiles the kernel, hence a fresh process); on CUDA, tests/test_gpu_paths.py runs it for real.
The interpreter's bf16 matrix multiply is broken (numbers of 1e9 from a product of unit values), so
bf16 is checked on CUDA only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

pytest.importorskip("triton", reason="Triton comes with PyTorch's CUDA wheels on Linux")

from birefnet.deform_conv import deform_conv2d, implementation  # noqa: E402
from birefnet.deform_conv_triton import CONFIGS, deform_conv2d_triton  # noqa: E402

INTERPRETED_CASES = r"""
import json, torch
from torchvision.ops import deform_conv2d
from birefnet.deform_conv_triton import CONFIGS, _launch, deform_conv2d_triton, im2col

results = []
# kernel, (H, W), batch, channels in/out, mask, bias, dtype, offset scale (large: many samples fall outside)
cases = [
    (1, (8, 9), 1, 40, 48, True, True, torch.float32, 2.0),
    (3, (9, 13), 2, 40, 48, True, True, torch.float32, 3.0),
    (3, (7, 6), 1, 16, 16, False, False, torch.float32, 8.0),
    (7, (12, 10), 1, 33, 20, True, False, torch.float32, 2.0),
    (3, (10, 11), 1, 40, 48, True, True, torch.float16, 2.0),
]
for kernel, (h, w), batch, c_in, c_out, with_mask, with_bias, dtype, scale in cases:
    g = torch.Generator().manual_seed(kernel * 100 + h)
    taps = kernel * kernel
    x = torch.randn(batch, c_in, h, w, generator=g)
    both = torch.randn(batch, 3 * taps, h, w, generator=g)  # offsets and mask from one map, as the model does
    offset = scale * both[:, : 2 * taps]
    mask = 2 * torch.sigmoid(both[:, 2 * taps :]) if with_mask else None
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=g) / (c_in * taps) ** 0.5
    bias = torch.randn(c_out, generator=g) if with_bias else None
    reference = deform_conv2d(x, offset, weight, bias, padding=(kernel // 2,) * 2, mask=mask)
    low = [None if t is None else t.to(dtype) for t in (x, offset, weight, mask, bias)]
    outs = {"op": deform_conv2d_triton(*low, kernel // 2)}  # the op, first tile sizes
    if kernel < 7:  # every tile size the GPU may pick (the 7x7 takes long in the interpreter)
        outs.update({str(c): _launch(*low, kernel // 2, config=c) for c in CONFIGS[1:]})
    # The banded form's Triton im2col (CUDA's gather), in two bands of output rows, times the weights.
    out_h, out_w = h, w
    half = (out_h // 2) * out_w
    bands = [
        im2col(low[0][i], low[1][i], None if low[3] is None else low[3][i], kernel, kernel // 2, a, b, dtype)
        for i in range(batch)
        for a, b in ((0, half), (half, out_h * out_w))
    ]
    matrix = low[2].reshape(c_out, -1)
    per_image = [torch.cat([matrix @ bands[2 * i], matrix @ bands[2 * i + 1]], dim=1) for i in range(batch)]
    gathered = torch.stack(per_image).view(batch, c_out, out_h, out_w)
    outs["im2col"] = gathered if low[4] is None else gathered + low[4].view(1, -1, 1, 1)
    for tiles, out in outs.items():
        err = ((out.float() - reference).norm() / reference.norm()).item()
        results.append({"kernel": kernel, "dtype": str(dtype), "out_dtype": str(out.dtype), "tiles": tiles,
                        "shape_ok": out.shape == reference.shape, "error": err})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted_results():
    if torch.cuda.is_available():  # Triton 3.6's interpreter fails under NumPy 2.5 on such machines
        pytest.skip("a GPU is here: tests/test_gpu_paths.py checks the compiled kernel on it")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CASES], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fused_kernel_equals_torchvision_in_float32(interpreted_results):
    """Kernels 1, 3 and 7, with and without mask and bias, batches, channel counts off the block
    sizes, offsets that push samples past every border: within float32 rounding of torchvision."""
    fp32 = [r for r in interpreted_results if r["dtype"] == "torch.float32" and r["tiles"] != "im2col"]
    assert {r["kernel"] for r in fp32} == {1, 3, 7} and len({r["tiles"] for r in fp32}) == len(CONFIGS)
    for r in fp32:
        assert r["shape_ok"] and r["out_dtype"] == "torch.float32"
        assert r["error"] < 1e-5, r


def test_fused_kernel_in_fp16_stays_within_fp16_rounding(interpreted_results):
    fp16 = [r for r in interpreted_results if r["dtype"] == "torch.float16" and r["tiles"] != "im2col"]
    assert len(fp16) == len(CONFIGS)
    for r in fp16:
        assert r["shape_ok"] and r["out_dtype"] == "torch.float16"
        assert r["error"] < 5e-3, r  # inputs rounded to 11 bits; sampling and sums in float32


def test_banded_forms_triton_gather_equals_torchvision(interpreted_results):
    """CUDA's gather for the banded form (`im2col`), in two bands of rows, times the weights: torchvision's
    result within float32 rounding, and within fp16 rounding in fp16."""
    rows = [r for r in interpreted_results if r["tiles"] == "im2col"]
    assert {r["kernel"] for r in rows} == {1, 3, 7} and {r["dtype"] for r in rows} == {"torch.float32", "torch.float16"}
    for r in rows:
        assert r["shape_ok"] and r["out_dtype"] == r["dtype"]
        assert r["error"] < (1e-5 if r["dtype"] == "torch.float32" else 5e-3), r


def test_fake_tensors_give_the_output_shape_without_running_the_kernel():
    """What `torch.compile` and the peak-memory estimate see: one op with the right output."""
    with FakeTensorMode():
        x = torch.empty(2, 64, 32, 40, dtype=torch.float16)
        offset = torch.empty(2, 98, 32, 40, dtype=torch.float16)
        weight = torch.empty(256, 64, 7, 7, dtype=torch.float16)
        out = deform_conv2d_triton(x, offset, weight, None, None, 3)
    assert out.shape == (2, 256, 32, 40) and out.dtype == torch.float16


def test_triton_choice_off_cuda_runs_the_default():
    """The switch names a CUDA kernel; on the CPU (and in training) the usual implementation runs."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 12, 12, generator=generator)
    offset = torch.randn(1, 18, 12, 12, generator=generator)
    weight = torch.randn(16, 8, 3, 3, generator=generator)
    with torch.inference_mode():
        default = deform_conv2d(x, offset, weight, None, 1)
        with implementation("triton"):
            chosen = deform_conv2d(x, offset, weight, None, 1)
    assert torch.equal(default, chosen)


def _compile_for_sm90(dtype: str, config, kernel=None) -> dict:
    """Compile a kernel (default the fused one, with `config`'s tiles) ahead of time for an H100-class
    GPU (no GPU needed) and read ptxas's resource use."""
    import inspect
    import re
    import shutil

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from birefnet.deform_conv_triton import _deform_conv_kernel

    kernel = kernel or _deform_conv_kernel
    names = list(inspect.signature(kernel.fn).parameters)
    pointers = {"x_ptr", "offset_ptr", "mask_ptr", "weight_ptr", "bias_ptr", "out_ptr", "cols_ptr"}
    flags = dict(PADDING=3, KERNEL=7, HAS_MASK=True, HAS_BIAS=True, PRECISION=None, **config.kwargs)
    flags = {k: v for k, v in flags.items() if k in names}
    signature = {n: f"*{dtype}" if n in pointers else "constexpr" if n in flags else "i32" for n in names}
    source = ASTSource(kernel, signature, {(names.index(k),): v for k, v in flags.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        cuobjdump = shutil.which("cuobjdump")
    if not cuobjdump:
        pytest.skip("no cuobjdump to read the compiled kernel's resource use")
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", usage)}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_tile_size_compiles_for_sm90_without_register_spills(dtype, tmp_path, monkeypatch):
    """The lowering the interpreter skips (tensor-core dot in bf16 too), checked by compiling for an H100;
    a spill to local memory would make the tuned tile sizes slow on the cards users have."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # not the user's ~/.triton
    for config in CONFIGS:
        usage = _compile_for_sm90(dtype, config)
        tiles = {**config.kwargs, "num_warps": config.num_warps}
        assert usage["REG"] <= 255 and usage["STACK"] == 0 and usage["LOCAL"] == 0, (tiles, usage)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_the_banded_forms_gather_compiles_for_sm90_without_register_spills(dtype, tmp_path, monkeypatch):
    """The interpreter skips lowering: compiled for an H100, Triton's im2col uses no local memory."""
    from birefnet.deform_conv_triton import IM2COL_TILES, _im2col_kernel

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    usage = _compile_for_sm90(dtype, IM2COL_TILES, _im2col_kernel)
    assert usage["REG"] <= 255 and usage["STACK"] == 0 and usage["LOCAL"] == 0, usage
