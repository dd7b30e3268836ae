"""The Krita plug-in: its zip against Krita's importer rules, and the plug-in itself in real Krita
(under Xvfb) against a live `birefnet serve`, with the document's pixels compared with the library's
output for the same pixels. One Krita session runs every scenario (tests/krita_scenarios.py)."""

from __future__ import annotations

import ast
import builtins
import configparser
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from birefnet.krita_plugin import PLUGIN_NAME, build_zip, plugin_dir, zip_bytes

ROOT = Path(__file__).resolve().parents[1]
ACTION_IDS = ("birefnet_remove_background", "birefnet_select_subject", "birefnet_cut_out")
BOX = (96, 56, 258, 250)  # a selection drawn around the test picture's object (106, 66, 238x230)
OFFSET, CANVAS = (260, 200), (700, 500)  # the moved layer runs past the canvas's right and bottom edges
KRITA_SECONDS = 1200  # the limit for all scenarios in one Krita: a scenario not reached by then fails alone
BIG = (6000, 4000)  # 24 megapixels: seconds of PNG encoding, which must not freeze Krita
# What the plug-in may import inside Krita: its own modules, Krita's, Qt's and the standard library.
ALLOWED_IMPORTS = {"krita", "pykrita", "PyQt5", "PyQt6", "json", "os"}


def server_accepts(name: str, value) -> bool:
    """Whether `birefnet serve` takes this one refinement field: its caps (MAX_RADIUS) and the library's
    checks (Refinement), the two checks a request's numbers pass, with every other field at its default."""
    from birefnet.refine import Refinement
    from birefnet.server.errors import RequestError
    from birefnet.server.uploads import check_numbers

    try:
        check_numbers({name: value})
        Refinement(**{name: value})
    except (RequestError, ValueError):
        return False
    return True


def archive() -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(zip_bytes()))


def test_zip_follows_the_importer_rules():
    """Krita's importer reads every .desktop (each needs X-KDE-Library and Name), finds the package by
    its directory entry holding __init__.py, and copies <name>.action to actions/."""
    names = archive().namelist()
    desktops = [n for n in names if n.endswith(".desktop")]
    assert desktops == [f"{PLUGIN_NAME}.desktop"]
    entry = configparser.ConfigParser()
    entry.read_string(archive().read(desktops[0]).decode("utf-8"))
    assert entry["Desktop Entry"]["X-KDE-Library"] == PLUGIN_NAME
    assert entry["Desktop Entry"]["ServiceTypes"] == "Krita/PythonPlugin"
    assert entry["Desktop Entry"]["Name"]
    assert f"{PLUGIN_NAME}/" in names and f"{PLUGIN_NAME}/__init__.py" in names
    assert f"{PLUGIN_NAME}/{PLUGIN_NAME}.action" in names
    manual = entry["Desktop Entry"]["X-Krita-Manual"]
    assert f"{PLUGIN_NAME}/{manual}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/." in n]
    actions = archive().read(f"{PLUGIN_NAME}/{PLUGIN_NAME}.action").decode()
    for action_id in ACTION_IDS:
        assert f'<Action name="{action_id}">' in actions


def test_plugin_imports_only_krita_qt_and_the_standard_library():
    """Inside Krita there is no torch, numpy or birefnet: every import must be Krita's, Qt's, the
    standard library's or the plug-in's own (relative)."""
    for path in sorted((plugin_dir() / PLUGIN_NAME).glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= ALLOWED_IMPORTS | set(sys.stdlib_module_names), f"{path.name}: imports {roots}"


def test_zip_is_written_once_and_never_overwritten(tmp_path):
    out = tmp_path / "plugin.zip"
    assert build_zip(out) == out
    first = out.read_bytes()
    assert zipfile.ZipFile(out).namelist() == archive().namelist()
    with pytest.raises(FileExistsError, match="already exists"):
        build_zip(out)
    assert out.read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p != out]  # no temporary file left behind


def test_cli_writes_the_zip(tmp_path):
    out = tmp_path / "birefnet_krita.zip"
    command = [sys.executable, "-m", "birefnet", "krita-plugin", "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert first.returncode == 0, first.stderr
    assert "Import Python Plugin from File" in first.stderr
    assert out.read_bytes() == zip_bytes()
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    folder = tmp_path / "plugins"  # named with a slash, or existing: the zip goes in it (was: a zip named plugins)
    assert build_zip(f"{folder}/") == folder / "birefnet_krita.zip"
    assert zipfile.is_zipfile(folder / "birefnet_krita.zip")
    with pytest.raises(FileExistsError, match="birefnet_krita.zip already exists"):
        build_zip(folder)


# ---------------------------------------------------------------------------------------------------
# Real Krita

KRITA = shutil.which("krita")
needs_krita = pytest.mark.skipif(
    KRITA is None or shutil.which("xvfb-run") is None,
    reason="no krita/xvfb-run on PATH (Debian: apt-get install krita xvfb; .ci/run does)",
)


def in_krita(*scenarios: str):
    """A test of what the named scenarios (tests/krita_scenarios.py) recorded in real Krita. The Krita
    session runs only the scenarios the selected tests name (`-k`), or every one when a selected test names
    none (it checks the whole session)."""

    def mark(test):
        test.krita_scenarios = scenarios
        return needs_krita(pytest.mark.krita(test))

    return mark


def wanted_scenarios(items) -> list | None:
    """The scenarios the selected Krita tests need, or None for all of them."""
    tests = [item.function for item in items if hasattr(getattr(item, "function", None), "krita_scenarios")]
    if any(not test.krita_scenarios for test in tests):
        return None
    return sorted({name for test in tests for name in test.krita_scenarios})


def krita_importer_dir() -> Path:
    """Krita's own plug-in importer (plain Python), shipped beside its other bundled plug-ins."""
    return Path(KRITA).resolve().parents[1] / "share" / "krita" / "pykrita" / "plugin_importer"


def import_with_krita(zip_path: Path, resources: Path) -> list[dict]:
    """Install the zip the way Tools > Scripts > Import Python Plugin from File does, with Krita's code."""
    sys.path.insert(0, str(krita_importer_dir()))
    had_i18n = hasattr(builtins, "i18n")
    builtins.i18n = lambda text: text  # Krita's translation builtin, used in its error messages
    try:
        from plugin_importer import PluginImporter

        return PluginImporter(str(zip_path), str(resources), lambda plugin: True).import_all()
    finally:
        sys.path.remove(str(krita_importer_dir()))
        sys.modules.pop("plugin_importer", None)
        if not had_i18n:
            del builtins.i18n


@needs_krita
@pytest.mark.krita
def test_krita_importer_accepts_the_zip(tmp_path):
    build_zip(tmp_path / "plugin.zip")
    (tmp_path / "resources").mkdir()
    imported = import_with_krita(tmp_path / "plugin.zip", tmp_path / "resources")
    assert [p["name"] for p in imported] == [PLUGIN_NAME]
    assert (tmp_path / "resources" / "pykrita" / f"{PLUGIN_NAME}.desktop").is_file()
    assert (tmp_path / "resources" / "pykrita" / PLUGIN_NAME / "__init__.py").is_file()
    assert (tmp_path / "resources" / "actions" / f"{PLUGIN_NAME}.action").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path, *flags: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("BIREFNET_WEIGHTS", "BIREFNET_SERVER_TOKEN")}
    server = subprocess.Popen(
        [sys.executable, "-m", "birefnet", "serve", "--port", str(port), "--device", "cpu", *flags],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"birefnet serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"birefnet serve did not answer within 180 s: {log.read_text()[-2000:]}")


def synthetic_picture() -> Image.Image:
    """512x384: a synthetic object the demo model segments well (its mask spans 0 to ~250) on a background."""
    from birefnet_training.synthetic import _foreground, _object_mask, background

    rng = np.random.default_rng([2, 9])
    alpha, colours = _object_mask(rng, 384, 512), _foreground(rng, 384, 512)
    frame = colours * alpha[..., None] + background(np.random.default_rng(5), 384, 512) * (1 - alpha[..., None])
    return Image.fromarray((frame * 255 + 0.5).astype(np.uint8))


def other_weights(path: Path) -> Path:
    """Weights the server may offer besides its own model: the demo's, halved (another mask)."""
    from safetensors.torch import load_file, save_file

    from birefnet.loading import EMBEDDED_WEIGHTS

    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in load_file(EMBEDDED_WEIGHTS).items()}, path)
    return path


def write_images(work: Path) -> dict:
    picture = synthetic_picture().convert("RGBA")
    alpha = np.full((picture.height, picture.width), 255, np.uint8)
    alpha[:, :40] = np.linspace(8, 255, 40, dtype=np.uint8)  # a soft, partly transparent left edge: RGBA
    picture.putalpha(Image.fromarray(alpha))
    images = {
        "rgba": picture,
        "grey": synthetic_picture().convert("L"),
        "large": synthetic_picture().resize((2048, 2048), Image.BICUBIC),
    }
    for name, image in images.items():
        image.save(work / f"{name}.png")
    return {name: str(work / f"{name}.png") for name in images}


@pytest.fixture(scope="module")
def krita_session(tmp_path_factory, request):
    """Krita (fresh profile, the plug-in imported from its zip by Krita's own importer, the scenario
    plug-in beside it) against a live `birefnet serve`; returns the results folder."""
    if KRITA is None or shutil.which("xvfb-run") is None:
        pytest.skip("no krita/xvfb-run on PATH (Debian: apt-get install krita xvfb; .ci/run does)")
    base = tmp_path_factory.mktemp("krita")
    work, data, config = base / "work", base / "data", base / "config"
    for folder in (work, data / "krita", config, base / "home", base / "cache", base / "runtime", base / "tmp"):
        folder.mkdir(parents=True)
    (base / "runtime").chmod(0o700)
    build_zip(base / "plugin.zip")
    import_with_krita(base / "plugin.zip", data / "krita")
    scenarios = data / "krita" / "pykrita" / "birefnet_krita_test"
    scenarios.mkdir()
    shutil.copyfile(Path(__file__).with_name("krita_scenarios.py"), scenarios / "__init__.py")
    (scenarios.parent / "birefnet_krita_test.desktop").write_text(
        "[Desktop Entry]\nType=Service\nServiceTypes=Krita/PythonPlugin\nX-KDE-Library=birefnet_krita_test\n"
        "X-Python-2-Compatible=false\nName=BiRefNet test scenarios\n"
    )
    port = free_port()
    # the server URL comes from the plug-in's setting here, and from BIREFNET_SERVER in the no-server scenario
    (config / "kritarc").write_text(
        # no autosave: on a busy machine the scenarios outlast its interval, and reopening a picture that has an
        # autosaved copy opens a modal "open the autosave instead?" dialog, where Krita then waits forever
        "AutoSaveInterval=0\n\n"
        "[python]\nenable_birefnet_krita=true\nenable_birefnet_krita_test=true\n\n"
        f"[birefnet_krita]\nserver=http://127.0.0.1:{port}\n"
    )
    (work / "plan.json").write_text(
        json.dumps(
            {
                "images": write_images(work),
                "dead_server": f"http://127.0.0.1:{free_port()}",
                "box": BOX,
                "offset": OFFSET,
                "canvas": CANVAS,
                "big": BIG,
                "only": wanted_scenarios(request.session.items),
            }
        )
    )
    # the server offers one file besides its own model (--allow-weights): the docker's weights list
    server = start_server(port, base / "server.log", "--allow-weights", str(other_weights(base / "other.safetensors")))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(base / "home"),
        "XDG_DATA_HOME": str(data),
        "XDG_CONFIG_HOME": str(config),
        "XDG_CACHE_HOME": str(base / "cache"),
        "XDG_RUNTIME_DIR": str(base / "runtime"),
        "TMPDIR": str(base / "tmp"),  # Krita's swap files and frame caches, Qt's locks, xvfb-run's auth
        "BIREFNET_KRITA_TEST": str(work),
    }
    log = base / "krita.log"
    try:
        for _ in range(2):
            run_krita(env, log, base / "xvfb.log")
            # xvfb-run -a picks the first display without a lock file; another suite's X server starting at
            # the same moment can take it, and Krita then finds no display: start it once more
            if (work / "done.json").is_file() or "could not connect to display" not in log.read_text():
                break
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    done, partial = work / "done.json", work / "report.json"  # the report so far, written after each scenario
    xvfb = (base / "xvfb.log").read_text()[-1000:] if (base / "xvfb.log").is_file() else ""
    assert partial.is_file(), f"Krita ended without running any scenario:\n{log.read_text()[-3000:]}\n{xvfb}"
    return work / "results", json.loads((done if done.is_file() else partial).read_text())


def run_krita(env: dict, log: Path, xvfb_log: Path) -> None:
    """Krita under its own X server until it leaves (the scenarios end it) or KRITA_SECONDS have passed (on
    a busy shared machine the scenarios take more than 10 minutes; alone, about 4)."""
    krita = subprocess.Popen(
        ["xvfb-run", "-a", "-e", str(xvfb_log), "-s", "-screen 0 1600x1000x24", KRITA, "--nosplash"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        krita.wait(timeout=KRITA_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if krita.poll() is None:
            os.killpg(krita.pid, signal.SIGKILL)
            krita.wait()


def scenario(session, name: str, part: str | None = None) -> dict:
    """What scenario `name` recorded (`part`: one of several records it made)."""
    results, report = session
    assert name in report, f"scenario {name} did not run: Krita was stopped at {KRITA_SECONDS} s (a busy machine?)"
    assert report[name] == "ok", f"scenario {name} broke inside Krita:\n{report[name]}"
    result = json.loads((results / f"{part or name}.json").read_text())
    result["dir"] = results
    return result


def raw(result: dict, key: str, channels: int) -> np.ndarray:
    data = np.frombuffer((result["dir"] / result[key]).read_bytes(), np.uint8)
    return (
        data.reshape(result["height"], result["width"], channels)
        if channels > 1
        else data.reshape(result["height"], result["width"])
    )


def layer_image(result: dict) -> Image.Image:
    """The layer's pixels as Krita holds them (B,G,R,A or grey,alpha bytes) as the PIL image they are."""
    if result["model"] == "GRAYA":
        return Image.fromarray(raw(result, "input", 2)[:, :, 0], "L")
    return Image.fromarray(raw(result, "input", 4)[:, :, [2, 1, 0, 3]].copy(), "RGBA")


@pytest.fixture(scope="module")
def model():
    import birefnet

    return birefnet.load_model(device="cpu")


def library_mask(model, image: Image.Image, box=None, highres: bool = False) -> np.ndarray:
    """What the plug-in should give: the whole image's mask (coarse to fine with `highres`), or the box's object."""
    from birefnet.inference import mask_to_image
    from birefnet.pipeline import segment_image

    mask = segment_image(model, image, boxes=[box] if box else (), highres=highres and not box)[0]
    return np.asarray(mask_to_image(mask))


def assert_same_mask(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1, f"{(difference > 1).sum()} pixels differ by up to {difference.max()}"
    assert int(expected.max()) - int(expected.min()) > 100  # an object and a background, not a blank mask


@in_krita("remove_background")
def test_remove_background_adds_the_librarys_mask_as_a_transparency_mask(krita_session, model):
    result = scenario(krita_session, "remove_background")
    assert result["ok"], result["message"]
    assert result["masks"] == ["Background removed (BiRefNet)"]
    assert_same_mask(raw(result, "mask", 1), library_mask(model, layer_image(result)))
    assert not result["selection_after"]  # the fallback's temporary selection is gone
    again = scenario(krita_session, "remove_background", "remove_background_again")  # with the first mask active
    assert not again["ok"] and again["masks"] == ["Background removed (BiRefNet)"]
    assert 'already has the mask "Background removed (BiRefNet)": delete it first' in again["message"]
    assert again["message_box"] == again["message"]
    locked = scenario(krita_session, "remove_background", "remove_background_locked")
    assert not locked["ok"] and locked["masks"] == []
    assert locked["message"].endswith("is locked: unlock it to remove its background.")
    assert locked["message_box"] == locked["message"]


@in_krita("remove_background")
def test_remove_background_is_one_undo_step(krita_session):
    """Krita's Undo after Remove Background removes the mask and leaves the selection as it was: none here (on
    Krita 5.1 the mask used to come from a temporary selection, which Undo brought back), and a rectangle in
    test_selection_is_the_guiding_box_and_stays. An active local selection mask on the layer (Krita 5.1's Add
    Transparency Mask copies the active selection) does not become the mask either."""
    undone = json.loads(
        (scenario(krita_session, "remove_background")["dir"] / "remove_background_undo.json").read_text()
    )
    assert undone["once"] == {"masks": 0, "selection": False}
    first = scenario(krita_session, "remove_background")
    local = scenario(krita_session, "remove_background", "remove_background_local")
    assert local["ok"], local["message"]
    assert local["masks"] == ["Background removed (BiRefNet)"]
    assert np.array_equal(raw(local, "mask", 1), raw(first, "mask", 1))  # the whole layer's object, not the rectangle
    assert undone["local"] == {"masks": 0, "selection": False, "children": ["selectionmask"]}


@in_krita("select_subject")
def test_select_subject_makes_the_mask_the_selection(krita_session, model):
    result = scenario(krita_session, "select_subject")
    assert result["ok"], result["message"]
    assert result["masks"] == []
    assert_same_mask(raw(result, "selection", 1), library_mask(model, layer_image(result)))


@in_krita()
def test_krita_logs_no_assertion_while_the_plugin_works(krita_session):
    """Krita's own consistency checks (SAFE ASSERT: an error dialog in debug builds) stay silent through
    every scenario (Cut Out's Document.setActiveNode on its new layer tripped one each time)."""
    results, _ = krita_session
    log = (results.parent.parent / "krita.log").read_text(errors="replace")
    assert "SAFE ASSERT" not in log, [line for line in log.splitlines() if "SAFE ASSERT" in line]


@in_krita("cut_out")
def test_cut_out_adds_a_new_layer_above(krita_session, model):
    result = scenario(krita_session, "cut_out")
    assert result["ok"], result["message"]
    assert result["layers"] == ["Background", "Background (cut out)"]  # bottom to top
    assert result["active"] == "Background"  # the layer worked on (Krita 5.1.5 cannot activate the new one)
    from birefnet.pipeline import cutout_image, finish, segment_image
    from birefnet.refine import Refinement

    image = layer_image(result)
    mask, colours = finish(image, segment_image(model, image)[0], Refinement(foreground=True))
    expected = np.asarray(cutout_image(image, mask, colours))  # alpha = mask x the layer's own alpha
    cut = raw(result, "cut_out", 4)[:, :, [2, 1, 0, 3]]
    kept = expected[:, :, 3] > 0  # (where alpha is 0 the colour is not kept)
    assert np.abs(cut[:, :, 3].astype(int) - expected[:, :, 3]).max() <= 1
    assert np.abs(cut.astype(int) - expected)[kept].max() <= 1
    assert (expected[:, :, 3] > 200).sum() > 10000  # an object, with its decontaminated edge colours


@in_krita("box")
def test_selection_is_the_guiding_box_and_stays(krita_session, model):
    result = scenario(krita_session, "box")
    assert result["ok"], result["message"]
    expected = library_mask(model, layer_image(result), box=BOX)
    mask = raw(result, "mask", 1)
    assert_same_mask(mask, expected)
    x, y, w, h = BOX
    outside = np.ones_like(mask, bool)
    outside[y : y + h, x : x + w] = False
    assert mask[outside].max() == 0
    assert result["selection_kept"]
    subject = scenario(krita_session, "box", "box_select")
    assert subject["undone"] == {"masks": 0, "selection_kept": True}  # Undo: the mask goes, the rectangle stays
    assert subject["ok"], subject["message"]
    assert_same_mask(raw(subject, "selection", 1), expected)


@in_krita("offset")
def test_moved_layer_partly_off_canvas(krita_session, model):
    result = scenario(krita_session, "offset")
    assert result["ok"], result["message"]
    assert result["position"] == list(OFFSET)
    assert (result["x"], result["y"]) == OFFSET
    assert (result["width"], result["height"]) == (CANVAS[0] - OFFSET[0], CANVAS[1] - OFFSET[1])
    assert result["canvas"] == list(CANVAS)
    visible = np.asarray(synthetic_picture().crop((0, 0, result["width"], result["height"])))
    pixels = layer_image(result)
    assert np.array_equal(np.asarray(pixels)[:, 40:, :3], visible[:, 40:])  # the layer's top-left part, opaque
    mask = raw(result, "mask", 1)
    assert_same_mask(mask, library_mask(model, pixels))
    _, _, bw, bh = result["layer_bounds"]  # the mask hides what lies beyond the canvas
    beyond = np.frombuffer((result["dir"] / result["mask_over_layer"]).read_bytes(), np.uint8).reshape(bh, bw)
    assert beyond[:, result["width"] :].max() == 0 and beyond[result["height"] :, :].max() == 0


@in_krita("large")
def test_image_far_larger_than_the_model_resolution(krita_session, model):
    result = scenario(krita_session, "large")
    assert result["ok"], result["message"]
    assert (result["width"], result["height"]) == (2048, 2048)
    plain = raw(result, "mask", 1)
    assert_same_mask(plain, library_mask(model, layer_image(result)))
    fine = scenario(krita_session, "large", "large_highres")  # the docker's "coarse to fine" switched on
    assert fine["ok"], fine["message"]
    mask = raw(fine, "mask", 1)
    assert_same_mask(mask, library_mask(model, layer_image(fine), highres=True))
    assert np.abs(mask.astype(int) - plain).max() > 16  # the second pass saw the object at full detail


@in_krita("progress")
def test_the_progress_window_fills_as_the_server_reports(krita_session):
    """The progress window's bar is busy until the server's first report, then fills with the share of the
    work done (both passes of coarse to fine, within them on a CPU), never back, and never full: a full bar
    would close the window before the result lands."""
    result = scenario(krita_session, "progress")
    assert result["ok"], result["message"]
    filling = [value for maximum, value in result["samples"] if maximum == 100]
    assert filling, f"the bar never filled: {result['samples'][:5]}"
    assert all(maximum in (0, 100) for maximum, _ in result["samples"])
    assert filling == sorted(filling) and 0 < max(filling) <= 95
    assert len(set(filling)) >= 2  # it moved while the server worked


@in_krita("layer_kinds")
@pytest.mark.parametrize(
    "kind",
    [
        ("group", "grouplayer"),
        ("file", "filelayer"),
        ("clone", "clonelayer"),
        ("vector", "vectorlayer"),
        ("fill", "filllayer"),
    ],
    ids=lambda kind: kind[0],
)
def test_layers_without_pixels_of_their_own_are_read_through_what_they_show(krita_session, model, kind):
    name, krita_type = kind
    result = scenario(krita_session, "layer_kinds", f"kind_{name}")
    assert result["ok"], result["message"]
    assert result["kind"] == krita_type and result["masks"] == ["Background removed (BiRefNet)"]
    shown = layer_image(result)
    assert np.asarray(shown)[..., 3].max() > 0  # it showed something
    expected = library_mask(model, shown)
    if name == "fill":  # its layer is its rectangle, one flat colour: no object to find, the model's mask still
        difference = np.abs(raw(result, "mask", 1).astype(int) - expected)
        assert difference.max() <= 1
    else:
        assert_same_mask(raw(result, "mask", 1), expected)


@in_krita("grey")
def test_grey_layer(krita_session, model):
    result = scenario(krita_session, "grey")
    assert result["ok"], result["message"]
    assert result["model"] == "GRAYA"
    assert_same_mask(raw(result, "mask", 1), library_mask(model, layer_image(result)))


@in_krita("grey")
def test_grey_layer_in_linear_light_is_sent_as_srgb(krita_session, model):
    """A grey layer in a grey profile other than sRGB's curve (16-bit linear light) reaches the model as Krita
    shows it in sRGB: the library's mask of those pixels, and the same as in the sRGB-curve grey image."""
    plain = scenario(krita_session, "grey")
    result = scenario(krita_session, "grey", "grey_linear")
    assert result["ok"], result["message"]
    assert (result["model"], result["depth"]) == ("GRAYA", "U16")
    assert result["profile"] == "Gray-D50-elle-V2-g10.icc" != plain["profile"]
    mask = raw(result, "mask", 1)
    assert_same_mask(mask, library_mask(model, srgb_image(result, "input_srgb")))
    assert np.abs(mask.astype(int) - raw(plain, "mask", 1)).max() <= 1


@in_krita("sixteen_bit")
def test_sixteen_bit_layer(krita_session, model):
    result = scenario(krita_session, "sixteen_bit")
    assert result["ok"], result["message"]
    assert result["depth"] == "U16"
    eight = raw(result, "eight_bit", 4)[:, :, [2, 1, 0, 3]].copy()
    assert_same_mask(raw(result, "mask", 1), library_mask(model, Image.fromarray(eight, "RGBA")))


# How far Cut Out's colours may lie from the sRGB image's: 8-bit pixels in another profile are rounded
# there (the test picture's round trip: up to 2 levels in ClayRGB, 6 in linear light, whose dark tones lie up
# to 13 sRGB levels apart), and the edge colour estimation carries that on; 16 bits keep every level.
CUT_OUT_ROUNDING = {"linear16": 1, "clay": 3, "linear8": 10}


def srgb_image(result: dict, key: str) -> Image.Image:
    return Image.fromarray(raw(result, key, 4)[:, :, [2, 1, 0, 3]].copy(), "RGBA")


@in_krita("profiles")
@pytest.mark.parametrize("name", ["linear16", "linear8", "clay"])
def test_layer_in_another_profile_is_sent_as_srgb(krita_session, model, name):
    """A layer in a linear-light or wide-gamut profile reaches the model in sRGB, as Krita converts it: its
    mask is the library's for those pixels, and the same picture's in an sRGB image (the plug-in used to send
    the raw bytes: in linear light 4609 of 196,608 pixels flipped at 0.5). Cut Out's new layer is in the
    image's colour space and shows what it shows in the sRGB image."""
    srgb = scenario(krita_session, "profiles", "profiles_srgb")
    result = scenario(krita_session, "profiles", f"profiles_{name}")
    assert srgb["ok"] and result["ok"], (srgb["message"], result["message"])
    assert result["profile"] != srgb["profile"] == "sRGB-elle-V2-srgbtrc.icc"
    mask, srgb_mask = raw(result, "mask", 1).astype(int), raw(srgb, "mask", 1).astype(int)
    assert_same_mask(mask, library_mask(model, srgb_image(result, "input_srgb")))
    assert np.abs(mask - srgb_mask).max() <= 1  # the same picture's mask as in the sRGB image
    assert result["cut_ok"] and srgb["cut_ok"], (result["cut_message"], srgb["cut_message"])
    assert result["cut_space"] == [result["model"], result["depth"], result["profile"]]
    cut, srgb_cut = raw(result, "cut_out_srgb", 4).astype(int), raw(srgb, "cut_out_srgb", 4).astype(int)
    assert np.abs(cut[:, :, 3] - srgb_cut[:, :, 3]).max() <= 1
    colours = np.abs(cut - srgb_cut)[srgb_cut[:, :, 3] > 0][:, :3]
    assert colours.max() <= CUT_OUT_ROUNDING[name], colours.max()
    assert (colours > 2).mean() < 0.02


@in_krita("float")
def test_float_image_gets_a_clear_message(krita_session):
    result = scenario(krita_session, "float")
    assert not result["ok"] and result["masks"] == []
    assert "F32" in result["message"] and "Convert Image Color Space" in result["message"]
    assert result["message_box"] == result["message"]


@in_krita("no_server")
def test_no_server_names_the_command_to_start_it(krita_session):
    result = scenario(krita_session, "no_server")
    assert not result["ok"] and result["masks"] == []
    assert "No BiRefNet server answers" in result["message"] and "birefnet serve" in result["message"]
    assert result["message_box"] == result["message"]


@in_krita("cancel")
def test_cancel_leaves_the_layer_alone(krita_session):
    result = scenario(krita_session, "cancel")
    assert (result["ok"], result["message"]) == (False, "cancelled")
    assert result["masks"] == [] and not result["busy_after"]


@in_krita("responsive")
def test_large_layer_keeps_krita_responsive(krita_session):
    """The slow, Krita-free steps (colour conversion, PNG encoding and decoding) run off the UI thread for
    every action on a 24-megapixel layer (the plug-in used to run them on it: a 2-second freeze). The UI
    thread's longest stall beside the encode time is in the result as a measurement (docs/krita.md), not
    asserted: on a loaded machine Krita's own work there (reading the layer, making the mask, selection or
    layer) varies as much."""
    result = scenario(krita_session, "responsive")
    assert (result["width"], result["height"]) == BIG
    for action_id, action in result["actions"].items():
        assert action["ok"], (action_id, action["message"])
        assert action["on_ui_thread"] == {"png": [False], "answer": [False]}, (action_id, action["on_ui_thread"])
    for action_id, action in result["linear16"].items():  # converted to sRGB (and back for Cut Out) by Krita
        assert action["ok"], (action_id, action["message"])


@in_krita("cancel_while_encoding")
def test_cancel_while_encoding_sends_nothing(krita_session):
    result = scenario(krita_session, "cancel_while_encoding")
    assert (result["ok"], result["message"]) == (False, "cancelled")
    assert result["requests"] == 0 and not result["busy_after"]
    assert not result["selection"] and result["message_box"] is None
    not_png = result["not_png"]  # a failure on the worker thread (decoding) is said, and frees the plug-in
    assert not_png["requests"] == 1 and not not_png["busy_after"]
    assert not not_png["ok"]
    assert not_png["message"] == not_png["message_box"] == "the server's answer is not a PNG image"


@in_krita("select_subject_undo")
def test_select_subject_is_one_undo_step_and_redo_selects_the_subject(krita_session):
    """Document.setSelection alone leaves no undo step in Krita 5.1.5: Krita's Undo must bring back the
    selection there was before Select Subject (none, a rectangle, everything) and Redo the subject (it used
    to run Krita's Deselect first, whose Redo left nothing selected), in one step named in the history."""
    result = scenario(krita_session, "select_subject_undo")
    for case in ("none", "rectangle", "all"):
        run = result[case]
        assert run["ok"], run["message"]
        assert run["had_before"] == (case != "none")
        assert run["changed"] and run["restored"] and run["redone"], (case, run)
        assert run["steps"] == ["Select Opaque"], (case, run["steps"])
        assert run["children"] == [] and run["active"] == "Background"  # the temporary mask is gone


@in_krita("select_subject_local_mask")
def test_select_subject_with_an_active_local_selection_mask(krita_session, model):
    """With an active local selection mask (the layer or the mask active), the subject replaces the local
    selection, as Krita's own selection commands do; the global selection guides and stays. Undo brings
    back the local selection, Redo the subject (Krita's Deselect used to deactivate the mask, and Undo left
    the subject as the global selection). A locked local selection mask is left alone, with a message."""
    names = json.loads(
        (scenario(krita_session, "select_subject_local_mask")["dir"] / "select_subject_local_mask.json").read_text()
    )
    locked = names.pop("locked")  # a locked local selection mask: one line saying so, nothing changed
    assert not locked["ok"] and locked["message"] == locked["message_box"]
    assert locked["message"] == (
        'Krita does not let the selection of "Background" change: unlock its local selection mask and try again.'
    )
    assert locked["kept"] and locked["steps"] == [] and locked["children_kept"]
    assert set(names) == {"layer", "local mask"}
    for active, name in names.items():
        run = scenario(krita_session, "select_subject_local_mask", name)
        assert run["ok"], run["message"]
        assert run["local_changed"] and run["global_kept"], active
        assert_same_mask(raw(run, "local", 1), library_mask(model, layer_image(run), box=BOX))
        assert run["undone"] == {"local": True, "global_kept": True}, active
        assert run["redone"] == {"local": True, "global_kept": True}, active
        assert run["steps"] == ["Select Opaque"], (active, run["steps"])
        assert run["children"] == run["children_before"]
        assert [kind for kind, _ in run["children"]] == ["transparencymask", "selectionmask"]
        assert run["active"] == ("Background" if active == "layer" else run["children"][1][1])


@in_krita("select_subject_nothing_found")
def test_select_subject_that_finds_nothing_keeps_the_selection(krita_session):
    result = scenario(krita_session, "select_subject_nothing_found")
    assert result["requests"] == 1 and not result["ok"]
    assert (
        result["message"]
        == 'BiRefNet found no subject on "Background" inside the selection: the selection is unchanged.'
    )
    assert result["message_box"] == result["message"]
    assert result["kept"] and result["steps"] == [] and result["children"] == []


@in_krita("docker_not_birefnet")
def test_docker_names_another_program_on_the_port(krita_session):
    """Check server against a program that answers 200 with a web page: one line naming the problem."""
    result = scenario(krita_session, "docker_not_birefnet")
    assert result["requests"] == 1
    assert result["state"].startswith(f"The program at {result['url']} is not a BiRefNet server")
    assert "\n" not in result["state"]


@in_krita("docker_weights")
def test_docker_lists_only_the_weights_the_server_accepts(krita_session):
    """The weights list is the server's own model ("") and what it offers, not every checkpoint it knows;
    a request with each entry is served (with those weights). A saved pick the server does not offer goes
    back to its model, with a line saying so."""
    result = scenario(krita_session, "docker_weights")
    models = result["models"]
    assert models["offered"] == ["other.safetensors"] and len(models["known"]) > 1
    assert result["listed"] == ["", *models["offered"]]
    for pick in result["picks"]:
        assert pick["ok"], pick["message"]
        assert pick["setting"] == pick["pick"]
    assert [pick["served"] for pick in result["picks"]] == ["demo", "other.safetensors"]
    stale = scenario(krita_session, "docker_weights", "docker_stale_weights")
    assert stale["before"] == "general" and stale["listed"] == ["", *models["offered"]]
    assert stale["after"] == stale["setting"] == ""
    assert "It does not offer the weights 'general'" in stale["state"]
    assert stale["ok"], stale["message"]


@in_krita("docker_numbers")
def test_docker_numbers_stop_where_the_server_does(krita_session):
    """Each refinement box reaches exactly as far as the server accepts (its MAX_RADIUS caps, the library's
    checks of levels and threshold): its ends are accepted, one step (its last decimal) beyond them is
    not, and a request with every box at its maximum, then at its minimum, is served."""
    result = scenario(krita_session, "docker_numbers")
    ranges = result["ranges"]
    assert set(ranges) == {"black_point", "white_point", "threshold", "grow", "guided_radius", "feather"}
    for name, (low, high, decimals) in ranges.items():
        step = 10**-decimals
        assert server_accepts(name, low) and server_accepts(name, high), (name, low, high)
        beyond = round(low - step, decimals), round(high + step, decimals)
        assert not server_accepts(name, beyond[0]) and not server_accepts(name, beyond[1]), (name, low, high)
    for end, index in (("maximum", 1), ("minimum", 0)):
        request = result["requests"][end]
        assert request["ok"], request["message"]
        assert request["values"] == {name: limits[index] for name, limits in ranges.items()}


@in_krita("shortcuts")
def test_shortcuts_from_the_action_file(krita_session):
    results, report = krita_session
    assert report.get("shortcuts") == "ok"
    assert json.loads((results / "shortcuts.json").read_text()) == {
        "birefnet_remove_background": "Ctrl+Alt+B",
        "birefnet_select_subject": "Ctrl+Alt+U",
        "birefnet_cut_out": "Ctrl+Alt+X",
    }


@in_krita("layer_deleted_meanwhile")
def test_layer_deleted_while_the_server_works(krita_session):
    """Deleting the layer while the server works on it: one line saying so, the document left alone (the
    answer was applied to the deleted layer: an AttributeError inside Krita's slot, a Python error dialog)."""
    result = scenario(krita_session, "layer_deleted_meanwhile")
    assert set(result) - {"dir"} == set(ACTION_IDS)
    for action_id in ACTION_IDS:
        run = result[action_id]
        assert run["ok"] is False, (action_id, run)
        assert run["message"] == run["message_box"] == 'The layer "Background" was deleted before the result came.'
        assert not run["busy_after"] and run["layers"] == [] and not run["selection"], (action_id, run)
        assert run["steps"] == ["Remove Layer"], (action_id, run["steps"])  # the user's deletion, nothing more


@in_krita("answer_broken_off")
def test_answer_broken_off_is_named(krita_session):
    """A server that stops while sending its answer (status 200, then the connection closes): one line
    saying so, not "BiRefNet server (200): HTTP 200"."""
    result = scenario(krita_session, "answer_broken_off")
    assert result["requests"] == 1 and result["ok"] is False and result["children"] == []
    assert result["message"] == result["message_box"]
    assert result["message"].startswith("The BiRefNet server at http://127.0.0.1:")
    assert "broke off its answer" in result["message"] and "\n" not in result["message"]


@in_krita("bad_server_url")
def test_malformed_server_url_is_named(krita_session):
    """A malformed server URL (port out of range, a space, no host, another scheme) is named, with where to
    set it, by the actions and by Check server; it used to read as "No BiRefNet server answers ... start it"
    ("http://" even became "http://http:")."""
    result = scenario(krita_session, "bad_server_url")
    reasons = {
        "env http://127.0.0.1:99999": "invalid port or port number out of range",
        "env http://127.0.0.1 7853": "invalid hostname (contains invalid characters)",
        "env 127.0.0.1:abc": "invalid port or port number out of range",
        "env http://": "it names no host",
        "env ftp://127.0.0.1:7853": "it must start with http:// or https://",
        "setting http://": "it names no host",
    }
    assert set(result) - {"dir"} == set(reasons)
    for case, reason in reasons.items():
        run = result[case]
        where, url = case.split(" ", 1)
        url = url if "://" in url else "http://" + url
        fix = "set BIREFNET_SERVER to" if where == "env" else "set it in the BiRefNet docker to"
        expected = (
            f'The BiRefNet server URL "{url}" is not valid ({reason}): {fix} an address such as http://127.0.0.1:7853.'
        )
        assert run["ok"] is False and run["masks"] == 0, (case, run)
        assert run["message"] == run["message_box"] == run["docker"] == expected, (case, run)


# ---------------------------------------------------------------------------------------------------
# Krita 6's Qt: the plug-in's Qt-only modules on PyQt6, outside Krita (tests/plugin_qt_scenarios.py)

needs_pyqt6 = pytest.mark.skipif(
    importlib.util.find_spec("PyQt6") is None, reason="no PyQt6 (pip install -e '.[test]' brings it)"
)


def bgra_bytes(image: Image.Image) -> bytes:
    """Krita's raw pixels of an 8-bit RGBA layer: B,G,R,A."""
    return np.asarray(image.convert("RGBA"))[:, :, [2, 1, 0, 3]].tobytes()


def sixteen_bit(data: bytes) -> bytes:
    """The same pixels in a 16-bit layer: each value v as v * 257, little-endian (what Krita hands out)."""
    return (np.frombuffer(data, np.uint8).astype("<u2") * 257).tobytes()


@pytest.fixture(scope="module")
def pyqt6_session(tmp_path_factory):
    """The scenarios in a fresh Python with PyQt6 (offscreen), against a live `birefnet serve`."""
    work = tmp_path_factory.mktemp("pyqt6")
    images = {name: Image.open(path) for name, path in write_images(work).items()}
    grey = np.asarray(images["grey"])
    grey_alpha = np.stack([grey, np.full_like(grey, 255)], axis=-1).tobytes()  # GRAYA: grey, alpha
    rgba8 = bgra_bytes(images["rgba"])
    layers = {
        "rgba8": ("RGBA", "U8", images["rgba"], rgba8),
        "rgba16": ("RGBA", "U16", images["rgba"], sixteen_bit(rgba8)),
        "grey16": ("GRAYA", "U16", images["grey"], sixteen_bit(grey_alpha)),
        "large": ("RGBA", "U8", images["large"], bgra_bytes(images["large"])),
    }
    plan = {"layers": {}, "cutout_layer": "rgba8", "large_layer": "large", "box": BOX}
    for name, (model, depth, image, data) in layers.items():
        (work / f"{name}.raw").write_bytes(data)
        size = dict(width=image.width, height=image.height)
        plan["layers"][name] = dict(file=f"{name}.raw", model=model, depth=depth, **size)
    port = free_port()
    plan["server"], plan["dead_server"] = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    (work / "plan.json").write_text(json.dumps(plan))
    server = start_server(port, work / "server.log")
    try:
        run = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("plugin_qt_scenarios.py")), str(plugin_dir()), str(work)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert (work / "done").is_file(), f"the PyQt6 scenarios broke:\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
    return work / "results", {name: layers[name][2] for name in layers}


def qt6_result(session, name: str) -> dict:
    return json.loads((session[0] / f"{name}.json").read_text())


@needs_pyqt6
def test_pyqt6_plugin_sends_layers_and_reads_back_the_librarys_masks(pyqt6_session, model):
    """On Krita 6's binding: 8- and 16-bit RGBA and 16-bit grey layers give the library's mask for their
    pixels, and a layer's bytes survive the plug-in's conversion both ways."""
    results, images = pyqt6_session
    binding = qt6_result(pyqt6_session, "binding")
    assert binding["qt_major"] == 6 and binding["network"].startswith("PyQt6") and binding["image"].startswith("PyQt6")
    assert qt6_result(pyqt6_session, "health")["ok"]
    for name in ("rgba8", "rgba16", "grey16"):
        result = qt6_result(pyqt6_session, name)
        assert result["ok"], result["message"]
        image = images[name]
        mask = np.frombuffer((results / f"{name}.mask").read_bytes(), np.uint8).reshape(image.height, image.width)
        assert_same_mask(mask, library_mask(model, image))
        assert (results / f"{name}.roundtrip").read_bytes() == (results.parent / f"{name}.raw").read_bytes()


@needs_pyqt6
def test_pyqt6_plugin_cut_out_with_a_box(pyqt6_session, model):
    from birefnet.pipeline import cutout_image, segment_image

    results, images = pyqt6_session
    assert qt6_result(pyqt6_session, "cutout")["ok"]
    image = images["rgba8"]
    expected = np.asarray(cutout_image(image, segment_image(model, image, boxes=[BOX])[0]))
    cut = np.frombuffer((results / "cutout.bgra").read_bytes(), np.uint8).reshape(image.height, image.width, 4)
    cut = cut[:, :, [2, 1, 0, 3]]
    assert np.abs(cut[:, :, 3].astype(int) - expected[:, :, 3]).max() <= 1
    kept = expected[:, :, 3] > 0
    assert np.abs(cut.astype(int) - expected)[kept].max() <= 1
    x, y, w, h = BOX
    outside = np.ones(kept.shape, bool)
    outside[y : y + h, x : x + w] = False
    assert cut[:, :, 3][outside].max() == 0 and (expected[:, :, 3] > 200).sum() > 5000


@needs_pyqt6
def test_pyqt6_plugin_failures_are_one_line_messages_and_cancel_is_silent(pyqt6_session):
    bad = qt6_result(pyqt6_session, "bad_field")
    assert not bad["ok"] and bad["message"].startswith("BiRefNet server (400): ") and "treshold" in bad["message"]
    dead = qt6_result(pyqt6_session, "dead_server")
    assert not dead["ok"] and dead["message"].startswith("No BiRefNet server answers at http://127.0.0.1:")
    assert "birefnet serve" in dead["message"]
    cancelled = qt6_result(pyqt6_session, "cancelled")
    assert cancelled["emitted"] == []  # neither succeeded nor failed within 2 s of the cancel
    assert qt6_result(pyqt6_session, "not_png")["message"] == "the server's answer is not a PNG image"


@needs_pyqt6
def test_pyqt6_plugin_encodes_and_decodes_off_the_ui_thread(pyqt6_session):
    """The plug-in's worker runner on Krita 6's binding: the work runs on another thread and gives the
    same PNG; its result, or its error, comes back on the UI thread."""
    result = qt6_result(pyqt6_session, "background")
    assert result["same_png"] and result["threads"] == [True, True, True]
    assert result["error"] == "the server's answer is not a PNG image"
