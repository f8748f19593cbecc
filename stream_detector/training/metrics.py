"""Evaluation metrics for a binary fake detector, in plain numpy.

Conventions used throughout: label 1 means fake, label 0 means real, and a score is the model's
p(fake) in [0, 1]. A sample is predicted fake when ``score >= threshold``. Every function checks its
inputs the same way and raises ``ValueError`` with a one-line message when they cannot be used.

``binary_metrics`` returns only plain Python ints, floats, lists and ``None``, so its result can be
written with ``json.dump`` as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

# The operating point reported as "TPR at 1% FPR": a detector that flags one real video in a hundred
# is about the most a human reviewer will tolerate, so recall there is the number that matters.
FALSE_POSITIVE_RATE_LIMIT_PERCENT = 1
# Per real face, at the live FAKE threshold's face half (train.py's record, evaluate.py's report,
# evaluate_clips.py --choose-threshold all measure it with real_score_at_false_alarm_rate).
FALSE_ALARM_RATE = 0.01


def real_score_at_false_alarm_rate(real_scores: ArrayLike, rate: float = FALSE_ALARM_RATE) -> float:
    """The score that a share ``1 - rate`` of the real faces' scores stay under."""
    scores = np.asarray(real_scores).reshape(-1)
    if scores.size == 0:
        raise ValueError("no real scores to take a false-alarm threshold from")
    return float(np.quantile(scores, 1.0 - rate))


def _is_real_number_dtype(dtype: np.dtype) -> bool:
    # Strings, objects and complex numbers would convert to float badly or not at all.
    return dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _validated(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 0/1 and scores as float64, both 1-D and of equal length, or a ValueError."""
    label_array = np.asarray(labels)
    score_array = np.asarray(scores)
    if label_array.ndim != 1 or score_array.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D, got shapes {label_array.shape} and {score_array.shape}"
        )
    if label_array.shape[0] != score_array.shape[0]:
        raise ValueError(
            f"labels and scores differ in length: {label_array.shape[0]} labels, {score_array.shape[0]} scores"
        )
    if label_array.shape[0] == 0:
        raise ValueError("labels and scores are empty")
    if not _is_real_number_dtype(label_array.dtype):
        raise ValueError(f"labels must be numbers 0 or 1, got dtype {label_array.dtype}")
    if not _is_real_number_dtype(score_array.dtype):
        raise ValueError(f"scores must be numbers in [0, 1], got dtype {score_array.dtype}")
    # Compare as float so that 1.0 and True are accepted but 0.5 and NaN are not.
    label_float = label_array.astype(np.float64)
    not_binary = ~((label_float == 0.0) | (label_float == 1.0))
    if not_binary.any():
        first = int(np.flatnonzero(not_binary)[0])
        raise ValueError(
            f"labels must be 0 (real) or 1 (fake); label {first} is {label_array[first].item()!r}"
        )
    score_float = score_array.astype(np.float64)
    # NaN fails both comparisons, so this one test also rejects NaN and the infinities.
    out_of_range = ~((score_float >= 0.0) & (score_float <= 1.0))
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"scores must be finite and within [0, 1]; score {first} is {score_float[first].item()!r}"
        )
    return label_float.astype(np.int64), score_float


def _validated_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _validated_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number within [0, 1], got {threshold!r}") from None
    # NaN fails both comparisons, so it is rejected here along with the infinities.
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be finite and within [0, 1], got {threshold!r}")
    return value


def _both_classes(labels: np.ndarray) -> bool:
    positives = int(labels.sum())
    return 0 < positives < labels.shape[0]


def _roc_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts and thresholds of the ROC, starting at "nothing is fake"."""
    # Stable sort on descending score; the order inside a tie does not matter because only the
    # last index of each run of equal scores becomes a point (a tie moves FPR and TPR together).
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    run_ends = np.append(np.flatnonzero(np.diff(sorted_scores) != 0.0), sorted_scores.shape[0] - 1)
    true_positives = np.cumsum(labels[order])[run_ends]
    false_positives = (run_ends + 1) - true_positives
    # The first point has an infinite threshold: every score is below it, so nothing is called fake.
    return (
        np.concatenate(([0], false_positives)),
        np.concatenate(([0], true_positives)),
        np.concatenate(([np.inf], sorted_scores[run_ends])),
    )


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC of already validated inputs holding both classes."""
    false_positives, true_positives, thresholds = _roc_counts(labels, scores)
    return false_positives / false_positives[-1], true_positives / true_positives[-1], thresholds


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve as (false_positive_rates, true_positive_rates, thresholds).

    One point per distinct score, in order of decreasing threshold, with ``score >= threshold``
    predicted fake. The curve starts at (0, 0) with threshold ``inf`` and ends at (1, 1) with the
    lowest score as threshold. Both classes must be present, otherwise one of the rates has no
    denominator and a ValueError is raised.
    """
    label_array, score_array = _validated(labels, scores)
    if not _both_classes(label_array):
        raise ValueError("the ROC curve needs both real (0) and fake (1) labels")
    return _roc_points(label_array, score_array)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span (as the Mann-Whitney U needs)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Each run of equal values spans ranks start+1 .. end+1; all of them get the midpoint.
    run_starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    run_ends = np.append(run_starts[1:], sorted_values.shape[0]) - 1
    run_lengths = run_ends - run_starts + 1
    run_ranks = (run_starts + run_ends) / 2.0 + 1.0
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, run_lengths)
    return ranks


def _mann_whitney_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a fake > score of a real) + 0.5 P(tie), from rank sums in O(n log n)."""
    positives = int(labels.sum())
    negatives = labels.shape[0] - positives
    positive_rank_sum = float(_average_ranks(scores)[labels == 1].sum())
    u_statistic = positive_rank_sum - positives * (positives + 1) / 2.0
    return u_statistic / (positives * negatives)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve (ties count one half), or None when only one class is present."""
    label_array, score_array = _validated(labels, scores)
    if not _both_classes(label_array):
        return None
    return _mann_whitney_auc(label_array, score_array)


def _equal_error_rate(
    false_positive_rate: np.ndarray, true_positive_rate: np.ndarray, thresholds: np.ndarray
) -> tuple[float, float]:
    """(EER, threshold) where the ROC, joined by straight lines, crosses FPR = FNR."""
    # FPR - FNR = FPR + TPR - 1 never decreases along the curve, runs from -1 at (0, 0) to +1 at
    # (1, 1), and so crosses zero exactly once (or touches it on a segment).
    difference = false_positive_rate + true_positive_rate - 1.0
    crossing = int(np.argmax(difference >= 0.0))
    if difference[crossing] == 0.0:
        return float(false_positive_rate[crossing]), float(thresholds[crossing])
    before = crossing - 1
    fraction = -difference[before] / (difference[crossing] - difference[before])
    rate = false_positive_rate[before] + fraction * (
        false_positive_rate[crossing] - false_positive_rate[before]
    )
    # Scores lie in [0, 1], so the infinite threshold of the first point acts like 1.0 here. No score
    # lies strictly between two neighbouring thresholds, so the interpolated threshold is a reporting
    # convention (as in most EER tools) rather than an operating point that reaches the EER exactly.
    upper = min(float(thresholds[before]), 1.0)
    lower = float(thresholds[crossing])
    return float(rate), float(upper + fraction * (lower - upper))


def reliability_bins(labels: ArrayLike, scores: ArrayLike, bins: int = 15) -> list[dict[str, Any]]:
    """Equal-width score bins over [0, 1] with the mean score and the fraction of fakes in each.

    Bin i holds ``lower <= score < upper``; the last bin also holds 1.0. Every bin is listed, and an
    empty one has ``count`` 0 with ``mean_score`` and ``fraction_fake`` set to None.
    """
    label_array, score_array = _validated(labels, scores)
    return _reliability_bins(label_array, score_array, _validated_bins(bins))


def _reliability_bins(labels: np.ndarray, scores: np.ndarray, bins: int) -> list[dict[str, Any]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted against the very edges that are reported keeps a score that sits on an edge in the
    # bin whose bounds say it belongs there (floor(score * bins) can round the other way).
    indices = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    counts = np.bincount(indices, minlength=bins)
    score_sums = np.bincount(indices, weights=scores, minlength=bins)
    fake_sums = np.bincount(indices, weights=labels.astype(np.float64), minlength=bins)
    result = []
    for index in range(bins):
        count = int(counts[index])
        result.append(
            {
                "lower": float(edges[index]),
                "upper": float(edges[index + 1]),
                "count": count,
                "mean_score": float(score_sums[index] / count) if count else None,
                "fraction_fake": float(fake_sums[index] / count) if count else None,
            }
        )
    return result


def _expected_calibration_error(bins: list[dict[str, Any]], count: int) -> float:
    """Sum over bins of (bin share of samples) x |mean score - fraction fake|."""
    return float(
        sum(
            entry["count"] / count * abs(entry["mean_score"] - entry["fraction_fake"])
            for entry in bins
            if entry["count"]
        )
    )


def _ratio(numerator: int, denominator: int) -> float:
    # A ratio with nothing to count (no predicted fakes for precision, no fakes for recall) is
    # reported as 0.0 rather than NaN so the result stays valid JSON and sorts below real values.
    return numerator / denominator if denominator else 0.0


def binary_metrics(
    labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5, bins: int = 15
) -> dict[str, Any]:
    """Every evaluation number for one set of labels (1 = fake) and scores (p(fake)).

    Threshold metrics (accuracy, precision, recall, f1, confusion matrix) predict fake when
    ``score >= threshold``. Precision, recall and f1 are 0.0 when their denominator is zero.
    Ranking metrics (roc_auc, eer, eer_threshold, tpr_at_1pct_fpr) are None when only one class is
    present. ``ece`` uses ``bins`` equal-width bins over [0, 1], weighted by how many scores fall in
    each. All values are plain Python numbers, lists or None.
    """
    label_array, score_array = _validated(labels, scores)
    threshold = _validated_threshold(threshold)
    bins = _validated_bins(bins)

    count = int(label_array.shape[0])
    positives = int(label_array.sum())
    negatives = count - positives
    predicted_fake = score_array >= threshold
    actual_fake = label_array == 1
    true_positive = int(np.count_nonzero(predicted_fake & actual_fake))
    false_positive = int(np.count_nonzero(predicted_fake & ~actual_fake))
    false_negative = int(np.count_nonzero(~predicted_fake & actual_fake))
    true_negative = int(np.count_nonzero(~predicted_fake & ~actual_fake))

    precision = _ratio(true_positive, true_positive + false_positive)
    recall = _ratio(true_positive, true_positive + false_negative)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall without dividing twice.
    f1 = _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative)

    area: float | None = None
    equal_error_rate: float | None = None
    equal_error_threshold: float | None = None
    recall_at_low_false_positive_rate: float | None = None
    if _both_classes(label_array):
        area = _mann_whitney_auc(label_array, score_array)
        false_positives, true_positives, thresholds = _roc_counts(label_array, score_array)
        false_positive_rate = false_positives / negatives
        true_positive_rate = true_positives / positives
        equal_error_rate, equal_error_threshold = _equal_error_rate(
            false_positive_rate, true_positive_rate, thresholds
        )
        # Compare counts in integers so that FPR == 1% exactly is allowed, with no rounding doubt.
        # The (0, 0) point always qualifies, so the maximum exists (and is 0.0 if nothing else does).
        allowed = false_positives * 100 <= FALSE_POSITIVE_RATE_LIMIT_PERCENT * negatives
        recall_at_low_false_positive_rate = float(true_positive_rate[allowed].max())

    calibration_bins = _reliability_bins(label_array, score_array, bins)
    return {
        "count": count,
        "positives": positives,
        "negatives": negatives,
        "threshold": threshold,
        "accuracy": (true_positive + true_negative) / count,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": {
            "true_negative": true_negative,
            "false_positive": false_positive,
            "false_negative": false_negative,
            "true_positive": true_positive,
        },
        # Rows are the true class (real, fake), columns the predicted class, as in most plots.
        "confusion_matrix_rows": [[true_negative, false_positive], [false_negative, true_positive]],
        "roc_auc": area,
        "eer": equal_error_rate,
        "eer_threshold": equal_error_threshold,
        "tpr_at_1pct_fpr": recall_at_low_false_positive_rate,
        "brier": float(np.mean((score_array - label_array) ** 2)),
        "ece": _expected_calibration_error(calibration_bins, count),
    }


def scene_paired(labels: ArrayLike, scores: ArrayLike, groups: list[str]) -> dict[str, Any] | None:
    """Each fake against the real of its own identity group (DFDC: the video it was made from), so
    scene, camera and compression are the same on both sides: the share of pairs where the fake scores
    higher (ties count half) and the mean score difference. A model that scores the scene and not the
    manipulation sits at 0.5 here whatever its plain AUC. None when no group holds both classes."""
    labels, scores = _validated(labels, scores)
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} scores")
    reals: dict[str, list[float]] = {}
    fakes: dict[str, list[float]] = {}
    for label, score, group in zip(labels.tolist(), scores.tolist(), groups, strict=True):
        (fakes if label == 1 else reals).setdefault(group, []).append(score)
    wins, differences = [], []
    for group, fake_scores in fakes.items():
        # Several reals of one group: the fake is compared with their mean.
        real = float(np.mean(reals[group])) if group in reals else None
        if real is None:
            continue
        for fake in fake_scores:
            wins.append(1.0 if fake > real else 0.5 if fake == real else 0.0)
            differences.append(fake - real)
    if not wins:
        return None
    return {
        "pairs": len(wins),
        "fake_above_its_real": float(np.mean(wins)),
        "mean_difference": float(np.mean(differences)),
    }
