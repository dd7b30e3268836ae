"""Known checkpoints by name: `birefnet download`, `--weights NAME`, the Hub cache, offline use.

`huggingface_hub` runs for real: against Hugging Face's own cache layout prepared here with
HF_HUB_OFFLINE=1, and against a local server speaking the Hub's file protocol (HF_ENDPOINT).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from hub_server import COMMIT, HubServer
from PIL import Image

from birefnet.files import current_umask
from birefnet.zoo import KNOWN_CHECKPOINTS, find_checkpoint, listed, match_checkpoint


def run_cli(*args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BIREFNET_"))}
    full_env.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "birefnet", *map(str, args)], capture_output=True, text=True, env=full_env, timeout=600
    )


def one_line(result) -> str:
    text = result.stderr.strip()
    assert "Traceback" not in text and "\n" not in text, text
    return text


def hub_cache(root: Path, repo: str, filename: str, source: Path) -> Path:
    """Hugging Face's cache layout: blobs/<etag>, snapshots/<commit>/<file> -> blob, refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    shutil.copyfile(source, folder / "blobs" / "etag0")
    snapshot = folder / "snapshots" / COMMIT / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(folder / "blobs" / "etag0", snapshot.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_every_known_checkpoint_has_a_short_name_and_is_recognised_by_its_file_name():
    shorts = [k.short for k in KNOWN_CHECKPOINTS]
    assert len(set(shorts)) == len(shorts) and all(shorts)
    for name in (
        "general",
        "lite",
        "lite-2k",
        "hr",
        "dynamic",
        "matting",
        "portrait",
        "hr-matting",
        "rmbg-2.0",
        "lucida",
    ):
        assert find_checkpoint(name).short == name
    for known in KNOWN_CHECKPOINTS:
        match = match_checkpoint(known.file_name, known.backbone)
        same = (match.backbone, match.resolution, match.tile_layout)
        assert same == (known.backbone, known.resolution, known.tile_layout), known.name
    assert listed()[0].short == "general"
    assert {k.filename for k in KNOWN_CHECKPOINTS if k.repo == "Comfy-Org/BiRefNet"} == {
        "background_removal/birefnet.safetensors",
        "background_removal/lucida.safetensors",
    }


def test_a_file_in_the_hub_cache_is_known_by_its_repository(tmp_path):
    path = tmp_path / "models--ZhengPeng7--BiRefNet_HR" / "snapshots" / COMMIT / "model.safetensors"
    assert match_checkpoint(path, "swin_v1_l").name == "BiRefNet_HR"
    assert match_checkpoint(path, "swin_v1_t") is None  # the weights disagree: not trusted


def test_weights_by_name_from_the_cache_offline(tmp_path, lite_weights):
    cache = tmp_path / "hub"
    hub_cache(cache, "ZhengPeng7/BiRefNet_lite", "model.safetensors", lite_weights)
    info = run_cli("info", "lite", HF_HUB_CACHE=cache, HF_HUB_OFFLINE=1)
    assert info.returncode == 0, info.stderr
    assert "BiRefNet_lite" in info.stdout and "tile layout legacy (known checkpoint BiRefNet_lite)" in info.stdout
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    seg = run_cli(
        "segment",
        image,
        "--out",
        tmp_path / "out",
        "--weights",
        "BiRefNet_lite",
        "--resolution",
        "128",
        "--quiet",
        HF_HUB_CACHE=cache,
        HF_HUB_OFFLINE=1,
    )
    assert seg.returncode == 0, seg.stderr
    assert Image.open(tmp_path / "out" / "x.png").size == (60, 40)
    again = run_cli("download", "lite", HF_HUB_CACHE=cache, HF_HUB_OFFLINE=1)  # already there: no network needed
    assert again.returncode == 0 and again.stdout.strip().endswith("model.safetensors")


def test_offline_misses_name_the_url_and_the_folder(tmp_path):
    env = dict(HF_HUB_CACHE=tmp_path / "hub", HF_HUB_OFFLINE=1)
    missing = run_cli("info", "hr", **env)
    assert missing.returncode == 2 and "birefnet download hr" in one_line(missing)
    offline = run_cli("download", "hr", "--dir", tmp_path / "models", **env)
    message = one_line(offline)
    assert offline.returncode == 2 and "offline" in message
    assert "https://huggingface.co/ZhengPeng7/BiRefNet_HR/resolve/main/model.safetensors" in message
    assert str(tmp_path / "models" / "BiRefNet_HR.safetensors") in message
    assert not list((tmp_path / "models").glob(".*"))  # nothing half-made left behind
    unknown = run_cli("download", "bogus", **env)
    assert unknown.returncode == 2 and "birefnet list" in one_line(unknown)


def test_non_commercial_weights_need_their_licence_named(tmp_path):
    refused = run_cli("download", "rmbg-2.0", HF_HUB_CACHE=tmp_path, HF_HUB_OFFLINE=1)
    message = one_line(refused)
    assert refused.returncode == 2 and "--accept-license CC-BY-NC-4.0" in message and "hf auth login" in message
    accepted = run_cli(
        "download", "rmbg-2.0", "--accept-license", "cc-by-nc-4.0", HF_HUB_CACHE=tmp_path, HF_HUB_OFFLINE=1
    )
    assert accepted.returncode == 2 and "offline" in one_line(accepted)  # past the licence check


def test_download_into_a_folder_from_a_hub_server(tmp_path, lite_weights, b0_weights):
    with HubServer() as hub:
        hub.files[("ZhengPeng7/BiRefNet_lite", "model.safetensors")] = lite_weights
        hub.files[("ZhengPeng7/BiRefNet_lite-2K", "model.safetensors")] = b0_weights  # wrong variant
        hub.gated.add("briaai/RMBG-2.0")
        env = dict(HF_ENDPOINT=hub.url, HF_HUB_CACHE=tmp_path / "hub")
        models = tmp_path / "models"
        result = run_cli("download", "lite", "--dir", models, **env)
        assert result.returncode == 0, result.stderr
        target = models / "BiRefNet_lite.safetensors"
        assert target.read_bytes() == lite_weights.read_bytes()
        assert sorted(p.name for p in models.iterdir()) == ["BiRefNet_lite.safetensors"]  # staging removed
        assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
        info = run_cli("info", target)
        assert "BiRefNet_lite" in info.stdout and "known checkpoint" in info.stdout

        requests = len(hub.requests)
        assert run_cli("download", "lite", "--dir", models, **env).returncode == 0
        assert len(hub.requests) == requests  # present and verified: not fetched again

        wrong = run_cli("download", "lite-2k", "--dir", models, **env)
        assert wrong.returncode == 2 and "holds a pvt_v2_b0 BiRefNet, not swin_v1_t" in one_line(wrong)
        assert not (models / "BiRefNet_lite-2K.safetensors").exists()

        gated = run_cli("download", "rmbg-2.0", "--accept-license", "CC-BY-NC-4.0", **env)
        assert gated.returncode == 2 and "gated" in one_line(gated) and "hf auth login" in gated.stderr

        cached = run_cli("download", "lite", **env)  # into the Hub cache, then usable by name offline
        assert cached.returncode == 0, cached.stderr
        assert f"models--ZhengPeng7--BiRefNet_lite/snapshots/{COMMIT}/model.safetensors" in cached.stdout
    assert run_cli("info", "lite", HF_HUB_CACHE=tmp_path / "hub", HF_HUB_OFFLINE=1).returncode == 0
    # in the cache already: into a folder offline, copied from the cache
    copied = run_cli("download", "lite", "--dir", tmp_path / "other", HF_HUB_CACHE=tmp_path / "hub", HF_HUB_OFFLINE=1)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "other" / "BiRefNet_lite.safetensors").read_bytes() == lite_weights.read_bytes()
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["BiRefNet_lite.safetensors"]


def test_segment_download_flag_fetches_on_request_only(tmp_path, lite_weights):
    image = tmp_path / "x.png"
    Image.new("RGB", (50, 40), (200, 10, 10)).save(image)
    with HubServer() as hub:
        hub.files[("ZhengPeng7/BiRefNet_lite", "model.safetensors")] = lite_weights
        env = dict(HF_ENDPOINT=hub.url, HF_HUB_CACHE=tmp_path / "hub")
        plain = run_cli("segment", image, "--out", tmp_path / "out", "--weights", "lite", **env)
        assert plain.returncode == 2 and "not downloaded yet" in plain.stderr
        assert not [r for r in hub.requests if "/resolve/" in r]  # nothing fetched without --download
        fetched = run_cli(
            "segment",
            image,
            "--out",
            tmp_path / "out",
            "--weights",
            "lite",
            "--download",
            "--resolution",
            "64",
            "--quiet",
            **env,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert "BiRefNet_lite is at" in fetched.stderr and (tmp_path / "out" / "x.png").is_file()
