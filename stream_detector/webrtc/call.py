"""The verdict for a whole call, from the same rule as ``scan``'s file verdict (scan/report.py).

Each face track accumulates the time it spends in each smoothed state (a frame stands for the time
until the next processed frame, capped so that a stall does not count as evidence); the call's verdict
is ``file_verdict`` over those tracks. Pure: timestamps are arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_detector.pipeline.types import Verdict, VerdictState
from stream_detector.scan.report import NO_FACE, TrackSummary, file_verdict, track_state

# One processed frame counts for at most this long (a frozen share is not minutes of evidence).
MAX_FRAME_MS = 500.0

HEADLINES = {
    VerdictState.FAKE.value: "{fakes} face(s) look manipulated",
    VerdictState.REAL.value: "no sign of a deepfake so far",
    VerdictState.UNCERTAIN.value: "not enough evidence yet",
    NO_FACE: "no face seen yet",
}


class CallSummary:
    def __init__(self) -> None:
        self.tracks: dict[int, TrackSummary] = {}
        self.started_ms: float | None = None
        self._last_ms: float | None = None

    def update(self, verdicts: Sequence[Verdict], timestamp_ms: float) -> None:
        if self.started_ms is None:
            self.started_ms = timestamp_ms
        step = 0.0 if self._last_ms is None else min(MAX_FRAME_MS, max(0.0, timestamp_ms - self._last_ms))
        self._last_ms = timestamp_ms
        for verdict in verdicts:
            track = self.tracks.get(verdict.id)
            if track is None:
                track = self.tracks[verdict.id] = TrackSummary(id=verdict.id, first_ms=timestamp_ms)
            track.frames_seen += 1
            track.last_ms = timestamp_ms
            track.state_ms[str(verdict.state)] += step
            track.smoothed.append(verdict.p_smoothed)
            del track.smoothed[:-1]  # only the latest is ever read here; a long call stays small
            track.state = track_state(track)

    def to_json(self, now_ms: float) -> dict[str, object]:
        tracks = list(self.tracks.values())
        verdict, _ = file_verdict(tracks)
        fakes = sum(track.state == VerdictState.FAKE.value for track in tracks)
        return {
            "verdict": verdict,
            "headline": HEADLINES[verdict].format(fakes=fakes),
            "faces": len(tracks),
            "fake_faces": fakes,
            "checked_s": round(0.0 if self.started_ms is None else (now_ms - self.started_ms) / 1000.0, 1),
        }
