"""The confound audit: does the model read the manipulation, or a simple image statistic?

For each statistic (sharpness, JPEG blockiness, face size, brightness, saturation) of the face crops:
- the ROC-AUC the statistic alone reaches, in its better direction: how much a shortcut could give;
- the model's ROC-AUC within quantile strata of the statistic, averaged over strata holding both
  classes: what is left of the model's skill when that statistic is held (roughly) fixed;
- the Spearman correlation of the model's score with the statistic inside each class.
A model that reads a confound shows a stratified AUC far below its plain AUC and a strong within-class
correlation.
"""

from __future__ import annotations

import cv2
import numpy as np

STATISTICS = ("sharpness", "blockiness", "face_size", "brightness", "saturation")


def laplacian_variance(image_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: the usual sharpness measure."""
    grey = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def jpeg_blockiness(image_rgb: np.ndarray) -> float:
    """How much stronger luminance steps are on an 8-pixel grid than between grid lines (1.0: none).

    The grid's phase inside a crop is unknown (a face is cut anywhere in a JPEG), so the strongest of
    the eight phases is taken, horizontally and vertically together.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    columns = np.abs(np.diff(grey, axis=1)).mean(axis=0)
    rows = np.abs(np.diff(grey, axis=0)).mean(axis=1)
    ratios = []
    for phase in range(8):
        on = np.concatenate([columns[phase::8], rows[phase::8]])
        ratios.append(on.mean() / (np.concatenate([columns, rows]).mean() + 1e-6))
    return float(max(ratios))


def image_statistics(crop_rgb: np.ndarray) -> dict[str, float]:
    """Every audited statistic of one native-resolution RGB face crop."""
    hsv = cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2HSV)
    return {
        "sharpness": laplacian_variance(crop_rgb),
        "blockiness": jpeg_blockiness(crop_rgb),
        "face_size": float(crop_rgb.shape[0]),
        "brightness": float(hsv[..., 2].mean()),
        "saturation": float(hsv[..., 1].mean()),
    }


def roc_auc(labels: np.ndarray, values: np.ndarray) -> float | None:
    """ROC-AUC of any real-valued score (ties count one half), None with one class: Mann-Whitney U."""
    labels, values = np.asarray(labels), np.asarray(values, np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _ranks(values) + 1.0
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    # Ties share their average rank.
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def stratified_auc(labels: np.ndarray, scores: np.ndarray, statistic: np.ndarray, strata: int = 5) -> dict:
    """The model's AUC within quantile strata of a statistic, averaged over strata with both classes."""
    labels, scores, statistic = (np.asarray(x) for x in (labels, scores, statistic))
    edges = np.unique(np.quantile(statistic, np.linspace(0, 1, strata + 1)))
    bins = np.clip(np.searchsorted(edges, statistic, side="right") - 1, 0, max(0, len(edges) - 2))
    per_stratum = []
    for stratum in range(max(1, len(edges) - 1)):
        inside = bins == stratum
        if inside.sum() and 0 < labels[inside].sum() < inside.sum():
            per_stratum.append(
                {"auc": float(roc_auc(labels[inside], scores[inside])), "images": int(inside.sum())}
            )
    mean = float(np.mean([entry["auc"] for entry in per_stratum])) if per_stratum else None
    return {"mean_auc": mean, "strata": per_stratum}


def confound_audit(labels: np.ndarray, scores: np.ndarray, statistics: dict[str, np.ndarray]) -> dict:
    """The audit of one set: per statistic, its own AUC, the model's stratified AUC, within-class
    Spearman correlations, and the class medians."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    model_auc = float(roc_auc(labels, scores))
    report: dict = {"model_auc": model_auc}
    for name, values in statistics.items():
        values = np.asarray(values, np.float64)
        alone = float(roc_auc(labels, values)) if np.ptp(values) > 0 else 0.5
        stratified = stratified_auc(labels, scores, values)
        report[name] = {
            "statistic_auc": max(alone, 1.0 - alone),
            "fake_is_higher": alone >= 0.5,
            "median_real": float(np.median(values[labels == 0])),
            "median_fake": float(np.median(values[labels == 1])),
            "model_stratified_auc": stratified["mean_auc"],
            "strata": stratified["strata"],
            "spearman_real": spearman(values[labels == 0], scores[labels == 0]),
            "spearman_fake": spearman(values[labels == 1], scores[labels == 1]),
        }
    return report


def audit_statistics(crops: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each statistic as one array over the crops."""
    rows = [image_statistics(crop) for crop in crops]
    return {name: np.array([row[name] for row in rows]) for name in STATISTICS}
