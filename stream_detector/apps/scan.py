"""``stream-detector scan PATH``: arguments -> stream_detector.scan (the report and its verdict rule)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stream_detector.apps.arguments import add_engine_arguments
from stream_detector.errors import SourceError, StreamDetectorError
from stream_detector.scan.report import scan_folder, scan_image, scan_video

IMAGE_OUTPUTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_OUTPUTS = (".mp4", ".avi")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", help="an image, a folder of images, a video file, or a stream URL (rtsp://, http(s)://)"
    )
    parser.add_argument("--json", dest="json_path", help="write the report here (default: stdout)")
    parser.add_argument("--output", help="write the annotated video (.mp4/.avi) or image (.jpg/.png) here")
    add_engine_arguments(parser, classify_hz=0.0)
    parser.add_argument(
        "--max-seconds",
        type=positive_seconds,
        default=None,
        help="scan only the start of a video; a stream URL is scanned for this long (required there)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def check_output_file(option: str, value: str | None, suffixes: tuple[str, ...] | None = None) -> Path | None:
    """Refuse, before any work, an output path that could not be written at the end."""
    if not value:
        return None
    output = Path(value).expanduser()
    if output.is_dir():
        raise StreamDetectorError(f"{option} {output} is a folder: give a file name")
    if not output.parent.is_dir():
        raise StreamDetectorError(f"{option} folder does not exist: {output.parent}")
    if not os.access(output.parent, os.W_OK):
        raise StreamDetectorError(f"{option} folder is not writable: {output.parent}")
    if suffixes is not None and output.suffix.lower() not in suffixes:
        raise StreamDetectorError(f"{option} {output}: use a name ending in {' or '.join(suffixes)}")
    return output


def run(args: argparse.Namespace) -> int:
    from stream_detector.pipeline.sources import is_image_file, is_url, redact_url

    check_output_file("--json", args.json_path)
    stream = is_url(args.path.strip())
    path = Path(args.path.strip()) if stream else Path(args.path).expanduser()
    if stream:
        if args.max_seconds is None:
            raise StreamDetectorError(
                f"scan of a stream needs --max-seconds (how long to watch {redact_url(args.path.strip())})"
            )
        kind = "stream"
    elif not path.exists():
        raise SourceError(f"no such file: {path}")
    elif path.is_dir():
        kind = "folder"
    else:
        kind = "image" if is_image_file(path) else "video"
    if kind == "folder" and args.output:
        raise StreamDetectorError("--output writes one annotated file: it does not apply to a folder scan")
    output = check_output_file("--output", args.output, IMAGE_OUTPUTS if kind == "image" else VIDEO_OUTPUTS)
    from stream_detector.pipeline.engine import settings_from_arguments

    settings = settings_from_arguments(args)

    if kind == "folder":
        report = scan_folder(path, settings)
    elif kind == "image":
        report = scan_image(path, settings, output)
    else:
        # A URL keeps its text: Path() would fold rtsp://host into rtsp:/host.
        report = scan_video(
            args.path.strip() if stream else path,
            settings,
            output,
            max_seconds=args.max_seconds,
            progress=not args.no_progress,
        )

    text = json.dumps(report, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
        print(f"scan: {report['verdict']} -> {args.json_path}", file=sys.stderr)
    else:
        print(text)
    if report.get("complete") is False:
        for problem in (report.get("damaged"), report.get("stopped")):
            if problem:
                print(f"scan: warning: {path}: {problem['reason']}", file=sys.stderr)
        return 1
    return 0
