"""The ship rule's figures from two evaluate.py reports: computed the way the model card states them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_detector.errors import StreamDetectorError
from stream_detector.training.compare import compare, report_figures

REPO = Path(__file__).resolve().parents[2]


def entry(auc, flips=None, images=100):
    """An evaluate.py set entry; flips: {case: rate}, sharpen's rate on its fakes-to-real side."""
    result = {"images": images, "roc_auc": auc, "ece": 0.03}
    if flips is not None:
        result["robustness"] = {
            case: {
                "roc_auc": auc,
                "real_flipped_to_fake": 0.0 if case == "sharpen" else rate,
                "fake_flipped_to_real": rate if case == "sharpen" else 0.0,
            }
            for case, rate in flips.items()
        }
    return result


def flips(blur=0.0, sharpen=0.0, jpeg=0.0):
    return {
        "blur1": blur,
        "blur2": blur,
        "downup2": blur,
        "downup3": blur,
        "sharpen": sharpen,
        "jpeg90": jpeg,
        "jpeg70": jpeg,
        "jpeg50": jpeg,
        "downscale112": 0.9,
    }


def report(split="validation", **sets):
    return {"model": "m", "split": split, "mirror_average": True, **sets, "all": {"roc_auc": 0.5}}


def test_mean_sharpness_flip_takes_the_five_cases_of_every_common_set_and_the_worst_jpeg_flip():
    candidate = report(
        **{
            "../faces/dfdc": entry(0.75, flips(blur=0.10, sharpen=0.05, jpeg=0.02)),
            "/x/ffhq-tpdne": entry(0.88, flips(blur=0.20, sharpen=0.0, jpeg=0.07)),
        }
    )
    baseline = report(
        **{
            "dfdc": entry(0.73, flips(blur=0.10, sharpen=0.10, jpeg=0.01)),
            "ffhq-tpdne": entry(0.89, flips()),
            "gan-b": entry(0.9, flips()),
        }
    )
    result = compare(report_figures(candidate, "c"), report_figures(baseline, "b"))
    assert list(result["sets"]) == ["dfdc", "ffhq-tpdne"]
    assert result["only_in_one_report"] == ["gan-b"]
    assert result["sets"]["dfdc"]["roc_auc"]["difference"] == pytest.approx(0.02)
    assert result["sets"]["dfdc"]["flips"]["sharpen"]["candidate"] == pytest.approx(0.05)
    # (4 x 0.10 + 0.05 + 4 x 0.20 + 0) / 10; the 112 px round trip is not a sharpness case.
    assert result["mean_sharpness_flip"]["candidate"] == pytest.approx(0.125)
    assert result["mean_sharpness_flip"]["baseline"] == pytest.approx(0.05)
    assert result["worst_jpeg_flip"]["candidate"] == pytest.approx(0.07)
    assert result["worst_jpeg_flip"]["difference"] == pytest.approx(0.06)
    assert result["settings_that_differ"] == {}


def test_without_robustness_the_flip_figures_are_absent_not_zero():
    result = compare(
        report_figures(report(dfdc=entry(0.7)), "c"),
        report_figures(report(dfdc=entry(0.6, flips(blur=0.3))), "b"),
    )
    # The baseline's: four blur and down-up cases at 0.3, sharpening at 0.
    assert result["mean_sharpness_flip"]["baseline"] == pytest.approx(0.24)
    assert result["mean_sharpness_flip"]["candidate"] is None
    assert result["mean_sharpness_flip"]["difference"] is None
    assert result["sets"]["dfdc"]["flips"]["blur2"]["candidate"] is None
    # A report without an ECE (an older one) gives no figure rather than NaN in the JSON.
    bare = report(dfdc={"images": 10, "roc_auc": 0.6})
    assert compare(report_figures(bare, "c"), report_figures(bare, "b"))["sets"]["dfdc"]["ece"] == {
        "candidate": None,
        "baseline": None,
        "difference": None,
    }


def test_differing_scorings_are_listed_and_differing_splits_refused():
    plain = report(dfdc=entry(0.7))
    plain["mirror_average"] = False
    result = compare(report_figures(plain, "c"), report_figures(report(dfdc=entry(0.7)), "b"))
    assert result["settings_that_differ"] == {"mirror_average": {"candidate": False, "baseline": True}}
    with pytest.raises(StreamDetectorError, match="different splits"):
        compare(
            report_figures(report("test", dfdc=entry(0.7)), "c"),
            report_figures(report(dfdc=entry(0.7)), "b"),
        )
    with pytest.raises(StreamDetectorError, match="share no set"):
        compare(
            report_figures(report(dfdc=entry(0.7)), "c"),
            report_figures(report(**{"gan-b": entry(0.7)}), "b"),
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "not an object"),
        ({"model": "m"}, "no set with a ROC-AUC"),
        ({"dfdc": {"roc_auc": "x"}}, "not an"),
    ],
)
def test_a_file_that_is_not_a_report_is_named(content, message):
    with pytest.raises(StreamDetectorError, match=message):
        report_figures(content, "candidate report r.json")


@pytest.mark.slow
def test_command_line_prints_the_table_and_one_line_errors(tmp_path):
    candidate = tmp_path / "candidate.json"
    baseline = tmp_path / "baseline.json"
    candidate.write_text(json.dumps(report(dfdc=entry(0.75, flips(blur=0.1)))))
    baseline.write_text(json.dumps(report(dfdc=entry(0.73, flips(blur=0.2)))))
    script = [sys.executable, str(REPO / "scripts" / "compare_reports.py")]
    out = tmp_path / "comparison.json"
    result = subprocess.run(
        [*script, str(candidate), str(baseline), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "mean sharpness flip" in result.stdout and "-8.0 pt" in result.stdout
    assert json.loads(out.read_text())["sets"]["dfdc"]["roc_auc"]["candidate"] == 0.75
    (tmp_path / "broken.json").write_text("{")
    for arguments, named in (
        ([str(tmp_path / "missing.json"), str(baseline)], "missing.json: not found"),
        ([str(candidate), str(tmp_path / "broken.json")], "broken.json: not JSON"),
    ):
        result = subprocess.run([*script, *arguments], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "compare_reports: error:" in line]
        assert len(lines) == 1 and named in lines[0], result.stderr
