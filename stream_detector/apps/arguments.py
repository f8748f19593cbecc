"""The engine's command-line options, declared once for every command (webcam, scan, serve)."""

from __future__ import annotations

import argparse

from stream_detector.pipeline.engine import EngineSettings


def add_mirror_average_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--mirror-average / --no-mirror-average, defaulting to the engine's one declaration
    (EngineSettings.mirror_average): the commands, evaluate.py, evaluate_clips.py and the benchmarks
    each say in ``help_text`` what it does for them."""
    parser.add_argument(
        "--mirror-average",
        action=argparse.BooleanOptionalAction,
        default=EngineSettings().mirror_average,
        help=help_text,
    )


def add_engine_arguments(parser: argparse.ArgumentParser, classify_hz: float) -> None:
    """--backend, --mirror-average, --detector-range (alias --range), --min-face-size, --classify-hz; read back by
    pipeline.engine.settings_from_arguments. ``classify_hz`` is the command's own default."""
    parser.add_argument(
        "--backend", default="auto", help="classifier: auto (default: the fastest present), int8, fp32, keras"
    )
    add_mirror_average_argument(
        parser,
        "score each face and its mirror image, averaging the two (default on: a little more "
        "accurate for twice the classifier's work; --no-mirror-average on a slow machine)",
    )
    parser.add_argument(
        "--detector-range",
        "--range",
        dest="detector_range",
        default="full",
        choices=("full", "short"),
        help="BlazeFace model: full range (up to ~5 m, default) or short range (within ~2 m, tight crops)",
    )
    parser.add_argument(
        "--min-face-size", type=int, default=24, help="ignore faces smaller than this (px, default 24)"
    )
    parser.add_argument(
        "--classify-hz",
        type=float,
        default=classify_hz,
        help=f"classifications per second per face; 0 = every frame (default {classify_hz:g})",
    )
