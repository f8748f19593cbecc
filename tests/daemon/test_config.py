from pathlib import Path

import pytest

from stream_detector import cli
from stream_detector.daemon.config import ReconnectConfig, display_url, load_config, mask, parse_config
from stream_detector.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[cameras.door]
url = "rtsp://127.0.0.1:8554/door"
"""

FULL = """
[daemon]
log_format = "text"
max_batch_frames = 8

[http]
host = "127.0.0.1"
port = 0

[engine]
backend = "int8"
threads = 1
smoothing = { fake_enter = 0.8 }

[events]
directory = "out"
min_duration_s = 1.5
cooldown_s = 30

[webhook]
url = "http://127.0.0.1:9000/hook"
max_retries = 2
headers = { Authorization = "Bearer ${HOOK_TOKEN}" }

[reconnect]
stall_timeout_s = 4
backoff_max_s = 20

[cameras.door]
url = "rtsp://admin:${CAM_PASSWORD}@127.0.0.1:8554/door"
process_hz = 2

[cameras.yard]
url = "rtsp://127.0.0.1:8554/yard"
reconnect = { stall_timeout_s = 8 }

[cameras.attic]
url = "rtsp://127.0.0.1:8554/attic"
enabled = false
"""

ENVIRONMENT = {"CAM_PASSWORD": "s3cret-pass", "HOOK_TOKEN": "tok-12345"}


def test_minimal_config_takes_the_defaults():
    config = parse_config(MINIMAL, environment={})
    (camera,) = config.cameras
    assert camera.name == "door" and camera.url == "rtsp://127.0.0.1:8554/door"
    assert camera.reconnect == ReconnectConfig()
    assert config.webhook is None and config.http.port == 9108 and config.log_format == "json"


@pytest.mark.parametrize(
    ("engine_lines", "mirror_average", "fake_enter"),
    [
        ("", True, 0.856),  # the daemon's default, as every command's
        ("mirror_average = false\n", False, 0.885),  # the threshold follows the scoring...
        ("mirror_average = false\n[engine.smoothing]\nfake_enter = 0.95\n", False, 0.95),  # ...unless given
        ("[engine.smoothing]\nfake_enter = 0.7\n", True, 0.7),
    ],
)
def test_the_fake_threshold_follows_the_scoring_unless_given(
    engine_lines, mirror_average, fake_enter, tmp_path, capsys
):
    from stream_detector import cli
    from stream_detector.pipeline.smoothing import live_threshold

    text = "[engine]\n" + engine_lines + MINIMAL
    config = parse_config(text, environment={})
    assert config.engine.mirror_average is mirror_average
    assert config.engine.smoothing.fake_enter == pytest.approx(fake_enter)
    if "fake_enter" not in engine_lines:
        assert config.engine.smoothing.fake_enter == live_threshold(mirror_average)
    # daemon --check says which scoring and which threshold the daemon will run.
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    assert cli.main(["daemon", "--config", str(path), "--check"]) == 0
    shown = capsys.readouterr().out
    assert f"mirror averaging {'on' if mirror_average else 'off'}, FAKE at a smoothed {fake_enter:g}" in shown


def test_the_fake_threshold_follows_the_model_in_model_dir(tmp_path):
    import json

    from stream_detector.pipeline.smoothing import live_threshold

    # Another model's folder, with the threshold --choose-threshold recorded for mirror averaging only.
    (tmp_path / "training.json").write_text(json.dumps({"live_threshold": {"fake_enter": 0.793}}))
    engine = f'[engine]\nmodel_dir = "{tmp_path}"\n'
    assert parse_config(engine + MINIMAL, environment={}).engine.smoothing.fake_enter == 0.793
    # No threshold recorded for plain scores: the shipped model's; a given fake_enter still wins.
    plain = parse_config(engine + "mirror_average = false\n" + MINIMAL, environment={})
    assert plain.engine.smoothing.fake_enter == live_threshold(False)
    given = parse_config(engine + "[engine.smoothing]\nfake_enter = 0.9\n" + MINIMAL, environment={})
    assert given.engine.smoothing.fake_enter == 0.9
    (tmp_path / "training.json").write_text("{cut short")
    with pytest.raises(ConfigError, match="model_dir.*not a training record"):
        parse_config(engine + MINIMAL, environment={})


def test_full_config_reads_every_section_and_substitutes_secrets():
    config = parse_config(FULL, environment=ENVIRONMENT)
    door, yard, attic = config.cameras
    assert door.url == "rtsp://admin:s3cret-pass@127.0.0.1:8554/door"
    assert door.display_url == "rtsp://admin:***@127.0.0.1:8554/door"
    assert door.process_hz == 2 and door.reconnect.stall_timeout_s == 4
    # A camera's own reconnect table overrides the [reconnect] defaults key by key.
    assert yard.reconnect.stall_timeout_s == 8 and yard.reconnect.backoff_max_s == 20
    assert attic.enabled is False
    assert config.webhook is not None and config.webhook.headers == (("Authorization", "Bearer tok-12345"),)
    assert config.events.directory == Path("out") and config.events.min_duration_s == 1.5
    assert (
        config.http.port == 0
        and config.engine.backend == "int8"
        and config.engine.smoothing.fake_enter == 0.8
        and config.max_batch_frames == 8
    )
    assert set(config.secrets) == {"s3cret-pass", "tok-12345"}
    # The secret never shows in the dataclass repr that a careless log line might print.
    assert "s3cret" not in repr(config) and "tok-12345" not in repr(config)


def test_mask_hides_secrets_and_url_passwords_in_any_text():
    config = parse_config(FULL, environment=ENVIRONMENT)
    line = "open rtsp://admin:s3cret-pass@127.0.0.1:8554/door failed; token tok-12345; rtsp://u:pw@h/x"
    masked = config.mask(line)
    assert "s3cret-pass" not in masked and "tok-12345" not in masked and ":pw@" not in masked
    assert "rtsp://admin:***@127.0.0.1:8554/door" in masked and "rtsp://u:***@h/x" in masked
    assert mask("nothing secret here") == "nothing secret here"
    assert display_url("rtsp://user:p%40ss@10.0.0.1:554/s?x=1") == "rtsp://user:***@10.0.0.1:554/s?x=1"


def test_the_shipped_example_config_is_valid():
    config = load_config(REPO / "configs" / "daemon.toml", environment={"CAM_PASSWORD": "example-pass"})
    assert len(config.cameras) >= 2


CAMERA = '[cameras.door]\nurl = "rtsp://127.0.0.1:8554/door"\n'

# (what is wrong, the file, the start of the one-line error)
BAD_CONFIGS = [
    ("not TOML at all", "[cameras.door\nurl = 1", "not valid TOML"),
    ("unknown top-level table", CAMERA + "[camera]\nx = 1\n", "camera: unknown key"),
    ("unknown key in a camera", CAMERA + "uri = 'x'\n", "cameras.door.uri: unknown key"),
    ("typo in a section key", "[events]\ncooldown = 5\n" + CAMERA, "events.cooldown: unknown key"),
    ("no cameras", "[daemon]\nlog_format = 'json'\n", "cameras: at least one camera"),
    ("camera without url", "[cameras.door]\nenabled = true\n", "cameras.door.url: is required"),
    ("empty url", "[cameras.door]\nurl = ''\n", "cameras.door.url: must not be empty"),
    ("wrong url scheme", "[cameras.door]\nurl = 'ftp://h/x'\n", "cameras.door.url: must start with"),
    ("url without host", "[cameras.door]\nurl = 'rtsp:///x'\n", "cameras.door.url: has no host"),
    ("string for a number", CAMERA + "process_hz = 'fast'\n", "cameras.door.process_hz: must be a number"),
    (
        "boolean for a number",
        "[http]\nport = true\n" + CAMERA,
        "http.port: must be an integer, not a boolean",
    ),
    ("float for an integer", "[http]\nport = 80.5\n" + CAMERA, "http.port: must be an integer"),
    ("number out of range", "[http]\nport = 70000\n" + CAMERA, "http.port: must be >= 0 and <= 65535"),
    ("zero rate", CAMERA + "process_hz = 0\n", "cameras.door.process_hz: must be > 0"),
    ("negative timeout", "[reconnect]\nopen_timeout_s = -1\n" + CAMERA, "reconnect.open_timeout_s: must be"),
    ("nan", "[events]\ncooldown_s = nan\n" + CAMERA, "events.cooldown_s: must be a finite number"),
    (
        "cap below start",
        "[reconnect]\nbackoff_initial_s = 10\nbackoff_max_s = 1\n" + CAMERA,
        "reconnect.backoff_max_s",
    ),
    ("bad choice", "[daemon]\nlog_format = 'xml'\n" + CAMERA, "daemon.log_format: must be one of json, text"),
    (
        "missing env var",
        "[cameras.door]\nurl = 'rtsp://u:${NOPE_PASSWORD}@h/x'\n",
        "cameras.door.url: environment variable NOPE_PASSWORD is not set",
    ),
    (
        "bad env name",
        "[cameras.door]\nurl = 'rtsp://u:${1X}@h/x'\n",
        "cameras.door.url: ${1X} is not a valid",
    ),
    ("bad camera name", "[cameras.'front door']\nurl = 'rtsp://h/x'\n", "cameras.front door: a camera name"),
    ("camera not a table", "[cameras]\ndoor = 'rtsp://h/x'\n", "cameras.door: must be a table"),
    ("section not a table", "events = 3\n" + CAMERA, "events: must be a table"),
    ("all cameras disabled", CAMERA + "enabled = false\n", "cameras: every camera is disabled"),
    ("webhook not http", CAMERA + "[webhook]\nurl = 'rtsp://h/x'\n", "webhook.url: must start with http://"),
    (
        "bad header name",
        CAMERA + "[webhook]\nurl = 'http://h/x'\nheaders = { 'a b' = 'x' }\n",
        "webhook.headers.a b: is not a valid",
    ),
    (
        "smoothing thresholds out of order",
        "[engine.smoothing]\nfake_enter = 0.4\n" + CAMERA,
        "engine.smoothing: smoothing thresholds",
    ),
    ("unknown engine key", "[engine]\nbatch = 4\n" + CAMERA, "engine.batch: unknown key"),
    ("empty ops host", "[http]\nhost = ''\n" + CAMERA, "http.host: must not be empty"),
    (
        "empty detector range",
        "[engine]\ndetector_range = ''\n" + CAMERA,
        "engine.detector_range: must be one of",
    ),
    (
        "model folder missing",
        "[engine]\nmodel_dir = '/no/such/models'\n" + CAMERA,
        "engine.model_dir: no such folder",
    ),
    ("not a host", "[http]\nhost = 'not a host'\n" + CAMERA, "http.host: is not an IP address or host name"),
    (
        "unclosed variable",
        "[cameras.door]\nurl = 'rtsp://u:${UNCLOSED@h/x'\n",
        "cameras.door.url: '${' without a closing",
    ),
    (
        "names that differ only in case",
        CAMERA + "[cameras.Door]\nurl = 'rtsp://127.0.0.1:8554/other'\n",
        "cameras.Door: collides with cameras.door",
    ),
    (
        "unknown smoothing key",
        "[engine.smoothing]\nenter = 0.5\n" + CAMERA,
        "engine.smoothing.enter: unknown key (expected one of: fake_enter,",
    ),
    ("mqtt without host", CAMERA + "[mqtt]\nport = 1883\n", "mqtt.host: is required"),
    (
        "mqtt host not a host",
        CAMERA + "[mqtt]\nhost = 'a b'\n",
        "mqtt.host: is not an IP address or host name",
    ),
    ("mqtt bad port", CAMERA + "[mqtt]\nhost = 'broker'\nport = 0\n", "mqtt.port: must be >= 1 and <= 65535"),
    ("mqtt unknown key", CAMERA + "[mqtt]\nhost = 'broker'\nprefix = 'x'\n", "mqtt.prefix: unknown key"),
    (
        "mqtt missing secret",
        CAMERA + "[mqtt]\nhost = 'broker'\nusername = 'u'\npassword = '${MQTT_PASSWORD}'\n",
        "mqtt.password: environment variable MQTT_PASSWORD is not set",
    ),
    (
        "mqtt password alone",
        CAMERA + "[mqtt]\nhost = 'broker'\npassword = 'pw'\n",
        "mqtt.password: needs a username",
    ),
    (
        "mqtt wildcard prefix",
        CAMERA + "[mqtt]\nhost = 'broker'\ntopic_prefix = 'cams/#'\n",
        "mqtt.topic_prefix: must be a topic",
    ),
    (
        "unknown reconnect key",
        CAMERA + "reconnect = { stall = 3 }\n",
        "cameras.door.reconnect.stall: unknown key",
    ),
]


@pytest.mark.parametrize(("problem", "text", "expected"), BAD_CONFIGS, ids=[case[0] for case in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_the_key(problem, text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environment={})
    message = str(caught.value)
    assert expected in message, message
    assert "\n" not in message


def test_error_never_shows_the_secret_in_a_bad_url():
    text = "[cameras.door]\nurl = 'ftp://u:${PASS}@h/x'\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environment={"PASS": "hunter22"})
    assert "hunter22" not in str(caught.value) and "u:***@h" in str(caught.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(binary)


def test_the_example_config_shows_only_declared_keys_with_their_declared_defaults():
    import re
    import tomllib

    from stream_detector.daemon.config import schema

    keys = schema()
    table = None
    checked = 0
    for line in (REPO / "configs" / "daemon.toml").read_text().splitlines():
        heading = re.match(r"^#?\s*\[([A-Za-z0-9_.-]+)\]", line)
        if heading:
            table = heading.group(1)
            continue
        match = re.match(r"^#?\s*([a-z_]+)\s*=\s*(\S.*?)\s*(#.*)?$", line)
        if not match or table is None or table.startswith("cameras"):
            continue
        key, value = match.group(1), match.group(2)
        assert key in keys[table], f"configs/daemon.toml: [{table}] {key} is not a declared key"
        default = keys[table][key][0]
        # Keys read by hand (url, headers, the broker's host and login) have no declared default.
        if value == "..." or keys[table][key][1] is None or key == "model_dir":
            continue
        shown = tomllib.loads(f"v = {value}")["v"]
        assert shown == (str(default) if isinstance(default, Path) else default), (
            f"configs/daemon.toml shows [{table}] {key} = {value}, the declared default is {default!r}"
        )
        checked += 1
    assert checked > 25


def test_the_reference_table_in_the_docs_is_the_generated_one():
    from stream_detector.daemon.config import reference_table

    assert reference_table() in (REPO / "docs" / "daemon.md").read_text(), (
        "docs/daemon.md's key table is stale: paste stream_detector.daemon.config.reference_table()"
    )


def test_secrets_substituted_anywhere_in_a_url_are_masked_in_what_is_shown(capsys, tmp_path):
    from stream_detector import cli

    environment = {"CAM_TOKEN": "tok-in-path-123", "CAM_PW": "pw-in-query-456", "HOOK": "hook-frag-789"}
    text = """
[cameras.door]
url = "http://cam.local/${CAM_TOKEN}/video.mjpg?password=${CAM_PW}"
[webhook]
url = "https://alerts.example.com/hook#${HOOK}"
"""
    config = parse_config(text, environment=environment)
    shown = config.cameras[0].display_url + " " + config.webhook.display_url
    assert all(secret not in shown for secret in environment.values()), shown
    assert "cam.local" in shown and "***" in shown
    # daemon --check prints the cameras: the journal of a systemd ExecStartPre must not get the secrets.
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    import os

    for name, value in environment.items():
        os.environ[name] = value
    try:
        assert cli.main(["daemon", "--config", str(path), "--check"]) == 0
    finally:
        for name in environment:
            del os.environ[name]
    output = capsys.readouterr()
    assert all(secret not in output.out + output.err for secret in environment.values())
    assert "door: http://cam.local/***/video.mjpg?password=***" in output.out


def test_an_empty_model_dir_means_the_default_search_path():
    config = parse_config("[engine]\nmodel_dir = ''\n[cameras.door]\nurl = 'rtsp://h/x'\n", environment={})
    assert config.engine.model_dir is None


def test_an_events_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "plain-file").write_text("not a folder")
    text = f"[events]\ndirectory = '{tmp_path / 'plain-file' / 'events'}'\n" + CAMERA
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environment={})
    assert str(caught.value).startswith("events.directory: cannot create") and "is a file" in str(
        caught.value
    )


def test_the_same_stream_twice_is_a_warning_that_check_shows(tmp_path, capsys):
    path = tmp_path / "daemon.toml"
    path.write_text(CAMERA + "[cameras.porch]\nurl = 'rtsp://127.0.0.1:8554/door'\n")
    config = parse_config(path.read_text(), environment={})
    assert config.warnings == (
        "cameras.porch: the same URL as cameras.door (rtsp://127.0.0.1:8554/door): the stream is opened and judged twice",
    )
    assert cli.main(["daemon", "--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("warning: cameras.porch: the same URL as cameras.door")
