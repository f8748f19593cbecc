"""Placeholder until this app is built; replaced by its issue's work."""

from __future__ import annotations

import argparse

from stream_detector.errors import StreamDetectorError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise StreamDetectorError("this command is not built yet")
