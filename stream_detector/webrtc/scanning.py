"""The real ``Scanner`` for ``POST /scan``: the ``scan`` command's report for an uploaded file."""

from __future__ import annotations

from stream_detector.engine import EngineSettings
from stream_detector.webrtc.server import Scanner


def build_scanner(settings: EngineSettings) -> Scanner | None:
    """None while the scan command is not available (the page then says scanning is off)."""
    return None
