"""Operations: Prometheus metrics, the ``/healthz`` + ``/metrics`` HTTP endpoint, one-line structured logs.

Per-camera figures that other threads own (connected, fps, frame age, reconnects, dropped frames) are
read at scrape time through a status callback instead of being mirrored into gauges, so a scrape always
shows the current state and there is no second copy to keep in step. Every response body and every log
line passes through a mask that hides credentials.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from stream_detector.quiet import StderrPipe

log = logging.getLogger(__name__)

# Inference latency per batch: from ~5 ms (one face, int8) to seconds (a starved CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class CameraHealth:
    """One camera's state as /healthz and /metrics show it (the URL already masked)."""

    name: str
    url: str
    state: str  # "connecting" | "connected" | "backoff" | "stopped"
    connected: bool
    fps: float  # frames processed per second (faces detected and classified)
    capture_fps: float  # frames decoded per second
    last_frame_age_s: float | None
    lag_s: float | None  # age of the newest processed frame when its results came out
    reconnects: int
    failed_opens: int
    dropped_frames: int  # decoded, then replaced by newer frames before detection took them
    frames_captured: int  # reached the camera's newest-frame slot
    frames_processed: int
    last_error: str | None = None
    frames_decoded: int = 0  # = frames_skipped + frames_captured + those dropped in the capture slot
    frames_skipped: int = 0  # beyond the camera's rate cap: not even converted


# The daemon's own series: attribute, kind, name, help, labels (and buckets for histograms).
METRICS = (
    (
        "faces",
        Counter,
        "stream_detector_faces",
        "Face detections in processed frames, per camera",
        ("camera",),
    ),
    (
        "classified",
        Counter,
        "stream_detector_classified_faces",
        "Face crops classified, per camera",
        ("camera",),
    ),
    (
        "tracks",
        Counter,
        "stream_detector_face_tracks",
        "Distinct faces seen (new face tracks), per camera",
        ("camera",),
    ),
    (
        "verdicts",
        Counter,
        "stream_detector_verdicts",
        "Per-face verdicts produced, by state",
        ("camera", "state"),
    ),
    (
        "events",
        Counter,
        "stream_detector_events",
        "Incident events written, by kind (start, update, end; camera_offline, camera_online)",
        ("camera", "kind"),
    ),
    ("open_events", Gauge, "stream_detector_open_events", "Incidents open now", ("camera",)),
    (
        "inference_seconds",
        Histogram,
        "stream_detector_inference_seconds",
        "Time to process one batch of frames (detect, crop, classify, track, smooth)",
        (),
        LATENCY_BUCKETS,
    ),
    (
        "batch_frames",
        Histogram,
        "stream_detector_batch_frames",
        "Frames (cameras) per engine batch",
        (),
        (1, 2, 4, 8, 16, 32, 64),
    ),
    (
        "webhook",
        Counter,
        "stream_detector_webhook_posts",
        "Webhook outcomes: sent, failed (an attempt), given_up, dropped (queue full)",
        ("result",),
    ),
    ("webhook_queue", Gauge, "stream_detector_webhook_queue", "Events waiting for the webhook", ()),
    (
        "mqtt",
        Counter,
        "stream_detector_mqtt_messages",
        "MQTT messages: published, dropped (the queue was full while the broker was away)",
        ("result",),
    ),
    ("mqtt_connected", Gauge, "stream_detector_mqtt_connected", "1 while connected to the MQTT broker", ()),
    ("mqtt_queue", Gauge, "stream_detector_mqtt_queue", "MQTT messages waiting for the broker", ()),
    (
        "errors",
        Counter,
        "stream_detector_processing_errors",
        "Frames the engine failed on (skipped), per camera",
        ("camera",),
    ),
)
# Per-camera series read from CameraHealth at each scrape: kind, name, help, value (None: absent).
CAMERA_METRICS: tuple[tuple[type, str, str, Callable[[CameraHealth], float | None]], ...] = (
    (
        GaugeMetricFamily,
        "stream_detector_camera_up",
        "1 when the camera delivers frames",
        lambda c: float(c.connected),
    ),
    (GaugeMetricFamily, "stream_detector_camera_fps", "Frames processed per second", lambda c: c.fps),
    (
        GaugeMetricFamily,
        "stream_detector_camera_capture_fps",
        "Frames decoded per second",
        lambda c: c.capture_fps,
    ),
    (
        GaugeMetricFamily,
        "stream_detector_camera_last_frame_age_seconds",
        "Seconds since the camera's last frame (absent before the first)",
        lambda c: c.last_frame_age_s,
    ),
    (
        GaugeMetricFamily,
        "stream_detector_camera_lag_seconds",
        "Age of the newest processed frame when its verdicts came out",
        lambda c: c.lag_s,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_frames_processed",
        "Frames processed",
        lambda c: c.frames_processed,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_frames_decoded",
        "Frames decoded from the stream (= skipped + captured + dropped before the camera slot)",
        lambda c: c.frames_decoded,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_frames_skipped",
        "Frames decoded beyond the camera's rate cap, never converted",
        lambda c: c.frames_skipped,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_frames_captured",
        "Frames that reached the camera's newest-frame slot",
        lambda c: c.frames_captured,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_dropped_frames",
        "Frames decoded and converted but replaced by newer ones before detection took them",
        lambda c: c.dropped_frames,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_reconnects",
        "Reconnections after a failure or stall",
        lambda c: c.reconnects,
    ),
    (
        CounterMetricFamily,
        "stream_detector_camera_failed_opens",
        "Connection attempts that failed (refused, timed out, not a stream)",
        lambda c: c.failed_opens,
    ),
)


class DaemonMetrics:
    """The daemon's Prometheus metrics (METRICS, CAMERA_METRICS), in their own registry (several
    daemons can live in one test)."""

    def __init__(self, camera_status: Callable[[], Iterable[CameraHealth]] = tuple) -> None:
        # The *_created series double the exposition for no use on a long-running daemon.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        for attribute, kind, name, help_text, labels, *buckets in METRICS:
            options = {"buckets": buckets[0]} if buckets else {}
            setattr(self, attribute, kind(name, help_text, list(labels), registry=self.registry, **options))
        self.registry.register(_CameraCollector(camera_status))
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: the soak's figures, live.
        ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CameraCollector:
    def __init__(self, camera_status: Callable[[], Iterable[CameraHealth]]) -> None:
        self._camera_status = camera_status

    def describe(self) -> list:
        return []

    def collect(self):
        families = [
            (kind(name, help_text, labels=["camera"]), value)
            for kind, name, help_text, value in CAMERA_METRICS
        ]
        for camera in self._camera_status():
            for family, value in families:
                reading = value(camera)
                if reading is not None:
                    family.add_metric([camera.name], reading)
        yield from (family for family, _ in families)


def health_document(
    cameras: Iterable[CameraHealth], loop_heartbeat_age_s: float, stuck_after_s: float
) -> tuple[int, dict]:
    """(HTTP status, body) for /healthz: 503 only when the detection loop itself is stuck.

    A camera being down is the daemon doing its job (it keeps retrying), so it reads "degraded" with
    status 200; a process supervisor should restart the daemon only when the loop has stopped turning.
    """
    cameras = list(cameras)
    loop_ok = loop_heartbeat_age_s <= stuck_after_s
    if not loop_ok:
        status = "stuck"
    elif all(camera.connected for camera in cameras):
        status = "ok"
    else:
        status = "degraded"
    body = {
        "status": status,
        "loop_heartbeat_age_s": round(loop_heartbeat_age_s, 3),
        "cameras": {
            camera.name: {
                key: (round(value, 3) if isinstance(value, float) else value)
                for key, value in asdict(camera).items()
                if key != "name"
            }
            for camera in cameras
        },
    }
    return (200 if loop_ok else 503), body


class OpsServer:
    """``/healthz`` (JSON) and ``/metrics`` (Prometheus text) on a small threaded HTTP server."""

    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], tuple[int, dict]],
        metrics: Callable[[], bytes],
        mask: Callable[[str], str] = lambda text: text,
    ) -> None:
        handler = _make_handler(health, metrics, mask)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


def _make_handler(
    health: Callable[[], tuple[int, dict]], metrics: Callable[[], bytes], mask: Callable[[str], str]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stream-detector"
        sys_version = ""

        def _send(self, status: int, body: str, content_type: str) -> None:
            data = mask(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    status, body = health()
                    self._send(status, json.dumps(body, indent=1) + "\n", "application/json")
                elif path == "/metrics":
                    self._send(200, metrics().decode("utf-8"), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, "not found: try /healthz or /metrics\n", "text/plain; charset=utf-8")
            except Exception:
                log.exception("ops endpoint failed path=%s", path)
                self._send(500, "internal error\n", "text/plain; charset=utf-8")

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            # Scrapes every few seconds would drown the log; only failures are worth a line.
            return

    return Handler


class RedactingFilter(logging.Filter):
    """Replaces secrets in the fully formatted message (arguments included) of every record."""

    def __init__(self, mask: Callable[[str], str]) -> None:
        super().__init__()
        self._mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message or record.args:
            record.msg = masked
            record.args = None
        if record.exc_info:
            # Tracebacks can quote URLs; render now, masked, so the formatter never sees the raw text.
            record.exc_text = self._mask("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["traceback"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            document["traceback"] = record.exc_text
        return json.dumps(document, ensure_ascii=False)


class OneLineFormatter(logging.Formatter):
    """The CLI's text format, with tracebacks folded onto the same line (one record, one line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class NativeStderr(StderrPipe):
    """Routes the process's file descriptor 2 through the logger, one masked record per line.

    TensorFlow Lite, MediaPipe (absl) and FFmpeg write on fd 2 from C++, past Python's logging: multi-line
    banners, dozens of identical warnings per model load, and FFmpeg messages that may quote a URL.
    Here fd 2 becomes a pipe read by a thread (quiet.StderrPipe); each line becomes a record of logger
    ``stream_detector.native`` (repeats collapsed into a count), so every line the daemon writes is
    structured and masked. The log handlers write to a copy of the original stderr, and Python's
    fatal-error dumps (faulthandler) go there directly, so a crash is still visible.
    """

    thread_name = "native-stderr"

    def __init__(self, logger_name: str = "stream_detector.native") -> None:
        self._logger = logging.getLogger(logger_name)
        self._last: str | None = None
        self._repeats = 0
        self._started = False

    def _redirecting(self, original: int) -> None:
        # Kept open for the life of the process (the log handlers write to it); closefd=False keeps the fd.
        stream = open(  # noqa: SIM115
            original, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False
        )
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
                handler.setStream(stream)
        sys.stderr = stream
        faulthandler.enable(file=stream)
        self._started = True

    @staticmethod
    def _level(line: str) -> int:
        head = line[:12].upper()
        if head.startswith(("E", "F", "[ERROR", "ERROR")) and not head.startswith("ENV"):
            return logging.ERROR
        if head.startswith(("W", "[WARN", "WARNING")):
            return logging.WARNING
        return logging.INFO

    def handle(self, segment: bytes, separator: bytes) -> None:
        line = segment.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if line == self._last:
            self._repeats += 1
            return
        self._report_repeats()
        self._last = line
        self._logger.log(self._level(line), "%s", line)

    def _report_repeats(self) -> None:
        if self._repeats:
            self._logger.info("previous native line repeated %d more times", self._repeats)
            self._repeats = 0

    def finished(self) -> None:
        self._report_repeats()

    def close(self) -> None:
        """Puts fd 2 back and lets the reader drain what was written before."""
        if self._started:
            self._started = False
            self.stop(1.0)


def configure_logging(log_format: str, mask: Callable[[str], str]) -> None:
    """Every root handler gets the mask and a one-line format; installs a stderr handler if none exists."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    formatter = JsonFormatter() if log_format == "json" else OneLineFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        for existing in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(existing)
        handler.addFilter(RedactingFilter(mask))
