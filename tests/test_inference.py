"""High-level `segment`: any image kind, size and channel count; batching; resolution modes."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE
from PIL import Image, ImageCms

from birefnet import cutout, segment, to_rgb_tensor, working_size


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_image_kinds_convert_to_the_same_rgb():
    rgb = _photo(5, 7)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 17, np.uint8)], axis=2)
    for image in (
        rgb,
        rgba,
        Image.fromarray(rgb),
        Image.fromarray(rgba),
        expected,
        expected[None],
        torch.from_numpy(rgb).permute(2, 0, 1),
        np.ascontiguousarray(rgb[:, :, ::-1])[:, :, ::-1],  # OpenCV's BGR turned RGB: a reversed view
        np.asarray(Image.fromarray(rgb)),  # read-only
    ):
        assert torch.allclose(to_rgb_tensor(image), expected, atol=1e-6)
    grey = rgb[:, :, 0]
    for image in (grey, Image.fromarray(grey), grey[:, :, None]):
        out = to_rgb_tensor(image)
        assert out.shape == (3, 5, 7) and torch.equal(out[0], out[2])
    sixteen = Image.fromarray((grey.astype(np.uint16) * 257))
    assert torch.allclose(to_rgb_tensor(sixteen)[0], expected[0], atol=1e-3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 5), np.uint8), "1 \\(grey\\), 2"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.zeros((2, 2, 2, 2, 2)), "numpy images must be"),
        # channels first or last where the other is meant: the error says how to turn it
        (np.zeros((3, 40, 60), np.uint8), r"got 60 \(numpy images are \(H, W, C\); .* array.transpose\(1, 2, 0\)\)$"),
        (torch.zeros(1, 40, 60, 3), r"got 40 \(tensor images are \(C, H, W\); .* tensor.permute\(2, 0, 1\)\)$"),
        ("picture.png", "cannot read an image from str"),
    ],
)
def test_bad_images_are_named(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        to_rgb_tensor(bad)


def test_working_size_modes():
    assert working_size(3000, 4000, None) == (1024, 1024)
    assert working_size(3000, 4000, 2048) == (2048, 2048)
    assert working_size(3000, 4000, (1440, 2560)) == (1440, 2560)
    h, w = working_size(3000, 4000, "aspect")
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - 4 / 3) < 0.05 and abs(h * w - 1024**2) < 0.05 * 1024**2
    h, w = working_size(1080, 1920, "aspect", max_megapixels=0.25)
    assert h * w <= 0.27e6 and abs(w / h - 16 / 9) < 0.1
    assert working_size(1, 1, "aspect", max_megapixels=0.001) == (64, 64)
    with pytest.raises(ValueError, match="at least 64"):
        working_size(100, 100, 32)
    assert working_size(500, 500, (2048, 2048), max_megapixels=1.0) == (992, 992)
    with pytest.raises(ValueError, match="multiples of 32, at least 64, e.g. 992x992"):
        working_size(10, 10, 1000)


def test_masks_come_back_at_original_size_for_odd_shapes(b0_model):
    images = [
        _photo(1, 1),
        _photo(37, 411, 1),
        Image.fromarray(_photo(64, 48, 2)).convert("L"),
        Image.fromarray(_photo(20, 30, 3)).convert("RGBA"),
        torch.rand(3, 50, 70),
    ]
    masks = segment(b0_model, images, resolution=128)
    assert [tuple(m.shape) for m in masks] == [(1, 1), (37, 411), (64, 48), (20, 30), (50, 70)]
    for mask in masks:
        assert mask.dtype == torch.float32 and mask.device.type == "cpu"
        assert mask.min() >= 0 and mask.max() <= 1


def test_batching_equals_one_by_one(b0_model):
    images = [_photo(80, 120, s) for s in range(5)] + [_photo(200, 90, 9)]
    single = [segment(b0_model, im, resolution="aspect", max_megapixels=0.02) for im in images]
    calls = []
    batched = segment(
        b0_model,
        images,
        resolution="aspect",
        max_megapixels=0.02,
        batch_size=4,
        callback=lambda done, total: calls.append((done, total)),
    )
    for a, b in zip(single, batched):
        assert torch.allclose(a, b, atol=1e-5)
    assert calls[-1] == (6, 6) and len(calls) == 3  # 5 landscape in 2 batches + 1 portrait


def test_callback_can_cancel(b0_model):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        segment(b0_model, [_photo(64, 64)] * 3, resolution=64, callback=stop)


def test_checks_inside_stop_a_cpu_pass_part_way_and_leave_the_model_as_it_was(b0_weights):
    """A Cancel inside one forward pass: the check runs before every submodule of a CPU pass (over a hundred
    times in the smallest model's), an exception it raises ends the pass there, and the model leaves the
    `with` without hooks, giving the same masks. Another thread's pass on the model is not checked."""
    import threading

    from birefnet import load_model
    from birefnet.stopping import checks_inside

    class Stop(Exception):
        pass

    model = load_model(b0_weights, device="cpu")
    image = _photo(128, 128)
    before = segment(model, image, resolution=128)
    checks = []
    with checks_inside(model, lambda: checks.append(threading.get_ident())):
        assert torch.equal(segment(model, image, resolution=128), before)
        whole_pass = len(checks)
        elsewhere = threading.Thread(target=segment, args=(model, image), kwargs=dict(resolution=128))
        elsewhere.start()
        elsewhere.join()
    assert whole_pass > 100 and len(checks) == whole_pass  # the other thread's pass ran unchecked

    def tenth_stops():
        checks.append(None)
        if len(checks) == 10:
            raise Stop

    checks.clear()
    with pytest.raises(Stop), checks_inside(model, tenth_stops):
        segment(model, image, resolution=128)
    assert len(checks) == 10  # it stopped at the tenth of over a hundred
    assert not any(module._forward_pre_hooks for module in model.modules())
    assert torch.equal(segment(model, image, resolution=128), before)


def test_checks_inside_stop_a_deformable_convolution_between_its_bands(b0_weights):
    """The longest single operation of a CPU pass, the deformable convolution (over 1 s for Swin-L's 7x7 at 1024²
    on 2 cores, 4x that at 2048²), is checked between its bands of rows too: a Cancel during it stops it there."""
    from birefnet import load_model
    from birefnet.blocks import DeformableConv2d
    from birefnet.stopping import checks_inside

    class Stop(Exception):
        pass

    model = load_model(b0_weights, device="cpu")
    calls = []  # [deformable convolution, checks while it ran, ended] per call of one
    hooks = []
    for module in model.modules():
        if isinstance(module, DeformableConv2d):
            hooks.append(module.register_forward_pre_hook(lambda module, args: calls.append([module, 0, False])))
            hooks.append(module.register_forward_hook(lambda module, args, output: calls[-1].__setitem__(2, True)))

    def check():
        if calls and not calls[-1][2]:
            calls[-1][1] += 1

    try:
        with checks_inside(model, check):
            segment(model, _photo(512, 512), resolution=512)
        longest, most, _ = max(calls, key=lambda call: call[1])
        assert most > 10  # a check before each of its bands
        halfway = (calls.index([longest, most, True]), most // 2)

        def stops_halfway():
            check()
            if calls and (len(calls) - 1, calls[-1][1]) == halfway:
                raise Stop

        calls.clear()
        with pytest.raises(Stop), checks_inside(model, stops_halfway):
            segment(model, _photo(512, 512), resolution=512)
        assert calls[-1] == [longest, most // 2, False]  # stopped inside it
    finally:
        for hook in hooks:
            hook.remove()


def test_pass_shares_say_how_far_a_cpu_pass_is_by_the_last_whole_pass(b0_weights):
    """Progress within a pass of seconds to minutes: before each submodule, the share of the pass done, by the
    times of the model's last whole pass. The model's first pass has none (0 throughout); a pass stopped part-way
    teaches nothing; at another size the same calls come in the same order, so the shares carry over."""
    from birefnet import load_model
    from birefnet.pass_clock import WorkProgress, clock_of, pass_shares
    from birefnet.stopping import checks_inside

    class Stop(Exception):
        pass

    model = load_model(b0_weights, device="cpu")
    reports = []
    with pass_shares(model, reports.append):
        segment(model, _photo(128, 128), resolution=128)
        first = list(reports)
        reports.clear()
        segment(model, _photo(192, 128), resolution=(192, 128))
    assert len(first) > 100 and set(first) == {0.0}  # nothing to go by yet
    assert len(reports) == len(first) and reports == sorted(reports)  # the same calls, rising
    assert reports[0] == 0.0 and 0 < reports[len(reports) // 2] < reports[-1] < 1
    assert not any(module._forward_pre_hooks or module._forward_hooks for module in model.modules())

    taught = list(clock_of(model).shares)  # by the 192x128 pass

    def stopped():
        if len(reports) == 20:
            raise Stop

    reports.clear()
    with pytest.raises(Stop), checks_inside(model, stopped), pass_shares(model, reports.append):
        segment(model, _photo(128, 128), resolution=128)
    assert len(reports) == 20 and reports == taught[:20]  # by the last whole pass
    assert clock_of(model).shares == taught  # the stopped pass taught nothing

    work = WorkProgress(planned=2)  # e.g. coarse-to-fine: two passes
    work.in_pass(0.5)
    assert work.fraction == 0.25
    work.pass_done(1, 2)
    work.in_pass(0.5)
    assert work.fraction == 0.75
    unknown = WorkProgress()  # passes not known until the first ends: its share counts for nothing
    unknown.in_pass(0.9)
    assert unknown.fraction == 0.0
    unknown.pass_done(1, 3)
    assert unknown.fraction == pytest.approx(1 / 3)


def test_a_small_pass_sets_a_new_cpu_models_clock(b0_weights):
    """The server and the ComfyUI loader time one small pass of a CPU model as they load it, so that its first
    real pass (at any size) shows progress too; a clock set already is kept."""
    from birefnet import load_model
    from birefnet.pass_clock import clock_of, learn_from_a_small_pass, pass_shares

    model = load_model(b0_weights, device="cpu")
    learn_from_a_small_pass(model)
    assert len(clock_of(model).shares) > 100 and clock_of(model).shares == sorted(clock_of(model).shares)
    reports = []
    with pass_shares(model, reports.append):
        segment(model, _photo(96, 160), resolution=(96, 160))
    assert 0 < reports[len(reports) // 2] < 1 and reports == sorted(reports)  # the first real pass moves
    learned = clock_of(model).shares  # from that pass
    learn_from_a_small_pass(model)
    assert clock_of(model).shares is learned


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA pass")
def test_checks_inside_leave_cuda_passes_unchecked(b0_weights):
    """On a GPU a pass takes milliseconds and may be a captured CUDA graph, which an exception inside
    would leave broken: there the checks wait for the callers' checks between passes, and progress moves
    pass by pass. Both for a model on the GPU from the start and for one moved there inside the `with`
    (ComfyUI loads it there late); with the deformable convolution's banded form too."""
    from birefnet import load_model
    from birefnet.deform_conv import implementation
    from birefnet.pass_clock import pass_shares
    from birefnet.stopping import checks_inside

    def stop(*share):
        raise AssertionError("called inside a CUDA pass")

    for moved_inside, deform in ((False, "auto"), (True, "auto"), (True, "banded")):
        model = load_model(b0_weights, device="cpu" if moved_inside else "cuda")
        with checks_inside(model, stop), pass_shares(model, stop), implementation(deform):
            model.to("cuda")
            segment(model, _photo(128, 128), resolution=128, device="cuda")


def test_segment_matches_manual_pipeline(b0_model):
    """The documented pipeline: antialiased bilinear down, normalise, sigmoid, bilinear back."""
    import torch.nn.functional as F

    image = _photo(96, 160)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(64, 128), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = torch.sigmoid(b0_model(((x - mean) / std).to(DEVICE))).cpu()
    expected = F.interpolate(probs, size=(96, 160), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(segment(b0_model, image, resolution=(64, 128)), expected, atol=1e-6)


def test_cutout_is_rgba_with_mask_alpha():
    image = _photo(10, 12)
    mask = torch.linspace(0, 1, 120).view(10, 12)
    rgba = np.asarray(cutout(image, mask))
    assert rgba.shape == (10, 12, 4)
    assert np.array_equal(rgba[:, :, :3], image)
    assert np.array_equal(rgba[:, :, 3], np.round(mask.numpy() * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        cutout(image, torch.zeros(3, 3))


def test_sixteen_bit_and_float_images_scale_by_their_mode_not_their_pixels(tmp_path):
    from birefnet.files import read_image

    dark = np.full((4, 5), 199, np.uint16)  # a dark 16-bit picture: 199 of 65535, not of 255
    Image.fromarray(dark).save(tmp_path / "dark.png")
    for image in (Image.fromarray(dark), read_image(tmp_path / "dark.png"), dark):
        assert torch.allclose(to_rgb_tensor(image), torch.full((3, 4, 5), 199 / 65535), atol=1e-6), image
    bright = Image.fromarray(np.full((4, 5), 0.5, np.float32))  # mode F in [0, 1]: as it is
    assert bright.mode == "F" and torch.allclose(to_rgb_tensor(bright), torch.full((3, 4, 5), 0.5))
    bright.save(tmp_path / "float.tif")
    assert torch.allclose(to_rgb_tensor(read_image(tmp_path / "float.tif")), torch.full((3, 4, 5), 0.5))
    highlight = np.full((4, 4), 0.5, np.float32)
    highlight[0, 0] = 7.0  # an HDR picture's highlight: clamped
    assert to_rgb_tensor(Image.fromarray(highlight)).max() == 1
    for data, hint in (
        (np.full((2, 2), 7.0, np.float32), "0-255 values?"),
        (np.full((2, 2), -2.0, np.float32), "normalised"),
    ):
        with pytest.raises(ValueError, match=f"^float images need values from 0 to 1, .*{hint}"):
            to_rgb_tensor(data)  # other data than a picture: a meaningless mask, said at once
    with pytest.raises(ValueError, match="NaN"):
        to_rgb_tensor(torch.full((3, 2, 2), float("nan")))


@pytest.mark.parametrize("layout", ["comfyui_view", "numpy", "numpy_big_endian_fp16"])
def test_one_nan_pixel_in_any_layout_is_refused_and_in_range_pictures_pass(layout):
    """The one-read range check (memory order for tensors, bit patterns for numpy) sees a single bad
    pixel wherever it lies, and passes a picture in [0, 1] holding a -0.0."""

    def picture(value):
        frame = np.random.default_rng(0).random((1, 6, 7, 3), dtype=np.float32)
        frame[0, 4, 5, 2] = value
        if layout == "comfyui_view":  # ComfyUI's IMAGE is (B, H, W, C); the node passes (C, H, W) views
            return torch.from_numpy(frame)[0].permute(2, 0, 1)
        return frame[0] if layout == "numpy" else frame[0].astype(">f2")

    with pytest.raises(ValueError, match="NaN"):
        to_rgb_tensor(picture(np.nan))
    assert to_rgb_tensor(picture(-0.0))[2, 4, 5] == 0


def test_a_png_transparent_colour_stays_transparent_in_the_cutout(tmp_path):
    from birefnet.files import read_image

    pixels = np.full((6, 8, 3), (200, 100, 50), np.uint8)
    pixels[:, :3] = (10, 20, 30)  # the tRNS colour
    Image.fromarray(pixels).save(tmp_path / "rgb.png", transparency=(10, 20, 30))
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png", transparency=10)
    for name in ("rgb.png", "grey.png"):
        image = read_image(tmp_path / name)
        alpha = np.asarray(cutout(image, torch.ones(6, 8)))[..., 3]
        assert alpha[:, :3].max() == 0 and alpha[:, 3:].min() == 255, name


def test_a_phone_photo_is_segmented_and_cut_out_as_it_is_shown(tmp_path, b0_model):
    """A portrait photo stored sideways with EXIF orientation 6: `segment(Image.open(...))` and `cutout`
    give the upright picture's size, as the command line does (it was the stored, sideways one)."""
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    stored.save(tmp_path / "phone.jpg", exif=exif)
    mask = segment(b0_model, Image.open(tmp_path / "phone.jpg"), resolution=64)
    assert tuple(mask.shape) == (200, 100)
    assert cutout(Image.open(tmp_path / "phone.jpg"), mask).size == (100, 200)


def test_a_cutout_keeps_the_photos_rgb_colour_profile(tmp_path):
    """Adobe RGB or Display P3 pixels mean other colours than sRGB's: the cut-out carries the profile.
    A CMYK photo's profile does not describe the RGB cut-out and stays behind."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = Image.new("RGB", (8, 6), (200, 40, 40))
    rgb.save(tmp_path / "photo.jpg", icc_profile=profile)
    mask = torch.ones(6, 8)
    assert cutout(Image.open(tmp_path / "photo.jpg"), mask).info["icc_profile"] == profile
    rgb.convert("CMYK").save(tmp_path / "print.jpg", icc_profile=profile)
    assert "icc_profile" not in cutout(Image.open(tmp_path / "print.jpg"), mask).info
    rgb.convert("P").save(tmp_path / "palette.png", icc_profile=profile)  # RGB colours: it was left behind
    assert cutout(Image.open(tmp_path / "palette.png"), mask).info["icc_profile"] == profile


# Colour profiles a Debian package installs (CI installs krita): its CMYK, grey and wide-gamut RGB ones.
PROFILES = {
    "krita": ("cmyk.icm", "Gray-D50-elle-V2-srgbtrc.icc", "ClayRGB-elle-V2-g22.icc"),
    "ghostscript": ("default_cmyk.icc", "default_gray.icc", "a98.icc"),
}
# skin, sky, grass, red, grey, paper white, near black, yellow, violet, teal, pale blue, brown
PRINT_COLOURS = [(224, 172, 140), (90, 140, 200), (80, 150, 70), (200, 60, 50), (128, 128, 128), (240, 240, 235)]
PRINT_COLOURS += [(40, 40, 45), (250, 200, 60), (150, 90, 160), (30, 110, 120), (180, 200, 220), (110, 70, 40)]


def icc_profiles(package: str | None = None) -> tuple[bytes, bytes, bytes]:
    """(CMYK, grey, RGB) profile bytes from `package`'s folder of /usr/share/color/icc, or from the first
    package of PROFILES installed here (None); skips, naming what to install, without them."""
    for name in [package] if package else PROFILES:
        paths = [Path("/usr/share/color/icc", name, file) for file in PROFILES[name]]
        if all(path.is_file() for path in paths):
            return tuple(path.read_bytes() for path in paths)
    pytest.skip(f"no colour profiles of {package or ' or '.join(PROFILES)} here: apt-get install {package or 'krita'}")


def print_photo(path, cmyk_profile: bytes) -> np.ndarray:
    """A print workflow's CMYK JPEG at `path`: sRGB colour patches converted to CMYK through `cmyk_profile`
    as Photoshop's Convert to Profile does by default (relative colorimetric, black point compensation),
    saved at quality 95 with the profile embedded (and Adobe's inverted CMYK, as Photoshop writes it).
    Returns the sRGB pixels (48, 64, 3) it was made from: what a colour-managed viewer shows of it."""
    srgb = np.array(PRINT_COLOURS, np.uint8).reshape(3, 4, 3).repeat(16, axis=0).repeat(16, axis=1)
    cmyk = ImageCms.profileToProfile(
        Image.fromarray(srgb),
        ImageCms.createProfile("sRGB"),
        ImageCms.ImageCmsProfile(io.BytesIO(cmyk_profile)),
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode="CMYK",
        flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )
    cmyk.save(path, quality=95, icc_profile=cmyk_profile)
    return srgb


def colour_error(pixels, original: np.ndarray) -> float:
    """Mean absolute difference in 8-bit levels between RGB `pixels` (H, W, 3) and `original`."""
    return float(np.abs(np.asarray(pixels, np.float64)[..., :3] - original).mean())


@pytest.mark.parametrize("package", PROFILES)
def test_a_cmyk_photo_is_read_through_its_profile_as_viewers_show_it(tmp_path, package):
    """A CMYK JPEG with its CMYK profile (print and stock photos) means the colours its profile gives: the
    model and the cut-out get them as sRGB, read through the profile (Pillow's own conversion ignores it:
    some 20 levels off), and the cut-out is untagged sRGB; the CLI's and the server's readers give the same
    pixels. CMYK without a CMYK profile keeps Pillow's conversion; grey and RGB pictures with their profiles
    are read as stored, and an RGB profile still goes on to the cut-out."""
    from birefnet.files import read_image
    from birefnet.server.uploads import decode_image

    cmyk_profile, grey_profile, rgb_profile = icc_profiles(package)
    original = print_photo(tmp_path / "print.jpg", cmyk_profile)
    picture = Image.open(tmp_path / "print.jpg")
    assert picture.mode == "CMYK" and picture.info.get("adobe")
    seen = (to_rgb_tensor(picture).permute(1, 2, 0).numpy() * 255).round()
    naive = colour_error(picture.convert("RGB"), original)
    assert colour_error(seen, original) < 3 and naive > 15
    rgba = cutout(picture, torch.ones(48, 64))
    assert np.abs(np.asarray(rgba, np.float64)[..., :3] - seen).max() == 0 and "icc_profile" not in rgba.info
    for read in (read_image(tmp_path / "print.jpg"), decode_image((tmp_path / "print.jpg").read_bytes(), 10**6)):
        assert read.mode == "RGB" and "icc_profile" not in read.info  # converted once, on reading
        assert np.array_equal(np.asarray(read), seen)

    untagged = Image.fromarray(np.asarray(picture), "CMYK")  # no profile: Pillow's conversion, as before
    assert np.array_equal(to_rgb_tensor(untagged).permute(1, 2, 0).numpy() * 255, np.asarray(untagged.convert("RGB")))
    Image.fromarray(original[..., 0]).save(tmp_path / "grey.png", icc_profile=grey_profile)
    Image.fromarray(original).save(tmp_path / "wide.png", icc_profile=rgb_profile)
    for name, stored in (("grey.png", original[..., :1]), ("wide.png", original)):
        kept = Image.open(tmp_path / name)
        assert np.array_equal(to_rgb_tensor(kept).permute(1, 2, 0).numpy() * 255, np.broadcast_to(stored, (48, 64, 3)))
        assert cutout(kept, torch.ones(48, 64)).info.get("icc_profile") == (rgb_profile if name == "wide.png" else None)


def test_a_cmyk_photo_whose_profile_cannot_be_read_says_so(tmp_path, caplog):
    """A CMYK profile cut short (a broken transfer, a tool that truncates metadata) leaves the colours to
    Pillow's conversion, with one warning saying so (it was silent: colours 20 levels off, unsaid)."""
    print_photo(tmp_path / "print.jpg", icc_profiles()[0])
    picture = Image.open(tmp_path / "print.jpg")
    picture.info["icc_profile"] = picture.info["icc_profile"][:132]  # its header and a tag count, no tags
    with caplog.at_level(logging.WARNING, logger="birefnet"):
        seen = to_rgb_tensor(picture).permute(1, 2, 0).numpy() * 255
    assert np.array_equal(seen, np.asarray(picture.convert("RGB")))
    assert caplog.messages == [
        "a CMYK picture's colour profile cannot be read (cannot open profile from string): "
        "its colours are converted without it"
    ]


def test_integer_and_bool_masks_mean_their_range_and_wrong_types_are_named():
    from birefnet import mask_to_image

    image = _photo(4, 6)
    for full in (
        torch.full((4, 6), 255, dtype=torch.uint8),
        np.full((4, 6), 255, np.uint8),
        np.full((4, 6), 65535, np.uint16),
        torch.ones(4, 6, dtype=torch.bool),
        np.ones((4, 6), bool),
        torch.full((4, 6), 3.0),  # above 1: clamped, never wrapped round
    ):
        assert np.asarray(cutout(image, full))[..., 3].min() == 255, full.dtype
        assert np.asarray(mask_to_image(full)).min() == 255, full.dtype
    assert np.asarray(mask_to_image(np.zeros((4, 6), bool))).max() == 0
    for bad in (np.full((4, 6), 255, np.int64), torch.full((4, 6), 255, dtype=torch.int32)):
        with pytest.raises(ValueError, match="pass uint8 .0-255., uint16 .0-65535., bool, or float in .0, 1."):
            mask_to_image(bad)
    for bad in (image.astype(np.int64), torch.from_numpy(image.astype(np.int32))):
        with pytest.raises(ValueError, match="image of type int(64|32): pass uint8"):
            to_rgb_tensor(bad)
    assert torch.equal(to_rgb_tensor(np.ones((2, 3), bool)), torch.ones(3, 2, 3))


def test_aspect_size_of_a_thin_image_stays_within_the_area_cap():
    for height, width, cap in ((5, 20000, None), (20000, 5, None), (5, 20000, 0.5), (3, 900000, 2.0)):
        h, w = working_size(height, width, "aspect", cap)
        assert min(h, w) == 64 and h % 32 == 0 and w % 32 == 0
        assert h * w <= (cap or 1024 * 1024 / 1e6) * 1e6, (height, width, h, w)


def test_guided_filter_works_on_thin_and_small_images_and_is_unchanged_on_others():
    import kornia

    from birefnet.refine import Refinement, guided_filter, refine_mask

    for height, width, radius in ((300, 1, 4), (1, 300, 4), (40, 60, 40), (2, 2, 16)):
        rgb, mask = torch.rand(1, 3, height, width), torch.rand(1, height, width)
        refined, _ = refine_mask(rgb, mask, Refinement(guided_radius=radius))
        assert refined.shape == (1, height, width) and torch.isfinite(refined).all()
    rgb, mask = torch.rand(1, 3, 50, 70), torch.rand(1, 50, 70)
    before = kornia.filters.guided_blur(rgb, mask[:, None], 17, 1e-3)[:, 0].clamp(0, 1)
    assert torch.equal(guided_filter(rgb, mask, 8, 1e-3), before)


@pytest.mark.parametrize("pixels", [1, 7, -5, 40])
def test_grow_is_the_square_windows_grey_morphology(pixels):
    """Grow/shrink by r: the maximum (minimum) over the (2r+1)^2 square around each pixel, at the border
    over its part inside the image (the two 1-D passes that make it linear in r give exactly that)."""
    import torch.nn.functional as F

    from birefnet.refine import grow

    mask, r = torch.rand(2, 37, 53), abs(pixels)
    sign = 1 if pixels > 0 else -1
    square = sign * F.max_pool2d(sign * mask[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]
    assert torch.equal(grow(mask, pixels), square)


@pytest.mark.parametrize(
    "size_in, size_out", [((3000, 2999), (100, 37)), ((97, 120), (1024, 333)), ((8192, 640), (512, 640))]
)
def test_antialiased_resize_as_matrices_equals_pytorchs(size_in, size_out):
    """The form `resize` falls back to where PyTorch's CUDA kernel refuses a large shrink factor."""
    from birefnet.inference import antialiased_bilinear_matrix

    x = torch.rand(1, 2, *size_in, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(x, size=size_out, mode="bilinear", antialias=True)
    rows, cols = (antialiased_bilinear_matrix(n, m, "cpu") for n, m in zip(size_in, size_out))
    assert (torch.einsum("oh,bchw,pw->bcop", rows, x, cols) - expected).abs().max() < 5e-5


def test_resize_falls_back_to_matrices_when_the_kernel_refuses_the_factor(monkeypatch):
    from birefnet import inference

    x = torch.rand(1, 1, 900, 40, generator=torch.Generator().manual_seed(1))
    expected = inference.resize(x, (30, 40))

    def refuse(*args, **kwargs):  # what PyTorch's CUDA kernel raises for such a factor
        raise RuntimeError("Too much shared memory required: 66820 vs 49152")

    monkeypatch.setattr(inference.F, "interpolate", refuse)
    assert (inference.resize(x, (30, 40)) - expected).abs().max() < 5e-5


def test_a_batch_tensor_gives_a_batch_of_masks(b0_model):
    frames = torch.rand(3, 3, 40, 56)
    masks = segment(b0_model, frames, resolution=64, batch_size=2)
    assert masks.shape == (3, 40, 56)
    assert torch.allclose(masks[1], segment(b0_model, frames[1], resolution=64), atol=1e-5)
    # a batch of one is a batch too: (1, H, W), so `for mask in masks` walks masks, not rows
    assert segment(b0_model, frames[:1], resolution=64).shape == (1, 40, 56)
    assert segment(b0_model, frames[:0], resolution=64).shape == (0, 40, 56)


def test_library_calls_a_script_makes_take_what_it_has(b0_model):
    """A mask file opened with PIL for `cutout`, a detector's float boxes and a numpy region mask for
    `segment_regions`: read as what they mean (they raised AttributeError and TypeError)."""
    from birefnet.guidance import segment_regions

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    mask = Image.fromarray(np.full((40, 56), 255, np.uint8))
    assert np.array_equal(np.asarray(cutout(image, mask))[..., 3], np.full((40, 56), 255))
    combined, objects = segment_regions(b0_model, image, boxes=[(10.4, 5.6, 20.7, 20.1)], resolution=64)
    assert objects.shape == (1, 40, 56) and combined[:, 32:].max() == 0 and combined[:6].max() == 0
    region = np.zeros((40, 56), np.uint8)
    region[10:30, 10:30] = 255
    combined, objects = segment_regions(b0_model, image, region=region, resolution=64)
    assert objects.shape == (1, 40, 56) and combined[:, 30:].max() == 0
