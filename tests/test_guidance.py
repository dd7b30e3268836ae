"""Guided segmentation: boxes and region masks, one object each, zero outside; measured on a
small object among distractors in a 4K frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import birefnet
from birefnet.guidance import mask_regions, parse_box, segment_regions
from birefnet_training.synthetic import _foreground, _object_mask, background

TARGET, DISTRACTORS = 16, (5, 9, 19)  # held-out synthetic objects the demo model segments well alone
PLACES = {16: (2400, 1300), 5: (400, 300), 9: (1500, 500), 19: (3000, 200)}  # (x, y) of each 512² square


def _scene():
    """A 3840x2160 frame: four objects on 512² squares (the target's square is 3.2% of the frame)
    over a synthetic background; the target's alpha as ground truth."""
    h, w, side = 2160, 3840, 512
    frame = background(np.random.default_rng(5), h, w)
    truth = np.zeros((h, w), np.float32)
    for index in (TARGET, *DISTRACTORS):
        rng = np.random.default_rng([2, index])
        alpha, colours = _object_mask(rng, side, side), _foreground(rng, side, side)
        x, y = PLACES[index]
        window = frame[y : y + side, x : x + side]
        frame[y : y + side, x : x + side] = colours * alpha[..., None] + window * (1 - alpha[..., None])
        if index == TARGET:
            truth[y : y + side, x : x + side] = alpha
    return (frame * 255 + 0.5).astype(np.uint8), truth


def _iou(mask: torch.Tensor, truth: np.ndarray) -> float:
    pred, real = mask.numpy() > 0.5, truth > 0.5
    return float((pred & real).sum() / max((pred | real).sum(), 1))


def test_a_box_around_a_small_object_beats_the_whole_image_pass():
    model = birefnet.load_model(device="cpu")
    frame, truth = _scene()
    ys, xs = np.nonzero(truth > 0.5)
    box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))  # as drawn
    whole = _iou(birefnet.segment(model, frame), truth)
    combined, objects = segment_regions(model, frame, boxes=[box])
    guided = _iou(combined, truth)
    print(f"\nsmall object in 4K among 3 distractors: IoU whole image {whole:.4f}, box {guided:.4f}")
    assert objects.shape == (1, 2160, 3840) and torch.equal(combined, objects[0])
    assert guided > whole + 0.5


def test_regions_boxes_and_objects():
    model = birefnet.load_model(device="cpu")
    image = torch.rand(3, 300, 400)
    region = torch.zeros(300, 400)
    region[20:80, 30:90] = 1
    region[200:280, 250:390] = 1
    assert mask_regions(region) == [(250, 200, 140, 80), (30, 20, 60, 60)]  # largest first
    combined, objects = segment_regions(model, image, boxes=[(10, 10, 40, 40)], region=region)
    assert objects.shape == (3, 300, 400)
    assert objects[0, 100:, :].abs().sum() == 0 and objects[0, :, 100:].abs().sum() == 0  # zero outside its box
    assert torch.equal(combined, objects.amax(0)) and combined[150, 200] == 0
    with pytest.raises(ValueError, match="at least one box or a region"):
        segment_regions(model, image, region=torch.zeros(300, 400))
    with pytest.raises(ValueError, match="use x,y,w,h in pixels"):
        parse_box("10,10,40")
    with pytest.raises(ValueError, match="outside the 400x300 image"):
        segment_regions(model, image, boxes=[(900, 900, 10, 10)])


@pytest.mark.parametrize("weights", ["demo", "random"])
def test_the_mask_is_zero_outside_every_box(weights, b0_model):
    """The grown context margin is for the network's input only: no pixel outside the boxes (or outside
    an object's own box) may be non-zero, with boxes overlapping, touching and crossing the border."""
    model = birefnet.load_model(device="cpu") if weights == "demo" else b0_model
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((3, 240, 320), dtype=np.float32))
    image[:, 60:180, 80:240] = torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)  # an object the boxes cut through
    boxes = [(100, 70, 60, 50), (0, 0, 40, 30), (290, 200, 60, 80), (140, 90, 50, 60)]  # last two: border, overlap
    combined, objects = segment_regions(model, image, boxes=boxes)
    inside = torch.zeros(240, 320, dtype=torch.bool)
    for (x, y, w, h), single in zip(boxes, objects):
        own = torch.zeros(240, 320, dtype=torch.bool)
        own[max(y, 0) : y + h, max(x, 0) : x + w] = True
        assert single[~own].abs().max() == 0, f"box {x},{y},{w},{h}: non-zero outside it"
        assert single[own].max() > 0  # the network's answer is kept inside
        inside |= own
    assert combined[~inside].abs().max() == 0
    assert torch.equal(combined, objects.amax(0))


def test_region_masks_are_zero_outside_their_boxes_and_scaled_only_in_the_images_shape():
    """Nothing outside a region's box; a half-size mask (a preview's) guides as the full-size one does; a
    transposed one (another shape) is refused: it was stretched onto other pixels."""
    model = birefnet.load_model(device="cpu")
    image = torch.rand(3, 200, 300)
    region = torch.zeros(200, 300)
    region[50:90, 60:120] = 1
    combined, _ = segment_regions(model, image, region=region)
    outside = torch.ones(200, 300, dtype=torch.bool)
    outside[50:90, 60:120] = False
    assert combined[outside].abs().max() == 0
    half, _ = segment_regions(model, image, region=region[::2, ::2])
    assert torch.equal(combined > 0, half > 0)
    with pytest.raises(ValueError, match="region mask is 200x300 but the image is 300x200"):
        segment_regions(model, image, region=region.T)


def test_boxes_over_the_border_are_clipped_and_boxes_outside_are_errors():
    model = birefnet.load_model(device="cpu")
    image = torch.rand(3, 100, 120)
    combined, _ = segment_regions(model, image, boxes=[(-20, -20, 60, 60)])
    assert combined[40:, :].abs().max() == 0 and combined[:, 40:].abs().max() == 0
    for box in [(120, 0, 10, 10), (0, 100, 10, 10), (-30, 10, 30, 10)]:
        with pytest.raises(ValueError, match="lies outside the 120x100 image"):
            segment_regions(model, image, boxes=[(10, 10, 20, 20), box])


def test_the_callback_follows_each_objects_crop_and_stops_the_rest_when_it_raises():
    """A host's progress and Cancel within one picture of many objects: callback(done, N) after each
    object's crop (boxes and regions alike); an exception raised from it stops the work there: the model
    is not called for the objects left, and the exception reaches the caller (no partial masks)."""
    model = birefnet.load_model(device="cpu")
    forwards = []
    hook = model.register_forward_hook(lambda module, inputs, output: forwards.append(inputs[0].shape[0]))
    image = torch.rand(3, 120, 160)
    region = torch.zeros(120, 160)
    region[70:110, 100:150] = 1
    boxes = [(5, 5, 30, 30), (40, 10, 20, 20)]
    calls = []
    try:
        record = lambda done, total: calls.append((done, total, len(forwards)))
        _, objects = segment_regions(model, image, boxes=boxes, region=region, callback=record)
        assert len(objects) == 3 and calls == [(1, 3, 1), (2, 3, 2), (3, 3, 3)]  # one call per crop, after it

        class Cancelled(Exception):
            pass

        def cancel(done, total):
            raise Cancelled

        forwards.clear()
        with pytest.raises(Cancelled):
            segment_regions(model, image, boxes=boxes, region=region, callback=cancel)
        assert forwards == [1]  # stopped after the first object's crop
    finally:
        hook.remove()
