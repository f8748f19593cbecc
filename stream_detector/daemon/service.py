"""``stream-detector daemon --config configs/daemon.toml``: watch RTSP cameras, raise incidents, report health.

Threads, and what each owns:
- one supervisor per camera (reconnect.py), over one capture thread (sources.LatestFrameReader): keeps
  the newest frame in a one-frame slot, reconnects with backoff, never raises;
- the detection loop (the main thread): takes each camera's newest frame when that camera is due
  (``process_hz``), runs the frames of all due cameras through ONE ``Engine.process_batch`` call (one
  classifier batch across cameras), turns verdicts into events, writes them; lag cannot grow because
  only the newest frame is ever taken;
- the webhook sender (events.py) and the ops HTTP server (ops.py), so neither can slow detection.

Stop (SIGTERM / SIGINT, or ``stop`` set): the loop finishes its batch; open events are closed and
written; cameras stop (joined together, within ``stop_bound_s``: the longest camera open/read timeout
plus a second, since a read blocked in FFmpeg cannot be cut short); the webhook gets a short drain; the
HTTP server last.

Reload (SIGHUP, ``systemctl reload``, or ``reload`` set): the config file is read and validated again;
a bad file is one logged line and the running config stays. Cameras added start, cameras removed or
disabled stop (their open events end with ``"reason": "removed"``), cameras whose settings changed
restart (``"reason": "reconfigured"``); the others are not touched. Changes outside ``[[cameras]]``
are logged as needing a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from stream_detector.daemon.cameras import ReconnectingCamera, StreamSource
from stream_detector.daemon.config import CameraConfig, DaemonConfig
from stream_detector.daemon.events import (
    EventSinks,
    EventTracker,
    JsonlEventLog,
    OutageMonitor,
    SnapshotWriter,
    WebhookSender,
)
from stream_detector.daemon.ops import (
    CameraHealth,
    DaemonMetrics,
    OpsServer,
    configure_logging,
    health_document,
)
from stream_detector.errors import ConfigError
from stream_detector.pipeline.engine import Engine, FrameResult
from stream_detector.pipeline.types import Event, FrameSource, Stats

log = logging.getLogger("stream_detector.daemon")

# /healthz answers 503 when the detection loop has not turned for this long (a wedged engine).
LOOP_STUCK_AFTER_S = 30.0
# A camera without processed frames this long has its event tracker advanced by the clock alone, so
# an incident on a camera that went dark still ends.
IDLE_TICK_S = 1.0
# Shutdown budget for the camera threads, all joined together.
CAMERA_STOP_S = 3.0
WEBHOOK_DRAIN_S = 2.0
# How often the cameras' connection states are looked at for outage alerts.
OUTAGE_CHECK_S = 1.0


# A camera's MQTT state is its most serious face's.
STATE_ORDER = ("FAKE", "UNCERTAIN", "REAL")

# glibc mallopt parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


# glibc keeps freed heap pages; giving them back this often keeps the RSS of a long run flat.
TRIM_EVERY_S = 30.0


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator() -> bool:
    """Keep the RSS of a long run flat: frames (2.7 MB at 720p) are mmapped and given back when freed.

    glibc raises its mmap threshold each time a large block is freed, after which 720p frames come from
    the heaps of the capture threads that decoded them and stay there, fragmented; every reconnection
    starts new threads (new heaps). Measured on the daemon: +14 MiB per reconnection of two cameras with
    the default, flat with a fixed 256 KiB threshold and two arenas. False where this is not glibc.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 256 * 1024)) and bool(mallopt(M_ARENA_MAX, 2))


def release_free_memory() -> bool:
    """Hands the heap's free pages back to the system (glibc ``malloc_trim``); False elsewhere.

    Decoders, detector and HTTP threads free blocks that glibc keeps for reuse; measured after a burst
    of reconnections, a trim took 7-15 MiB of RSS back. Cheap (milliseconds) every ``TRIM_EVERY_S``.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


def open_event_sinks(config: DaemonConfig, metrics: DaemonMetrics, cameras: tuple[str, ...]) -> EventSinks:
    """The config's event log, snapshots, webhook and MQTT (ConfigError if the events directory is
    unusable); their outcomes are counted in ``metrics``. The single-box daemon and a cluster's sink
    actor (cluster/sink.py) open them alike."""
    try:
        log_file = JsonlEventLog(config.events.jsonl_path)
        snapshots = (
            SnapshotWriter(config.events.snapshot_directory, config.events.snapshot_quality)
            if config.events.snapshots
            else None
        )
    except OSError as error:
        raise ConfigError(
            f"events.directory: cannot create {config.events.directory} ({error.strerror})"
        ) from None
    webhook = None
    if config.webhook is not None:
        hook = config.webhook
        webhook = WebhookSender(
            hook.url,
            hook,  # a WebhookConfig is the sender's WebhookPolicy plus its URL
            display_url=hook.display_url,
            on_result=lambda result: metrics.webhook.labels(result).inc(),
        )
    mqtt = None
    if config.mqtt is not None:
        from stream_detector.daemon.mqtt import MqttPublisher

        mqtt = MqttPublisher(
            config.mqtt,
            cameras,
            on_count=lambda result: metrics.mqtt.labels(result).inc(),
        ).start()
        log.info(
            "mqtt broker %s:%d topic_prefix=%s",
            config.mqtt.host,
            config.mqtt.port,
            config.mqtt.topic_prefix,
        )
    return EventSinks(log_file, snapshots, webhook, mqtt)


def read_for_reload(config_loader: Callable[[], DaemonConfig] | None) -> DaemonConfig | None:
    """The config file read again for a reload, or None (one logged line) when the reload is refused."""
    if config_loader is None:
        log.error("reload refused: this daemon was started without a config file to read again")
        return None
    try:
        return config_loader()
    except ConfigError as error:
        log.error("reload refused, the running config stays: %s", error)
    except OSError as error:
        log.error("reload refused, the running config stays: %s", error.strerror or error)
    return None


def camera_changes(
    running: dict[str, CameraConfig], new: DaemonConfig
) -> tuple[dict[str, CameraConfig], list[tuple[str, str]]]:
    """(the enabled cameras of ``new`` by name, [(running camera, "removed" | "reconfigured")]): what a
    reload stops; cameras of ``new`` not running, or stopped here, are the ones it starts."""
    wanted = {camera.name: camera for camera in new.cameras if camera.enabled}
    changes = [
        (name, "removed" if name not in wanted else "reconfigured")
        for name, config in running.items()
        if name not in wanted or wanted[name] != config
    ]
    return wanted, changes


def sections_needing_restart(old: DaemonConfig, new: DaemonConfig, sections: tuple[str, ...]) -> list[str]:
    """The tables a reload cannot apply that differ between the running config and the file."""
    return [section for section in sections if getattr(new, section, None) != getattr(old, section, None)]


class StopSignals:
    """SIGTERM and SIGINT set the stop Event, SIGHUP the reload Event, instead of raising (SIGHUP's
    default would end the process at once, open events unwritten); the previous handlers come back
    on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reload = threading.Event()
        self._previous: dict[int, object] = {}

    def _handle(self, signal_number: int, _frame: object) -> None:
        if self.event.is_set():
            log.warning("signal=%s again: already stopping", signal.Signals(signal_number).name)
        else:
            log.info("signal=%s: stopping", signal.Signals(signal_number).name)
        self.event.set()

    def _handle_reload(self, _signal_number: int, _frame: object) -> None:
        log.info("signal=SIGHUP: reloading the config")
        self.reload.set()

    def __enter__(self) -> threading.Event:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            self._previous[signal_number] = signal.signal(signal_number, self._handle)
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle_reload)
        return self.event

    def __exit__(self, *exc: object) -> None:
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)  # type: ignore[arg-type]


def stream_opener(camera: CameraConfig, secrets: tuple[str, ...] = ()) -> Callable[[], FrameSource]:
    """A camera's source (reconnect.StreamSource on PyAV), opened with its open/read timeouts."""

    def open_camera() -> FrameSource:
        # The read timeout never exceeds the stall timeout: the watchdog should rarely have to act.
        return StreamSource(
            camera.url,
            source_id=camera.name,
            open_timeout_s=camera.reconnect.open_timeout_s,
            read_timeout_s=min(camera.reconnect.read_timeout_s, camera.reconnect.stall_timeout_s),
            transport=camera.transport,
            # Twice the processing rate: the frame the loop takes is never older than half a period.
            max_fps=2.0 * camera.process_hz,
            secrets=secrets,
        )

    return open_camera


@dataclass
class _CameraRun:
    """The detection loop's own figures for one camera (only the loop thread writes them)."""

    config: CameraConfig
    camera: ReconnectingCamera
    events: EventTracker
    outage: OutageMonitor
    period_s: float
    next_due: float = 0.0
    frames_processed: int = 0
    last_processed: float = field(default_factory=time.monotonic)
    last_tick_ms: float = 0.0
    fps: float = 0.0
    lag_s: float | None = None
    max_track_id: int = -1
    last_result: FrameResult | None = None
    published_state: tuple[str, int] | None = None


class Daemon:
    """The cameras of one config on one engine (see the module docstring)."""

    def __init__(
        self,
        config: DaemonConfig,
        engine: Engine,
        opener_factory: Callable[[CameraConfig], Callable[[], FrameSource]] | None = None,
        config_loader: Callable[[], DaemonConfig] | None = None,
        sinks_factory: Callable[[], tuple[EventSinks, object | None]] | None = None,
    ) -> None:
        """``config_loader`` reads the config file again for a reload (None: reload is refused);
        ``sinks_factory`` gives the event sinks and MQTT publisher (None: the config's own, on this
        box; a cluster's camera actor forwards to its sink actor instead)."""
        self.config = config
        self.engine = engine
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        self.metrics = DaemonMetrics(self.camera_health)
        self.ops_address: tuple[str, int] | None = None
        # EventsConfig is an EventPolicy: the rules read the config's own values.
        self.policy = config.events
        self._opener_factory = opener_factory
        self.config_loader = config_loader
        self.reloads = 0
        self.mqtt = None
        self._sinks_factory = sinks_factory
        # The reason the incidents still open at stop are ended with (a cluster camera: "removed" too).
        self.stop_reason = "shutdown"
        self._closers: list[threading.Thread] = []
        self.runs: list[_CameraRun] = [
            self._new_run(camera_config) for camera_config in config.cameras if camera_config.enabled
        ]
        self.sinks: EventSinks | None = None
        self.ops: OpsServer | None = None
        self.ready = threading.Event()
        self._error_counts: dict[str, int] = {}

    def _new_run(self, camera_config: CameraConfig) -> _CameraRun:
        opener = (
            self._opener_factory(camera_config)
            if self._opener_factory is not None
            else stream_opener(camera_config, self.config.secrets)
        )
        camera = ReconnectingCamera(camera_config.name, opener, camera_config.reconnect, stop=self._stop)
        return _CameraRun(
            config=camera_config,
            camera=camera,
            events=EventTracker(camera_config.name, self.policy),
            outage=OutageMonitor(camera_config.name, self.config.events.camera_offline_after_s * 1000),
            period_s=1.0 / camera_config.process_hz,
        )

    @property
    def stop_bound_s(self) -> float:
        """How long stopping the cameras may take: a read blocked in FFmpeg ends only at its timeout."""
        return max((self._camera_stop_bound(run) for run in self.runs), default=CAMERA_STOP_S)

    # Reload.

    def reload(self) -> bool:
        """Apply the config file as it is now (see the module docstring); False if it was refused."""
        new = read_for_reload(self.config_loader)
        if new is None:
            return False
        old_cameras = {run.config.name: run for run in self.runs}
        wanted, changes = camera_changes({name: run.config for name, run in old_cameras.items()}, new)
        now_ms = time.monotonic() * 1000.0
        stopping: list[tuple[_CameraRun, str]] = [(old_cameras[name], reason) for name, reason in changes]
        stopped = dict(changes)
        kept = [run for name, run in old_cameras.items() if name not in stopped]
        for run, reason in stopping:
            for event in run.events.close_all(now_ms):
                self._emit(run, event, run.last_result, reason=reason)
            self.metrics.open_events.labels(run.config.name).set(0)
        # The old config's secrets mask the old URLs in these last lines; the new ones from here on.
        secrets_changed = new.secrets != self.config.secrets
        self.config = replace(self.config, cameras=new.cameras, secrets=new.secrets)
        if secrets_changed:  # the log lines from here on mask the new config's secrets too
            configure_logging(self.config.log_format, self.config.mask)
        started: list[_CameraRun] = []
        for name, camera_config in wanted.items():
            if name in old_cameras and old_cameras[name] in kept:
                continue
            started.append(self._new_run(camera_config))
        # A camera's close() ends its own supervisor thread only, and waits for it on a thread of its
        # own: a silent camera's blocked read must not hold up the detection loop of the others.
        for run, reason in stopping:
            self.engine.close_source(run.config.name)
            closer = threading.Thread(
                target=self._close_camera, args=(run, reason), name=f"close-{run.config.name}", daemon=True
            )
            closer.start()
            self._closers.append(closer)
        for run in started:
            run.camera.start()
            log.info("camera=%s url=%s started (reload)", run.config.name, run.config.display_url)
        self.runs = kept + started
        if self.mqtt is not None:
            self.mqtt.cameras_changed(tuple(run.config.name for run in self.runs))
        ignored = sections_needing_restart(
            self.config, new, ("engine", "events", "http", "webhook", "mqtt", "log_format")
        )
        if ignored:
            log.warning("reload: changes to %s apply at the next restart", ", ".join(ignored))
        self.reloads += 1
        log.info(
            "reload done: %d camera(s) running, %d started, %d stopped",
            len(self.runs),
            len(started),
            len(stopping),
        )
        return True

    def _close_camera(self, run: _CameraRun, reason: str) -> None:
        run.camera.close(self._camera_stop_bound(run))
        log.info("camera=%s %s: stopped", run.config.name, reason)

    @staticmethod
    def _camera_stop_bound(run: _CameraRun) -> float:
        return max(
            CAMERA_STOP_S, max(run.config.reconnect.open_timeout_s, run.config.reconnect.read_timeout_s) + 1.0
        )

    # Health and metrics (called from the HTTP server's threads).

    def camera_health(self) -> list[CameraHealth]:
        health = []
        for run in self.runs:
            status = run.camera.status()
            health.append(
                CameraHealth(
                    name=run.config.name,
                    url=run.config.display_url,
                    state=str(status.state),
                    connected=status.connected,
                    fps=run.fps if time.monotonic() - run.last_processed < 5.0 else 0.0,
                    capture_fps=status.capture_fps,
                    last_frame_age_s=status.last_frame_age_s,
                    lag_s=run.lag_s,
                    reconnects=status.reconnects,
                    failed_opens=status.failed_opens,
                    dropped_frames=status.dropped_frames,
                    frames_captured=status.frames_captured,
                    frames_decoded=status.frames_decoded,
                    frames_skipped=status.frames_skipped,
                    frames_processed=run.frames_processed,
                    last_error=status.last_error,
                )
            )
        return health

    def health(self) -> tuple[int, dict]:
        return health_document(self.camera_health(), time.monotonic() - self._heartbeat, LOOP_STUCK_AFTER_S)

    # The run.

    def run(self, stop: threading.Event | None = None, reload: threading.Event | None = None) -> int:
        """Until ``stop`` is set (``reload`` set: the config is applied again); 0 after a clean stop."""
        external = stop or threading.Event()
        reload = reload or threading.Event()
        config = self.config
        if self._sinks_factory is not None:
            self.sinks, self.mqtt = self._sinks_factory()
        else:
            self.sinks, self.mqtt = self._open_sinks(config)
        if config.http.enabled:
            try:
                self.ops = OpsServer(
                    config.http.host, config.http.port, self.health, self.metrics.exposition, config.mask
                ).start()
            except OSError as error:
                raise ConfigError(
                    f"http.port: cannot listen on {config.http.host}:{config.http.port} ({error.strerror or error})"
                ) from None
            self.ops_address = self.ops.address
            log.info("ops endpoint http://%s:%d/healthz /metrics", *self.ops_address)
        for run in self.runs:
            log.info(
                "camera=%s url=%s process_hz=%g stall_timeout_s=%g",
                run.config.name,
                run.config.display_url,
                run.config.process_hz,
                run.config.reconnect.stall_timeout_s,
            )
            run.camera.start()
        log.info(
            "daemon started cameras=%d engine=%s events=%s",
            len(self.runs),
            self.engine.description,
            self.sinks.description,
        )
        for warning in config.warnings:
            log.warning("config: %s", warning)
        self.ready.set()
        last_trim = last_outage_check = time.monotonic()
        try:
            while not external.is_set():
                self._heartbeat = time.monotonic()
                if reload.is_set():
                    reload.clear()
                    try:
                        self.reload()
                    except Exception:  # a reload must never be what ends the daemon
                        log.exception("reload failed; running on")
                if not self._step():
                    external.wait(0.005)
                if self._heartbeat - last_outage_check >= OUTAGE_CHECK_S:
                    last_outage_check = self._heartbeat
                    self._check_outages(self._heartbeat)
                if self._heartbeat - last_trim >= TRIM_EVERY_S:
                    last_trim = self._heartbeat
                    release_free_memory()
        finally:
            self._shutdown()
        return 0

    def _open_sinks(self, config: DaemonConfig) -> tuple[EventSinks, object | None]:
        """The event log, snapshots, webhook and MQTT of a single-box daemon (ConfigError if unusable)."""
        sinks = open_event_sinks(config, self.metrics, tuple(run.config.name for run in self.runs))
        return sinks, sinks.mqtt

    def _step(self) -> bool:
        """One turn of the detection loop; False when nothing was due (the caller naps)."""
        now = time.monotonic()
        batch = []
        # The most overdue first: when the box cannot keep up, every camera still gets its turn.
        for run in sorted(self.runs, key=lambda item: item.next_due):
            if now < run.next_due:
                break
            frame = run.camera.take()
            if frame is None:
                continue
            batch.append((run, frame))
            # The schedule keeps the average rate; a loop that fell behind does not bank a burst.
            run.next_due = max(run.next_due + run.period_s, now - run.period_s)
            if len(batch) >= self.config.max_batch_frames:
                break
        self._tick_idle_cameras(now)
        if not batch:
            return False
        runs = {frame.source_id: run for run, frame in batch}
        started = time.perf_counter()
        try:
            results = self.engine.process_batch([frame for _, frame in batch])
        except Exception:
            # Find the frame at fault by trying each alone, so one camera's bad frames (or a detector
            # that chokes on its format) cost only that camera its turn, never the others theirs.
            results = self._process_one_by_one([frame for _, frame in batch])
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_frames.observe(len(batch))
        done = time.monotonic()
        for result in results:
            self._handle(runs[result.frame.source_id], result, done)
        return True

    def _process_one_by_one(self, frames: list) -> list[FrameResult]:
        results = []
        for frame in frames:
            try:
                results.extend(self.engine.process_batch([frame]))
            except Exception as error:
                self.metrics.errors.labels(frame.source_id).inc()
                count = self._error_counts.get(frame.source_id, 0) + 1
                self._error_counts[frame.source_id] = count
                # The first failure with its traceback, then one line per hundred.
                if count == 1:
                    log.exception("engine failed camera=%s; frame skipped", frame.source_id)
                elif count % 100 == 0:
                    log.error("engine failed camera=%s failures=%d problem=%s", frame.source_id, count, error)
        return results

    def _handle(self, run: _CameraRun, result: FrameResult, done: float) -> None:
        name = run.config.name
        run.frames_processed += 1
        run.last_processed = done
        run.fps = result.fps
        run.lag_s = max(0.0, done - result.frame.timestamp_ms / 1000.0)
        run.last_result = result
        if result.faces:
            self.metrics.faces.labels(name).inc(len(result.faces))
        if result.classified_ids:
            self.metrics.classified.labels(name).inc(len(result.classified_ids))
        for verdict in result.verdicts:
            self.metrics.verdicts.labels(name, str(verdict.state)).inc()
            if verdict.id > run.max_track_id:
                run.max_track_id = verdict.id
                self.metrics.tracks.labels(name).inc()
        run.last_tick_ms = result.frame.timestamp_ms
        events = run.events.update(result.verdicts, result.frame.timestamp_ms)
        for event in events:
            self._emit(run, event, result)
        if self.mqtt is not None:
            self._publish_state(run, result)
        self.metrics.open_events.labels(name).set(run.events.open_events)

    def _publish_state(self, run: _CameraRun, result: FrameResult) -> None:
        """The camera's state for MQTT, on change only: the most serious face's state and the count."""
        assert self.mqtt is not None
        states = [str(verdict.state) for verdict in result.verdicts]
        state = next((name for name in STATE_ORDER if name in states), "NO_FACE")
        if (state, len(states)) == run.published_state:
            return
        run.published_state = (state, len(states))
        highest = max((verdict.p_smoothed for verdict in result.verdicts), default=None)
        self.mqtt.state(run.config.name, state, len(states), highest)

    def _tick_idle_cameras(self, now: float) -> None:
        now_ms = now * 1000.0
        for run in self.runs:
            if run.events.open_events and now_ms - run.last_tick_ms >= IDLE_TICK_S * 1000:
                run.last_tick_ms = now_ms
                for event in run.events.update((), now_ms):
                    self._emit(run, event, run.last_result)
                self.metrics.open_events.labels(run.config.name).set(run.events.open_events)

    def _check_outages(self, now: float) -> None:
        assert self.sinks is not None
        if self.mqtt is not None:
            self.metrics.mqtt_connected.set(1 if self.mqtt.connected else 0)
            self.metrics.mqtt_queue.set(self.mqtt.queue_depth)
        for run in self.runs:
            status = run.camera.status()
            if self.mqtt is not None:
                self.mqtt.availability(run.config.name, status.connected)
            record = run.outage.update(status.connected, now * 1000.0, status.last_error)
            if record is None:
                continue
            try:
                self.sinks.emit_record(record)
            except OSError as error:
                log.error(
                    "event write failed camera=%s kind=%s problem=%s", run.config.name, record["kind"], error
                )
                continue
            self.metrics.events.labels(run.config.name, str(record["kind"])).inc()
            log.warning(
                "event kind=%s camera=%s%s",
                record["kind"],
                run.config.name,
                "".join(
                    f" {key}={value}"
                    for key, value in record.items()
                    if key not in ("time", "camera", "kind")
                ),
            )

    def _emit(self, run: _CameraRun, event: Event, result: FrameResult | None, **extra: object) -> None:
        image = None
        if result is not None and event.kind in ("start", "update"):
            from stream_detector.pipeline.overlay import draw

            status = run.camera.status()
            stats = Stats(
                fps=run.fps,
                latency_ms=float(result.timings_ms.get("total", 0.0)),
                dropped_frames=status.dropped_frames,
                backend=self.engine.backend,
            )
            image = draw(result.frame.image, result.verdicts, stats, status=f"{run.config.name} {event.kind}")
        assert self.sinks is not None
        try:
            self.sinks.emit(event, image, camera=run.config.name, **extra)
        except OSError as error:
            # A full disk must not stop detection; the line says what was lost.
            log.error(
                "event write failed camera=%s event_id=%s problem=%s", run.config.name, event.event_id, error
            )
            return
        self.metrics.events.labels(run.config.name, event.kind).inc()
        log.info(
            "event kind=%s camera=%s event_id=%s track=%d p_smoothed=%.3f max_p_smoothed=%.3f duration_s=%.1f%s",
            event.kind,
            run.config.name,
            event.event_id,
            event.track_id,
            event.p_smoothed,
            event.max_p_smoothed,
            event.duration_ms / 1000.0,
            "".join(f" {key}={value}" for key, value in extra.items()),
        )
        if self.sinks.webhook is not None:
            self.metrics.webhook_queue.set(self.sinks.webhook.queue_depth)

    def _shutdown(self) -> None:
        started = time.monotonic()
        log.info("stopping: closing open events")
        now_ms = time.monotonic() * 1000.0
        for run in self.runs:
            for event in run.events.close_all(now_ms):
                self._emit(run, event, run.last_result, reason=self.stop_reason)
        self._stop.set()
        deadline = time.monotonic() + self.stop_bound_s
        for run in self.runs:
            run.camera.close(max(0.1, deadline - time.monotonic()))
        for closer in self._closers:  # cameras a reload removed, still stopping
            closer.join(max(0.1, deadline - time.monotonic()))
        try:
            self.engine.close()
        except Exception:
            log.exception("engine close failed")
        if self.sinks is not None:
            self.sinks.close(WEBHOOK_DRAIN_S)
        if self.ops is not None:
            self.ops.close()
        log.info("stopped in_s=%.2f", time.monotonic() - started)
