"""Training package: data folders, losses, a real short run, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DEVICE, ROOT, cpu_only, manifest, torchrun
from PIL import Image
from safetensors import safe_open

import birefnet
from birefnet.files import current_umask
from birefnet_training.config import TrainConfig
from birefnet_training.data import DatasetError, find_pairs
from birefnet_training.losses import birefnet_loss, loss_weights, ssim_loss
from birefnet_training.synthetic import make_sample, write_dataset
from birefnet_training.trainer import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "syn", 8, seed=0, size=(80, 72))


def tiny_config(data, out, **overrides) -> TrainConfig:
    base = dict(
        data=[str(data)],
        out=str(out),
        init="scratch",
        backbone="pvt_v2_b0",
        epochs=2,
        batch_size=2,
        size=(64, 64),
        lr=1e-3,
        finetune_last_epochs=-1,
        max_steps_per_epoch=2,
        seed=3,
        device=str(DEVICE),
    )
    return TrainConfig(**{**base, **overrides})


def test_synthetic_samples_are_reproducible_and_have_soft_detail():
    import numpy as np

    image, mask = make_sample(5, 11)
    again_image, again_mask = make_sample(5, 11)
    assert image.tobytes() == again_image.tobytes() and mask.tobytes() == again_mask.tobytes()
    levels = [len(np.unique(np.asarray(make_sample(5, i)[1]))) for i in range(12)]
    assert all(n >= 3 for n in levels)  # background, object and antialiased edges in every sample
    assert max(levels) > 100  # some samples have matting-like soft edges


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = birefnet.build_model("pvt_v2_b0").train()
    images = torch.randn(2, 3, 64, 64)
    masks = (images.mean(1, keepdim=True) > 0).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weights = loss_weights("general", 1, 100)
    losses = []
    for _ in range(6):
        result = birefnet_loss(model(images), images, masks, weights)
        optimizer.zero_grad()
        result.total.backward()
        optimizer.step()
        losses.append(result.total.item())
    assert set(result.terms) == {"bce", "iou", "ssim", "mae", "gradient"}
    assert losses[-1] < 0.98 * losses[0] and losses[-1] == min(losses), losses


def test_loss_weight_schedule_compounds_like_the_official_code():
    assert loss_weights("general", 8, 10, -2) == {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0}
    assert loss_weights("general", 9, 10, -2) == pytest.approx({"bce": 0.0, "iou": 0.25, "ssim": 10.0, "mae": 90.0})
    assert loss_weights("general", 10, 10, -2) == pytest.approx({"bce": 0.0, "iou": 0.125, "ssim": 10.0, "mae": 81.0})
    assert loss_weights("matting", 150, 150)["ssim"] == pytest.approx(10 * 0.9**10)
    assert loss_weights("DIS", 1, 500)["mae"] == 0.0
    # A run shorter than the phase: the official loop multiplies once per epoch it runs (epoch k: k times).
    assert loss_weights("general", 1, 5) == pytest.approx({"bce": 0.0, "iou": 0.25, "ssim": 10.0, "mae": 90.0})
    assert loss_weights("general", 5, 5) == pytest.approx(
        {"bce": 0.0, "iou": 0.5 * 0.5**5, "ssim": 10.0, "mae": 100 * 0.9**5}
    )
    with pytest.raises(ValueError, match="unknown task"):
        loss_weights("segmentation", 1, 10)


def test_ssim_loss_is_zero_for_equal_maps_and_uses_zero_padding():
    x = torch.rand(2, 1, 32, 32)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    ones = torch.ones(1, 1, 32, 32)
    # with zero padding a constant map is not "structurally" constant at the border
    assert ssim_loss(ones, ones * 0.5).item() > 0


def test_short_run_writes_loadable_official_checkpoints(dataset, tmp_path):
    final = train(tiny_config(dataset, tmp_path / "run", val=[str(dataset)]))
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and "val_Sm" in log[-1] and "val_MAE" in log[-1]
    with safe_open(str(final), framework="pt") as f:
        assert set(f.keys()) == {k for k, _, _ in manifest("pvt_v2_b0")["entries"]}
        assert f.metadata()["birefnet.resolution"] == "64x64"
    model = birefnet.load_model(final)
    assert model.config.tile_layout == "current" and model.info.resolution == (64, 64)
    mask = birefnet.segment(model, Image.open(dataset / "im" / "00000.jpg"))
    assert mask.shape == (80, 72)


def test_resume_continues_identically(dataset, tmp_path):
    """Bit-identity needs deterministic kernels: on the CPU (CUDA's atomic-add backward of
    grid_sample and deform_conv2d differs run to run even without a resume)."""
    straight = train(tiny_config(dataset, tmp_path / "a", device="cpu"))
    stopped = train(tiny_config(dataset, tmp_path / "b", device="cpu"), stop_after_epoch=1)
    assert stopped.name == "epoch_1.safetensors" and not (tmp_path / "b" / "final.safetensors").exists()
    resumed = train(tiny_config(dataset, tmp_path / "b", device="cpu"))
    from safetensors.torch import load_file

    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_batch_size_one_freezes_batchnorm_statistics(dataset, tmp_path):
    from birefnet_training.trainer import Trainer

    trainer = Trainer(tiny_config(dataset, tmp_path, batch_size=1, epochs=1, max_steps_per_epoch=1))
    before = trainer.model.squeeze_module[0].bn_in.running_mean.clone()
    trainer.run()
    assert torch.equal(trainer.model.squeeze_module[0].bn_in.running_mean, before)


def test_dataset_errors_are_clear(tmp_path, caplog):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="expected sub-folders im/"):
        find_pairs(tmp_path / "flat")
    root = tmp_path / "mismatch"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    Image.new("RGB", (8, 8)).save(root / "im" / "a.png")
    Image.new("L", (8, 8)).save(root / "gt" / "b.png")
    with pytest.raises(DatasetError, match="no image in im/ has a mask of the same name"):
        find_pairs(root)
    Image.new("L", (8, 8)).save(root / "gt" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "im" / "lonely.png")
    with caplog.at_level(logging.WARNING):
        assert [p[0].name for p in find_pairs(root)] == ["a.png"]
    assert "lonely" in caplog.text and "b" in caplog.text


def test_unreadable_sample_is_skipped_not_fatal(dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    whole = (data / "im" / "00001.jpg").read_bytes()
    (data / "im" / "00001.jpg").write_bytes(whole[: len(whole) // 2])  # its header opens: found when read
    train(tiny_config(data, tmp_path / "run", epochs=1, max_steps_per_epoch=None, augment=False))
    err = capsys.readouterr().err
    # On a line of its own (tqdm.write), not glued to the progress bar's.
    assert any(
        line.startswith("training: skipping unreadable sample") and "00001.jpg" in line for line in err.splitlines()
    )


def test_a_data_set_that_opens_but_cannot_be_read_is_one_line_from_a_loader_process(dataset, tmp_path):
    """Headers that open, pixels that do not: found as the epoch reads them, in a loader process; the
    error is the same one line as in the main process, not the worker's traceback."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    for image in (data / "im").iterdir():
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(DatasetError) as caught:
        train(tiny_config(data, tmp_path / "run", workers=1))
    assert str(caught.value) == "no sample of the dataset could be read"


def test_files_that_cannot_be_opened_are_listed_before_any_work(dataset, tmp_path, caplog):
    """Broken files (a Git LFS pointer, an empty download) are found as the run starts, listed once and
    left out; a data set of nothing else is one line naming a file and why, before the run folder is made,
    not a traceback from a loader process after the model was built."""
    import shutil

    from birefnet_training.trainer import Trainer

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "im" / "00001.jpg").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    (data / "gt" / "00002.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert len(Trainer(tiny_config(data, tmp_path / "run")).train_set) == 6
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warning.startswith("2 training pair(s)") and "Git LFS pointer" in warning and "00002.png" in warning
    for image in (data / "im").iterdir():
        image.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(DatasetError, match=r"^none of the \d training pair\(s\) can be read: .*git lfs pull"):
        train(tiny_config(data, tmp_path / "run2", workers=1))
    assert not (tmp_path / "run2").exists()


def test_validation_leaves_an_unreadable_image_out_instead_of_scoring_another_twice(dataset, tmp_path):
    """Training reads the next sample for an unreadable one; validation must not: the stand-in would be
    scored twice. A file whose header opens passes the check before the run and is found when read."""
    import shutil

    from birefnet_training.trainer import Trainer

    val = tmp_path / "val"
    shutil.copytree(dataset, val)
    for name in ("00004", "00005", "00006", "00007"):
        (val / "im" / f"{name}.jpg").unlink()
    whole = (val / "im" / "00001.jpg").read_bytes()
    (val / "im" / "00001.jpg").write_bytes(whole[: len(whole) // 2])
    trainer = Trainer(tiny_config(dataset, tmp_path / "run", val=[str(val)]))
    assert len(trainer.val_set) == 4
    with_unreadable = trainer.validate(1)
    trainer.val_set.pairs = [pair for pair in trainer.val_set.pairs if pair.image.stem != "00001"]
    assert with_unreadable == pytest.approx(trainer.validate(1), rel=1e-5)


def test_a_name_two_files_share_is_listed_not_chosen_silently(tmp_path, caplog):
    """im/a.jpg and im/a.png: which one goes with gt/a.png would be decided by the extensions' order."""
    from birefnet_training.evaluate import evaluate_folders

    root = tmp_path / "data"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    for name in "abc":
        Image.new("RGB", (8, 8)).save(root / "im" / f"{name}.jpg")
        Image.new("L", (8, 8)).save(root / "gt" / f"{name}.png")
    Image.new("RGB", (8, 8), "red").save(root / "im" / "a.png")
    Image.new("L", (8, 8)).save(root / "gt" / "b.bmp")
    with caplog.at_level(logging.WARNING):
        assert [p.image.name for p in find_pairs(root)] == ["c.jpg"]
    assert "a.jpg and a.png" in caplog.text and "b.bmp and b.png" in caplog.text
    assert "without a" not in caplog.text  # named once, as ambiguous, not again as unmatched
    with pytest.raises(ValueError, match="no prediction for 1 ground truth"):
        evaluate_folders(root / "im", root / "gt", metrics=["MAE"], workers=1)  # a.jpg/a.png: neither scored


def test_sixteen_bit_masks_keep_their_soft_edges(tmp_path):
    """convert("L") turns every non-zero 16-bit value into 255; the soft edge must survive."""
    from birefnet_training.data import SegmentationDataset
    from birefnet_training.scoring import read_mask_array

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "m.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "i.png")
    assert Image.open(tmp_path / "m.png").mode.startswith("I")
    mask = SegmentationDataset([(tmp_path / "i.png", tmp_path / "m.png")], None).load(0, (48, 64)).mask
    soft = ((mask > 0.02) & (mask < 0.98)).float().mean().item()
    assert soft > 0.9 and abs(mask[0, 0, 32].item() - 32 / 63) < 0.02
    assert abs(read_mask_array(tmp_path / "m.png")[0, 32] - 32 / 63) < 1e-3


def test_mask_of_another_size_is_reported_once(tmp_path, capsys):
    from birefnet_training.data import SegmentationDataset

    for name in "ab":
        Image.new("RGB", (64, 48)).save(tmp_path / f"{name}.jpg")
        Image.new("L", (32, 24)).save(tmp_path / f"{name}.png")
    data = SegmentationDataset([(tmp_path / f"{n}.jpg", tmp_path / f"{n}.png") for n in "ab"], None)
    data.load(0, (64, 64)), data.load(1, (64, 64))
    err = capsys.readouterr().err
    assert err.count("is 32x24, its image 64x48") == 1


def test_resume_log_holds_each_epoch_once_and_stale_temporaries_go(dataset, tmp_path):
    """Killed after writing epoch 2's record but before its resume state: epoch 2 runs again and
    is logged once. A temporary file of an interrupted write is removed at the next start: made by
    `atomic_path` itself, a write left unfinished as a kill leaves it, so a new temporary name
    cannot slip past the clean-up unnoticed."""
    from birefnet.files import atomic_path

    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=3), stop_after_epoch=1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 1.0}) + "\n")
    killed = [atomic_path(out / name) for name in ("resume.pt", "epoch_2.safetensors", "notes")]
    stale = [writing.__enter__() for writing in killed]  # entered, never left: no rename, no clean-up
    for path in stale:
        path.write_bytes(b"half a file")
    keep = out / "notes.txt"
    keep.write_text("mine")
    train(tiny_config(dataset, out, epochs=3))
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert [path.name for path in stale if path.exists()] == [] and keep.read_text() == "mine"


def train_under_torchrun(dataset, out, *extra):
    """Two CPU processes (gloo) train pvt_v2_b0 for one step per epoch."""
    common = ["--data", dataset, "--out", out, "--init", "scratch", "--backbone", "pvt_v2_b0", "--batch-size", "2"]
    short = ["--size", "64", "--max-steps-per-epoch", "1", "--finetune-last-epochs", "0", "--device", "cpu"]
    result = torchrun("birefnet_training", "train", *common, *short, *extra, scratch=out.parent / "torchrun")
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_torchrun_resume_is_exact_per_rank(dataset, tmp_path):
    """Each rank's random stream is saved and restored: 2 processes stopped after epoch 1 and
    resumed end bit-identical to the uninterrupted run (drop path draws differ per rank)."""
    from safetensors.torch import load_file

    straight = train_under_torchrun(dataset, tmp_path / "a", "--epochs", "2", "--seed", "5")
    assert straight.stdout.count("training: wrote") == 1  # once, not once per process
    train_under_torchrun(dataset, tmp_path / "b", "--epochs", "2", "--seed", "5", "--stop-after-epoch", "1")
    train_under_torchrun(dataset, tmp_path / "b", "--epochs", "2", "--seed", "5")
    a, b = load_file(str(tmp_path / "a" / "final.safetensors")), load_file(str(tmp_path / "b" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_timm_backbone_weights_convert(tmp_path):
    """ImageNet weights in timm's layout fill the backbone completely (PVT) or all but norm0..3 (Swin)."""
    import timm
    from safetensors.torch import save_file

    from birefnet_training.pretrained import load_backbone_weights

    for name, timm_name in (("pvt_v2_b0", "pvt_v2_b0"), ("swin_v1_t", "swin_tiny_patch4_window7_224")):
        source = timm.create_model(timm_name, pretrained=False).state_dict()
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        model = birefnet.build_model(name)
        load_backbone_weights(model, path)
        if name == "swin_v1_t":
            assert torch.equal(
                model.bb.layers[0].downsample.reduction.weight, source["layers.1.downsample.reduction.weight"]
            )
            assert torch.equal(model.bb.layers[2].blocks[5].mlp.fc2.bias, source["layers.2.blocks.5.mlp.fc2.bias"])
        else:
            assert torch.equal(
                model.bb.body.stages[3].downsample.proj.weight, source["stages.3.downsample.proj.weight"]
            )
    with pytest.raises(ValueError, match="not swin_v1_t backbone weights"):
        load_backbone_weights(birefnet.build_model("swin_v1_t"), tmp_path / "pvt_v2_b0.safetensors")


def test_torchrun_distributed_training(dataset, tmp_path):
    """Two CPU processes (gloo) through torchrun: one log, one set of checkpoints."""
    out = tmp_path / "ddp"
    result = train_under_torchrun(dataset, out, "--epochs", "1")
    assert (out / "final.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert "Grad strides do not match" not in result.stderr


def test_fine_tuning_keeps_the_checkpoint_tile_layout(tmp_path, b0_model):
    from birefnet_training.trainer import build_initial_model

    b0_model.tile_layout = "legacy"
    try:
        path = tmp_path / "legacy.safetensors"
        birefnet.save_checkpoint(b0_model, path)
    finally:
        b0_model.tile_layout = "current"
    cfg = TrainConfig(data=[], out=str(tmp_path), init=str(path))
    assert build_initial_model(cfg).config.tile_layout == "legacy"
    assert (
        build_initial_model(
            TrainConfig(data=[], out=str(tmp_path), init=str(path), tile_layout="current")
        ).config.tile_layout
        == "current"
    )
    assert (
        build_initial_model(
            TrainConfig(data=[], out=str(tmp_path), init="scratch", backbone="pvt_v2_b0")
        ).config.tile_layout
        == "current"
    )


def test_augmentations_keep_image_and_mask_aligned():
    import numpy as np

    from birefnet_training.data import Augment

    image, mask = make_sample(1, 3, (96, 128))
    rng = lambda: np.random.default_rng(5)
    geometric = Augment(flip=True, rotate=True, enhance=False, pepper=False, crop=True)
    out_image, out_mask = geometric(image, mask, rng())
    assert out_image.size == image.size and out_mask.size == mask.size
    # the object's colour pixels and the mask move together: image and mask stay registered
    again_image, again_mask = geometric(mask.convert("RGB"), mask, rng())
    assert np.abs(np.asarray(again_image)[..., 0].astype(int) - np.asarray(again_mask).astype(int)).mean() < 2
    photometric = Augment(flip=False, rotate=False, enhance=True, pepper=True)
    changed, same_mask = photometric(image, mask, rng())
    assert same_mask is mask and changed.tobytes() != image.tobytes()


def test_every_config_field_has_a_documented_flag_with_its_default():
    import dataclasses

    from birefnet_training.__main__ import build_parser

    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        action = actions[f.name]
        assert action.help and len(action.help) > 10, f.name
        if f.default not in (dataclasses.MISSING, None) and not isinstance(f.default, bool):
            assert "(default: " in action.help, f.name
    args = parser.parse_args(
        [
            "train",
            "--data",
            "d",
            "--out",
            "o",
            "--init",
            "scratch",
            "--weight-decay",
            "0.5",
            "--lr-decay-epochs",
            "3",
            "5",
            "--no-freeze-batchnorm",
            "--size",
            "96x64",
            "--dynamic-size",
            "64,128",
        ]
    )
    from birefnet_training.__main__ import cmd_train  # noqa: F401  (the same mapping cmd_train uses)

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    assert (cfg.weight_decay, cfg.lr_decay_epochs, cfg.freeze_batchnorm) == (0.5, [3, 5], False)
    assert "halved" in actions["lr_decay_epochs"].help  # as the code does (the official rate, 0.5)
    assert "length" in actions["finetune_last_epochs"].help and "-N" in actions["finetune_last_epochs"].help
    assert cfg.size == (64, 96) and cfg.dynamic_size == ((64, 128), (64, 128))
    assert TrainConfig(data=["d"], out="o", init="scratch") == TrainConfig(
        **{
            f.name: getattr(v, f.name)
            for v in [parser.parse_args(["train", "--data", "d", "--out", "o", "--init", "scratch"])]
            for f in dataclasses.fields(TrainConfig)
        }
    )  # parser defaults == dataclass defaults


def test_train_needs_a_starting_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "birefnet_training", "train", "--data", str(tmp_path), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--init" in result.stderr


def test_epoch_summary_is_readable_and_scratch_backbones_warn(dataset, tmp_path, caplog):
    from birefnet_training.run_folder import summary

    assert summary({"epoch": 3, "loss": 0.412345, "lr": 7.0711e-06}) == "loss 0.4123, lr 7.071e-06"
    with caplog.at_level("INFO"):
        train(tiny_config(dataset, tmp_path / "run", epochs=1))
    assert "starts from random weights" in caplog.text and "--init general" in caplog.text
    assert "lr 1e-03" not in caplog.text and "lr 0.001" in caplog.text
    for written in ("resume.pt", "final.safetensors"):  # readable by others, as the umask allows
        assert (tmp_path / "run" / written).stat().st_mode & 0o777 == 0o666 & ~current_umask(), written


@cpu_only
def test_unavailable_training_device_is_one_line(dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "birefnet_training",
            "train",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path),
            "--init",
            "scratch",
            "--backbone",
            "pvt_v2_b0",
            "--device",
            "cuda",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "device 'cuda' is not available" in result.stderr.strip().splitlines()[-1]


def test_best_epoch_is_kept_and_can_be_picked_again(dataset, tmp_path):
    from safetensors.torch import load_file

    from birefnet_training.run_folder import best_epoch

    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=3, val_split=0.25, best_metric="MAE"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_Sm", "val_MAE", "val_mBA", "val_maxBIoU", "val_MSE"} <= set(records[-1])
    by_mae = min(records, key=lambda r: r["val_MAE"])["epoch"]
    assert best_epoch(out / "metrics.jsonl", "MAE") == by_mae
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(load_file(str(a)).values(), load_file(str(b)).values()))
    assert same(out / "best.safetensors", out / f"epoch_{by_mae}.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "birefnet_training", "best", str(out), "--metric", "Sm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    by_sm = max(records, key=lambda r: r["val_Sm"])["epoch"]
    assert f"epoch {by_sm} is the best by val_Sm" in result.stdout
    assert same(out / "best.safetensors", out / f"epoch_{by_sm}.safetensors")


def test_compiled_training_traces_the_whole_step_and_matches_eager(dataset, tmp_path):
    """`--compile` wraps the forward in torch.compile; aot_eager traces forward and backward
    (the part that breaks when the model stops being traceable) without inductor's minutes of codegen."""
    eager = train(tiny_config(dataset, tmp_path / "eager", epochs=1, max_steps_per_epoch=1, device="cpu"))
    compiled = train(
        tiny_config(dataset, tmp_path / "compiled", epochs=1, max_steps_per_epoch=1, device="cpu", compile="aot_eager")
    )
    losses = [
        json.loads((path.parent / "metrics.jsonl").read_text().splitlines()[0])["loss"] for path in (eager, compiled)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(str(eager)), load_file(str(compiled))
    # Adam's first step moves each weight by about ±lr whatever the gradient's size, so a gradient
    # that is float noise may flip sign between the two graphs: biases before BatchNorm (their true
    # gradient is 0) and offsets sampled at integer points (grid_sample's kink: either one-sided
    # derivative is right, and the decomposed backward picks by rounding). Count those, do not bound them.
    moved = sum(int(((a[k].float() - b[k].float()).abs() > 1e-5).sum()) for k in a)
    assert moved < 0.01 * sum(t.numel() for t in a.values())


def _cutout_folders(root):
    """The same three objects as RGBA files, as fg/ + alpha/ with a flat bg/, and as im/ + alpha/."""
    for sub in ("rgba", "fgset/fg", "fgset/alpha", "fgset/bg", "matting/im", "matting/alpha"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        image, mask = make_sample(9, i, (48, 64))
        Image.fromarray(np.dstack([np.asarray(image), np.asarray(mask)])).save(root / "rgba" / f"{i}.png")
        image.save(root / "fgset" / "fg" / f"{i}.png")
        mask.save(root / "fgset" / "alpha" / f"{i}.png")
        image.save(root / "matting" / "im" / f"{i}.jpg")
        mask.save(root / "matting" / "alpha" / f"{i}.png")
    Image.new("RGB", (80, 80), (10, 200, 30)).save(root / "fgset" / "bg" / "green.png")
    Image.new("RGB", (48, 64)).save(root / "rgba" / "no_alpha.png")


def test_cutouts_and_matting_alphas_are_datasets(tmp_path, caplog):
    from birefnet.inference import normalise
    from birefnet_training.data import SegmentationDataset, find_backgrounds

    _cutout_folders(tmp_path)
    with caplog.at_level(logging.WARNING):
        rgba = find_pairs(tmp_path / "rgba")
    assert [(s.image.name, s.cutout) for s in rgba] == [("0.png", True), ("1.png", True), ("2.png", True)]
    assert "no_alpha.png" in caplog.text  # reported and left out
    size = (48, 64)
    alpha = torch.from_numpy(np.asarray(make_sample(9, 1, size)[1], np.float32) / 255)

    # RGBA: the alpha is the target; the colours land on a new synthesised backdrop every epoch
    data = SegmentationDataset(rgba, None, seed=1)
    image_0, mask, *_ = data[1, size]
    assert torch.allclose(mask[0], alpha, atol=1 / 255)
    data.epoch = 1
    image_1, again, *_ = data[1, size]
    assert torch.equal(mask, again)
    outside = alpha < 1e-3
    assert (image_0 - image_1).abs()[:, outside].mean() > 0.05  # the background changed
    assert (image_0 - image_1).abs()[:, alpha > 0.999].max() < 1e-5  # the object did not

    # fg/ + alpha/ with bg/: the backdrop is a crop of the background file (flat green here)
    samples, backgrounds = find_pairs(tmp_path / "fgset"), find_backgrounds(tmp_path / "fgset")
    assert all(s.cutout for s in samples) and [b.name for b in backgrounds] == ["green.png"]
    image, *_ = SegmentationDataset(samples, None, backgrounds=backgrounds)[1, size]
    green = normalise(torch.tensor([10, 200, 30], dtype=torch.float32).view(1, 3, 1, 1) / 255)[0, :, 0, 0]
    assert torch.allclose(image[:, outside], green[:, None].expand(3, int(outside.sum())), atol=0.02)

    # im/ + alpha/ (matting): soft targets kept soft
    matting = find_pairs(tmp_path / "matting")
    assert not any(s.cutout for s in matting)
    _, soft, *_ = SegmentationDataset(matting, None)[1, size]
    assert ((soft > 0.02) & (soft < 0.98)).float().mean() > 0.005

    with pytest.raises(DatasetError, match="no image has an alpha channel"):
        only_rgb = tmp_path / "rgb"
        only_rgb.mkdir()
        Image.new("RGB", (8, 8)).save(only_rgb / "a.png")
        find_pairs(only_rgb)


def test_training_on_a_folder_of_cutouts(tmp_path):
    _cutout_folders(tmp_path)
    final = train(tiny_config(tmp_path / "rgba", tmp_path / "run", epochs=1, max_steps_per_epoch=1))
    assert final.is_file()


def test_recipe_scores_before_and_after_each_variant(tmp_path):
    """`python -m birefnet_training recipe` in miniature: a new object set (RGBA cut-outs), the embedded
    model's scores, a fine-tune per variant from it, the scores again, all kept in scores.json."""
    from birefnet_training.recipe import run_recipe

    scores = run_recipe(tmp_path, counts=(8, 4, 4), epochs=1, max_steps_per_epoch=2, finetune_last_epochs=0)
    assert all(s.cutout for s in find_pairs(tmp_path / "train"))
    before = scores.pop("before (embedded model)")
    assert len(scores) == 2 and all(after["Sm"] != before["Sm"] for after in scores.values())
    assert json.loads((tmp_path / "scores.json").read_text())["scores"]["before (embedded model)"] == before


def test_torchvision_and_dinov3_pretrained_weights_convert(tmp_path):
    """torchvision's VGG/ResNet layout and timm's DINOv3 layout fill the official backbone modules."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    from birefnet_training.pretrained import load_backbone_weights

    cases = {
        "vgg16bn": (torchvision.models.vgg16_bn().state_dict(), "features.34.weight", "conv4.34.weight"),
        "resnet50": (torchvision.models.resnet50().state_dict(), "layer3.5.conv2.weight", "conv3.5.conv2.weight"),
        "dino_v3_s": (
            timm.create_model("vit_small_patch16_dinov3", pretrained=False).state_dict(),
            "blocks.11.mlp.fc2.weight",
            "model.blocks.11.mlp.fc2.weight",
        ),
    }
    for name, (source, theirs, ours) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        model = birefnet.build_model(name)
        load_backbone_weights(model, path)
        assert torch.equal(model.bb.state_dict()[ours], source[theirs]), name
    with pytest.raises(ValueError, match="not resnet50 backbone weights"):
        load_backbone_weights(birefnet.build_model("resnet50"), tmp_path / "vgg16bn.safetensors")


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "dino_v3_s"])
def test_each_backbone_family_trains(dataset, tmp_path, backbone):
    """The smallest of each new family trains from scratch and its checkpoint loads as that backbone;
    DINOv3 keeps its backbone frozen by default (the official recipe), the CNNs train theirs."""
    from safetensors.torch import load_file

    cfg = tiny_config(dataset, tmp_path / "run", backbone=backbone, epochs=1, max_steps_per_epoch=1)
    torch.manual_seed(cfg.seed)  # what the trainer does before building the model
    initial = birefnet.model_to_official_keys(birefnet.build_model(backbone).state_dict(), backbone)
    final = train(cfg)
    assert birefnet.load_model(final).config.backbone == backbone
    trained = load_file(str(final))
    moved = lambda prefix: any(
        not torch.equal(trained[k], initial[k].to(trained[k].dtype))
        for k in trained
        if k.startswith(prefix) and trained[k].is_floating_point()
    )
    assert moved("decoder.")
    assert moved("bb.") == (backbone != "dino_v3_s")
    if backbone == "dino_v3_s":
        unfrozen = train(
            tiny_config(
                dataset,
                tmp_path / "unfrozen",
                backbone=backbone,
                epochs=1,
                max_steps_per_epoch=1,
                freeze_backbone=False,
            )
        )
        key = "bb.model.blocks.0.attn.qkv.weight"
        assert not torch.equal(load_file(str(unfrozen))[key], initial[key])


def test_cnn_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = birefnet.build_model("resnet50").train()
    x = torch.randn(2, 3, 128, 128)

    def grad(checkpointing: bool):
        torch.manual_seed(1)  # the decoder's dropout draws the same masks
        model.zero_grad()
        model.bb.set_grad_checkpointing(checkpointing)
        model(x).logits.mean().backward()
        return model.bb.conv2[0].conv1.weight.grad.clone()

    assert torch.equal(grad(False), grad(True))


def test_palette_and_zero_one_masks_are_foreground(tmp_path):
    """A VOC-style palette mask (index 1 drawn as dark red), the same label map saved as RGB and a 0/1
    mask are read as 0/255, in training and in evaluation; 8-bit grey, grey-palette and grey RGB masks
    keep their levels."""
    from birefnet_training.data import SegmentationDataset
    from birefnet_training.scoring import read_mask_array

    indices = np.zeros((16, 16), np.uint8)
    indices[4:12, 4:12] = 1
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette.save(tmp_path / "voc.png")
    Image.fromarray(indices).save(tmp_path / "binary.png")
    Image.fromarray(indices * 200).save(tmp_path / "grey.png")
    Image.fromarray(indices * 200).convert("P").save(tmp_path / "grey_palette.png")
    palette.convert("RGB").save(tmp_path / "voc_rgb.png")  # the same label map saved without its palette
    Image.fromarray(indices * 200).convert("RGB").save(tmp_path / "grey_rgb.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "image.png")
    assert Image.open(tmp_path / "voc.png").mode == "P" and Image.open(tmp_path / "voc_rgb.png").mode == "RGB"
    cases = ("voc", 255), ("voc_rgb", 255), ("binary", 255), ("grey", 200), ("grey_palette", 200), ("grey_rgb", 200)
    for name, level in cases:
        assert set(np.unique(read_mask_array(tmp_path / f"{name}.png"))) == {0, level}, name
        mask = SegmentationDataset([(tmp_path / "image.png", tmp_path / f"{name}.png")], None).load(0, (16, 16)).mask
        assert mask[0, 8, 8].item() == pytest.approx(level / 255), name
    # a soft mask whose grey levels a colour conversion tinted is not a label map: its faint edge stays faint
    ramp = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (4, 1))
    Image.fromarray(np.stack([ramp, np.minimum(ramp + 1, 255), ramp], axis=2)).save(tmp_path / "tinted_soft.png")
    assert read_mask_array(tmp_path / "tinted_soft.png")[0, 1] < 5  # its brightness (3 of 255), not 255


VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128]


def _voc_mask(path, size=32, band=2, label=1):
    """A VOC palette mask: background 0, a square of class `label`, and around it VOC's void index
    255 (unlabelled) `band` pixels wide on each side of the outline."""
    indices = np.zeros((size, size), np.uint8)
    lo, hi = size // 4, 3 * size // 4
    indices[lo - band : hi + band, lo - band : hi + band] = 255
    indices[lo + band : hi - band, lo + band : hi - band] = label
    palette = Image.fromarray(indices, "P")
    palette.putpalette(VOC_PALETTE + [0] * (765 - len(VOC_PALETTE)) + [224, 224, 192])
    palette.save(path)
    return indices


def test_voc_void_band_is_unlabelled_in_reading_training_and_evaluation(tmp_path):
    """VOC's void index (255, the band along every outline) is neither foreground nor background:
    read as unlabelled, left out of the training targets and made to agree in the scores."""
    from birefnet_training.data import Augment, SegmentationDataset, collate
    from birefnet_training.evaluate import evaluate_folders
    from birefnet_training.scoring import mask_array, read_mask, void_pixels

    (tmp_path / "gt").mkdir()
    indices = _voc_mask(tmp_path / "gt" / "a.png")
    band, inside = indices == 255, indices == 1
    mask = read_mask(tmp_path / "gt" / "a.png")
    assert mask.mode == "LA"
    assert np.array_equal(mask_array(mask) == 255, inside) and np.array_equal(void_pixels(mask), band)

    Image.new("RGB", (32, 32), "grey").save(tmp_path / "image.png")
    item = SegmentationDataset([(tmp_path / "image.png", tmp_path / "gt" / "a.png")], None).load(0, (32, 32))
    assert torch.equal(item.labelled[0] == 0, torch.from_numpy(band))
    assert torch.equal(item.mask[0] == 1, torch.from_numpy(inside))
    plain = SegmentationDataset([(tmp_path / "image.png", tmp_path / "image.png")], None)
    _, masks, labelled, _ = collate([(*item, 0), (*plain.load(0, (32, 32)), 1)])
    assert labelled.shape == masks.shape and labelled[1].eq(1).all()  # a fully labelled mask in the batch: ones
    assert collate([(*plain.load(0, (32, 32)), 0)])[2] is None  # none unlabelled: the official loss

    rotating = next(seed for seed in range(100) if np.random.default_rng(seed).random() < 0.2)
    augment = Augment(flip=False, enhance=False, pepper=False)
    _, turned = augment(Image.new("RGB", (32, 32)), mask, np.random.default_rng(rotating))
    assert turned.mode == "LA" and turned.getpixel((0, 0)) == (0, 255)  # rotated-in corners: labelled background
    assert turned.getpixel((16, 16)) == (255, 255)

    # A VOC mask of class 7 alone, drawn grey (128, 128, 128), holds a class, not a grey level.
    _voc_mask(tmp_path / "car.png", band=0, label=7)
    assert set(np.unique(mask_array(read_mask(tmp_path / "car.png")))) == {0, 255}

    # As the alpha of a foreground (fg/ + alpha/), composited over a new backdrop.
    (tmp_path / "matting" / "fg").mkdir(parents=True), (tmp_path / "matting" / "alpha").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "matting" / "fg" / "a.png")
    _voc_mask(tmp_path / "matting" / "alpha" / "a.png")
    composited = SegmentationDataset(find_pairs(tmp_path / "matting"), None).load(0, (32, 32))
    assert torch.equal(composited.labelled[0] == 0, torch.from_numpy(band))

    # An object drawn with or without the void band scores perfectly; an error elsewhere still counts.
    (tmp_path / "with_band").mkdir(), (tmp_path / "without_band").mkdir(), (tmp_path / "wrong").mkdir()
    Image.fromarray(np.where(band | inside, 255, 0).astype(np.uint8)).save(tmp_path / "with_band" / "a.png")
    Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).save(tmp_path / "without_band" / "a.png")
    wrong = np.where(inside, 255, 0).astype(np.uint8)
    wrong[:4, :4] = 255
    Image.fromarray(wrong).save(tmp_path / "wrong" / "a.png")
    for name in ("with_band", "without_band"):
        scores = evaluate_folders(tmp_path / name, tmp_path / "gt", metrics=["MAE", "S"], workers=1).results()
        assert scores["MAE"] == 0 and scores["Sm"] == pytest.approx(1.0), name
    wrong_scores = evaluate_folders(tmp_path / "wrong", tmp_path / "gt", metrics=["MAE"], workers=1).results()
    assert wrong_scores["MAE"] == pytest.approx(16 / 32**2)


def test_unlabelled_pixels_have_no_effect_on_the_loss():
    """With a `labelled` map, neither the value nor the gradient of any term depends on the logits
    of unlabelled pixels; with every pixel labelled it is the official loss."""
    from birefnet_training.losses import pixel_loss

    torch.manual_seed(0)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    labelled = torch.ones_like(target)
    labelled[:, :, 8:20, 10:14] = 0
    weights = {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0}
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    changed = (logits.detach() + 5 * torch.randn_like(logits) * (1 - labelled)).requires_grad_()
    terms, again = pixel_loss(logits, target, weights, labelled), pixel_loss(changed, target, weights, labelled)
    for name in weights:
        assert terms[name].item() == pytest.approx(again[name].item(), rel=1e-5), name
        (grad,) = torch.autograd.grad(terms[name], logits, retain_graph=True)
        assert grad[labelled == 0].abs().max() == 0 and grad[labelled == 1].abs().max() > 0, name
    official = pixel_loss(logits, target, weights)
    all_labelled = pixel_loss(logits, target, weights, torch.ones_like(target))
    for name in weights:
        assert all_labelled[name].item() == pytest.approx(official[name].item(), rel=1e-5), name


def test_training_and_validation_run_on_voc_masks(tmp_path):
    data = tmp_path / "voc"
    (data / "im").mkdir(parents=True), (data / "gt").mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), np.uint8)).save(data / "im" / f"{i}.png")
        _voc_mask(data / "gt" / f"{i}.png", size=48)
    out = tmp_path / "run"
    assert train(tiny_config(data, out, epochs=1, val_split=0.25)) == out / "final.safetensors"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and 0 <= record["val_MAE"] <= 1


def test_positive_finetune_length_means_the_same_phase_as_the_official_negative_form():
    for epoch in range(1, 11):
        assert loss_weights("general", epoch, 10, 3) == loss_weights("general", epoch, 10, -3)
    assert loss_weights("general", 10, 10, 3)["bce"] == 0.0 and loss_weights("general", 7, 10, 3)["bce"] == 30.0
    assert loss_weights("general", 10, 10, 0)["bce"] == 30.0


def test_resuming_with_other_settings_or_over_another_run_is_one_line(dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1), stop_after_epoch=1)
    for changed, named in (
        (dict(lr=5e-4), "--lr 0.0005 (was 0.001)"),
        (dict(backbone="pvt_v2_b1"), "--backbone pvt_v2_b1 (was pvt_v2_b0)"),
        (dict(init=str(tmp_path / "elsewhere.safetensors"), backbone=None, seed=4), "--seed 4 (was 3)"),
    ):
        with pytest.raises(ValueError, match="written with other settings") as caught:
            train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1, **changed))
        assert named in str(caught.value) and "--restart" in str(caught.value)
        assert "\n" not in str(caught.value)
    # --epochs may change: a finished run asked for fewer epochs writes nothing
    assert train(tiny_config(dataset, out, epochs=1, max_steps_per_epoch=1)) is None
    (out / "resume.pt").unlink()
    final_before = (out / "epoch_1.safetensors").read_bytes()
    log_before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="holds another run's outputs .* no resume.pt"):
        train(tiny_config(dataset, out, epochs=1, max_steps_per_epoch=1))
    assert (out / "metrics.jsonl").read_text() == log_before
    assert (out / "epoch_1.safetensors").read_bytes() == final_before


def test_resuming_with_the_same_data_written_another_way_continues(dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1), stop_after_epoch=1)
    monkeypatch.chdir(dataset.parent)
    again = tiny_config(f"./{dataset.name}/", out, epochs=2, max_steps_per_epoch=1)
    assert train(again) == out / "final.safetensors"
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resuming_on_data_that_changed_is_one_line(dataset, tmp_path):
    """Pairs added to (or removed from) the --data folder after an interruption: the resume would train on
    other batches and, with --val-split, validate on another set, part of it trained on already."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(dataset, data)
    config = lambda: tiny_config(data, out, epochs=2, max_steps_per_epoch=1, val_split=0.25)
    train(config(), stop_after_epoch=1)
    shutil.copy(data / "im" / "00001.jpg", data / "im" / "new.jpg")
    shutil.copy(data / "gt" / "00001.png", data / "gt" / "new.png")
    with pytest.raises(ValueError, match=r"data has changed .* \(1 pair\(s\) added, 0 gone, e.g. added: im/new.jpg\)"):
        train(config())
    (data / "im" / "new.jpg").unlink()  # as it was: the run continues
    assert train(config()) == out / "final.safetensors"


def test_restart_leaves_nothing_of_the_earlier_run(dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=3, max_steps_per_epoch=1, val_split=0.25))
    assert {"epoch_3.safetensors", "best.safetensors", "final.safetensors"} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1, val_split=0.0), resume=False)
    left = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".jsonl", ".txt", ".pt"))
    assert left == [
        "epoch_1.safetensors",  # no epoch_3 and no best (this run validates nothing) of the earlier run
        "epoch_2.safetensors",
        "final.safetensors",
        "metrics.jsonl",
        "notes.txt",
        "resume.pt",
    ]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_nothing_to_do_is_not_reported_as_written(dataset, tmp_path, capsys):
    from birefnet_training.__main__ import main

    common = ["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--init", "scratch"]
    common += ["--backbone", "pvt_v2_b0", "--size", "64", "--max-steps-per-epoch", "1", "--device", "cpu"]
    common += ["--batch-size", "2", "--finetune-last-epochs", "0"]
    assert main([*common, "--epochs", "3", "--stop-after-epoch", "2"]) == 0
    assert main([*common, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and out.count("training: wrote") == 1
    assert not (tmp_path / "run" / "final.safetensors").exists()


def test_torn_last_log_line_is_left_out(dataset, tmp_path):
    from birefnet_training.run_folder import best_epoch

    out = tmp_path / "run"
    train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1, val_split=0.25), stop_after_epoch=1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 0.5, "val_Sm')  # a crash in the middle of an append
    assert best_epoch(out / "metrics.jsonl") == 1
    train(tiny_config(dataset, out, epochs=2, max_steps_per_epoch=1, val_split=0.25))
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch-size", "0"),
        ("--accumulate", "0"),
        ("--save-every", "0"),
        ("--val-every", "0"),
        ("--size", "0"),
        ("--val-split", "1.0"),
        ("--val-split", "-0.1"),
        ("--epochs", "0"),
        ("--size", "32"),  # the model takes at least 64 a side
        ("--size", "100x64"),  # and multiples of 32
        ("--dynamic-size", "96,64"),
        ("--dynamic-size", "10,20"),
        ("--dynamic-size", "40,80"),  # would draw 32 for some batches
        ("--stop-after-epoch", "0"),
    ],
)
def test_settings_that_cannot_train_are_one_line(dataset, tmp_path, capsys, flag, value):
    from birefnet_training.__main__ import main

    args = ["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--init", "scratch"]
    tiny = ["--backbone", "pvt_v2_b0", "--size", "64", "--max-steps-per-epoch", "1", "--device", "cpu"]
    assert main([*args, *tiny, "--epochs", "1", "--batch-size", "2", flag, value]) == 2  # the last flag wins
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"training: {flag} ") and "use" in err
    assert not (tmp_path / "run").exists()


def test_val_split_is_seeded_across_folders_and_names_itself(tmp_path):
    from birefnet_training.trainer import split_validation

    pairs = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    train_part, held = split_validation(pairs, 0.25, seed=7)
    assert len(held) == 5 and sorted(train_part + held) == sorted(pairs)
    assert held != pairs[-5:] and held == split_validation(pairs, 0.25, seed=7)[1]
    assert held != split_validation(pairs, 0.25, seed=8)[1]
    with pytest.raises(ValueError, match=r"--val-split 0.5 of 1 pair\(s\) leaves nothing to train on"):
        split_validation(["only"], 0.5, seed=7)


def test_best_chooses_among_kept_epoch_files(tmp_path, capsys):
    from birefnet_training.__main__ import main

    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "val_Sm": sm} for e, sm in ((1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for epoch in (3, 4):  # --save-every 3 kept epoch 3 and the last
        (run / f"epoch_{epoch}.safetensors").write_bytes(f"weights {epoch}".encode())
    assert main(["best", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch 4 is the best by val_Sm" in out and "epoch 2 scored better" in out
    assert (run / "best.safetensors").read_bytes() == b"weights 4"


def test_synth_refuses_an_existing_dataset_and_a_negative_count(tmp_path, capsys):
    from birefnet_training.__main__ import main

    assert main(["synth", "--out", str(tmp_path / "syn"), "--count", "-3"]) == 2
    assert "--count -3" in capsys.readouterr().err and not (tmp_path / "syn").exists()
    assert main(["synth", "--out", str(tmp_path / "syn"), "--count", "1", "--size", "32"]) == 0
    before = (tmp_path / "syn" / "im" / "00000.jpg").read_bytes()
    assert main(["synth", "--out", str(tmp_path / "syn"), "--count", "1", "--seed", "5", "--size", "32"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert (tmp_path / "syn" / "im" / "00000.jpg").read_bytes() == before


def test_mask_shape_in_the_alpha_trains_as_that_shape(tmp_path):
    """A white layer on transparency (a cut-out kept as its mask): its brightness is all white, so
    read by brightness it would train as all foreground; it trains as its alpha, like a grey mask."""
    from birefnet_training.data import SegmentationDataset

    shape = np.zeros((48, 64), np.uint8)
    shape[12:36, 16:40] = 255
    white = np.full((48, 64, 4), 255, np.uint8)
    white[..., 3] = shape
    Image.fromarray(white, "RGBA").save(tmp_path / "layer.png")
    Image.fromarray(shape).save(tmp_path / "grey.png")
    Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp_path / "i.png")
    load = lambda mask: SegmentationDataset([(tmp_path / "i.png", tmp_path / mask)], None).load(0, (48, 64)).mask
    assert torch.equal(load("layer.png"), load("grey.png"))


def test_sixteen_bit_and_float_images_train_as_segment_reads_them(tmp_path):
    """A 16-bit or float picture reaches the model with the levels `birefnet segment` gives it
    (scaled by 65535, or read as [0, 1]), not clipped to white by convert("RGB")."""
    from birefnet.files import read_image
    from birefnet.inference import normalise, to_rgb_tensor
    from birefnet_training.data import SegmentationDataset

    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(48, 0)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp).save(tmp_path / "float.tif")
    Image.new("L", (64, 48)).save(tmp_path / "m.png")
    for name in ("deep.png", "float.tif"):
        assert read_image(tmp_path / name).mode in ("I;16", "I", "F"), name
        x = SegmentationDataset([(tmp_path / name, tmp_path / "m.png")], None).load(0, (48, 64)).image
        library = normalise(to_rgb_tensor(read_image(tmp_path / name))[None])[0]
        assert (x - library).abs().max() < 0.51 / 255 / 0.224, name  # within 8-bit rounding


def test_one_training_pair_trains_at_the_default_batch_size(tmp_path):
    """One pair (or --val-split leaving one) makes batches of one image: BatchNorm freezes its
    statistics as with --batch-size 1, instead of torch's "more than 1 value per channel" error."""
    from birefnet_training.trainer import Trainer

    two = write_dataset(tmp_path / "two", 2, seed=1, size=(72, 64))
    trainer = Trainer(tiny_config(two, tmp_path / "run", val_split=0.5, epochs=1, max_steps_per_epoch=1))
    assert len(trainer.train_set) == 1 and trainer.cfg.batch_size == 2 and trainer.freeze_bn
    before = trainer.model.squeeze_module[0].bn_in.running_mean.clone()
    assert trainer.run() == tmp_path / "run" / "final.safetensors"
    assert torch.equal(trainer.model.squeeze_module[0].bn_in.running_mean, before)


def test_backbone_flags_with_a_checkpoint_init_are_refused(dataset, tmp_path, capsys, b0_weights):
    """--backbone and --backbone-weights build a --init scratch model: with a checkpoint they would
    be ignored without a word."""
    from birefnet_training.__main__ import main

    with pytest.raises(ValueError, match="--backbone only applies to --init scratch"):
        TrainConfig(data=["d"], out="o", init=str(b0_weights), backbone="pvt_v2_b0")
    assert TrainConfig(data=["d"], out="o", init="scratch").backbone == "swin_v1_l"  # the default, for scratch
    args = ["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--init", str(b0_weights)]
    assert main([*args, "--backbone-weights", "download"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("training: --backbone-weights only applies to --init scratch")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["out is a file", "offline download", "damaged resume.pt", "ctrl-c"])
def test_failures_are_one_line_as_in_birefnet(dataset, tmp_path, capsys, monkeypatch, case):
    """--out naming a file, --backbone-weights download without a connection, a damaged resume.pt and
    Ctrl-C: one line each (and 130 for Ctrl-C, as `birefnet`), never a traceback."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    import birefnet_training.trainer
    from birefnet_training.__main__ import main

    out, extra, code = tmp_path / "run", [], 2
    if case == "out is a file":
        out.write_text("mine")
        expected = ("--out", "run is a file", "name a folder")
    elif case == "offline download":

        def offline(variant):
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub ...")

        monkeypatch.setattr(birefnet.backbones.family("pvt_v2_b0"), "pretrained_state_dict", offline)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        extra, expected = ["--backbone-weights", "download"], ("could not be fetched", "HF_HUB_OFFLINE", "FILE")
    elif case == "damaged resume.pt":
        out.mkdir()
        (out / "resume.pt").write_bytes(b"PK\x03\x04" + bytes(1000))  # a zip cut short
        expected = ("resume.pt is damaged", "--restart")
    else:

        def interrupted(*_args, **_kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(birefnet_training.trainer, "train", interrupted)
        code, expected = 130, ("training: interrupted",)
    tiny = ["--init", "scratch", "--backbone", "pvt_v2_b0", "--size", "64", "--device", "cpu", "--epochs", "1"]
    try:
        assert main(["train", "--data", str(dataset), "--out", str(out), *tiny, *extra]) == code
    except KeyboardInterrupt:  # escaping main() it would stop pytest itself
        pytest.fail("Ctrl-C left main() as KeyboardInterrupt")
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("training: "), err
    assert all(text in err for text in expected), err
    if case == "out is a file":
        assert out.read_text() == "mine"


def test_out_of_memory_in_a_step_is_one_line_and_the_run_resumes(dataset, tmp_path, capsys, monkeypatch):
    """A device out of memory in a training step ends as one line naming what did not fit and the
    settings that need less (exit code 1), not torch's traceback; resume.pt keeps the last finished
    epoch and the advised --grad-checkpointing continues from it. This machine has no GPU: the forward
    raises torch's CUDA error where it would come, in a real run."""
    from birefnet_training.__main__ import main

    out = tmp_path / "run"
    tiny = ["--init", "scratch", "--backbone", "pvt_v2_b0", "--size", "64", "--device", str(DEVICE), "--epochs", "2"]
    args = [
        "train",
        "--data",
        str(dataset),
        "--out",
        str(out),
        *tiny,
        "--batch-size",
        "2",
        "--max-steps-per-epoch",
        "1",
    ]
    assert main([*args, "--stop-after-epoch", "1"]) == 0
    finished = (out / "resume.pt").read_bytes()
    capsys.readouterr()
    forward = birefnet.BiRefNet.forward

    def out_of_memory(model, *inputs, **options):
        if model.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")
        return forward(model, *inputs, **options)

    monkeypatch.setattr(birefnet.BiRefNet, "forward", out_of_memory)
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("training: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "ran out of memory training 2 image(s) at 64x64 in epoch 2: run again with --grad-checkpointing " in lines[0]
    assert "continue from resume.pt (epoch 1)" in lines[0] and "--restart" in lines[0]
    assert "--batch-size" in lines[0] and "--size" in lines[0] and "--freeze-backbone" in lines[0]
    assert (out / "resume.pt").read_bytes() == finished
    monkeypatch.setattr(birefnet.BiRefNet, "forward", forward)
    assert main([*args, "--grad-checkpointing"]) == 0
    log = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2] and (out / "final.safetensors").is_file()


def test_no_freeze_batchnorm_with_batches_of_one_is_refused_up_front(dataset, tmp_path, capsys):
    """--no-freeze-batchnorm asks for each batch's own statistics, which one image cannot give (torch's
    "Expected more than 1 value per channel" at the first step): refused before any work, naming the ways
    out. A last batch of one never comes (training leaves the remainder out), so odd counts train."""
    from birefnet_training.__main__ import main
    from birefnet_training.trainer import Trainer

    one = write_dataset(tmp_path / "one", 1, seed=1, size=(72, 64))
    tiny = ["--init", "scratch", "--backbone", "pvt_v2_b0", "--size", "64", "--device", "cpu", "--epochs", "1"]
    for data, batch, given in ((dataset, "1", "--batch-size 1"), (one, "2", "1 training pair")):
        out = tmp_path / f"run{batch}"
        args = ["train", "--data", str(data), "--out", str(out), *tiny, "--batch-size", batch]
        assert main([*args, "--no-freeze-batchnorm"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"training: --no-freeze-batchnorm with batches of one image ({given}): ")
        assert "leave the flag out" in err and "--batch-size 2 or more" in err and not out.exists()
    three = write_dataset(tmp_path / "three", 3, seed=2, size=(72, 64))
    trainer = Trainer(tiny_config(three, tmp_path / "odd", freeze_batchnorm=False, epochs=1, max_steps_per_epoch=None))
    assert len(trainer.sampler) == 1  # one batch of two; the third pair waits for another epoch's shuffle
    before = trainer.model.squeeze_module[0].bn_in.running_mean.clone()
    trainer.run()
    assert not torch.equal(trainer.model.squeeze_module[0].bn_in.running_mean, before)  # its own statistics
