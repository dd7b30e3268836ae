"""Exactness against the official BiRefNet: every manifest/reference in tests/fixtures/parity.

Weights are generated in the official layout and saved the way users' files come
(.safetensors without prefix, .pth with `module._orig_mod.` prefixes, an fp16 copy),
then loaded through `birefnet.load_model` exactly as a user's download would be.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache

import pytest
import random_weights
import torch
from conftest import (
    DEVICE,
    MANIFESTS,
    PARITY,
    manifest,
    random_input,
    random_state_dict,
    relative_error,
)
from conftest import (
    REFERENCES as REFERENCE_FILES,
)
from safetensors.torch import load_file, save_file

from birefnet import load_model

REFERENCES = sorted(REFERENCE_FILES)
VARIANTS = sorted(MANIFESTS)
TOO_LARGE_TO_RUN = {"dino_v3_h_plus", "dino_v3_7b"}  # manifests only: their weights do not fit a test machine


def _parse(name: str):
    variant, seed, height, width = re.fullmatch(r"(.+)_seed(\d+)_(\d+)x(\d+)\.safetensors", name).groups()
    return variant, int(seed), int(height), int(width)


def test_every_variant_has_a_reference():
    assert {_parse(name)[0] for name in REFERENCES} == set(VARIANTS) - TOO_LARGE_TO_RUN
    assert len(VARIANTS) == 17  # 4 Swin, 4 PVT v2, VGG16, VGG16-BN, ResNet-50, 6 DINOv3


def test_generator_sanity_numbers():
    """The README's checksums: a changed generator would make every parity test meaningless."""
    sd = random_state_dict("swin_v1_t", 0)
    assert len(sd) == 586
    total = sum(v.double().sum().item() for v in sd.values() if v.is_floating_point())
    assert total == pytest.approx(34084.5214, abs=1e-3)
    assert random_input(1, 256, 256).double().sum().item() == pytest.approx(44325.9941, abs=1e-3)


CHECKSUMS = json.loads((PARITY / "checksums.json").read_text())


@pytest.mark.parametrize("variant", sorted(CHECKSUMS))
def test_generator_is_bit_identical(variant):
    """Every tensor, byte for byte, equals the one the official references were computed from."""
    state_dict = random_weights.random_state_dict(manifest(variant), 0)
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == CHECKSUMS[variant]


@lru_cache(maxsize=1)
def _files(variant: str, seed: int, folder: str):
    """Write the three user-style files once per variant (up to 1.3 GB each for dino_v3_l), after
    removing the previous variant's: kept, all variants' files would take 25 GB of disk."""
    from pathlib import Path

    folder = Path(folder)
    for old in folder.iterdir():
        old.unlink()
    sd = random_state_dict(variant, seed)
    fp32 = folder / f"{variant}_seed{seed}.safetensors"
    save_file(sd, str(fp32))
    pth = folder / f"{variant}_seed{seed}.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, pth)
    fp16 = folder / f"{variant}_seed{seed}_fp16.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(fp16))
    del sd
    return fp32, pth, fp16


@pytest.fixture(scope="module")
def weight_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("parity"))


@pytest.mark.parametrize("reference", REFERENCES)
def test_parity(reference, weight_dir):
    variant, seed, height, width = _parse(reference)
    expected = load_file(str(REFERENCE_FILES[reference]))["logits"]
    x = random_input(seed + 1, height, width).to(DEVICE)
    fp32, pth, fp16 = _files(variant, seed, weight_dir)

    errors = {}
    for label, path in (("safetensors", fp32), ("pth", pth)):
        model = load_model(path, tile_layout="current", device=DEVICE)
        assert model.config.backbone == variant
        with torch.inference_mode():
            errors[label] = relative_error(model(x), expected)
        del model
    # An fp16 file alone selects the current layout (2025 releases are published in fp16).
    model = load_model(fp16, device=DEVICE)
    assert model.config.tile_layout == "current"
    with torch.inference_mode():
        errors["fp16"] = relative_error(model(x), expected)
    print(f"{reference}: {errors}")
    assert errors["safetensors"] < 1e-4
    assert errors["pth"] < 1e-4
    assert errors["fp16"] < 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_official_manifest(variant):
    """Export gives exactly the official keys and shapes (what other loaders read)."""
    from birefnet import build_model, model_to_official_keys

    with torch.device("meta"):
        model = build_model(variant)
    exported = model_to_official_keys(model.state_dict(), variant)
    official = {k: tuple(s) for k, s, _ in manifest(variant)["entries"]}
    assert {k: tuple(v.shape) for k, v in exported.items()} == official
    if variant.startswith("swin"):  # our own Swin keeps even the official key order
        assert list(exported) == [k for k, _, _ in manifest(variant)["entries"]]
