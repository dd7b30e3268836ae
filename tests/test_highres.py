"""Coarse-to-fine segmentation of large images, with the embedded demo model (working size 224)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from PIL import Image

from birefnet import load_model, segment, segment_highres
from birefnet.cli import main
from birefnet.highres import plan_highres
from birefnet.loading import default_weights
from birefnet_training.synthetic import make_sample


@pytest.fixture(scope="module")
def demo():
    return load_model(default_weights(), device=DEVICE)


def _recording(model):
    """The real model, with the input size of every forward written down."""
    sizes = []
    original = model.forward

    def forward(x):
        sizes.append(tuple(x.shape))
        return original(x)

    model.forward = forward
    return model, sizes


def test_large_image_runs_a_capped_second_pass_on_the_object(demo):
    image, _ = make_sample(7, 1, (896, 1152))
    model, sizes = _recording(load_model(default_weights(), device=DEVICE))
    mask = segment_highres(model, image, fine_megapixels=0.2)
    assert mask.shape == (896, 1152) and mask.dtype == torch.float32 and not mask.is_inference()
    assert 0 <= mask.min() and mask.max() <= 1
    assert len(sizes) == 2 and sizes[0][-2:] == (224, 224)  # coarse pass at the checkpoint's size
    fine_h, fine_w = sizes[1][-2:]
    assert fine_h * fine_w <= 0.2e6 and fine_h % 32 == 0 and fine_w % 32 == 0  # the memory cap holds
    assert fine_h * fine_w > 2 * 224 * 224  # and it is a real second look

    coarse = segment(demo, image)
    changed = torch.nonzero(mask != coarse, as_tuple=True)
    ys, xs = torch.nonzero(coarse > 0.2, as_tuple=True)
    # The re-segmented region holds everything the coarse pass found and is a real crop of the image.
    assert changed[0].min() <= ys.min() and changed[0].max() >= ys.max()
    assert changed[1].min() <= xs.min() and changed[1].max() >= xs.max()
    region_area = (changed[0].max() - changed[0].min() + 1) * (changed[1].max() - changed[1].min() + 1)
    assert region_area < 0.9 * 896 * 1152


def test_blend_has_no_seam_at_the_region_border(demo):
    image, _ = make_sample(7, 1, (896, 1152))
    coarse = segment(demo, image)
    mask = segment_highres(demo, image, fine_megapixels=0.2)
    changed = torch.nonzero((mask - coarse).abs() > 0, as_tuple=True)
    top, left = changed[0].min().item(), changed[1].min().item()
    # One pixel into the region the fine result has almost no weight yet.
    assert (mask[top] - coarse[top]).abs().max() < 0.05
    assert (mask[:, left] - coarse[:, left]).abs().max() < 0.05


def test_small_images_and_empty_scenes_get_the_plain_result(demo):
    small, _ = make_sample(3, 0, (250, 240))
    assert torch.equal(segment_highres(demo, small), segment(demo, small))
    plan = plan_highres(torch.zeros(224, 224), 4000, 3000, 4.2, 0.03)  # nothing found
    assert plan.region is None and plan.fine_size is None
    whole = plan_highres(torch.ones(224, 224), 260, 260, 4.2, 0.03)  # under 1.25x more detail to gain
    assert whole.region is None


def test_plan_caps_the_fine_pass_for_8k(demo):
    coarse = torch.zeros(224, 224)
    coarse[40:180, 30:200] = 1.0
    plan = plan_highres(coarse, 4320, 7680, 4.2, 0.03)
    top, left, bottom, right = plan.region
    assert (bottom - top) * (right - left) > 4.2e6  # the region is far larger than the cap ...
    h, w = plan.fine_size
    assert h * w <= 4.2e6 and h % 32 == 0 and w % 32 == 0  # ... the pass is not
    assert abs(h / w - (bottom - top) / (right - left)) < 0.05  # and keeps the aspect ratio


def test_cli_highres(tmp_path):
    image, _ = make_sample(7, 2, (700, 900))
    image.save(tmp_path / "big.jpg")
    assert (
        main(
            [
                "segment",
                str(tmp_path / "big.jpg"),
                "--out",
                str(tmp_path / "out"),
                "--highres",
                "--fine-megapixels",
                "0.2",
                "--quiet",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "out" / "big.png").size == (900, 700)


def test_invalid_cap_is_a_clear_error(demo):
    with pytest.raises(ValueError, match="fine_megapixels"):
        segment_highres(demo, Image.new("RGB", (900, 900)), fine_megapixels=0)


def test_the_callback_follows_each_pass_and_raising_from_it_stops_the_fine_pass():
    """A host's progress and Cancel within one large image: callback(done, 2) after the coarse and after
    the fine pass; an exception raised from it after the coarse pass stops there: the model is not called
    again, and the exception reaches the caller (no partial mask)."""
    image, _ = make_sample(7, 1, (896, 1152))
    model, sizes = _recording(load_model(default_weights(), device=DEVICE))
    calls = []
    segment_highres(
        model, image, fine_megapixels=0.2, callback=lambda done, total: calls.append((done, total, len(sizes)))
    )
    assert calls == [(1, 2, 1), (2, 2, 2)]  # once per pass, each after its forward

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    sizes.clear()
    with pytest.raises(Cancelled):
        segment_highres(model, image, fine_megapixels=0.2, callback=cancel)
    assert len(sizes) == 1  # the coarse pass only
