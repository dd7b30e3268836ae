"""Export and the OpenVINO backend: the exported files run in real onnxruntime / OpenVINO sessions
and reproduce the official reference outputs of the parity fixtures."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import REFERENCES, ROOT, random_input, random_state_dict, relative_error, torchrun
from safetensors.torch import load_file, save_file

from birefnet import load_model, segment
from birefnet.cli import main
from birefnet.extras import openvino_core

ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed", allow_module_level=True)
openvino_core()  # OpenVINO without its usage reports (each a process forked out of this worker); one Core
onnx = pytest.importorskip("onnx")


def official_logits(variant: str, height: int, width: int) -> torch.Tensor:
    """The official model's logits for seed-0 weights and `random_input(1, height, width)`."""
    return load_file(str(REFERENCES[f"{variant}_seed0_{height}x{width}.safetensors"]))["logits"]


def test_openvino_backend_converts_once_for_a_torchrun_job(b0_weights, tmp_path, monkeypatch):
    """Both processes start together and reach the same working size: one converts, the other waits for
    its file (each converting held gigabytes for the large backbones) and both segment with it."""
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path / "cache"))
    args = ["segment", ROOT / "examples" / "images", "--weights", b0_weights, "--resolution", "64"]
    args += ["--backend", "openvino", "--quiet", "--tile-layout", "current", "--out", tmp_path / "masks"]
    result = torchrun("birefnet", *args, scratch=tmp_path / "torchrun")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("birefnet: OpenVINO: converting pvt_v2_b0 for 64x64") == 1, result.stderr[-2000:]
    cache = tmp_path / "cache" / "openvino"
    (ir,) = cache.glob("*.xml")
    # The lock's file, which filelock leaves on purpose (removing it races), is out of the way in .locks/.
    assert sorted(p.name for p in cache.iterdir()) == [".locks", "compiled", ir.with_suffix(".bin").name, ir.name]
    assert [p.name for p in (cache / ".locks").iterdir()] == [ir.with_suffix(".lock").name]
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3


@pytest.fixture(scope="module")
def swin_t(tmp_path_factory):
    """A user's swin_v1_t weight file, the input and the official logits for it.

    Each exporter runs once per backbone family it needs to be shown on: conversions take most of
    this file's time (Swin: about a minute each on two cores); PVT uses the shared b0_weights."""
    folder = tmp_path_factory.mktemp("swin_v1_t")
    path = folder / "swin_v1_t.safetensors"
    save_file(random_state_dict("swin_v1_t", 0), str(path))
    return path, random_input(1, 320, 448), official_logits("swin_v1_t", 320, 448), folder


def test_onnx_export_matches_the_official_outputs(swin_t):  # PVT: the free-size CLI export below
    from birefnet.export import export

    weights, x, expected, folder = swin_t
    model = load_model(weights, tile_layout="current")
    path = export(model, folder / "model.onnx", "onnx", tuple(x.shape[-2:]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_outputs()[0].name == "logits"
    assert any(node.op_type == "DeformConv" for node in onnx.load(str(path)).graph.node)
    batch = torch.cat([x, random_input(7, *x.shape[-2:]), x])  # the batch size is free
    out = torch.from_numpy(session.run(None, {"image": batch.numpy()})[0])
    assert out.shape == (3, 1, *x.shape[-2:])
    assert relative_error(out[0:1], expected) < 1e-4 and relative_error(out[2:3], expected) < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["birefnet.backbone"] == model.config.backbone and meta["birefnet.tile_layout"] == "current"
    assert (meta["birefnet.height"], meta["birefnet.width"]) == tuple(map(str, x.shape[-2:]))
    assert meta["birefnet.mean"] == "0.485,0.456,0.406" and meta["birefnet.std"] == "0.229,0.224,0.225"
    with torch.inference_mode():
        assert relative_error(model(x), expected) < 1e-4  # tracing left the eager model intact


def test_openvino_export_matches_the_official_outputs(b0_weights, tmp_path):  # Swin: the backend test below
    from birefnet.export import export

    x, expected = random_input(1, 256, 256), official_logits("pvt_v2_b0", 256, 256)
    model = load_model(b0_weights, tile_layout="current")
    path = export(model, tmp_path / "model.xml", "openvino", (256, 256))
    core = openvino_core()
    read = core.read_model(str(path))
    assert read.get_rt_info(["birefnet", "backbone"]).astype(str) == model.config.backbone
    compiled = core.compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = torch.cat([x, x])
    out = torch.from_numpy(compiled(batch.numpy())[0])
    assert relative_error(out[1:], expected) < 1e-4
    # One size, batch free: a graph may hold constants of its size (an open shape ran DINOv3's former
    # graph at other sizes with masks 3% off), so the runtime refuses another size.
    assert str(read.inputs[0].get_partial_shape()) == "[?,3,256,256]"
    with pytest.raises(RuntimeError, match=r"model input \(shape=\[\?,3,256,256\]\) .* are incompatible"):
        compiled(random_input(1, 320, 256).numpy())


def test_openvino_backend_is_a_drop_in_model_with_a_disk_cache(swin_t, tmp_path, monkeypatch, caplog):
    weights, x, expected, _ = swin_t
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="birefnet"):
        model = load_model(weights, tile_layout="current", backend="openvino")
        with torch.inference_mode():
            assert relative_error(model(x), expected) < 1e-4
    assert "converting" in caplog.text
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="birefnet"):
        again = load_model(weights, tile_layout="current", backend="openvino")
        with torch.inference_mode():
            assert relative_error(again(x), expected) < 1e-4
    assert "converting" not in caplog.text  # the cached IR, not a new conversion
    # segment() takes it like the PyTorch model (here at the reference's working size).
    image = torch.rand(3, 150, 210, generator=torch.Generator().manual_seed(0))
    reference = load_model(weights, tile_layout="current")
    size = tuple(x.shape[-2:])
    assert (segment(again, image, resolution=size) - segment(reference, image, resolution=size)).abs().max() < 1e-4


def test_openvino_passes_stop_on_cancel_and_report_progress(b0_weights, tmp_path, monkeypatch):
    """A pass on OpenVINO is one operation of seconds to minutes: it is watched while it runs, so Cancel
    (`checks_inside`) stops it at the next look, and progress (`pass_shares`) moves by the time of the last pass
    of its shape; the model goes on giving the same masks (the cancelled request is free again). A size run in
    PyTorch instead (a server's model converts no new sizes) is checked as a PyTorch pass is."""
    from birefnet import openvino_backend
    from birefnet.pass_clock import pass_shares
    from birefnet.stopping import checks_inside

    class Stop(Exception):
        pass

    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    monkeypatch.setattr(openvino_backend, "WATCH_SECONDS", 0.005)
    model = load_model(b0_weights, backend="openvino")
    image = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))
    before = segment(model, image, resolution=512)  # converts, compiles and times a pass
    reports = []
    with pass_shares(model, reports.append):
        assert torch.equal(segment(model, image, resolution=512), before)
    assert reports[0] == 0 and reports == sorted(reports) and any(0 < share < 1 for share in reports), reports

    checks = []

    def third_stops():
        checks.append(True)
        if len(checks) == 3:  # the first is before the pass, the next two while OpenVINO runs it
            raise Stop

    with pytest.raises(Stop), checks_inside(model, third_stops):
        segment(model, image, resolution=512)
    assert len(checks) == 3
    assert torch.equal(segment(model, image, resolution=512), before)

    model.converts_new_sizes = False  # a server's: a size with no converted graph runs in the kept PyTorch model
    checks.clear()
    with checks_inside(model, lambda: checks.append(True)):
        in_pytorch = segment(model, image, resolution=256)
    assert len(checks) > 100  # checked before each of the PyTorch model's submodules too
    assert (in_pytorch - segment(load_model(b0_weights), image, resolution=256)).abs().max() < 1e-6
    assert not list((tmp_path / "openvino").glob("*256x256.xml"))


def test_export_cli_refuses_to_overwrite_and_names_bad_targets(tmp_path, b0_weights, capsys):
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"earlier work")
    assert main(["export", str(b0_weights), "--out", str(existing), "--size", "64"]) == 2
    assert "exists; choose another --out" in capsys.readouterr().err
    assert existing.read_bytes() == b"earlier work"
    assert main(["export", str(b0_weights), "--out", str(tmp_path / "model.bin")]) == 2
    assert "name it .onnx or .xml" in capsys.readouterr().err
    # Settings that cannot export are said before the weights load (these do not exist).
    missing = str(tmp_path / "not_downloaded.safetensors")
    assert main(["export", missing, "--out", str(tmp_path / "m.onnx"), "--dtype", "bf16"]) == 2
    assert capsys.readouterr().err.startswith("birefnet: export dtype torch.bfloat16: use fp32 or fp16")
    assert main(["export", missing, "--out", str(tmp_path / "m.xml"), "--dynamic-size"]) == 2
    assert capsys.readouterr().err.startswith("birefnet: --dynamic-size is for ONNX")
    (tmp_path / "a_file").write_bytes(b"")
    assert main(["export", missing, "--out", str(tmp_path / "a_file" / "m.onnx")]) == 2
    assert "cannot write in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "model.onnx"]


def test_a_failed_export_leaves_no_folder_behind(tmp_path, b0_weights, capsys):
    """--out's folders are made before the weights load (an unwritable --out is said at once); when the
    weights then do not load they stayed behind, empty. A folder the user had stays, with its files."""
    from birefnet.export import export

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    for weights, out in (
        (tmp_path / "not_downloaded.safetensors", tmp_path / "new" / "deeper" / "model.onnx"),
        (damaged, mine / "new" / "model.xml"),
        (damaged, mine / "model.xml"),
    ):
        assert main(["export", str(weights), "--out", str(out)]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.safetensors", "mine"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # The library checks the size before it makes a folder.
    with pytest.raises(ValueError, match="multiples of 32"):
        export(load_model(b0_weights), tmp_path / "lib" / "model.onnx", "onnx", (100, 100))
    assert not (tmp_path / "lib").exists()


def test_openvino_ir_is_named_in_lower_case_before_any_work(tmp_path, b0_weights, capsys):
    """OpenVINO writes IR only as NAME.xml: model.XML was taken and failed after the whole conversion,
    with a traceback."""
    assert main(["export", str(b0_weights), "--out", str(tmp_path / "out" / "model.XML"), "--size", "64"]) == 2
    assert capsys.readouterr().err == (
        f"birefnet: {tmp_path / 'out' / 'model.XML'}: an openvino export is written as a .xml file; "
        f"choose --out {tmp_path / 'out' / 'model.xml'}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_compile_with_the_openvino_backend_is_refused_before_loading(tmp_path, capsys):
    """--compile is torch.compile; with --backend openvino it was silently ignored."""
    args = ["segment", ROOT / "examples" / "images", "--out", tmp_path / "masks", "--backend", "openvino"]
    args += ["--compile", "--weights", tmp_path / "not_downloaded.safetensors"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "birefnet: --compile is torch.compile, for the torch backend; OpenVINO compiles its own: drop --compile\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_fp16_onnx_export_runs_in_onnxruntime_and_leaves_the_model_alone(b0_weights, tmp_path):
    """fp16 is exported from a copy: the caller's fp32 model kept its weights (it was turned into fp16 in
    place, and a round trip back would lose bits). The file passes onnx's full check (what TensorRT's
    parser reads first) and says how to resize for a runtime without this library."""
    from birefnet.export import export

    model = load_model(b0_weights, tile_layout="current")
    x, expected = random_input(1, 256, 256), official_logits("pvt_v2_b0", 256, 256)
    path = export(model, tmp_path / "half.onnx", "onnx", (256, 256), dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float32
    with torch.inference_mode():
        assert relative_error(model(x), expected) < 1e-4
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": torch.cat([x, x]).half().numpy()})[0]
    assert out.dtype.name == "float16" and relative_error(torch.from_numpy(out[1:]).float(), expected) < 1e-2
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert meta["birefnet.dtype"] == "float16" and "antialiased when shrinking" in meta["birefnet.resize"]


def test_onnx_weights_past_2_gb_are_written_beside_the_file_under_its_name(b0_weights, tmp_path, monkeypatch):
    """Past protobuf's 2 GB (DINOv3-H+ in fp32) torch writes the weights to NAME.onnx.data; they were
    written under the temporary file's hidden name, which the moved .onnx then pointed to. Here torch's
    limit is lowered so that a small model takes the same path."""
    from torch.onnx._internal.exporter import _onnx_program

    from birefnet.export import export

    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 1_000_000)
    model = load_model(b0_weights, tile_layout="current")
    path = export(model, tmp_path / "big" / "model.onnx", "onnx", (64, 64))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    locations = {
        entry.value
        for tensor in onnx.load(str(path), load_external_data=False).graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"model.onnx.data"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = random_input(2, 64, 64)
    with torch.inference_mode():
        assert relative_error(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x)) < 1e-4
    path.unlink()  # its weights are still there: a new export must not overwrite them
    with pytest.raises(ValueError, match="model.onnx.data exists"):
        export(model, path, "onnx", (64, 64))


def test_export_cli_writes_a_free_size_onnx_with_the_official_outputs(tmp_path, b0_weights):
    out = tmp_path / "exports" / "dyn.onnx"  # a folder made for it (it failed after the whole export)
    args = [
        "export",
        str(b0_weights),
        "--out",
        str(out),
        "--size",
        "96x64",
        "--dynamic-size",
        "--tile-layout",
        "current",
    ]
    assert main(args) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["birefnet.free_size"] == "true" and meta["birefnet.backbone"] == "pvt_v2_b0"
    # At the reference's size (a batch of two), the official outputs; at other sizes, the eager model's.
    x, expected = random_input(1, 256, 256), official_logits("pvt_v2_b0", 256, 256)
    out_ref = torch.from_numpy(session.run(None, {"image": torch.cat([x, x]).numpy()})[0])
    assert relative_error(out_ref[:1], expected) < 1e-4 and relative_error(out_ref[1:], expected) < 1e-4
    model = load_model(b0_weights, tile_layout="current")
    for height, width in ((64, 96), (128, 64)):
        x = random_input(2, height, width)
        with torch.inference_mode():
            assert relative_error(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x)) < 1e-4


def test_openvino_backend_says_it_runs_on_the_cpu(b0_weights):
    with pytest.raises(ValueError, match="^the OpenVINO backend runs on the CPU"):
        load_model(b0_weights, backend="openvino", device="meta")
    with pytest.raises(ValueError, match="^unknown backend 'tensorrt'"):
        load_model(b0_weights, backend="tensorrt")


def test_openvino_backend_names_an_unwritable_cache(b0_weights, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_bytes(b"")
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path / "a_file"))
    model = load_model(b0_weights, backend="openvino")
    with pytest.raises(ValueError, match=r"^the OpenVINO cache .* cannot be written .*; set BIREFNET_CACHE"):
        model(random_input(1, 64, 64))


def test_openvino_backend_names_the_precisions_this_cpu_has(b0_weights):
    capabilities = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "FP16" in capabilities:
        pytest.skip("this CPU runs fp16 in OpenVINO")
    usable = "fp32 or bf16" if "BF16" in capabilities else "fp32"
    with pytest.raises(ValueError, match=f"^this CPU has no FP16 support in OpenVINO; use {usable}$"):
        load_model(b0_weights, backend="openvino", dtype="fp16")


def test_openvino_models_dropped_in_any_order_leave_ctrl_c_working(b0_weights, tmp_path):
    """Each OpenVINO Core gave the thread using it a signal stack of its own and freed it with the Core:
    two models dropped in the order they were made left the thread a freed signal stack, and the next
    signal Python handles there (Ctrl+C; SIGCHLD after a DataLoader) killed the process at once, SIGSEGV
    and no traceback (it took pytest workers waiting for a child process). One Core serves every model."""
    script = (
        "import gc, signal, sys\n"
        "from birefnet import load_model\n"
        "first, second = (load_model(sys.argv[1], backend='openvino').prepare((64, 64)) for _ in range(2))\n"
        "del first\n"
        "gc.collect()\n"
        "del second\n"
        "gc.collect()\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a test runner may ignore it)\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('Ctrl+C reached Python')\n"
    )
    env = dict(os.environ, BIREFNET_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script, str(b0_weights)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip() == "Ctrl+C reached Python"


# Other code imports OpenVINO, which reports the import from a thread; counting starts once that is done.
OTHER_CODE_IMPORTS_OPENVINO = """
import openvino
from openvino_telemetry import Telemetry
for _ in range(600):
    if not Telemetry().sender.queue_size:
        break
    time.sleep(0.1)
"""


@pytest.mark.parametrize("imported_before", [False, True], ids=["imported here", "imported before by other code"])
def test_openvino_sends_no_usage_reports(imported_before, b0_weights, tmp_path):
    """OpenVINO reports its import and each conversion to Google Analytics unless the user opted out, each
    from a process forked out of a worker thread (it made a client id in ~/intel and forked during every
    conversion, a test runner's worker included). A local tool sends nothing: no process forked while
    this toolkit imports OpenVINO and converts; imported here first, nothing written under HOME either."""
    script = (
        "import os, sys, time\n"
        f"{OTHER_CODE_IMPORTS_OPENVINO if imported_before else ''}\n"
        "forks = []\n"
        "os.register_at_fork(before=lambda: forks.append(1))\n"
        "from birefnet import load_model\n"
        "from birefnet.export import to_openvino\n"
        "to_openvino(load_model(sys.argv[1], tile_layout='current'), (64, 64))\n"
        "time.sleep(2)  # OpenVINO's sender runs in a thread of its own\n"
        "print('forks', len(forks))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # it is off in CI
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script, str(b0_weights)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["forks", "0"], result.stdout
    assert (tmp_path / "intel").exists() == imported_before


def test_openvino_backend_under_torchrun_takes_torchs_thread_count(b0_weights, tmp_path, monkeypatch):
    """Under torchrun each process gets its share of the cores as torch's threads (OMP_NUM_THREADS);
    OpenVINO ignores that variable, so without this every process ran on every core."""
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fewer than the cores OpenVINO would take
    try:
        model = load_model(b0_weights, backend="openvino").prepare((64, 64))
    finally:
        torch.set_num_threads(threads)
    assert int(model._compiled[(64, 64)].get_property("INFERENCE_NUM_THREADS")) == 1


@pytest.mark.parametrize("variant", ["vgg16", "dino_v3_s"])
def test_other_backbone_families_export_exactly(variant, tmp_path):
    """A CNN and a ViT backbone through both exporters reproduce the official outputs."""
    from birefnet.export import export

    weights = tmp_path / f"{variant}.safetensors"
    save_file(random_state_dict(variant, 0), str(weights))
    model = load_model(weights, tile_layout="current")
    x, expected = random_input(1, 256, 256), official_logits(variant, 256, 256)
    onnx_path = export(model, tmp_path / "model.onnx", "onnx", (256, 256))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert relative_error(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected) < 1e-4
    ir = export(model, tmp_path / "model.xml", "openvino", (256, 256))
    compiled = openvino_core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert relative_error(torch.from_numpy(compiled(x.numpy())[0]), expected) < 1e-4


def test_dinov3_free_size_onnx_follows_the_size(tmp_path):
    """timm's DINOv3 divides its rotary grid by float(size), which the exporter kept as the traced size's
    value: the free-size file ran at other sizes with masks 0.7 to 11% off (relative). The plain graph
    builds the grid from the input's shape, so the file is exact at sizes other than the traced one."""
    weights = tmp_path / "dino_v3_s.safetensors"
    save_file(random_state_dict("dino_v3_s", 0), str(weights))
    out = tmp_path / "free.onnx"
    args = ["export", str(weights), "--out", str(out), "--size", "256", "--dynamic-size", "--tile-layout", "current"]
    assert main(args) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, expected = random_input(1, 256, 256), official_logits("dino_v3_s", 256, 256)
    assert relative_error(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected) < 1e-4
    model = load_model(weights, tile_layout="current")
    for height, width in ((192, 320), (416, 256)):  # traced at 352x480: neither size's table is a constant
        x = random_input(2, height, width)
        with torch.inference_mode():
            assert relative_error(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x)) < 1e-4


def test_dinov3_plain_graph_rope_table_is_timms_bit_for_bit():
    """The table the exporters trace is built by tensor arithmetic; in eager mode it equals timm's."""
    from timm.layers import RotaryEmbeddingDinoV3

    from birefnet.backbones.dinov3 import DINOv3
    from birefnet.fastpath import plain_graph

    rope = DINOv3("dino_v3_s").model.rope.eval()
    for shape in ((16, 16), (20, 28), (7, 13)):
        with plain_graph():
            table = rope.get_embed(shape)
        assert torch.equal(table, RotaryEmbeddingDinoV3.get_embed(rope, shape))
