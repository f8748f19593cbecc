import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from stream_detector import cli
from stream_detector.daemon.config import parse_config
from stream_detector.daemon.service import Daemon
from stream_detector.errors import ConfigError, SourceError
from stream_detector.pipeline.engine import FrameResult
from stream_detector.pipeline.types import Frame, TrackedFace, Verdict, VerdictState
from tools import rtsp_server
from tools.waiting import wait_until

# Subprocesses, real servers, threads on real clocks or TensorFlow: not the fast lane (make test-fast).
pytestmark = pytest.mark.slow

rtsp_server_factory = rtsp_server.rtsp_server_factory  # the fixture, used by name below

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Top$ecret-77"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def stop_daemon(process: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM, then its exit code; None (and killed) if it did not exit within ``timeout_s``."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


class WebhookReceiver:
    """Our own webhook target on 127.0.0.1; ``delay_s`` makes it a slow one."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.records: list[dict] = []
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay_s)
                receiver.records.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word: a camera that hangs at open."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


# In-process daemon on stub parts: fast, and every path (failing engine, hung webhook) on demand.


class StubSource:
    def __init__(self, name: str, interval: float = 0.02) -> None:
        self.name = name
        self.interval = interval
        self.index = 0

    def read(self) -> Frame:
        time.sleep(self.interval)
        self.index += 1
        image = np.full((120, 160, 3), 100, np.uint8)
        return Frame(image, self.index, time.monotonic() * 1000.0, self.name)

    def close(self) -> None:
        pass


def stub_openers(config):
    def opener() -> StubSource:
        if config.name.startswith("dead"):
            raise SourceError(f"cannot open stream {config.display_url} (refused)")
        return StubSource(config.name)

    return opener


class StubEngine:
    """Every frame has one face (track 1), FAKE; calls in ``fail_calls`` and frames of cameras named
    "bad..." raise instead (a whole batch fails when it holds one of those)."""

    backend = "stub"
    description = "stub engine"

    def __init__(self, fail_calls: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.fail_calls = fail_calls
        self.closed = False
        self.closed_sources: list[str] = []

    def process_batch(self, frames):
        self.calls += 1
        if self.calls in self.fail_calls or any(frame.source_id.startswith("bad") for frame in frames):
            raise RuntimeError("detector hiccup")
        results = []
        for frame in frames:
            box = (40.0, 30.0, 100.0, 90.0)
            verdict = Verdict(1, box, VerdictState.FAKE, 0.93, 0.0)
            results.append(
                FrameResult(frame, (TrackedFace(1, box, 0.93),), (verdict,), {"total": 1.0}, fps=5.0)
            )
        return results

    def close_source(self, source_id: str) -> None:
        self.closed_sources.append(source_id)

    def close(self) -> None:
        self.closed = True


def stub_config(
    tmp_path: Path, cameras=("door", "yard", "dead"), webhook_url: str | None = None, **events
) -> str:
    event_values = {
        "min_duration_s": 0.2,
        "end_after_s": 0.5,
        "cooldown_s": 0,
        "update_interval_s": 60,
    } | events
    lines = ["[http]", "port = 0", "[events]", f'directory = "{tmp_path / "out"}"']
    lines += [f"{key} = {value}" for key, value in event_values.items()]
    if webhook_url:
        lines += ["[webhook]", f'url = "{webhook_url}"', "timeout_s = 1", "max_retries = 0", "queue_size = 4"]
    lines += ["[reconnect]", "backoff_initial_s = 0.05", "backoff_max_s = 0.2", "stall_timeout_s = 1"]
    for name in cameras:
        lines += [
            f"[cameras.{name}]",
            f'url = "rtsp://admin:${{CAM_PASSWORD}}@127.0.0.1:9/{name}"',
            "process_hz = 10",
        ]
    return "\n".join(lines) + "\n"


def start_daemon(config_text: str, engine) -> tuple[Daemon, threading.Event, threading.Thread]:
    config = parse_config(config_text, environment={"CAM_PASSWORD": PASSWORD})
    daemon = Daemon(config, engine, opener_factory=stub_openers)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    assert daemon.ready.wait(10)
    return daemon, stop, thread


def fetch(daemon: Daemon, path: str) -> tuple[int, str]:
    host, port = daemon.ops_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_events_open_per_camera_and_close_on_stop_while_a_dead_camera_retries(tmp_path):
    engine = StubEngine()
    daemon, stop, thread = start_daemon(stub_config(tmp_path), engine)
    log_path = tmp_path / "out" / "events.jsonl"
    try:
        assert wait_until(
            lambda: {e["camera"] for e in read_events(log_path) if e["kind"] == "start"} == {"door", "yard"}
        )
        status, text = fetch(daemon, "/healthz")
        health = json.loads(text)
        assert status == 200 and health["status"] == "degraded"
        assert health["cameras"]["door"]["connected"] and not health["cameras"]["dead"]["connected"]
        assert health["cameras"]["dead"]["failed_opens"] >= 1 and PASSWORD not in text
        _, metrics = fetch(daemon, "/metrics")
        assert 'stream_detector_events_total{camera="door",kind="start"} 1.0' in metrics
        assert 'stream_detector_camera_up{camera="dead"} 0.0' in metrics
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and engine.closed
    events = read_events(log_path)
    # One incident per camera (the face never stopped being FAKE), ended by the shutdown.
    assert sorted((e["camera"], e["kind"]) for e in events) == [
        ("door", "end"),
        ("door", "start"),
        ("yard", "end"),
        ("yard", "start"),
    ]
    assert all(e["reason"] == "shutdown" for e in events if e["kind"] == "end")
    for start in (e for e in events if e["kind"] == "start"):
        assert Path(start["snapshot"]).stat().st_size > 1000


def test_a_camera_dead_for_longer_than_the_threshold_raises_one_offline_alert(tmp_path):
    engine = StubEngine()
    config = stub_config(tmp_path, cameras=("door", "dead"), camera_offline_after_s=0.5)
    daemon, stop, thread = start_daemon(config, engine)
    log_path = tmp_path / "out" / "events.jsonl"
    try:
        assert wait_until(lambda: any(e["kind"] == "camera_offline" for e in read_events(log_path)))
        time.sleep(1.5)  # more checks pass: still one alert for the one outage
        _, metrics = fetch(daemon, "/metrics")
        assert 'stream_detector_events_total{camera="dead",kind="camera_offline"} 1.0' in metrics
    finally:
        stop.set()
        thread.join(10)
    offline = [e for e in read_events(log_path) if e["kind"] == "camera_offline"]
    assert [e["camera"] for e in offline] == ["dead"]
    assert (
        offline[0]["offline_for_s"] >= 0.5
        and offline[0]["last_error"]
        and PASSWORD not in json.dumps(offline)
    )


def test_a_camera_whose_frames_break_the_engine_costs_only_its_own_frames(tmp_path):
    engine = StubEngine(fail_calls=(2,))
    daemon, stop, thread = start_daemon(stub_config(tmp_path, cameras=("door", "bad")), engine)
    door, bad = daemon.runs
    try:
        assert wait_until(lambda: door.frames_processed >= 20 and bad.camera.status().frames_taken >= 20)
        errors = daemon.metrics.errors
        assert errors.labels("bad")._value.get() >= 20 and errors.labels("door")._value.get() <= 1
        assert bad.frames_processed == 0
        assert [e["camera"] for e in read_events(tmp_path / "out" / "events.jsonl")] == ["door"]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_an_unwritable_event_directory_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    text = stub_config(tmp_path, cameras=("door",)).replace(str(tmp_path / "out"), str(blocker / "out"))
    # Refused when the config is read (so by --check too), not after the cameras have started.
    with pytest.raises(ConfigError, match=r"^events.directory: cannot create .*file/out: .*is a file"):
        parse_config(text, environment={"CAM_PASSWORD": PASSWORD})


def test_a_hung_webhook_never_slows_detection_and_stop_stays_bounded(tmp_path):
    receiver = WebhookReceiver(delay_s=30.0)  # longer than the sender's timeout: every post fails late
    engine = StubEngine()
    # Short incidents, no cooldown: one event after another while the webhook hangs.
    text = stub_config(tmp_path, cameras=("door",), webhook_url=receiver.url)
    daemon, stop, thread = start_daemon(text, engine)
    try:
        assert wait_until(lambda: len(read_events(tmp_path / "out" / "events.jsonl")) >= 1)
        processed = daemon.runs[0].frames_processed
        # While the sender sits in its timeout, frames keep being processed at the camera's rate.
        assert wait_until(lambda: daemon.runs[0].frames_processed >= processed + 15, timeout=10)
    finally:
        started = time.monotonic()
        stop.set()
        thread.join(15)
        stop_seconds = time.monotonic() - started
        receiver.close()
    assert not thread.is_alive()
    assert stop_seconds < 10  # drain (2 s) plus one webhook timeout (1 s), not the receiver's 30 s
    assert read_events(tmp_path / "out" / "events.jsonl")[-1]["kind"] == "end"


def test_cli_refuses_a_bad_config_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[cameras.door]\nurl = "rtsp://127.0.0.1/x"\nprocess_hz = -1\n')
    assert cli.main(["daemon", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cameras.door.process_hz: must be > 0" in err


def test_cli_check_shows_cameras_with_passwords_masked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAM_PASSWORD", PASSWORD)
    path = tmp_path / "ok.toml"
    path.write_text(stub_config(tmp_path, cameras=("door",)))
    assert cli.main(["daemon", "--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "door: rtsp://admin:***@127.0.0.1:9/door" in out and PASSWORD not in out


# The real thing: the CLI in a subprocess, a GStreamer RTSP server, MediaPipe and the shipped model.


def e2e_header(tmp_path: Path, end_after_s: float = 1.0, reconnect_extra: str = "") -> str:
    """The tables every end-to-end config shares (the cameras and the outputs are each test's own)."""
    return f"""
[daemon]
log_format = "json"
[http]
port = 0
[engine]
# Thresholds at 0 make every classified face FAKE, whatever the weights say: the events are certain,
# and the model, detector and classifier still run for real.
smoothing = {{ fake_enter = 0.0, fake_exit = 0.0, real_enter = 0.0, real_exit = 0.0, min_evidence = 2.0 }}
threads = 1
[events]
directory = "{tmp_path / "out"}"
min_duration_s = 0.5
end_after_s = {end_after_s}
cooldown_s = 0
[reconnect]
open_timeout_s = 4
read_timeout_s = 2
stall_timeout_s = 3
{reconnect_extra}
"""


def e2e_config(tmp_path: Path, server, dead_port: int, silent_port: int, webhook_url: str) -> Path:
    text = e2e_header(tmp_path, reconnect_extra="backoff_initial_s = 0.3\nbackoff_max_s = 1.0")
    text += f"""
[webhook]
url = "{webhook_url}"
[cameras.door]
url = "{server.url("door", "admin:${CAM_PASSWORD}")}"
[cameras.yard]
url = "{server.url("yard")}"
[cameras.refused]
url = "rtsp://admin:${{CAM_PASSWORD}}@127.0.0.1:{dead_port}/x"
[cameras.silent]
url = "rtsp://127.0.0.1:{silent_port}/x"
reconnect = {{ open_timeout_s = 2 }}
"""
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_rtsp_cameras_survive_a_server_restart_and_sigterm_closes_everything(tmp_path, rtsp_server_factory):
    server = rtsp_server_factory(mounts=("door", "yard"))
    silent = SilentServer()
    receiver = WebhookReceiver()
    dead_port = rtsp_server.free_port()
    config_path = e2e_config(tmp_path, server, dead_port, silent.port, receiver.url)
    stderr_path = tmp_path / "stderr.log"
    environment = dict(os.environ, CAM_PASSWORD=PASSWORD)
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "daemon", "--config", str(config_path)],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            env=environment,
            cwd=REPO,
        )
    log_path = tmp_path / "out" / "events.jsonl"

    def log_lines() -> list[dict]:
        return [json.loads(line) for line in stderr_path.read_text().splitlines() if line.strip()]

    def health() -> dict:
        port = next(
            int(line["message"].split(":")[2].split("/")[0])
            for line in log_lines()
            if line["message"].startswith("ops endpoint")
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            text = response.read().decode()
        assert PASSWORD not in text
        return json.loads(text)["cameras"]

    def metrics() -> str:
        port = next(
            int(line["message"].split(":")[2].split("/")[0])
            for line in log_lines()
            if line["message"].startswith("ops endpoint")
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    def starts(camera: str) -> list[dict]:
        return [e for e in read_events(log_path) if e["camera"] == camera and e["kind"] == "start"]

    try:
        assert wait_until(lambda: any(line["message"].startswith("ops endpoint") for line in log_lines()), 60)
        assert wait_until(lambda: all(health()[name]["connected"] for name in ("door", "yard")), 60)
        assert wait_until(lambda: starts("door") and starts("yard"), 30), read_events(log_path)

        # The server dies mid-stream: both cameras go down, their incidents end (nothing stays open).
        server.kill()
        assert wait_until(lambda: not any(health()[name]["connected"] for name in ("door", "yard")), 20)
        assert wait_until(lambda: len([e for e in read_events(log_path) if e["kind"] == "end"]) >= 2, 20)

        # It comes back on the same port: both reconnect, the reconnect is counted, detection resumes.
        server.start()
        assert wait_until(
            lambda: all(
                health()[n]["connected"] and health()[n]["reconnects"] == 1 for n in ("door", "yard")
            ),
            40,
        )
        assert wait_until(lambda: len(starts("door")) >= 2 and len(starts("yard")) >= 2, 30)
        cameras = health()
        assert not cameras["refused"]["connected"] and cameras["refused"]["failed_opens"] >= 2
        assert not cameras["silent"]["connected"] and cameras["silent"]["failed_opens"] >= 1
        exposition = metrics()
        assert 'stream_detector_camera_reconnects_total{camera="door"} 1.0' in exposition
        assert 'stream_detector_camera_up{camera="refused"} 0.0' in exposition
        assert "stream_detector_inference_seconds_count" in exposition
    finally:
        returncode = stop_daemon(process, 15)
        silent.close()

    assert returncode == 0
    events = read_events(log_path)
    # No incident is lost: every start has exactly one end, the last ones closed by the shutdown.
    for event_id in {e["event_id"] for e in events}:
        kinds = [e["kind"] for e in events if e["event_id"] == event_id]
        assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("end") == 1, kinds
    assert {e["camera"] for e in events} == {"door", "yard"}
    assert [e for e in events if e.get("reason") == "shutdown"]
    for start in (e for e in events if e["kind"] == "start"):
        assert Path(start["snapshot"]).is_file()
    assert wait_until(lambda: len(receiver.records) == len(events), 5)
    receiver.close()
    # Every line the daemon wrote on stderr is one JSON record, and none carries the password.
    text = stderr_path.read_text()
    assert PASSWORD not in text
    lines = log_lines()
    assert any("camera=door connected reconnects=1" in line["message"] for line in lines)
    assert lines[-1]["message"].startswith("stopped")


def test_reload_starts_stops_and_restarts_only_the_cameras_that_changed(tmp_path):
    engine = StubEngine()
    config_path = tmp_path / "daemon.toml"
    config_path.write_text(stub_config(tmp_path, cameras=("door", "yard")))
    environment = {"CAM_PASSWORD": PASSWORD}
    config = parse_config(config_path.read_text(), environment=environment)
    daemon = Daemon(
        config,
        engine,
        opener_factory=stub_openers,
        config_loader=lambda: parse_config(config_path.read_text(), environment=environment),
    )
    stop, reload = threading.Event(), threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop, reload), daemon=True)
    thread.start()
    assert daemon.ready.wait(10)
    log_path = tmp_path / "out" / "events.jsonl"
    try:
        assert wait_until(
            lambda: {e["camera"] for e in read_events(log_path) if e["kind"] == "start"} == {"door", "yard"},
            10,
        )
        yard_camera = next(run.camera for run in daemon.runs if run.config.name == "yard")

        # door removed, gate added, yard as it was: only door and gate are touched.
        config_path.write_text(stub_config(tmp_path, cameras=("yard", "gate")))
        reload.set()
        assert wait_until(lambda: daemon.reloads == 1, 10)
        assert sorted(run.config.name for run in daemon.runs) == ["gate", "yard"]
        assert next(run.camera for run in daemon.runs if run.config.name == "yard") is yard_camera
        assert engine.closed_sources == ["door"]
        assert wait_until(
            lambda: any(e["camera"] == "gate" and e["kind"] == "start" for e in read_events(log_path)), 10
        )
        door_ends = [e for e in read_events(log_path) if e["camera"] == "door" and e["kind"] == "end"]
        assert [e["reason"] for e in door_ends] == ["removed"]

        # yard's settings change: it restarts, its open incident ends as reconfigured.
        config_path.write_text(
            stub_config(tmp_path, cameras=("yard", "gate")).replace("process_hz = 10", "process_hz = 5")
        )
        reload.set()
        assert wait_until(lambda: daemon.reloads == 2, 10)
        assert next(run.camera for run in daemon.runs if run.config.name == "yard") is not yard_camera
        assert [
            e["reason"] for e in read_events(log_path) if e["camera"] == "yard" and e["kind"] == "end"
        ] == ["reconfigured"]

        # A broken file is refused and the running config stays.
        config_path.write_text("[cameras.x\nurl = ")
        reload.set()
        time.sleep(0.5)
        assert daemon.reloads == 2 and sorted(run.config.name for run in daemon.runs) == ["gate", "yard"]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    events = read_events(log_path)
    for event_id in {e["event_id"] for e in events}:
        kinds = [e["kind"] for e in events if e["event_id"] == event_id]
        assert kinds[0] == "start" and kinds.count("end") == 1 and kinds[-1] == "end", kinds


@pytest.mark.slow
def test_sighup_reloads_the_config_of_a_running_daemon_and_sigterm_is_bounded(tmp_path, rtsp_server_factory):
    server = rtsp_server_factory(mounts=("door", "yard"))
    silent = SilentServer()
    config_path = tmp_path / "daemon.toml"

    def write_config(cameras: dict[str, str]) -> None:
        text = e2e_header(tmp_path, end_after_s=60)
        for name, url in cameras.items():
            text += f'[cameras.{name}]\nurl = "{url}"\n'
        config_path.write_text(text)

    silent_url = f"rtsp://127.0.0.1:{silent.port}/x"
    write_config({"door": server.url("door"), "silent": silent_url})
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "daemon", "--config", str(config_path)],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
    log_path = tmp_path / "out" / "events.jsonl"

    def messages() -> list[str]:
        return [json.loads(line)["message"] for line in stderr_path.read_text().splitlines() if line.strip()]

    def health() -> dict:
        port = next(int(m.split(":")[2].split("/")[0]) for m in messages() if m.startswith("ops endpoint"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return json.loads(response.read())["cameras"]

    try:
        assert wait_until(lambda: any(m.startswith("ops endpoint") for m in messages()), 60)
        assert wait_until(
            lambda: any(e["camera"] == "door" and e["kind"] == "start" for e in read_events(log_path)), 60
        )

        # door goes, yard comes, silent stays as it is.
        write_config({"yard": server.url("yard"), "silent": silent_url})
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(m.startswith("reload done") for m in messages()), 20), messages()
        assert process.poll() is None, "SIGHUP must not end the daemon"
        assert wait_until(lambda: set(health()) == {"yard", "silent"} and health()["yard"]["connected"], 30)
        assert wait_until(
            lambda: any(e["camera"] == "yard" and e["kind"] == "start" for e in read_events(log_path)), 30
        )
        door_ends = [e for e in read_events(log_path) if e["camera"] == "door" and e["kind"] == "end"]
        assert [e["reason"] for e in door_ends] == ["removed"]

        # A bad file: one line, and nothing changes.
        config_path.write_text("[cameras.yard]\nurl = 5\n")
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(m.startswith("reload refused") for m in messages()), 20)
        refusals = [m for m in messages() if m.startswith("reload refused")]
        assert len(refusals) == 1 and "url" in refusals[0]
        assert set(health()) == {"yard", "silent"} and process.poll() is None
    finally:
        # The silent camera sits in a blocked open (4 s timeout): the stop waits for it, no longer.
        stopped_at = time.monotonic()
        returncode = stop_daemon(process, 30)
        stop_took = time.monotonic() - stopped_at
        silent.close()
    assert returncode == 0
    lines = messages()
    assert not [m for m in lines if "did not stop within" in m], lines
    assert lines[-1].startswith("stopped") and stop_took < 4 + 1 + 8  # the bound, plus the engine's close
