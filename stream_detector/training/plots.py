"""Evaluation plots written straight to PNG files.

Each function draws on its own ``Figure`` attached to an Agg canvas instead of going through
``pyplot``: no window can open, the process-wide backend and pyplot's figure list are left alone
(the live overlay may use them), and nothing needs closing afterwards. Parent folders are created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Small figures at a modest resolution: readable in a report and quick to write.
FIGURE_SIZE_INCHES = (5.0, 4.5)
DOTS_PER_INCH = 100
CLASS_NAMES = ("real", "fake")


def _new_figure(size: tuple[float, float] = FIGURE_SIZE_INCHES) -> Figure:
    figure = Figure(figsize=size, dpi=DOTS_PER_INCH, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


def plot_roc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]],
    path: str | Path,
    title: str = "ROC curve",
) -> Path:
    """ROC curves, one per name, from (fpr, tpr, auc) as ``metrics.roc_curve`` and ``roc_auc`` give them.

    Several models or datasets go on one set of axes so they can be compared; an ``auc`` of None
    (only one class present) leaves the area out of the legend. Returns the path written.
    """
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, (false_positive_rate, true_positive_rate, area) in curves.items():
        label = name if area is None else f"{name} (AUC {area:.3f})"
        axes.plot(np.asarray(false_positive_rate), np.asarray(true_positive_rate), linewidth=1.5, label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false positive rate (real called fake)")
    axes.set_ylabel("true positive rate (fake caught)")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_confusion_matrix(
    matrix_rows: Sequence[Sequence[int]], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """A 2x2 confusion matrix, rows the true class and columns the predicted class (real, fake).

    ``matrix_rows`` is ``[[tn, fp], [fn, tp]]``, as in ``binary_metrics(...)["confusion_matrix_rows"]``.
    Each cell shows its count and its share of the true class, and is shaded by that share so that
    an unbalanced test set does not make the smaller class look empty. Returns the path written.
    """
    counts = np.asarray(matrix_rows, dtype=np.int64)
    if counts.shape != (2, 2):
        raise ValueError(f"matrix_rows must be 2x2 [[tn, fp], [fn, tp]], got shape {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros((2, 2)), where=row_totals > 0)

    figure = _new_figure((4.5, 4.0))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(2):
        for column in range(2):
            # White text on the dark cells, black on the light ones.
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(
                column,
                row,
                f"{counts[row, column]}\n{shares[row, column]:.1%}",
                ha="center",
                va="center",
                color=colour,
            )
    axes.set_xticks([0, 1], labels=CLASS_NAMES)
    axes.set_yticks([0, 1], labels=CLASS_NAMES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of true class")
    return _save(figure, path)


def plot_reliability(
    bins: Sequence[Mapping[str, Any]], path: str | Path, title: str = "Reliability diagram"
) -> Path:
    """A reliability diagram from ``metrics.reliability_bins``: fraction fake against mean score.

    Bars show the observed fraction of fakes per score bin, points the mean score in the bin, and the
    diagonal is perfect calibration; a lower panel shows how many scores each bin holds, since a bin
    with a handful of samples says little. Empty bins are left blank. Returns the path written.
    """
    filled = [entry for entry in bins if entry["count"]]
    lowers = np.array([entry["lower"] for entry in filled], dtype=np.float64)
    uppers = np.array([entry["upper"] for entry in filled], dtype=np.float64)
    widths = uppers - lowers
    fractions = np.array([entry["fraction_fake"] for entry in filled], dtype=np.float64)
    means = np.array([entry["mean_score"] for entry in filled], dtype=np.float64)
    counts = np.array([entry["count"] for entry in filled], dtype=np.float64)

    figure = _new_figure((5.0, 5.5))
    calibration_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    calibration_axes.plot(
        [0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=1, label="ideal", zorder=3
    )
    calibration_axes.bar(
        lowers, fractions, width=widths, align="edge", edgecolor="black", alpha=0.7, label="fraction fake"
    )
    calibration_axes.plot(
        means, fractions, marker="o", linestyle="none", color="black", label="at mean score"
    )
    calibration_axes.set_xlim(0.0, 1.0)
    calibration_axes.set_ylim(0.0, 1.0)
    calibration_axes.set_ylabel("fraction fake")
    calibration_axes.set_title(title)
    calibration_axes.legend(loc="upper left", fontsize="small")
    calibration_axes.grid(alpha=0.3)

    count_axes.bar(lowers, counts, width=widths, align="edge", edgecolor="black", color="grey")
    count_axes.set_xlabel("score p(fake)")
    count_axes.set_ylabel("count")
    return _save(figure, path)
