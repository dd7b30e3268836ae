"""The package as a user installs it: the wheel built from this tree, installed into a fresh virtual
environment, run from a folder outside the clone. Its dependencies come from the test environment's
site-packages (added as a plain path, so that environment's editable install of this tree is not)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.wheel


def copy_of_tree(tmp_path_factory) -> Path:
    """The tree to build from, copied: an in-tree build would leave build/ and *.egg-info behind, whose
    stale modules a later build would ship."""
    source = tmp_path_factory.mktemp("source") / "tree"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out"
        ),
    )
    return source


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = copy_of_tree(tmp_path_factory)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("birefnet_toolkit-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv holding only the wheel; returns the environment to run its commands in."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    site = Path(
        subprocess.check_output(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path_factory.mktemp("elsewhere")
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(work),
        "PYTHONNOUSERSITE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "2",
    }
    return {"venv": venv, "site": site, "cwd": work, "env": env}


def run(installed, *command, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result


def test_wheel_holds_every_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(Path(n).parent) for n in names if n.endswith("/__init__.py")}
    assert {"birefnet", "birefnet/backbones", "birefnet_training"} <= packages
    assert "birefnet/weights/default.safetensors" in names
    assert not any(n.startswith(("training/", "tests/", "nodes/")) for n in names), "generic top-level names"
    assert not any("__pycache__" in n for n in names)


def test_library_imports_from_site_packages_with_every_backbone_family(installed):
    code = """
import json, birefnet, birefnet_training
from birefnet import backbones
families = {}
for name in ("swin_v1_t", "pvt_v2_b0", "vgg16", "resnet50", "dino_v3_s"):
    families[backbones.variant(name).family] = type(birefnet.build_model(name).bb).__name__
print(json.dumps({"library": birefnet.__file__, "training": birefnet_training.__file__, "families": families}))
"""
    found = json.loads(run(installed, "python", "-c", code).stdout)
    site = str(installed["site"])
    assert found["library"].startswith(site) and found["training"].startswith(site)
    assert len(found["families"]) == 4  # Swin, PVT v2, torchvision CNNs, DINOv3
    missing = subprocess.run(
        ["python", "-c", "import training"], cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True
    )
    assert missing.returncode != 0, "a generic top-level `training` module was installed"


def test_segment_command_with_the_embedded_model(installed):
    image = ROOT / "examples" / "images" / "synthetic_0.jpg"
    run(installed, "birefnet", "segment", str(image), "--out", "masks", "--cutout", "--quiet")
    out = installed["cwd"] / "masks"
    assert (out / "synthetic_0.png").is_file() and (out / "synthetic_0_cutout.png").is_file()


def test_training_command_help_and_one_step_fine_tune(installed):
    assert "train" in run(installed, "python", "-m", "birefnet_training", "--help").stdout
    assert "--init" in run(installed, "python", "-m", "birefnet_training", "train", "--help").stdout
    run(installed, "python", "-m", "birefnet_training", "synth", "--out", "data", "--count", "4")
    weights = installed["site"] / "birefnet" / "weights" / "default.safetensors"
    run(
        installed,
        "python",
        "-m",
        "birefnet_training",
        "train",
        "--data",
        "data",
        "--out",
        "run",
        "--init",
        str(weights),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--size",
        "64",
        "--max-steps-per-epoch",
        "1",
        "--finetune-last-epochs",
        "0",
        "--device",
        "cpu",
    )
    assert (installed["cwd"] / "run" / "final.safetensors").is_file()


def test_krita_plugin_zip_from_the_installed_package(installed):
    run(installed, "birefnet", "krita-plugin", "--out", "birefnet_krita.zip")
    names = zipfile.ZipFile(installed["cwd"] / "birefnet_krita.zip").namelist()
    assert "birefnet_krita.desktop" in names and "birefnet_krita/" in names
    assert "birefnet_krita/__init__.py" in names and not any("__pycache__" in n for n in names)


def test_serve_from_the_installed_package(installed):
    """`birefnet serve` starts, answers /health and serves its page (shipped as package data), stops on SIGTERM."""
    import signal
    import time
    import urllib.request

    log = installed["cwd"] / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            ["birefnet", "serve", "--port", "0"],
            cwd=installed["cwd"],
            env=installed["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline, url = time.time() + 180, None
        while url is None:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            found = [w for w in log.read_text().split() if w.startswith("http://127.0.0.1:")]
            url = found[0].rstrip("/") if found else None
            time.sleep(0.5)
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        with urllib.request.urlopen(f"{url}/", timeout=30) as response:
            assert b"<html" in response.read().lower()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


def collected_tests(tree: Path) -> subprocess.Popen:
    """pytest --collect-only in `tree`, started: every test module imported with its conftest and helpers."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n0", "-p", "no:cacheprovider"],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def tracked_files(tree: Path) -> set[str]:
    """The source an sdist must carry: the tracked files of a clone, or every file of an unpacked sdist's
    tree (its build metadata aside: a build writes it anew)."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
        return set(filter(None, listed.stdout.split("\0"))) - {".gitignore"}
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()} - {"PKG-INFO", "setup.cfg"}


def test_sdist_is_the_whole_source_and_its_tests_run_unpacked(tmp_path_factory):
    """setuptools alone ships tests/test*.py without conftest.py, the helpers, tests/fixtures and docs/:
    unpacked, such an sdist could not run a test. Built through setuptools' own PEP 517 hook (what
    `python -m build --sdist` calls), from a copy of the tree."""
    source = copy_of_tree(tmp_path_factory)
    out = tmp_path_factory.mktemp("sdist")
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=source, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(out / result.stdout.split()[-1]) as tar:
        tar.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    shipped = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {"tests/conftest.py", "tests/random_weights.py", "docs/training.md"} <= shipped
    assert any(name.startswith("tests/fixtures/parity/") for name in shipped)
    missing = sorted(tracked_files(source) - shipped)
    assert not missing, f"not in the sdist (add them to MANIFEST.in): {missing[:20]}"
    in_tree, in_sdist = collected_tests(source), collected_tests(root)
    tree_ids, sdist_ids = in_tree.communicate(timeout=600)[0], in_sdist.communicate(timeout=600)[0]
    assert in_sdist.returncode == 0, sdist_ids[-3000:]
    tests = lambda listing: sorted(line for line in listing.splitlines() if "::" in line)
    assert tests(sdist_ids) == tests(tree_ids) and len(tests(tree_ids)) > 100
