import io
import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_detector.daemon.config import mask
from stream_detector.daemon.ops import (
    CameraHealth,
    DaemonMetrics,
    JsonFormatter,
    OneLineFormatter,
    OpsServer,
    RedactingFilter,
    health_document,
)

SECRET = "pa55word-xyz"


def camera(name: str, connected: bool = True, **overrides) -> CameraHealth:
    values = dict(
        name=name,
        url=f"rtsp://admin:***@127.0.0.1:8554/{name}",
        state="connected" if connected else "backoff",
        connected=connected,
        fps=5.0 if connected else 0.0,
        capture_fps=10.0 if connected else 0.0,
        last_frame_age_s=0.05 if connected else None,
        lag_s=0.12 if connected else None,
        reconnects=2,
        failed_opens=0 if connected else 7,
        dropped_frames=40,
        frames_captured=100,
        frames_processed=60,
        last_error=None if connected else f"cannot open stream rtsp://admin:{SECRET}@127.0.0.1:1/x",
    )
    values.update(overrides)
    return CameraHealth(**values)


def samples(exposition: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_cover_cameras_latency_faces_verdicts_and_events():
    cameras = [camera("door"), camera("yard", connected=False)]
    metrics = DaemonMetrics(lambda: cameras)
    metrics.faces.labels("door").inc(3)
    metrics.verdicts.labels("door", "FAKE").inc(2)
    metrics.events.labels("door", "start").inc()
    metrics.inference_seconds.observe(0.03)
    values = samples(metrics.exposition())
    door, yard = (("camera", "door"),), (("camera", "yard"),)
    assert (
        values[("stream_detector_camera_up", door)] == 1 and values[("stream_detector_camera_up", yard)] == 0
    )
    assert values[("stream_detector_camera_fps", door)] == 5.0
    assert values[("stream_detector_camera_reconnects_total", yard)] == 2
    assert values[("stream_detector_camera_failed_opens_total", yard)] == 7
    assert not any(name.endswith("_created") for name, _ in values)
    assert values[("process_resident_memory_bytes", ())] > 10e6
    assert values[("stream_detector_camera_dropped_frames_total", door)] == 40
    assert values[("stream_detector_camera_last_frame_age_seconds", door)] == pytest.approx(0.05)
    assert ("stream_detector_camera_last_frame_age_seconds", yard) not in values  # never had a frame
    assert values[("stream_detector_faces_total", door)] == 3
    assert values[("stream_detector_verdicts_total", (("camera", "door"), ("state", "FAKE")))] == 2
    assert values[("stream_detector_events_total", (("camera", "door"), ("kind", "start")))] == 1
    assert values[("stream_detector_inference_seconds_count", ())] == 1
    assert values[("stream_detector_inference_seconds_bucket", (("le", "0.035"),))] == 1
    assert values[("stream_detector_inference_seconds_bucket", (("le", "0.02"),))] == 0


def test_health_is_degraded_with_a_camera_down_and_503_only_when_the_loop_is_stuck():
    status, body = health_document([camera("door"), camera("yard", connected=False)], 0.1, 30)
    assert status == 200 and body["status"] == "degraded"
    assert body["cameras"]["door"]["connected"] is True and body["cameras"]["yard"]["reconnects"] == 2
    assert health_document([camera("door")], 0.1, 30)[1]["status"] == "ok"
    status, body = health_document([camera("door")], 45.0, 30)
    assert status == 503 and body["status"] == "stuck"


def test_endpoint_serves_health_and_metrics_with_secrets_masked():
    cameras = [camera("door"), camera("yard", connected=False)]
    metrics = DaemonMetrics(lambda: cameras)
    server = OpsServer(
        "127.0.0.1",
        0,
        lambda: health_document(cameras, 0.1, 30),
        metrics.exposition,
        lambda text: mask(text, (SECRET,)),
    ).start()
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as response:
            text = response.read().decode()
            assert response.status == 200 and response.headers["Content-Type"] == "application/json"
        body = json.loads(text)
        assert set(body["cameras"]) == {"door", "yard"}
        assert SECRET not in text and "admin:***@" in body["cameras"]["yard"]["last_error"]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            exposition = response.read()
            assert response.headers["Content-Type"].startswith("text/plain")
        assert b"stream_detector_camera_up" in exposition
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://{host}:{port}/nope", timeout=5)
        assert caught.value.code == 404
    finally:
        server.close()


def _record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("stream_detector.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_log_lines_are_one_line_json_with_secrets_masked():
    redact = RedactingFilter(lambda text: mask(text, (SECRET,)))
    try:
        raise RuntimeError(f"boom at rtsp://u:{SECRET}@h/x\nsecond line")
    except RuntimeError as error:
        record = _record(
            "open %s failed", f"rtsp://u:{SECRET}@h/x", exc_info=(type(error), error, error.__traceback__)
        )
    assert redact.filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line and SECRET not in line
    document = json.loads(line)
    assert document["message"] == "open rtsp://u:***@h/x failed" and document["level"] == "WARNING"
    assert "RuntimeError" in document["traceback"]

    text_record = _record("camera %s down\nwith detail", "door")
    redact.filter(text_record)
    text_line = OneLineFormatter().format(text_record)
    assert "\n" not in text_line and "camera door down | with detail" in text_line


def test_configure_logging_masks_through_the_root_handlers():
    from stream_detector.daemon.ops import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        configure_logging("json", lambda text: mask(text, (SECRET,)))
        logging.getLogger("stream_detector.x").warning("token=%s", SECRET)
    finally:
        root.handlers = saved
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "token=***"
