"""The daemon's MQTT output against a real Mosquitto broker on a free loopback port."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stream_detector.daemon.config import parse_config
from stream_detector.daemon.service import Daemon
from tests.daemon.test_daemon import PASSWORD, StubEngine, read_events, stub_config, stub_openers
from tools.rtsp_server import free_port
from tools.waiting import wait_until

pytestmark = pytest.mark.slow

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


class Broker:
    """Mosquitto on 127.0.0.1:port, no persistence (a restart forgets retained messages)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        assert wait_until(listening, 10), "mosquitto did not start"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class Subscriber:
    """Everything published under ``prefix/#`` (and the discovery prefix), resubscribed on reconnect."""

    def __init__(self, port: int, topics: tuple[str, ...]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        self.client.on_connect = lambda client, *_: [client.subscribe(topic, qos=1) for topic in topics]
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def payloads(self, topic: str) -> list[str]:
        with self._lock:
            return [payload for name, payload, _ in self.messages if name == topic]

    def events(self) -> list[dict]:
        return [json.loads(payload) for payload in self.payloads("sd/events")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.fail("mosquitto is not installed: run scripts/setup_test_system.sh")
    running = Broker(tmp_path).start()
    yield running
    running.stop()


def test_events_availability_and_state_reach_the_broker_and_survive_its_restart(tmp_path, broker):
    text = stub_config(tmp_path, cameras=("door", "yard", "dead"), update_interval_s=1)
    text += (
        f"[mqtt]\nhost = '127.0.0.1'\nport = {broker.port}\ntopic_prefix = 'sd'\nqueue_size = 4\n"
        "discovery = true\nusername = 'detector'\npassword = '${CAM_PASSWORD}'\n"
    )
    config = parse_config(text, environment={"CAM_PASSWORD": PASSWORD})
    subscriber = Subscriber(broker.port, ("sd/#", "homeassistant/#"))
    daemon = Daemon(config, StubEngine(), opener_factory=stub_openers)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    log_path = tmp_path / "out" / "events.jsonl"
    try:
        assert daemon.ready.wait(10)
        assert wait_until(
            lambda: {e["camera"] for e in subscriber.events() if e["kind"] == "start"} >= {"door", "yard"}, 15
        )
        assert wait_until(lambda: "online" in subscriber.payloads("sd/door/available"), 10)
        assert subscriber.payloads("sd/available")[0] == "online"
        assert "offline" in subscriber.payloads("sd/dead/available")  # never connected
        state = json.loads(subscriber.payloads("sd/door/state")[-1])
        assert state["state"] == "FAKE" and state["faces"] == 1 and state["p_smoothed"] == pytest.approx(0.93)
        discovery = [
            json.loads(p)
            for p in subscriber.payloads("homeassistant/binary_sensor/stream-detector_door/deepfake/config")
        ]
        assert discovery and discovery[0]["state_topic"] == "sd/door/state"
        assert discovery[0]["availability_topic"] == "sd/door/available"
        # The event on the wire is the line in events.jsonl.
        first = subscriber.events()[0]
        assert first in read_events(log_path)

        # The broker goes away: detection and the log go on, the small queue drops the oldest.
        broker.stop()
        lines_before = len(read_events(log_path))
        assert wait_until(lambda: len(read_events(log_path)) >= lines_before + 8, 15), "detection stalled"
        assert wait_until(lambda: daemon.mqtt.dropped > 0, 10)
        assert 'stream_detector_mqtt_messages_total{result="dropped"}' in daemon.metrics.exposition().decode()

        # It comes back (empty: no persistence): the retained topics are sent again, events flow.
        seen_before = len(subscriber.events())
        broker.start()
        assert wait_until(lambda: len(subscriber.events()) > seen_before + 2, 40), (
            "no events after the restart"
        )
        assert wait_until(lambda: daemon.mqtt.connected, 5)
        retained_again = [
            m for m in subscriber.messages[-200:] if m[0] == "sd/door/available" and m[1] == "online"
        ]
        assert retained_again
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert wait_until(lambda: subscriber.payloads("sd/available")[-1:] == ["offline"], 10)
    assert subscriber.payloads("sd/door/available")[-1] == "offline"
    ends = [e for e in subscriber.events() if e["kind"] == "end" and e.get("reason") == "shutdown"]
    assert {e["camera"] for e in ends} == {"door", "yard"}
    everything = "".join(payload for _, payload, _ in subscriber.messages)
    assert PASSWORD not in everything
    subscriber.close()


def test_a_broker_that_is_down_at_start_delays_nothing(tmp_path):
    port = free_port()  # nothing listens there
    text = stub_config(tmp_path, cameras=("door",)) + f"[mqtt]\nhost = '127.0.0.1'\nport = {port}\n"
    daemon = Daemon(
        parse_config(text, environment={"CAM_PASSWORD": PASSWORD}), StubEngine(), opener_factory=stub_openers
    )
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        assert daemon.ready.wait(10)
        assert wait_until(
            lambda: any(e["kind"] == "start" for e in read_events(tmp_path / "out" / "events.jsonl")), 10
        )
        assert not daemon.mqtt.connected
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive() and time.monotonic() - started < 15
