"""Batch size "auto": as many images per forward as the GPU's free memory holds (up to 8), one on the
CPU; in the library, the video path, the CLI and the ComfyUI node."""

from __future__ import annotations

import pytest
import torch
from conftest import relative_error

from birefnet import segment
from birefnet.batching import AUTO_MOST, activation_bytes, auto_batch_size, check_batch_size, images_that_fit
from birefnet.video import segment_frames

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GB = 10**9


def _frames(count: int, height: int = 60, width: int = 80) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [torch.rand(3, height, width, generator=generator) for _ in range(count)]


def _forward_batches(model):
    """The batch size of each forward of `model` (a hook), and the hook to remove."""
    calls = []
    return calls, model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))


def test_images_that_fit_the_free_memory_up_to_the_cap():
    one_half = activation_bytes(1024 * 1024, torch.float16)
    assert one_half == 650 * 1024 * 1024 and activation_bytes(1024 * 1024, torch.float32) == 2 * one_half
    assert images_that_fit(80 * GB, 1024 * 1024, torch.float16) == AUTO_MOST  # a big card: the cap
    assert images_that_fit(3 * GB, 1024 * 1024, torch.float16) == 3  # 0.7 * 3 GB / 0.68 GB
    assert images_that_fit(3 * GB, 1024 * 1024, torch.float32) == 1
    assert images_that_fit(3 * GB, 2048 * 2048, torch.bfloat16) == 1  # never below one: the forward may still fit
    assert images_that_fit(0, 512 * 512, torch.float16) == 1
    assert images_that_fit(80 * GB, 1024 * 1024, torch.float16, most=32) == 32


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "all", None])
def test_bad_batch_size_is_one_line(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive whole number or 'auto'"):
        check_batch_size(bad)
    assert check_batch_size("auto") == "auto" and check_batch_size(3) == 3


def test_auto_runs_one_image_per_forward_on_the_cpu(b0_model):
    images = _frames(3)
    assert auto_batch_size(b0_model, 1024 * 1024, free=80 * GB) == 1  # the CPU gains nothing from batching
    calls, hook = _forward_batches(b0_model)
    try:
        auto = segment(b0_model, images, resolution=64, batch_size="auto")
        auto_calls, calls[:] = list(calls), []
        frames = list(segment_frames(b0_model, iter(images), resolution=64, batch_size="auto"))
    finally:
        hook.remove()
    one = segment(b0_model, images, resolution=64, batch_size=1)
    assert auto_calls == [1, 1, 1] and calls == [1, 1, 1]
    assert all(torch.equal(a, b) for a, b in zip(auto, one))
    assert all(torch.equal(a, b) for a, b in zip(frames, one))
    assert list(segment_frames(b0_model, iter([]), batch_size="auto")) == []


def test_bad_batch_size_fails_before_any_forward(b0_model):
    calls, hook = _forward_batches(b0_model)
    try:
        with pytest.raises(ValueError, match="got 0"):
            segment(b0_model, _frames(2), resolution=64, batch_size=0)
    finally:
        hook.remove()
    assert calls == []


@needs_cuda
def test_auto_batches_frames_on_a_gpu(b0_weights):
    """On a GPU, "auto" at 256² (about 43 MB a frame in fp16) takes the cap: 8 frames per forward."""
    from birefnet import load_model

    model = load_model(b0_weights, tile_layout="current", device="cuda", dtype=torch.float16)
    frames = _frames(10)
    assert auto_batch_size(model, 256 * 256) == AUTO_MOST
    calls, hook = _forward_batches(model)
    try:
        from birefnet import cuda_graphs

        cuda_graphs.enable(model, False)  # a replayed graph calls no hooks
        batched = list(segment_frames(model, frames, resolution=256, batch_size="auto"))
    finally:
        hook.remove()
    single = list(segment_frames(model, frames, resolution=256, batch_size=1))
    assert calls == [8, 2]
    assert all(relative_error(a, b) < 1e-2 for a, b in zip(batched, single))
