"""The cluster's one event sink: an actor on the node that holds the storage (the driver's).

Camera actors send it batches of items, each with an id (``INCARNATION-SEQUENCE``), and keep every item
until the sink confirms it (camera.py, ``RemoteSinks``). The sink writes each record once: the JSONL log
(flushed and fsynced, as on one box), the snapshot JPEG the camera encoded, the webhook and MQTT. An item
whose id it has seen is confirmed again and not written (a retried call whose answer was lost), so the
log holds no duplicate; the ids are read back from the log if the sink itself is restarted.

The sink also knows which incidents are open and which incarnation of a camera actor opened them. When a
camera's items start coming from a new incarnation (Ray restarted the actor, on another node when its
node died), the old incarnation's open incidents are ended here with ``"reason": "moved"`` (another node)
or ``"restarted"`` (the same node); the new incarnation opens its own if the fake is still in view.
At shutdown, incidents still open (a camera that never came back) end with ``"reason": "shutdown"``.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from stream_detector.daemon.config import DaemonConfig
from stream_detector.daemon.ops import DaemonMetrics, configure_logging
from stream_detector.daemon.service import open_event_sinks

log = logging.getLogger("stream_detector.cluster.sink")

# Ids remembered for duplicate detection; a retry comes within seconds, so this is ample.
REMEMBERED_IDS = 200_000


@dataclass
class _OpenIncident:
    record: dict
    incarnation: str


class EventSink:
    """Ray actor class (created by driver.py with ``max_restarts=-1`` on the driver's node)."""

    def __init__(self, config: DaemonConfig, cameras: tuple[str, ...], node: str | None = None) -> None:
        """``node``: this node's id (None: asked from Ray, as the actor does)."""
        configure_logging(config.log_format, config.mask)
        if node is None:
            import ray

            node = ray.get_runtime_context().get_node_id()
        self.node = node
        self.metrics = DaemonMetrics()
        # The same sinks as a single-box daemon's; records come ready (emit_record), snapshots encoded.
        self.sinks = open_event_sinks(config, self.metrics, cameras)
        self.log_file = self.sinks.log_file
        self.snapshots = self.sinks.snapshots
        self.mqtt = self.sinks.mqtt
        self.written = 0
        self.duplicates = 0
        self.incidents_closed: collections.Counter[str] = collections.Counter()
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._open: dict[str, _OpenIncident] = {}
        self._incarnations: dict[str, tuple[str, str]] = {}
        self._recover()

    # What the driver and the cameras call.

    def ready(self) -> str:
        return self.node

    def write(self, camera: str, incarnation: str, node: str, items: list[dict]) -> dict:
        """Write what is new among ``items``; the ids of every item now safely stored (module docstring)."""
        self._arrive(camera, incarnation, node)
        confirmed = []
        for item in items:
            item_id = item["id"]
            if item_id in self._seen:
                self.duplicates += 1
                confirmed.append(item_id)
                continue
            try:
                self._apply(camera, incarnation, item)
            except OSError as error:
                # Not confirmed: the camera keeps it and sends it again (a full disk may clear).
                log.error("event write failed camera=%s id=%s problem=%s", camera, item_id, error)
                break
            self._remember(item_id)
            confirmed.append(item_id)
        self._update_gauges()
        return {"confirmed": confirmed, "mqtt_connected": self.mqtt.connected if self.mqtt else None}

    def close_open(self, reason: str, camera: str | None = None) -> int:
        """End the incidents still open (all, or one camera's) with ``reason``; how many."""
        ended = 0
        for event_id, incident in list(self._open.items()):
            if camera is None or incident.record["camera"] == camera:
                self._end(event_id, incident, reason)
                ended += 1
        return ended

    def camera_removed(self, camera: str) -> None:
        self._incarnations.pop(camera, None)
        if self.mqtt is not None:
            self.mqtt.availability(camera, False)

    def stats(self) -> dict:
        return {
            "node": self.node,
            "events_path": str(self.log_file.path),
            "records_written": self.written,
            "duplicates_dropped": self.duplicates,
            "open_incidents": len(self._open),
            "incidents_closed": dict(self.incidents_closed),
            "mqtt_connected": self.mqtt.connected if self.mqtt else None,
        }

    def metric_families(self) -> list:
        from stream_detector.cluster.metrics import families

        return families(self.metrics.registry)

    def close(self, drain_timeout_s: float) -> None:
        self.sinks.close(drain_timeout_s)

    # Internals.

    def _arrive(self, camera: str, incarnation: str, node: str) -> None:
        previous = self._incarnations.get(camera)
        self._incarnations[camera] = (incarnation, node)
        if previous is None or previous[0] == incarnation:
            return
        reason = "moved" if previous[1] != node else "restarted"
        ended = 0
        for event_id, incident in list(self._open.items()):
            if incident.record["camera"] == camera and incident.incarnation != incarnation:
                self._end(event_id, incident, reason, node=node)
                ended += 1
        log.warning(
            "camera=%s %s: node %s -> %s, open incidents ended=%d",
            camera,
            reason,
            previous[1][:12],
            node[:12],
            ended,
        )

    def _apply(self, camera: str, incarnation: str, item: dict) -> None:
        kind = item["type"]
        if kind == "record":
            record = dict(item["record"])
            record["record_id"] = item["id"]
            jpeg, name = item.get("snapshot"), item.get("snapshot_name")
            if jpeg is not None and name and self.snapshots is not None:
                try:
                    record["snapshot"] = str(self.snapshots.write_encoded(jpeg, name))
                except OSError as error:
                    log.error(
                        "snapshot failed camera=%s event_id=%s problem=%s",
                        camera,
                        record.get("event_id"),
                        error,
                    )
            self.sinks.emit_record(record)
            self.written += 1
            self._track(record, incarnation)
        elif kind == "state" and self.mqtt is not None:
            self.mqtt.state(camera, item["state"], item["faces"], item["p_smoothed"])
        elif kind == "availability" and self.mqtt is not None:
            self.mqtt.availability(camera, item["online"])
        # "hello" (a new incarnation announcing itself) needs nothing beyond _arrive.

    def _track(self, record: dict, incarnation: str) -> None:
        event_id = record.get("event_id")
        if not event_id:
            return  # camera_offline / camera_online
        if record.get("kind") in ("start", "update"):
            self._open[str(event_id)] = _OpenIncident(record, incarnation)
        elif record.get("kind") == "end":
            self._open.pop(str(event_id), None)

    def _end(self, event_id: str, incident: _OpenIncident, reason: str, **extra: object) -> None:
        record = dict(incident.record)
        record.update(
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
            kind="end",
            reason=reason,
            snapshot=None,
            record_id=f"sink-{uuid.uuid4().hex[:12]}",
            **extra,
        )
        self.sinks.emit_record(record)
        self.written += 1
        self.incidents_closed[reason] += 1
        self._open.pop(event_id, None)

    def _remember(self, item_id: str) -> None:
        self._seen.add(item_id)
        self._seen_order.append(item_id)
        if len(self._seen_order) > REMEMBERED_IDS:
            self._seen.discard(self._seen_order.popleft())

    def _recover(self) -> None:
        """After a restart of this actor: the ids already written and the incidents still open."""
        path = self.log_file.path
        if not path.exists():
            return
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash
                if not isinstance(record, dict):
                    continue
                record_id = record.get("record_id")
                if isinstance(record_id, str):
                    self._remember(record_id)
                    self._track(record, record_id.split("-")[0])
        if self._seen:
            log.info(
                "sink recovered ids=%d open_incidents=%d from %s", len(self._seen), len(self._open), path
            )

    def _update_gauges(self) -> None:
        if self.mqtt is not None:
            self.metrics.mqtt_connected.set(1 if self.mqtt.connected else 0)
            self.metrics.mqtt_queue.set(self.mqtt.queue_depth)
        if self.sinks.webhook is not None:
            self.metrics.webhook_queue.set(self.sinks.webhook.queue_depth)
