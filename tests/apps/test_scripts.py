"""Bad input to the training and evaluation scripts: one line naming the problem, never a traceback."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream_detector.errors import StreamDetectorError

# Subprocesses, real servers, threads on real clocks or TensorFlow: not the fast lane (make test-fast).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_set(root, real=2, fake=2, size=64):
    rng = np.random.default_rng(0)
    for name, count in (("real", real), ("fake", fake)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            cv2.imwrite(
                str(root / name / f"{index}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            )
    return root


@pytest.fixture(scope="module")
def evaluate():
    return load_script("evaluate")


def test_folder_without_classes(evaluate, tmp_path):
    with pytest.raises(StreamDetectorError, match=f"{tmp_path}: no real/ and fake/"):
        evaluate.main(["--data", str(tmp_path)])


def test_missing_folder(evaluate, tmp_path):
    with pytest.raises(StreamDetectorError, match="data folder not found: .*nowhere"):
        evaluate.main(["--data", str(tmp_path / "nowhere")])


def test_empty_class(evaluate, tmp_path):
    make_set(tmp_path, fake=0)
    with pytest.raises(StreamDetectorError, match="fake.*empty"):
        evaluate.main(["--data", str(tmp_path), "--cache", str(tmp_path / "cache")])


def test_unreadable_image_stops_only_when_asked(evaluate, tmp_path):
    make_set(tmp_path)
    (tmp_path / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(StreamDetectorError, match="unreadable image: .*broken.jpg"):
        evaluate.main(["--data", str(tmp_path), "--cache", str(tmp_path / "cache"), "--unreadable", "error"])


def test_unreadable_image_is_skipped_and_counted(evaluate, tmp_path):
    import json

    make_set(tmp_path, real=3, fake=3)
    (tmp_path / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    report_path = tmp_path / "report.json"
    arguments = ["--data", str(tmp_path), "--cache", str(tmp_path / "cache"), "--no-face", "whole"]
    assert evaluate.main([*arguments, "--json", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())[str(tmp_path)]
    assert report["unreadable"] == {"count": 1, "first": ["broken.jpg"]}
    assert report["images"] == 6
    # The audit is in every report: one entry per statistic, each with the model's stratified AUC.
    assert set(report["confounds"]) >= {"model_auc", "sharpness", "blockiness", "face_size", "brightness"}


def test_fakes_are_compared_with_the_real_of_their_own_group(evaluate, tmp_path):
    import json

    rng = np.random.default_rng(1)
    rows = ["file,label,group"]
    for index in range(3):
        for label in ("real", "fake"):
            (tmp_path / label).mkdir(exist_ok=True)
            name = f"{label}{index}.png"
            cv2.imwrite(str(tmp_path / label / name), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            # Two of the fakes were made from a real of this folder; the third from one it lacks.
            rows.append(f"{name},{label},video{index if index < 2 or label == 'real' else 'elsewhere'}")
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    report_path = tmp_path / "report.json"
    arguments = ["--data", str(tmp_path), "--cache", str(tmp_path / "cache"), "--no-face", "whole"]
    assert evaluate.main([*arguments, "--json", str(report_path), "--no-progress", "--no-audit"]) == 0
    paired = json.loads(report_path.read_text())[str(tmp_path)]["scene_paired"]
    assert paired["pairs"] == 2 and 0.0 <= paired["fake_above_its_real"] <= 1.0


def test_images_with_no_face(evaluate, tmp_path):
    make_set(tmp_path)  # noise: no face anywhere
    with pytest.raises(StreamDetectorError, match="no face found in .*0.png"):
        evaluate.main(["--data", str(tmp_path), "--no-face", "error", "--cache", str(tmp_path / "cache")])
    with pytest.raises(StreamDetectorError, match="no usable face images"):
        evaluate.main(["--data", str(tmp_path), "--cache", str(tmp_path / "cache")])


def test_missing_and_corrupt_model(evaluate, tmp_path):
    make_set(tmp_path)
    with pytest.raises(StreamDetectorError, match="model file missing: .*absent.keras"):
        evaluate.main(["--data", str(tmp_path), "--model", str(tmp_path / "absent.keras")])
    (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(StreamDetectorError, match="model file corrupt or unreadable: .*bad.keras"):
        evaluate.main(["--data", str(tmp_path), "--model", str(tmp_path / "bad.keras")])
    (tmp_path / "bad.tflite").write_bytes(b"nonsense")
    with pytest.raises(StreamDetectorError, match="model file corrupt or unreadable: .*bad.tflite"):
        evaluate.main(["--data", str(tmp_path), "--model", str(tmp_path / "bad.tflite")])


def test_a_training_record_that_does_not_decode_is_one_line_naming_it(evaluate, tmp_path):
    make_set(tmp_path / "set")
    arguments = ["--data", str(tmp_path / "set"), "--split", "test", "--model", str(tmp_path / "m.tflite")]
    for content, reason in (("{", "Expecting"), ("[1, 2]", "not an object")):
        (tmp_path / "training.json").write_text(content)
        with pytest.raises(
            StreamDetectorError, match=f"--split: .*training.json is not a training record .*{reason}"
        ):
            evaluate.main([*arguments, "--training-record", str(tmp_path / "training.json")])
    # The same reader serves export.py's --calibration-data, evaluate_clips.py's --choose-threshold and
    # train.py's --keep-in-train and --init-from.
    with pytest.raises(StreamDetectorError, match="--calibration-data: .*not a training record"):
        load_script("export").training_crops([tmp_path / "set"], tmp_path / "training.json")
    # A record that decodes but lists no files of the split asked for (the records in
    # model/experiments/ have theirs stripped) was a KeyError traceback in each of them.
    (tmp_path / "training.json").write_text('{"split_sizes": {"test": {"set": 10}}}')
    with pytest.raises(StreamDetectorError, match="--split: .*training.json has no split lists"):
        evaluate.main([*arguments, "--training-record", str(tmp_path / "training.json")])
    (tmp_path / "training.json").write_text('{"splits": {"test": {"set": []}}}')
    with pytest.raises(StreamDetectorError, match="--calibration-data: .*training.json has no train split"):
        load_script("export").training_crops([tmp_path / "set"], tmp_path / "training.json")


def test_train_refuses_a_folder_without_classes(tmp_path):
    with pytest.raises(StreamDetectorError, match="no real/ and fake/"):
        load_script("train").main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("script", ["evaluate", "train"])
def test_command_line_prints_one_line_and_exits_2(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), "--data", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f"{script}: error:" in line]
    assert len(lines) == 1 and "missing" in lines[0]


@pytest.mark.slow
def test_train_then_evaluate_a_tiny_set_end_to_end(tmp_path):
    # The whole pipeline on 20 images per class, one cheap epoch at each size: the model, its
    # exports and a training record whose split lists name files relative to the data root (so
    # evaluate --split finds them wherever the data is mounted), then evaluate on the test split.
    import json

    data = make_set(tmp_path / "data" / "toy", real=20, fake=20, size=96)
    out = tmp_path / "model"
    common = ["--cache", str(tmp_path / "cache"), "--no-progress"]
    arguments = [
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--low-epochs",
        "1",
        "--high-epochs",
        "1",
    ]
    # Noise has no face landmarks to blend (that refusal is tested below).
    arguments += [
        "--low-size",
        "64",
        "--batch-size",
        "8",
        "--no-self-blend",
        "--match-blockiness",
        "--consistency-ramp",
        "0.25",
        "0.5",
        "--dense-dropout",
        "0.1",
        "--precision",
        "mixed_bfloat16",
        *common,
    ]
    import keras

    try:
        assert load_script("train").main(arguments) == 0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {path.name for path in out.iterdir()} >= {
        "detector.keras",
        "detector_fp32.tflite",
        "detector_int8.tflite",
        "training.json",
    }
    record = json.loads((out / "training.json").read_text())
    test_files = record["splits"]["test"]["toy"]
    assert test_files and all(name.startswith("toy/") for name in test_files)
    assert record["calibration"]["method"] == "platt" and record["total_minutes"] > 0
    assert record["match_sharpness"] and record["match_blockiness"]
    assert record["schedule"]["consistency_ramp"] == [0.25, 0.5]
    # Trained with a lighter dropout, shipped with the reference's layers (dropout is off at inference).
    shipped = keras.models.load_model(out / "detector.keras", compile=False)
    assert record["dense_dropout"] == 0.1
    assert [layer.rate for layer in shipped.layers if type(layer).__name__ == "Dropout"] == [0.5] * 3
    # Trained in bfloat16 arithmetic, shipped computing in float32 (what LiteRT and the engine run).
    assert record["precision"] == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in shipped.layers} == {"float32"}
    assert {variable.dtype for variable in shipped.weights} == {"float32"}
    # The engine's FAKE threshold is checked against this number (tests/test_smoothing.py).
    assert 0.0 < record["calibration"]["fake_threshold_at_1pct_false_alarms"] < 1.0
    report_path = tmp_path / "report.json"
    evaluate_arguments = ["--data", str(data), "--model", str(out / "detector.keras"), "--split", "test"]
    evaluate_arguments += ["--no-face", "whole", "--json", str(report_path), *common]
    assert load_script("evaluate").main(evaluate_arguments) == 0
    report = json.loads(report_path.read_text())
    assert report["split"] == "test" and report[str(data)]["images"] == len(test_files)
    assert 0.0 <= report["all"]["roc_auc"] <= 1.0
    # At its own 1 %-false-alarm score, at most one of these few real faces is called fake.
    face_threshold = report["all"]["real_score_at_1pct_false_alarms"]
    at_threshold = [*evaluate_arguments, "--threshold", str(face_threshold)]
    assert load_script("evaluate").main(at_threshold) == 0
    reals = (
        report["all"]["confusion_matrix"]["true_negative"]
        + report["all"]["confusion_matrix"]["false_positive"]
    )
    false_alarms = json.loads(report_path.read_text())["all"]["confusion_matrix"]["false_positive"]
    assert false_alarms <= max(1, reals // 100)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--consistency-weight", "-1"], "--consistency-weight"),
        (
            ["--consistency-ramp", "0.8", "0.2"],
            "--consistency-ramp needs 0 <= START <= END <= 1, not 0.8 0.2",
        ),
        (["--consistency-ramp", "-0.1", "0.5"], "--consistency-ramp needs"),
        (["--batch-size", "31"], "--batch-size 31"),
        (["--dense-dropout", "1"], "--dense-dropout"),
        (["--boundary-weight", "-1"], "--boundary-weight must be 0"),
        (["--boundary-weight", "1", "--no-self-blend"], "--boundary-weight needs --self-blend"),
        (["--boundary-weight", "1", "--low-epochs", "2", "--low-mode", "patch"], "needs whole crops"),
    ],
)
def test_train_refuses_bad_consistency_settings_in_one_line(arguments, named, tmp_path):
    with pytest.raises(StreamDetectorError, match=named):
        load_script("train").main([*arguments, "--out", str(tmp_path / "out")])


@pytest.mark.slow
def test_train_names_a_folder_without_face_landmarks_and_a_bad_resume_in_one_line(tmp_path):
    make_set(tmp_path / "data" / "toy", real=6, fake=6, size=96)
    base = [sys.executable, str(REPO / "scripts" / "train.py"), "--data", str(tmp_path / "data")]
    base += ["--out", str(tmp_path / "model"), "--cache", str(tmp_path / "cache"), "--no-progress"]
    for extra, expected in (
        ([], "no face landmarks"),
        (["--no-self-blend", "--resume"], "no checkpoint at"),
    ):
        result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "train: error:" in line]
        assert len(lines) == 1 and expected in lines[0], lines


def test_evaluate_clips_reports_verdicts_false_alarms_per_hour_and_records_a_live_threshold(
    tmp_path, astronaut_bgr
):
    import json

    from tools.media import moving_face_frames, write_video

    frames, _ = moving_face_frames(astronaut_bgr, count=30)
    for label in ("real", "fake"):
        (tmp_path / "clips" / label).mkdir(parents=True)
    # Names chosen so that one real clip is a threshold-validation clip and one is reported.
    evaluate_clips = load_script("evaluate_clips")
    names = [f"person{index}.avi" for index in range(40)]
    validation = next(name for name in names if evaluate_clips.is_validation_clip(Path(name)))
    reported = next(name for name in names if not evaluate_clips.is_validation_clip(Path(name)))
    write_video(tmp_path / "clips" / "real" / validation, frames, fps=15)
    write_video(tmp_path / "clips" / "real" / reported, frames, fps=15)
    write_video(tmp_path / "clips" / "fake" / "swap.avi", frames, fps=15)
    # Validation faces: the record lists ten of the twenty reals (and the fakes, which are not used).
    faces = make_set(tmp_path / "faces" / "toy", real=20, fake=4, size=96)
    listed = [f"toy/real/{index}.png" for index in range(10)] + [
        f"toy/fake/{index}.png" for index in range(4)
    ]
    record = tmp_path / "training.json"
    calibration = {"fake_threshold_at_1pct_false_alarms": 0.6}
    record.write_text(json.dumps({"calibration": calibration, "splits": {"validation": {"toy": listed}}}))
    videos = ["--videos", str(tmp_path / "clips"), "--no-progress", "--cache", str(tmp_path / "cache")]
    choose = [*videos, "--choose-threshold", "--record", str(record), "--faces", str(tmp_path / "faces")]
    with pytest.raises(StreamDetectorError, match="validation faces of 'toy' not found at .*nowhere"):
        evaluate_clips.main([*choose, "--faces", str(tmp_path / "nowhere")])
    assert evaluate_clips.main(choose) == 0
    live = json.loads(record.read_text())["live_threshold"]
    assert live["validation_clips"] == [validation]
    assert (
        live["fake_enter"] >= live["face_threshold"]
        and live["fake_enter"] > live["highest_validation_real_track"]
    )
    # The face half is the listed reals scored as the engine scores them, not train.py's Keras figure:
    # evaluate.py on the same faces with the same scoring finds the same 1 %-false-alarm score.
    assert live["face_threshold_scoring"] == live["classifier"] != "keras (train.py calibration)"
    report_path = tmp_path / "faces.json"
    model_file = REPO / "model" / "detector_int8.tflite"
    assert "int8" in live["classifier"] and live["classifier"].endswith("+mirror")
    arguments = ["--data", str(faces), "--model", str(model_file), "--split", "validation"]
    arguments += ["--training-record", str(record), "--no-face", "whole", "--json", str(report_path)]
    assert (
        load_script("evaluate").main([*arguments, "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    )
    faces_report = json.loads(report_path.read_text())
    assert faces_report[str(faces)]["images"] == 14
    assert live["face_threshold"] == pytest.approx(
        faces_report["all"]["real_score_at_1pct_false_alarms"], abs=1e-4
    )
    report_path, plot = tmp_path / "clips.json", tmp_path / "clips.png"
    assert evaluate_clips.main([*videos, "--json", str(report_path), "--plot", str(plot)]) == 0
    report = json.loads(report_path.read_text())
    # The validation clip chose the threshold: it is listed apart and counted nowhere.
    assert report["validation_clips"] == [validation]
    summary = report["reported"]
    assert summary["clips"] == {"real": 1, "fake": 1}
    assert summary["real_footage_hours"] == pytest.approx(2.0 / 3600, rel=0.05)
    assert summary["false_alarms_per_hour"] == pytest.approx(
        summary["false_alarm_tracks"] / summary["real_footage_hours"], abs=0.01
    )
    entry = next(clip for clip in report["clips"] if clip["clip"] == reported)
    assert entry["verdict"] in ("REAL", "FAKE", "UNCERTAIN") and entry["clip_score"] is not None
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    ("face_threshold", "highest_track", "expected"),
    [(0.8012354, 0.50, 0.802), (0.60, 0.7341, 0.755), (0.70, 0.68, 0.70), (0.995, 0.2, 0.99)],
)
def test_the_recorded_live_threshold_is_rounded_up_never_below_the_face_threshold(
    tmp_path, face_threshold, highest_track, expected
):
    import json

    record = tmp_path / "training.json"
    record.write_text(json.dumps({"calibration": {}}))
    entry = {"clip": "a.mp4", "max_p_smoothed": highest_track, "duration_s": 1.0}
    script = load_script("evaluate_clips")
    assert script.record_threshold(record, [entry], "litert-int8+mirror", face_threshold) == 0
    live = json.loads(record.read_text())["live_threshold"]
    assert live["classifier"] == "litert-int8+mirror"
    # The plain scoring's threshold goes under its own key and leaves the other in place.
    key = "live_threshold_without_mirror"
    assert script.record_threshold(record, [entry], "litert-int8", face_threshold, key) == 0
    written = json.loads(record.read_text())
    assert (
        written["live_threshold"] == live
        and written["live_threshold_without_mirror"]["classifier"] == "litert-int8"
    )
    assert live["fake_enter"] == pytest.approx(expected, abs=1e-9)
    assert live["fake_enter"] >= min(0.99, face_threshold)


def test_benchmark_training_times_both_precisions_and_leaves_the_policy_float32(tmp_path):
    import json

    import keras

    out = tmp_path / "training_speed.json"
    arguments = ["--sizes", "64", "--steps", "1", "--batch-size", "2", "--json", str(out)]
    assert load_script("benchmark_training").main(arguments) == 0
    cell = json.loads(out.read_text())["64px"]
    assert cell["float32"] > 0 and cell["mixed_bfloat16"] > 0
    assert cell["ratio"] == pytest.approx(cell["mixed_bfloat16"] / cell["float32"])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_benchmark_training_refuses_a_size_too_small_in_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        load_script("benchmark_training").main(["--sizes", "8"])
    assert stopped.value.code == 2
    assert "--sizes at least 64" in capsys.readouterr().err


def test_mirror_average_scores_each_face_with_its_mirror(evaluate, tmp_path):
    import json

    make_set(tmp_path, real=3, fake=3)
    arguments = ["--data", str(tmp_path), "--cache", str(tmp_path / "cache"), "--no-face", "whole"]
    reports = {}
    for name, extra in (("plain", ["--no-mirror-average"]), ("mirror", [])):
        path = tmp_path / f"{name}.json"
        assert evaluate.main([*arguments, *extra, "--json", str(path), "--no-progress", "--no-audit"]) == 0
        reports[name] = json.loads(path.read_text())
    assert reports["plain"]["mirror_average"] is False and reports["mirror"]["mirror_average"] is True
    # Noise images are not mirror-symmetric, so the averaged scores (and their Brier score) move.
    assert reports["mirror"][str(tmp_path)]["brier"] != reports["plain"][str(tmp_path)]["brier"]


def test_export_refuses_calibration_data_it_cannot_vouch_for(tmp_path):
    import json

    from stream_detector.errors import StreamDetectorError

    export = load_script("export")
    model = tmp_path / "detector.keras"
    with pytest.raises(StreamDetectorError, match="needs the training record"):
        export.main(["--model", str(model), "--calibration-data", str(tmp_path)])
    (tmp_path / "training.json").write_text(json.dumps({"splits": {"train": {"dfdc": ["real/a.jpg"]}}}))
    with pytest.raises(StreamDetectorError, match="calibration folder not found"):
        export.main(["--model", str(model), "--calibration-data", str(tmp_path / "missing")])
    # A folder the record has no training files of would calibrate on faces that may be test faces.
    other = tmp_path / "ffhq-tpdne"
    other.mkdir()
    with pytest.raises(StreamDetectorError, match="lists no training files of 'ffhq-tpdne'"):
        export.main(["--model", str(model), "--calibration-data", str(other)])


def test_evaluate_clips_gives_the_clip_auc_against_each_source_of_real_clips():
    evaluate_clips = load_script("evaluate_clips")

    def entry(name: str, label: str, score: float) -> dict:
        return {"clip": name, "label": label, "verdict": "UNCERTAIN", "duration_s": 5.0}, score

    clips = [
        entry("swap_a.mp4", "fake", 0.6),
        entry("swap_b.mp4", "fake", 0.7),
        entry("mead_W011_front_angry_level3_001.mp4", "real", 0.1),
        entry("mead_M030_front_sad_level3_001.mp4", "real", 0.2),
        entry("liveportrait_d3.mp4", "real", 0.65),
        entry("liveportrait_d9.mp4", "real", 0.9),
        entry("interview.mp4", "real", 0.5),
    ]
    entries = [{**fields, "clip_score": score, "fake_tracks": 0} for fields, score in clips]
    summary = evaluate_clips.summarise(entries)
    # Pooled, the studio clips scored low carry the AUC; against the talking heads alone it is 1 in 4.
    assert summary["clip_roc_auc"] == pytest.approx(7 / 10)
    assert summary["clip_roc_auc_by_real_source"] == {
        "liveportrait": {"real_clips": 2, "clip_roc_auc": pytest.approx(0.25)},
        "mead": {"real_clips": 2, "clip_roc_auc": pytest.approx(1.0)},
        "other": {"real_clips": 1, "clip_roc_auc": pytest.approx(1.0)},
    }


def test_train_refuses_a_start_model_that_saw_faces_of_its_test_split(tmp_path):
    import json

    make_set(tmp_path / "data" / "toy", real=20, fake=20, size=64)
    files = [f"toy/{label}/{index}.png" for label in ("real", "fake") for index in range(20)]
    # The start model's record (beside it, as train.py writes one) trained on every toy face; the
    # --keep-in-train record (another model's) knows none of them, so the new test split holds some.
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "detector.keras").write_bytes(b"")
    empty = {"train": {}, "validation": {}, "test": {}}
    (tmp_path / "start" / "training.json").write_text(
        json.dumps({"splits": {**empty, "train": {"toy": files}}})
    )
    (tmp_path / "other.json").write_text(json.dumps({"splits": empty}))
    arguments = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"]
    arguments += [
        "--cache",
        str(tmp_path / "cache"),
        "--init-from",
        str(tmp_path / "start" / "detector.keras"),
    ]
    start_record = tmp_path / "start" / "training.json"
    with pytest.raises(StreamDetectorError, match=f"test faces .* pass --keep-in-train {start_record}"):
        load_script("train").main([*arguments, "--keep-in-train", str(tmp_path / "other.json")])


def test_train_warns_when_a_start_without_twins_is_pulled_from_the_first_step(tmp_path, capsys):
    import json

    make_set(tmp_path / "data" / "toy", real=20, fake=20, size=64)
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "detector.keras").write_bytes(b"")
    empty = {"train": {}, "validation": {}, "test": {}}
    record = tmp_path / "start" / "training.json"
    record.write_text(json.dumps({"splits": empty, "schedule": {"consistency_weight": 0.0}}))
    (tmp_path / "other.json").write_text(json.dumps({"splits": empty}))
    arguments = ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"]
    arguments += ["--cache", str(tmp_path / "cache"), "--keep-in-train", str(tmp_path / "other.json")]
    arguments += ["--init-from", str(tmp_path / "start" / "detector.keras"), "--no-self-blend"]
    # An unknown source stops the run right after the warning is due, before Keras' precision policy
    # is set (a run stopped later would leave it mixed for the tests after this one).
    arguments += ["--without-fakes-of", "nowhere"]
    printed = {}
    for name, ramp in (("from the first step", ["0", "0"]), ("ramped", ["0.5", "0.75"])):
        with pytest.raises(StreamDetectorError, match="--without-fakes-of nowhere: no such source"):
            load_script("train").main([*arguments, "--consistency-ramp", *ramp])
        printed[name] = capsys.readouterr().out
    assert f"warning: {record} trained without the consistency term" in printed["from the first step"]
    assert "warning:" not in printed["ramped"]
    record.write_text("{cut short")
    with pytest.raises(StreamDetectorError, match=f"--init-from: {record} is not a training record"):
        load_script("train").main(arguments)
    record.write_text(json.dumps({"splits": {"train": {}}}))
    with pytest.raises(StreamDetectorError, match=f"--init-from: {record} has no validation split list"):
        load_script("train").main(arguments)
    (tmp_path / "other.json").write_text(json.dumps({"splits": {"train": {"toy": "real/0.png"}}}))
    with pytest.raises(StreamDetectorError, match="--keep-in-train: .*the train list of 'toy' is not a list"):
        load_script("train").main(arguments)


def test_evaluate_clips_judges_a_model_by_the_threshold_recorded_beside_it(tmp_path):
    import json

    from stream_detector.pipeline.smoothing import live_threshold

    evaluate_clips = load_script("evaluate_clips")
    record = tmp_path / "training.json"
    record.write_text(json.dumps({"live_threshold": {"fake_enter": 0.793}}))
    # Mirror-averaged scoring: the model's own threshold; plain scoring has none recorded, so the
    # shipped model's plain threshold, and it says so.
    assert evaluate_clips.recorded_threshold(tmp_path, True) == (0.793, f"{record} (live_threshold)")
    assert evaluate_clips.recorded_threshold(tmp_path, False) == (
        live_threshold(False),
        evaluate_clips.SHIPPED_THRESHOLD,
    )
    assert evaluate_clips.recorded_threshold(None, True)[0] == live_threshold(True)
    record.write_text("{not json")
    with pytest.raises(StreamDetectorError, match="not a training record"):
        evaluate_clips.recorded_threshold(tmp_path, True)
