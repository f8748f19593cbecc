import json
import math

import numpy as np
import pytest

from stream_detector.training.metrics import (
    binary_metrics,
    real_score_at_false_alarm_rate,
    reliability_bins,
    roc_auc,
    roc_curve,
)


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Every (fake, real) pair: 1 if the fake scores higher, 1/2 on a tie."""
    fake = scores[labels == 1][:, None]
    real = scores[labels == 0][None, :]
    return float(((fake > real) + 0.5 * (fake == real)).mean())


def random_tied_set(seed: int, count: int = 300) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 2, count)
    # Scores on a coarse grid so that ties, within and across classes, are common.
    scores = np.round(np.clip(generator.normal(0.4 + 0.2 * labels, 0.2), 0.0, 1.0), 1)
    return labels, scores


def assert_plain_json(value: object) -> None:
    """Only built-in types, so json.dump and equality checks never meet a numpy scalar."""
    if isinstance(value, dict):
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (int, float), f"{value!r} is {type(value)}"


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_pair_count_with_ties(seed):
    labels, scores = random_tied_set(seed)
    assert len(np.unique(scores)) < 15  # the ties are really there
    expected = brute_force_auc(labels, scores)
    assert binary_metrics(labels, scores)["roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    # The ROC joined by straight lines has the same area: a tie is a diagonal step worth one half.
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    assert np.trapezoid(true_positive_rate, false_positive_rate) == pytest.approx(expected, abs=1e-12)


def test_roc_curve_shape_and_order():
    false_positive_rate, true_positive_rate, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    np.testing.assert_allclose(false_positive_rate, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(true_positive_rate, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])


def test_roc_curve_is_monotone_and_ends_at_one_one():
    labels, scores = random_tied_set(7)
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    assert (false_positive_rate[0], true_positive_rate[0]) == (0.0, 0.0)
    assert (false_positive_rate[-1], true_positive_rate[-1]) == (1.0, 1.0)
    assert np.all(np.diff(false_positive_rate) >= 0) and np.all(np.diff(true_positive_rate) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert len(thresholds) == len(np.unique(scores)) + 1


def test_roc_curve_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        roc_curve([1, 1, 1], [0.2, 0.5, 0.9])


def test_perfect_separation():
    result = binary_metrics([0, 0, 0, 1, 1], [0.0, 0.2, 0.3, 0.7, 1.0])
    assert result["roc_auc"] == 1.0
    assert result["eer"] == 0.0
    assert 0.3 < result["eer_threshold"] <= 0.7
    assert result["tpr_at_1pct_fpr"] == 1.0
    assert result["accuracy"] == result["precision"] == result["recall"] == result["f1"] == 1.0


def test_reversed_scores():
    result = binary_metrics([0, 0, 0, 1, 1], [0.7, 0.8, 1.0, 0.0, 0.2])
    assert result["roc_auc"] == 0.0
    assert result["eer"] == 1.0
    assert result["tpr_at_1pct_fpr"] == 0.0
    assert result["accuracy"] == 0.0


def test_all_scores_tied_is_chance():
    result = binary_metrics([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4])
    assert result["roc_auc"] == 0.5
    assert result["eer"] == pytest.approx(0.5)


def test_eer_on_a_roc_point():
    # ROC: (0, 0) -> (0, 0.5) -> (0.5, 0.5) -> (0.5, 1) -> (1, 1); FPR = FNR = 0.5 at threshold 0.6.
    result = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert result["eer"] == pytest.approx(0.5)
    assert result["eer_threshold"] == pytest.approx(0.6)


def test_eer_interpolated_between_roc_points():
    # Between (0, 2/3) at 0.8 and (1/2, 2/3) at 0.6 the line meets FPR = FNR two thirds of the way.
    result = binary_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9])
    assert result["eer"] == pytest.approx(1 / 3)
    assert result["eer_threshold"] == pytest.approx(0.8 - 2 / 3 * 0.2)


def test_eer_of_two_gaussians_matches_theory():
    # Real ~ N(-1, 1), fake ~ N(+1, 1): the EER is at 0, where both error rates are Phi(-1).
    # A sigmoid maps the values into [0, 1] without changing their order, so the ROC is unchanged.
    generator = np.random.default_rng(0)
    count = 20_000
    values = np.concatenate((generator.normal(-1.0, 1.0, count), generator.normal(1.0, 1.0, count)))
    labels = np.repeat([0, 1], count)
    result = binary_metrics(labels, 1.0 / (1.0 + np.exp(-values)))
    assert result["eer"] == pytest.approx(0.5 * math.erfc(1.0 / math.sqrt(2.0)), abs=0.01)
    assert result["eer_threshold"] == pytest.approx(0.5, abs=0.03)


def test_confusion_matrix_by_hand():
    # threshold 0.5, score >= threshold is fake:
    #   label 0: 0.1 TN, 0.5 FP (on the threshold), 0.7 FP, 0.2 TN
    #   label 1: 0.9 TP, 0.49 FN, 0.5 TP
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.5, 0.7, 0.2, 0.9, 0.49, 0.5]
    result = binary_metrics(labels, scores)
    assert result["confusion_matrix"] == {
        "true_negative": 2,
        "false_positive": 2,
        "false_negative": 1,
        "true_positive": 2,
    }
    assert result["confusion_matrix_rows"] == [[2, 2], [1, 2]]
    assert (result["count"], result["positives"], result["negatives"]) == (7, 3, 4)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result["threshold"] == 0.5
    expected_brier = np.mean((np.array(scores) - np.array(labels)) ** 2)
    assert result["brier"] == pytest.approx(expected_brier)


def test_threshold_moves_the_confusion_matrix():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.3, 0.35, 0.8]
    assert binary_metrics(labels, scores, threshold=0.5)["confusion_matrix_rows"] == [[2, 0], [1, 1]]
    assert binary_metrics(labels, scores, threshold=0.3)["confusion_matrix_rows"] == [[1, 1], [0, 2]]


def test_zero_denominators_give_zero():
    # Nothing predicted fake: precision has no denominator. No fakes at all: recall has none either.
    nothing_flagged = binary_metrics([0, 1, 0], [0.1, 0.2, 0.3])
    assert nothing_flagged["precision"] == 0.0 and nothing_flagged["recall"] == 0.0
    assert nothing_flagged["f1"] == 0.0
    only_real = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert only_real["precision"] == only_real["recall"] == only_real["f1"] == 0.0
    assert only_real["accuracy"] == 1.0


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_leaves_ranking_metrics_none(label):
    result = binary_metrics([label] * 4, [0.1, 0.4, 0.6, 0.9])
    for key in ("roc_auc", "eer", "eer_threshold", "tpr_at_1pct_fpr"):
        assert result[key] is None
    assert roc_auc([label] * 4, [0.1, 0.4, 0.6, 0.9]) is None
    assert result["brier"] > 0 and result["ece"] > 0


@pytest.mark.parametrize(("high_reals", "expected"), [(2, 0.7), (3, 0.3)])
def test_tpr_at_one_percent_fpr(high_reals, expected):
    # 200 reals: `high_reals` score 0.95, the rest 0.1. 100 fakes: 30 at 0.99, 40 at 0.9, 30 at 0.05.
    # Two high reals are exactly 1% FPR, which is allowed, so the threshold can go down to 0.9 and
    # catch 70 fakes; three are 1.5%, so only the 30 fakes above every real count.
    labels = np.repeat([0, 0, 1, 1, 1], [high_reals, 200 - high_reals, 30, 40, 30])
    scores = np.repeat([0.95, 0.1, 0.99, 0.9, 0.05], [high_reals, 200 - high_reals, 30, 40, 30])
    assert binary_metrics(labels, scores)["tpr_at_1pct_fpr"] == pytest.approx(expected)


def test_perfectly_calibrated_scores_have_small_ece():
    generator = np.random.default_rng(0)
    scores = generator.random(200_000)
    labels = (generator.random(200_000) < scores).astype(int)
    result = binary_metrics(labels, scores)
    assert result["ece"] < 0.01
    # With labels ~ Bernoulli(score) the expected Brier score is E[s(1 - s)] = 1/6 for uniform s.
    assert result["brier"] == pytest.approx(1 / 6, abs=0.005)


def test_overconfident_scores_have_large_ece():
    # The true p(fake) is uniform, but the reported score is pushed towards 0 and 1.
    generator = np.random.default_rng(1)
    probabilities = np.clip(generator.random(50_000), 1e-6, 1 - 1e-6)
    labels = (generator.random(50_000) < probabilities).astype(int)
    logits = np.log(probabilities / (1.0 - probabilities))
    overconfident = 1.0 / (1.0 + np.exp(-4.0 * logits))
    calibrated_ece = binary_metrics(labels, probabilities)["ece"]
    overconfident_ece = binary_metrics(labels, overconfident)["ece"]
    assert overconfident_ece > 0.1
    assert overconfident_ece > 10 * calibrated_ece


def test_ece_by_hand():
    # Two bins: [0, 0.5) holds 0.2 and 0.4 with one fake (|0.3 - 0.5| = 0.2); [0.5, 1] holds 0.9 with
    # one fake (|0.9 - 1| = 0.1). Weighted: 2/3 * 0.2 + 1/3 * 0.1.
    result = binary_metrics([0, 1, 1], [0.2, 0.4, 0.9], bins=2)
    assert result["ece"] == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.1)


def test_reliability_bins():
    bins = reliability_bins([0, 1, 1, 0, 1], [0.0, 0.2, 0.4, 1.0, 1.0], bins=5)
    assert len(bins) == 5
    assert [entry["count"] for entry in bins] == [1, 1, 1, 0, 2]
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    for entry, next_entry in zip(bins, bins[1:], strict=False):
        assert entry["upper"] == next_entry["lower"]
    # A score on an edge belongs to the bin that starts there; 1.0 belongs to the last bin.
    assert bins[1]["mean_score"] == pytest.approx(0.2) and bins[1]["fraction_fake"] == 1.0
    assert bins[2]["mean_score"] == pytest.approx(0.4)
    assert bins[3]["mean_score"] is None and bins[3]["fraction_fake"] is None
    assert bins[4]["mean_score"] == 1.0 and bins[4]["fraction_fake"] == 0.5
    assert_plain_json(bins)


def test_every_score_lands_in_the_bin_its_edges_name():
    edges = np.linspace(0.0, 1.0, 16)
    bins = reliability_bins(np.zeros(16, dtype=int), edges, bins=15)
    assert [entry["count"] for entry in bins] == [1] * 14 + [2]
    for entry in bins:
        assert entry["lower"] <= entry["mean_score"] <= entry["upper"]


def test_result_is_plain_json():
    labels, scores = random_tied_set(3)
    result = binary_metrics(labels.tolist(), scores.tolist(), threshold=0.45, bins=10)
    assert_plain_json(result)
    assert json.loads(json.dumps(result)) == result
    assert set(result) == {
        "count",
        "positives",
        "negatives",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "confusion_matrix",
        "confusion_matrix_rows",
        "roc_auc",
        "eer",
        "eer_threshold",
        "tpr_at_1pct_fpr",
        "brier",
        "ece",
        "threshold",
    }


def test_accepts_bool_labels_and_float_labels():
    scores = [0.1, 0.8, 0.3, 0.9]
    expected = binary_metrics([0, 1, 0, 1], scores)
    assert binary_metrics(np.array([False, True, False, True]), scores) == expected
    from_floats = binary_metrics([0.0, 1.0, 0.0, 1.0], np.array(scores, dtype=np.float32))
    assert from_floats["confusion_matrix"] == expected["confusion_matrix"]
    assert from_floats["roc_auc"] == expected["roc_auc"]
    assert from_floats["brier"] == pytest.approx(expected["brier"])
    assert_plain_json(from_floats)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, 0.9], "length"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.9]], "1-D"),
        ([0, 2], [0.1, 0.9], "label 1 is 2"),
        ([0, 0.5], [0.1, 0.9], "0 \\(real\\) or 1 \\(fake\\)"),
        ([0, float("nan")], [0.1, 0.9], "label 1"),
        (["real", "fake"], [0.1, 0.9], "labels must be numbers"),
        ([0, 1], [0.1, 1.5], "score 1 is 1.5"),
        ([0, 1], [-0.1, 0.5], "score 0"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([0, 1], [0.1, float("inf")], "finite"),
        ([0, 1], ["0.1", "0.9"], "scores must be numbers"),
    ],
)
def test_bad_input_raises_one_line_value_error(labels, scores, message):
    for function in (binary_metrics, roc_curve, reliability_bins, roc_auc):
        with pytest.raises(ValueError, match=message) as error:
            function(labels, scores)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("threshold", float("nan")), ("threshold", 1.5), ("threshold", "high"), ("bins", 0), ("bins", 2.5)],
)
def test_bad_threshold_or_bins_raise(keyword, value):
    with pytest.raises(ValueError, match=keyword):
        binary_metrics([0, 1], [0.2, 0.8], **{keyword: value})


def test_scene_paired_compares_each_fake_with_the_real_of_its_own_group():
    from stream_detector.training.metrics import scene_paired

    labels = [0, 1, 0, 1, 0, 1, 1]
    scores = [0.2, 0.6, 0.7, 0.5, 0.4, 0.4, 0.9]
    groups = ["a", "a", "b", "b", "c", "c", "alone"]
    result = scene_paired(labels, scores, groups)
    # a: fake above; b: fake below; c: a tie counts half; the fake alone in its group is not a pair.
    assert result["pairs"] == 3
    assert result["fake_above_its_real"] == pytest.approx(0.5)
    assert result["mean_difference"] == pytest.approx((0.4 - 0.2 + 0.0) / 3)
    # A model that scores only the scene: a group's real and fake alike, whatever the plain AUC.
    assert (
        scene_paired([0, 1, 0, 1], [0.1, 0.1, 0.9, 0.9], ["x", "x", "y", "y"])["fake_above_its_real"] == 0.5
    )
    assert scene_paired([0, 1], [0.1, 0.9], ["x", "y"]) is None
    with pytest.raises(ValueError, match="groups"):
        scene_paired([0, 1], [0.1, 0.9], ["x"])


def test_the_false_alarm_threshold_leaves_one_real_in_a_hundred_at_or_above_it():
    real_scores = np.linspace(0.0, 0.99, 100)
    threshold = real_score_at_false_alarm_rate(real_scores)
    assert threshold == pytest.approx(np.quantile(real_scores, 0.99))
    assert int(np.count_nonzero(real_scores >= threshold)) == 1
    assert real_score_at_false_alarm_rate(real_scores, rate=0.5) == pytest.approx(0.495)
    with pytest.raises(ValueError, match="no real scores"):
        real_score_at_false_alarm_rate([])
