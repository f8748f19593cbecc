import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from stream_detector.daemon.events import (
    EventPolicy,
    EventSinks,
    EventTracker,
    JsonlEventLog,
    OutageMonitor,
    SnapshotWriter,
    WebhookPolicy,
    WebhookSender,
)
from stream_detector.pipeline.types import Verdict, VerdictState

FAKE, REAL, UNCERTAIN = VerdictState.FAKE, VerdictState.REAL, VerdictState.UNCERTAIN
POLICY = EventPolicy(min_duration_s=1.0, end_after_s=1.0, cooldown_s=5.0, update_interval_s=3.0)


def verdict(track_id: int, state: VerdictState, p: float = 0.9) -> Verdict:
    return Verdict(id=track_id, box=(10, 10, 60, 60), state=state, p_smoothed=p, since_ms=0.0)


def tracker() -> EventTracker:
    counter = itertools.count(1)
    return EventTracker("door", POLICY, id_factory=lambda: f"e{next(counter)}")


def feed(events_tracker: EventTracker, timeline) -> list[tuple[float, str, str, int]]:
    """timeline: (t_ms, [verdicts]) at 100 ms steps -> (t, kind, event_id, track_id) of each event."""
    out = []
    for t, verdicts in timeline:
        for event in events_tracker.update(verdicts, t):
            out.append((t, event.kind, event.event_id, event.track_id))
    return out


def steps(start: float, stop: float, verdicts) -> list:
    return [(float(t), verdicts) for t in range(int(start), int(stop), 100)]


def test_one_incident_start_update_end():
    events = feed(
        tracker(),
        steps(0, 1000, [verdict(1, REAL, 0.1)])
        + steps(1000, 8000, [verdict(1, FAKE)])
        + steps(8000, 10000, [verdict(1, REAL, 0.1)]),
    )
    kinds = [(kind, event_id) for _, kind, event_id, _ in events]
    assert kinds == [("start", "e1"), ("update", "e1"), ("update", "e1"), ("end", "e1")]
    start_t, end_t = events[0][0], events[-1][0]
    assert start_t == 2000  # FAKE since 1000 + min_duration 1000
    assert end_t == 8900  # last FAKE at 7900 + end_after 1000


def test_a_flicker_shorter_than_the_minimum_never_opens_an_event():
    timeline = []
    for cycle in range(20):  # 800 ms FAKE, 200 ms REAL, over and over
        base = cycle * 1000
        timeline += steps(base, base + 800, [verdict(1, FAKE)]) + steps(
            base + 800, base + 1000, [verdict(1, REAL)]
        )
    assert feed(tracker(), timeline) == []


def test_short_gaps_do_not_close_an_event_and_the_end_carries_the_maximum():
    event_tracker = tracker()
    timeline = steps(0, 2000, [verdict(1, FAKE, 0.8)]) + steps(2000, 2500, [verdict(1, UNCERTAIN, 0.6)])
    timeline += steps(2500, 3000, [verdict(1, FAKE, 0.97)]) + steps(
        3000, 3500, []
    )  # the face vanishes briefly
    timeline += steps(3500, 4000, [verdict(1, FAKE, 0.85)]) + steps(4000, 6000, [])
    ends = [event for t, vs in timeline for event in event_tracker.update(vs, t) if event.kind == "end"]
    starts = [e for e in feed(tracker(), timeline) if e[1] == "start"]
    assert len(starts) == 1 and len(ends) == 1
    assert ends[0].max_p_smoothed == pytest.approx(0.97) and ends[0].p_smoothed == pytest.approx(0.85)
    assert ends[0].duration_ms == pytest.approx(4900 - 0)


def test_cooldown_turns_a_flapping_face_into_one_alert_per_cooldown():
    # FAKE 2 s, REAL 2 s, repeated for 20 s: without a cooldown that is five incidents.
    timeline = []
    for cycle in range(5):
        base = cycle * 4000
        timeline += steps(base, base + 2000, [verdict(1, FAKE)]) + steps(
            base + 2000, base + 4000, [verdict(1, REAL)]
        )
    starts = [e for e in feed(tracker(), timeline) if e[1] == "start"]
    assert [t for t, *_ in starts] == [
        1000,
        9000,
        17000,
    ]  # first at once; the next only after 5 s of cooldown
    no_cooldown = EventTracker("door", EventPolicy(1.0, 1.0, 0.0, 3.0))
    assert len([e for e in feed(no_cooldown, timeline) if e[1] == "start"]) == 5


def test_a_track_that_reappears_under_a_new_id_continues_the_same_event():
    timeline = (
        steps(0, 3000, [verdict(1, FAKE)]) + steps(3000, 3200, []) + steps(3200, 6000, [verdict(7, FAKE)])
    )
    timeline += steps(6000, 8000, [])
    events = feed(tracker(), timeline)
    assert [(kind, event_id) for _, kind, event_id, _ in events] == [
        ("start", "e1"),
        ("update", "e1"),
        ("end", "e1"),
    ]
    assert events[-1][3] == 7  # the end names the track that carried it last


def test_two_fake_faces_at_once_are_two_events():
    both = [verdict(1, FAKE), verdict(2, FAKE)]
    events = feed(tracker(), steps(0, 2000, both) + steps(2000, 4000, []))
    assert sorted((kind, track) for _, kind, _, track in events) == [
        ("end", 1),
        ("end", 2),
        ("start", 1),
        ("start", 2),
    ]


def test_close_all_ends_open_events_and_forgets_pending_ones():
    event_tracker = tracker()
    feed(
        event_tracker,
        steps(0, 1500, [verdict(1, FAKE)]) + steps(1500, 1600, [verdict(1, FAKE), verdict(2, FAKE)]),
    )
    assert event_tracker.open_events == 1
    (end,) = event_tracker.close_all(1600)
    assert end.kind == "end" and end.track_id == 1 and end.duration_ms == 1600
    assert event_tracker.open_events == 0 and event_tracker.close_all(1700) == []


def test_state_stays_bounded_over_many_short_lived_tracks():
    event_tracker = tracker()
    for track_id in range(5000):
        t = track_id * 100.0
        event_tracker.update([verdict(track_id, UNCERTAIN, 0.5)], t)
    assert len(event_tracker._last_seen) < 50 and len(event_tracker._fake_since) < 50


def test_jsonl_log_appends_complete_lines(tmp_path):
    log_file = JsonlEventLog(tmp_path / "sub" / "events.jsonl")
    sinks = EventSinks(log_file, SnapshotWriter(tmp_path / "snaps"))
    event_tracker = tracker()
    image = np.full((120, 160, 3), 128, np.uint8)
    for t, verdicts in steps(0, 2000, [verdict(1, FAKE)]) + steps(2000, 3200, []):
        for event in event_tracker.update(verdicts, t):
            sinks.emit(event, image)
    lines = (tmp_path / "sub" / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["kind"] for record in records] == ["start", "end"]
    assert records[0]["camera"] == "door" and records[0]["event_id"] == records[1]["event_id"] == "e1"
    assert records[0]["time"].endswith("+00:00")
    snapshot = records[0]["snapshot"]
    assert snapshot and (tmp_path / "snaps").joinpath(snapshot.rsplit("/", 1)[-1]).stat().st_size > 0
    assert records[1]["snapshot"] is None
    assert not list((tmp_path / "snaps").glob("*.tmp"))


class _Receiver:
    """A webhook receiver on 127.0.0.1 that can be told to fail or to hang."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.records: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                time.sleep(receiver.delay_s)
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.records.append({"body": json.loads(body), "auth": self.headers.get("Authorization")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_with_backoff_until_delivered():
    receiver = _Receiver(fail_first=2)
    policy = WebhookPolicy(
        timeout_s=2,
        max_retries=4,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        headers=(("Authorization", "Bearer t0k"),),
    )
    sender = WebhookSender(receiver.url, policy)
    try:
        sender.submit({"event_id": "e1", "kind": "start"})
        deadline = time.monotonic() + 10
        # The receiver has the record a moment before the sender has read its answer and counted it.
        while (not receiver.records or sender.stats.sent < 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.records == [{"body": {"event_id": "e1", "kind": "start"}, "auth": "Bearer t0k"}]
        assert receiver.attempts == 3 and sender.stats.failed_attempts == 2 and sender.stats.sent == 1
    finally:
        sender.close(0.5)
        receiver.close()


def test_a_hanging_webhook_never_blocks_submit_and_the_queue_stays_bounded():
    receiver = _Receiver(delay_s=3.0)
    sender = WebhookSender(receiver.url, WebhookPolicy(timeout_s=0.5, max_retries=0, queue_size=5))
    try:
        started = time.monotonic()
        for index in range(200):
            sender.submit({"event_id": f"e{index}"})
        submit_seconds = time.monotonic() - started
        assert sender.queue_depth <= 5
        assert sender.stats.dropped >= 194  # 200 submitted, at most 5 queued and 1 in flight
        assert submit_seconds < 0.5 * 200  # no submit waited for the receiver's timeout
    finally:
        sender.close(0.2)
        receiver.close()


def test_a_dead_webhook_gives_up_after_its_retries():
    sender = WebhookSender(
        "http://127.0.0.1:9/none", WebhookPolicy(timeout_s=0.5, max_retries=2, backoff_initial_s=0.01)
    )
    try:
        sender.submit({"event_id": "e1"})
        deadline = time.monotonic() + 10
        while sender.stats.given_up == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sender.stats.given_up == 1 and sender.stats.failed_attempts == 3 and sender.stats.sent == 0
    finally:
        sender.close(0.2)


def test_one_alert_per_camera_outage_and_none_for_short_flaps():
    monitor = OutageMonitor("door", alert_after_ms=5000)
    records = []
    # Flaps shorter than the threshold (2 s down, 1 s up, three times) raise nothing.
    t = 0.0
    for _ in range(3):
        for _ in range(20):
            records.append(monitor.update(False, t, "connection refused"))
            t += 100
        for _ in range(10):
            records.append(monitor.update(True, t))
            t += 100
    assert [record for record in records if record] == []
    # A long outage: one "camera_offline" after 5 s, nothing more while it lasts, one "camera_online".
    for _ in range(300):
        records.append(monitor.update(False, t, "connection refused"))
        t += 100
    records.append(monitor.update(True, t))
    alerts = [record for record in records if record]
    assert [record["kind"] for record in alerts] == ["camera_offline", "camera_online"]
    assert alerts[0]["camera"] == "door" and alerts[0]["offline_for_s"] == 5.0
    assert alerts[0]["last_error"] == "connection refused"
    assert alerts[1]["outage_s"] == 30.0
    assert monitor.update(True, t + 100) is None


def test_outage_alerts_can_be_turned_off():
    monitor = OutageMonitor("door", alert_after_ms=0)
    assert all(monitor.update(False, float(t)) is None for t in range(0, 100_000, 1000))
