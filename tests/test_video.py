"""Video: frames stream through the model, temporal stability measured on a synthetic clip with
exact ground truth, and the CLI on a real encoded clip (PyAV)."""

from __future__ import annotations

import os
import re

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


def test_boxes_guide_every_frame_of_a_clip(tmp_path, capsys):
    """`--box` on a clip (before: refused): every frame's mask is the image path's for that frame
    (`segment_regions` on the decoded frame) inside the box and 0 outside it, with frames batched; several
    boxes give their union, temporal smoothing keeps it 0 outside; a box outside the frame is the image
    path's one line, before any frame is segmented, and nothing is written."""
    from birefnet.cli import main
    from birefnet.guidance import segment_regions
    from birefnet.inference import mask_to_image
    from birefnet.video import VideoSource

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, _clip(moving=True)[0][:5])
    x, y, w, h = 60, 40, 110, 120
    out = tmp_path / "out"
    args = ["segment", str(clip), "--out", str(out), "--video", "--cutout", "--batch-size", "3", "--quiet"]
    assert main([*args, "--box", f"{x},{y},{w},{h}"]) == 0
    model = birefnet.load_model(device="cpu")
    with VideoSource(clip) as source:
        frames = list(source.frames())
    inside = np.zeros((SIZE, SIZE), bool)
    inside[y : y + h, x : x + w] = True
    with av.open(str(out / "clip_mask.mp4")) as video:
        from_video = [frame.to_ndarray(format="gray").astype(int) for frame in video.decode(video.streams.video[0])]
    assert len(from_video) == len(frames) == 5
    for number, (frame, video_frame) in enumerate(zip(frames, from_video), start=1):
        mask = np.asarray(Image.open(out / "clip" / f"{number:06d}.png")).astype(int)
        alone = np.asarray(mask_to_image(segment_regions(model, frame, boxes=[(x, y, w, h)])[0])).astype(int)
        assert mask[~inside].max() == 0 and video_frame[~inside].max() <= 2
        assert mask[inside].max() > 128  # the object is in the box
        assert np.abs(mask - alone).max() <= 1  # batched frames: the image path's mask, to 8-bit rounding
    with av.open(str(out / "clip_cutout.mov")) as video:
        alpha = next(video.decode(video.streams.video[0])).to_ndarray(format="rgba")[..., 3]
    assert alpha[~inside].max() == 0

    boxes = [(10, 10, 40, 40), (x, y, w, h)]
    smoothed = tmp_path / "smoothed"
    both = ["--box", "10,10,40,40", "--box", f"{x},{y},{w},{h}", "--temporal", "0.5"]
    assert main(["segment", str(clip), "--out", str(smoothed), "--batch-size", "2", "--quiet", *both]) == 0
    assert sorted(p.name for p in (smoothed / "clip").iterdir()) == [f"{i:06d}.png" for i in range(1, 6)]
    union = inside.copy()
    union[10:50, 10:50] = True
    first = np.asarray(mask_to_image(segment_regions(model, frames[0], boxes=boxes)[0])).astype(int)
    for number in range(1, 6):
        mask = np.asarray(Image.open(smoothed / "clip" / f"{number:06d}.png")).astype(int)
        assert mask[~union].max() == 0
        if number == 1:  # nothing before it to smooth with
            assert np.abs(mask - first).max() <= 1

    capsys.readouterr()
    outside = tmp_path / "outside"
    assert main(["segment", str(clip), "--out", str(outside), "--video", "--box", "300,10,20,20", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"skipped {clip}: box 300,10,20,20 lies outside the 224x224 image" in err and "Traceback" not in err
    assert err.count("lies outside") == 1
    assert not outside.exists() or not any(outside.iterdir())
    assert main(["segment", str(clip), "--out", str(outside), "--highres", "--quiet"]) == 2  # still for images


def _marked_clip(path, frames=3, width=64, height=48, rotation=None):
    """A tiny clip whose every frame is `_marked(width, height)`, with a display rotation (PyAV:
    counter-clockwise degrees) when given; returns the frame as stored."""
    picture = _marked(width, height)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return picture


def _marked(width, height):
    """Blue with a white block top left and a red one top right: no turn or flip looks like another."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[...] = (30, 60, 200)
    picture[: height // 3, : width // 4] = 255
    picture[: height // 3, -width // 4 :] = (230, 20, 20)
    return picture


@pytest.mark.parametrize("rotation, turns", [(90, 1), (-90, -1), (180, 2)])
def test_a_clip_is_read_as_players_show_it(tmp_path, rotation, turns):
    """PyAV's display rotation is counter-clockwise (FFmpeg's display matrix): a phone clip stored
    sideways with rotation 90 is shown turned a quarter counter-clockwise, np.rot90's direction."""
    from birefnet.video import VideoSource

    stored = _marked_clip(tmp_path / "turned.mp4", rotation=rotation)
    shown = np.rot90(stored, turns)
    with VideoSource(tmp_path / "turned.mp4") as clip:
        frames = [np.asarray(frame) for frame in clip.frames()]
        assert clip.size == (shown.shape[1], shown.shape[0])
    assert len(frames) == 3 and all(frame.shape == shown.shape for frame in frames)
    assert np.abs(frames[0].astype(int) - shown).mean() < 4
    assert np.abs(frames[0].astype(int) - np.rot90(stored, -turns if turns != 2 else 0)).mean() > 40


def test_cli_writes_a_turned_clip_upright(tmp_path):
    """Masks, mask video and cut-out video of a clip with display rotation 90 come out at the shown
    size, the cut-out's colours where the shown frame has them."""
    from birefnet.cli import main

    shown = np.rot90(_marked_clip(tmp_path / "phone.mp4", rotation=90))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "phone.mp4"), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    assert Image.open(out / "phone" / "000001.png").size == (48, 64)
    with av.open(str(out / "phone_mask.mp4")) as masks:
        frame = next(masks.decode(masks.streams.video[0]))
        assert (frame.width, frame.height) == (48, 64)
    with av.open(str(out / "phone_cutout.mov")) as cutouts:
        rgba = next(cutouts.decode(cutouts.streams.video[0])).to_ndarray(format="rgba")
    assert rgba.shape == (64, 48, 4)
    assert np.abs(rgba[..., :3].astype(int) - shown).mean() < 4


def test_clips_with_the_same_name_keep_their_own_outputs(tmp_path, capsys):
    """`clip.mp4` beside `clip.mov`, or `a/clip.mp4` and `b/clip.mp4`, write where images with
    shared names do (`clip_mp4`, `clip_mov`; `clip_mp4_2`), chosen before any clip is processed: none
    replaces another's outputs, with or without --overwrite."""
    from birefnet.cli import main

    _marked_clip(tmp_path / "clip.mp4", frames=1)
    _marked_clip(tmp_path / "clip.mov", frames=2)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "clip.mp4"), str(tmp_path / "clip.mov"), "--out", str(out), "--video"]) == 0
    assert "keep the extension" in capsys.readouterr().err
    assert len(list((out / "clip_mp4").iterdir())) == 1 and len(list((out / "clip_mov").iterdir())) == 2
    for name, count in (("clip_mp4", 1), ("clip_mov", 2)):
        with av.open(str(out / f"{name}_mask.mp4")) as video:
            assert len(list(video.decode(video.streams.video[0]))) == count
    for folder, frames in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        _marked_clip(tmp_path / folder / "clip.mp4", frames=frames)
    both = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4")]
    assert main(["segment", *both, "--out", str(tmp_path / "new"), "--video", "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "clip_mp4",
        "clip_mp4_2",
        "clip_mp4_2_mask.mp4",
        "clip_mp4_mask.mp4",
    ]
    assert len(list((tmp_path / "new" / "clip_mp4").iterdir())) == 1
    assert len(list((tmp_path / "new" / "clip_mp4_2").iterdir())) == 2


def _damage(path, packet: int) -> None:
    """Make `path` undecodable from its `packet`-th stored packet on (a NAL length past the packet's end)."""
    with av.open(str(path)) as container:
        positions = sorted(p.pos for p in container.demux(container.streams.video[0]) if p.size)
    data = bytearray(path.read_bytes())
    data[positions[packet] : positions[packet] + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))


def test_an_unreadable_clip_is_skipped_and_the_others_written(tmp_path, capsys):
    """As an unreadable image is: one line for it, the clips after it still written, exit 1; a file
    without a video stream says so; a clip damaged part way keeps what came before the damage."""
    from birefnet.cli import main

    _marked_clip(tmp_path / "first.mp4", frames=1)
    (tmp_path / "text.mp4").write_text("hi\n")
    with av.open(str(tmp_path / "silent.mp4"), "w") as container:  # sound only, no video stream
        stream = container.add_stream("aac", rate=8000)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        sound.sample_rate = 8000
        for packet in [*stream.encode(sound), *stream.encode()]:
            container.mux(packet)
    _marked_clip(tmp_path / "broken.mp4", frames=6)
    _damage(tmp_path / "broken.mp4", packet=3)
    _marked_clip(tmp_path / "last.mp4", frames=2)
    names = ("first.mp4", "text.mp4", "silent.mp4", "broken.mp4", "last.mp4")
    out = tmp_path / "out"
    assert main(["segment", *(str(tmp_path / name) for name in names), "--out", str(out), "--video", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'text.mp4'}: not a readable video" in err
    assert f"skipped {tmp_path / 'silent.mp4'}: not a readable video (no video stream)" in err
    assert "tuple index" not in err
    assert sorted(p.name for p in out.iterdir()) == [
        "broken",
        "broken_mask.mp4",
        "first",
        "first_mask.mp4",
        "last",
        "last_mask.mp4",
    ]
    assert len(list((out / "last").iterdir())) == 2
    good = int(re.search(r"skipped the rest of .*broken\.mp4: damaged after frame (\d+)", err)[1])
    assert 1 <= good < 6 and len(list((out / "broken").iterdir())) == good
    with av.open(str(out / "broken_mask.mp4")) as video:
        assert len(list(video.decode(video.streams.video[0]))) == good


def test_an_odd_sized_clip_keeps_its_size_in_a_4_2_0_mask_video(tmp_path, capsys):
    """H.264 4:2:0 cannot hold an odd size and 4:4:4 H.264 plays in few players: an odd-sized clip's mask
    video is 4:2:0 (VP9) at the clip's exact size, its frames the PNG masks', said once per run."""
    from birefnet.cli import main

    _marked_clip(tmp_path / "odd.mp4", frames=3, width=65, height=47)
    _marked_clip(tmp_path / "odd2.mp4", frames=2, width=64, height=47)
    out = tmp_path / "out"
    clips = [str(tmp_path / "odd.mp4"), str(tmp_path / "odd2.mp4")]
    assert main(["segment", *clips, "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    with av.open(str(out / "odd_mask.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p"
        frames = [frame.to_ndarray(format="gray") for frame in video.decode(stream)]
    err = capsys.readouterr().err
    assert err.count("needs even sizes") == 1 and "odd.mp4 is 65x47" in err
    assert len(frames) == 3 and frames[0].shape == (47, 65)
    png = np.asarray(Image.open(out / "odd" / "000001.png")).astype(int)
    assert np.abs(frames[0].astype(int) - png).mean() < 1.5
    with av.open(str(out / "odd_cutout.mov")) as cutouts:
        assert next(cutouts.decode(cutouts.streams.video[0])).to_ndarray(format="rgba").shape == (47, 65, 4)
    with av.open(str(out / "odd2_mask.mp4")) as video:
        assert next(video.decode(video.streams.video[0])).to_ndarray(format="gray").shape == (47, 64)


def _state(folder):
    """Every file under `folder`: its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_skip_existing_resumes_interrupted_clips(tmp_path, capsys):
    """--skip-existing on clips: a clip whose videos exist (renamed into place after all its frames), or
    without --video whose frame folder holds all its frames, is done and not decoded; another is segmented
    again and only its missing files are written, nothing there replaced (bytes and times kept); the killed
    writes' temporaries are removed; with every clip done no model loads (the weights here cannot load)."""
    from birefnet.cli import main

    _marked_clip(tmp_path / "a.mp4", frames=3)
    _marked_clip(tmp_path / "b.mkv", frames=4)  # Matroska stores no frame count: its packets are counted
    clips = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mkv")]
    out, seq = tmp_path / "out", tmp_path / "seq"
    assert main(["segment", *clips, "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    assert main(["segment", *clips, "--out", str(seq), "--cutout", "--quiet"]) == 0
    complete = {folder: _state(folder) for folder in (out, seq)}
    # killed in b: the cut-out video renamed, the mask video not yet (a temporary left); frames missing
    for path in (out / "b_mask.mp4", out / "b" / "000003.png", out / "b" / "000004.png"):
        path.unlink()
    for path in (seq / "b" / "000002_cutout.png", seq / "b" / "000004.png"):  # PNGs finish in any order
        path.unlink()
    before = {folder: _state(folder) for folder in (out, seq)}
    killed = [out / ".tmp0123abcd.mp4", seq / "b" / ".tmp89abcdef.png"]  # temporaries of the killed writes
    for path in killed:
        path.write_bytes(b"half written")
        os.utime(path, (1e9, 1e9))
    capsys.readouterr()
    assert main(["segment", *clips, "--out", str(out), "--video", "--cutout", "--skip-existing", "--quiet"]) == 0
    assert main(["segment", *clips, "--out", str(seq), "--cutout", "--skip-existing", "--quiet"]) == 0
    err = capsys.readouterr().err
    for folder in (out, seq):
        after = _state(folder)
        assert {path: after[path] for path in before[folder]} == before[folder]  # nothing replaced
        assert set(after) - set(before[folder]) == set(complete[folder]) - set(before[folder])  # all missing
        assert set(after) == set(complete[folder])  # the killed writes' temporaries are gone
    assert not any(path.exists() for path in killed)
    with av.open(str(out / "b_mask.mp4")) as video:
        assert len(list(video.decode(video.streams.video[0]))) == 4
    assert str(tmp_path / "a.mp4") not in err  # done: not decoded
    assert f"b.mkv: wrote 2 mask(s) to {out / 'b'} at 10 fps (2 were there already), b_mask.mp4\n" in err
    assert f"b.mkv: wrote 1 mask(s) to {seq / 'b'} at 10 fps (3 were there already)\n" in err
    assert f"segmented 1 of 2 clip(s) into {out}, kept the outputs 1 clip(s) had already (--skip-existing)" in err
    broken = tmp_path / "never_read.safetensors"
    broken.write_bytes(b"not weights")
    for folder, flags in ((out, ["--video", "--cutout"]), (seq, ["--cutout"])):
        args = ["segment", *clips, "--out", str(folder), *flags, "--skip-existing", "--weights", str(broken)]
        assert main(args) == 0
        assert capsys.readouterr().err.strip().splitlines() == [
            f"birefnet: segmented 0 of 2 clip(s) into {folder}, kept the outputs 2 clip(s) had already "
            "(--skip-existing)"
        ]


def test_a_cut_to_another_shot_leaves_no_trace_of_the_last(demo_model):
    """At a cut every block of the frame changes, so the median block difference is no noise level: the
    smoother must still see the change, and the next shot's masks are those it gets on its own (before,
    the image gate called the whole cut still and the last shot's soft edges lingered, up to 0.1)."""
    from birefnet_training.synthetic import make_sample

    rng = np.random.default_rng(1)

    def shot(index, frames):
        picture = np.asarray(make_sample(2, index, (SIZE, SIZE))[0]).astype(float)
        return [np.clip(picture + rng.normal(0, 3, picture.shape), 0, 255).astype(np.uint8) for _ in range(frames)]

    first, second = shot(16, 4), shot(5, 4)
    alone = [mask.numpy() for mask in segment_frames(demo_model, second, temporal=1.0)]
    after_cut = [mask.numpy() for mask in segment_frames(demo_model, first + second, temporal=1.0)][4:]
    assert max(np.abs(a - b).max() for a, b in zip(after_cut, alone)) < 1e-6


def _timed_clip(path, times, fps=30, tags=None, width=64, height=48):
    """A clip of `_marked` frames shown at `times` (seconds; a phone's variable frame rate), with colour tags
    (matrix, primaries, transfer, range) when given, the frames converted to YUV by that matrix."""
    from fractions import Fraction

    picture = _marked(width, height)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "yuv444p", {"crf": "0"}
        stream.codec_context.time_base = stream.time_base = Fraction(1, 600)
        if tags:
            context = stream.codec_context
            context.colorspace, context.color_primaries, context.color_trc, context.color_range = tags
        for time in times:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            if tags:
                frame = frame.reformat(format="yuv444p", dst_colorspace=tags[0], dst_color_range=tags[3])
            frame.pts, frame.time_base = round(time * 600), Fraction(1, 600)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return picture


def _frame_times(path):
    with av.open(str(path)) as video:
        return [float(frame.time) for frame in video.decode(video.streams.video[0])]


def test_a_variable_frame_rate_clip_keeps_its_frame_times(tmp_path):
    """Phones record at a variable frame rate: the mask and cut-out videos show each frame when the clip
    does (they are laid over it in an editor), where before they were spread evenly at the average rate
    (here 1.5 s of clip in 0.77 s of mask video, all frames after the second out of step); and a browser
    plays them to the last frame (the mask video has no B-frames, whose decode times cut a variable frame
    rate clip's duration short), and as long as the clip: its last frame lasts its own duration, not 1/average fps."""
    from birefnet.cli import main

    times = [0, 1 / 30, 2 / 30, 0.2, 0.6, 0.6 + 1 / 30, 1.0, 1.5]
    _timed_clip(tmp_path / "phone.mp4", times)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "phone.mp4"), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    for video in (out / "phone_mask.mp4", out / "phone_cutout.mov"):
        assert _frame_times(video) == pytest.approx(times, abs=1e-3), video.name
        with av.open(str(video)) as container, av.open(str(tmp_path / "phone.mp4")) as clip:
            tick = clip.streams.video[0].time_base  # its last frame lasts its own 1/30 s (before: 1/average fps)
            assert abs(container.duration - clip.duration) / 1e6 <= tick, video.name
    constant = [n / 30 for n in range(6)]  # and a constant rate stays so, at the clip's rate
    _timed_clip(tmp_path / "steady.mp4", constant)
    assert main(["segment", str(tmp_path / "steady.mp4"), "--out", str(out), "--video", "--quiet"]) == 0
    assert _frame_times(out / "steady_mask.mp4") == pytest.approx(constant, abs=1e-3)


def test_a_cutout_video_keeps_the_clips_colours(tmp_path):
    """An HD clip is BT.709: its cut-out video is converted by BT.709 and says so, so players show the
    clip's colours (before: converted by BT.601 and untagged, which players read as BT.709 for HD:
    its red 25 levels off)."""
    from birefnet.cli import main

    picture = _timed_clip(tmp_path / "hd.mp4", [0, 0.04], tags=(1, 1, 1, 1))  # its red and blue are saturated
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "hd.mp4"), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    with av.open(str(out / "hd_cutout.mov")) as video:
        frame = next(video.decode(video.streams.video[0]))
    assert (frame.colorspace, frame.color_primaries, frame.color_trc) == (1, 1, 1)
    shown = frame.reformat(format="rgb24", src_colorspace=1).to_ndarray()  # as a player reads BT.709
    assert np.abs(shown.astype(int) - picture).max() <= 3


def _transparent_clip(path, codec, pix_fmt, options=None, frames=2):
    """A clip with alpha (`codec` in `pix_fmt`): held-out synthetic sample 16, its left half transparent."""
    from birefnet_training.synthetic import make_sample

    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3], rgba[..., 3], rgba[:, : SIZE // 2, 3] = np.asarray(make_sample(2, 16, (SIZE, SIZE))[0]), 255, 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, pix_fmt
        stream.options = options or {}
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    "name, codec, pix_fmt, options",
    [
        ("prores.mov", "prores_ks", "yuva444p10le", {"profile": "4444"}),
        ("png.mov", "png", "rgba", None),
        ("vp9.webm", "libvpx-vp9", "yuva420p", None),
    ],
)
def test_a_clips_transparency_stays_in_its_cutouts(tmp_path, name, codec, pix_fmt, options):
    """As an RGBA image's does: what is transparent in a clip with alpha (ProRes 4444, PNG in MOV, WebM's VP9
    with alpha) stays transparent in its cut-out frames and cut-out video, where the mask alone would show it."""
    from birefnet.cli import main

    _transparent_clip(tmp_path / name, codec, pix_fmt, options)
    out, sequence = tmp_path / "out", tmp_path / "seq"
    assert main(["segment", str(tmp_path / name), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    assert main(["segment", str(tmp_path / name), "--out", str(sequence), "--cutout", "--quiet"]) == 0
    stem = name.split(".")[0]
    mask = np.asarray(Image.open(out / stem / "000001.png")).astype(int)
    with av.open(str(out / f"{stem}_cutout.mov")) as video:
        from_video = next(video.decode(video.streams.video[0])).to_ndarray(format="rgba")[..., 3].astype(int)
    from_png = np.asarray(Image.open(sequence / stem / "000001_cutout.png"))[..., 3].astype(int)
    half = SIZE // 2
    assert mask[:, :half].max() > 128  # the mask finds the object in the transparent half too
    for alpha in (from_video, from_png):
        assert alpha[:, :half].max() == 0
        assert np.abs(alpha[:, half:] - mask[:, half:]).max() <= 1


def _sounding_clip(path, *, codec="aac", rate=44100, sound_from=0.0, frames_from=0.0, seconds=0.25, tones=(440,)):
    """A clip of 12 fps `_marked` frames (H.264; VP9 in WebM) with a sound stream per tone (a sine, its loudness
    swelling 3 times a second), the sound starting `sound_from` and the frames `frames_from` seconds in."""
    from fractions import Fraction

    picture, webm = _marked(64, 48), path.suffix == ".webm"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9" if webm else "libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sounds = [container.add_stream(codec, rate=rate, layout="mono") for _ in tones]
        packets = []
        for number in range(round(seconds * 12)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = number + round(frames_from * 12), Fraction(1, 12)
            packets += video.encode(frame)
        packets += video.encode()
        t = np.arange(round(seconds * rate)) / rate
        for stream, tone in zip(sounds, tones):
            wave = (0.3 * np.sin(2 * np.pi * tone * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
            for first in range(0, len(wave), 960):
                frame = av.AudioFrame.from_ndarray(wave[None, first : first + 960].copy(), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = (
                    rate,
                    first + round(sound_from * rate),
                    Fraction(1, rate),
                )
                packets += stream.encode(frame)
            packets += stream.encode()
        for packet in sorted(packets, key=lambda packet: packet.dts * packet.time_base):
            container.mux(packet)


def _start_by_edit_list(path, seconds: float) -> None:
    """Give the sound track of an MP4 `_sounding_clip` the edit list a phone writes for sound that starts
    `seconds` after the picture: an empty edit, then the media from after the AAC encoder's 1024 samples of
    delay (FFmpeg's muxer writes such a track's edit list with that delay played)."""
    import struct

    data = bytearray(path.read_bytes())
    box = data.find(b"elst", data.find(b"elst") + 1)  # the second track's: the sound's
    assert data[box + 4] == 0 and struct.unpack(">I", data[box + 8 : box + 12]) == (2,)
    struct.pack_into(">Ii", data, box + 12, round(seconds * 1000), -1)  # the movie's units: 1/1000 s
    struct.pack_into(">i", data, box + 28, 1024)
    path.write_bytes(bytes(data))


def _sound(path, stream=0):
    """(first channel's samples, start in seconds after the first frame, rate, sound streams in the file)."""
    with av.open(str(path)) as container:
        first_frame = float(next(container.decode(video=0)).time)
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.audio[stream]))
        count = len(container.streams.audio)
    samples = np.concatenate([frame.to_ndarray()[0] for frame in frames])  # planar (fltp) or mono
    return samples, float(frames[0].time) - first_frame, frames[0].sample_rate, count


def _sound_packets(path, stream=0):
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(container.streams.audio[stream]) if packet.size]


def _onset(samples, start, rate):
    """When the sound starts, in seconds after the first frame: its first sample louder than 0.05."""
    return start + int(np.argmax(np.abs(samples) > 0.05)) / rate


@pytest.mark.parametrize(
    "name, make, copied",
    [
        ("aac.mp4", {}, True),
        ("late.mp4", {"sound_from": 0.1}, True),  # as FFmpeg writes a late sound: its encoder delay played
        ("phone.mp4", {"sound_from": 0.1}, False),  # as a phone writes it (`_start_by_edit_list`)
        ("early.mp4", {"frames_from": 0.1}, True),  # the sound before the first frame is cut
        ("pcm.mov", {"codec": "pcm_s16le"}, True),
        ("opus.webm", {"codec": "libopus", "rate": 48000}, False),
        ("late.webm", {"codec": "libopus", "rate": 48000, "sound_from": 0.1}, False),
    ],
)
def test_a_cutout_video_keeps_the_clips_sound(tmp_path, name, make, copied):
    """Dropped into a video editor, the cut-out video plays the clip's sound in step with its frames (before: no
    sound). AAC, PCM (and MP3, ALAC, AC-3) are copied packet for packet, Opus from WebM is converted to AAC, as is
    a sound a phone starts after the picture (copied, FFmpeg's .mov would play its encoder delay: 23 ms early); a
    sound starting after the first frame starts as late, its end where the clip's is; the frames are unchanged and
    the mask video, a matte, stays silent."""
    from birefnet.cli import main

    clip = tmp_path / name
    _sounding_clip(clip, **make)
    if name == "phone.mp4":
        _start_by_edit_list(clip, 0.1)
    out = tmp_path / "out"
    assert main(["segment", str(clip), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    stem = clip.stem
    cutout = out / f"{stem}_cutout.mov"
    clip_times = _frame_times(clip)
    assert _frame_times(cutout) == pytest.approx([time - clip_times[0] for time in clip_times], abs=1e-3)
    with av.open(str(out / f"{stem}_mask.mp4")) as matte:
        assert not matte.streams.audio
    source, source_start, rate, _ = _sound(clip)
    written, written_start, written_rate, streams = _sound(cutout)
    with av.open(str(cutout)) as video, av.open(str(clip)) as original:
        codec, original_codec = video.streams.audio[0].codec_context.name, original.streams.audio[0].codec_context.name
    assert streams == 1 and written_rate == rate and codec == (original_codec if copied else "aac")
    onset = _onset(source, source_start, rate)
    if "late" in name or name == "phone.mp4":
        assert onset == pytest.approx(0.1, abs=0.03)
    if onset > 0:  # lip-sync: heard when the clip's is
        assert _onset(written, written_start, rate) == pytest.approx(onset, abs=1e-3)
    else:
        assert written_start == pytest.approx(0, abs=1e-3)
    source_end, written_end = source_start + len(source) / rate, written_start + len(written) / rate
    assert written_end == pytest.approx(source_end, abs=1 / 12)  # within a frame
    shift = round((written_start - source_start) * rate)  # the samples of one time side by side
    source, written = (source[shift:], written) if shift >= 0 else (source, written[-shift:])
    length = min(len(source), len(written))
    source, written = source[:length], written[:length]
    if copied:
        assert b"".join(_sound_packets(cutout)) == b"".join(_sound_packets(clip))  # PCM: chunked anew
        assert np.array_equal(source, written)
    else:
        assert np.corrcoef(source, written)[0, 1] > 0.99
        assert np.sqrt(np.mean((source - written) ** 2)) < 0.1 * np.sqrt(np.mean(source**2))


def test_the_sound_is_written_beside_the_frames(tmp_path):
    """Memory stays flat over a long clip: each sound packet goes into the cut-out video beside the frames of its
    time (read by a demuxer of its own), not at the end, where FFmpeg would hold every frame to interleave them;
    and where the sound starts late (here 3 s in) the frames before it reach the file as they are written (FFmpeg
    holds up to 10 s of frames waiting for a stream that has no packet yet)."""
    from fractions import Fraction

    from birefnet.clip_sound import ClipSound
    from birefnet.video import VideoSource, VideoWriter

    clip, out = tmp_path / "long.mp4", tmp_path / "out" / "long_cutout.mov"
    _sounding_clip(clip, sound_from=3.0, seconds=6.0)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 4), np.uint8)  # ProRes: about 60 kB a frame
    with VideoSource(clip) as source:
        with VideoWriter(out, 12, (128, 128), "rgba", time_base=source.time_base, sound=ClipSound.of(source)) as writer:
            for number in range(72):
                writer.write(noise, Fraction(number, 12))
                if number == 30:  # 2.5 s written, the sound not begun
                    (temporary,) = out.parent.glob(".tmp*.mov")
                    on_disk = temporary.stat().st_size
    with av.open(str(out)) as video:  # (kind, time, size) of each packet, in the file's order
        packets = [
            (p.stream.type, float(p.pts * p.time_base), p.size)
            for p in sorted((p for p in video.demux() if p.size), key=lambda packet: packet.pos)
        ]
    frame_bytes = [size for kind, _, size in packets if kind == "video"]
    assert len(frame_bytes) == 72 and on_disk > sum(frame_bytes[:19])  # none a second old held back
    assert sum(kind == "audio" for kind, _, _ in packets) > 100
    last_frame = None
    for kind, time, _ in packets:  # a sound packet follows the frames of its time (after the last: the clip's rest)
        if kind == "video":
            last_frame = time
        elif time < 6:
            assert last_frame is not None and abs(time - last_frame) < 0.5


def test_a_damaged_or_interrupted_clip_keeps_its_sound_with_its_frames(tmp_path, capsys):
    """A clip damaged part way: its cut-out video holds the frames before the damage and the sound up to the
    last one's end, packet for packet (not the rest of the clip's sound under no picture). An interrupted write
    (Ctrl-C) leaves no video and no temporary."""
    from birefnet.cli import main
    from birefnet.clip_sound import ClipSound
    from birefnet.video import VideoSource, VideoWriter

    clip, out = tmp_path / "broken.mp4", tmp_path / "out"
    _sounding_clip(clip, seconds=0.5)
    _damage(clip, packet=3)
    assert main(["segment", str(clip), "--out", str(out), "--video", "--cutout", "--quiet"]) == 1
    good = int(re.search(r"damaged after frame (\d+)", capsys.readouterr().err)[1])
    assert 1 <= good < 6 and len(_frame_times(out / "broken_cutout.mov")) == good
    written, start, rate, _ = _sound(out / "broken_cutout.mov")
    end = good / 12  # the last frame's end
    assert start == pytest.approx(0, abs=1e-3) and end <= start + len(written) / rate <= end + 1024 / rate
    kept = _sound_packets(out / "broken_cutout.mov")
    assert kept == _sound_packets(clip)[: len(kept)]

    target, whole = tmp_path / "stopped" / "clip_cutout.mov", tmp_path / "whole.mp4"
    _sounding_clip(whole, seconds=0.5)
    with VideoSource(whole) as source, pytest.raises(KeyboardInterrupt):
        with VideoWriter(target, source.fps, source.size, "rgba", sound=ClipSound.of(source)) as writer:
            for number, frame in enumerate(source.frames()):
                writer.write(np.asarray(frame.convert("RGBA")), frame.info["time"])
                if number == 1:
                    raise KeyboardInterrupt
    assert list(target.parent.iterdir()) == []


def _damage_sound(path, packet: int) -> float:
    """Make the `packet`-th sound packet of `path` undecodable (its first bytes, a FLAC frame's sync code,
    overwritten; the container around it intact); returns its time in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        damaged = [p for p in container.demux(stream) if p.size][packet]
        payload, time = bytes(damaged), float(damaged.pts * damaged.time_base)
    data = bytearray(path.read_bytes())
    at = data.find(payload)
    assert at >= 0 and data.find(payload, at + 1) < 0
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    return time


def test_a_clip_whose_sound_is_damaged_part_way_says_so(tmp_path, capsys):
    """A FLAC sound in an MKV (converted to AAC) that cannot be decoded from its sixth packet on: the frames are
    all written, the cut-out video's sound ends where the damage begins, said in one line (before, the AAC
    encoder's last samples were dropped: it ended 58 ms early)."""
    from birefnet.cli import main

    clip, out = tmp_path / "flac.mkv", tmp_path / "out"
    _sounding_clip(clip, codec="flac", seconds=1.0)
    damage = _damage_sound(clip, packet=5)
    assert main(["segment", str(clip), "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("its sound is damaged") == 1
    assert f"{clip}: its sound is damaged; the cut-out video's ends there (Invalid data" in err
    assert _frame_times(out / "flac_cutout.mov") == pytest.approx(_frame_times(clip), abs=1e-3)
    written, start, rate, _ = _sound(out / "flac_cutout.mov")
    assert start == pytest.approx(0, abs=1e-3) and damage - 1e-3 <= start + len(written) / rate <= damage + 1024 / rate


def test_the_first_of_several_sounds_is_kept_and_a_silent_clip_stays_silent(tmp_path, capsys):
    """A clip with two sound streams (two languages): the first goes into its cut-out video, also when
    --skip-existing writes that video again; a clip without sound gets a silent one, as before; an empty sound
    stream is said in one line for the run, and its clips' videos are written without it."""
    from birefnet.cli import main

    _sounding_clip(tmp_path / "two.mp4", tones=(440, 660))
    _marked_clip(tmp_path / "silent.mp4", frames=2)
    for name in ("empty.mkv", "empty2.mkv"):  # a sound stream without packets
        with av.open(str(tmp_path / name), "w") as container:
            video = container.add_stream("libx264", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            container.add_stream("aac", rate=44100, layout="mono")
            for packet in [*video.encode(av.VideoFrame.from_ndarray(_marked(64, 48), format="rgb24")), *video.encode()]:
                container.mux(packet)
    clips = [str(tmp_path / name) for name in ("two.mp4", "silent.mp4", "empty.mkv", "empty2.mkv")]
    out = tmp_path / "out"
    assert main(["segment", *clips, "--out", str(out), "--video", "--cutout", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("without sound") == 1 and "empty.mkv: its sound stream holds no sound" in err
    first = _sound_packets(tmp_path / "two.mp4", stream=0)
    assert first != _sound_packets(tmp_path / "two.mp4", stream=1)
    assert _sound(out / "two_cutout.mov")[3] == 1 and _sound_packets(out / "two_cutout.mov") == first
    for name in ("silent", "empty", "empty2"):
        with av.open(str(out / f"{name}_cutout.mov")) as video:
            assert not video.streams.audio and len(list(video.decode(video=0))) == (2 if name == "silent" else 1)
    (out / "two_cutout.mov").unlink()
    assert main(["segment", *clips[:1], "--out", str(out), "--video", "--cutout", "--skip-existing", "--quiet"]) == 0
    assert _sound_packets(out / "two_cutout.mov") == first and len(_frame_times(out / "two_cutout.mov")) == 3
