"""``stream-detector scan PATH``: arguments -> stream_detector.scan (the report and its verdict rule)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stream_detector.apps.arguments import add_engine_arguments
from stream_detector.errors import SourceError, StreamDetectorError
from stream_detector.scan.report import scan_folder, scan_image, scan_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="an image, a folder of images, or a video file")
    parser.add_argument("--json", dest="json_path", help="write the report here (default: stdout)")
    parser.add_argument("--output", help="write the annotated video (or image) here")
    add_engine_arguments(parser, classify_hz=0.0)
    parser.add_argument("--max-seconds", type=float, default=None, help="scan only the start of a video")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path).expanduser()
    if not path.exists():
        raise SourceError(f"no such file: {path}")
    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.exists():
        raise StreamDetectorError(f"--output folder does not exist: {output.parent}")
    from stream_detector.pipeline.engine import settings_from_arguments
    from stream_detector.pipeline.sources import is_image_file

    settings = settings_from_arguments(args)

    if path.is_dir():
        report = scan_folder(path, settings)
    elif is_image_file(path):
        report = scan_image(path, settings, output)
    else:
        report = scan_video(
            path, settings, output, max_seconds=args.max_seconds, progress=not args.no_progress
        )

    text = json.dumps(report, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
        print(f"scan: {report['verdict']} -> {args.json_path}", file=sys.stderr)
    else:
        print(text)
    if report.get("complete") is False:
        print(f"scan: warning: {path}: {report['stopped']['reason']}", file=sys.stderr)
        return 1
    return 0
