"""The daemon's TOML configuration -> frozen dataclasses, validated once at start.

Every problem is one ``ConfigError`` line that starts with the key path (``cameras.door.url: ...``):
unknown keys are refused (a typo must not silently fall back to a default), numbers are bounded, and
``${NAME}`` in a string is replaced by the environment variable NAME, so credentials stay out of the
file. Substituted values and URL passwords are collected as secrets for ``mask`` to hide in logs and
endpoints.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stream_detector.errors import ConfigError
from stream_detector.pipeline.engine import EngineSettings
from stream_detector.pipeline.smoothing import SmootherSettings
from stream_detector.pipeline.tracking import TrackerSettings

ENV_PATTERN = re.compile(r"\$\{([^}]*)\}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
CAMERA_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
WEBHOOK_SCHEMES = ("http", "https")
MASK = "***"
DAEMON_CLASSIFY_HZ = 5.0
# Hiding very short values would mangle ordinary words in log lines; such secrets are not worth the name.
MIN_SECRET_LENGTH = 3


@dataclass(frozen=True)
class ReconnectConfig:
    """How a camera is (re)opened. Timeouts bound each blocking call; the backoff spaces attempts."""

    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stall_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.25


@dataclass(frozen=True)
class CameraConfig:
    name: str
    url: str = field(repr=False)  # with secrets substituted: never log it, log display_url
    display_url: str
    enabled: bool = True
    # Frames analysed per second (detection, tracking, due faces classified); newer frames replace older
    # ones in between, so a camera's cost is set here and not by its frame rate.
    process_hz: float = 5.0
    transport: str = "tcp"  # RTSP over TCP (one connection, no lost packets) or "udp"
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)


@dataclass(frozen=True)
class EventsConfig:
    """When a FAKE verdict becomes an incident, and where incidents are written."""

    directory: Path = Path("daemon-output")
    min_duration_s: float = 2.0
    end_after_s: float = 3.0
    cooldown_s: float = 60.0
    update_interval_s: float = 10.0
    snapshots: bool = True
    snapshot_quality: int = 85
    camera_offline_after_s: float = 60.0  # one alert per outage this long; 0 = no camera alerts

    @property
    def jsonl_path(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def snapshot_directory(self) -> Path:
        return self.directory / "snapshots"


@dataclass(frozen=True)
class WebhookConfig:
    url: str = field(repr=False)
    display_url: str
    timeout_s: float = 5.0
    max_retries: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    queue_size: int = 1000
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108  # 0 picks a free port (tests); the bound port is logged


@dataclass(frozen=True)
class DaemonConfig:
    cameras: tuple[CameraConfig, ...]
    events: EventsConfig = field(default_factory=EventsConfig)
    webhook: WebhookConfig | None = None
    http: HttpConfig = field(default_factory=HttpConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    log_format: str = "json"
    max_batch_frames: int = 16
    secrets: tuple[str, ...] = field(default=(), repr=False)
    source_path: Path | None = None

    def mask(self, text: str) -> str:
        return mask(text, self.secrets)


def mask(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` with every secret value and every URL password replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(lambda match: f"{match.group(1)}:{MASK}@", text)


# scheme://user:password@ -> scheme://user:***@ ; applied to whole log lines, so it must not cross spaces.
_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):[^\s/@]*@")


def display_url(url: str) -> str:
    """The URL as it may be shown: the password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Table:
    """Reads one TOML table: typed getters with bounds, and a final check that no key was left unread."""

    def __init__(self, data: dict[str, Any], path: str, loader: _Loader) -> None:
        self.data = data
        self.path = path
        self.loader = loader
        self.read: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.key_path(key)}: {message}")

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def number(
        self,
        key: str,
        default: float,
        minimum: float,
        maximum: float,
        integer: bool = False,
        exclusive_minimum: bool = False,
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        # TOML booleans are ints in Python; "true" as a timeout is a mistake, not 1 second.
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if integer else "a number"
            raise self.error(key, f"must be {kind}, not {_describe(value)}")
        if integer and not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value!r}")
        too_small = value <= minimum if exclusive_minimum else value < minimum
        if too_small or value > maximum:
            low = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
            raise self.error(key, f"must be {low} and <= {maximum:g}, not {value!r}")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        return int(self.number(key, default, minimum, maximum, integer=True))

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_describe(value)}")
        return value

    def string(
        self, key: str, default: str | None, choices: tuple[str, ...] | None = None, required: bool = False
    ) -> str | None:
        value = self._get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_describe(value)}")
        value = self.loader.expand(value, self.key_path(key))
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def table(self, key: str) -> _Table:
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table ([{self.key_path(key)}]), not {_describe(value)}")
        return _Table(value, self.key_path(key), self.loader)

    def raw(self, key: str) -> Any:
        return self._get(key)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            expected = ", ".join(sorted(self.read)) or "none"
            raise self.error(unknown[0], f"unknown key (expected one of: {expected})")


class _Loader:
    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.secrets: list[str] = []

    def expand(self, value: str, key_path: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if not ENV_NAME.fullmatch(name):
                raise ConfigError(f"{key_path}: ${{{name}}} is not a valid environment variable name")
            if name not in self.environment:
                raise ConfigError(f"{key_path}: environment variable {name} is not set")
            secret = self.environment[name]
            self.secrets.append(secret)
            return secret

        return ENV_PATTERN.sub(substitute, value)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    return f"{type(value).__name__} {value!r}"


def _reconnect(table: _Table, defaults: ReconnectConfig) -> ReconnectConfig:
    config = ReconnectConfig(
        open_timeout_s=table.number("open_timeout_s", defaults.open_timeout_s, 0.1, 300.0),
        read_timeout_s=table.number("read_timeout_s", defaults.read_timeout_s, 0.1, 300.0),
        stall_timeout_s=table.number("stall_timeout_s", defaults.stall_timeout_s, 0.5, 3600.0),
        backoff_initial_s=table.number("backoff_initial_s", defaults.backoff_initial_s, 0.01, 3600.0),
        backoff_max_s=table.number("backoff_max_s", defaults.backoff_max_s, 0.01, 86400.0),
        backoff_multiplier=table.number("backoff_multiplier", defaults.backoff_multiplier, 1.0, 10.0),
        jitter=table.number("jitter", defaults.jitter, 0.0, 1.0),
    )
    if config.backoff_max_s < config.backoff_initial_s:
        raise table.error(
            "backoff_max_s",
            f"must be >= backoff_initial_s ({config.backoff_initial_s:g}), not {config.backoff_max_s:g}",
        )
    table.finish()
    return config


def _url(table: _Table, key: str, schemes: tuple[str, ...], loader: _Loader) -> str:
    url = table.string(key, None, required=True)
    assert url is not None
    if not url.strip():
        raise table.error(key, "must not be empty")
    if any(character.isspace() for character in url):
        raise table.error(key, "must not contain spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise table.error(key, f"is not a valid URL ({error})") from None
    if parts.scheme.lower() not in schemes:
        raise table.error(
            key, f"must start with {' or '.join(s + '://' for s in schemes)}, not {display_url(url)!r}"
        )
    if not parts.hostname:
        raise table.error(key, f"has no host: {display_url(url)!r}")
    if port is not None and not 0 < port < 65536:
        raise table.error(key, f"port must be 1-65535, not {port}")
    if parts.password:
        loader.secrets.append(parts.password)
    return url


def _camera(name: str, table: _Table, reconnect_defaults: ReconnectConfig, loader: _Loader) -> CameraConfig:
    url = _url(table, "url", CAMERA_SCHEMES, loader)
    camera = CameraConfig(
        name=name,
        url=url,
        display_url=display_url(url),
        enabled=table.boolean("enabled", True),
        process_hz=table.number("process_hz", 5.0, 0.0, 60.0, exclusive_minimum=True),
        transport=table.string("transport", "tcp", choices=("tcp", "udp")) or "tcp",
        reconnect=_reconnect(table.table("reconnect"), reconnect_defaults),
    )
    table.finish()
    return camera


def _webhook(table: _Table, loader: _Loader) -> WebhookConfig | None:
    if not table.data:
        table.finish()
        return None
    url = _url(table, "url", WEBHOOK_SCHEMES, loader)
    headers_table = table.table("headers")
    headers = []
    for header in headers_table.data:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            raise headers_table.error(header, "is not a valid HTTP header name")
        text = headers_table.string(header, None)
        if text is None or "\n" in text or "\r" in text:
            raise headers_table.error(header, "must be a one-line string")
        headers.append((header, text))
    headers_table.finish()
    webhook = WebhookConfig(
        url=url,
        display_url=display_url(url),
        timeout_s=table.number("timeout_s", 5.0, 0.1, 120.0),
        max_retries=table.integer("max_retries", 5, 0, 100),
        backoff_initial_s=table.number("backoff_initial_s", 1.0, 0.01, 3600.0),
        backoff_max_s=table.number("backoff_max_s", 60.0, 0.01, 86400.0),
        queue_size=table.integer("queue_size", 1000, 1, 1_000_000),
        headers=tuple(headers),
    )
    table.finish()
    return webhook


def _settings_fields(table: _Table, settings_type: type, bounds: dict[str, tuple[float, float]]) -> dict:
    """The numeric fields of a settings dataclass present in ``table`` (its defaults stay its own)."""
    values = {}
    for item in fields(settings_type):
        if table.has(item.name):
            minimum, maximum = bounds.get(item.name, (0.0, 1e6))
            values[item.name] = table.number(item.name, 0.0, minimum, maximum)
    table.finish()
    return values


def _engine(table: _Table) -> EngineSettings:
    model_dir = table.string("model_dir", None)
    smoothing_table = table.table("smoothing")
    smoothing_values = _settings_fields(
        smoothing_table,
        SmootherSettings,
        {name: (0.0, 1.0) for name in ("fake_enter", "fake_exit", "real_enter", "real_exit")}
        | {"half_life_ms": (1.0, 600000.0), "min_evidence": (0.0, 1000.0)},
    )
    try:
        smoothing = SmootherSettings(**smoothing_values)
    except ValueError as error:
        raise ConfigError(f"{smoothing_table.path}: {error}") from None
    tracking = TrackerSettings(**_settings_fields(table.table("tracking"), TrackerSettings, {}))
    # Defaults are the engine's own, except the classification rate: the daemon's cost per camera is
    # set by process_hz, and classifying every processed frame at that rate is what it is sized for.
    defaults = EngineSettings()
    settings = EngineSettings(
        detector_range=table.string("detector_range", defaults.detector_range, choices=("full", "short"))
        or defaults.detector_range,
        min_detection_confidence=table.number(
            "min_detection_confidence", defaults.min_detection_confidence, 0.0, 1.0
        ),
        min_face_size=table.integer("min_face_size", defaults.min_face_size, 1, 4096),
        min_verdict_face_size=table.integer("min_verdict_face_size", defaults.min_verdict_face_size, 1, 4096),
        min_sharpness=table.number("min_sharpness", defaults.min_sharpness, 0.0, 1000.0),
        classify_hz=table.number("classify_hz", DAEMON_CLASSIFY_HZ, 0.0, 60.0),
        backend=table.string("backend", defaults.backend, choices=("auto", "int8", "fp32", "keras"))
        or defaults.backend,
        model_dir=model_dir or None,
        threads=table.integer("threads", defaults.threads, 1, 64),
        tracking=tracking,
        smoothing=smoothing,
    )
    table.finish()
    return settings


def parse_config(
    text: str, environment: dict[str, str] | None = None, source_path: Path | None = None
) -> DaemonConfig:
    """A validated DaemonConfig from TOML text, or a one-line ConfigError naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        where = f"{source_path}: " if source_path else ""
        raise ConfigError(f"{where}not valid TOML: {error}") from None
    loader = _Loader(dict(os.environ) if environment is None else environment)
    root = _Table(data, "", loader)

    daemon = root.table("daemon")
    log_format = daemon.string("log_format", "json", choices=("json", "text"))
    max_batch_frames = daemon.integer("max_batch_frames", 16, 1, 256)
    daemon.finish()

    http_table = root.table("http")
    http = HttpConfig(
        enabled=http_table.boolean("enabled", True),
        host=http_table.string("host", "127.0.0.1") or "",
        port=http_table.integer("port", 9108, 0, 65535),
    )
    if not http.host:
        raise http_table.error("host", "must not be empty")
    http_table.finish()

    engine = _engine(root.table("engine"))

    events_table = root.table("events")
    events = EventsConfig(
        directory=Path(events_table.string("directory", "daemon-output") or "daemon-output"),
        min_duration_s=events_table.number("min_duration_s", 2.0, 0.0, 3600.0),
        end_after_s=events_table.number("end_after_s", 3.0, 0.0, 3600.0),
        cooldown_s=events_table.number("cooldown_s", 60.0, 0.0, 86400.0),
        update_interval_s=events_table.number(
            "update_interval_s", 10.0, 0.0, 86400.0, exclusive_minimum=True
        ),
        snapshots=events_table.boolean("snapshots", True),
        snapshot_quality=events_table.integer("snapshot_quality", 85, 1, 100),
        camera_offline_after_s=events_table.number("camera_offline_after_s", 60.0, 0.0, 86400.0),
    )
    events_table.finish()

    webhook = _webhook(root.table("webhook"), loader)

    reconnect_defaults = _reconnect(root.table("reconnect"), ReconnectConfig())

    cameras_table = root.table("cameras")
    if not cameras_table.data:
        raise ConfigError("cameras: at least one camera is required ([cameras.NAME] with url = ...)")
    cameras = []
    for name in cameras_table.data:
        if not CAMERA_NAME.fullmatch(name):
            raise ConfigError(
                f"cameras.{name}: a camera name is 1-64 letters, digits, '_' or '-' (starting with a letter or digit)"
            )
        cameras.append(_camera(name, cameras_table.table(name), reconnect_defaults, loader))
    cameras_table.finish()
    if not any(camera.enabled for camera in cameras):
        raise ConfigError("cameras: every camera is disabled (enabled = false); nothing to watch")

    root.finish()
    secrets = tuple(sorted({secret for secret in loader.secrets if len(secret) >= MIN_SECRET_LENGTH}))
    return DaemonConfig(
        cameras=tuple(cameras),
        events=events,
        webhook=webhook,
        http=http,
        log_format=log_format or "json",
        max_batch_frames=max_batch_frames,
        engine=engine,
        secrets=secrets,
        source_path=source_path,
    )


def load_config(path: str | Path, environment: dict[str, str] | None = None) -> DaemonConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    return parse_config(text, environment, source_path=path)
