import cv2
import numpy as np
import pytest

from stream_detector.training.confounds import (
    confound_audit,
    jpeg_blockiness,
    laplacian_variance,
    spearman,
    stratified_auc,
)
from stream_detector.training.dataset import jpeg


def test_a_model_that_reads_a_confound_loses_its_auc_within_strata():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    # The statistic separates the classes; the "model" reads only the statistic.
    statistic = rng.normal(0, 1, 1000) + labels * 1.5
    shortcut_scores = statistic + rng.normal(0, 0.1, 1000)
    audit = confound_audit(labels, shortcut_scores, {"sharpness": statistic})
    assert audit["model_auc"] > 0.8
    assert audit["sharpness"]["statistic_auc"] > 0.8
    assert audit["sharpness"]["model_stratified_auc"] < audit["model_auc"] - 0.1
    assert audit["sharpness"]["spearman_real"] > 0.9 and audit["sharpness"]["spearman_fake"] > 0.9
    # A model that reads something independent of the statistic keeps its AUC within strata.
    honest_scores = labels * 1.5 + rng.normal(0, 1, 1000)
    honest = confound_audit(labels, honest_scores, {"sharpness": statistic})
    assert abs(honest["sharpness"]["model_stratified_auc"] - honest["model_auc"]) < 0.08
    assert abs(honest["sharpness"]["spearman_real"]) < 0.15


def test_statistic_auc_is_reported_in_its_better_direction():
    labels = np.repeat([0, 1], 50)
    falling = -np.arange(100.0)  # fakes lower
    audit = confound_audit(labels, np.arange(100.0), {"brightness": falling})
    assert audit["brightness"]["statistic_auc"] == 1.0 and not audit["brightness"]["fake_is_higher"]


def test_strata_with_one_class_are_left_out():
    labels = np.repeat([0, 1, 0, 1, 0], 4)
    statistic = np.arange(20.0)  # every quintile holds one class only
    result = stratified_auc(labels, np.arange(20.0), statistic)
    assert result["mean_auc"] is None and result["strata"] == []


def test_sharpness_falls_with_blur_and_blockiness_rises_with_jpeg():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 1.0)
    assert laplacian_variance(cv2.GaussianBlur(image, (0, 0), 2.0)) < laplacian_variance(image) / 3
    # A crop cut at an odd offset: the grid phase is found whatever it is.
    compressed = jpeg(image, 20)[3:, 5:]
    assert jpeg_blockiness(compressed) > jpeg_blockiness(image[3:, 5:]) + 0.1


def test_spearman_is_rank_based_and_none_when_constant():
    x = np.arange(10.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert spearman(x, np.ones(10)) is None
