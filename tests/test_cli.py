"""`birefnet segment` end to end: real files in, mask and cut-out PNGs out, bad files skipped."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image


def run_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "BIREFNET_WEIGHTS"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "birefnet", *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=600)


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

    result = run_cli("segment", src, "--out", out, "--weights", b0_weights, "--resolution", "128x96",
                     "--cutout", "--batch-size", "2", "--quiet", "--tile-layout", "current")
    assert result.returncode == 1, result.stderr  # one file skipped
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert "wrote 3 mask(s)" in result.stderr

    for rel, size in (("a.png", (90, 60)), ("sub/b.png", (17, 33)), ("grey.png", (40, 40))):
        mask = Image.open(out / rel)
        assert mask.mode == "L" and mask.size == size
        cut = Image.open(out / rel.replace(".png", "_cutout.png"))
        assert cut.mode == "RGBA" and cut.size == size
        assert np.array_equal(np.asarray(cut)[:, :, 3], np.asarray(mask))
    assert not (out / "broken.png").exists()
    assert not list(out.rglob(".*tmp*"))


def test_segment_defaults_to_the_embedded_model(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(image)
    result = run_cli("segment", image, "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "default.safetensors" in result.stderr and "pvt_v2_b0" in result.stderr
    assert Image.open(tmp_path / "out" / "x.png").size == (50, 70)


def test_without_weights_or_embedded_model_says_where_to_get_them(tmp_path, monkeypatch):
    import pytest

    from birefnet import CheckpointError, cli

    monkeypatch.delenv("BIREFNET_WEIGHTS", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")  # a build without the demo model
    with pytest.raises(CheckpointError, match="--weights FILE .* https://huggingface.co/ZhengPeng7/BiRefNet/"):
        cli.default_weights()
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    missing = run_cli("segment", image, "--out", tmp_path / "out", env={"BIREFNET_WEIGHTS": str(tmp_path / "none.pth")})
    assert missing.returncode == 2 and "none.pth: file not found" in missing.stderr


def test_bad_weights_give_one_line(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = run_cli("segment", image, "--out", tmp_path / "out", "--weights", bad)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "truncated or corrupt" in result.stderr


def test_info_and_list(b0_weights):
    info = run_cli("info", b0_weights)
    assert info.returncode == 0 and "pvt_v2_b0" in info.stdout and "15.8 M parameters" in info.stdout
    listing = run_cli("list")
    assert "BiRefNet_HR" in listing.stdout and "RMBG-2.0" in listing.stdout
