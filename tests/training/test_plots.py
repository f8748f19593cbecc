import struct
from pathlib import Path

import numpy as np
import pytest

from stream_detector.training.metrics import binary_metrics, reliability_bins, roc_auc, roc_curve
from stream_detector.training.plots import plot_confusion_matrix, plot_reliability, plot_roc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """A real PNG of a sensible size: signature, IHDR chunk first, a few hundred pixels each way."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 200 <= width <= 2000 and 200 <= height <= 2000
    assert 5_000 < len(data) < 2_000_000
    assert data[-8:-4] == b"IEND"


@pytest.fixture(scope="module")
def example() -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, 400)
    scores = np.clip(generator.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    return labels, scores


def test_plot_roc_writes_png_into_new_folders(tmp_path, example):
    labels, scores = example
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    target = tmp_path / "reports" / "nested" / "roc.png"
    written = plot_roc(
        {
            "model": (false_positive_rate, true_positive_rate, roc_auc(labels, scores)),
            "no area": ([0.0, 0.5, 1.0], [0.0, 0.8, 1.0], None),
        },
        target,
    )
    assert written == target
    assert_png(target)


def test_plot_confusion_matrix(tmp_path, example):
    labels, scores = example
    rows = binary_metrics(labels, scores)["confusion_matrix_rows"]
    target = tmp_path / "out" / "confusion.png"
    plot_confusion_matrix(rows, target, "Test set")
    assert_png(target)
    # A class with no samples (a row of zeros) must still draw instead of dividing by zero.
    plot_confusion_matrix([[0, 0], [3, 5]], tmp_path / "empty_row.png", "Only fakes")
    assert_png(tmp_path / "empty_row.png")


def test_plot_confusion_matrix_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="2x2"):
        plot_confusion_matrix([1, 2, 3, 4], tmp_path / "bad.png", "Bad")
    assert not (tmp_path / "bad.png").exists()


def test_plot_reliability_with_empty_bins(tmp_path, example):
    labels, scores = example
    target = tmp_path / "out" / "reliability.png"
    plot_reliability(reliability_bins(labels, scores), target, "Calibration")
    assert_png(target)
    # Scores in a single bin leave the other bins empty (None means and fractions).
    sparse = reliability_bins([0, 1, 1], [0.9, 0.95, 0.92], bins=10)
    plot_reliability(sparse, tmp_path / "sparse.png", "One bin")
    assert_png(tmp_path / "sparse.png")


def test_plots_accept_string_paths(tmp_path):
    target = tmp_path / "as_string.png"
    plot_roc({"line": ([0.0, 1.0], [0.0, 1.0], 0.5)}, str(target))
    assert_png(target)
