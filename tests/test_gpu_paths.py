"""The GPU inference paths: the CUDA-graph switch and cache, the banded deformable convolution in the
model's dtype, batched frames, masks left on the model's device, no host-to-device copies inside a
forward, the benchmark's path names, and out-of-memory errors.

The switch, the fallbacks and the numerics run on the CPU; the graph capture itself needs CUDA and
those tests skip without it (`.ci/gpu_check.sh` runs them on a lent GPU).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, relative_error
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from birefnet import cuda_graphs, device_constants, load_model, segment
from birefnet.bench import parse_path, parse_row
from birefnet.deform_conv import (
    deform_conv2d,
    deform_conv2d_banded,
    deform_conv2d_reference,
    implementation,
    outside_capture,
)
from birefnet.inference import normalise, predict
from birefnet.video import segment_frames

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FP16_TOLERANCE = 1e-2  # what tests/test_parity.py holds an fp16 model to


def _frames(count: int, height: int = 72, width: int = 96) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.rand(3, height, width, generator=generator) for _ in range(count)]


def _deform_inputs(dtype=torch.float32, device="cpu", kernel=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    taps = kernel * kernel
    x = torch.randn(2, 8, 20, 24, generator=generator)
    offset = 2.5 * torch.randn(2, 2 * taps, 20, 24, generator=generator)
    mask = torch.rand(2, taps, 20, 24, generator=generator) * 2
    weight = torch.randn(16, 8, kernel, kernel, generator=generator) / (8 * taps) ** 0.5
    bias = torch.randn(16, generator=generator)
    return [t.to(device=device, dtype=dtype) for t in (x, offset, weight, mask, bias)]


# --- the switch ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, on", [(None, True), ("", True), ("0", False), ("off", False), ("1", True), (" ON ", True), ("yes", True)]
)
def test_switch_values(text, on):
    assert cuda_graphs.parse_switch(text) is on


def test_bad_switch_value_names_the_variable_and_the_fix():
    with pytest.raises(ValueError, match=r"BIREFNET_CUDA_GRAPHS='maybe': use 1 .* or 0"):
        cuda_graphs.parse_switch("maybe")


def test_switch_is_on_by_default_and_never_applies_off_cuda(monkeypatch, b0_model):
    monkeypatch.delenv(cuda_graphs.ENV, raising=False)
    assert cuda_graphs.enabled(b0_model, CUDA)
    assert not cuda_graphs.enabled(b0_model, torch.device("cpu"))
    monkeypatch.setenv(cuda_graphs.ENV, "0")
    assert not cuda_graphs.enabled(b0_model, CUDA)


def test_switch_is_off_by_default_on_rocm_where_it_was_never_measured(monkeypatch, b0_model):
    monkeypatch.delenv(cuda_graphs.ENV, raising=False)
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    assert not cuda_graphs.enabled(b0_model, CUDA)
    monkeypatch.setenv(cuda_graphs.ENV, "1")
    assert cuda_graphs.enabled(b0_model, CUDA)


def test_per_model_override_beats_the_environment(monkeypatch, b0_model):
    monkeypatch.setenv(cuda_graphs.ENV, "1")
    try:
        cuda_graphs.enable(b0_model, False)
        assert not cuda_graphs.enabled(b0_model, CUDA)
        monkeypatch.setenv(cuda_graphs.ENV, "0")
        cuda_graphs.enable(b0_model, True)
        assert cuda_graphs.enabled(b0_model, CUDA)
    finally:
        cuda_graphs.enable(b0_model, None)
    assert not cuda_graphs.enabled(b0_model, CUDA)  # the environment's 0 again


def test_graphs_never_capture_torchvisions_deformable_convolution(monkeypatch):
    """Replayed, torchvision's kernel gives the capture input's result (3.8e-2 off eager on an H200):
    a graph takes Triton's kernel (the banded form without Triton) unless those were chosen, and with
    torchvision's chosen it runs eager between graph pieces."""
    try:
        import birefnet.deform_conv_triton  # noqa: F401

        fused = "triton"
    except ImportError:
        fused = "banded"
    monkeypatch.delenv("BIREFNET_DEFORM_CONV", raising=False)
    assert cuda_graphs.capture_safe_implementation() == fused
    for chosen, captured in (("torchvision", "between"), ("auto", fused), ("banded", "banded"), ("triton", "triton")):
        with implementation(chosen):
            assert cuda_graphs.capture_safe_implementation() == captured


def test_outside_capture_hands_over_each_inference_call_with_its_shape_and_choice():
    """What a graph capture cut at the deformable convolution relies on: the call is handed over with
    the output's shape and dtype, `run()` gives the plain call's result with the implementation chosen
    at the call (even when run later, outside that choice), and the caller's tensor is what comes back."""
    x, offset, weight, mask, bias = _deform_inputs(kernel=3)
    handed = []

    def elsewhere(run, shape, dtype):
        handed.append((run, shape, dtype))
        return torch.full(shape, 7.0, dtype=dtype)

    with torch.inference_mode():
        with implementation("banded"):
            banded = deform_conv2d(x, offset, weight, mask, 1, bias)
            with outside_capture(elsewhere):
                out = deform_conv2d(x, offset, weight, mask, 1, bias)
        plain = deform_conv2d(x, offset, weight, mask, 1, bias)  # nothing handed over outside the block
        run, shape, dtype = handed[0]
        later = run()
    assert len(handed) == 1 and shape == (2, 16, 20, 24) and dtype == torch.float32
    assert torch.equal(out, torch.full(shape, 7.0))
    assert torch.equal(later, banded) and relative_error(plain, banded) < 1e-5
    trained = [t.clone().requires_grad_() for t in (x, offset, weight)]
    with outside_capture(elsewhere):
        deform_conv2d(*trained, mask, 1, bias).sum().backward()  # training is never handed over
    assert len(handed) == 1 and trained[0].grad is not None


def test_a_shape_is_captured_at_its_second_call_and_one_off_shapes_stay_bounded(b0_model):
    cache = cuda_graphs.GraphCache(b0_model)
    key = ((1, 3, 1024, 1024), torch.float16)
    assert not cache.due(key) and cache.due(key)  # the first call runs eager, the second captures
    for width in range(32, 32 * 100, 32):  # one-off sizes: counted, then forgotten oldest first
        assert not cache.due(((1, 3, 1024, width), torch.float16))
    assert len(cache.sightings) == 4 * cache.max_graphs
    assert cuda_graphs.GraphCache(b0_model, capture_at=1).due(key)


def test_release_drops_the_models_graphs(b0_model):
    cache = cuda_graphs.cache_for(b0_model)
    cache.sightings[("shape",)] = 1
    cuda_graphs.release(b0_model)
    assert b0_model not in cuda_graphs._CACHES and not cache.sightings
    cuda_graphs.release(b0_model)  # nothing left to free: no error


def test_graph_cache_refuses_cpu_tensors(b0_model):
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA tensor"):
        cuda_graphs.GraphCache(b0_model).run(b0_model, torch.zeros(1, 3, 64, 64))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU path")
def test_switch_on_leaves_cpu_results_unchanged(monkeypatch, b0_model):
    images = _frames(2)
    monkeypatch.delenv(cuda_graphs.ENV, raising=False)
    plain = segment(b0_model, images, resolution=64, batch_size=2)
    monkeypatch.setenv(cuda_graphs.ENV, "1")
    switched = segment(b0_model, images, resolution=64, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(plain, switched))


# --- deformable convolution in the model's dtype ---------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_banded_bf16_matches_the_fp32_reference(kernel):
    x, offset, weight, mask, bias = _deform_inputs(kernel=kernel)
    with torch.inference_mode():
        reference = deform_conv2d_reference(x, offset, weight, mask, kernel // 2) + bias.view(1, -1, 1, 1)
        low = deform_conv2d_banded(
            x.bfloat16(), offset.bfloat16(), weight.bfloat16(), mask.bfloat16(), kernel // 2, bias.bfloat16()
        )
    assert low.dtype == torch.bfloat16
    assert relative_error(low, reference) < 1e-2  # bf16 keeps 8 bits: ~4e-3 per value


def test_banded_choice_routes_every_inference_call(monkeypatch):
    x, offset, weight, mask, bias = _deform_inputs(seed=1)
    with torch.inference_mode():
        banded = deform_conv2d_banded(x, offset, weight, mask, 1, bias)
        with implementation("banded"):
            chosen = deform_conv2d(x, offset, weight, mask, 1, bias)
        monkeypatch.setenv("BIREFNET_DEFORM_CONV", "banded")
        from_env = deform_conv2d(x, offset, weight, mask, 1, bias)
    assert torch.equal(chosen, banded) and torch.equal(from_env, banded)


def test_bad_deform_conv_choice_is_one_line(monkeypatch):
    x, offset, weight, mask, bias = _deform_inputs()
    monkeypatch.setenv("BIREFNET_DEFORM_CONV", "fastest")
    with (
        torch.inference_mode(),
        pytest.raises(ValueError, match=r"BIREFNET_DEFORM_CONV='fastest': use auto, banded, torchvision or triton"),
    ):
        deform_conv2d(x, offset, weight, mask, 1, bias)
    with pytest.raises(ValueError, match="unknown deformable convolution"):
        with implementation("cuda"):
            pass


def test_banded_model_output_matches_the_default(b0_model):
    x = torch.rand(1, 3, 64, 64)
    default = predict(b0_model, x)
    with implementation("banded"):
        banded = predict(b0_model, x)
    assert relative_error(banded, default) < 1e-4


# --- batching and devices --------------------------------------------------------------------------


def test_video_frames_of_one_size_share_one_forward(b0_model):
    frames = _frames(5)
    calls = []
    cuda_graphs.enable(b0_model, False)  # a replayed graph calls no hooks
    hook = b0_model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        batched = list(segment_frames(b0_model, frames, resolution=64, batch_size=4))
        batched_calls, calls[:] = list(calls), []
        single = list(segment_frames(b0_model, frames, resolution=64, batch_size=1))
    finally:
        hook.remove()
        cuda_graphs.enable(b0_model, None)
    assert batched_calls == [4, 1] and calls == [1] * 5
    assert all(relative_error(a, b) < 1e-4 for a, b in zip(batched, single))


def test_masks_can_stay_on_the_model_device(b0_model):
    device = next(b0_model.parameters()).device
    image = _frames(1, 50, 70)[0]
    kept = segment(b0_model, image, resolution=64, device=device)
    default = segment(b0_model, image, resolution=64)
    assert kept.device == device and default.device.type == "cpu"
    assert kept.shape == (50, 70) and torch.equal(kept.cpu(), default)


# --- the benchmark's path names --------------------------------------------------------------------


def test_benchmark_paths_parse():
    assert parse_path("eager") == {
        "graphs": False,
        "channels_last": False,
        "cudnn_benchmark": False,
        "deform": None,
        "compile": None,
    }
    assert parse_path("cudnn-benchmark+triton+graphs")["cudnn_benchmark"]
    assert parse_path("channels-last+graphs")["channels_last"] and parse_path("banded+graphs")["graphs"]
    assert parse_path("triton+graphs")["deform"] == "triton" and parse_path("banded")["deform"] == "banded"
    assert parse_path("compile:max-autotune")["compile"] == "max-autotune"
    assert parse_path("compile")["compile"] == "default"
    assert parse_row("bf16/banded+graphs/8") == ("bf16", "banded+graphs", 8)
    with pytest.raises(ValueError, match="unknown part 'graph'"):
        parse_path("graph")
    assert parse_path("torchvision+graphs")["deform"] == "torchvision" and parse_path("between+graphs")["graphs"]
    with pytest.raises(ValueError, match="choose one of banded, triton, torchvision or between"):
        parse_path("banded+triton")
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        parse_path("compile:fast")
    with pytest.raises(ValueError, match="use DTYPE/PATH/BATCH"):
        parse_row("fp16/graphs")


def test_benchmark_paths_without_the_torch_backend_are_refused(capsys):
    """--compile/--path only choose how torch rows run: an OpenVINO-only series would run eager, unsaid."""
    from birefnet import bench

    for argv in (["--backend", "openvino", "--compile"], ["--backend", "onnxruntime", "--path", "graphs"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert "add --backend torch" in capsys.readouterr().err
    assert bench.parse_args(["--backend", "torch", "openvino", "--compile"]).path == ["compile"]


# --- the prepared GPU check ------------------------------------------------------------------------
# A lent GPU comes rarely and for minutes: `.ci/gpu_check.sh` must not fail there on a renamed test file,
# benchmark option or path name. Its commands are read here as the script runs them.

GPU_CHECK = Path(__file__).resolve().parents[1] / ".ci" / "gpu_check.sh"


def _gpu_check_lines() -> list[str]:
    """The script's command lines, continuations joined, comments left out."""
    text = GPU_CHECK.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _gpu_check_commands(module: str) -> list[list[str]]:
    """The arguments of every `python3 -m MODULE` the script runs (its bash arrays spelt out)."""
    import shlex

    lines = _gpu_check_lines()
    bench = next(shlex.split(line[len("bench=(") : -1]) for line in lines if line.startswith("bench=("))
    commands = []
    for line in (line for line in lines if "${bench[@]}" in line or f"-m {module}" in line):
        words = shlex.split(line.split("2>&1")[0].replace('"${official[@]}"', "--official .official"))
        if "${bench[@]}" in words:
            at = words.index("${bench[@]}")
            words[at : at + 1] = bench
        if words[:1] == ["timeout"] and "-m" in words and words[words.index("-m") + 1] == module:
            commands.append(words[words.index("-m") + 2 :])
    return commands


def test_the_gpu_checks_commands_parse():
    import subprocess

    from birefnet import bench, bench_deform
    from birefnet.device import parse_dtype

    assert subprocess.run(["bash", "-n", str(GPU_CHECK)]).returncode == 0
    bench_runs = _gpu_check_commands("birefnet.bench")
    assert len(bench_runs) == 3, bench_runs  # the bench, frames and memory steps
    rows = []
    for argv in bench_runs:
        rows += bench.parse_args(argv).row  # exits (SystemExit) on an unknown option, path or row
    assert {"fp16/graphs/1", "fp16/between+graphs/8", "fp16/banded+graphs/1"} <= set(rows)
    (deform_argv,) = _gpu_check_commands("birefnet.bench_deform")
    for name in bench_deform.build_parser().parse_args(deform_argv).dtype:
        parse_dtype(name)


def test_the_gpu_checks_tests_exist():
    import subprocess

    root = GPU_CHECK.parents[1]
    for line in _gpu_check_lines():
        files = re.findall(r"tests/\w+\.py", line)
        assert all((root / name).is_file() for name in files), files
        for expression in re.findall(r'-k "([^"]+)"', line):  # each selection still names its tests
            collected = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "--collect-only",
                    "-p",
                    "no:cacheprovider",
                    *files,
                    "-k",
                    expression,
                ],
                capture_output=True,
                text=True,
                cwd=root,
            )
            missing = [part for part in expression.split(" or ") if part.strip() not in collected.stdout]
            assert not missing, (expression, collected.stdout[-2000:])


# --- CUDA only -------------------------------------------------------------------------------------


@pytest.fixture
def cuda_fp16_model(b0_weights):
    model = load_model(b0_weights, tile_layout="current", device=CUDA, dtype=torch.float16)
    cuda_graphs.enable(model, False)  # eager first: the tests turn graphs on themselves
    yield model
    cuda_graphs.enable(model, None)


@needs_cuda
def test_graphs_give_eager_masks_and_reuse_the_capture(cuda_fp16_model):
    model = cuda_fp16_model
    images = _frames(3, 300, 400)
    eager = segment(model, images, resolution=256, batch_size=3)
    cuda_graphs.enable(model)
    seen_once = segment(model, images, resolution=256, batch_size=3)  # eager: a size seen once is not captured
    cache = cuda_graphs.cache_for(model)
    assert cache.captures == 0
    first = segment(model, images, resolution=256, batch_size=3)  # the second call captures
    assert cache.captures == 1
    second = segment(model, images, resolution=256, batch_size=3)  # a replay: the same numbers
    smaller = segment(model, images[:2], resolution=256, batch_size=2)  # padded into the batch-3 graph
    assert cache.captures == 1
    assert all(relative_error(a, b) < 1e-6 for a, b in zip(seen_once, eager))
    for masks in (first, second, smaller):
        assert all(relative_error(a, b) < FP16_TOLERANCE for a, b in zip(masks, eager))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@needs_cuda
def test_graphs_of_several_sizes_share_memory_and_replay_in_any_order(cuda_fp16_model):
    """Three working sizes captured into one memory pool, then replayed out of capture order: every
    output still equals eager (no graph's scratch memory overwrote what another one keeps)."""
    model = cuda_fp16_model
    inputs = {size: torch.rand(2, 3, size, size) for size in (256, 320, 384)}
    eager = {size: predict(model, x) for size, x in inputs.items()}
    cuda_graphs.enable(model)
    for x in inputs.values():
        predict(model, x)  # first sight: eager
    captured = {size: predict(model, x) for size, x in inputs.items()}
    for size in (384, 256, 320, 256, 384):
        assert torch.equal(predict(model, inputs[size]), captured[size]), size
    assert cuda_graphs.cache_for(model).captures == 3
    assert all(relative_error(captured[size], eager[size]) < FP16_TOLERANCE for size in inputs)


@needs_cuda
def test_graphs_are_recaptured_when_the_weights_move(cuda_fp16_model):
    model = cuda_fp16_model
    cuda_graphs.enable(model)
    x = torch.rand(1, 3, 256, 256)
    half = [predict(model, x) for _ in range(2)][-1]  # captured at the second call
    model.float()  # new storage: the fp16 graph's pointers are stale
    full = [predict(model, x) for _ in range(2)][-1]
    assert cuda_graphs.cache_for(model).captures == 2
    cuda_graphs.enable(model, False)
    eager = predict(model, x)
    assert relative_error(full, eager) < 1e-4 and relative_error(half, eager) < FP16_TOLERANCE


@needs_cuda
def test_a_synchronising_forward_is_never_captured_and_runs_eager(cuda_fp16_model, caplog):
    model = cuda_fp16_model
    cache = cuda_graphs.GraphCache(model, capture_at=1)
    syncs = lambda x: model(x) * float(x.abs().max().item() > -1)  # .item() cannot be captured
    x = torch.rand(1, 3, 256, 256, device=CUDA, dtype=torch.float16)
    with caplog.at_level(logging.WARNING, logger="birefnet"), torch.inference_mode():
        first = cache.run(syncs, x)
        second = cache.run(syncs, x)
        eager = model(x)
    assert cache.captures == 0  # found in the warm-up: no capture was even begun
    assert sum("CUDA graph not captured" in r.getMessage() for r in caplog.records) == 1
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert torch.cuda.get_sync_debug_mode() == 0  # the check's setting is put back


@needs_cuda
@pytest.mark.parametrize("deform", ["triton", "torchvision"])
def test_a_capture_failing_half_way_leaves_the_callers_stream_and_runs_eager(cuda_fp16_model, caplog, deform):
    """A forward that passes the warm-ups but breaks its capture (a synchronisation only while capturing):
    one warning, eager results, and the thread back on its own stream, where torchvision's kernel
    (launched on the default stream) stays in order with everything else."""
    model = cuda_fp16_model
    cache = cuda_graphs.GraphCache(model, capture_at=1)

    def breaks_capture(x):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # not allowed while capturing: the capture is invalidated
        return model(x)

    x = torch.rand(1, 3, 256, 256, device=CUDA, dtype=torch.float16)
    stream = torch.cuda.current_stream()
    with caplog.at_level(logging.WARNING, logger="birefnet"), torch.inference_mode(), implementation(deform):
        first = cache.run(breaks_capture, x)
        assert torch.cuda.current_stream() == stream
        second = cache.run(breaks_capture, x)
        eager = model(x)
    assert cache.captures == 0
    assert sum("CUDA graph not captured" in r.getMessage() for r in caplog.records) == 1
    assert torch.equal(second, eager) and relative_error(first, eager) < FP16_TOLERANCE


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_banded_runs_in_the_model_dtype_on_cuda(dtype):
    """On CUDA the banded form gathers with Triton's im2col (bands of 5 rows here: several launches)."""
    x, offset, weight, mask, bias = _deform_inputs(kernel=7)
    band = 8 * 49 * 24 * 5
    with torch.inference_mode():
        reference = deform_conv2d_reference(x, offset, weight, mask, 3) + bias.view(1, -1, 1, 1)
        inputs = [t.to(CUDA, dtype) for t in (x, offset, weight, mask)]
        low = deform_conv2d_banded(*inputs, 3, bias.to(CUDA, dtype), band_floats=band)
    assert low.dtype == dtype
    assert relative_error(low, reference) < (1e-5 if dtype == torch.float32 else 1e-2)


@needs_cuda
@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_kernel_matches_torchvision_on_cuda(kernel, dtype):
    """The model's shapes (64 channels in, 256 out) against torchvision's float32 kernel without TF32."""
    generator = torch.Generator().manual_seed(kernel)
    taps = kernel * kernel
    x = torch.randn(2, 64, 48, 40, generator=generator)
    offset = 3 * torch.randn(2, 2 * taps, 48, 40, generator=generator)
    mask = 2 * torch.rand(2, taps, 48, 40, generator=generator)
    weight = torch.randn(256, 64, kernel, kernel, generator=generator) / (64 * taps) ** 0.5
    bias = torch.randn(256, generator=generator)
    inputs = [t.to(CUDA) for t in (x, offset, weight, mask, bias)]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            reference = deform_conv2d(*inputs[:4], kernel // 2, inputs[4])  # auto: torchvision in float32
            with implementation("triton"):
                fused = deform_conv2d(*(t.to(dtype) for t in inputs[:4]), kernel // 2, inputs[4].to(dtype))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert fused.dtype == dtype
    assert relative_error(fused, reference) < (1e-5 if dtype == torch.float32 else FP16_TOLERANCE)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_with_the_triton_kernel_matches_torchvision_with_and_without_graphs(b0_weights, dtype):
    model = load_model(b0_weights, tile_layout="current", device=CUDA, dtype=dtype)
    x = torch.rand(2, 3, 256, 256)
    cuda_graphs.enable(model, False)
    default = predict(model, x)  # eager, torchvision's kernel
    with implementation("triton"):
        fused = predict(model, x)
        cuda_graphs.enable(model)
        try:
            replayed = [predict(model, x) for _ in range(2)][-1]
            assert cuda_graphs.cache_for(model).captures == 1
        finally:
            cuda_graphs.enable(model, None)
    assert relative_error(fused, default) < FP16_TOLERANCE
    assert relative_error(replayed, fused) < 1e-3  # the same kernels, replayed


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_graphs_cut_at_torchvisions_kernel_give_eager_results_on_any_stream(b0_weights, dtype):
    """With torchvision's kernel chosen, a forward is several graphs with the kernel eager between
    them: the same numbers as eager, replayed from the default stream or another one."""
    model = load_model(b0_weights, tile_layout="current", device=CUDA, dtype=dtype)
    x = torch.rand(2, 3, 256, 256)
    with implementation("torchvision"):
        cuda_graphs.enable(model, False)
        eager = predict(model, x)
        cuda_graphs.enable(model)
        try:
            replayed = [predict(model, x) for _ in range(2)][-1]
            cache = cuda_graphs.cache_for(model)
            entry = next(iter(cache.graphs.values()))
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                on_side = predict(model, x)
            torch.cuda.synchronize()
        finally:
            cuda_graphs.enable(model, None)
    assert cache.captures == 1 and len(entry.pieces.graphs) > 1  # cut at every deformable convolution
    assert relative_error(replayed, eager) < 1e-3  # the same kernels, replayed
    assert torch.equal(on_side, replayed)


@needs_cuda
def test_pipeline_keeps_the_mask_on_the_gpu(cuda_fp16_model):
    from birefnet.pipeline import segment_image

    mask, objects = segment_image(cuda_fp16_model, _frames(1, 100, 120)[0], resolution=256)
    assert mask.device.type == "cuda" and objects[0] is mask


# --- out of memory -----------------------------------------------------------------------------------


class _NoMemoryLeft(torch.nn.Module):
    """Stands in for a GPU that is full (this machine has none): its forward raises what CUDA raises."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.00 GiB (GPU 0; 7.6 GiB total)")


def test_out_of_memory_is_one_line_naming_the_size_and_the_ways_out():
    from birefnet import OutOfMemory

    with pytest.raises(OutOfMemory) as caught:
        segment(_NoMemoryLeft(), torch.rand(3, 60, 80), resolution=(768, 1024))
    message = str(caught.value)
    assert "\n" not in message and "1 image(s) at working size 1024x768 in float32" in message
    assert "smaller resolution or batch size" in message
    assert isinstance(caught.value, torch.OutOfMemoryError)  # hosts that recover from those (ComfyUI) still do


@needs_cuda
def test_real_cuda_out_of_memory_then_the_next_call_runs():
    from birefnet import OutOfMemory, build_model

    model = build_model("swin_v1_t").eval().to(CUDA, torch.float16)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(3e9 / torch.cuda.get_device_properties(CUDA).total_memory)
    try:
        with pytest.raises(OutOfMemory, match="working size 8192x8192 in float16"):
            segment(model, torch.rand(3, 64, 64), resolution=8192)
        assert segment(model, torch.rand(3, 64, 64), resolution=256).shape == (64, 64)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


# --- nothing copied from the host inside a forward (CUDA graphs, no GPU stalls) ----------------------


class _HostCopies(TorchDispatchMode):
    """Records ops that move data between the host and CUDA. Host to device: "device_constant" when that
    function was making a constant (kept for later calls), else file:line of the library's innermost frame.
    Device to host (a synchronising read the CPU waits for): "to host at file:line"."""

    def __init__(self):
        super().__init__()
        self.places = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        frames = [f for f in traceback.extract_stack() if f"{os.sep}birefnet{os.sep}" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        if any(t.device.type == "cpu" and t.dim() > 0 for t in inputs) and any(t.is_cuda for t in outputs):
            self.places.append("device_constant" if any(f.name == "device_constant" for f in frames) else where)
        if any(t.is_cuda for t in inputs) and any(t.device.type == "cpu" for t in outputs):
            self.places.append(f"to host at {where}")
        return out


@pytest.mark.parametrize("backbone", ["swin_v1_t", "pvt_v2_b0", "resnet50", "dino_v3_s"])
def test_forward_copies_from_the_host_only_constants_made_once(backbone):
    """On (fake) CUDA: every host-to-device copy of a forward is a `device_constant` (made once per
    shape, so a second forward and a CUDA graph capture see none), and nothing is read back to the
    host. A copy elsewhere would stall the GPU on every call and make graph capture fail; fake
    tensors also refuse data-dependent ops (`.item()`, `nonzero`), which capture cannot take either."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from birefnet.model import build_model
    from birefnet.peak_memory import _fake_state

    model = build_model(backbone).eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        state = _fake_state(model, mode, torch.device("cuda"), torch.float16)
        x = torch.zeros(1, 3, 256, 320, device="cuda", dtype=torch.float16)
    copies = _HostCopies()
    with mode, copies, torch.inference_mode():
        torch.func.functional_call(model, state, (normalise(x),))  # what `predict` captures
    assert copies.places and set(copies.places) == {"device_constant"}, copies.places


def test_device_constants_are_made_once_and_serve_training_too():
    calls = []

    def make():
        calls.append(1)
        return torch.arange(6), torch.ones(6)

    like = torch.zeros(2)
    with torch.inference_mode():
        first = device_constants.device_constant(("test", 6), like, make)
    second = device_constants.device_constant(("test", 6), like, make)
    assert first is second and len(calls) == 1
    weights = torch.randn(6, requires_grad=True)
    weights.index_select(0, second[0]).mul(second[1]).sum().backward()  # not an inference tensor
    assert torch.equal(weights.grad, torch.ones(6))
    floats = device_constants.device_constant(("test", 6), like, make, dtype=torch.float16)
    assert floats[1].dtype == torch.float16 and floats[0].dtype == torch.int64 and len(calls) == 2
    kept = device_constants.alive()  # what a CUDA graph holds: dropped from the cache, still allocated
    assert any(value is first for value in kept) and any(value is floats for value in kept)


def test_dinov3_rope_table_is_made_once_in_eval_and_afresh_in_training():
    import copy

    from birefnet.backbones.dinov3 import DINOv3, RopeTablesOnDevice

    backbone = DINOv3("dino_v3_s")
    rope = backbone.model.rope
    rope.eval()
    first, second = rope.get_embed(shape=(6, 7)), rope.get_embed(shape=(6, 7))
    assert first is second and first.shape == (42, 2 * rope.dim)
    rope.train()
    fresh = rope.get_embed(shape=(6, 7))
    assert fresh is not first and torch.equal(fresh, first)
    assert type(copy.deepcopy(backbone).model.rope) is RopeTablesOnDevice  # EMA copies, clones


def test_dinov3_rope_tables_work_with_timms_older_one_argument_get_embed(monkeypatch):
    """timm 1.0.29 (the lent GPU machine's) has get_embed(shape) without the dtype newer releases pass."""
    from timm.layers import RotaryEmbeddingDinoV3

    from birefnet.backbones.dinov3 import DINOv3

    newer = RotaryEmbeddingDinoV3.get_embed
    monkeypatch.setattr(RotaryEmbeddingDinoV3, "get_embed", lambda self, shape=None: newer(self, shape))
    rope = DINOv3("dino_v3_s").model.rope.eval()
    first = rope.get_embed((6, 7))
    assert first is rope.get_embed((6, 7)) and torch.equal(first, newer(rope, (6, 7)))


# --- the deformable-convolution benchmark ---------------------------------------------------------


def test_deform_benchmark_shapes_are_the_ones_a_forward_runs(b0_model, monkeypatch):
    import birefnet.deform_conv as deform_module
    from birefnet.bench_deform import CHANNELS_IN, CHANNELS_OUT, forward_shapes

    seen = []
    library = deform_module.deform_conv2d

    def spy(x, offset, weight, *rest):
        seen.append((x.shape[1], weight.shape[0], x.shape[2], x.shape[3], weight.shape[-1]))
        return library(x, offset, weight, *rest)

    monkeypatch.setattr("birefnet.blocks.deform_conv2d", spy)
    predict(b0_model, torch.rand(1, 3, 256, 320))
    assert seen == [(CHANNELS_IN, CHANNELS_OUT, *shape) for shape in forward_shapes(256, 320)]


def test_deform_benchmark_table_on_the_cpu():
    from birefnet.bench_deform import measure, table

    rows = measure((128, 128), torch.float32, torch.device("cpu"), runs=1)
    assert sum(r["calls"] for r in rows) == 20 and set(rows[0]["times"]) == {"torchvision", "banded"}
    assert all(r["errors"]["banded"] < 1e-5 for r in rows)
    text = table(rows, "fp32", 1)
    assert "| fp32 | 1 | one forward | all | 20 |" in text and "x of torchvision's time" in text


class _Placement(TorchDispatchMode):
    """Records each host-to-device copy (dtype and shape of the host tensor) and each resize's device."""

    def __init__(self):
        super().__init__()
        self.copies, self.resizes = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.is_cuda for t in outputs):
            self.copies += [(t.dtype, tuple(t.shape)) for t in inputs if t.device.type == "cpu" and t.dim() > 0]
        if "upsample" in str(func) or "einsum" in str(func):
            self.resizes.update(t.device.type for t in inputs)
        return out


def test_frames_go_to_the_gpu_as_stored_and_are_resized_there():
    """On (fake) CUDA, `segment` moves a uint8 frame as it is stored (RGB, a quarter of float's
    bytes) and converts and resizes it on the GPU, both ways: a CPU core would otherwise spend
    longer on a 1080p frame (about 60 ms) than an H200 on the forward. The mask comes back to the CPU."""
    import numpy as np
    from torch._subclasses.fake_tensor import FakeTensorMode

    from birefnet.model import build_model
    from birefnet.peak_memory import _fake_state

    model = build_model("pvt_v2_b0").eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.load_state_dict(_fake_state(model, mode, torch.device("cuda"), torch.float16), assign=True)
    cuda_graphs.enable(model, False)  # a capture needs a real GPU
    frame = np.random.default_rng(0).integers(0, 256, (90, 120, 4), np.uint8)  # RGBA: the alpha stays behind
    placement = _Placement()
    with mode, placement:
        mask = segment(model, frame, resolution=64)
    pictures = [copy for copy in placement.copies if copy[1][-2:] in ((90, 120), (64, 64))]
    assert pictures == [(torch.uint8, (3, 90, 120))]
    assert placement.resizes == {"cuda"}
    assert mask.device.type == "cpu" and mask.shape == (90, 120)


@needs_cuda
def test_a_picture_too_large_for_the_gpu_is_converted_on_the_cpu(cuda_fp16_model):
    """A picture whose float copy does not fit beside the model (the memory capped here for the
    test) is converted and resized on the CPU instead, with the same mask; the cap then goes."""
    import numpy as np

    model = cuda_fp16_model
    cuda_graphs.enable(model, False)
    picture = np.random.default_rng(0).integers(0, 256, (6000, 6000, 3), np.uint8)  # 108 MB; 432 MB as float
    expected = segment(model, picture, resolution=64)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = (torch.cuda.memory_allocated() + 250e6) / total  # the uint8 copy fits, its float copy does not
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        mask = segment(model, picture, resolution=64)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        cuda_graphs.enable(model, None)
    assert mask.shape == (6000, 6000) and relative_error(mask, expected) < 1e-3


def test_pictures_of_types_not_every_gpu_holds_cross_as_float32():
    """uint8, bool, float16/32 cross as stored; float64 and uint16 (which Apple's MPS cannot hold)
    become float32 on the CPU first, with the same values."""
    import numpy as np
    from torch._subclasses.fake_tensor import FakeTensorMode

    from birefnet.inference import to_rgb_tensor

    grey = np.random.default_rng(1).integers(0, 256, (20, 30), np.uint8)
    for picture, crossing in (
        (grey, torch.uint8),
        (grey > 127, torch.bool),
        (grey.astype(np.float16) / 255, torch.float16),
        (grey.astype(np.float64) / 255, torch.float32),
        (grey.astype(np.uint16) * 257, torch.float32),
    ):
        placement = _Placement()
        with FakeTensorMode(allow_non_fake_inputs=True), placement:
            rgb = to_rgb_tensor(picture, "cuda")
        assert placement.copies == [(crossing, (1, 20, 30))], picture.dtype
        assert rgb.shape == (3, 20, 30) and rgb.dtype == torch.float32 and rgb.is_cuda


def test_temporal_stability_compares_frames_on_the_gpu():
    """On (fake) CUDA with temporal stability, frames cross as uint8 only, every resize (the
    smoother's too) runs on the GPU, and the masks come back to the CPU."""
    import numpy as np
    from torch._subclasses.fake_tensor import FakeTensorMode

    from birefnet.model import build_model
    from birefnet.peak_memory import _fake_state

    model = build_model("pvt_v2_b0").eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.load_state_dict(_fake_state(model, mode, torch.device("cuda"), torch.float16), assign=True)
    cuda_graphs.enable(model, False)  # a capture needs a real GPU
    frames = [np.random.default_rng(i).integers(0, 256, (90, 120, 3), np.uint8) for i in range(3)]
    placement = _Placement()
    with mode, placement:
        masks = list(segment_frames(model, frames, temporal=0.5, resolution=64, batch_size=2))
    pictures = {copy for copy in placement.copies if copy[1][-2:] in ((90, 120), (64, 64))}
    assert pictures == {(torch.uint8, (3, 90, 120))} and placement.resizes == {"cuda"}
    assert all(mask.device.type == "cpu" and mask.shape == (90, 120) for mask in masks)
