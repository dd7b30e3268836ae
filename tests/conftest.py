"""Shared fixtures: the parity material in tests/fixtures/parity and small generated checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import random_weights
import torch

ROOT = Path(__file__).resolve().parents[1]
PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"

# Two threads per test process; with pytest-xdist the cores are shared out among the workers instead
# (two workers on two cores each running two threads would only take turns).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(THREADS)
# Servers, Krita and CLI runs started by the tests use the same count: some reductions (foreground
# colours) round differently with another thread split, and tests compare their pixels with this process's.
os.environ["OMP_NUM_THREADS"] = str(THREADS)

# BIREFNET_DEVICE=cuda runs the model tests on a GPU (default: the CPU). fp32 there means real fp32:
# TF32 convolutions and matrix products would be ~1e-3 off the official outputs.
DEVICE = torch.device(os.environ.get("BIREFNET_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
cpu_only = pytest.mark.skipif(DEVICE.type != "cpu", reason="checks CPU-only behaviour (BIREFNET_DEVICE is set)")

# At its peak a run holds about 4 GB of weights and exports in pytest's temporary folders: a short disk is
# said once at the start, not as dozens of "No space left on device" errors halfway through.
TMP_BYTES_NEEDED = 5 * 2**30


def disk_space_problem(folder: Path, needed: int = TMP_BYTES_NEEDED) -> str | None:
    """One line naming the shortage and the way out, or None when `folder`'s disk has `needed` bytes free."""
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return (
        f"the tests need about {needed / 2**30:.0f} GB free for their temporary files in {folder}, "
        f"{free / 2**30:.1f} GB free: free some space, or pass --basetemp DIR on a larger disk"
    )


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):
        return  # pytest-xdist's workers: the controller has checked
    problem = disk_space_problem(Path(session.config.option.basetemp or tempfile.gettempdir()))
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist says only "node down: Not properly terminated" of a worker that died: say how (the signal
    that killed it, or its exit status) and the memory then available, so that a worker killed by the
    system (out of memory) or by a signal can be told apart from one that crashed (which prints a traceback)."""
    popen = getattr(getattr(node.gateway, "_io", None), "popen", None)
    if error is None or popen is None:
        return
    try:
        status = popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        status = None
    how = f"killed by {signal.Signals(-status).name}" if status is not None and status < 0 else f"exit status {status}"
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = meminfo.get("MemAvailable", "?").strip()
    sys.stderr.write(f"\n[{node.gateway.id}] worker process {popen.pid}: {how}; memory available now: {available}\n")


# Swin and PVT (the released checkpoints' backbones) in parity/, the other official backbones
# (VGG, ResNet, DINOv3) in parity/other_backbones/: same layout.
PARITY_FOLDERS = (PARITY, PARITY / "other_backbones")
MANIFESTS = {p.stem: p for folder in PARITY_FOLDERS for p in sorted((folder / "manifests").glob("*.json"))}
REFERENCES = {p.name: p for folder in PARITY_FOLDERS for p in sorted((folder / "reference").glob("*.safetensors"))}


@lru_cache(maxsize=None)
def manifest(variant: str) -> dict:
    with open(MANIFESTS[variant]) as f:
        return json.load(f)


def random_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout random weights (fresh dict: callers may modify it)."""
    return random_weights.random_state_dict(manifest(variant), seed)


def meta_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """Shapes only: enough for detection tests, free to build."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.empty(s, dtype=dtypes[d], device="meta") for k, s, d in manifest(variant)["entries"]}


def torchrun(module: str, *args: str, scratch: Path) -> subprocess.CompletedProcess:
    """`python -m module args` in two CPU processes under torchrun.

    `--standalone` lets the rendezvous pick a free port (fixed ports collide with another suite running on
    the same machine), and torch's elastic agent writes its folders under `scratch` instead of /tmp, where
    it leaves them behind."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "BIREFNET_WEIGHTS"}
    env.update(
        OMP_NUM_THREADS="1",
        TMPDIR=str(scratch),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(  # its own session, no stdin: an xdist worker's stdin is its channel to pytest
        [*command, "-m", module, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def random_input(seed: int, height: int, width: int) -> torch.Tensor:
    return random_weights.random_input(seed, height, width)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def b0_weights(tmp_path_factory) -> Path:
    """A pvt_v2_b0 checkpoint (the smallest variant) saved as a user's .safetensors would be."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "pvt_b0_random.safetensors"
    save_file(random_state_dict("pvt_v2_b0", 0), str(path))
    return path


@pytest.fixture(scope="session")
def b0_model(b0_weights):
    from birefnet import load_model

    return load_model(b0_weights, tile_layout="current", device=DEVICE)


@pytest.fixture(scope="session")
def lite_weights(tmp_path_factory) -> Path:
    """A swin_v1_t checkpoint stored in fp16 like the released files: stands in for BiRefNet_lite."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "swin_t_random.safetensors"
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in random_state_dict("swin_v1_t", 0).items()}, str(path)
    )
    return path
