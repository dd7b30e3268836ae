"""`python -m training evaluate` equals pysodmetrics on the same files."""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import multiprocessing
import subprocess
import sys

import numpy as np
import py_sod_metrics as sod
import pytest
from conftest import ROOT
from PIL import Image

PYSOD_KEYS = {"Sm", "meanEm", "maxEm", "adpEm", "maxFm", "meanFm", "adpFm", "wFm", "MAE", "HCE"}
OFFICIAL_EXTRA_KEYS = {"mBA", "maxBIoU", "meanBIoU", "MSE"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Ground truths from the synthetic generator and noisy, blurred, shifted predictions."""
    from PIL import ImageFilter

    from training.synthetic import make_sample

    root = tmp_path_factory.mktemp("eval")
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        _, mask = make_sample(4, i, (96, 128))
        mask.save(root / "gt" / f"{i}.png")
        pred = np.asarray(mask.filter(ImageFilter.GaussianBlur(2)).rotate(3), np.float32)
        pred = np.clip(pred + rng.normal(0, 30, pred.shape), 0, 255).astype(np.uint8)
        size = (128, 96) if i % 2 else (64, 48)  # half the predictions need resizing to the GT
        Image.fromarray(pred).resize(size).save(root / "pred" / f"{i}.png")
    return root


def _pysodmetrics(root) -> dict:
    import cv2

    metrics = {
        "sm": sod.Smeasure(),
        "em": sod.Emeasure(),
        "fm": sod.Fmeasure(),
        "wfm": sod.WeightedFmeasure(),
        "mae": sod.MAE(),
        "hce": sod.HumanCorrectionEffortMeasure(),
    }
    for gt_path in sorted((root / "gt").iterdir()):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(root / "pred" / gt_path.name), cv2.IMREAD_GRAYSCALE)
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for metric in metrics.values():
            metric.step(pred=pred, gt=gt)
    em, fm = metrics["em"].get_results()["em"], metrics["fm"].get_results()["fm"]
    return {
        "Sm": metrics["sm"].get_results()["sm"],
        "meanEm": em["curve"].mean(),
        "maxEm": em["curve"].max(),
        "adpEm": em["adp"],
        "maxFm": fm["curve"].max(),
        "meanFm": fm["curve"].mean(),
        "adpFm": fm["adp"],
        "wFm": metrics["wfm"].get_results()["wfm"],
        "MAE": metrics["mae"].get_results()["mae"],
        "HCE": metrics["hce"].get_results()["hce"],
    }


@pytest.mark.filterwarnings("ignore:This class will be removed")  # pysodmetrics' own Fmeasure notice
def test_evaluate_matches_pysodmetrics(folders, tmp_path):
    out = tmp_path / "scores.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--pred",
            str(folders / "pred"),
            "--gt",
            str(folders / "gt"),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| Sm | meanEm" in result.stdout
    ours = json.loads(out.read_text())
    assert set(ours) == PYSOD_KEYS | OFFICIAL_EXTRA_KEYS
    expected = _pysodmetrics(folders)
    for key in PYSOD_KEYS:
        assert ours[key] == pytest.approx(float(expected[key]), rel=1e-12, abs=1e-12), key
    assert 0.3 < ours["Sm"] < 1 and ours["HCE"] > 0


def test_perfect_predictions_score_perfectly(folders, tmp_path):
    from training.metrics import MetricSet

    metrics = MetricSet()
    for gt_path in sorted((folders / "gt").iterdir()):
        gt = np.asarray(Image.open(gt_path))
        binary = np.where(gt > 128, 255, 0).astype(np.uint8)
        metrics.step(binary, binary)
    results = metrics.results()
    assert results["Sm"] == pytest.approx(1.0) and results["MAE"] == 0.0 and results["HCE"] == 0.0


def test_missing_predictions_are_listed(folders, tmp_path):
    (tmp_path / "pred").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(folders / "gt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no prediction for 6 ground truth(s)" in result.stderr


def test_unreadable_file_is_one_line_and_the_rest_is_scored(folders, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folders, root)
    data = (root / "pred" / "3.png").read_bytes()
    (root / "pred" / "3.png").write_bytes(data[: len(data) // 2])  # truncated
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--pred", str(root / "pred"), "--gt", str(root / "gt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert "evaluate: skipped" in result.stderr and "3.png" in result.stderr
    assert "5 image(s), 1 unreadable skipped" in result.stdout


def _square(size=64, lo=16, hi=48) -> np.ndarray:
    gt = np.zeros((size, size), np.uint8)
    gt[lo:hi, lo:hi] = 255
    return gt


def test_mse_by_hand():
    from training.boundary_metrics import MSE

    metric = MSE()
    metric.step(np.full((8, 8), 128, np.uint8), np.full((8, 8), 255, np.uint8))  # constant: not normalised
    metric.step(_square(8, 2, 6), _square(8, 2, 6))
    assert metric.get_results()["mse"] == pytest.approx(((1 - 128 / 255) ** 2 + 0) / 2)


def test_mean_boundary_accuracy_by_hand():
    """64x64, a 32x32 square: every radius is 1 ((64 + 64) / 300 < 2), the 3x3 disk is a cross;
    the band is the outer ring without corners (128 px) plus the inner ring (124 px)."""
    from training.boundary_metrics import BoundaryAccuracy

    metric = BoundaryAccuracy()
    metric.step(_square(), _square())
    metric.step(np.zeros((64, 64), np.uint8), _square())  # right only on the outer ring
    assert metric.values == [1.0, pytest.approx(128 / 252)]
    assert metric.get_results()["mba"] == pytest.approx((1 + 128 / 252) / 2)


def test_boundary_iou_by_hand():
    """d = round(0.02 * 64 * sqrt 2) = 2: the square's boundary is a 2-pixel band, 1024 - 28² = 240 px.
    A perfect prediction has IoU 1 at every threshold but t = 0, where all 4096 pixels count."""
    from training.boundary_metrics import BoundaryIoU

    metric = BoundaryIoU()
    metric.step(_square(), _square())
    curve = metric.get_results()["biou"]["curve"]
    assert curve.shape == (256,) and np.all(curve[:255] == 1.0) and curve[255] == pytest.approx(240 / 4096)
    empty = BoundaryIoU()
    empty.step(np.zeros((64, 64), np.uint8), _square())  # nothing predicted: IoU 0 down to t = 1
    assert np.all(empty.curves[0][:255] == 0.0)


def test_parallel_scores_equal_one_process_and_metrics_select(folders):
    from training.evaluate import evaluate_folders

    one = evaluate_folders(folders / "pred", folders / "gt", workers=1).results()
    two = evaluate_folders(folders / "pred", folders / "gt", workers=2).results()
    assert one == two  # identical numbers, not approximately equal
    subset = evaluate_folders(folders / "pred", folders / "gt", metrics=["s", "BIoU"], workers=2).results()
    assert set(subset) == {"Sm", "maxBIoU", "meanBIoU"} and subset["Sm"] == one["Sm"]
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_folders(folders / "pred", folders / "gt", metrics=["IoU"])


def test_hce_conventions_differ_on_a_faint_prediction():
    """A correct but faint prediction (object at 100 of 255): PySOD normalises it to a perfect
    map (HCE 0); the DIS convention thresholds raw values at 128 and misses the whole object."""
    from training.metrics import MetricSet

    gt, faint = _square(), np.where(_square() > 0, 100, 0).astype(np.uint8)
    pysod, dis = MetricSet(["HCE"]), MetricSet(["HCE"], hce_convention="dis")
    pysod.step(faint, gt), dis.step(faint, gt)
    assert pysod.results()["HCE"] == 0.0 and dis.results()["HCE"] > 0
    same = MetricSet(["HCE"], hce_convention="dis")
    same.step(np.zeros_like(gt), gt)  # DIS on the faint map = PySOD on an empty prediction
    assert dis.results()["HCE"] == same.results()["HCE"]


@pytest.mark.parametrize("package", ["training", "birefnet_training"])
def test_spawned_workers_give_exactly_the_sequential_numbers(folders, package, monkeypatch):
    """Workers are spawned, never forked (a fork after OpenCV/torch started their threads can hang), and
    import the worker module by the name the caller imported the package under (multiprocessing sends
    functions by module name): the repository folder's `training` or the installed `birefnet_training`."""
    evaluate = importlib.import_module(f"{package}.evaluate")
    start_methods, get_context = [], multiprocessing.get_context
    monkeypatch.setattr(
        multiprocessing, "get_context", lambda method=None: start_methods.append(method) or get_context(method)
    )
    sequential = evaluate.evaluate_folders(folders / "pred", folders / "gt", workers=1).results()
    assert start_methods == []
    parallel = evaluate.evaluate_folders(folders / "pred", folders / "gt", workers=3).results()
    assert start_methods == ["spawn"]
    assert parallel == sequential and set(parallel) == PYSOD_KEYS | OFFICIAL_EXTRA_KEYS


@pytest.mark.parametrize("package", ["training", "birefnet_training"])
def test_worker_module_imports_neither_torch_nor_the_library(package):
    """A spawned worker starts fast, and cannot find another `birefnet` (a checkout folder of that name
    holds the ComfyUI pack) when it never imports the library: checked in a real spawned process."""
    report = (
        f"__import__('importlib').import_module('{package}.scoring') and "
        "sorted(m for m in __import__('sys').modules if m.split('.')[0] in ('torch', 'birefnet'))"
    )
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(eval, report).result(timeout=120) == []


def test_missing_folders_and_a_json_folder_are_one_line_before_the_work(folders, tmp_path, capsys):
    from training.__main__ import main

    gt, pred = str(folders / "gt"), str(folders / "pred")
    earlier = tmp_path / "scores.json"
    earlier.write_text('{"Sm": 0.9}')  # another run's scores: never replaced
    for args, named in (
        (["--pred", str(tmp_path / "nowhere"), "--gt", gt], "--pred"),
        (["--pred", pred, "--gt", str(tmp_path / "nowhere")], "--gt"),
        (["--pred", pred, "--gt", gt, "--json", str(tmp_path)], "--json"),
        (["--pred", pred, "--gt", gt, "--json", str(tmp_path / "no" / "s.json")], "--json"),
        (["--pred", pred, "--gt", gt, "--json", str(earlier)], "--json"),
    ):
        assert main(["evaluate", *args, "--workers", "1"]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip().startswith(f"training: {named} ") and len(captured.err.strip().splitlines()) == 1
        assert "image(s)" not in captured.out  # refused before scoring
    assert earlier.read_text() == '{"Sm": 0.9}'


def test_saved_predictions_of_several_folders_never_overwrite(tmp_path, b0_weights):
    from training.evaluate import evaluate_model
    from training.synthetic import write_dataset

    data = [write_dataset(tmp_path / name / "test", 1, seed, (48, 40)) for name, seed in (("a", 1), ("b", 2))]
    preds = tmp_path / "preds"
    assert evaluate_model(b0_weights, data, save_pred=preds).count == 2
    saved = sorted(p.relative_to(preds).as_posix() for p in preds.rglob("*.png"))
    assert saved == ["test/00000.png", "test_2/00000.png"]  # the same stem in each folder, both kept
    before = (preds / "test" / "00000.png").read_bytes()
    with pytest.raises(ValueError, match="00000.png exists .*another --save-pred"):
        evaluate_model(b0_weights, data, save_pred=preds)
    assert (preds / "test" / "00000.png").read_bytes() == before


def test_masks_with_their_shape_in_the_alpha_are_read_by_it(folders, tmp_path):
    """Ground truths kept as cut-outs (object colours, the shape in the alpha) score as their grey
    copies (read by brightness, perfect predictions scored S 0.27). An opaque alpha (a grey mask saved
    as RGBA or grey+alpha) keeps the grey; an all-transparent file shows nothing: an empty mask."""
    from training.evaluate import evaluate_folders
    from training.scoring import read_mask_array

    rng = np.random.default_rng(0)
    (tmp_path / "rgba").mkdir()
    for path in sorted((folders / "gt").iterdir()):
        alpha = np.asarray(Image.open(path).convert("L"))
        colours = rng.integers(0, 256, (*alpha.shape, 3), dtype=np.uint8)
        Image.fromarray(np.dstack([colours, alpha]), "RGBA").save(tmp_path / "rgba" / path.name)
    for pred in (folders / "pred", folders / "gt"):  # noisy, and perfect predictions
        cutouts = evaluate_folders(pred, tmp_path / "rgba", workers=1).results()
        assert cutouts == evaluate_folders(pred, folders / "gt", workers=1).results()

    shape = _square(16, 4, 12)
    Image.merge("LA", [Image.fromarray(shape), Image.new("L", (16, 16), 255)]).save(tmp_path / "opaque.png")
    Image.merge("LA", [Image.new("L", (16, 16), 80), Image.fromarray(shape)]).save(tmp_path / "layer.png")
    Image.new("RGBA", (16, 16), (255, 255, 255, 0)).save(tmp_path / "empty.png")
    assert (read_mask_array(tmp_path / "opaque.png") == shape).all()
    assert (read_mask_array(tmp_path / "layer.png") == shape).all()
    assert read_mask_array(tmp_path / "empty.png").max() == 0


def test_an_empty_gt_folder_is_named_with_its_mask_folder(folders, tmp_path, capsys):
    """--gt naming a dataset folder (im/ + gt/) or an empty folder: one line naming it, and the
    mask sub-folder when there is one, not "no pairs were evaluated" after the work."""
    from training.__main__ import main

    (tmp_path / "empty").mkdir()
    for gt, fix in ((folders, f"name --gt {folders / 'gt'}"), (tmp_path / "empty", "ground-truth mask files")):
        assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(gt), "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"training: --gt {gt}: no mask files") and fix in err
