"""`python -m training evaluate` equals pysodmetrics on the same files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import py_sod_metrics as sod
import pytest
from PIL import Image

from conftest import ROOT

KEYS = {"Sm", "meanEm", "maxEm", "adpEm", "maxFm", "meanFm", "adpFm", "wFm", "MAE", "HCE"}


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

    metrics = {"sm": sod.Smeasure(), "em": sod.Emeasure(), "fm": sod.Fmeasure(), "wfm": sod.WeightedFmeasure(),
               "mae": sod.MAE(), "hce": sod.HumanCorrectionEffortMeasure()}
    for gt_path in sorted((root / "gt").iterdir()):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(root / "pred" / gt_path.name), cv2.IMREAD_GRAYSCALE)
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for metric in metrics.values():
            metric.step(pred=pred, gt=gt)
    em, fm = metrics["em"].get_results()["em"], metrics["fm"].get_results()["fm"]
    return {"Sm": metrics["sm"].get_results()["sm"], "meanEm": em["curve"].mean(), "maxEm": em["curve"].max(),
            "adpEm": em["adp"], "maxFm": fm["curve"].max(), "meanFm": fm["curve"].mean(), "adpFm": fm["adp"],
            "wFm": metrics["wfm"].get_results()["wfm"], "MAE": metrics["mae"].get_results()["mae"],
            "HCE": metrics["hce"].get_results()["hce"]}


@pytest.mark.filterwarnings("ignore:This class will be removed")  # pysodmetrics' own Fmeasure notice
def test_evaluate_matches_pysodmetrics(folders, tmp_path):
    out = tmp_path / "scores.json"
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", "--pred", str(folders / "pred"),
                             "--gt", str(folders / "gt"), "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| Sm | meanEm" in result.stdout
    ours = json.loads(out.read_text())
    assert set(ours) == KEYS
    expected = _pysodmetrics(folders)
    for key in KEYS:
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
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", "--pred", str(tmp_path / "pred"),
                             "--gt", str(folders / "gt")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no prediction for 6 ground truth(s)" in result.stderr


def test_unreadable_file_is_one_line_and_the_rest_is_scored(folders, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folders, root)
    data = (root / "pred" / "3.png").read_bytes()
    (root / "pred" / "3.png").write_bytes(data[: len(data) // 2])  # truncated
    result = subprocess.run([sys.executable, "-m", "training", "evaluate", "--pred", str(root / "pred"),
                             "--gt", str(root / "gt")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert "evaluate: skipped" in result.stderr and "3.png" in result.stderr
    assert "5 image(s), 1 unreadable skipped" in result.stdout
