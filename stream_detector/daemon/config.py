"""The daemon's TOML configuration -> frozen dataclasses, validated once at start.

Every problem is one ``ConfigError`` line that starts with the key path (``cameras.door.url: ...``):
unknown keys are refused (a typo must not silently fall back to a default), numbers are bounded, and
``${NAME}`` in a string is replaced by the environment variable NAME, so credentials stay out of the
file. Substituted values and URL passwords are collected as secrets for ``mask`` to hide in logs and
endpoints.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stream_detector.daemon.events import EventPolicy, WebhookPolicy
from stream_detector.daemon.mqtt import MqttConfig, MqttSettings
from stream_detector.errors import ConfigError
from stream_detector.pipeline.engine import EngineSettings
from stream_detector.pipeline.smoothing import SmootherSettings, recorded_live_threshold
from stream_detector.pipeline.tracking import TrackerSettings
from stream_detector.settings import Setting, declared_settings, setting

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

    open_timeout_s: float = setting(10.0, "longest wait for a stream to open", minimum=0.1, maximum=300.0)
    read_timeout_s: float = setting(5.0, "longest wait for one read", minimum=0.1, maximum=300.0)
    stall_timeout_s: float = setting(
        10.0, "a connected stream with no frame this long is reopened", minimum=0.5, maximum=3600.0
    )
    backoff_initial_s: float = setting(
        1.0, "wait before the first reconnection", minimum=0.01, maximum=3600.0
    )
    backoff_max_s: float = setting(30.0, "longest wait between reconnections", minimum=0.01, maximum=86400.0)
    backoff_multiplier: float = setting(
        2.0, "each failed attempt multiplies the wait by this", minimum=1.0, maximum=10.0
    )
    jitter: float = setting(0.25, "random share added to or taken from each wait", minimum=0.0, maximum=1.0)


@dataclass(frozen=True, kw_only=True)
class CameraConfig:
    name: str
    url: str = field(repr=False)  # with secrets substituted: never log it, log display_url
    display_url: str
    enabled: bool = setting(True, "false keeps the camera in the file but unwatched")
    # Frames analysed per second (detection, tracking, due faces classified); newer frames replace older
    # ones in between, so a camera's cost is set here and not by its frame rate.
    process_hz: float = setting(
        5.0,
        "frames analysed per second; newer frames replace older ones",
        minimum=0.0,
        maximum=60.0,
        exclusive_minimum=True,
    )
    transport: str = setting(
        "tcp", "RTSP over tcp (one connection, no lost packets) or udp", choices=("tcp", "udp")
    )
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)


@dataclass(frozen=True)
class EventsConfig(EventPolicy):
    """When a FAKE verdict becomes an incident (EventPolicy), and where incidents are written."""

    directory: Path = setting(Path("daemon-output"), "where events.jsonl and snapshots/ are written")
    snapshots: bool = setting(True, "save a JPEG of the frame when an incident starts")
    snapshot_quality: int = setting(85, "JPEG quality of the snapshots", minimum=1, maximum=100)
    camera_offline_after_s: float = setting(
        60.0, "one alert per camera outage this long; 0 = no camera alerts", minimum=0.0, maximum=86400.0
    )

    @property
    def jsonl_path(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def snapshot_directory(self) -> Path:
        return self.directory / "snapshots"


@dataclass(frozen=True, kw_only=True)
class WebhookConfig(WebhookPolicy):
    url: str = field(repr=False)
    display_url: str


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(True, "serve /healthz and /metrics")
    host: str = setting("127.0.0.1", "address of the ops endpoints (this machine only by default)")
    port: int = setting(
        9108, "port of the ops endpoints; 0 picks a free one (logged)", minimum=0, maximum=65535
    )


@dataclass(frozen=True)
class ClusterConfig:
    """The [cluster] table: the same daemon on a Ray cluster (stream_detector/cluster)."""

    address: str = setting(
        "local", 'HOST:PORT of a running Ray cluster\'s head (GCS), or "local" to start one in this process'
    )
    namespace: str = setting("stream_detector", "Ray namespace of the daemon's actors")
    camera_cpus: float = setting(
        0.5,
        "logical CPUs each camera actor asks for (fractional packs several per core)",
        minimum=0.0,
        maximum=64.0,
    )
    camera_max_restarts: int = setting(
        -1, "times Ray restarts a dead camera actor (-1: always)", minimum=-1, maximum=1_000_000
    )
    classifier_replicas: int = setting(1, "Serve replicas of the classifier", minimum=1, maximum=256)
    classifier_cpus: float = setting(1.0, "logical CPUs per classifier replica", minimum=0.0, maximum=64.0)
    classifier_gpus: float = setting(0.0, "GPUs per classifier replica (0: CPU)", minimum=0.0, maximum=16.0)
    classifier_resource: str | None = setting(
        None, "a custom Ray node resource each replica needs (pins the classifier to nodes that have it)"
    )
    max_batch_frames: int = setting(
        16, "camera frames (each with its face crops) one Serve batch joins", minimum=1, maximum=1024
    )
    batch_wait_s: float = setting(0.005, "how long a Serve batch waits to fill up", minimum=0.0, maximum=1.0)
    classify_timeout_s: float = setting(
        2.0,
        "a frame's crops not classified within this (replica gone) are skipped and counted as a gap",
        minimum=0.05,
        maximum=60.0,
    )


@dataclass(frozen=True)
class DaemonSection:
    """The [daemon] table."""

    log_format: str = setting("json", "json (one object a line) or text", choices=("json", "text"))
    max_batch_frames: int = setting(
        16, "frames of due cameras classified in one batch", minimum=1, maximum=256
    )


@dataclass(frozen=True)
class DaemonConfig:
    cameras: tuple[CameraConfig, ...]
    events: EventsConfig = field(default_factory=EventsConfig)
    webhook: WebhookConfig | None = None
    http: HttpConfig = field(default_factory=HttpConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    log_format: str = DaemonSection.log_format
    max_batch_frames: int = DaemonSection.max_batch_frames
    mqtt: MqttConfig | None = None
    cluster: ClusterConfig | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    source_path: Path | None = None
    # Things that are allowed but probably not meant (the same stream twice): shown by --check, logged.
    warnings: tuple[str, ...] = ()

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

        expanded = ENV_PATTERN.sub(substitute, value)
        # What is left of "${" had no closing brace: kept literally it would be a wrong URL or password.
        leftover = ENV_PATTERN.sub("", value)
        if "${" in leftover:
            raise ConfigError(f"{key_path}: '${{' without a closing '}}' (write ${{NAME}} for a variable)")
        return expanded


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _cannot_create(directory: Path) -> str | None:
    """Why ``directory`` could not be created (or written) by this user; None when it can."""
    probe = directory if directory.is_absolute() else Path.cwd() / directory
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


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
    config = ReconnectConfig(**read_declared(table, ReconnectConfig, defaults))
    if config.backoff_max_s < config.backoff_initial_s:
        raise table.error(
            "backoff_max_s",
            f"must be >= backoff_initial_s ({config.backoff_initial_s:g}), not {config.backoff_max_s:g}",
        )
    table.finish()
    return config


def read_declared(table: _Table, settings_type: type, defaults: Any | None = None) -> dict[str, Any]:
    """Every declared setting of a dataclass (stream_detector/settings.py) from its TOML table: typed,
    bounded, with the declaration's default (or ``defaults``' value) where the key is absent."""
    values: dict[str, Any] = {}
    for item, declaration in declared_settings(settings_type):
        default = getattr(defaults, item.name) if defaults is not None else item.default
        kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
        if kind == "bool":
            values[item.name] = table.boolean(item.name, default)
        elif kind == "int":
            values[item.name] = table.integer(
                item.name, default, int(declaration.minimum), int(declaration.maximum)
            )
        elif kind == "float":
            values[item.name] = table.number(
                item.name,
                default,
                declaration.minimum,
                declaration.maximum,
                exclusive_minimum=declaration.exclusive_minimum,
            )
        elif kind == "Path":
            text = table.string(item.name, None)
            values[item.name] = Path(text) if text else default
        else:  # str, or str | None
            text = table.string(item.name, default, choices=declaration.choices)
            # An optional setting given empty means unset; any other string stays as written, so the
            # caller's own checks see it (an empty [http] host is an error, not the default).
            values[item.name] = (text or None) if default is None else text
    return values


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
        # Secrets substituted anywhere in the URL (path, query, fragment), not only its password.
        display_url=mask(display_url(url), loader.secrets),
        reconnect=_reconnect(table.table("reconnect"), reconnect_defaults),
        **read_declared(table, CameraConfig),
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
        display_url=mask(display_url(url), loader.secrets),
        headers=tuple(headers),
        **read_declared(table, WebhookPolicy),
    )
    table.finish()
    return webhook


def _mqtt(table: _Table, loader: _Loader) -> MqttConfig | None:
    if not table.data:
        table.finish()
        return None
    host = table.string("host", None, required=True) or ""
    if not _is_host(host):
        raise table.error("host", f"is not an IP address or host name: {host!r}")
    username = table.string("username", None) or None
    password = table.string("password", None) or None
    if password:
        loader.secrets.append(password)  # masked wherever it could appear, written literally or not
    if password and not username:
        raise table.error("password", "needs a username")
    values = read_declared(table, MqttSettings)
    if values["ca_file"] is not None and not Path(values["ca_file"]).is_file():
        raise table.error("ca_file", f"no such file: {values['ca_file']}")
    prefix = values["topic_prefix"]
    if not prefix or any(character in prefix for character in "#+ ") or prefix.startswith("/"):
        raise table.error("topic_prefix", f"must be a topic without wildcards or spaces, not {prefix!r}")
    table.finish()
    return MqttConfig(host=host, username=username, password=password, **values)


def _cluster(table: _Table) -> ClusterConfig | None:
    if not table.data:
        table.finish()
        return None
    config = ClusterConfig(**read_declared(table, ClusterConfig))
    table.finish()
    if config.address != "local":
        host, _, port = config.address.rpartition(":")
        if not host or not _is_host(host.strip("[]")):
            raise table.error("address", f'must be "HOST:PORT" or "local", not {config.address!r}')
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise table.error("address", f"port must be 1-65535, not {port!r}")
    if not config.namespace.strip():
        raise table.error("namespace", "must not be empty")
    return config


def daemon_engine_defaults(
    mirror_average: bool | None = None, model_dir: str | None = None
) -> EngineSettings:
    """The engine's own defaults, except the classification rate (the daemon's cost per camera is set
    by process_hz, and classifying every processed frame at that rate is what it is sized for), and the
    FAKE threshold recorded for the scoring in use (the engine's default scoring unless the config says)
    and for the model: the one recorded beside a configured model_dir, else the shipped model's.
    (Mirror averaging fits 8 cameras at 5 Hz on 2 cores with the full-integer int8 file:
    docs/benchmarks.md.)"""
    if mirror_average is None:
        mirror_average = EngineSettings().mirror_average
    return replace(
        EngineSettings(),
        classify_hz=DAEMON_CLASSIFY_HZ,
        mirror_average=mirror_average,
        smoothing=SmootherSettings(fake_enter=recorded_live_threshold(model_dir, mirror_average)[0]),
    )


def _engine(table: _Table) -> EngineSettings:
    engine_values = read_declared(table, EngineSettings, daemon_engine_defaults())
    try:
        defaults = daemon_engine_defaults(engine_values["mirror_average"], engine_values["model_dir"])
    except ValueError as error:
        raise table.error("model_dir", str(error)) from None
    smoothing_table = table.table("smoothing")
    try:
        smoothing = SmootherSettings(**read_declared(smoothing_table, SmootherSettings, defaults.smoothing))
    except ValueError as error:
        raise ConfigError(f"{smoothing_table.path}: {error}") from None
    smoothing_table.finish()
    tracking_table = table.table("tracking")
    tracking = TrackerSettings(**read_declared(tracking_table, TrackerSettings))
    tracking_table.finish()
    settings = EngineSettings(tracking=tracking, smoothing=smoothing, **engine_values)
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
    section = DaemonSection(**read_declared(daemon, DaemonSection))
    daemon.finish()

    http_table = root.table("http")
    http = HttpConfig(**read_declared(http_table, HttpConfig))
    if not http.host:
        raise http_table.error("host", "must not be empty")
    if not _is_host(http.host):
        raise http_table.error("host", f"is not an IP address or host name: {http.host!r}")
    http_table.finish()

    engine_table = root.table("engine")
    engine = _engine(engine_table)
    if engine.model_dir is not None and not Path(engine.model_dir).is_dir():
        raise engine_table.error("model_dir", f"no such folder: {engine.model_dir}")

    events_table = root.table("events")
    events = EventsConfig(**read_declared(events_table, EventsConfig))
    problem = _cannot_create(Path(events.directory))
    if problem:
        raise events_table.error("directory", f"cannot create {events.directory}: {problem}")
    events_table.finish()

    webhook = _webhook(root.table("webhook"), loader)
    mqtt = _mqtt(root.table("mqtt"), loader)
    cluster = _cluster(root.table("cluster"))

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
    by_id: dict[str, str] = {}
    for camera in cameras:
        # Names become file names and metric labels: two that differ only in case would collide.
        other = by_id.setdefault(camera.name.lower(), camera.name)
        if other != camera.name:
            raise ConfigError(
                f"cameras.{camera.name}: collides with cameras.{other} (names must differ in more than letter "
                "case: they name snapshot files and metric labels)"
            )
    warnings = []
    by_url: dict[str, str] = {}
    for camera in cameras:
        if not camera.enabled:
            continue
        first = by_url.setdefault(camera.url, camera.name)
        if first != camera.name:
            warnings.append(
                f"cameras.{camera.name}: the same URL as cameras.{first} ({camera.display_url}): "
                "the stream is opened and judged twice"
            )
    if not any(camera.enabled for camera in cameras):
        raise ConfigError("cameras: every camera is disabled (enabled = false); nothing to watch")

    root.finish()
    secrets = tuple(sorted({secret for secret in loader.secrets if len(secret) >= MIN_SECRET_LENGTH}))
    return DaemonConfig(
        cameras=tuple(cameras),
        events=events,
        webhook=webhook,
        mqtt=mqtt,
        cluster=cluster,
        http=http,
        log_format=section.log_format,
        max_batch_frames=section.max_batch_frames,
        engine=engine,
        secrets=secrets,
        source_path=source_path,
        warnings=tuple(warnings),
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


def schema() -> dict[str, dict[str, tuple[Any, Setting | None]]]:
    """Every key the daemon's TOML accepts, per table: (default, declaration). Keys read by hand (a
    camera's url, the webhook's url and headers) have no declaration."""
    engine_defaults = daemon_engine_defaults()

    def declared(settings_type: type, defaults: Any | None = None) -> dict[str, tuple[Any, Setting | None]]:
        return {
            item.name: (getattr(defaults, item.name) if defaults is not None else item.default, declaration)
            for item, declaration in declared_settings(settings_type)
        }

    return {
        "daemon": declared(DaemonSection),
        "http": declared(HttpConfig),
        "engine": declared(EngineSettings, engine_defaults),
        "engine.smoothing": declared(SmootherSettings, engine_defaults.smoothing),
        "engine.tracking": declared(TrackerSettings),
        "events": declared(EventsConfig),
        "webhook": {"url": (None, None), **declared(WebhookPolicy), "headers": ({}, None)},
        "mqtt": {
            "host": (None, None),
            "username": (None, None),
            "password": (None, None),
            **declared(MqttSettings),
        },
        "cluster": declared(ClusterConfig),
        "reconnect": declared(ReconnectConfig),
        "cameras.NAME": {"url": (None, None), **declared(CameraConfig)},
        "cameras.NAME.reconnect": {key: ("[reconnect]'s", None) for key in declared(ReconnectConfig)},
    }


def reference_table() -> str:
    """The Markdown reference of every key (docs/daemon.md holds it; a test keeps the two equal)."""
    hand_written = {
        ("webhook", "url"): "required: http(s) URL each event is POSTed to (`${ENV}` allowed, masked)",
        ("webhook", "headers"): "table of extra HTTP headers (`${ENV}` allowed, masked)",
        ("mqtt", "host"): "required: the broker's address; events, availability and state go there",
        ("mqtt", "username"): "broker user name",
        ("mqtt", "password"): "broker password (`${ENV}` allowed; masked everywhere)",
        ("cameras.NAME", "url"): "required: rtsp(s)://, rtmp:// or http(s):// URL (`${ENV}` allowed, masked)",
    }
    rows = ["| table | key | default | allowed | meaning |", "|---|---|---|---|---|"]
    for table, keys in schema().items():
        for key, (default, declaration) in keys.items():
            if declaration is None:
                meaning = hand_written.get((table, key), "as in [reconnect]")
                allowed = ""
            else:
                meaning = declaration.help
                if declaration.choices:
                    allowed = " / ".join(declaration.choices)
                elif declaration.minimum is not None:
                    low = ">" if declaration.exclusive_minimum else ">="
                    allowed = f"{low} {declaration.minimum:g}, <= {declaration.maximum:g}"
                else:
                    allowed = "true / false" if isinstance(default, bool) else ""
            shown = (
                ""
                if default is None
                else (str(default).lower() if isinstance(default, bool) else str(default))
            )
            rows.append(f"| `[{table}]` | `{key}` | {shown} | {allowed} | {meaning} |")
    return "\n".join(rows) + "\n"
