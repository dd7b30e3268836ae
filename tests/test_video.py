"""Video: frames stream through the model, temporal stability measured on a synthetic clip with
exact ground truth, and the CLI on a real encoded clip (PyAV)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import birefnet
from birefnet.temporal import TemporalSmoother
from birefnet.video import segment_frames
from birefnet_training.synthetic import _foreground, _object_mask, background

av = pytest.importorskip("av")
SIZE = 224  # the embedded model's working size
FRAMES = 16


def _clip(moving: bool):
    """(frames as uint8 arrays, ground-truth alphas): one object over a fixed background, per-frame
    sensor noise (sigma 3/255); the object still, or moving 5 px per frame to the right. The object
    and background are held-out sample 16 of the synthetic test set (`make_sample(2, 16)`, which
    the demo model segments with IoU 0.79), drawn in `make_sample`'s order."""
    h = w = SIZE
    shapes, rng = np.random.default_rng([2, 16]), np.random.default_rng(99)
    alpha = _object_mask(shapes, h, w)
    colours, backdrop = _foreground(shapes, h, w), background(shapes, h, w)
    frames, truths = [], []
    for t in range(FRAMES):
        shift = 5 * t - 40 if moving else 0
        a = np.roll(alpha, shift, axis=1)
        f = np.roll(colours, shift, axis=1)
        image = f * a[..., None] + backdrop * (1 - a[..., None]) + rng.normal(0, 3 / 255, (h, w, 3))
        frames.append((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        truths.append(a)
    return frames, truths


def _measure(model, strength: float):
    static, truth = _clip(moving=False)
    masks = [m.numpy() for m in segment_frames(model, static, temporal=strength)]
    flicker = float(np.mean([np.abs(b - a).mean() for a, b in zip(masks, masks[1:])]))
    moving, truths = _clip(moving=True)
    ious = []
    for mask, gt in zip(segment_frames(model, moving, temporal=strength), truths):
        pred, real = mask.numpy() > 0.5, gt > 0.5
        ious.append((pred & real).sum() / max((pred | real).sum(), 1))
    return flicker, float(np.mean(ious))


@pytest.fixture(scope="module")
def demo_model():
    return birefnet.load_model(device="cpu")


def test_temporal_stability_halves_flicker_without_lagging_a_moving_object(demo_model):
    """The goal: flicker (mean |mask(t) - mask(t-1)| where nothing changes) down by half or more,
    the moving object's IoU with the ground truth within 0.01 of the per-frame masks."""
    plain_flicker, plain_iou = _measure(demo_model, 0.0)
    rows = {s: _measure(demo_model, s) for s in (0.5, 1.0)}
    print(f"\nper frame: flicker {plain_flicker:.5f}, moving IoU {plain_iou:.4f}")
    for strength, (flicker, iou) in rows.items():
        print(
            f"temporal {strength}: flicker {flicker:.5f} ({1 - flicker / plain_flicker:.0%} less), "
            f"moving IoU {iou:.4f} ({iou - plain_iou:+.4f})"
        )
    for flicker, iou in rows.values():
        assert flicker <= 0.5 * plain_flicker
        assert abs(iou - plain_iou) <= 0.01


def test_smoother_contract():
    with pytest.raises(ValueError, match="between 0 \\(off\\) and 1"):
        TemporalSmoother(1.5)
    smoother = TemporalSmoother(0.0)
    frame, mask = torch.rand(3, 64, 64), torch.rand(64, 64)
    assert smoother(frame, mask) is mask  # off: masks pass unchanged
    on = TemporalSmoother(1.0)
    on(frame, mask)
    assert on(frame, 1 - mask).shape == (64, 64)
    assert on(torch.rand(3, 32, 48), torch.rand(32, 48)).shape == (32, 48)  # a new size starts over


def _write_clip(path, frames, fps=12):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_cli_segments_a_clip_to_frames_and_videos(tmp_path):
    from birefnet.cli import main

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, _clip(moving=True)[0][:6])
    out = tmp_path / "out"
    assert main(["segment", str(clip), "--out", str(out), "--video", "--cutout", "--temporal", "0.5", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:06d}.png" for i in range(1, 7)]
    assert Image.open(out / "clip" / "000001.png").size == (SIZE, SIZE)
    with av.open(str(out / "clip_mask.mp4")) as mask_video:
        stream = mask_video.streams.video[0]
        assert stream.average_rate == 12 and len(list(mask_video.decode(stream))) == 6
    with av.open(str(out / "clip_cutout.mov")) as cutout_video:
        stream = cutout_video.streams.video[0]
        assert stream.codec_context.name == "prores" and "a" in stream.codec_context.pix_fmt  # alpha kept
        frame = next(cutout_video.decode(stream)).to_ndarray(format="rgba")
        assert frame.shape == (SIZE, SIZE, 4) and frame[..., 3].min() < 128 < frame[..., 3].max()
    # outputs are never overwritten
    assert main(["segment", str(clip), "--out", str(out), "--quiet"]) == 2
    sequence = tmp_path / "seq"
    assert main(["segment", str(clip), "--out", str(sequence), "--cutout", "--quiet"]) == 0
    assert len(list((sequence / "clip").glob("*_cutout.png"))) == 6
    assert Image.open(sequence / "clip" / "000003_cutout.png").mode == "RGBA"
    # --overwrite with a shorter clip of the same name and no cut-outs: nothing of the earlier run is left
    (sequence / "clip" / "notes.txt").write_text("mine")
    _write_clip(clip, _clip(moving=True)[0][:4])
    assert main(["segment", str(clip), "--out", str(sequence), "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in (sequence / "clip").iterdir()) == [f"{i:06d}.png" for i in range(1, 5)] + [
        "notes.txt"
    ]
    with pytest.raises(SystemExit):  # argparse's one-line usage error
        main(["segment", str(clip), "--out", str(tmp_path / "o2"), "--temporal", "2"])
