"""Inward-reference tile layouts, the deformable-conv fallback and the inspection outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, cpu_only, random_input, random_state_dict, relative_error
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from birefnet import image_tiles, load_model
from birefnet.deform_conv import deform_conv2d_banded, deform_conv2d_reference
from birefnet.fastpath import plain_graph


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4)])
def test_tile_layouts_follow_the_spec_formulas(grid):
    gh, gw = grid
    h, w, c = 3, 2, 3
    image = torch.randn(2, c, gh * h, gw * w)
    current = image_tiles(image, (h, w), "current")
    legacy = image_tiles(image, (h, w), "legacy")
    for ch in range(c):
        for i in range(gh):
            for j in range(gw):
                tile = image[:, ch, i * h : (i + 1) * h, j * w : (j + 1) * w]
                assert torch.equal(current[:, ch * gh * gw + i * gw + j], tile)
                assert torch.equal(legacy[:, (j * gh + i) * c + ch], tile)


def _legacy_permutation(grid: int, colours: int = 3) -> torch.Tensor:
    """perm[legacy channel] = current channel holding the same pixel."""
    perm = torch.empty(colours * grid * grid, dtype=torch.long)
    for ch in range(colours):
        for i in range(grid):
            for j in range(grid):
                perm[(j * grid + i) * colours + ch] = ch * grid * grid + i * grid + j
    return perm


def test_legacy_layout_equals_current_with_permuted_input_weights():
    """A legacy-layout model is the current one with the ipt_blk input channels re-ordered."""
    sd = random_state_dict("pvt_v2_b0")
    current = load_model(sd, tile_layout="current", device=DEVICE)
    legacy_sd = dict(sd)
    for block, grid in ((5, 32), (4, 16), (3, 8), (2, 4), (1, 1)):
        key = f"decoder.ipt_blk{block}.conv1.weight"
        legacy_sd[key] = sd[key][:, _legacy_permutation(grid)]
    legacy = load_model(legacy_sd, tile_layout="legacy", device=DEVICE)
    wrong = load_model(sd, tile_layout="legacy", device=DEVICE)
    x = random_input(1, 128, 160).to(DEVICE)
    with torch.inference_mode():
        expected = current(x)
        assert relative_error(legacy(x), expected) < 1e-6
        assert relative_error(wrong(x), expected) > 1e-2  # the layouts really differ


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_deform_conv_formulations_equal_torchvision(kernel):
    torch.manual_seed(kernel)
    x = torch.randn(2, 8, 13, 17)
    weight = torch.randn(5, 8, kernel, kernel)
    offset = torch.randn(2, 2 * kernel * kernel, 13, 17) * 4  # many samples fall outside the map
    mask = torch.rand(2, kernel * kernel, 13, 17) * 2
    bias = torch.randn(5)
    expected = torchvision_deform_conv2d(x, offset, weight, padding=(kernel // 2, kernel // 2), mask=mask)
    assert relative_error(deform_conv2d_reference(x, offset, weight, mask, kernel // 2), expected) < 1e-6
    # Bands of 1, 2 and all rows; with and without the folded bias.
    for band_floats in (1, 8 * kernel * kernel * 17 * 2, 1 << 22):
        out = deform_conv2d_banded(x, offset, weight, mask, kernel // 2, band_floats=band_floats)
        assert relative_error(out, expected) < 1e-6
    out = deform_conv2d_banded(x, offset, weight, mask, kernel // 2, bias=bias)
    assert relative_error(out, expected + bias.view(1, -1, 1, 1)) < 1e-6


def test_deform_conv_samples_in_float32_for_bf16():
    """bf16 coordinates would be off by whole pixels on large maps; sampling stays float32."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 300)
    weight = torch.randn(3, 4, 3, 3)
    offset = torch.rand(1, 18, 8, 300) * 0.8
    expected = torchvision_deform_conv2d(x, offset, weight, padding=(1, 1))
    low = deform_conv2d_banded(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), None, 1)
    # Only the inputs' and the product's bf16 rounding remain (~1e-2), not misplaced samples (~1).
    assert relative_error(low.float(), expected) < 2e-2


@cpu_only
def test_bf16_on_cpu_runs_through_the_fallback(b0_weights):
    """torchvision has no bf16 CPU kernel; the model must still run (and stay close to fp32)."""
    x = random_input(1, 64, 64)
    with torch.inference_mode():
        reference = load_model(b0_weights, tile_layout="current")(x)
        out = load_model(b0_weights, tile_layout="current", dtype=torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert relative_error(out, reference) < 5e-2


def test_forward_details_exposes_side_outputs_and_gradient_maps(b0_model):
    x = random_input(2, 128, 96).to(DEVICE)
    with torch.inference_mode():
        details = b0_model.forward_details(x)
        logits = b0_model(x)
    assert torch.equal(details.logits, logits)
    stage_sizes = [(128 // s, 96 // s) for s in (32, 16, 8)]
    for maps in (details.side_logits, details.gradient_attention, details.gradient_preds):
        assert [tuple(m.shape) for m in maps] == [(1, 1, *size) for size in stage_sizes]
    assert [m.shape[1] for m in details.gradient_features] == [16, 16, 16]
    for attention in details.gradient_attention:
        assert attention.min() >= 0 and attention.max() <= 1


def test_train_mode_returns_everything_for_the_losses(b0_weights):
    model = load_model(b0_weights, tile_layout="current", device=DEVICE).train()
    out = model(random_input(1, 64, 64).repeat(2, 1, 1, 1).to(DEVICE))
    assert out.logits.shape == (2, 1, 64, 64) and len(out.side_logits) == 3 and len(out.gradient_preds) == 3
    out.logits.mean().backward()
    assert model.decoder.conv_out1[0].weight.grad is not None


def test_input_size_errors_are_clear(b0_model):
    with pytest.raises(
        ValueError, match=r"\(pvt_v2_b0\) needs H and W to be multiples of 32 \(.*\) and at least 64, got 100x64"
    ):
        b0_model(torch.zeros(1, 3, 100, 64))
    with pytest.raises(ValueError, match="at least 64, got 32x32"):
        b0_model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects a \(B, 3, H, W\) tensor"):
        b0_model(torch.zeros(1, 4, 64, 64))


@pytest.mark.parametrize("variant", ["swin_v1_t", "pvt_v2_b0"])
def test_inference_shortcuts_equal_the_plain_graph(variant):
    """Eval mode runs exact shortcuts (folded BatchNorm, matmul 1x1 convs, branch-wise ASPP,
    fused linears, banded deformable conv, low-channel head); `plain_graph()` switches them
    all off at once. Batch of 2, a size whose Swin stages need padding, random BatchNorm stats."""
    model = load_model(random_state_dict(variant, seed=3), tile_layout="current", device=DEVICE)
    x = torch.cat([random_input(4, 160, 224), random_input(5, 160, 224)]).to(DEVICE)
    with torch.no_grad():
        fast = model(x)
        with plain_graph():
            plain = model(x)
    assert relative_error(fast, plain) < 1e-5


def test_plain_graph_traces_to_standard_ops_and_torchvision_deform_conv(b0_model):
    """What exporters see: no oneDNN-only ops, torchvision's deformable convolution."""
    x = random_input(0, 64, 64).to(DEVICE)
    with torch.no_grad(), plain_graph():
        program = torch.export.export(b0_model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("torchvision.deform_conv2d" in t for t in targets)
    assert not any("mkldnn" in t or "grid_sampler" in t for t in targets)
    with torch.no_grad():
        assert relative_error(program.module()(x), b0_model(x)) < 1e-5


@pytest.mark.parametrize(
    "shape, size", [((2, 5, 256, 256), (32, 32)), ((1, 3, 64, 48), (17, 9)), ((1, 2, 9, 9), (1, 4))]
)
def test_shrinking_interp_equals_torch_bilinear(shape, size):
    from birefnet.blocks import interp

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True)
    with torch.no_grad():
        assert relative_error(interp(x, size), expected) < 1e-6
