"""`birefnet segment` end to end: real files in, mask and cut-out PNGs out, bad files skipped."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import torchrun
from PIL import Image
from test_inference import colour_error, icc_profiles, print_photo

import birefnet


def run_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "BIREFNET_WEIGHTS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "birefnet", *map(str, args)], capture_output=True, text=True, env=full_env, timeout=600
    )


def test_segment_folder_end_to_end(tmp_path, b0_weights):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(src / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (33, 17, 4), dtype=np.uint8)).save(src / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(src / "grey.webp")
    (src / "broken.png").write_bytes(b"not a png at all")
    (src / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"

    result = run_cli(
        "segment",
        src,
        "--out",
        out,
        "--weights",
        b0_weights,
        "--resolution",
        "128x96",
        "--cutout",
        "--batch-size",
        "2",
        "--quiet",
        "--tile-layout",
        "current",
    )
    assert result.returncode == 1, result.stderr  # one file skipped
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert "wrote 3 mask(s)" in result.stderr

    for rel, size in (("a.png", (90, 60)), ("sub/b.png", (17, 33)), ("grey.png", (40, 40))):
        mask = Image.open(out / rel)
        assert mask.mode == "L" and mask.size == size
        cut = Image.open(out / rel.replace(".png", "_cutout.png"))
        assert cut.mode == "RGBA" and cut.size == size
        expected = np.asarray(mask).astype(float)
        if rel == "sub/b.png":  # an RGBA input: its own alpha multiplies the mask
            expected = expected * np.asarray(Image.open(src / rel))[..., 3] / 255
        assert np.abs(np.asarray(cut)[:, :, 3] - expected).max() <= 1
    assert not (out / "broken.png").exists()
    assert not list(out.rglob(".*tmp*"))


DEMO_NOTICE = "embedded demo model, a small BiRefNet trained on synthetic shapes, not for photos"


def test_segment_defaults_to_the_embedded_model_and_says_so(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(image)
    result = run_cli("segment", image, "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "default.safetensors" in result.stderr and "pvt_v2_b0" in result.stderr
    assert DEMO_NOTICE in result.stderr and "birefnet download general" in result.stderr
    assert Image.open(tmp_path / "out" / "x.png").size == (50, 70)
    info = run_cli("info", "birefnet/weights/default.safetensors")
    assert "embedded demo model" in info.stdout


def test_library_messages_reach_stderr_once_and_quiet_keeps_warnings_only(capsys):
    """The library's info lines (a CUDA graph's capture time: the first call's cost) show on the CLI's stderr."""
    import logging

    from birefnet.cli import show_library_messages

    log = logging.getLogger("birefnet")
    level = log.level
    try:
        show_library_messages(quiet=False)
        show_library_messages(quiet=False)  # set up once: one line per message
        log.info("CUDA graph captured in 1.0 s")
        show_library_messages(quiet=True)
        log.info("not shown")
        log.warning("shown")
    finally:
        log.setLevel(level)
    err = capsys.readouterr().err
    assert err.count("birefnet: CUDA graph captured in 1.0 s") == 1
    assert "not shown" not in err and "birefnet: shown" in err


def test_library_default_is_the_demo_model_with_the_notice(caplog):
    from birefnet import load_model

    with caplog.at_level("WARNING", logger="birefnet"):
        model = load_model()
    assert model.info.is_demo and DEMO_NOTICE in caplog.text


def test_without_weights_or_embedded_model_says_where_to_get_them(tmp_path, monkeypatch):
    import pytest

    from birefnet import CheckpointError, loading

    monkeypatch.delenv("BIREFNET_WEIGHTS", raising=False)
    monkeypatch.setattr(loading, "EMBEDDED_WEIGHTS", tmp_path / "absent.safetensors")  # a build without the demo model
    with pytest.raises(CheckpointError, match="birefnet download general"):
        loading.default_weights()
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    out = tmp_path / "out" / "masks"
    missing = run_cli("segment", image, "--out", out, env={"BIREFNET_WEIGHTS": str(tmp_path / "none.pth")})
    assert missing.returncode == 2 and "none.pth: file not found" in missing.stderr
    assert not (tmp_path / "out").exists()  # the folders this run made for nothing (the parent too) are gone


def test_bad_weights_give_one_line(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = run_cli("segment", image, "--out", tmp_path / "out", "--weights", bad)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "truncated or corrupt" in result.stderr


def test_info_list_and_version(b0_weights):
    info = run_cli("info", b0_weights)
    assert info.returncode == 0 and "pvt_v2_b0" in info.stdout and "15.8 M parameters" in info.stdout
    lines = run_cli("list").stdout.splitlines()
    assert lines[0].split()[:3] == ["short", "name", "checkpoint"] and lines[1].split()[:2] == ["general", "BiRefNet"]
    assert any("BiRefNet_HR" in line for line in lines) and any(
        "RMBG-2.0" in line and "gated" in line for line in lines
    )
    assert any("background_removal/birefnet.safetensors" in line for line in lines)
    assert any("background_removal/lucida.safetensors" in line for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in birefnet.backbones.NAMES}
    assert set(rows) == set(birefnet.backbones.NAMES)  # every official backbone, with what was released for it
    assert "16 above" in rows["swin_v1_l"] and "none released; your fine-tunes load" in rows["dino_v3_7b"]
    from birefnet import __version__

    assert run_cli("--version").stdout.strip() == f"birefnet {__version__}"


def _noise(path, shape, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)


def test_inputs_with_the_same_name_keep_both_outputs(tmp_path, b0_weights):
    _noise(tmp_path / "x.jpg", (30, 40, 3), 1)
    _noise(tmp_path / "x.png", (50, 20, 3), 2)
    _noise(tmp_path / "y.png", (20, 20, 3), 3)
    out = tmp_path / "out"
    result = run_cli(
        "segment", tmp_path, "--out", out, "--weights", b0_weights, "--cutout", "--quiet", "--resolution", "64"
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 mask(s)" in result.stderr and "share a name" in result.stderr
    assert Image.open(out / "x_jpg.png").size == (40, 30) and Image.open(out / "x_png.png").size == (20, 50)
    assert Image.open(out / "y.png").size == (20, 20)
    assert len(list(out.glob("*_cutout.png"))) == 3


def test_bad_inputs_and_options_are_refused_before_loading(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    slow = tmp_path / "never_read.safetensors"  # loading it would fail differently: the checks come first
    clip = tmp_path / "clip.mp4"  # never opened either
    clip.write_bytes(b"")
    for args, expected in (
        (("segment", tmp_path / "missing.jpg", "--out", tmp_path / "o"), "input not found"),
        (("segment", image, "--out", tmp_path / "o", "--max-megapixels", "0"), "not a positive number"),
        (("segment", image, "--out", tmp_path / "o", "--max-megapixels", "-2"), "not a positive number"),
        (("segment", image, "--out", tmp_path / "o", "--max-megapixels", "inf"), "not a positive number"),
        (("segment", image, "--out", tmp_path / "o", "--max-megapixels", "nan"), "not a positive number"),
        (("segment", image, "--out", image), "cannot write there"),  # a file, not a folder
        (("segment", image, "--out", "/proc/birefnet_out"), "cannot write there"),
        (("segment", image, "--out", tmp_path / "o", "--resolution", "100x7"), "multiples of 32"),
        (("segment", image, "--out", tmp_path / "o", "--batch-size", "0"), "'0' is neither a positive whole number"),
        (("segment", image, "--out", tmp_path / "o", "--batch-size", "all"), "nor auto"),
        (("segment", image, "--out", tmp_path / "o", "--device", "cuda:7"), "not available"),
        (("segment", image, "--out", tmp_path / "o", "--backend", "openvino", "--compile"), "OpenVINO compiles its"),
        (("segment", clip, "--out", tmp_path / "o", "--compile"), "--compile is for images"),  # it was ignored
    ):
        result = run_cli(*args, "--weights", slow)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and "math domain" not in result.stderr


def test_unavailable_gpu_is_one_line(tmp_path, b0_weights):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    result = run_cli("segment", image, "--out", tmp_path / "o", "--weights", b0_weights, "--device", "cuda")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "no usable CUDA GPU" in result.stderr


def test_written_files_honour_the_umask(tmp_path, b0_weights):
    image = tmp_path / "x.png"
    _noise(image, (16, 16, 3))
    code = (
        "import os, sys; os.umask(0o022); from birefnet.cli import main; "
        "from birefnet import load_model, save_checkpoint; "
        f"save_checkpoint(load_model({str(b0_weights)!r}), {str(tmp_path / 'ck.safetensors')!r}); "
        f"sys.exit(main(['segment', {str(image)!r}, '--out', {str(tmp_path / 'out')!r}, '--cutout', '--quiet', "
        f"'--weights', {str(b0_weights)!r}, '--resolution', '64']))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=600).returncode == 0
    for path in (tmp_path / "ck.safetensors", tmp_path / "out" / "x.png", tmp_path / "out" / "x_cutout.png"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_rgba_input_keeps_its_transparency_in_the_cutout(tmp_path, b0_weights):
    pixels = np.random.default_rng(4).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    pixels[:, :16, 3] = 0  # left half fully transparent
    pixels[:, 16:, 3] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "x.png")
    result = run_cli(
        "segment",
        tmp_path / "x.png",
        "--out",
        tmp_path / "out",
        "--weights",
        b0_weights,
        "--cutout",
        "--quiet",
        "--resolution",
        "64",
    )
    assert result.returncode == 0, result.stderr
    alpha = np.asarray(Image.open(tmp_path / "out" / "x_cutout.png"))[..., 3].astype(int)
    mask = np.asarray(Image.open(tmp_path / "out" / "x.png")).astype(int)
    assert alpha[:, :16].max() == 0 and mask[:, :16].max() > 0
    assert np.abs(alpha[:, 16:] - mask[:, 16:]).max() <= 1


def test_a_cmyk_photo_in_a_folder_is_cut_out_in_the_colours_its_profile_gives(tmp_path, b0_weights):
    """A print workflow's CMYK JPEG with its CMYK profile, in a folder: the cut-out holds the colours a
    colour-managed viewer shows, as untagged sRGB (it held Pillow's conversion, some 20 levels off)."""
    (tmp_path / "in").mkdir()
    original = print_photo(tmp_path / "in" / "print.jpg", icc_profiles()[0])
    result = run_cli(
        "segment",
        tmp_path / "in",
        "--out",
        tmp_path / "out",
        "--weights",
        b0_weights,
        "--cutout",
        "--quiet",
        "--resolution",
        "64",
    )
    assert result.returncode == 0, result.stderr
    written = Image.open(tmp_path / "out" / "print_cutout.png")
    naive = colour_error(Image.open(tmp_path / "in" / "print.jpg").convert("RGB"), original)
    assert colour_error(written, original) < 3 and naive > 15
    assert written.mode == "RGBA" and "icc_profile" not in written.info


def test_torchrun_shards_the_inputs_and_writes_what_one_process_writes(tmp_path, b0_weights):
    """Two CPU processes under torchrun: each input once, the same files as one process, one summary."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate(["a.jpg", "a.png", "sub/c.png", "d.webp", "e.png"]):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(src / name)
    args = [
        "segment",
        str(src),
        "--weights",
        str(b0_weights),
        "--resolution",
        "64",
        "--cutout",
        "--quiet",
        "--tile-layout",
        "current",
        "--device",
        "cpu",
    ]
    single = run_cli(*args, "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    multi = torchrun("birefnet", *args, "--out", tmp_path / "two", scratch=tmp_path / "torchrun")
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert "process 1/2: 3 of 5 input(s)" in multi.stderr and "process 2/2: 2 of 5 input(s)" in multi.stderr
    assert multi.stderr.count("wrote 5 mask(s)") == 1 and "(2 processes)" in multi.stderr
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert one == two and len(one) == 10  # masks and cut-outs, a_jpg.png beside a.png
    for rel in one:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_other_backbones_segment_like_any_checkpoint(tmp_path):
    """A VGG16 and a DINOv3-S fine-tune (random weights in the official layout) through the CLI:
    detected, segmented at their working size, coarse-to-fine too."""
    from conftest import random_state_dict
    from safetensors.torch import save_file

    image = tmp_path / "in.png"
    Image.new("RGB", (640, 384), (200, 30, 30)).save(image)
    for backbone in ("vgg16", "dino_v3_s"):
        weights = tmp_path / f"{backbone}.safetensors"
        save_file(random_state_dict(backbone), str(weights))
        info = run_cli("info", weights)
        assert info.returncode == 0 and backbone in info.stdout
        for mode in (("--resolution", "256x160"), ("--resolution", "128x96", "--highres", "--fine-megapixels", "0.03")):
            out = tmp_path / backbone / mode[-1]
            result = run_cli("segment", image, "--weights", weights, "--out", out, *mode)
            assert result.returncode == 0, result.stderr
            mask = Image.open(out / "in.png")
            assert mask.size == (640, 384) and mask.mode == "L"


def test_size_rule_is_named_per_backbone():
    model = birefnet.build_model("dino_v3_s").eval()
    with pytest.raises(
        ValueError,
        match=r"dino_v3_s\) needs H and W to be multiples of 32 \(the half-size pass "
        r"must be whole 16-pixel patches\)",
    ):
        model(torch.zeros(1, 3, 80, 96))


def test_boxes_segment_one_object_each(tmp_path, b0_weights):
    image = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((160, 240, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    result = run_cli(
        "segment",
        image,
        "--weights",
        b0_weights,
        "--out",
        out,
        "--resolution",
        "64",
        "--box",
        "10,10,40,40",
        "--box",
        "150,90,60,50",
    )
    assert result.returncode == 0, result.stderr
    combined = np.asarray(Image.open(out / "scene.png"))
    first, second = (np.asarray(Image.open(out / f"scene_object{i}.png")) for i in (1, 2))
    assert combined.shape == first.shape == (160, 240)
    assert np.array_equal(combined, np.maximum(first, second))
    assert first[:, 120:].max() == 0 and second[:, :100].max() == 0  # each object only around its box
    bad = run_cli("segment", image, "--out", out, "--box", "1,2,3")
    assert bad.returncode == 2 and "use x,y,w,h in" in bad.stderr


def test_highres_with_a_box_is_one_line_before_any_work(tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48)).save(image)
    result = run_cli("segment", image, "--out", tmp_path / "out", "--highres", "--box", "1,2,30,40")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "birefnet: highres and boxes do not combine: a box is segmented on its own already; use one or the other"
    ]
    assert not (tmp_path / "out").exists()


FAST = ("--device", "cpu", "--resolution", "64", "--quiet")


def test_outputs_never_replace_inputs_or_earlier_outputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.png", (20, 30, 3))
    original = (src / "a.png").read_bytes()
    for extra in ((), ("--overwrite",)):
        onto_input = run_cli("segment", src, "--out", src, *FAST, *extra)  # masks among the inputs: refused
        assert onto_input.returncode == 2 and "Traceback" not in onto_input.stderr, onto_input.stderr
        assert onto_input.stderr.strip().splitlines() == [
            f"birefnet: --out {src} is an input folder: the masks written there would be read as images by the "
            f"next run; choose another --out, e.g. {src / 'masks'}"
        ]
        assert (src / "a.png").read_bytes() == original
    (tmp_path / "b.png").write_bytes(original)  # an input file whose mask would replace it
    onto_file = run_cli("segment", tmp_path / "b.png", "--out", tmp_path, *FAST, "--overwrite")
    assert onto_file.returncode == 2 and onto_file.stderr.strip().splitlines() == [
        f"birefnet: {tmp_path / 'b.png'} would replace an input image; choose another --out"
    ]
    assert (tmp_path / "b.png").read_bytes() == original
    _noise(tmp_path / "c.jpg", (20, 30, 3))  # c.png beside it is the user's own picture, not an output
    (tmp_path / "c.png").write_bytes(original)
    beside = run_cli("segment", tmp_path / "c.jpg", "--out", tmp_path, *FAST, "--overwrite")
    assert beside.returncode == 2 and beside.stderr.strip().splitlines() == [
        f"birefnet: {tmp_path / 'c.png'} already exists beside the inputs and may be one of the user's files, "
        "not an earlier output; choose another --out (or delete it)"
    ]
    assert (tmp_path / "c.png").read_bytes() == original
    masks = src / "masks"  # inside the input folder: its files are earlier outputs, never inputs
    first = run_cli("segment", src, "--out", masks, "--cutout", *FAST)
    assert first.returncode == 0 and "wrote 1 mask(s)" in first.stderr, first.stderr
    written = {p.name: p.read_bytes() for p in masks.iterdir()}
    assert sorted(written) == ["a.png", "a_cutout.png"]
    again = run_cli("segment", src, "--out", masks, "--cutout", *FAST)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"birefnet: {masks / 'a.png'} already exists (and 1 more); choose another --out, or add --overwrite "
        "to replace earlier outputs"
    ]
    assert "demo model" not in again.stderr  # refused before loading
    replaced = run_cli("segment", src, "--out", masks, "--cutout", "--overwrite", *FAST)
    assert replaced.returncode == 0 and "wrote 1 mask(s)" in replaced.stderr, replaced.stderr
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == written  # the same outputs, nothing new
    assert (src / "a.png").read_bytes() == original


def test_box_objects_get_their_own_names_and_a_box_outside_skips_that_image(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "scene.png", (160, 240, 3), 1)
    _noise(src / "scene_object1.png", (160, 240, 3), 2)  # would be scene.png's first object
    _noise(src / "small.png", (30, 30, 3), 3)  # the second box lies outside it
    out = tmp_path / "out"
    boxes = ("--box", "10,10,40,40", "--box", "150,90,60,50")
    result = run_cli("segment", src, "--out", out, *boxes, *FAST)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"skipped {src / 'small.png'}: box 150,90,60,50 lies outside the 30x30 image" in result.stderr
    assert "wrote 2 mask(s)" in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "scene_object1_png.png",
        "scene_object1_png_object1.png",
        "scene_object1_png_object2.png",
        "scene_png.png",
        "scene_png_object1.png",
        "scene_png_object2.png",
    ]


def test_long_names_and_animated_inputs(tmp_path):
    long = tmp_path / ("n" * 240 + ".jpg")
    _noise(long, (20, 24, 3))
    frames = [Image.new("RGB", (16, 12), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    result = run_cli("segment", long, tmp_path / "anim.gif", tmp_path / "anim.webp", "--out", out, "--cutout", *FAST)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for animated in ("anim.gif", "anim.webp"):  # each named (the second was not)
        assert f"{tmp_path / animated} is animated; only its first frame is segmented" in result.stderr
    assert Image.open(out / ("n" * 240 + "_cutout.png")).size == (24, 20)
    assert Image.open(out / "anim_gif.png").size == Image.open(out / "anim_webp.png").size == (16, 12)


def test_an_output_name_too_long_for_the_file_system_is_refused_before_any_work(tmp_path):
    """An input name the file system takes whose cut-out name (7 bytes longer) it does not: the mask was
    written, then the run ended with `File name too long` at the cut-out."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long = tmp_path / ("n" * (limit - 4) + ".jpg")
    _noise(long, (20, 24, 3))
    out = tmp_path / "out"
    result = run_cli("segment", long, "--out", out, "--cutout", *FAST)
    cutout = out / ("n" * (limit - 4) + "_cutout.png")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"birefnet: {cutout}: this output's name is {limit + 7} bytes, over the {limit} the file system allows; "
        "shorten the input's name by 7 or more"
    ]
    assert not out.exists()


def test_an_input_named_twice_is_segmented_once(tmp_path):
    """The same file named twice, or named and inside a named folder, was segmented twice, into
    `a_png.png` and `a_png_2.png`, with a note that inputs shared a name."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.png", (20, 30, 3))
    result = run_cli("segment", src / "a.png", src / "." / "a.png", src, "--out", tmp_path / "out", *FAST)
    assert result.returncode == 0 and "share a name" not in result.stderr, result.stderr
    assert "wrote 1 mask(s)" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]


def test_folders_take_every_picture_kind_and_leave_hidden_files_out(tmp_path):
    """A folder copied from a Mac or a phone: GIF and JFIF pictures are segmented like PNGs, macOS's `._`
    resource forks and thumbnail folders are not pictures (they were 'skipped' with exit 1, and a junk
    mask was written for the thumbnail)."""
    src = tmp_path / "in"
    (src / ".thumbnails").mkdir(parents=True)
    _noise(src / "a.gif", (20, 30, 3))
    _noise(src / "b.jfif", (20, 30, 3))
    _noise(src / ".thumbnails" / "b.png", (8, 8, 3))
    (src / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    result = run_cli("segment", src, "--out", tmp_path / "out", *FAST)
    assert result.returncode == 0 and "skipped" not in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.png", "b.png"]


def test_a_large_scan_is_read_whole(tmp_path):
    """A 182-megapixel scan is the user's own file, not a decompression bomb: read, without a warning."""
    import warnings

    from birefnet.files import read_image

    Image.new("1", (14000, 13000)).save(tmp_path / "scan.png")  # 1 bit per pixel: a small file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "scan.png").size == (14000, 13000)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit is back for everything else


def test_a_box_over_the_left_edge_is_a_box(tmp_path):
    """`--box -3,2,20,15` (a box reaching over the left edge, clipped to it) is a value, not an option."""
    _noise(tmp_path / "a.png", (30, 40, 3))
    result = run_cli("segment", tmp_path / "a.png", "--out", tmp_path / "out", "--box", "-3,2,20,15", *FAST)
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert mask[:, 17:].max() == 0 and mask[17:].max() == 0  # 0 outside the clipped box (x 0..16, y 2..16)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_refinement_of_no_finite_size_is_one_line_before_anything_is_written(tmp_path, value):
    _noise(tmp_path / "a.png", (30, 40, 3))
    result = run_cli("segment", tmp_path / "a.png", "--out", tmp_path / "out", "--feather", value, *FAST)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"birefnet: feather {float(value)}: use finite numbers"
    ]
    assert not (tmp_path / "out").exists()


def test_overwrite_leaves_one_run_in_out(tmp_path):
    """--overwrite with fewer boxes and no --cutout: the earlier run's cut-outs and extra objects of the
    inputs it segments are removed (they would pass for this run's); files the tool did not name, outputs
    of inputs not in this run and of an input it could not read stay."""
    src = tmp_path / "in"
    src.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        _noise(src / name, (160, 240, 3), seed)
    out = tmp_path / "out"
    three = ("--box", "10,10,40,40", "--box", "150,90,60,50", "--box", "100,20,30,30")
    first = run_cli("segment", src, "--out", out, "--cutout", *three, *FAST)
    assert first.returncode == 0, first.stderr
    assert len(list(out.iterdir())) == 10  # per input: mask, cut-out, three objects
    mine = {"a_edited.png": b"mine", "notes.txt": b"mine", "c_cutout.png": b"an input not in this run"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    (src / "b.png").write_bytes(b"damaged since")  # unreadable now: its outputs are left as they were
    b_before = {p.name: p.read_bytes() for p in out.glob("b*")}
    second = run_cli("segment", src, "--out", out, *three[:4], "--overwrite", *FAST)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert sorted(p.name for p in out.glob("a*")) == ["a.png", "a_edited.png", "a_object1.png", "a_object2.png"]
    assert "wrote 1 mask(s)" in second.stderr and "removed 2 output(s) of an earlier run" in second.stderr
    assert {p.name: p.read_bytes() for p in out.glob("b*")} == b_before
    no_boxes = run_cli("segment", src / "a.png", "--out", out, "--overwrite", *FAST)
    assert no_boxes.returncode == 0, no_boxes.stderr
    assert sorted(p.name for p in out.glob("a*")) == ["a.png", "a_edited.png"]
    assert "removed 2 output(s)" in no_boxes.stderr
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    assert (src / "a.png").exists() and (src / "b.png").read_bytes() == b"damaged since"


def test_skip_existing_resumes_an_interrupted_run(tmp_path):
    """--skip-existing: inputs with all their outputs are not read again, missing outputs are written,
    existing ones never replaced; with everything done no model loads (the weights here cannot load). The
    temporary file of the killed write is removed; one another writer changed since the run began is not."""
    src = tmp_path / "in"
    src.mkdir()
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        _noise(src / name, (20, 30, 3), seed)
    out = tmp_path / "out"
    assert run_cli("segment", src, "--out", out, "--cutout", *FAST).returncode == 0
    for name in ("b_cutout.png", "c.png", "c_cutout.png"):  # killed between b's two writes, before c
        (out / name).unlink()
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    (out / ".tmp0123abcd.png").write_bytes(b"the killed write of b's cut-out")
    os.utime(out / ".tmp0123abcd.png", (1e9, 1e9))
    others = {".tmp89abcdef.png": b"another run's write, still at work", ".tmp_mine.png": b"the user's"}
    for name, data in others.items():
        (out / name).write_bytes(data)
        os.utime(out / name, (4e9, 4e9))  # changed after this run started
    resumed = run_cli("segment", src, "--out", out, "--cutout", "--skip-existing", *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert "wrote 1 mask(s) and 2 cut-out(s)" in resumed.stderr  # c's both, b's cut-out
    assert "kept the outputs 1 input(s) had already" in resumed.stderr
    assert {name: (out / name).read_bytes() for name in kept} == {name: data for name, (data, _) in kept.items()}
    assert all((out / name).stat().st_mtime_ns == mtime for name, (_, mtime) in kept.items())
    assert sorted(p.name for p in out.iterdir()) == [
        *others,
        "a.png",
        "a_cutout.png",
        "b.png",
        "b_cutout.png",
        "c.png",
        "c_cutout.png",
    ]  # the killed write's temporary is gone
    assert all((out / name).read_bytes() == data for name, data in others.items())
    for name in others:
        (out / name).unlink()
    broken = tmp_path / "never_read.safetensors"
    broken.write_bytes(b"not weights")
    done_options = ("--device", "cpu", "--resolution", "64")  # no --quiet: no empty progress bar either
    done = run_cli("segment", src, "--out", out, "--cutout", "--skip-existing", "--weights", broken, *done_options)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"birefnet: all 3 input(s) have their outputs in {out} already (--skip-existing); nothing to do"
    ]
    both = run_cli("segment", src, "--out", out, "--skip-existing", "--overwrite", *FAST)
    assert both.returncode == 2 and both.stderr.strip().splitlines() == [
        "birefnet: --overwrite replaces existing outputs and --skip-existing keeps them; use one or the other"
    ]


def test_overwrite_removes_an_earlier_run_s_output_named_before_the_inputs_shared_a_name(tmp_path):
    """x.jpg alone gave out/x.png; once x.png joins it, their masks are x_jpg.png and x_png.png, and the
    earlier x.png (x.jpg's mask, named like x.png's) is removed under --overwrite; the other way round the
    earlier x_jpg.png goes. A picture beside the input named like such an output (x_jpg.webp) keeps its own."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "x.jpg", (20, 30, 3), 1)
    out = tmp_path / "out"
    assert run_cli("segment", src, "--out", out, "--cutout", *FAST).returncode == 0
    _noise(src / "x.png", (20, 30, 3), 2)
    shared = run_cli("segment", src, "--out", out, "--overwrite", *FAST)
    assert shared.returncode == 0 and "removed 2 output(s) of an earlier run" in shared.stderr, shared.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x_jpg.png", "x_png.png"]
    (src / "x.png").unlink()
    _noise(src / "x_jpg.webp", (20, 30, 3), 3)  # its mask is x_jpg.png: not x.jpg's to remove
    (out / "x_jpg_2.png").write_bytes(b"an earlier run's counter name of x.jpg")
    alone = run_cli("segment", src / "x.jpg", "--out", out, "--overwrite", *FAST)
    assert alone.returncode == 0 and "removed 1 output(s)" in alone.stderr, alone.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "x_jpg.png", "x_png.png"]


def test_overwrite_keeps_the_outputs_of_a_heic_picture_named_like_an_input_s(tmp_path):
    """x_jpg.heic beside x.jpg (a folder segments both) has its own mask x_jpg.png; segmenting x.jpg alone
    under --overwrite removed it as x.jpg's earlier output: HEIC and JPEG XL were not counted as pictures."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "x.jpg", (20, 30, 3))
    (src / "x_jpg.heic").write_bytes(b"a phone photo (not read by this run)")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_jpg.png").write_bytes(b"the HEIC picture's mask")
    alone = run_cli("segment", src / "x.jpg", "--out", out, "--overwrite", *FAST)
    assert alone.returncode == 0 and "removed" not in alone.stderr, alone.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x.png", "x_jpg.png"]
    assert (out / "x_jpg.png").read_bytes() == b"the HEIC picture's mask"


def test_a_float_tiff_outside_0_to_1_is_skipped_not_the_end_of_the_run(tmp_path):
    """A 32-bit float TIFF holding 0-255 values (a scientific or exported picture) is one skipped image
    with one line naming the fix; it ended the whole run with exit 2 after some masks were written."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.png", (20, 30, 3))
    values = np.random.default_rng(1).uniform(1, 254, (20, 30)).astype(np.float32)
    values[0, :2] = 0, 255
    Image.fromarray(values).save(src / "f.tif")
    Image.fromarray(np.random.default_rng(2).uniform(0, 1, (20, 30)).astype(np.float32)).save(src / "unit.tif")
    result = run_cli("segment", src, "--out", tmp_path / "out", "--batch-size", "4", *FAST)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert lines == [
        f"birefnet: skipped {src / 'f.tif'}: its 32-bit float pixels run from 0 to 255, not 0 to 1; "
        "save it as an 8- or 16-bit image",
        f"birefnet: wrote 2 mask(s) to {tmp_path / 'out'}, skipped 1",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "unit.png"]


def test_a_damaged_picture_is_skipped_with_the_way_out(tmp_path):
    """A JPEG cut short (an interrupted copy) was skipped with Pillow's `Truncated File Read`, a file that
    is no picture with `cannot identify image file '...'` (its name twice): neither said what to do."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.jpg", (200, 300, 3))
    (src / "cut.jpg").write_bytes((src / "a.jpg").read_bytes()[:300])
    (src / "notes.png").write_bytes(b"not a picture")
    result = run_cli("segment", src, "--out", tmp_path / "out", *FAST)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if "skipped" in line] == [
        f"birefnet: skipped {src / 'cut.jpg'}: cannot be decoded (Truncated File Read): the file is cut short or "
        "damaged; copy or export it again",
        f"birefnet: skipped {src / 'notes.png'}: not a picture this tool reads (empty, damaged, or another kind "
        "of file)",
        f"birefnet: wrote 1 mask(s) to {tmp_path / 'out'}, skipped 2",
    ]


def test_heic_and_jpeg_xl_pictures_are_read_with_their_plugins(tmp_path):
    """Phone photos (HEIC) and JPEG XL in a folder were passed over unsaid (exit 0): with the `pictures`
    extra they are segmented like any picture (the mask equals that of the same pixels as a PNG)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pytest.importorskip("pillow_jxl")
    pillow_heif.register_heif_opener()
    src, same = tmp_path / "in", tmp_path / "same"
    src.mkdir(), same.mkdir()
    _noise(src / "a.png", (40, 60, 3))
    Image.open(src / "a.png").save(src / "IMG_0001.HEIC")
    Image.open(src / "a.png").save(src / "b.jxl")
    for name in ("IMG_0001.HEIC", "b.jxl"):  # the pixels each file decodes to (both are compressed)
        Image.open(src / name).convert("RGB").save(same / name.replace(".HEIC", ".png").replace(".jxl", ".png"))
    result = run_cli("segment", src, same, "--out", tmp_path / "out", *FAST)
    assert result.returncode == 0, result.stderr
    for read, same_pixels in (("IMG_0001_heic", "IMG_0001_png"), ("b_jxl", "b_png")):  # one folder: names kept apart
        mask = np.asarray(Image.open(tmp_path / "out" / f"{read}.png"))
        assert mask.shape == (40, 60) and np.array_equal(
            mask, np.asarray(Image.open(tmp_path / "out" / f"{same_pixels}.png"))
        )


def test_a_picture_that_needs_a_missing_plugin_names_the_extra(tmp_path):
    """Without the `pictures` extra each HEIC or JPEG XL picture is skipped with one line naming it."""
    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "a.jpg", (20, 30, 3))
    (src / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    (src / "b.jxl").write_bytes(b"\xff\x0a\xfa")
    without_plugins = (
        "import sys; sys.modules.update(pillow_heif=None, pillow_jxl=None)"  # as if not installed
        "; from birefnet.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["segment", src, "--out", tmp_path / "out", *FAST]
    result = subprocess.run([sys.executable, "-c", without_plugins, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    skipped = sorted(line for line in result.stderr.splitlines() if "skipped " in line and ": " in line)
    extra = "install the extra: pip install 'birefnet-toolkit[pictures]' (or convert it to JPEG or PNG)"
    assert skipped == [
        f"birefnet: skipped {src / 'IMG_0001.HEIC'}: HEIC pictures need pillow-heif; {extra}",
        f"birefnet: skipped {src / 'b.jxl'}: JPEG XL pictures need pillow-jxl-plugin; {extra}",
        f"birefnet: wrote 1 mask(s) to {tmp_path / 'out'}, skipped 2",
    ]


def test_the_bar_says_how_far_the_pass_is(tmp_path):
    """A large image on a CPU takes a minute per pass: beside the count of images, the bar says how far the pass
    now running is (timed by the model's last whole pass; before the first, by a small pass), and no more once
    the passes are done."""
    import re

    src = tmp_path / "in"
    src.mkdir()
    _noise(src / "only.png", (300, 400, 3), 1)
    result = run_cli("segment", src, "--out", tmp_path / "out", "--device", "cpu", "--resolution", "512")
    assert result.returncode == 0, result.stderr
    shown = [int(percent) for percent in re.findall(r"pass (\d+)%", result.stderr)]
    assert shown and all(0 < percent < 100 for percent in shown) and len(set(shown)) > 3, result.stderr[-2000:]
    last = result.stderr.replace("\r", "\n").strip().splitlines()[-2]  # the bar's end, before the summary
    assert last.startswith("100%") and "pass" not in last, last
