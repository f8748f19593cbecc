"""Incidents from verdicts, and where they go: a JSONL log, JPEG snapshots, a webhook.

``EventTracker`` is pure: verdicts and timestamps in, ``Event`` notices out, so tests feed it sequences.
Rules, per camera (one tracker each):
- a track's verdict must stay FAKE for ``min_duration_ms`` before an event opens (``start``); a single
  non-FAKE verdict in between restarts the count, so flickers never open one;
- while it lasts, an ``update`` is sent every ``update_interval_ms`` (never one per frame);
- it closes (``end``) once the track has not been FAKE for ``end_after_ms`` (not FAKE, UNCERTAIN, or gone);
- after an event on a camera ends, no new one opens there for ``cooldown_ms``: a face that keeps
  flipping raises one alert, and one again after the cooldown if it is still FAKE then;
- a track that turns FAKE while an open event's track has vanished takes that event over at once (the
  tracker lost the face and found it again under a new id): the same incident, not a second alert.

``OutageMonitor`` is the same idea for a camera that goes dark: one ``camera_offline`` record once it
has been without a connection for ``alert_after_ms``, one ``camera_online`` when it is back; a camera
that flaps faster than that raises nothing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from stream_detector.pipeline.types import Event, Verdict, VerdictState
from stream_detector.settings import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventPolicy:
    """When a FAKE verdict becomes an incident ([events] in the daemon's config extends this)."""

    min_duration_s: float = setting(
        2.0, "a track must stay FAKE this long before an incident starts", minimum=0.0, maximum=3600.0
    )
    end_after_s: float = setting(
        3.0, "an incident ends this long after its last FAKE verdict", minimum=0.0, maximum=3600.0
    )
    cooldown_s: float = setting(
        60.0,
        "after an incident ends, no new one starts on the camera for this long",
        minimum=0.0,
        maximum=86400.0,
    )
    update_interval_s: float = setting(
        10.0,
        "an open incident writes an update this often",
        minimum=0.0,
        maximum=86400.0,
        exclusive_minimum=True,
    )

    @property
    def min_duration_ms(self) -> float:
        return self.min_duration_s * 1000.0

    @property
    def end_after_ms(self) -> float:
        return self.end_after_s * 1000.0

    @property
    def cooldown_ms(self) -> float:
        return self.cooldown_s * 1000.0

    @property
    def update_interval_ms(self) -> float:
        return self.update_interval_s * 1000.0


@dataclass
class _OpenEvent:
    event_id: str
    track_id: int
    start_ms: float
    last_fake_ms: float
    last_update_ms: float
    p_smoothed: float
    max_p_smoothed: float


def _new_event_id() -> str:
    return uuid.uuid4().hex[:16]


class EventTracker:
    """Turns one camera's verdict stream into start / update / end events (pure: no clock, no I/O)."""

    def __init__(
        self, source_id: str, policy: EventPolicy, id_factory: Callable[[], str] = _new_event_id
    ) -> None:
        self.source_id = source_id
        self.policy = policy
        self._id_factory = id_factory
        self._fake_since: dict[int, float] = {}  # tracks FAKE now but not (yet) in an event
        self._last_seen: dict[int, float] = {}
        self._open: dict[int, _OpenEvent] = {}  # by track id
        self._cooldown_until_ms = float("-inf")

    @property
    def open_events(self) -> int:
        return len(self._open)

    def _event(self, kind: str, state: _OpenEvent, timestamp_ms: float) -> Event:
        return Event(
            kind=kind,
            event_id=state.event_id,
            source_id=self.source_id,
            track_id=state.track_id,
            timestamp_ms=timestamp_ms,
            p_smoothed=state.p_smoothed,
            max_p_smoothed=state.max_p_smoothed,
            duration_ms=max(0.0, timestamp_ms - state.start_ms),
        )

    def update(self, verdicts: Iterable[Verdict], timestamp_ms: float) -> list[Event]:
        """Events caused by this frame's verdicts (most frames: none)."""
        events: list[Event] = []
        present = {}
        for verdict in verdicts:
            present[verdict.id] = verdict
            self._last_seen[verdict.id] = timestamp_ms

        # Refresh open events first, so a vanished track's event can be handed over below.
        for track_id, state in list(self._open.items()):
            verdict = present.get(track_id)
            if verdict is not None and verdict.state == VerdictState.FAKE:
                state.last_fake_ms = timestamp_ms
                state.p_smoothed = float(verdict.p_smoothed)
                state.max_p_smoothed = max(state.max_p_smoothed, state.p_smoothed)

        for track_id, verdict in present.items():
            if track_id in self._open:
                continue
            if verdict.state != VerdictState.FAKE:
                self._fake_since.pop(track_id, None)
                continue
            since = self._fake_since.setdefault(track_id, timestamp_ms)
            orphan = next((s for t, s in self._open.items() if t not in present), None)
            p_smoothed = float(verdict.p_smoothed)
            # A handover needs no minimum duration: the incident is established, only the id is new.
            if orphan is not None:
                del self._open[orphan.track_id]
                orphan.track_id = track_id
                orphan.last_fake_ms = timestamp_ms
                orphan.p_smoothed = p_smoothed
                orphan.max_p_smoothed = max(orphan.max_p_smoothed, p_smoothed)
                self._open[track_id] = orphan
                self._fake_since.pop(track_id, None)
                continue
            if timestamp_ms - since < self.policy.min_duration_ms:
                continue
            if timestamp_ms < self._cooldown_until_ms:
                continue
            state = _OpenEvent(
                event_id=self._id_factory(),
                track_id=track_id,
                start_ms=since,
                last_fake_ms=timestamp_ms,
                last_update_ms=timestamp_ms,
                p_smoothed=p_smoothed,
                max_p_smoothed=p_smoothed,
            )
            self._open[track_id] = state
            self._fake_since.pop(track_id, None)
            events.append(self._event("start", state, timestamp_ms))

        for track_id, state in list(self._open.items()):
            if timestamp_ms - state.last_fake_ms >= self.policy.end_after_ms:
                del self._open[track_id]
                self._cooldown_until_ms = timestamp_ms + self.policy.cooldown_ms
                events.append(self._event("end", state, timestamp_ms))
            elif timestamp_ms - state.last_update_ms >= self.policy.update_interval_ms:
                state.last_update_ms = timestamp_ms
                events.append(self._event("update", state, timestamp_ms))

        # Forget tracks long gone, so a camera that runs for weeks keeps a bounded table.
        horizon = timestamp_ms - max(self.policy.end_after_ms, self.policy.min_duration_ms, 1000.0)
        for track_id, seen in list(self._last_seen.items()):
            if seen < horizon and track_id not in present:
                del self._last_seen[track_id]
                self._fake_since.pop(track_id, None)
        return events

    def close_all(self, timestamp_ms: float) -> list[Event]:
        """End every open event now (shutdown, or the camera removed)."""
        events = [self._event("end", state, timestamp_ms) for state in self._open.values()]
        self._open.clear()
        self._fake_since.clear()
        return events


@dataclass
class OutageMonitor:
    """One alert per camera outage (module docstring); pure: connection states and timestamps in."""

    camera: str
    alert_after_ms: float  # 0 turns the alerts off
    _down_since_ms: float | None = None
    _alerted: bool = False

    def update(self, connected: bool, now_ms: float, last_error: str | None = None) -> dict | None:
        """A ``camera_offline`` or ``camera_online`` record when one is due, else None."""
        if self.alert_after_ms <= 0:
            return None
        if connected:
            down_since, alerted = self._down_since_ms, self._alerted
            self._down_since_ms, self._alerted = None, False
            if alerted and down_since is not None:
                return self._record("camera_online", outage_s=round((now_ms - down_since) / 1000.0, 1))
            return None
        if self._down_since_ms is None:
            self._down_since_ms = now_ms
        if not self._alerted and now_ms - self._down_since_ms >= self.alert_after_ms:
            self._alerted = True
            return self._record(
                "camera_offline",
                offline_for_s=round((now_ms - self._down_since_ms) / 1000.0, 1),
                last_error=last_error,
            )
        return None

    def _record(self, kind: str, **fields: object) -> dict:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "camera": self.camera,
            "kind": kind,
            **fields,
        }


def event_record(event: Event, camera: str | None = None, **extra: object) -> dict[str, object]:
    """The JSON object written to the log and POSTed to the webhook for one event."""
    record: dict[str, object] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "camera": camera or event.source_id,
    }
    record.update(asdict(event))
    record.update(extra)
    return record


class JsonlEventLog:
    """Appends one JSON line per event; each line is flushed and fsynced before ``write`` returns.

    The file is opened per write: events are rare, and this survives log rotation (the next event
    goes to a new file) and never holds a half-written buffer when the process is killed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.lines_written = 0

    def write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n"
        with self._lock:
            created = not self.path.exists()
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())
            if created:
                _fsync_directory(self.path.parent)
            self.lines_written += 1


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is only durable once the directory itself is synced.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SnapshotWriter:
    """JPEG snapshots, written to a temporary name and renamed, so a reader never sees half a file."""

    def __init__(self, directory: Path, quality: int = 85) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.quality = quality

    def write(self, image_bgr: np.ndarray, event: Event) -> Path:
        return self.write_encoded(encode_snapshot(image_bgr, self.quality), snapshot_name(event))

    def write_encoded(self, jpeg: bytes, name: str) -> Path:
        """A JPEG encoded elsewhere (a cluster's camera actor encodes, the sink's node stores)."""
        if "/" in name or name.startswith("."):
            raise OSError(f"not a snapshot file name: {name!r}")
        path = self.directory / name
        temporary = path.with_suffix(".jpg.tmp")
        with open(temporary, "wb") as stream:
            stream.write(jpeg)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        return path


def snapshot_name(event: Event) -> str:
    return f"{event.source_id}_{event.event_id}_{event.kind}_{int(event.duration_ms)}.jpg"


def encode_snapshot(image_bgr: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed for a snapshot")
    return encoded.tobytes()


@dataclass
class WebhookStats:
    sent: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class WebhookPolicy:
    """How events are POSTed ([webhook] in the daemon's config extends this with the URL)."""

    timeout_s: float = setting(5.0, "timeout of one POST", minimum=0.1, maximum=120.0)
    max_retries: int = setting(5, "retries of a failed POST before it is given up", minimum=0, maximum=100)
    backoff_initial_s: float = setting(
        1.0, "wait before the first retry (doubles each time)", minimum=0.01, maximum=3600.0
    )
    backoff_max_s: float = setting(60.0, "longest wait between retries", minimum=0.01, maximum=86400.0)
    queue_size: int = setting(
        1000,
        "events waiting to be sent; beyond it the oldest are dropped (counted)",
        minimum=1,
        maximum=1_000_000,
    )
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def post_json(url: str, record: dict[str, object], headers: dict[str, str], timeout_s: float) -> int:
    """POST one JSON record; the HTTP status, or an exception for a network failure."""
    body = json.dumps(record).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "stream-detector-daemon")
    for name, value in headers.items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read(65536)
        return int(response.status)


class WebhookSender:
    """POSTs records from a bounded queue on its own thread, retrying with capped exponential backoff.

    ``submit`` never blocks: when the queue is full the oldest record is dropped (and counted), so a
    slow or dead webhook costs memory up to ``queue_size`` records and never stalls detection.
    """

    def __init__(
        self,
        url: str,
        policy: WebhookPolicy,
        display_url: str | None = None,
        post: Callable[[str, dict[str, object], dict[str, str], float], int] = post_json,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.display_url = display_url or url
        self.policy = policy
        self.stats = WebhookStats()
        self._post = post
        self._on_result = on_result
        self._queue: queue.Queue[dict[str, object]] = queue.Queue(maxsize=policy.queue_size)
        self._stop = threading.Event()
        self._drain_deadline = float("inf")
        self._random = random.Random()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, record: dict[str, object]) -> None:
        while True:
            try:
                self._queue.put_nowait(record)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.stats.dropped += 1
                    self._report("dropped")
                except queue.Empty:
                    pass

    def _report(self, result: str) -> None:
        if self._on_result is not None:
            self._on_result(result)

    def _deliver(self, record: dict[str, object]) -> None:
        delay = self.policy.backoff_initial_s
        headers = dict(self.policy.headers)
        for attempt in range(self.policy.max_retries + 1):
            try:
                status = self._post(self.url, record, headers, self.policy.timeout_s)
                if 200 <= status < 300:
                    self.stats.sent += 1
                    self._report("sent")
                    return
                problem = f"HTTP {status}"
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}"
            except Exception as error:  # a webhook's failure must never reach the detection loop
                problem = f"{type(error).__name__}: {error}"
            self.stats.failed_attempts += 1
            self._report("failed")
            if attempt == self.policy.max_retries or self._stopping():
                break
            # Full jitter: many daemons retrying one receiver do not hit it in lockstep.
            wait = self._random.uniform(0.5, 1.0) * delay
            log.warning(
                "webhook post failed url=%s attempt=%d problem=%s retry_in_s=%.1f",
                self.display_url,
                attempt + 1,
                problem,
                wait,
            )
            if self._stop.wait(wait) and self._stopping():
                break
            delay = min(delay * 2.0, self.policy.backoff_max_s)
        self.stats.given_up += 1
        self._report("given_up")
        log.error("webhook gave up event_id=%s url=%s", record.get("event_id"), self.display_url)

    def _stopping(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._drain_deadline

    def _run(self) -> None:
        while True:
            if self._stop.is_set() and (self._queue.empty() or time.monotonic() >= self._drain_deadline):
                return
            try:
                record = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._deliver(record)

    def close(self, drain_timeout_s: float = 2.0) -> None:
        """Send what is queued for up to ``drain_timeout_s``, then stop; what is left is dropped."""
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._stop.set()
        self._thread.join(drain_timeout_s + self.policy.timeout_s + 1.0)
        left = self._queue.qsize()
        if left:
            self.stats.dropped += left
            log.warning("webhook stopped with %d undelivered events url=%s", left, self.display_url)


class EventSinks:
    """Where each event goes, in order: snapshot (start/update), JSONL line, webhook (if configured)."""

    def __init__(
        self,
        log_file: JsonlEventLog,
        snapshots: SnapshotWriter | None = None,
        webhook: WebhookSender | None = None,
        mqtt=None,
    ) -> None:
        """``mqtt``: a daemon.mqtt.MqttPublisher (its ``event`` queues and returns)."""
        self.log_file = log_file
        self.snapshots = snapshots
        self.webhook = webhook
        self.mqtt = mqtt

    @property
    def description(self) -> str:
        return str(self.log_file.path)

    def emit(self, event: Event, image_bgr: np.ndarray | None, **extra: object) -> dict[str, object]:
        if self.snapshots is not None and image_bgr is not None and event.kind in ("start", "update"):
            try:
                event = replace(event, snapshot=str(self.snapshots.write(image_bgr, event)))
            except OSError as error:
                log.error("snapshot failed event_id=%s problem=%s", event.event_id, error)
        return self.emit_record(event_record(event, **extra))

    def emit_record(self, record: dict[str, object]) -> dict[str, object]:
        """A ready record (an event's, or a camera outage's) to the log, then the webhook."""
        # The log line is written (and synced) before anything slower can fail or stall.
        self.log_file.write(record)
        if self.webhook is not None:
            self.webhook.submit(record)
        if self.mqtt is not None:
            self.mqtt.event(record)
        return record

    def close(self, drain_timeout_s: float = 2.0) -> None:
        if self.webhook is not None:
            self.webhook.close(drain_timeout_s)
        if self.mqtt is not None:
            self.mqtt.close(drain_timeout_s)
