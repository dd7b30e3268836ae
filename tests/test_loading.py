"""Checkpoint reading, variant detection, prefixes, tile-layout choice and every bad-input path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    DEVICE,
    MANIFESTS,
    cpu_only,
    manifest,
    meta_state_dict,
    random_input,
    random_state_dict,
    relative_error,
)
from safetensors.torch import save_file

from birefnet import CheckpointError, detect_config, load_model, save_checkpoint, strip_prefixes
from birefnet.device import SLOW_FP16, auto_dtype, resolve_device, slow_fp16
from birefnet.zoo import KNOWN_CHECKPOINTS, find_checkpoint, match_checkpoint

VARIANTS = sorted(MANIFESTS)  # every official backbone, dino_v3_h_plus and dino_v3_7b from their manifests


@pytest.mark.parametrize("variant", VARIANTS)
def test_detects_every_variant_from_weights(variant):
    config = detect_config(meta_state_dict(variant))
    assert config.backbone == variant
    assert config.batch_norm


@pytest.mark.parametrize("variant", ["swin_v1_t", "pvt_v2_b0"])
def test_detection_survives_any_prefix_order(variant):
    sd = meta_state_dict(variant)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module._orig_mod."):
        stripped = strip_prefixes({prefix + k: v for k, v in sd.items()})
        assert list(stripped) == list(sd)
        assert detect_config(stripped).backbone == variant


def test_checkpoint_without_batchnorm_loads():
    """Models trained with batch size 1 have no BN keys (BN is Identity in the official code)."""
    sd = {
        k: v
        for k, v in random_state_dict("pvt_v2_b0").items()
        if not any(f".{n}." in k for n in ("bn_in", "bn_out", "bn", "bn1"))
        and ".global_avg_pool.2." not in k
        and not (k.startswith("decoder.gdt_convs_") and ".1." in k)
    }
    model = load_model(sd, tile_layout="current", device=DEVICE)
    assert not model.config.batch_norm
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        assert torch.isfinite(model(random_input(1, 64, 64).to(DEVICE))).all()


def test_wrapped_state_dict_and_hf_folder(tmp_path, b0_weights):
    sd = random_state_dict("pvt_v2_b0")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    assert load_model(tmp_path / "wrapped.pth").config.backbone == "pvt_v2_b0"
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "model.safetensors").symlink_to(b0_weights)
    assert load_model(snapshot).config.backbone == "pvt_v2_b0"


def test_loaded_model_is_in_eval_mode_on_requested_dtype(b0_weights):
    model = load_model(b0_weights, dtype="bf16")
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.bb.body.stages[0].blocks[0].attn.q.weight.device.type == "cpu"


def test_fp16_on_a_cpu_without_fast_fp16_kernels_is_said(b0_weights, caplog):
    """fp16 on most CPUs falls back to PyTorch's reference convolution (about 100 times slower than fp32):
    said once at loading (the command line and the server print it), naming what runs fast."""
    if not slow_fp16(torch.device("cpu"), torch.float16):
        pytest.skip("this CPU has fast fp16 kernels (AVX512-FP16 or AMX-FP16)")
    for dtype in ("fp32", "bf16", "fp16"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="birefnet"):
            load_model(b0_weights, dtype=dtype)
        assert [r.getMessage() for r in caplog.records if "fp16 on this CPU" in r.getMessage()] == (
            [SLOW_FP16] if dtype == "fp16" else []
        )


def test_auto_device_and_dtype_are_the_command_lines_choice(b0_weights):
    """One call for every machine (README's): the device `auto` picks and the dtype the CLI picks for it."""
    model = load_model(b0_weights, device="auto", dtype="auto")
    device = resolve_device("auto")
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(device.type, auto_dtype(device))}


# --------------------------------------------------------------------------- tile layout choice


def test_tile_layout_choice_order(tmp_path):
    sd = random_state_dict("swin_v1_t")
    plain = tmp_path / "model.safetensors"
    save_file(sd, str(plain))
    assert load_model(plain).config.tile_layout == "legacy"  # full-precision, unknown name: a 2024 release
    assert load_model(plain, tile_layout="current").config.tile_layout == "current"  # caller wins

    half = tmp_path / "half" / "model.safetensors"
    half.parent.mkdir()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(half))
    assert load_model(half).config.tile_layout == "current"  # 2025 releases are fp16

    named = tmp_path / "BiRefNet_lite-2K.safetensors"
    named.symlink_to(plain)
    model = load_model(named)
    assert model.info.known.name == "BiRefNet_lite-2K"
    assert model.info.resolution == (1440, 2560)
    assert model.config.tile_layout == "legacy"


def test_name_match_requires_agreeing_backbone():
    assert match_checkpoint("BiRefNet_HR-general-epoch_130.pth", "swin_v1_l").name == "BiRefNet_HR"
    assert match_checkpoint("BiRefNet_HR.safetensors", "swin_v1_t") is None
    assert match_checkpoint("birefnet.safetensors", "swin_v1_l").name == "BiRefNet"
    assert match_checkpoint("lucida.safetensors", "swin_v1_l").name.startswith("Lucida")
    assert match_checkpoint("RMBG-2.0.safetensors", "swin_v1_l").license.startswith("CC BY-NC")
    assert match_checkpoint("BiRefNet_dynamic-matting.safetensors", "swin_v1_l").resolution is None
    assert match_checkpoint("BiRefNet-general-bb_swin_v1_tiny-epoch_232.pth", "swin_v1_t").name == "BiRefNet_lite"
    assert match_checkpoint("model.safetensors", "swin_v1_l") is None
    assert find_checkpoint("birefnet_hr").resolution == (2048, 2048)
    assert all(k.url.startswith("https://huggingface.co/") for k in KNOWN_CHECKPOINTS)


def test_save_checkpoint_round_trip(tmp_path, b0_model):
    """Our files are in the official key layout and remember layout and resolution."""
    from safetensors import safe_open

    b0_model.tile_layout = "legacy"
    try:
        path = tmp_path / "finetuned.safetensors"
        save_checkpoint(b0_model, path, resolution=(512, 768))
        with safe_open(str(path), framework="pt") as f:
            assert set(f.keys()) == {k for k, _, _ in manifest("pvt_v2_b0")["entries"]}
            assert f.metadata()["birefnet.tile_layout"] == "legacy"
        loaded = load_model(path, device=DEVICE)
        assert loaded.config.tile_layout == "legacy"
        assert loaded.info.resolution == (512, 768)
        x = random_input(3, 64, 96).to(DEVICE)
        with torch.inference_mode():
            assert relative_error(loaded(x), b0_model(x)) == 0.0
        assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"
    finally:
        b0_model.tile_layout = "current"


# --------------------------------------------------------------------------- bad input


def _error(source, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_missing_file(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.safetensors")


def test_truncated_safetensors(tmp_path, b0_weights):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(b0_weights.read_bytes()[: b0_weights.stat().st_size // 2])
    message = _error(path)
    assert str(path) in message and "truncated or corrupt" in message


def test_truncated_pth(tmp_path):
    full = tmp_path / "full.pth"
    torch.save(random_state_dict("pvt_v2_b0"), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated or corrupt" in _error(cut)


def test_garbage_files(tmp_path):
    (tmp_path / "noise.safetensors").write_bytes(b"\x00\x01" * 100)
    assert "not a readable safetensors" in _error(tmp_path / "noise.safetensors")
    (tmp_path / "text.pth").write_text("hello")
    assert "not a readable checkpoint (truncated or corrupt); download it again" in _error(tmp_path / "text.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(5000))  # not a pickle: no safety talk
    message = _error(tmp_path / "noise.pth")
    assert "truncated or corrupt" in message and "safe loading" not in message
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert "unsupported file type '.onnx'" in _error(tmp_path / "model.onnx")
    (tmp_path / "empty_dir").mkdir()
    assert "folder without model.safetensors" in _error(tmp_path / "empty_dir")


class NotATensor:
    pass


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": NotATensor()}, path)
    message = _error(path)
    assert "safe loading refuses" in message and "NotATensor" in message


@cpu_only
def test_unavailable_device_is_one_line(b0_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=r"^device 'cuda' is not available: .*use cpu or auto$"):
        load_model(b0_weights, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        load_model(b0_weights, device="gpu0")


def test_other_model_safetensors(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    message = _error(path)
    assert "not a BiRefNet checkpoint" in message and "first_stage_model" in message


def test_legacy_architecture_is_named():
    sd = {
        k: v
        for k, v in meta_state_dict("swin_v1_l").items()
        if not k.startswith(
            ("decoder.ipt_blk5.", "decoder.gdt_convs_4.", "decoder.gdt_convs_pred_4.", "decoder.gdt_convs_attn_4.")
        )
    }
    assert "pre-May-2024" in _error(sd)


def test_unsupported_backbones_are_named():
    """Each family names what it found and what it supports; unknown layouts list every backbone."""
    assert "no recognisable backbone under bb. (supported: swin_v1_t" in _error(
        {"bb.stem.weight": torch.zeros(1), "decoder.x": torch.zeros(1)}
    )
    sd = meta_state_dict("swin_v1_t")
    sd["bb.patch_embed.proj.weight"] = torch.empty(64, 3, 4, 4, device="meta")
    assert "Swin backbone with embed 64, window 7, 6 blocks in stage 3 is not an official" in _error(sd)
    vgg19 = {**meta_state_dict("vgg16"), "bb.conv4.30.weight": torch.empty(512, 512, 3, 3, device="meta")}
    assert "VGG backbone with 4 convolutions in its last stage" in _error(vgg19)
    resnet101 = {**meta_state_dict("resnet50"), "bb.conv3.22.conv1.weight": torch.empty(256, 1024, 1, 1, device="meta")}
    assert "ResNet backbone with 7 blocks in layer3" in _error(resnet101)
    vit = {
        **meta_state_dict("dino_v3_s"),
        "bb.model.patch_embed.proj.weight": torch.empty(512, 3, 16, 16, device="meta"),
    }
    assert "ViT backbone with width 512, 12 blocks is not an official" in _error(vit)


def test_incomplete_weights_give_one_line_not_a_wall(tmp_path):
    sd = random_state_dict("pvt_v2_b0")
    del sd["decoder.conv_out1.0.weight"]
    sd["decoder.lateral_block2.conv.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    message = _error(path)
    assert "1 missing (e.g. decoder.conv_out1.0.weight)" in message
    assert "1 with other shapes" in message


def test_bad_dtype_and_layout_arguments(b0_weights):
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(b0_weights, dtype="int8")
    with pytest.raises(ValueError, match="tile_layout must be one of"):
        load_model(b0_weights, tile_layout="diagonal")
