#!/usr/bin/env python
"""Clip-level truth: video folders with real/ and fake/ clips through the same engine as `scan`.

    python scripts/evaluate_clips.py --videos ../shared/data/videos --json model/clips.json --plot model/plots/clips.png
    python scripts/evaluate_clips.py --choose-threshold     # choose the live FAKE threshold, record it

Per clip: the file verdict (scan's rule), mean and max smoothed p(fake) of its most suspicious track,
the time to the first verdict, and the tracks that went FAKE. Per set: the verdict table per class, the
clip ROC-AUC (clip score: the highest max smoothed p(fake) of its tracks), the same against each
source of real clips alone (the name's first part: mead, liveportrait, ...; a pooled AUC can rest on one
family of footage scored low) and false alarms per hour of real footage (FAKE tracks in real clips over
their total duration).

The real clips are split by identity (a hash of the name's identity part): about a third are the
threshold-validation clips. --choose-threshold scores only those and records in the training record
(model/training.json: "live_threshold" with the engine's mirror averaging, the default;
"live_threshold_without_mirror" with --no-mirror-average) the FAKE threshold that keeps every one of their tracks below
it, and never below the 1 %-false-alarm score of the record's validation faces (--faces), scored
as the engine scores them (int8, mirror-averaged or not). The report leaves the
validation clips out of every figure (they are listed apart), so nothing reported chose anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)
from stream_detector.errors import StreamDetectorError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "videos"
DEFAULT_FACES = REPO.parent / "shared" / "data" / "faces"
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
VALIDATION_SHARE = 1 / 3
# Above the highest smoothed score of a validation real track: the live threshold's margin.
THRESHOLD_MARGIN = 0.02


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    from stream_detector.apps.arguments import add_mirror_average_argument

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--videos", action="append", type=Path, help="folder(s) holding real/ and fake/ clips"
    )
    parser.add_argument("--json", type=Path, help="write the report here (default: stdout)")
    parser.add_argument("--plot", type=Path, help="write a PNG of clip scores by class here")
    parser.add_argument("--backend", default="auto", help="classifier: auto (default), int8, fp32, keras")
    add_mirror_average_argument(
        parser,
        "the engine's mirror averaging (default: the engine's default, on)",
    )
    parser.add_argument("--model-dir", type=Path, help="folder with the model files (default: model/)")
    parser.add_argument(
        "--detector-range",
        default="auto",
        choices=("auto", "full", "short"),
        help="auto: full range, and short range for a clip where full range finds a face in fewer "
        "than half the frames (tight face crops such as videos/dfdc-faces)",
    )
    parser.add_argument("--max-seconds", type=float, default=None, help="score only the start of each clip")
    parser.add_argument(
        "--fake-enter",
        type=float,
        help="FAKE threshold to evaluate (default: the one recorded for the scoring beside the model, "
        "--model-dir's training.json, else the shipped model's)",
    )
    parser.add_argument(
        "--choose-threshold",
        action="store_true",
        help="score the validation real clips only and record the live FAKE threshold in --record",
    )
    parser.add_argument("--record", type=Path, default=REPO / "model" / "training.json")
    parser.add_argument(
        "--faces",
        type=Path,
        default=DEFAULT_FACES,
        help="with --choose-threshold: the folder holding the record's validation face sources, "
        "scored as the engine scores them (default: ../shared/data/faces)",
    )
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="face-crop cache for --faces")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def identity(path: Path) -> str:
    """The part of a clip's name that names its person: mead_W011_front_angry -> mead_W011,
    dfdc_aejvkfbtxs_0_1 -> dfdc_aejvkfbtxs."""
    parts = path.stem.split("_")
    if parts[0] in ("mead", "dfdc") and len(parts) > 1:
        return "_".join(parts[:2])
    return path.stem


def footage_source(name: str) -> str:
    """The family of footage a clip's name says it comes from (mead_W011_front_angry -> mead,
    liveportrait_d13 -> liveportrait); a name without one is "other"."""
    stem = Path(name).stem
    return stem.split("_")[0] if "_" in stem else "other"


def is_validation_clip(path: Path) -> bool:
    digest = hashlib.sha256(identity(path).encode()).digest()
    return digest[0] / 256.0 < VALIDATION_SHARE


def find_clips(folders: list[Path]) -> list[tuple[Path, int]]:
    from stream_detector.training.dataset import CLASSES, find_class_folders

    clips = []
    for root in folders:
        for folder in find_class_folders(root):
            for label, name in enumerate(CLASSES):
                clips += [
                    (path, label)
                    for path in sorted((folder / name).iterdir())
                    if path.suffix.lower() in VIDEO_SUFFIXES
                ]
    if not clips:
        raise StreamDetectorError(f"no video clips under {', '.join(map(str, folders))}")
    return clips


def clip_entry(path: Path, label: int, report: dict) -> dict:
    """What the evaluation keeps of one scan report."""
    tracks = report["tracks"]
    scored = [track for track in tracks if track["max_p_smoothed"] is not None]
    top = max(scored, key=lambda track: track["max_p_smoothed"]) if scored else None
    return {
        "clip": path.name,
        "folder": str(path.parent),
        "label": "fake" if label else "real",
        "validation": bool(label == 0 and is_validation_clip(path)),
        "verdict": report["verdict"],
        "duration_s": report["duration_s"],
        "tracks": len(tracks),
        "fake_tracks": sum(track["state"] == "FAKE" for track in tracks),
        "clip_score": top["max_p_smoothed"] if top else None,
        "mean_p_smoothed": top["mean_p_smoothed"] if top else None,
        "max_p_smoothed": top["max_p_smoothed"] if top else None,
        "time_to_first_verdict_ms": report["time_to_first_verdict_ms"],
    }


def summarise(entries: list[dict]) -> dict:
    from stream_detector.training.confounds import roc_auc

    table = {
        label: {
            verdict: sum(entry["verdict"] == verdict for entry in entries if entry["label"] == label)
            for verdict in ("FAKE", "REAL", "UNCERTAIN", "NO_FACE")
        }
        for label in ("real", "fake")
    }
    scored = [entry for entry in entries if entry["clip_score"] is not None]
    labels = [int(entry["label"] == "fake") for entry in scored]
    real = [entry for entry in entries if entry["label"] == "real"]
    hours = sum(entry["duration_s"] for entry in real) / 3600.0
    false_alarms = sum(entry["fake_tracks"] for entry in real)
    # Every fake clip against the real clips of one source at a time: a pooled clip AUC can rest on one
    # family of real footage the model scores low whatever it shows (studio clips), not on the swaps.
    fake_scores = [entry["clip_score"] for entry in scored if entry["label"] == "fake"]
    by_source: dict[str, list[float]] = {}
    for entry in scored:
        if entry["label"] == "real":
            by_source.setdefault(footage_source(entry["clip"]), []).append(entry["clip_score"])
    return {
        "clips": {"real": len(real), "fake": len(entries) - len(real)},
        "verdicts": table,
        "clip_roc_auc": roc_auc(labels, [entry["clip_score"] for entry in scored])
        if len(set(labels)) == 2
        else None,
        "clip_roc_auc_by_real_source": {
            source: {
                "real_clips": len(scores),
                "clip_roc_auc": roc_auc([1] * len(fake_scores) + [0] * len(scores), fake_scores + scores)
                if fake_scores
                else None,
            }
            for source, scores in sorted(by_source.items())
        },
        "real_footage_hours": round(hours, 6),
        "false_alarm_tracks": false_alarms,
        "false_alarms_per_hour": round(false_alarms / hours, 2) if hours else None,
        "fake_clips_called_fake": table["fake"]["FAKE"],
        "real_clips_called_fake": table["real"]["FAKE"],
    }


def plot_clip_scores(entries: list[dict], threshold: float, path: Path) -> None:
    from stream_detector.training.plots import _new_figure, _save

    figure = _new_figure((6.0, 4.0))
    axes = figure.add_subplot()
    for position, label in enumerate(("real", "fake")):
        values = [
            entry["clip_score"]
            for entry in entries
            if entry["label"] == label and entry["clip_score"] is not None
        ]
        # A deterministic horizontal spread so that equal scores stay visible.
        xs = [position + 0.25 * ((index * 0.618) % 1.0 - 0.5) for index in range(len(values))]
        axes.scatter(
            xs,
            values,
            s=18,
            color="tab:green" if label == "real" else "tab:red",
            label=f"{label} ({len(values)})",
        )
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"FAKE at {threshold:.2f}")
    axes.set_xticks([0, 1], ["real clips", "fake clips"])
    axes.set_ylabel("clip score: max smoothed p(fake)")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from stream_detector.pipeline.engine import EngineSettings, build_engine
    from stream_detector.pipeline.smoothing import SmootherSettings, live_threshold_key
    from stream_detector.scan.report import scan_video

    clips = find_clips(arguments.videos or [DEFAULT_VIDEOS])
    if arguments.choose_threshold:
        clips = [(path, label) for path, label in clips if label == 0 and is_validation_clip(path)]
        if not clips:
            raise StreamDetectorError("--choose-threshold: no validation real clips among the folders given")
        if not arguments.record.is_file():
            raise StreamDetectorError(
                f"--choose-threshold needs the training record: {arguments.record} not found"
            )
    # The threshold recorded for the scoring measured, unless one is given.
    fake_enter, fake_enter_from = recorded_threshold(arguments.model_dir, arguments.mirror_average)
    if arguments.fake_enter is not None:
        fake_enter, fake_enter_from = arguments.fake_enter, "--fake-enter"
    elif arguments.model_dir and fake_enter_from == SHIPPED_THRESHOLD and not arguments.choose_threshold:
        print(
            f"note: {arguments.model_dir} records no live threshold for this scoring; the shipped "
            f"model's {fake_enter} judges it (--choose-threshold records one)",
            file=sys.stderr,
        )
    smoothing = SmootherSettings(fake_enter=fake_enter)
    settings = EngineSettings(
        backend=arguments.backend,
        mirror_average=arguments.mirror_average,
        detector_range="short" if arguments.detector_range == "short" else "full",
        classify_hz=0.0,
        smoothing=smoothing,
        model_dir=str(arguments.model_dir) if arguments.model_dir else None,
    )
    if arguments.choose_threshold:
        # Scored without a FAKE state, so that no hysteresis hides how high a real track's evidence went.
        settings = replace(settings, smoothing=replace(smoothing, fake_enter=1.0))
    engine = build_engine(settings)
    short_settings = replace(settings, detector_range="short")
    short_engine = build_engine(short_settings) if arguments.detector_range == "auto" else None
    entries, started = [], time.monotonic()
    try:
        if arguments.choose_threshold:
            # Before the clips: a missing faces folder stops in seconds, not after every clip.
            face_threshold = validation_face_threshold(
                arguments.record, arguments.faces, engine.classifier, arguments.cache
            )
        for path, label in clips:
            report = scan_video(
                path, settings, max_seconds=arguments.max_seconds, progress=False, engine=engine
            )
            if short_engine is not None and report["frames_with_faces"] < 0.5 * report["frames"]:
                # Full range misses most tight face crops: the short-range model is made for them.
                short_report = scan_video(
                    path,
                    short_settings,
                    max_seconds=arguments.max_seconds,
                    progress=False,
                    engine=short_engine,
                )
                if short_report["frames_with_faces"] > report["frames_with_faces"]:
                    report = short_report
            entry = clip_entry(path, label, report)
            entry["detector"] = report["detector"]
            entries.append(entry)
            if not arguments.no_progress:
                print(
                    f"{entry['label']:4} {entry['verdict']:9} score {entry['clip_score'] or 0:.3f} "
                    f"{'(validation) ' if entry['validation'] else ''}{path}",
                    file=sys.stderr,
                )
    finally:
        engine.close()
        if short_engine is not None:
            short_engine.close()
    if arguments.choose_threshold:
        key = live_threshold_key(arguments.mirror_average)
        return record_threshold(arguments.record, entries, engine.backend, face_threshold, key)
    reported = [entry for entry in entries if not entry["validation"]]
    result = {
        "model": engine.backend,
        "fake_enter": settings.smoothing.fake_enter,
        "fake_enter_from": fake_enter_from,
        "rule": "clip score = highest max smoothed p(fake) of its tracks; verdicts by scan's rule",
        "seconds": round(time.monotonic() - started, 1),
        "reported": summarise(reported),
        "validation_clips": [entry["clip"] for entry in entries if entry["validation"]],
        "clips": entries,
    }
    if arguments.plot:
        plot_clip_scores(reported, settings.smoothing.fake_enter, arguments.plot)
    text = json.dumps(result, indent=1)
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(text)
        summary = result["reported"]
        print(
            f"clips: {summary['fake_clips_called_fake']} of {summary['clips']['fake']} fake clips FAKE, "
            f"{summary['real_clips_called_fake']} of {summary['clips']['real']} real clips FAKE, "
            f"{summary['false_alarms_per_hour']} false alarms per hour, clip AUC {summary['clip_roc_auc']}",
            file=sys.stderr,
        )
        by_source = [
            f"{source} ({entry['real_clips']}) {entry['clip_roc_auc']:.3f}"
            for source, entry in summary["clip_roc_auc_by_real_source"].items()
            if entry["clip_roc_auc"] is not None
        ]
        if by_source:
            print("clip AUC against each source of real clips: " + ", ".join(by_source), file=sys.stderr)
    else:
        print(text)
    return 0


def validation_face_threshold(record_path: Path, faces_root: Path, classifier, cache_dir: Path) -> float:
    """The score 99 % of the record's real validation faces stay under, scored by ``classifier``:
    the engine's own scoring. train.py's calibration figure comes from Keras plain scores, which
    spread wider than int8 mirror-averaged ones (v5: 0.861 recorded, 0.832 as the engine scores;
    model card, "a cosine twice as long again")."""
    import numpy as np

    from stream_detector.pipeline.classifier import classify_in_batches
    from stream_detector.pipeline.crops import CROP_SIZE
    from stream_detector.training.dataset import load_listed_faces, read_record_splits, resize_crop
    from stream_detector.training.metrics import real_score_at_false_alarm_rate

    splits = read_record_splits(record_path, "--choose-threshold", ("validation",))["validation"]
    if not splits:
        raise StreamDetectorError(f"--choose-threshold: {record_path} lists no validation split")
    scores = []
    # The self-blends are made in training and have no folder: only the real sources are scored.
    for source, files in sorted(splits.items()):
        if source == "sbi":
            continue
        folder = faces_root / source
        if not folder.is_dir():
            raise StreamDetectorError(
                f"--choose-threshold: validation faces of {source!r} not found at {folder} (see --faces)"
            )
        for faces in load_listed_faces(
            folder, set(files), no_face="whole", cache_dir=cache_dir, progress=False
        ):
            reals = [
                resize_crop(crop, CROP_SIZE)
                for crop, label in zip(faces.crops, faces.labels, strict=True)
                if label == 0
            ]
            scores.append(classify_in_batches(classifier, reals))
    real_scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    if real_scores.size == 0:
        raise StreamDetectorError(f"--choose-threshold: no real validation faces found under {faces_root}")
    return real_score_at_false_alarm_rate(real_scores)


SHIPPED_THRESHOLD = "the shipped model's (stream_detector.pipeline.smoothing)"


def recorded_threshold(model_dir: Path | None, mirror_average: bool) -> tuple[float, str]:
    """The live FAKE threshold for a model and scoring, and where it came from: the one
    --choose-threshold recorded beside the model (--model-dir's training.json), else the shipped
    model's (pipeline.smoothing.recorded_live_threshold, which the daemon's config reads too)."""
    from stream_detector.pipeline.smoothing import live_threshold_key, recorded_live_threshold

    try:
        threshold, record_path = recorded_live_threshold(model_dir, mirror_average)
    except ValueError as error:
        raise StreamDetectorError(str(error)) from None
    if record_path is None:
        return threshold, SHIPPED_THRESHOLD
    return threshold, f"{record_path} ({live_threshold_key(mirror_average)})"


def record_threshold(
    record_path: Path,
    entries: list[dict],
    classifier: str,
    face_threshold: float,
    key: str = "live_threshold",
) -> int:
    """Choose the live FAKE threshold from the validation clips' tracks and write it to the training
    record under ``key`` (one per scoring: pipeline/smoothing.py's LIVE_THRESHOLD_* constants).
    ``face_threshold``: the real validation faces' 1 %-false-alarm score with this scoring
    (validation_face_threshold)."""
    from stream_detector.training.dataset import read_training_record

    record = read_training_record(record_path, "--choose-threshold")
    highest = max((entry["max_p_smoothed"] or 0.0) for entry in entries)
    # Rounded up, never to the nearest: a threshold rounded down would sit under the score it must not
    # be below (v2's faces gave 0.80124, which rounds to 0.801).
    threshold = min(0.99, math.ceil(max(face_threshold, highest + THRESHOLD_MARGIN) * 1000 - 1e-9) / 1000)
    record[key] = {
        "fake_enter": threshold,
        "rule": "max(1 %-false-alarm score of validation faces, highest smoothed p(fake) of any "
        f"validation real-clip track + {THRESHOLD_MARGIN}): no false alarm on the validation footage",
        "face_threshold": face_threshold,
        # What scored the faces: the engine's classifier (records before 2026-12-07 took train.py's
        # Keras plain figure, which has no such entry).
        "face_threshold_scoring": classifier,
        "highest_validation_real_track": highest,
        # The scoring the tracks were measured with ("litert-int8+mirror": the engine's mirror averaging).
        "classifier": classifier,
        "validation_clips": [entry["clip"] for entry in entries],
        "validation_real_seconds": round(sum(entry["duration_s"] for entry in entries), 1),
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"live FAKE threshold: {threshold} (faces: {face_threshold:.3f}, highest validation real track "
        f"{highest:.3f}, {len(entries)} clips) -> {record_path} ({key})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("evaluate_clips", main)
