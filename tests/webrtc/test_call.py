import json

import numpy as np

from stream_detector.pipeline.types import Verdict, VerdictState
from stream_detector.webrtc.annotator import ThumbnailSchedule, thumbnail
from stream_detector.webrtc.call import CallSummary
from stream_detector.webrtc.signalling import parse_control, verdict_message


def verdict(face_id: int, state: VerdictState, p: float = 0.5) -> Verdict:
    return Verdict(face_id, (10.0, 10.0, 110.0, 110.0), state, p, 0.0)


def test_the_call_verdict_follows_the_file_rule_over_time():
    call = CallSummary()
    assert call.to_json(0.0)["verdict"] == "NO_FACE"
    for index in range(10):  # 1 s of two faces, both UNCERTAIN
        call.update([verdict(1, VerdictState.UNCERTAIN), verdict(2, VerdictState.UNCERTAIN)], index * 100.0)
    summary = call.to_json(1000.0)
    assert summary["verdict"] == "UNCERTAIN" and summary["headline"] == "not enough evidence yet"
    for index in range(10, 40):  # face 1 REAL, face 2 FAKE for 3 s
        call.update([verdict(1, VerdictState.REAL, 0.1), verdict(2, VerdictState.FAKE, 0.9)], index * 100.0)
    summary = call.to_json(4000.0)
    assert summary == {
        "verdict": "FAKE",
        "headline": "1 face(s) look manipulated",
        "faces": 2,
        "fake_faces": 1,
        "checked_s": 4.0,
    }


def test_all_real_faces_make_a_clean_call_and_a_stall_is_not_evidence():
    call = CallSummary()
    call.update([verdict(1, VerdictState.UNCERTAIN)], 0.0)
    # One frame, then a 60 s freeze: the frame counts for 0.5 s at most, not a minute.
    call.update([verdict(1, VerdictState.REAL)], 60_000.0)
    assert call.tracks[1].state_ms["REAL"] == 500.0
    for index in range(1, 20):
        call.update([verdict(1, VerdictState.REAL)], 60_000.0 + index * 100.0)
    assert call.to_json(62_000.0)["headline"] == "no sign of a deepfake so far"


def test_thumbnails_at_most_once_a_second_per_face():
    schedule = ThumbnailSchedule(every_ms=1000.0)
    assert [schedule.due(1, t) for t in (0.0, 400.0, 999.0, 1000.0, 1500.0, 2100.0)] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert schedule.due(2, 400.0)  # each face on its own clock
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:150, 100:200] = 255
    data = thumbnail(image, (100.0, 50.0, 200.0, 150.0))
    assert data.startswith("data:image/jpeg;base64,") and len(data) < 4000
    assert thumbnail(image, (500.0, 500.0, 600.0, 600.0)) == ""  # off the frame: nothing


def test_the_message_carries_source_call_and_per_face_extras():
    text = verdict_message(
        frame_index=3,
        width=1920,
        height=1080,
        verdicts=[verdict(4, VerdictState.REAL, 0.12)],
        fps=14.9,
        latency_ms=40.0,
        dropped=0,
        extras={4: {"too_small": True}},
        source="screen",
        call={"verdict": "UNCERTAIN"},
        smallest_judged_px=48,
    )
    message = json.loads(text)
    assert message["source"] == "screen" and message["call"] == {"verdict": "UNCERTAIN"}
    assert message["faces"][0]["too_small"] is True and message["smallest_judged_px"] == 48
    assert parse_control('{"type": "source", "kind": "screen"}') == "screen"
    for junk in ('{"type": "source", "kind": "tv"}', "not json", "[" * 5000, '{"type": "other"}'):
        assert parse_control(junk) is None
