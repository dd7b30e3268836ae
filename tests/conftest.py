"""Shared fixtures: the parity material in ../shared and small generated checkpoints."""
from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIREFNET_SHARED", ROOT.parent / "shared"))
PARITY = SHARED / "parity"

torch.set_num_threads(min(2, torch.get_num_threads()))


def _parity_module():
    script = PARITY / "random_checkpoint.py"
    if not script.is_file():
        raise RuntimeError(f"parity material not found at {PARITY}; set BIREFNET_SHARED to the shared/ folder")
    spec = importlib.util.spec_from_file_location("random_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


random_checkpoint = _parity_module()


@lru_cache(maxsize=None)
def manifest(variant: str) -> dict:
    with open(PARITY / "manifests" / f"{variant}.json") as f:
        return json.load(f)


def random_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official-layout random weights (fresh dict: callers may modify it)."""
    return random_checkpoint.random_state_dict(manifest(variant), seed)


def meta_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """Shapes only: enough for detection tests, free to build."""
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.empty(s, dtype=dtypes[d], device="meta") for k, s, d in manifest(variant)["entries"]}


def random_input(seed: int, height: int, width: int) -> torch.Tensor:
    return random_checkpoint.random_input(seed, height, width)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


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

    return load_model(b0_weights, tile_layout="current")
