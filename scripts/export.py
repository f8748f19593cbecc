#!/usr/bin/env python
"""Export a trained .keras model to LiteRT fp32 and int8 beside it (TensorFlow backend).

python scripts/export.py [--model model/detector.keras] [--out model/] [--calibration-data ../shared/data/faces/dfdc]

With --calibration-data, int8 is full-integer: its activation ranges come from 300 face crops of those
folders, taken only from the files the training record beside the model lists as *training* faces
(never validation or test ones; folders without a record entry are refused). Without it, int8 is
dynamic-range (weights only). The shipped v4 int8 file: --calibration-data ../shared/data/faces/dfdc.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "model" / "detector.keras")
    parser.add_argument("--out", type=Path, help="folder for the .tflite files (default: beside --model)")
    parser.add_argument(
        "--calibration-data",
        type=Path,
        action="append",
        help="folder of face crops (real/ and fake/) for full-integer int8; its training-split files only",
    )
    arguments = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from stream_detector.pipeline.model import load_keras_model
    from stream_detector.training.export import export_all, sample_crops

    # The folders are checked before the model is loaded, so a wrong path fails at once.
    crops = (
        training_crops(arguments.calibration_data, arguments.model.parent / "training.json")
        if arguments.calibration_data
        else None
    )
    model = load_keras_model(arguments.model)
    calibration = None
    if crops is not None:
        calibration = sample_crops(crops, int(model.input_shape[1]))
        print(f"export: full-integer int8 from {len(calibration)} training-split crops")
    for name, path in export_all(model, arguments.out or arguments.model.parent, calibration).items():
        print(f"export: {name} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def training_crops(folders: list[Path], record_path: Path) -> list:
    """RGB crops of the training-split files of ``folders`` (the record's ``splits.train``), whole images
    as the DFDC crops are filed; a folder the record does not list is refused."""
    import cv2

    from stream_detector.errors import StreamDetectorError
    from stream_detector.training.dataset import (
        decode_image,
        in_file_list,
        list_images,
        read_record_splits,
    )

    if not record_path.is_file():
        raise StreamDetectorError(
            f"--calibration-data needs the training record beside the model: {record_path}"
        )
    splits = read_record_splits(record_path, "--calibration-data", ("train",))["train"]
    crops = []
    for folder in folders:
        if not folder.is_dir():
            raise StreamDetectorError(f"calibration folder not found: {folder}")
        if folder.name not in splits:
            raise StreamDetectorError(
                f"{folder}: the training record lists no training files of {folder.name!r} "
                f"(it has {', '.join(sorted(splits))})"
            )
        names = set(splits[folder.name])
        for path, _label in list_images(folder):
            if in_file_list(path, names):
                crops.append(cv2.cvtColor(decode_image(path), cv2.COLOR_BGR2RGB))
    if not crops:
        raise StreamDetectorError("--calibration-data: no training-split image found in those folders")
    return crops


if __name__ == "__main__":
    from tools.script import run_script

    run_script("export", main)
