"""torch.compile for inference: the compiler's caches go to the user cache folder, so later runs reuse them."""

from __future__ import annotations

import pytest
import torch

from birefnet.compiled import compile_model


def test_compiled_model_equals_eager_and_leaves_its_kernels_in_the_birefnet_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1)).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        eager = model(x)
        compiled = compile_model(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    cached = [p for p in (tmp_path / "inductor").rglob("*") if p.is_file()]
    assert cached, "Inductor wrote nothing under $BIREFNET_CACHE/inductor"


def test_a_chosen_inductor_folder_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_model(torch.nn.Identity())  # compiling is lazy: nothing runs yet
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_unknown_mode_is_one_line():
    with pytest.raises(ValueError, match="compile mode 'fastest': use default, reduce-overhead, max-autotune"):
        compile_model(torch.nn.Identity(), "fastest")
