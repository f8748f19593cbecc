"""One camera as a Ray actor: everything that needs the video stays next to it.

The actor runs the single-box daemon's own loop (daemon/service.Daemon) for its one camera: capture with
reconnects, detect, crop, track, smooth, event rules, outage alerts. Two things are injected instead of
the local ones: the classifier is the Serve deployment (classifier.ServeClassifier), and the event sinks
are ``RemoteSinks``, which hand every record (with its snapshot, encoded here) and every MQTT state or
availability change to the sink actor.

``RemoteSinks`` keeps each item until the sink confirms it: a sink that is briefly away (restarting, its
answer lost) gets the same items again, with the same ids, and drops the ones it already has. Items are
ids ``INCARNATION-SEQUENCE``; an incarnation is one life of this actor (a restart by Ray is a new one), so
the sink can tell a retried item from a new one, and a restarted camera's incidents from its old ones.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import asdict, replace

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from stream_detector.cluster.classifier import APP_NAME, DEPLOYMENT_NAME, ServeAnswer, ServeClassifier
from stream_detector.cluster.metrics import families
from stream_detector.daemon.config import CameraConfig, DaemonConfig, EventsConfig
from stream_detector.daemon.events import encode_snapshot, event_record, snapshot_name
from stream_detector.daemon.ops import LATENCY_BUCKETS, configure_logging
from stream_detector.pipeline.types import Event

log = logging.getLogger("stream_detector.cluster.camera")

# Items waiting for the sink beyond this are dropped, the oldest first, and counted (a sink gone for
# hours must not take the camera's memory with it).
OUTBOX_LIMIT = 10_000
SEND_BATCH = 200
SINK_CALL_TIMEOUT_S = 5.0


class RemoteSinks:
    """The daemon's EventSinks and MQTT publisher, over the sink actor (module docstring)."""

    webhook = None

    def __init__(self, sink, camera: str, incarnation: str, node: str, events: EventsConfig) -> None:
        self.sink = sink
        self.camera = camera
        self.incarnation = incarnation
        self.node = node
        self.events = events
        self.mqtt = _MqttProxy(self)
        self.confirmed = 0
        self.dropped = 0
        self.send_failures = 0
        self._sequence = 0
        self._outbox: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name=f"sink-{camera}", daemon=True)
        self._put({"type": "hello"})
        self._thread.start()

    @property
    def description(self) -> str:
        return "sink actor"

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._outbox)

    # The EventSinks interface (daemon/service.Daemon calls these).

    def emit(self, event: Event, image_bgr: np.ndarray | None, **extra: object) -> dict[str, object]:
        record = event_record(event, node=self.node, **extra)
        item: dict = {"type": "record", "record": record}
        if self.events.snapshots and image_bgr is not None and event.kind in ("start", "update"):
            try:
                item["snapshot"] = encode_snapshot(image_bgr, self.events.snapshot_quality)
                item["snapshot_name"] = snapshot_name(event)
            except OSError as error:
                log.error("snapshot failed event_id=%s problem=%s", event.event_id, error)
        self._put(item)
        return record

    def emit_record(self, record: dict[str, object]) -> dict[str, object]:
        self._put({"type": "record", "record": dict(record, node=self.node)})
        return record

    def close(self, drain_timeout_s: float = 2.0) -> None:
        """Send what waits for up to ``drain_timeout_s``; what is left is logged as lost."""
        deadline = time.monotonic() + drain_timeout_s
        with self._condition:
            self._condition.notify_all()
            while self._outbox and time.monotonic() < deadline:
                self._condition.wait(0.05)
            self._closed = True
            self._condition.notify_all()
            left = len(self._outbox)
        self._thread.join(max(0.1, deadline - time.monotonic()) + SINK_CALL_TIMEOUT_S)
        if left:
            log.error("camera=%s stopped with %d item(s) the sink never confirmed", self.camera, left)

    # Internals.

    def _put(self, item: dict) -> None:
        with self._condition:
            self._sequence += 1
            item["id"] = f"{self.incarnation}-{self._sequence}"
            self._outbox[item["id"]] = item
            while len(self._outbox) > OUTBOX_LIMIT:
                self._outbox.popitem(last=False)
                self.dropped += 1
            self._condition.notify_all()

    def _send_loop(self) -> None:
        import ray

        backoff = 0.2
        while True:
            with self._condition:
                while not self._outbox and not self._closed:
                    self._condition.wait(0.5)
                if self._closed and not self._outbox:
                    return
                if self._closed and backoff > 1.0:
                    return  # stopping and the sink is away: close() reports what is left
                batch = list(self._outbox.values())[:SEND_BATCH]
            try:
                answer = ray.get(
                    self.sink.write.remote(self.camera, self.incarnation, self.node, batch),
                    timeout=SINK_CALL_TIMEOUT_S,
                )
            except Exception as error:  # the sink restarting, or its node unreachable: keep, retry
                self.send_failures += 1
                if self.send_failures == 1 or self.send_failures % 50 == 0:
                    log.warning(
                        "camera=%s sink unreachable (%s), %d item(s) kept for retry",
                        self.camera,
                        type(error).__name__,
                        self.waiting,
                    )
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.2
            with self._condition:
                for item_id in answer["confirmed"]:
                    if self._outbox.pop(item_id, None) is not None:
                        self.confirmed += 1
                self._condition.notify_all()
            self.mqtt.sink_connected = answer.get("mqtt_connected")


class _MqttProxy:
    """What the daemon's loop calls on its MQTT publisher, forwarded to the sink's (on change only)."""

    def __init__(self, sinks: RemoteSinks) -> None:
        self._sinks = sinks
        self._last: dict[str, object] = {}
        self.sink_connected: bool | None = None

    @property
    def connected(self) -> bool:
        return bool(self.sink_connected)

    @property
    def queue_depth(self) -> int:
        return self._sinks.waiting

    def availability(self, camera: str, online: bool) -> None:
        if self._last.get("availability") != online:
            self._last["availability"] = online
            self._sinks._put({"type": "availability", "online": online})

    def state(self, camera: str, state: str, faces: int, p_smoothed: float | None) -> None:
        self._sinks._put({"type": "state", "state": state, "faces": faces, "p_smoothed": p_smoothed})

    def cameras_changed(self, cameras: tuple[str, ...]) -> None:
        pass

    def event(self, record: dict) -> None:
        pass  # the sink publishes the records it writes

    def close(self, drain_timeout_s: float = 2.0) -> None:
        pass


class CameraActor:
    """Ray actor class: one camera's daemon loop (module docstring). Created by driver.py."""

    def __init__(self, camera: CameraConfig, config: DaemonConfig, sink) -> None:
        configure_logging(config.log_format, config.mask)
        import ray
        from ray import serve

        from stream_detector.daemon.service import Daemon
        from stream_detector.pipeline.engine import build_engine

        assert config.cluster is not None
        context = ray.get_runtime_context()
        self.node = context.get_node_id()
        self.incarnation = uuid.uuid4().hex[:12]
        self.name = camera.name
        self.started = time.time()
        self._serve_metrics(camera.name)
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
        self.classifier = ServeClassifier(handle, config.cluster.classify_timeout_s, observer=self._observe)
        # One camera, one detector in VIDEO mode (as a single-box source); the model runs in Serve.
        engine = build_engine(config.engine, video=True, classifier=self.classifier)
        local = replace(
            config,
            cameras=(camera,),
            http=replace(config.http, enabled=False),
            webhook=None,
            mqtt=None,
        )
        self.sinks = RemoteSinks(sink, camera.name, self.incarnation, self.node, config.events)
        self.daemon = Daemon(local, engine, sinks_factory=lambda: (self.sinks, self.sinks.mqtt))
        for metric in self._serve_series:
            self.daemon.metrics.registry.register(metric)
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.name}", daemon=True)
        self._thread.start()
        log.info(
            "camera=%s actor started node=%s incarnation=%s restarted=%s",
            camera.name,
            self.node[:12],
            self.incarnation,
            context.was_current_actor_reconstructed,
        )

    def _serve_metrics(self, camera: str) -> None:
        # Unregistered here; registered on the daemon's own registry once it exists.
        self._batch = Histogram(
            "stream_detector_serve_batch_frames",
            "Frames per Serve classifier batch, as each camera's calls saw them",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=None,
        )
        self._seconds = Histogram(
            "stream_detector_serve_classify_seconds",
            "Round trip of one frame's crops through the Serve classifier",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._waiting = Gauge(
            "stream_detector_serve_queue",
            "Calls waiting on the replica behind the last answered one",
            registry=None,
        )
        self._gaps = Counter(
            "stream_detector_classify_gaps",
            "Frames whose crops the classifier did not score in time (replica gone): verdicts held",
            registry=None,
        )
        self._serve_series = (self._batch, self._seconds, self._waiting, self._gaps)

    def _observe(self, answer: ServeAnswer) -> None:
        if answer.batch_frames is None:
            self._gaps.inc()
            return
        self._batch.observe(answer.batch_frames)
        self._seconds.observe(answer.seconds)
        self._waiting.set(answer.waiting or 0)

    def _run(self) -> None:
        try:
            self.daemon.run(self._stop)
        except Exception as error:  # the actor stays up to report it; the driver logs it
            self.error = f"{type(error).__name__}: {error}"
            log.exception("camera=%s loop failed", self.name)

    # What the driver calls.

    def status(self) -> dict:
        health = self.daemon.camera_health()
        return {
            "incarnation": self.incarnation,
            "node": self.node,
            "health": asdict(health[0]) if health else None,
            "open_events": sum(run.events.open_events for run in self.daemon.runs),
            "unconfirmed": self.sinks.waiting,
            "outbox_dropped": self.sinks.dropped,
            "classify_gaps": self.classifier.gaps,
            "error": self.error,
            "alive": self._thread.is_alive(),
        }

    def metric_families(self) -> list:
        return families(self.daemon.metrics.registry)

    def stop(self, reason: str = "shutdown", timeout_s: float = 10.0) -> dict:
        """End the loop (open incidents end with ``reason``), send what waits; what was left unsent."""
        self.daemon.stop_reason = reason
        self._stop.set()
        self._thread.join(timeout_s)
        return {"unconfirmed": self.sinks.waiting, "stopped": not self._thread.is_alive()}
