"""Events, availability and state to an MQTT broker, in the style camera and home-automation tools use.

Topics (``PREFIX`` is ``[mqtt] topic_prefix``):
- ``PREFIX/available``: the daemon, ``online`` / ``offline`` (retained; the broker publishes the
  ``offline`` last will if the daemon dies without saying goodbye);
- ``PREFIX/CAMERA/available``: ``online`` while the camera is connected, else ``offline`` (retained);
- ``PREFIX/CAMERA/state``: ``{"state": "FAKE" | "UNCERTAIN" | "REAL" | "NO_FACE", "faces": N,
  "p_smoothed": max}`` when it changes (retained);
- ``PREFIX/events``: every event record, as written to events.jsonl (QoS 1, not retained);
- with ``discovery``: Home Assistant MQTT discovery, one binary sensor "deepfake in view" per camera.

Never in detection's way: ``publish`` puts the message in a bounded queue and returns; a sender thread
hands it to paho (whose own network thread reconnects with backoff). While the broker is away the
queue holds what waits; when it is full the oldest waiting message is dropped and counted. Retained
topics are sent again on every (re)connect, so a restarted broker has them at once.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stream_detector.settings import setting

log = logging.getLogger("stream_detector.mqtt")

ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True)
class MqttSettings:
    """The declared keys of ``[mqtt]`` (host, username and password are read by hand)."""

    port: int = setting(1883, "broker port (8883 is the usual TLS port)", minimum=1, maximum=65535)
    client_id: str = setting("stream-detector", "MQTT client id (unique per daemon on one broker)")
    topic_prefix: str = setting("stream_detector", "first level of every topic")
    tls: bool = setting(False, "connect with TLS (the system's CA store, or ca_file)")
    ca_file: str | None = setting(None, "CA certificate file for TLS (default: the system's)")
    keepalive_s: int = setting(30, "MQTT keepalive", minimum=5, maximum=3600)
    queue_size: int = setting(
        1000,
        "messages waiting while the broker is away; beyond it the oldest is dropped (counted)",
        minimum=1,
        maximum=1_000_000,
    )
    discovery: bool = setting(False, "publish Home Assistant MQTT discovery (a binary sensor per camera)")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix")


@dataclass(frozen=True)
class MqttConfig(MqttSettings):
    host: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass
class _Message:
    topic: str
    payload: str
    qos: int
    retain: bool


class MqttPublisher:
    """One connection to the broker for the whole daemon (see the module docstring)."""

    def __init__(
        self,
        config: MqttConfig,
        cameras: tuple[str, ...],
        on_count: Callable[[str], None] | None = None,
        client_factory: Callable[..., object] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.config = config
        self.prefix = config.topic_prefix.rstrip("/")
        self.cameras = list(cameras)
        self.published = 0
        self.dropped = 0
        self._on_count = on_count or (lambda _result: None)
        self._queue: collections.deque[_Message] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._connected = threading.Event()
        # The latest value of every retained topic, sent again after each (re)connect.
        self._retained: dict[str, str] = {}
        factory = client_factory or mqtt.Client
        self._client = factory(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv311,
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set(ca_certs=config.ca_file)
        self._client.will_set(self.topic("available"), OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._sender = threading.Thread(target=self._send, name="mqtt-sender", daemon=True)

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queue_depth(self) -> int:
        with self._condition:
            return len(self._queue)

    def start(self) -> MqttPublisher:
        self._retain(self.topic("available"), ONLINE)
        for camera in self.cameras:
            self._retain(self.topic(camera, "available"), OFFLINE)
        # connect_async: the first connection is made by paho's thread, so a broker that is down at
        # start delays nothing; it is retried with backoff like any later loss.
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        self._sender.start()
        return self

    # What the daemon calls (the detection thread): never blocks.

    def event(self, record: dict[str, object]) -> None:
        self._put(_Message(self.topic("events"), json.dumps(record, separators=(",", ":")), 1, False))

    def availability(self, camera: str, online: bool) -> None:
        self._retain(self.topic(camera, "available"), ONLINE if online else OFFLINE)

    def state(self, camera: str, state: str, faces: int, p_smoothed: float | None) -> None:
        payload = {
            "state": state,
            "faces": faces,
            "p_smoothed": None if p_smoothed is None else round(p_smoothed, 4),
        }
        self._retain(self.topic(camera, "state"), json.dumps(payload, separators=(",", ":")))

    def cameras_changed(self, cameras: tuple[str, ...]) -> None:
        """After a reload: cameras gone are marked offline, new ones announced."""
        for camera in set(self.cameras) - set(cameras):
            self.availability(camera, False)
        added = [camera for camera in cameras if camera not in self.cameras]
        self.cameras = list(cameras)
        for camera in added:
            self.availability(camera, False)
            if self.config.discovery:
                self._announce(camera)

    # Internals.

    def _retain(self, topic: str, payload: str) -> None:
        with self._condition:
            if self._retained.get(topic) == payload:
                return
            self._retained[topic] = payload
        self._put(_Message(topic, payload, 1, True))

    def _put(self, message: _Message) -> None:
        with self._condition:
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._on_count("dropped")
            self._queue.append(message)
            self._condition.notify()

    def _announce(self, camera: str) -> None:
        unique = f"{self.config.client_id}_{camera}".replace("/", "_")
        config = {
            "name": f"{camera} deepfake in view",
            "unique_id": f"{unique}_deepfake",
            "state_topic": self.topic(camera, "state"),
            "value_template": "{{ 'ON' if value_json.state == 'FAKE' else 'OFF' }}",
            "availability_topic": self.topic(camera, "available"),
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device_class": "problem",
            "device": {"identifiers": [unique], "name": f"stream-detector {camera}"},
        }
        topic = f"{self.config.discovery_prefix}/binary_sensor/{unique}/deepfake/config"
        self._retain(topic, json.dumps(config, separators=(",", ":")))

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties=None) -> None:
        if reason_code.is_failure:
            log.warning(
                "mqtt broker %s:%d refused the connection: %s",
                self.config.host,
                self.config.port,
                reason_code,
            )
            return
        log.info("mqtt connected to %s:%d", self.config.host, self.config.port)
        if self.config.discovery:
            for camera in self.cameras:
                self._announce(camera)
        with self._condition:
            retained = dict(self._retained)
            # Retained values go first, as they are now; queued copies of them would only repeat.
            waiting = [message for message in self._queue if not message.retain]
            self._queue.clear()
            self._queue.extend(_Message(topic, payload, 1, True) for topic, payload in retained.items())
            self._queue.extend(waiting)
            self._connected.set()
            self._condition.notify()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties=None) -> None:
        if self._connected.is_set():
            log.warning(
                "mqtt disconnected from %s:%d (%s); reconnecting",
                self.config.host,
                self.config.port,
                reason_code,
            )
        self._connected.clear()

    def _send(self) -> None:
        import paho.mqtt.client as mqtt

        while True:
            with self._condition:
                while not self._closed and (not self._queue or not self._connected.is_set()):
                    self._condition.wait(0.5)
                if self._closed and (not self._queue or not self._connected.is_set()):
                    return
                message = self._queue.popleft()
            info = self._client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain
            )
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
                self._on_count("published")
                continue
            # Not connected after all: back to the front of the queue, for the next connection.
            with self._condition:
                self._queue.appendleft(message)
                self._connected.clear()

    def close(self, timeout_s: float = 2.0) -> None:
        """Cameras and daemon offline (retained), what waits sent within ``timeout_s``, then disconnect."""
        for camera in self.cameras:
            self.availability(camera, False)
        self._retain(self.topic("available"), OFFLINE)
        deadline = time.monotonic() + timeout_s
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._sender.join(max(0.1, deadline - time.monotonic()))
        left = self.queue_depth
        if left:
            self.dropped += left
            log.warning("mqtt: %d message(s) not sent before stopping", left)
        # Let paho put the last messages on the wire before the clean disconnect.
        while time.monotonic() < deadline and self._client.want_write():
            time.sleep(0.02)
        self._client.disconnect()
        self._client.loop_stop()
