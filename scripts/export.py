#!/usr/bin/env python
"""Export a trained .keras model to LiteRT fp32 and dynamic-range int8 beside it (TensorFlow backend).

python scripts/export.py [--model model/detector.keras] [--out model/]
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
    arguments = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from stream_detector.pipeline.model import load_keras_model
    from stream_detector.training.export import export_all

    model = load_keras_model(arguments.model)
    for name, path in export_all(model, arguments.out or arguments.model.parent).items():
        print(f"export: {name} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("export", main)
