"""Node functions on ComfyUI-layout tensors (IMAGE (B, H, W, C) in [0, 1], MASK (B, H, W)),
with the pack imported the way ComfyUI imports it (a package named after its folder)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from conftest import ROOT


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location(
        "birefnet_toolkit_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handle(pack, b0_weights):
    return pack.nodes.loader.load(str(b0_weights), device="cpu", dtype="auto", tile_layout="current")[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_clip_shares_cuda_graphs_within_a_run_and_frees_them_after(pack, b0_weights, monkeypatch):
    """ComfyUI's memory manager cannot see what a captured graph keeps: a run's graphs go with it."""
    from birefnet import cuda_graphs

    cuda = pack.nodes.loader.load(str(b0_weights), device="auto", dtype="fp16", tile_layout="current")[0]
    assert cuda.device.type == "cuda"
    caches = []
    capture = cuda_graphs.GraphCache._capture
    monkeypatch.setattr(cuda_graphs.GraphCache, "_capture", lambda self, *a: caches.append(self) or capture(self, *a))
    frames = torch.rand(4, 96, 128, 3)
    mask = pack.nodes.segment.segment(cuda, frames, resolution="custom", width=128, height=128)[0]
    assert len(caches) == 1 and caches[0].captures == 1  # frame 2 captured, frames 3 and 4 replayed
    assert cuda.model not in cuda_graphs._CACHES and not caches[0].graphs  # freed when the run ended
    cuda_graphs.enable(cuda.model, False)
    eager = pack.nodes.segment.segment(cuda, frames, resolution="custom", width=128, height=128)[0]
    assert (mask - eager).abs().max() < 1e-2


def test_v1_registration_without_comfy_api(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {
        "BiRefNetLoader",
        "BiRefNetSegment",
        "BiRefNetRefineEdges",
        "BiRefNetGradientPreview",
        "BiRefNetCompose",
    }
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        assert cls.DESCRIPTION and pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        for group in inputs.values():
            for name, (kind, opts) in group.items():
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    segment_aliases = pack.NODE_CLASS_MAPPINGS["BiRefNetSegment"].SEARCH_ALIASES
    assert {"remove background", "rmbg", "matte", "cutout"} <= set(segment_aliases)
    assert all(cls.SEARCH_ALIASES for cls in pack.NODE_CLASS_MAPPINGS.values())
    weights = pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"].INPUT_TYPES()["required"]["weights"][0]
    assert weights[-1] == pack.nodes.weights.EMBEDDED


def test_specs_satisfy_the_v3_schema_rules(pack):
    """Current ComfyUI (V3) refuses a node whose input and output ids overlap or repeat."""
    for spec in pack.nodes.NODE_SPECS:
        ids = [i.name for i in spec.inputs] + [o.name for o in spec.outputs]
        assert len(ids) == len(set(ids)), spec.node_id
        assert all(i.tooltip for i in spec.inputs) and all(o.tooltip for o in spec.outputs)


def test_unknown_combo_values_are_refused_in_one_line(pack):
    """ComfyUI before December 2025 (ComfyUI#11345) runs V3 nodes without checking combo values: an API prompt's
    device "cuda:7" loaded on the default device without a word. The nodes check them themselves."""
    import types

    loader = pack.NODE_CLASS_MAPPINGS["BiRefNetLoader"]()
    message = r"^Load BiRefNet: device must be one of 'auto', 'cpu', 'cpu \(OpenVINO\)', got 'cuda:7'$"
    with pytest.raises(ValueError, match=message):
        loader.run(weights=pack.nodes.weights.EMBEDDED, device="cuda:7", dtype="auto", tile_layout="auto")

    class NodeOutput(tuple):  # current ComfyUI's V3 classes, as far as v3_class uses them
        def __new__(cls, *values):
            return super().__new__(cls, values)

    class Input:
        def __init__(self, *args, **kwargs):
            pass

    kind = types.SimpleNamespace(Input=Input, Output=Input)
    io = types.SimpleNamespace(ComfyNode=object, NodeOutput=NodeOutput, Schema=dict, Custom=lambda name: kind)
    io.Image = io.Mask = io.Int = io.Float = io.Boolean = io.String = io.Combo = kind
    preview = pack.nodes.spec.v3_class(pack.nodes.gradient_preview.SPEC, io)
    with pytest.raises(ValueError, match=r"^BiRefNet Gradient Preview: colormap must be one of 'turbo', .*got 'jet'$"):
        preview.execute(birefnet_model=None, image=torch.rand(1, 8, 8, 3), colormap="jet")


def test_a_prompt_cannot_load_a_file_outside_the_weight_folders(pack, b0_weights, monkeypatch):
    """Inside ComfyUI the weights are one of the loader's choices: before December 2025 the host let a V3 prompt
    name any path, and the loader read it (a file anywhere on the server). From Python any path still loads."""
    import types

    weights = pack.nodes.weights
    assert weights.weight_path(str(b0_weights)) == b0_weights  # outside ComfyUI
    empty = types.SimpleNamespace(
        folder_names_and_paths={"birefnet": ([str(b0_weights.parent / "none")], {".safetensors"})},
        get_full_path=lambda folder, name: None,
        get_filename_list=lambda folder: [],
    )
    monkeypatch.setattr(pack.nodes.host, "folder_paths", empty)
    with pytest.raises(FileNotFoundError, match=r"not found in models/birefnet; put the file there and refresh$"):
        weights.weight_path(str(b0_weights))


def test_fp16_on_a_cpu_without_fast_fp16_kernels_is_named_in_the_log(pack, b0_weights, caplog):
    """fp16 on most CPUs falls back to PyTorch's reference convolution (about 100 times slower than fp32): the
    loader says so, naming the choices that run fast; fp32 and bf16 load without a word."""
    from birefnet.device import slow_fp16

    if not slow_fp16(torch.device("cpu"), torch.float16):
        pytest.skip("this CPU has fast fp16 kernels (AVX512-FP16 or AMX-FP16)")
    for dtype in ("auto", "fp32", "bf16", "fp16"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="birefnet"):
            pack.nodes.loader.load(str(b0_weights), device="cpu", dtype=dtype, tile_layout="current")
        slow = [r.getMessage() for r in caplog.records if "fp16 on this CPU" in r.getMessage()]
        assert len(slow) == (dtype == "fp16"), (dtype, caplog.text)
    assert "100 times slower" in slow[0] and "auto" in slow[0] and "bf16" in slow[0]


def test_loader_reports_the_variant(handle):
    assert handle.info.config.backbone == "pvt_v2_b0" and handle.dtype == torch.float32
    assert "pvt_v2_b0" in repr(handle)


def test_segment_shapes_ranges_and_outputs(pack, handle):
    image = torch.rand(3, 48, 80, 3)
    mask, cutout, rgba, objects = pack.nodes.segment.segment(handle, image, resolution="custom", width=64, height=64)
    assert mask.shape == (3, 48, 80) and cutout.shape == (3, 48, 80, 3) and rgba.shape == (3, 48, 80, 4)
    assert mask.min() >= 0 and mask.max() <= 1
    assert torch.allclose(rgba[..., 3], mask) and torch.equal(rgba[..., :3], image) and torch.equal(objects, mask)
    white = torch.ones(3)
    assert torch.allclose(cutout, image * mask[..., None] + white * (1 - mask[..., None]), atol=1e-6)


def test_chunking_equals_one_call(pack, handle):
    image = torch.rand(5, 40, 40, 3)
    one = pack.nodes.segment.segment_batch(handle, image, (64, 64), 0.0, batch_size=5)
    chunked = pack.nodes.segment.segment_batch(handle, image, (64, 64), 0.0, batch_size=2)
    assert torch.allclose(one, chunked, atol=1e-5)


def test_batch_size_zero_is_auto_one_frame_per_call_on_the_cpu(pack, handle):
    image = torch.rand(3, 40, 40, 3)
    calls = []
    hook = handle.model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        auto = pack.nodes.segment.segment_batch(handle, image, (64, 64), 0.0, batch_size=0)
    finally:
        hook.remove()
    one = pack.nodes.segment.segment_batch(handle, image, (64, 64), 0.0, batch_size=1)
    assert calls == [1, 1, 1] and torch.equal(auto, one)
    (batch_size,) = [i for i in pack.nodes.segment.SPEC.inputs if i.name == "batch_size"]
    assert batch_size.default == batch_size.min == 0  # auto is the node's default


def test_guided_boxes_and_region_give_one_mask_per_object(pack, handle):
    image = torch.rand(2, 120, 160, 3)
    region = torch.zeros(1, 120, 160)
    region[0, 70:110, 100:150] = 1
    mask, cutout, rgba, objects = pack.nodes.segment.segment(
        handle, image, resolution="custom", width=64, height=64, boxes="5,5,30,30; 40,10,20,20", region=region
    )
    assert mask.shape == (2, 120, 160) and objects.shape == (6, 120, 160)  # 3 objects in each of 2 images
    assert torch.equal(mask[1], objects[3:].amax(0))
    assert objects[0, 80:, :].abs().sum() == 0  # the first box's object stays in its (grown) box
    with pytest.raises(ValueError, match="use x,y,w,h in pixels"):
        pack.nodes.segment.segment(handle, image, boxes="5,5,30")


def test_temporal_option_steadies_a_still_clip_across_chunks(pack, handle):
    """A still scene under sensor noise: temporal 1 cuts the frame-to-frame change of the masks;
    the smoothing runs across chunks (batch_size 2 equals one call of 6)."""
    torch.manual_seed(0)
    clip = (torch.rand(1, 64, 64, 3) + 0.02 * torch.randn(6, 64, 64, 3)).clamp(0, 1)
    change = lambda masks: (masks[1:] - masks[:-1]).abs().mean().item()
    plain = pack.nodes.segment.segment_batch(handle, clip, (64, 64), 0.0, batch_size=2)
    steady = pack.nodes.segment.segment_batch(handle, clip, (64, 64), 0.0, batch_size=2, temporal=1.0)
    assert change(steady) < 0.5 * change(plain)
    one_call = pack.nodes.segment.segment_batch(handle, clip, (64, 64), 0.0, batch_size=6, temporal=1.0)
    assert torch.allclose(steady, one_call, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 37, 4099, 3), (2, 30, 20, 4), (1, 25, 25, 1)])
def test_odd_sizes_rgba_and_grey(pack, handle, shape):
    mask, cutout, rgba, _ = pack.nodes.segment.segment(
        handle, torch.rand(shape), resolution="custom", width=64, height=64
    )
    assert mask.shape == shape[:3] and cutout.shape == (*shape[:3], 3) and rgba.shape == (*shape[:3], 4)


def test_aspect_and_native_modes(pack, handle):
    image = torch.rand(1, 60, 120, 3)
    mask, _, _, _ = pack.nodes.segment.segment(handle, image, resolution="aspect", max_megapixels=0.01)
    assert mask.shape == (1, 60, 120)
    assert pack.nodes.segment.resolution_for("native", 1, 1) is None


def test_empty_batch_is_a_clear_error(pack, handle):
    with pytest.raises(ValueError, match="non-empty IMAGE batch"):
        pack.nodes.segment.segment(handle, torch.zeros(0, 64, 64, 3))
    with pytest.raises(ValueError, match="colour"):
        pack.nodes.segment.segment(
            handle, torch.rand(1, 32, 32, 3), resolution="custom", width=64, height=64, background="blue-ish"
        )


def test_refine_edges_operations(pack):
    refine = pack.nodes.refine_edges.refine_edges
    image = torch.zeros(1, 64, 64, 3)
    ring = torch.zeros(1, 64, 64)
    ring[:, 16:48, 16:48] = 1
    ring[:, 28:36, 28:36] = 0  # a hole
    filled, _, _ = refine(image, ring, fill_holes=True, estimate_foreground=False)
    assert filled[0, 30, 30] == 1 and filled[0, 2, 2] == 0
    grown, _, _ = refine(image, ring, grow=3, estimate_foreground=False)
    assert grown[0, 14, 14] == 1 and grown[0, 12, 12] == 0
    shrunk, _, _ = refine(image, ring, grow=-3, estimate_foreground=False)
    assert shrunk[0, 17, 17] == 0 and shrunk[0, 20, 20] == 1
    binary, _, _ = refine(image, ring * 0.6, threshold=0.5, estimate_foreground=False)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    soft, _, _ = refine(image, ring, feather=4.0, estimate_foreground=False)
    assert 0 < soft[0, 16, 30] < 1
    levelled, _, _ = refine(image, ring * 0.5, black_point=0.2, white_point=0.5, estimate_foreground=False)
    assert levelled.max() == pytest.approx(1.0)


def test_guided_filter_snaps_edges_to_the_image(pack):
    refine = pack.nodes.refine_edges.refine_edges
    image = torch.zeros(1, 64, 64, 3)
    image[:, :, 32:] = 1  # image edge at column 32
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 28:] = 1  # sloppy mask edge at column 28
    out, _, _ = refine(image, mask, guided_radius=8, guided_eps=1e-4, estimate_foreground=False)
    assert out[0, 32, 29] < 0.5 < out[0, 32, 34]


def test_foreground_estimation_removes_the_halo(pack):
    """Red object over green: at soft edges the image is a red/green mix; the estimate is redder."""
    refine = pack.nodes.refine_edges.refine_edges
    ramp = torch.cat([torch.ones(24), torch.linspace(1, 0, 16), torch.zeros(24)])  # object | soft edge | bg
    alpha = ramp.view(1, 1, 64).expand(1, 64, 64).clone()
    red, green = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    image = alpha[..., None] * red + (1 - alpha[..., None]) * green
    _, _, rgba = refine(image, alpha, estimate_foreground=True)  # default radius 90
    edge = slice(26, 38)
    assert rgba[0, 32, edge, 1].mean() < 0.5 * image[0, 32, edge, 1].mean()  # much less green
    assert torch.allclose(rgba[..., 3], alpha)


@pytest.fixture
def overflowing_weights(tmp_path):
    """A checkpoint whose first convolution overflows fp16 (inf, then NaN after its norm) and not fp32."""
    from conftest import random_state_dict
    from safetensors.torch import save_file

    state = random_state_dict("pvt_v2_b0", 0)
    state["bb.patch_embed1.proj.weight"] = state["bb.patch_embed1.proj.weight"] * 1e5
    save_file(state, str(tmp_path / "hot.safetensors"))
    return str(tmp_path / "hot.safetensors")


@pytest.mark.parametrize("guided", [False, True])
def test_half_precision_overflow_falls_back_to_fp32(pack, overflowing_weights, guided):
    """NaN from fp16: the frame runs again in fp32 and the model stays there, with or without guidance."""
    hot = pack.nodes.loader.load(overflowing_weights, device="cpu", dtype="fp16", tile_layout="current")[0]
    image = torch.rand(2, 48, 64, 3)
    options = dict(resolution="custom", width=64, height=64, boxes="4,4,40,30" if guided else "")
    mask, cutout, _, objects = pack.nodes.segment.segment(hot, image, **options)
    assert hot.dtype == torch.float32 and not torch.isnan(mask).any() and not torch.isnan(objects).any()
    assert mask.max() > 0 and not torch.isnan(cutout).any()


def test_region_masks_per_frame_one_for_all_and_frames_without_the_object(pack, handle):
    """A tracked object's per-frame region masks: a frame the object has left gives an empty mask (and one
    empty object mask), a 2-D region mask serves every frame, and a count that fits neither is one line."""
    image = torch.rand(3, 60, 80, 3)
    region = torch.zeros(3, 60, 80)
    region[0, 10:40, 10:50] = 1
    region[2, 20:50, 30:70] = 1
    options = dict(resolution="custom", width=64, height=64)
    mask, _, _, objects = pack.nodes.segment.segment(handle, image, region=region, **options)
    assert mask.shape == objects.shape == (3, 60, 80)
    assert mask[1].abs().sum() == 0 and mask[0].max() > 0 and mask[2].max() > 0
    assert mask[0, 45:].abs().sum() == 0 and mask[2, :15].abs().sum() == 0  # each frame's own region
    flat, _, _, _ = pack.nodes.segment.segment(handle, image, region=region[0], **options)
    assert torch.equal(flat[0], mask[0]) and flat[1].max() > 0  # (H, W): the same region in every frame
    with pytest.raises(ValueError, match="^Segment got 2 region masks for 3 images; give one region mask for all"):
        pack.nodes.segment.segment(handle, image, region=region[:2], **options)


def test_several_region_masks_for_one_image_one_object_each(pack, handle):
    """A segment-anything node gives N masks for one image: each is that image's, one object per region."""
    image = torch.rand(1, 60, 80, 3)
    region = torch.zeros(2, 60, 80)
    region[0, 5:25, 5:30] = 1
    region[1, 35:55, 45:75] = 1
    options = dict(resolution="custom", width=64, height=64)
    mask, _, _, objects = pack.nodes.segment.segment(handle, image, region=region, **options)
    assert mask.shape == (1, 60, 80) and objects.shape == (2, 60, 80)
    assert objects[0, 5:25, 5:30].max() > 0 and objects[0, 35:].abs().sum() == 0
    assert objects[1, 35:55, 45:75].max() > 0 and objects[1, :30].abs().sum() == 0
    assert torch.equal(mask[0], objects.amax(0))


def test_cutouts_off_makes_the_mask_alone(pack, handle, monkeypatch):
    """Long clips: with cutouts off, cutout and rgba carry current ComfyUI's ExecutionBlocker (no image
    memory; nodes connected to them stop with its message); a host without one gets them made as before."""
    import types

    image = torch.rand(2, 40, 48, 3)
    options = dict(resolution="custom", width=64, height=64)
    made = pack.nodes.segment.segment(handle, image, **options)
    unchanged = pack.nodes.segment.segment(handle, image, cutouts=False, **options)  # no ExecutionBlocker here
    assert all(torch.equal(a, b) for a, b in zip(made, unchanged))

    class ExecutionBlocker:  # current ComfyUI's (comfy_execution.graph), which the 2024 host lacks
        def __init__(self, message):
            self.message = message

    graph = types.ModuleType("comfy_execution.graph")
    graph.ExecutionBlocker = ExecutionBlocker
    monkeypatch.setitem(sys.modules, "comfy_execution", types.ModuleType("comfy_execution"))
    monkeypatch.setitem(sys.modules, "comfy_execution.graph", graph)
    mask, cutout, rgba, objects = pack.nodes.segment.segment(handle, image, cutouts=False, **options)
    assert torch.equal(mask, made[0]) and torch.equal(objects, made[3])
    assert isinstance(cutout, ExecutionBlocker) and isinstance(rgba, ExecutionBlocker)
    assert cutout.message == pack.nodes.segment.CUTOUTS_OFF


def test_a_region_mask_with_nothing_above_half_is_one_line(pack, handle):
    """A soft mask under 0.5 everywhere would silently give an empty result: it is refused, naming its peak."""
    message = r"^Segment: the region mask has nothing above 0.5 \(its largest value is 0.45\)"
    with pytest.raises(ValueError, match=message):
        pack.nodes.segment.segment(handle, torch.rand(2, 40, 40, 3), region=torch.full((40, 40), 0.45))


@pytest.mark.parametrize("shape", [(1, 1, 56), (1, 56, 1)])
def test_a_one_pixel_thin_image_with_a_region(pack, handle, shape):
    image = torch.rand(*shape, 3)
    mask, _, _, objects = pack.nodes.segment.segment(handle, image, region=torch.ones(shape), resolution="custom")
    assert mask.shape == shape and objects.shape == shape


@pytest.mark.parametrize("option", [dict(coarse_to_fine=True), dict(temporal=0.5)])
def test_guidance_refuses_options_it_would_ignore(pack, handle, option):
    with pytest.raises(ValueError, match="^Segment: boxes and region do not combine with coarse_to_fine or temporal"):
        pack.nodes.segment.segment(handle, torch.rand(2, 40, 40, 3), boxes="2,2,20,20", **option)


def test_aspect_mode_without_a_cap_keeps_the_checkpoints_area(pack):
    """resolution aspect, max_megapixels 0: the image's aspect ratio at the checkpoint's own working area
    (the demo model's is 224x224; 1024x1024 is only the default of checkpoints that name none)."""
    from birefnet.inference import native_megapixels

    handle = pack.nodes.loader.load(pack.nodes.weights.EMBEDDED, device="cpu", dtype="fp32")[0]
    assert native_megapixels(handle) < 0.1
    seen = []
    hook = handle.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        pack.nodes.segment.segment(handle, torch.rand(1, 60, 120, 3), resolution="aspect", max_megapixels=0.0)
        pack.nodes.segment.segment(  # coarse to fine: its coarse pass at the same size
            handle, torch.rand(1, 60, 120, 3), resolution="aspect", max_megapixels=0.0, coarse_to_fine=True
        )
    finally:
        hook.remove()
    (height, width), area = seen[0], native_megapixels(handle) * 1e6
    assert abs(width / height - 2) < 0.1 and 0.8 * area <= height * width <= 1.25 * area
    assert seen[1] == seen[0]
    assert pack.nodes.segment.working_pixels(handle, torch.rand(60, 120, 3), "aspect", 0.0) == height * width


def test_download_entries_name_their_checkpoint_exactly(pack):
    """Every download entry of the loader, including names with brackets ("BiRefNet (Comfy-Org)")."""
    from birefnet.zoo import listed

    weights = pack.nodes.weights
    for known in listed():
        assert weights.checkpoint_for_choice(weights.download_choice(known)) is known
    assert weights.checkpoint_for_choice("download: BiRefNet_HR (an older entry text)").short == "hr"


def test_gradient_preview(pack, handle):
    out = pack.nodes.gradient_preview.preview(handle, torch.rand(2, 50, 70, 3))[0]
    assert out.shape == (8, 50, 70, 3) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[1], out[0])  # attention differs from the image gradient


def test_compose(pack):
    image = torch.rand(2, 20, 30, 3)
    mask = torch.rand(1, 10, 15)
    out, rgba = pack.nodes.compose.compose(image, mask, background="0,0,0")
    assert out.shape == (2, 20, 30, 3) and rgba.shape == (2, 20, 30, 4)
    assert torch.allclose(out, image * rgba[..., 3:], atol=1e-6)
    inverted, _ = pack.nodes.compose.compose(
        image, torch.ones(1, 20, 30), invert_mask=True, background_image=torch.zeros(1, 5, 5, 3)
    )
    assert torch.count_nonzero(inverted) == 0


def test_compose_and_refine_edges_pair_one_image_with_several_masks(pack):
    """Segment's objects (several masks) with their one image: one result per mask; batches that fit
    neither way are one line, not a tensor error."""
    image, masks = torch.rand(1, 20, 30, 3), torch.rand(3, 20, 30)
    out, rgba = pack.nodes.compose.compose(image, masks, background="0,0,0")
    assert out.shape == (3, 20, 30, 3) and torch.allclose(rgba[..., 3], masks)
    assert torch.allclose(out[2], image[0] * masks[2, ..., None], atol=1e-6)
    out, rgba = pack.nodes.compose.compose(image, masks[:1], background_image=torch.rand(3, 20, 30, 3))
    assert out.shape[0] == rgba.shape[0] == 3
    refined = pack.nodes.refine_edges.refine_edges(image, masks, estimate_foreground=False)
    assert refined[0].shape == (3, 20, 30) and torch.allclose(refined[0], masks)
    with pytest.raises(ValueError, match="^Compose: got 3 images, 2 masks; each input needs one item for all"):
        pack.nodes.compose.compose(torch.rand(3, 20, 30, 3), masks[:2])
    with pytest.raises(ValueError, match="^RefineEdges: got 3 images, 2 masks"):
        pack.nodes.refine_edges.refine_edges(torch.rand(3, 20, 30, 3), masks[:2])


def test_masks_with_a_channel_dim_read_as_core_reads_them(pack, handle):
    """Some nodes give MASK as (B, 1, H, W): core's nodes read it as (B, H, W), so do these (Compose raised a
    tensor error, RefineEdges a three-line one); a shape no MASK has is one line naming the input."""
    image, masks = torch.rand(2, 20, 30, 3), torch.rand(2, 20, 30)
    for run in (pack.nodes.compose.compose, pack.nodes.refine_edges.refine_edges):
        expected = run(image, masks)
        assert all(torch.equal(a, b) for a, b in zip(run(image, masks[:, None]), expected))
    region = torch.zeros(1, 40, 40)
    region[0, 5:30, 5:30] = 1
    options = dict(resolution="custom", width=64, height=64)
    picture = torch.rand(1, 40, 40, 3)
    mask = pack.nodes.segment.segment(handle, picture, region=region, **options)[0]
    assert torch.equal(pack.nodes.segment.segment(handle, picture, region=region[:, None], **options)[0], mask)
    with pytest.raises(ValueError, match=r"^Compose: mask must be a MASK \(B, H, W\), got shape \(2, 3, 20, 30\)$"):
        pack.nodes.compose.compose(image, masks[:, None].expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match=r"^RefineEdges: mask must be a MASK \(B, H, W\), got shape \(20,\)$"):
        pack.nodes.refine_edges.refine_edges(image, masks[0, :, 0])


def test_images_not_in_comfyuis_layout_are_one_line(pack, handle):
    """An IMAGE without its batch dimension (a single (H, W, C) picture) or with 5 channels: one line naming
    the node and input, not a tensor error from inside (permute(sparse_coo): ...)."""
    picture, mask = torch.rand(20, 30, 3), torch.rand(1, 20, 30)
    expected = r"must be an IMAGE \(B, H, W, C\) with 1 to 4 channels, got shape \(20, 30, 3\)$"
    with pytest.raises(ValueError, match="^Compose: image " + expected):
        pack.nodes.compose.compose(picture, mask)
    with pytest.raises(ValueError, match="^Compose: background_image " + expected):
        pack.nodes.compose.compose(picture[None], mask, background_image=picture)
    with pytest.raises(ValueError, match="^RefineEdges: image " + expected):
        pack.nodes.refine_edges.refine_edges(picture, mask)
    with pytest.raises(ValueError, match="^GradientPreview: image " + expected):
        pack.nodes.gradient_preview.preview(handle, picture)
    with pytest.raises(ValueError, match=r"^RefineEdges: image must be .* got shape \(1, 20, 30, 5\)$"):
        pack.nodes.refine_edges.refine_edges(torch.rand(1, 20, 30, 5), mask)
    with pytest.raises(ValueError, match=r"^RefineEdges: image has no pixels \(shape \(1, 0, 30, 3\)\)$"):
        pack.nodes.refine_edges.refine_edges(torch.rand(1, 0, 30, 3), mask[:, :0])


def test_coarse_to_fine_option(pack, handle):
    image = torch.rand(2, 300, 420, 3)
    plain, _, _, _ = pack.nodes.segment.segment(handle, image, resolution="custom", width=128, height=96)
    fine, cutout, _, _ = pack.nodes.segment.segment(
        handle, image, resolution="custom", width=128, height=96, coarse_to_fine=True, fine_megapixels=0.1
    )
    assert fine.shape == plain.shape == (2, 300, 420) and cutout.shape == (2, 300, 420, 3)
    assert 0 <= fine.min() and fine.max() <= 1
    assert not torch.allclose(fine, plain, atol=1e-3)  # the second pass ran and changed the masks


def test_openvino_device_gives_the_torch_masks(pack, handle, b0_weights, tmp_path, monkeypatch):
    """The loader's "cpu (OpenVINO)" choice: same masks as PyTorch, the preview still works."""
    if importlib.util.find_spec("openvino") is None:  # imported by the loader, without its usage reports
        pytest.skip("openvino is not installed")
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    on_openvino = pack.nodes.loader.load(str(b0_weights), device="cpu (OpenVINO)", dtype="auto", tile_layout="current")[
        0
    ]
    assert on_openvino.patcher is None
    image = torch.rand(3, 80, 120, 3, generator=torch.Generator().manual_seed(4))
    expected, _, _, _ = pack.nodes.segment.segment(handle, image, resolution="custom", width=96, height=64)
    mask, _, rgba, _ = pack.nodes.segment.segment(on_openvino, image, resolution="custom", width=96, height=64)
    assert (mask - expected).abs().max() < 1e-4 and rgba.shape == (3, 80, 120, 4)
    preview = pack.nodes.gradient_preview.preview(on_openvino, image[:1])[0]
    assert preview.shape[1:3] == (80, 120)


def test_registry_metadata_is_complete():
    """What the Comfy registry reads from pyproject.toml: a valid node id, semantic version,
    publisher, display name, no 'ComfyUI' in the name; the 400x400 icon is in the repository (its URL and
    the repository's go into the metadata where the project is published, never invented)."""
    import re

    import tomllib
    from PIL import Image

    from birefnet.version import __version__

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["description"]
    assert project["version"] == __version__, "the version in pyproject.toml and birefnet/version.py differ"
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert Image.open(ROOT / "docs" / "icon.png").size == (400, 400)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_node_pages_are_current(pack):
    """web/docs/<node id>.md (what the frontend's node documentation panel shows) is generated
    from the specs; regenerate with `python -m nodes.docs` after changing a node."""
    from nodes.docs import DOCS, markdown

    for spec in pack.nodes.NODE_SPECS:
        assert (DOCS / f"{spec.node_id}.md").read_text() == markdown(spec), f"run python -m nodes.docs ({spec.node_id})"
    assert pack.WEB_DIRECTORY == "./web"


@pytest.fixture
def comfyui(pack, monkeypatch):
    """ComfyUI's Cancel and progress bar, as the host provides them to the pack: comfy.model_management's
    interrupt flag (set by the UI's Cancel; throw_exception_if_processing_interrupted clears it and raises
    InterruptProcessingException, as ComfyUI's does) and comfy.utils.ProgressBar, whose updates are recorded."""
    import types

    class InterruptProcessingException(Exception):
        pass

    host = types.SimpleNamespace(interrupted=False, updates=[], Interrupted=InterruptProcessingException)

    def throw_exception_if_processing_interrupted():
        if host.interrupted:
            host.interrupted = False
            raise InterruptProcessingException()

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            host.updates.append((value, total))

    model_management = types.ModuleType("comfy.model_management")
    model_management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.utils, comfy.model_management = utils, model_management
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    monkeypatch.setattr(pack.nodes.host, "model_management", model_management)
    return host


def _forwards(handle, pressing_cancel=None):
    """The model's forward passes, counted; with `pressing_cancel`, the user presses Cancel during each."""

    def forward(module, inputs, output):
        calls.append(inputs[0].shape[0])
        if pressing_cancel is not None:
            pressing_cancel.interrupted = True

    calls = []
    return calls, handle.model.register_forward_hook(forward)


def _bar(updates, total):
    """The progress bar's values, checked to be of `total` steps, never falling, and ending at 100%."""
    values = [value for value, of in updates]
    assert {of for value, of in updates} == {total} and values == sorted(values) and values[-1] == total
    return values


def _inside(values, low, high) -> bool:
    return any(low < value < high for value in values)


def test_cancel_stops_a_single_coarse_to_fine_frame_between_its_passes(pack, handle, comfyui):
    """One large frame on a CPU runs for minutes: the progress bar moves after each of its passes and within
    them (and ends at 100%), and Cancel pressed during the coarse pass stops the frame before its fine pass."""
    torch.manual_seed(0)
    options = dict(resolution="custom", width=128, height=96, coarse_to_fine=True, fine_megapixels=0.1, batch_size=1)
    calls, hook = _forwards(handle, pressing_cancel=comfyui)
    try:
        with pytest.raises(comfyui.Interrupted):
            pack.nodes.segment.segment(handle, torch.rand(1, 300, 420, 3), **options)
    finally:
        hook.remove()
    assert calls == [1]  # the coarse pass ran; the fine pass did not

    comfyui.updates.clear()
    calls, hook = _forwards(handle)
    try:
        pack.nodes.segment.segment(handle, torch.rand(2, 300, 420, 3), **options)
    finally:
        hook.remove()
    assert len(calls) == 4  # uninterrupted: two frames, each a coarse and a fine pass
    bar = _bar(comfyui.updates, 200)  # 100 steps a frame
    assert {50, 100, 150} <= set(bar)  # half a frame per pass
    assert all(_inside(bar, low, low + 50) for low in (0, 50, 100, 150))  # and within each pass


def test_the_bar_moves_within_a_cpu_pass(pack, b0_weights, comfyui):
    """One frame, one pass of seconds to minutes on a CPU: the bar moves within it, from the first frame after
    loading (the loader times one small pass of a CPU model; later passes go by the last whole one)."""
    fresh = pack.nodes.loader.load(str(b0_weights), device="cpu", dtype="auto", tile_layout="current")[0]
    pack.nodes.segment.segment(fresh, torch.rand(1, 96, 128, 3), resolution="custom", width=128, height=96)
    bar = _bar(comfyui.updates, 100)
    assert _inside(bar, 0, 50) and _inside(bar, 50, 100)  # was only (100, 100), at the end


@pytest.mark.parametrize("node", ["segment", "gradient_preview"])
def test_cancel_stops_a_cpu_pass_part_way(pack, handle, comfyui, node):
    """A pass on a CPU takes seconds (minutes at 2048²): Cancel pressed part-way through stops it at the
    next submodule, not at the end of the pass; the next run is whole and gives the same mask."""
    modules = [module for module in handle.model.modules() if module is not handle.model]
    ran, pressed = [], []

    def counted(module, args):
        ran.append(module)
        if len(ran) == 20 and not pressed:
            comfyui.interrupted = True  # the user presses Cancel, once
            pressed.append(True)

    image = torch.rand(1, 96, 128, 3)
    run = lambda: (
        pack.nodes.segment.segment(handle, image, resolution="custom", width=128, height=96)
        if node == "segment"
        else pack.nodes.gradient_preview.preview(handle, image)
    )
    hooks = [module.register_forward_pre_hook(counted) for module in modules]
    try:
        with pytest.raises(comfyui.Interrupted):
            run()
        assert len(ran) == 20  # stopped where Cancel was pressed
        ran.clear()
        first, again = run()[0], run()[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(ran) > 200 and torch.equal(first, again)  # whole passes, over a hundred submodules each


def test_cancel_stops_a_guided_frame_between_its_objects(pack, handle, comfyui):
    """A frame with many boxes or regions: the bar moves after each object's crop and within the crops after
    the first (how many objects a region mask holds is known once the first is done), and ends at 100%; Cancel
    pressed during the first object's pass stops the frame before the next object's."""
    image = torch.rand(1, 120, 160, 3)
    region = torch.zeros(1, 120, 160)
    region[0, 70:110, 100:150] = 1
    options = dict(resolution="custom", width=64, height=64, boxes="5,5,30,30; 40,10,20,20", region=region)
    calls, hook = _forwards(handle, pressing_cancel=comfyui)
    try:
        with pytest.raises(comfyui.Interrupted):
            pack.nodes.segment.segment(handle, image, **options)
    finally:
        hook.remove()
    assert calls == [1]  # the first object's crop ran; the other two did not

    comfyui.updates.clear()
    calls, hook = _forwards(handle)
    try:
        pack.nodes.segment.segment(handle, image, **options)
    finally:
        hook.remove()
    assert calls == [1, 1, 1]  # uninterrupted: three objects
    bar = _bar(comfyui.updates, 100)
    assert {33, 67} <= set(bar) and not _inside(bar, 0, 33)  # a third of the frame each; the first whole
    assert _inside(bar, 33, 67) and _inside(bar, 67, 100)  # within the next two
