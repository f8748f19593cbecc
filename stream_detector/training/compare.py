"""Two evaluate.py reports side by side: the figures a ship rule reads, computed one way every time.

Every candidate since v4 was judged against the shipped model on the same lines (model card): the
validation AUC of each set, the mean sharpness flip rate (blur sigma 1 and 2 and down-up x2 and x3
turning real faces FAKE, sharpening turning fakes REAL; over the sets both reports hold) and the worst
JPEG flip (quality 90/70/50 turning real faces FAKE). Until now each sitting recomputed them from the
JSON by hand; this module is that computation, so a rule written before a run is checked the same way
after it. Pure: reports in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from stream_detector.errors import StreamDetectorError

# (degradation, which side it tests): a blurrier or smaller real face must not look fake, a sharper
# fake must not look real (issue 11, section 3).
SHARPNESS_CASES = (
    ("blur1", "real_flipped_to_fake"),
    ("blur2", "real_flipped_to_fake"),
    ("downup2", "real_flipped_to_fake"),
    ("downup3", "real_flipped_to_fake"),
    ("sharpen", "fake_flipped_to_real"),
)
JPEG_CASES = ("jpeg90", "jpeg70", "jpeg50")
REPORT_SETTINGS = ("split", "mirror_average", "preprocess", "equalise_compression")


@dataclass(frozen=True)
class SetFigures:
    """One face set's figures in one report; flip rates are shares (0-1), None without --robustness."""

    name: str
    images: int
    roc_auc: float
    ece: float | None
    flips: dict[str, float] | None


@dataclass(frozen=True)
class ReportFigures:
    """A report's settings and its sets' figures, keyed by the folder's name (dfdc, ffhq-tpdne, ...)."""

    settings: dict[str, object]
    sets: dict[str, SetFigures]


def set_figures(name: str, entry: dict) -> SetFigures:
    robustness = entry.get("robustness")
    flips = None
    if robustness:
        flips = {}
        for case, side in SHARPNESS_CASES:
            if case in robustness:
                flips[case] = float(robustness[case][side])
        for case in JPEG_CASES:
            if case in robustness:
                flips[case] = float(robustness[case]["real_flipped_to_fake"])
    return SetFigures(
        name=name,
        images=int(entry.get("images", entry.get("count", 0))),
        roc_auc=float(entry["roc_auc"]),
        ece=None if entry.get("ece") is None else float(entry["ece"]),
        flips=flips,
    )


def report_figures(report: object, label: str) -> ReportFigures:
    """The sets of an evaluate.py report (its entries keyed by folder path, beside "all")."""
    if not isinstance(report, dict):
        raise StreamDetectorError(f"{label}: not an evaluate.py report (not an object)")
    sets = {}
    for key, entry in report.items():
        if key == "all" or not isinstance(entry, dict) or "roc_auc" not in entry:
            continue
        name = PurePath(key).name or key
        if name in sets:
            raise StreamDetectorError(f"{label}: two sets named {name!r}; compare reports of one each")
        try:
            sets[name] = set_figures(name, entry)
        except (KeyError, TypeError, ValueError) as error:
            raise StreamDetectorError(f"{label}: set {key!r} is not an evaluate.py entry ({error})") from None
    if not sets:
        raise StreamDetectorError(f"{label}: not an evaluate.py report (no set with a ROC-AUC)")
    return ReportFigures(settings={key: report.get(key) for key in REPORT_SETTINGS}, sets=sets)


def mean_sharpness_flip(figures: ReportFigures, names: list[str]) -> float | None:
    """Mean of the five sharpness cases over the named sets; None unless every one was measured."""
    values = []
    for name in names:
        flips = figures.sets[name].flips
        if flips is None or any(case not in flips for case, _ in SHARPNESS_CASES):
            return None
        values.extend(flips[case] for case, _ in SHARPNESS_CASES)
    return sum(values) / len(values) if values else None


def worst_jpeg_flip(figures: ReportFigures, names: list[str]) -> float | None:
    values = []
    for name in names:
        flips = figures.sets[name].flips
        if flips is None or any(case not in flips for case in JPEG_CASES):
            return None
        values.extend(flips[case] for case in JPEG_CASES)
    return max(values) if values else None


def compare(candidate: ReportFigures, baseline: ReportFigures) -> dict:
    """Per common set and over them: the candidate's figure, the baseline's and the difference.

    Reports of different splits are refused (a validation figure beside a test figure decides nothing);
    other differing settings (mirror averaging, preprocessing) are listed, since comparing scorings
    can be the point."""
    if candidate.settings.get("split") != baseline.settings.get("split"):
        raise StreamDetectorError(
            f"the reports are of different splits ({candidate.settings.get('split')} against "
            f"{baseline.settings.get('split')}): compare one split's figures"
        )
    names = [name for name in candidate.sets if name in baseline.sets]
    if not names:
        raise StreamDetectorError(
            f"the reports share no set (candidate: {', '.join(candidate.sets)}; "
            f"baseline: {', '.join(baseline.sets)})"
        )

    def line(new: float | None, old: float | None) -> dict:
        both = new is not None and old is not None
        return {"candidate": new, "baseline": old, "difference": new - old if both else None}

    result: dict = {
        "sets": {},
        "settings_that_differ": {
            key: {"candidate": candidate.settings.get(key), "baseline": baseline.settings.get(key)}
            for key in REPORT_SETTINGS
            if candidate.settings.get(key) != baseline.settings.get(key)
        },
        "only_in_one_report": sorted(set(candidate.sets) ^ set(baseline.sets)),
    }
    for name in names:
        new, old = candidate.sets[name], baseline.sets[name]
        entry = {"images": line(new.images, old.images), "roc_auc": line(new.roc_auc, old.roc_auc)}
        entry["ece"] = line(new.ece, old.ece)
        cases = [case for case, _ in SHARPNESS_CASES] + list(JPEG_CASES)
        entry["flips"] = {
            case: line((new.flips or {}).get(case), (old.flips or {}).get(case)) for case in cases
        }
        result["sets"][name] = entry
    result["mean_sharpness_flip"] = line(
        mean_sharpness_flip(candidate, names), mean_sharpness_flip(baseline, names)
    )
    result["worst_jpeg_flip"] = line(worst_jpeg_flip(candidate, names), worst_jpeg_flip(baseline, names))
    return result
