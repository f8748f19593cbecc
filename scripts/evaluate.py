#!/usr/bin/env python
"""Evaluate a model on face folders laid out as real/ and fake/.

    python scripts/evaluate.py --data DIR [--data DIR ...] --json report.json [--plots DIR] [--robustness]
    python scripts/evaluate.py --split test --robustness --json model/metrics.json --plots model/plots

Metrics per --data folder (keyed by the path as given) and over all of them ("all"): accuracy,
precision, recall, F1, confusion matrix, ROC-AUC, EER, TPR at 1% FPR, Brier score, ECE. With
--robustness, the same after JPEG re-compression at quality 90/70/50 and after a 112 px round trip.
--split test keeps only the files that training set aside as its test split (model/training.json); a
folder of a source the model never trained on (faces/gan-b) is evaluated whole.
--equalise-compression gives lossless files the JPEG-75 history of the fakes first, as training does.
Every folder also gets a confound audit (stream_detector/training/confounds.py): per image statistic
(sharpness, blockiness, face size, brightness, saturation) its own AUC, the model's AUC within its
strata and the model's within-class Spearman correlation with it. Where groups.csv pairs a fake with
the real of the video it was made from (DFDC), "scene_paired" says how often the fake scores above its
own real: scene, camera and compression alike, so 0.5 is a model that scores the scene. Unreadable
images are skipped and counted (--unreadable error stops instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)
from stream_detector.errors import StreamDetectorError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
CONDITIONS = {
    "clean": None,
    "jpeg90": ("jpeg", 90),
    "jpeg70": ("jpeg", 70),
    "jpeg50": ("jpeg", 50),
    "downscale112": ("downscale", 112),
    # The sharpness shortcut's tests: a blurrier real face must not look fake, a sharper fake not real.
    "blur1": ("blur", 1.0),
    "blur2": ("blur", 2.0),
    "downup2": ("downup", 2),
    "downup3": ("downup", 3),
    "sharpen": ("sharpen", 1.0),
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    from stream_detector.apps.arguments import add_mirror_average_argument

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", action="append", help="folder with real/ and fake/ (repeatable)")
    parser.add_argument("--json", type=Path, help="write the report here (default: stdout)")
    parser.add_argument("--plots", type=Path, help="write ROC, confusion matrix and reliability PNGs here")
    parser.add_argument(
        "--model", type=Path, default=REPO / "model" / "detector.keras", help=".keras or .tflite file"
    )
    parser.add_argument(
        "--robustness", action="store_true", help="also JPEG 90/70/50 and a 112 px round trip"
    )
    parser.add_argument(
        "--split", choices=["train", "validation", "test"], help="only the files of this training split"
    )
    parser.add_argument(
        "--training-record", type=Path, help="training.json that lists the splits (default: beside --model)"
    )
    parser.add_argument(
        "--preprocess",
        choices=["crop", "whole"],
        default="crop",
        help="crop: detect and crop faces (ours); whole: the whole image (the reference recipe)",
    )
    parser.add_argument(
        "--no-face",
        choices=["skip", "whole", "error"],
        default="skip",
        help="an image with no detected face: skip it (default), use it whole, or stop",
    )
    parser.add_argument(
        "--equalise-compression",
        action="store_true",
        help="JPEG-compress lossless files whole at quality 75 before their faces are cut, as training "
        "does: in ffhq-tpdne this scores the faces with no PNG-vs-JPEG difference left to exploit",
    )
    parser.add_argument(
        "--unreadable",
        choices=["skip", "error"],
        default="skip",
        help="an image that does not decode: skip and count it (default, listed in the JSON), or stop",
    )
    parser.add_argument(
        "--no-audit",
        action="store_true",
        help="leave out the confound audit (it costs a pass over the crops)",
    )
    add_mirror_average_argument(
        parser,
        "score each crop and its mirror image and average the two logits, as the engine does by "
        "default (EngineSettings.mirror_average; model card, 'Mirror averaging'); default on",
    )
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


class Predictor:
    """Batched p(fake) from a .keras model (any square input size) or a .tflite file (224)."""

    def __init__(self, path: Path, mirror_average: bool = False) -> None:
        from stream_detector.errors import ModelError

        if not path.is_file():
            raise ModelError(f"model file missing: {path}")
        if path.suffix == ".tflite":
            from stream_detector.pipeline.classifier import LiteRTClassifier

            self._classifier = LiteRTClassifier(path, name=path.stem)
            self.size = 224
        else:
            from stream_detector.pipeline.classifier import KerasClassifier
            from stream_detector.pipeline.model import load_keras_model

            self._classifier = KerasClassifier(model=load_keras_model(path))
            self.size = self._classifier.size
        if mirror_average:
            from stream_detector.pipeline.classifier import MirrorAveragedClassifier

            self._classifier = MirrorAveragedClassifier(self._classifier)

    def __call__(self, images):
        from stream_detector.pipeline.classifier import classify_in_batches

        return classify_in_batches(self._classifier, images)


def degrade(crop, condition, size: int):
    from stream_detector.training.dataset import jpeg, resize_crop

    if condition is None:
        return resize_crop(crop, size)
    kind, value = condition
    import cv2

    if kind == "jpeg":
        # Compress at the face's native resolution, as a re-encoded upload or stream would.
        return resize_crop(jpeg(crop, value), size)
    if kind == "blur":
        return resize_crop(cv2.GaussianBlur(crop, (0, 0), value), size)
    if kind == "downup":
        side = crop.shape[0]
        small = cv2.resize(crop, (max(8, side // value),) * 2, interpolation=cv2.INTER_AREA)
        return resize_crop(cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR), size)
    if kind == "sharpen":
        from stream_detector.training.blending import sharpen

        return resize_crop(sharpen(crop, amount=value), size)

    small = cv2.resize(resize_crop(crop, size), (value, value), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def load_folder(path: Path, arguments, keep: set[str] | None):
    """All faces under path (every real/fake folder inside it), optionally restricted to some files."""
    from stream_detector.training.dataset import FAKE_CLASS_JPEG_QUALITY, load_listed_faces
    from stream_detector.training.reference import whole_image

    sets = load_listed_faces(
        path,
        keep,
        no_face=arguments.no_face,
        cache_dir=arguments.cache,
        progress=not arguments.no_progress,
        equalise_quality=FAKE_CLASS_JPEG_QUALITY if arguments.equalise_compression else None,
        unreadable=arguments.unreadable,
    )
    if arguments.preprocess == "whole":
        sets = [replace(faces, crops=[whole_image(file, 224) for file in faces.files]) for faces in sets]
    return sets


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="evaluate: %(message)s")
    import numpy as np

    from stream_detector.training.metrics import (
        binary_metrics,
        real_score_at_false_alarm_rate,
        reliability_bins,
        roc_curve,
        scene_paired,
    )

    data = arguments.data or [str(DEFAULT_DATA)]
    split_files: dict[str, set[str]] | None = None
    if arguments.split:
        record_path = arguments.training_record or arguments.model.parent / "training.json"
        if not record_path.is_file():
            raise StreamDetectorError(f"--split needs the training record: {record_path} not found")
        from stream_detector.training.dataset import read_record_splits

        listed = read_record_splits(record_path, "--split", (arguments.split,))[arguments.split]
        split_files = {source: set(files) for source, files in listed.items()}
    predictor = Predictor(arguments.model, mirror_average=arguments.mirror_average)
    conditions = CONDITIONS if arguments.robustness else {"clean": None}
    report: dict = {
        "model": str(arguments.model),
        "split": arguments.split,
        "preprocess": arguments.preprocess,
        "equalise_compression": arguments.equalise_compression,
        "mirror_average": arguments.mirror_average,
        "sources": {},
    }
    pooled: dict[str, tuple[list, list]] = {name: ([], []) for name in conditions}
    for entry in data:
        # --split applies to the sources the model was trained on; a source it never saw (gan-b) is
        # evaluated whole: none of it chose anything.
        keep = None if split_files is None else split_files.get(Path(entry).name)
        sets = load_folder(Path(entry), arguments, keep)
        labels = np.concatenate([faces.labels for faces in sets])
        crops = [crop for faces in sets for crop in faces.crops]
        if len(labels) == 0 or len(set(labels.tolist())) < 2:
            raise StreamDetectorError(
                f"{entry}: needs faces of both classes (found {len(labels)} usable images)"
            )
        # Images of this evaluation (this split, with --split) in which no face was found.
        result = {"images": int(len(labels)), "no_face": sum(faces.no_face_in(keep) for faces in sets)}
        unreadable = [file for faces in sets for file in faces.unreadable_files]
        result["unreadable"] = {
            "count": len(unreadable),
            "first": [Path(file).name for file in unreadable[:10]],
        }
        for name, condition in conditions.items():
            scores = predictor(np.stack([degrade(crop, condition, predictor.size) for crop in crops]))
            metrics = binary_metrics(labels, scores, threshold=arguments.threshold)
            if name == "clean":
                result.update(metrics)
                result["reliability"] = reliability_bins(labels, scores)
                result["_scores"] = scores
            else:
                result.setdefault("robustness", {})[name] = metrics
                # The trap's question: how many real faces does re-compression alone turn "fake"?
                real = labels == 0
                result["robustness"][name]["real_flipped_to_fake"] = float(
                    np.mean(
                        (scores[real] >= arguments.threshold)
                        & (result["_scores"][real] < arguments.threshold)
                    )
                )
                # And the sharpness trap's other side: does a sharper fake look real?
                result["robustness"][name]["fake_flipped_to_real"] = float(
                    np.mean(
                        (scores[~real] < arguments.threshold)
                        & (result["_scores"][~real] >= arguments.threshold)
                    )
                )
            pooled[name][0].append(labels)
            pooled[name][1].append(scores)
        result["_labels"] = labels
        # Where groups pair a fake with its own source video's real (DFDC), the same-scene comparison.
        paired = scene_paired(labels, result["_scores"], [group for faces in sets for group in faces.groups])
        if paired is not None:
            result["scene_paired"] = paired
        if not arguments.no_audit:
            from stream_detector.training.confounds import audit_statistics, confound_audit

            result["confounds"] = confound_audit(labels, result["_scores"], audit_statistics(crops))
        report["sources"][entry] = result
        print(
            f"{entry}: {len(labels)} images, AUC {result['roc_auc']:.4f}, accuracy {result['accuracy']:.4f}",
            file=sys.stderr,
        )
        if paired is not None:
            print(
                f"  same-scene pairs: {paired['pairs']}, the fake above its own real in "
                f"{paired['fake_above_its_real']:.3f} (mean difference {paired['mean_difference']:+.3f})",
                file=sys.stderr,
            )
        if unreadable:
            print(f"{entry}: {len(unreadable)} unreadable image(s) skipped", file=sys.stderr)
        for statistic, audit in result.get("confounds", {}).items():
            if isinstance(audit, dict):
                print(
                    f"  {statistic}: alone AUC {audit['statistic_auc']:.3f}, model within strata "
                    f"{audit['model_stratified_auc'] or float('nan'):.3f}",
                    file=sys.stderr,
                )

    all_labels = np.concatenate(pooled["clean"][0])
    all_scores = np.concatenate(pooled["clean"][1])
    report["all"] = binary_metrics(all_labels, all_scores, threshold=arguments.threshold)
    report["all"]["reliability"] = reliability_bins(all_labels, all_scores)
    # The face half of the live threshold rule (evaluate_clips.py --choose-threshold), measured with
    # this run's scoring: mirror averaging and int8 spread the scores differently from the Keras
    # plain scores train.py records (model card, "a cosine twice as long again").
    report["all"]["real_score_at_1pct_false_alarms"] = real_score_at_false_alarm_rate(
        all_scores[all_labels == 0]
    )
    for name in conditions:
        if name != "clean":
            report["all"].setdefault("robustness", {})[name] = binary_metrics(
                np.concatenate(pooled[name][0]),
                np.concatenate(pooled[name][1]),
                threshold=arguments.threshold,
            )

    if arguments.plots:
        from stream_detector.training.plots import plot_confusion_matrix, plot_reliability, plot_roc

        curves = {}
        for entry, result in report["sources"].items():
            fpr, tpr, _ = roc_curve(result["_labels"], result["_scores"])
            curves[Path(entry).name or entry] = (fpr, tpr, result["roc_auc"])
        fpr, tpr, _ = roc_curve(all_labels, all_scores)
        curves["all"] = (fpr, tpr, report["all"]["roc_auc"])
        plot_roc(curves, arguments.plots / "roc.png")
        plot_confusion_matrix(
            report["all"]["confusion_matrix_rows"], arguments.plots / "confusion_matrix.png"
        )
        plot_reliability(report["all"]["reliability"], arguments.plots / "reliability.png")
    for result in report["sources"].values():
        for private in ("_scores", "_labels"):
            result.pop(private, None)
    # One entry per --data folder keyed by the path as given, beside "all", so scripts can index it.
    all_entry = report.pop("all")
    sources = report.pop("sources")
    report = {**report, **sources, "all": all_entry}
    text = json.dumps(report, indent=1)
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("evaluate", main)
