"""GPU memory without a GPU: the fake-tensor estimate, the deformable convolution that leaves
torchvision's kernel where its buffer would be too large, and the Swin block's memory savings.

The estimate runs the model on fake tensors that claim to be on CUDA, so these tests check the
branches a GPU takes (the routing of the deformable convolution, the peak at 4096²) on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from birefnet import deform_conv, device_constants
from birefnet.blocks import DeformableConv2d
from birefnet.fused_linear import linear
from birefnet.model import build_model
from birefnet.peak_memory import estimate_peak, main

MB = 1 << 20


def test_estimate_of_a_model_whose_peak_is_known_by_hand():
    """conv 3->8 then conv 8->1: the peak is while the second conv's output is written, with the input,
    the 8-channel map and the 1-channel output alive (fp16: 2 bytes a value)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1)).eval()
    weights = sum(p.numel() for p in model.parameters()) * 2
    result = estimate_peak(model, (64, 128), torch.float16)
    pixels = 64 * 128
    assert result.weights == weights
    assert result.peak == weights + (3 + 8 + 1) * pixels * 2
    assert result.where == "1"  # the second convolution (Sequential's module name)


def test_torchvision_buffer_is_counted_on_cuda():
    """The deformable convolution's im2col buffer (C*k*k x H*W) and two output-sized buffers of
    torchvision's CUDA kernel are added during the call."""
    model = nn.Sequential(nn.Conv2d(3, 16, 1), DeformableConv2d(16, 32, 3, 1)).eval()
    with deform_conv.implementation("auto"):
        result = estimate_peak(model, (64, 64), torch.float16)
    pixels, values = 64 * 64, 2
    buffers = (16 * 9 + 2 * 32) * pixels * values
    # Alive at the call: input (3), first conv (16), offsets + mask logits (27), mask (9), output (32).
    alive = (3 + 16 + 27 + 9 + 32) * pixels * values
    assert 0 <= result.peak - (result.weights + alive + buffers) < 64 * 1024  # + the concatenated predictor weights
    assert result.where == "1"


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def _ops_of_a_deformable_conv_on_fake_cuda(size: int) -> set[str]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    conv = DeformableConv2d(16, 32, 7, 3).eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        state = {k: v.to("cuda", torch.float16) for k, v in conv.state_dict().items()}
        x = torch.zeros(1, 16, size, size, device="cuda", dtype=torch.float16)
    ops = _Ops()
    with mode, ops, torch.inference_mode():
        torch.func.functional_call(conv, state, (x,))
    return ops.names


def test_gpu_uses_torchvision_unless_its_buffer_passes_the_limit(monkeypatch):
    small = _ops_of_a_deformable_conv_on_fake_cuda(32)
    # the banded form's gather: Triton's im2col on CUDA, grid_sample where Triton is missing
    sampled = lambda names: any(n.startswith(("aten::grid_sampler", "birefnet::deform_im2col")) for n in names)  # noqa: E731
    assert "torchvision::deform_conv2d" in small and not sampled(small)
    needed = deform_conv.torchvision_buffer_bytes(
        torch.empty(1, 16, 32, 32, dtype=torch.float16), torch.empty(32, 16, 7, 7), 32, 32
    )
    assert needed == 16 * 49 * 32 * 32 * 2
    monkeypatch.setattr(deform_conv, "TORCHVISION_BUFFER_LIMIT", needed - 1)
    large = _ops_of_a_deformable_conv_on_fake_cuda(32)
    assert "torchvision::deform_conv2d" not in large and sampled(large)


def test_a_batch_too_big_for_torchvisions_buffer_runs_a_few_images_at_a_time(monkeypatch):
    """The limit is about one call's buffer: a batch of 5 whose images fit two at a time runs torchvision's
    kernel three times (2, 2, 1) with the same result, not the slower banded form."""
    generator = torch.Generator().manual_seed(4)
    x, offset = torch.randn(5, 4, 9, 11, generator=generator), torch.randn(5, 18, 9, 11, generator=generator)
    weight, mask = torch.randn(6, 4, 3, 3, generator=generator), torch.rand(5, 9, 9, 11, generator=generator)
    with torch.inference_mode(), deform_conv.implementation("torchvision"):
        whole = deform_conv.deform_conv2d(x, offset, weight, mask, 1)
        one_image = deform_conv.torchvision_buffer_bytes(x[:1], weight, 9, 11)
        monkeypatch.setattr(deform_conv, "TORCHVISION_BUFFER_LIMIT", 2 * one_image)
        calls, kernel = [], deform_conv._tv_deform_conv2d
        monkeypatch.setattr(
            deform_conv, "_tv_deform_conv2d", lambda x, *a, **k: calls.append(len(x)) or kernel(x, *a, **k)
        )
        parts = deform_conv.deform_conv2d(x, offset, weight, mask, 1)
    assert calls == [2, 2, 1] and torch.allclose(parts, whole, atol=1e-6)


def test_torchvision_switch_keeps_torchvision_at_any_size(monkeypatch):
    monkeypatch.setattr(deform_conv, "TORCHVISION_BUFFER_LIMIT", 1)
    monkeypatch.setenv("BIREFNET_DEFORM_CONV", "torchvision")
    assert "torchvision::deform_conv2d" in _ops_of_a_deformable_conv_on_fake_cuda(32)


def test_torchvision_switch_on_the_cpu_runs_torchvision_in_inference(monkeypatch):
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    generator = torch.Generator().manual_seed(2)
    x, offset = torch.randn(1, 4, 9, 11, generator=generator), torch.randn(1, 18, 9, 11, generator=generator)
    weight, mask = torch.randn(6, 4, 3, 3, generator=generator), torch.rand(1, 9, 9, 11, generator=generator)
    expected = torchvision_deform_conv2d(x, offset, weight, padding=(1, 1), mask=mask)
    ops = _Ops()
    with torch.inference_mode(), deform_conv.implementation("torchvision"), ops:
        out = deform_conv.deform_conv2d(x, offset, weight, mask, 1)
    assert "torchvision::deform_conv2d" in ops.names and torch.equal(out, expected)


def test_torchvision_buffer_size_rules():
    weight = torch.empty(8, 4, 3, 3)
    # Images at once: the largest divisor of the batch up to 32; bf16 runs as float32 (4 bytes).
    assert deform_conv.torchvision_buffer_bytes(torch.empty(48, 4, 2, 2), weight, 10, 10) == 4 * 9 * 24 * 100 * 4
    assert deform_conv.torchvision_buffer_bytes(torch.empty(1, 4, 2, 2, dtype=torch.bfloat16), weight, 10, 10) == (
        4 * 9 * 100 * 4
    )


def test_swin_l_at_4096_fits_an_8_gb_card_in_fp16():
    """The issue asks for 12 GB; the estimate leaves room for the CUDA context and cuDNN workspaces
    (1-2 GB) on an 8 GB card."""
    model = build_model("swin_v1_l").eval()
    result = estimate_peak(model, (4096, 4096), torch.float16)
    assert result.peak < 5e9, f"{result.peak / 1e9:.2f} GB at {result.where}"
    # With torchvision's kernel at every size, its im2col buffer (6.1 GiB for the 7x7) comes on top.
    deform_conv_limit = deform_conv.TORCHVISION_BUFFER_LIMIT
    try:
        deform_conv.TORCHVISION_BUFFER_LIMIT = 1 << 62
        unlimited = estimate_peak(model, (4096, 4096), torch.float16)
    finally:
        deform_conv.TORCHVISION_BUFFER_LIMIT = deform_conv_limit
    assert unlimited.peak > result.peak + 5e9


def test_estimate_leaves_the_model_and_caches_usable(b0_model):
    x = torch.rand(1, 3, 224, 224, device=DEVICE)
    with torch.inference_mode():
        before = b0_model(x)
    swin_model = build_model("swin_v1_t").eval()
    estimate_peak(swin_model, (256, 256), torch.float16)
    kept = [t for value in device_constants._CACHE.values() for t in (value if isinstance(value, tuple) else (value,))]
    assert kept and all(type(t) is torch.Tensor for t in kept)
    with torch.inference_mode():
        assert swin_model(torch.rand(1, 3, 256, 256)).shape == (1, 1, 256, 256)  # no fake tensor left behind
        assert torch.equal(b0_model(x), before)
    assert all(p.device.type == "cpu" and type(p) is nn.Parameter for p in swin_model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_linear_in_place_without_autograd_equals_the_plain_ops(dtype):
    generator = torch.Generator().manual_seed(1)
    layer = nn.Linear(24, 40).to(dtype)
    x = torch.randn(5, 24, generator=generator).to(dtype)
    residual = torch.randn(5, 40, generator=generator).to(dtype)
    expected_gelu = F.gelu(F.linear(x, layer.weight, layer.bias))
    expected_residual = residual + F.linear(x, layer.weight, layer.bias)
    kept = residual.clone()
    with torch.no_grad():
        assert torch.allclose(linear(x, layer, gelu=True), expected_gelu, atol=1e-3)
        assert torch.allclose(linear(x, layer, residual=residual), expected_residual, atol=1e-3)
    assert torch.equal(residual, kept)  # the caller's residual is never written


def test_command_line_prints_a_table(capsys):
    assert main(["--variant", "pvt_v2_b0", "--resolution", "256", "320x256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| this library |")]
    assert len(rows) == 2 and "| 256x256 |" in rows[0] and "| 320x256 |" in rows[1]
    assert float(rows[1].split("|")[4]) > float(rows[0].split("|")[4]) > 0


def test_command_line_bad_size_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--resolution", "huge"])
    assert "huge" in capsys.readouterr().err.strip().splitlines()[-1]
