#!/usr/bin/env python
"""Compare two evaluate.py reports: the figures a ship rule reads, candidate beside baseline.

    python scripts/compare_reports.py runs/X/validation.json runs/X/validation_v5.json
    python scripts/compare_reports.py CANDIDATE.json BASELINE.json --json comparison.json

For each set both reports hold (matched by folder name): images, ROC-AUC, ECE and, where both were run
with --robustness, each degradation's flip rate (blur 1/2 and down-up x2/x3: real faces turned FAKE;
sharpen: fakes turned REAL; JPEG 90/70/50: real faces turned FAKE); over those sets, the mean sharpness
flip rate and the worst JPEG flip, as the model card's ship rules state them
(stream_detector/training/compare.py). Reports of different splits are refused; other differing
settings (mirror averaging, preprocessing) are printed first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_detector.errors import StreamDetectorError  # noqa: E402
from stream_detector.training.compare import (  # noqa: E402
    JPEG_CASES,
    SHARPNESS_CASES,
    compare,
    report_figures,
)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("candidate", type=Path, help="evaluate.py --json report of the candidate")
    parser.add_argument("baseline", type=Path, help="the same evaluation of the model it must beat")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    return parser.parse_args(argv)


def read_report(path: Path, role: str):
    if not path.is_file():
        raise StreamDetectorError(f"{role} report {path}: not found")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise StreamDetectorError(f"{role} report {path}: not JSON ({error})") from None
    return report_figures(report, f"{role} report {path}")


def number(value: float | None, percent: bool = False, signed: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:+.1f} pt" if signed else f"{100 * value:.1f} %"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def render(comparison: dict) -> list[str]:
    rows = [("", "candidate", "baseline", "difference")]

    def add(label: str, line: dict, percent: bool = False) -> None:
        rows.append(
            (
                label,
                number(line["candidate"], percent),
                number(line["baseline"], percent),
                number(line["difference"], percent, signed=True),
            )
        )

    for name, entry in comparison["sets"].items():
        rows.append(
            (f"{name}: images", str(entry["images"]["candidate"]), str(entry["images"]["baseline"]), "")
        )
        add(f"{name}: ROC-AUC", entry["roc_auc"])
        add(f"{name}: ECE", entry["ece"])
        for case, side in SHARPNESS_CASES:
            add(f"{name}: {case} ({side.replace('_', ' ')})", entry["flips"][case], percent=True)
        for case in JPEG_CASES:
            add(f"{name}: {case} (real flipped to fake)", entry["flips"][case], percent=True)
    add("mean sharpness flip", comparison["mean_sharpness_flip"], percent=True)
    add("worst JPEG flip", comparison["worst_jpeg_flip"], percent=True)
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for key, values in comparison["settings_that_differ"].items():
        lines.append(f"note: {key} differs (candidate {values['candidate']}, baseline {values['baseline']})")
    if comparison["only_in_one_report"]:
        lines.append(f"note: only in one report, left out: {', '.join(comparison['only_in_one_report'])}")
    lines.extend(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    candidate = read_report(arguments.candidate, "candidate")
    baseline = read_report(arguments.baseline, "baseline")
    comparison = compare(candidate, baseline)
    comparison["candidate"] = str(arguments.candidate)
    comparison["baseline"] = str(arguments.baseline)
    print("\n".join(render(comparison)))
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(comparison, indent=1))
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("compare_reports", main)
