"""The cluster mode's pure parts: its config, the sink's duplicate and incarnation rules, merged metrics,
the Serve classifier's gaps. No Ray cluster here (test_cluster.py runs a real one)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stream_detector.daemon.config import parse_config
from stream_detector.errors import ConfigError
from tools.rtsp_server import free_port

BASE = """
[cameras.door]
url = "rtsp://127.0.0.1:8554/door"
"""


def config_with(cluster: str, tmp_path=None):
    events = f'[events]\ndirectory = "{tmp_path / "out"}"\n' if tmp_path is not None else ""
    return parse_config(events + cluster + BASE, environment={})


def test_without_a_cluster_table_the_daemon_is_single_box():
    assert config_with("").cluster is None


def test_a_cluster_table_is_read_with_its_declared_defaults():
    config = config_with('[cluster]\naddress = "10.0.0.5:6379"\ncamera_cpus = 0.25\n')
    assert config.cluster is not None
    assert config.cluster.address == "10.0.0.5:6379"
    assert config.cluster.camera_cpus == 0.25
    assert config.cluster.classifier_replicas == 1
    assert config_with("[cluster]\ncamera_cpus = 1\n").cluster.address == "local"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('address = "nowhere"', 'cluster.address: must be "HOST:PORT" or "local"'),
        ('address = "10.0.0.5:0"', "cluster.address: port must be 1-65535"),
        ('address = "10.0.0.5:http"', "cluster.address: port must be 1-65535"),
        ('address = "bad host!:6379"', 'cluster.address: must be "HOST:PORT" or "local"'),
        ("replicas = 2", "cluster.replicas: unknown key"),
        ("camera_cpus = -1", "cluster.camera_cpus: must be >= 0"),
        ("classifier_replicas = 0", "cluster.classifier_replicas: must be >= 1"),
        ('namespace = " "', "cluster.namespace: must not be empty"),
        ('address = "${RAY_HEAD}"', "cluster.address: environment variable RAY_HEAD is not set"),
    ],
)
def test_bad_cluster_keys_are_one_line_naming_the_key(table, message):
    with pytest.raises(ConfigError) as raised:
        config_with(f"[cluster]\n{table}\n")
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_address_where_nothing_listens_is_one_line_before_ray_is_asked():
    from stream_detector.cluster.driver import check_reachable

    port = free_port()
    with pytest.raises(ConfigError) as raised:
        check_reachable(f"127.0.0.1:{port}", timeout_s=1.0)
    assert str(raised.value).startswith(f"cluster.address: no Ray cluster answers at 127.0.0.1:{port}")


def test_the_cli_refuses_an_unreachable_cluster_with_one_line(tmp_path, capfd):
    from stream_detector import cli

    port = free_port()
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[events]\ndirectory = "{tmp_path / "out"}"\n[http]\nport = 0\n[cluster]\naddress = "127.0.0.1:{port}"\n'
        + BASE
    )
    assert cli.main(["daemon", "--config", str(path)]) == 2
    # The daemon's logging owns fd 2 by then (daemon/ops.NativeStderr): read the descriptor.
    error = capfd.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert error[-1].startswith("stream-detector daemon: error: cluster.address: no Ray cluster answers"), (
        error
    )


# The sink's rules.


def sink(tmp_path):
    from stream_detector.cluster.sink import EventSink

    config = config_with("[cluster]\n", tmp_path)
    return EventSink(config, ("door",), node="node-a"), config


def record_item(item_id: str, event_id: str, kind: str, camera: str = "door") -> dict:
    return {
        "id": item_id,
        "type": "record",
        "record": {"time": "t", "camera": camera, "event_id": event_id, "kind": kind, "track_id": 1},
    }


def lines(config) -> list[dict]:
    return [json.loads(line) for line in config.events.jsonl_path.read_text().splitlines()]


def test_the_sink_writes_a_retried_batch_once_and_confirms_it_again(tmp_path):
    events, config = sink(tmp_path)
    batch = [record_item("inc1-1", "e1", "start"), record_item("inc1-2", "e1", "update")]
    assert events.write("door", "inc1", "node-a", batch)["confirmed"] == ["inc1-1", "inc1-2"]
    assert events.write("door", "inc1", "node-a", batch)["confirmed"] == ["inc1-1", "inc1-2"]
    assert [line["record_id"] for line in lines(config)] == ["inc1-1", "inc1-2"]
    assert events.duplicates == 2


def test_a_camera_back_from_another_node_has_its_old_incidents_ended_as_moved(tmp_path):
    events, config = sink(tmp_path)
    events.write("door", "inc1", "node-a", [record_item("inc1-1", "e1", "start")])
    events.write("door", "inc2", "node-b", [{"id": "inc2-1", "type": "hello"}])
    events.write("door", "inc2", "node-b", [record_item("inc2-2", "e2", "start")])
    written = lines(config)
    assert [(line["event_id"], line["kind"], line.get("reason")) for line in written] == [
        ("e1", "start", None),
        ("e1", "end", "moved"),
        ("e2", "start", None),
    ]
    # The same node again is a restart, not a move; at shutdown the rest ends.
    events.write("door", "inc3", "node-b", [{"id": "inc3-1", "type": "hello"}])
    assert lines(config)[-1]["reason"] == "restarted"
    assert events.close_open("shutdown") == 0
    events.write("door", "inc3", "node-b", [record_item("inc3-2", "e3", "start")])
    assert events.close_open("shutdown") == 1
    assert lines(config)[-1]["kind"] == "end" and lines(config)[-1]["reason"] == "shutdown"
    assert events.stats()["incidents_closed"] == {"moved": 1, "restarted": 1, "shutdown": 1}


def test_a_restarted_sink_reads_back_what_it_wrote(tmp_path):
    events, config = sink(tmp_path)
    batch = [record_item("inc1-1", "e1", "start")]
    events.write("door", "inc1", "node-a", batch)
    again, _ = sink(tmp_path)
    assert again.write("door", "inc1", "node-a", batch)["confirmed"] == ["inc1-1"]
    assert len(lines(config)) == 1
    # The incident it had open is still known: a move ends it.
    again.write("door", "inc2", "node-b", [{"id": "inc2-1", "type": "hello"}])
    assert lines(config)[-1]["reason"] == "moved"


def test_the_sink_stores_a_snapshot_the_camera_encoded(tmp_path):
    from stream_detector.daemon.events import encode_snapshot

    events, config = sink(tmp_path)
    item = record_item("inc1-1", "e1", "start")
    item["snapshot"] = encode_snapshot(np.zeros((32, 32, 3), np.uint8), 80)
    item["snapshot_name"] = "door_e1_start_0.jpg"
    events.write("door", "inc1", "node-a", [item])
    path = lines(config)[0]["snapshot"]
    assert path.endswith("door_e1_start_0.jpg")
    assert Path(path).read_bytes()[:2] == b"\xff\xd8"


def test_merged_metrics_label_every_sample_with_its_node_and_camera():
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import generate_latest

    from stream_detector.cluster.metrics import MergedCollector, families

    sources = []
    for camera in ("door", "yard"):
        registry = CollectorRegistry()
        Counter("stream_detector_faces", "faces", ["camera"], registry=registry).labels(camera).inc(3)
        Histogram("stream_detector_batch_frames", "frames", registry=registry, buckets=(1, 2)).observe(1)
        sources.append(({"node": "n1", "camera": camera}, families(registry)))
    merged = CollectorRegistry()
    merged.register(MergedCollector(lambda: sources))
    text = generate_latest(merged).decode()
    assert text.count("# HELP stream_detector_faces_total") == 1
    assert 'stream_detector_faces_total{camera="door",node="n1"} 3.0' in text
    assert 'stream_detector_batch_frames_count{camera="yard",node="n1"} 1.0' in text


class FailingHandle:
    """A deployment handle whose calls fail, as while Serve replaces a killed replica."""

    class _Method:
        def remote(self, crops):
            raise TimeoutError("replica gone")

    classify = _Method()


def test_a_serve_classifier_that_cannot_reach_a_replica_returns_gaps_not_scores():
    from stream_detector.cluster.classifier import ServeClassifier

    seen = []
    classifier = ServeClassifier(FailingHandle(), timeout_s=0.1, observer=seen.append)
    scores = classifier.classify(np.zeros((2, 224, 224, 3), np.uint8))
    assert scores.shape == (2,) and all(math.isnan(score) for score in scores)
    assert classifier.gaps == 1 and seen[0].batch_frames is None
    with pytest.raises(ValueError):
        classifier.classify(np.zeros((2, 100, 100, 3), np.uint8))


@pytest.mark.parametrize(
    ("gcs_state", "waited_s", "free", "never_answered", "expected"),
    [
        ("DEAD", 1.0, [4.0], False, "dead"),
        ("PENDING_CREATION", 2.0, [0.0], True, "starting"),  # still creating: not yet unplaceable
        ("PENDING_CREATION", 30.0, [0.25, 0.0], True, "unplaceable"),
        ("RESTARTING", 30.0, [0.0], False, "unplaceable"),
        ("RESTARTING", 30.0, [1.0], False, "restarting"),  # room somewhere: Ray is re-placing it
        ("ALIVE", 30.0, [0.0], False, "restarting"),  # alive but silent: its node is going away
        (None, 30.0, None, True, "starting"),  # no figures at all: no claim
    ],
)
def test_a_silent_camera_is_reported_for_what_it_is(gcs_state, waited_s, free, never_answered, expected):
    from stream_detector.cluster.driver import placement_state

    assert placement_state(gcs_state, waited_s, free, 0.5, never_answered) == expected


def test_the_example_cluster_config_loads_and_checks(capsys, monkeypatch):
    from stream_detector import cli
    from stream_detector.daemon.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "cluster.toml"
    config = load_config(path, environment={"CAM_PASSWORD": "example-pass"})
    assert config.cluster is not None and config.cluster.address == "local"
    assert [camera.name for camera in config.cameras] == ["door", "yard"]
    monkeypatch.setenv("CAM_PASSWORD", "example-pass")
    assert cli.main(["daemon", "--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "cluster: local (namespace stream_detector)" in out and "example-pass" not in out
