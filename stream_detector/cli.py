"""The ``stream-detector`` command: webcam | scan | daemon | serve. The only place that exits.

Each app module provides ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its heavy imports
(TensorFlow, MediaPipe, aiortc) inside ``run`` so that ``--help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import stream_detector  # noqa: F401  (imports pylibsrtp before anything can pull in TensorFlow)
from stream_detector.errors import StreamDetectorError

APPS = {
    "webcam": ("stream_detector.apps.webcam", "live overlay window on a camera, file or stream"),
    "scan": ("stream_detector.apps.scan", "verdicts for an image, folder or video file (JSON report)"),
    "daemon": (
        "stream_detector.apps.daemon",
        "monitor RTSP cameras from a config file; events, health, metrics",
    ),
    "serve": (
        "stream_detector.apps.webrtc",
        "WebRTC page: send your camera from a browser, get live verdicts",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-detector", description="Real-time deepfake detection on live video."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and the native libraries' own log lines (TensorFlow, LiteRT, FFmpeg, Qt)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in APPS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None, quiet_native: bool = False) -> int:
    """Run one command. ``quiet_native``: filter the native libraries' stderr noise (the program
    entry does; a caller embedding this in its own process keeps its stderr as it is)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The daemon turns native lines into structured log records itself (daemon/ops.NativeStderr).
    if quiet_native and not args.verbose and args.command != "daemon":
        from stream_detector.quiet import quiet_native_logs

        quiet_native_logs()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except StreamDetectorError as error:
        print(f"stream-detector {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> int:
    """The ``stream-detector`` program."""
    return main(quiet_native=True)


if __name__ == "__main__":
    sys.exit(entry())
