"""``stream-detector daemon`` with a ``[cluster]`` table: the driver of the cameras' Ray actors.

Start: connect to Ray (``address = "HOST:PORT"``, checked to answer first, or ``"local"``: a cluster in
this process), deploy the Serve classifier (classifier.py), create the sink actor on this node (sink.py),
then one actor per enabled camera (camera.py) with ``camera_cpus`` logical CPUs, spread over the nodes
and restarted by Ray when it or its node dies (``camera_max_restarts``).

The loop (every ``POLL_S``) asks every camera for its status, without ever waiting on one for long: a
camera that does not answer is "restarting" (its actor or node died; Ray is re-placing it) or, when no
node has the CPUs it asks for, "unplaceable" on /healthz instead of a hang. A camera that answers from
a new incarnation was restarted: the restart is counted and logged with its old and new node (the sink
ends its old incidents, sink.py).

/healthz lists every camera with its node, state, fps, last frame age and restarts; /metrics carries the
single-box daemon's series from every camera actor with a ``node`` label, Serve's batch sizes and queue
lengths as the cameras saw them, the sink's webhook and MQTT series, and the cluster's own
(``stream_detector_camera_restarts``, ``stream_detector_camera_placed``).

Stop (SIGTERM / SIGINT): every camera ends its open incidents (``"shutdown"``) and sends what waits to
the sink; the sink ends what is still open (cameras that never came back) and drains webhook and MQTT;
the classifier application is deleted; a ``"local"`` cluster is shut down. Reload (SIGHUP): cameras
added, removed (``"removed"``) or changed (``"reconfigured"``) are started or stopped; other tables
apply at the next restart.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

from stream_detector.cluster.metrics import Family, MergedCollector
from stream_detector.daemon.config import CameraConfig, ClusterConfig, DaemonConfig
from stream_detector.daemon.ops import CameraHealth, OpsServer, health_document
from stream_detector.errors import ConfigError

log = logging.getLogger("stream_detector.cluster")

POLL_S = 1.0
# A status call not answered within this is left pending; the camera's state says why.
STATUS_TIMEOUT_S = 3.0
# Metric families read from the actors at most this often (a scrape never waits on the cluster).
METRICS_EVERY_S = 2.0
CONNECT_CHECK_S = 3.0
# A camera actor takes seconds to start (MediaPipe's graph); silent longer, with no node able to take
# it, it is reported unplaceable.
UNPLACEABLE_AFTER_S = 10.0
STOP_CAMERAS_S = 10.0
SINK_DRAIN_S = 2.0
LOOP_STUCK_AFTER_S = 30.0
# Families a camera actor has but the sink owns (the webhook and MQTT run on the sink's node).
SINK_FAMILIES = ("stream_detector_webhook", "stream_detector_mqtt")


def check_reachable(address: str, timeout_s: float = CONNECT_CHECK_S) -> None:
    """ConfigError unless something accepts a TCP connection at HOST:PORT (Ray would retry for a minute)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"cluster.address: no Ray cluster answers at {address} ({reason})") from None


def actor_table_state(actor) -> str | None:
    """ALIVE / PENDING_CREATION / RESTARTING / DEAD from the GCS actor table, or None if unknown.

    Ray's public state API needs the dashboard, which the daemon keeps off; the GCS table behind
    ``ray._private.state`` answers without it (Ray is pinned, 2.60, so this internal call is tested here)."""
    try:
        from ray._private import state

        info = state.actors(actor._actor_id.hex())
    except Exception:
        return None
    return info.get("State") if isinstance(info, dict) else None


def placement_state(
    gcs_state: str | None,
    waited_s: float,
    free_cpus: list[float] | None,
    needs_cpus: float,
    never_answered: bool,
) -> str:
    """A silent camera's state on /healthz: dead, unplaceable (no node has the CPUs it asks for, for longer
    than a creation takes), restarting, or starting."""
    if gcs_state == "DEAD":
        return "dead"
    if (
        waited_s >= UNPLACEABLE_AFTER_S
        and free_cpus is not None
        and gcs_state in ("PENDING_CREATION", "RESTARTING", None)
        and not any(cpus >= needs_cpus for cpus in free_cpus)
    ):
        return "unplaceable"
    if gcs_state == "RESTARTING" or not never_answered:
        return "restarting"
    return "starting"


@dataclass
class _Placement:
    """The driver's view of one camera actor (only the loop thread writes it)."""

    config: CameraConfig
    actor: object
    created: float = field(default_factory=time.monotonic)
    incarnation: str | None = None
    node: str | None = None
    restarts: int = 0
    status: dict | None = None
    last_answer: float | None = None
    pending: object | None = None
    pending_since: float = 0.0
    state: str = "starting"
    families: list[Family] = field(default_factory=list)
    error_logged: str | None = None


class ClusterDaemon:
    """The cameras of one config as Ray actors (module docstring)."""

    def __init__(self, config: DaemonConfig, config_loader=None) -> None:
        assert config.cluster is not None
        self.config = config
        self.cluster: ClusterConfig = config.cluster
        self.config_loader = config_loader
        self.cameras: dict[str, _Placement] = {}
        self.sink = None
        self.sink_node: str | None = None
        self.sink_stats: dict = {}
        self.sink_families: list[Family] = []
        self.ops: OpsServer | None = None
        self.ops_address: tuple[str, int] | None = None
        self.ready = threading.Event()
        self.reloads = 0
        self._heartbeat = time.monotonic()
        self._started_ray = False
        self._nodes: dict[str, dict] = {}
        self._last_metrics = 0.0
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(MergedCollector(self._metric_sources))
        self.registry.register(_ClusterCollector(self))

    # Start and stop.

    def _connect(self) -> None:
        import ray

        options = dict(
            namespace=self.cluster.namespace,
            include_dashboard=False,
            logging_level="warning",
            log_to_driver=True,
            ignore_reinit_error=False,
        )
        # Ray's core worker installs its own SIGTERM handler (it aborts the process); the daemon's
        # handlers (an ordered stop, SIGHUP's reload) are put back once it is connected.
        handlers = {
            number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        if self.cluster.address == "local":
            ray.init(**options)
            self._started_ray = True
        else:
            check_reachable(self.cluster.address)
            try:
                ray.init(address=self.cluster.address, **options)
            except (ConnectionError, RuntimeError) as error:
                raise ConfigError(
                    f"cluster.address: cannot join the Ray cluster at {self.cluster.address} ({error})"
                ) from None
        if threading.current_thread() is threading.main_thread():
            for number, handler in handlers.items():
                if handler is not None:
                    signal.signal(number, handler)
        log.info(
            "ray cluster address=%s nodes=%d cpus=%g",
            self.cluster.address,
            len([node for node in ray.nodes() if node.get("Alive")]),
            ray.cluster_resources().get("CPU", 0.0),
        )

    def _deploy(self) -> None:
        import ray
        from ray import serve
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from stream_detector.cluster.classifier import APP_NAME, classifier_application
        from stream_detector.cluster.sink import EventSink

        serve.start(proxy_location="Disabled")
        serve.run(classifier_application(self.cluster, self.config.engine), name=APP_NAME, route_prefix=None)
        log.info(
            "classifier deployed app=%s replicas=%d cpus=%g gpus=%g max_batch_frames=%d",
            APP_NAME,
            self.cluster.classifier_replicas,
            self.cluster.classifier_cpus,
            self.cluster.classifier_gpus,
            self.cluster.max_batch_frames,
        )
        here = ray.get_runtime_context().get_node_id()
        sink_class = ray.remote(EventSink)
        self.sink = sink_class.options(
            name="stream_detector_sink",
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
            # The sink writes the event log and snapshots: it lives where the storage is, on this node.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        ).remote(self.config, tuple(camera.name for camera in self._enabled(self.config)))
        try:
            self.sink_node = ray.get(self.sink.ready.remote(), timeout=60)
        except ray.exceptions.RayActorError as error:
            raise ConfigError(
                f"events.directory: the event sink could not start ({error.error_msg})"
            ) from None
        for camera in self._enabled(self.config):
            self._start_camera(camera)

    @staticmethod
    def _enabled(config: DaemonConfig) -> list[CameraConfig]:
        return [camera for camera in config.cameras if camera.enabled]

    def _start_camera(self, camera: CameraConfig) -> None:
        import ray

        from stream_detector.cluster.camera import CameraActor

        actor = (
            ray.remote(CameraActor)
            .options(
                name=f"camera:{camera.name}",
                num_cpus=self.cluster.camera_cpus,
                max_restarts=self.cluster.camera_max_restarts,
                max_task_retries=-1,
                max_concurrency=4,  # status() and stop() answer while the camera's own thread runs
                scheduling_strategy="SPREAD",
            )
            .remote(camera, self.config, self.sink)
        )
        self.cameras[camera.name] = _Placement(camera, actor)
        log.info(
            "camera=%s url=%s placed (cpus=%g process_hz=%g)",
            camera.name,
            camera.display_url,
            self.cluster.camera_cpus,
            camera.process_hz,
        )

    def run(self, stop: threading.Event | None = None, reload: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        reload = reload or threading.Event()
        self._connect()
        try:
            self._deploy()
            if self.config.http.enabled:
                try:
                    self.ops = OpsServer(
                        self.config.http.host,
                        self.config.http.port,
                        self.health,
                        self.exposition,
                        self.config.mask,
                    ).start()
                except OSError as error:
                    raise ConfigError(
                        f"http.port: cannot listen on {self.config.http.host}:{self.config.http.port} "
                        f"({error.strerror or error})"
                    ) from None
                self.ops_address = self.ops.address
                log.info("ops endpoint http://%s:%d/healthz /metrics", *self.ops_address)
            log.info("cluster daemon started cameras=%d", len(self.cameras))
            self.ready.set()
            while not stop.is_set():
                self._heartbeat = time.monotonic()
                if reload.is_set():
                    reload.clear()
                    try:
                        self.reload()
                    except Exception:
                        log.exception("reload failed; running on")
                self._poll()
                stop.wait(POLL_S)
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        import ray

        started = time.monotonic()
        log.info("stopping: cameras end their open incidents")
        # Only cameras that answer are asked; one that is restarting or unplaceable cannot end anything,
        # and the sink ends its open incidents below.
        stops = {
            name: placement.actor.stop.remote("shutdown", STOP_CAMERAS_S - 1.0)
            for name, placement in self.cameras.items()
            if placement.state == "running"
        }
        if stops:
            ready, _ = ray.wait(list(stops.values()), num_returns=len(stops), timeout=STOP_CAMERAS_S)
            for name, reference in stops.items():
                if reference not in ready:
                    log.warning("camera=%s did not stop within %.0f s", name, STOP_CAMERAS_S)
                    continue
                try:
                    answer = ray.get(reference)
                except Exception as error:
                    log.warning("camera=%s stop failed: %s", name, type(error).__name__)
                    continue
                if answer["unconfirmed"]:
                    log.error("camera=%s stopped with %d unsent item(s)", name, answer["unconfirmed"])
        if self.sink is not None:
            try:
                ended = ray.get(self.sink.close_open.remote("shutdown"), timeout=10)
                if ended:
                    log.info("sink ended %d incident(s) of cameras that did not stop", ended)
                ray.get(self.sink.close.remote(SINK_DRAIN_S), timeout=SINK_DRAIN_S + 10)
            except Exception as error:
                log.error("sink close failed: %s", type(error).__name__)
        for placement in self.cameras.values():
            ray.kill(placement.actor, no_restart=True)
        try:
            from ray import serve

            from stream_detector.cluster.classifier import APP_NAME

            serve.delete(APP_NAME)
            if self._started_ray:
                serve.shutdown()
        except Exception as error:
            log.warning("classifier app delete failed: %s", type(error).__name__)
        if self.sink is not None:
            ray.kill(self.sink, no_restart=True)
        if self.ops is not None:
            self.ops.close()
        ray.shutdown()
        log.info("stopped in_s=%.2f", time.monotonic() - started)

    # Reload.

    def reload(self) -> bool:
        import ray

        from stream_detector.daemon.service import camera_changes, read_for_reload, sections_needing_restart

        new = read_for_reload(self.config_loader)
        if new is None:
            return False
        wanted, stopping = camera_changes(
            {name: placement.config for name, placement in self.cameras.items()}, new
        )
        for name, reason in stopping:
            placement = self.cameras.pop(name)
            try:
                ray.get(placement.actor.stop.remote(reason, STOP_CAMERAS_S - 1.0), timeout=STOP_CAMERAS_S)
            except Exception as error:
                log.warning("camera=%s stop failed: %s", name, type(error).__name__)
            ray.kill(placement.actor, no_restart=True)
            if reason == "removed":
                self.sink.camera_removed.remote(name)
            log.info("camera=%s %s: stopped", name, reason)
        self.config = replace(self.config, cameras=new.cameras, secrets=new.secrets)
        started = [camera for name, camera in wanted.items() if name not in self.cameras]
        for camera in started:
            self._start_camera(camera)
        ignored = sections_needing_restart(
            self.config, new, ("engine", "events", "http", "webhook", "mqtt", "cluster", "log_format")
        )
        if ignored:
            log.warning("reload: changes to %s apply at the next restart", ", ".join(ignored))
        self.reloads += 1
        log.info(
            "reload done: %d camera(s), %d started, %d stopped",
            len(self.cameras),
            len(started),
            len(stopping),
        )
        return True

    # The loop.

    def _poll(self) -> None:
        import ray

        now = time.monotonic()
        for placement in self.cameras.values():
            if placement.pending is None:
                placement.pending = placement.actor.status.remote()
                placement.pending_since = now
        pending = [placement.pending for placement in self.cameras.values()]
        if not pending:
            return
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=min(STATUS_TIMEOUT_S, POLL_S))
        ready_set = set(ready)
        for name, placement in self.cameras.items():
            reference = placement.pending
            if reference in ready_set:
                placement.pending = None
                try:
                    status = ray.get(reference)
                except ray.exceptions.ActorDiedError:
                    self._set_state(placement, "dead")
                    continue
                except Exception:
                    # Unavailable while Ray restarts it (its node died): ask again next turn.
                    self._set_state(placement, "restarting")
                    continue
                self._answered(name, placement, status)
            elif now - placement.pending_since > STATUS_TIMEOUT_S:
                self._set_state(placement, self._waiting_state(placement, now))
        if now - self._last_metrics >= METRICS_EVERY_S:
            self._last_metrics = now
            self._refresh(now)

    def _answered(self, name: str, placement: _Placement, status: dict) -> None:
        if placement.incarnation is not None and status["incarnation"] != placement.incarnation:
            placement.restarts += 1
            log.warning(
                "camera=%s restarted by Ray: node %s -> %s (restarts=%d)",
                name,
                (placement.node or "?")[:12],
                status["node"][:12],
                placement.restarts,
            )
        placement.incarnation = status["incarnation"]
        placement.node = status["node"]
        placement.status = status
        placement.last_answer = time.monotonic()
        if status.get("error") and placement.error_logged != status["error"]:
            placement.error_logged = status["error"]
            log.error("camera=%s loop failed on node %s: %s", name, status["node"][:12], status["error"])
        self._set_state(placement, "failed" if not status.get("alive", True) else "running")

    def _set_state(self, placement: _Placement, state: str) -> None:
        if state != placement.state:
            log.info("camera=%s placement=%s", placement.config.name, state)
        placement.state = state

    def _waiting_state(self, placement: _Placement, now: float) -> str:
        """A camera that does not answer: what Ray's actor table says, and whether any node could take it."""
        from ray._private import state

        gcs_state = actor_table_state(placement.actor)
        try:
            # Internal too (see actor_table_state); a node whose CPUs are all taken lists none.
            free = [node.get("CPU", 0.0) for node in state.available_resources_per_node().values()]
        except Exception:
            free = None
        waited = now - (placement.last_answer or placement.created)
        return placement_state(
            gcs_state, waited, free, self.cluster.camera_cpus, placement.last_answer is None
        )

    def _refresh(self, now: float) -> None:
        """Metric families, nodes and the sink's figures, off the scrape path (never a long wait)."""
        import ray

        with contextlib.suppress(Exception):
            self._nodes = {
                node["NodeID"]: {"address": node.get("NodeManagerAddress"), "alive": bool(node.get("Alive"))}
                for node in ray.nodes()
            }
        calls = {
            name: placement.actor.metric_families.remote()
            for name, placement in self.cameras.items()
            if placement.state == "running"
        }
        sink_calls = [self.sink.metric_families.remote(), self.sink.stats.remote()] if self.sink else []
        everything = list(calls.values()) + sink_calls
        if not everything:
            return
        ready, _ = ray.wait(everything, num_returns=len(everything), timeout=STATUS_TIMEOUT_S)
        ready_set = set(ready)
        for name, reference in calls.items():
            if reference in ready_set:
                with contextlib.suppress(Exception):
                    self.cameras[name].families = ray.get(reference)
        if sink_calls and all(reference in ready_set for reference in sink_calls):
            with contextlib.suppress(Exception):
                self.sink_families, self.sink_stats = ray.get(sink_calls)

    # Health and metrics (the HTTP server's threads).

    def camera_health(self) -> list[tuple[CameraHealth, _Placement]]:
        health = []
        for placement in list(self.cameras.values()):
            status = placement.status
            camera = placement.config
            if status is not None and status.get("health") and placement.state == "running":
                item = CameraHealth(**status["health"])
            else:
                last = (status or {}).get("health") or {}
                item = CameraHealth(
                    name=camera.name,
                    url=camera.display_url,
                    state=placement.state,
                    connected=False,
                    fps=0.0,
                    capture_fps=0.0,
                    last_frame_age_s=None,
                    lag_s=None,
                    reconnects=int(last.get("reconnects", 0)),
                    failed_opens=int(last.get("failed_opens", 0)),
                    dropped_frames=int(last.get("dropped_frames", 0)),
                    frames_captured=int(last.get("frames_captured", 0)),
                    frames_processed=int(last.get("frames_processed", 0)),
                    last_error=last.get("last_error"),
                )
            health.append((item, placement))
        return health

    def health(self) -> tuple[int, dict]:
        pairs = self.camera_health()
        code, body = health_document(
            [item for item, _ in pairs], time.monotonic() - self._heartbeat, LOOP_STUCK_AFTER_S
        )
        for item, placement in pairs:
            node = placement.node
            body["cameras"][item.name].update(
                node=node,
                node_address=self._nodes.get(node or "", {}).get("address"),
                placement=placement.state,
                restarts=placement.restarts,
                answered_s_ago=(
                    None
                    if placement.last_answer is None
                    else round(time.monotonic() - placement.last_answer, 3)
                ),
                classify_gaps=(placement.status or {}).get("classify_gaps", 0),
                unconfirmed_items=(placement.status or {}).get("unconfirmed", 0),
            )
        body["cluster"] = {
            "address": self.cluster.address,
            "nodes": {node: info for node, info in self._nodes.items()},
            "sink": self.sink_stats,
        }
        return code, body

    def _metric_sources(self):
        for placement in list(self.cameras.values()):
            if placement.families and placement.node:
                families = [
                    family for family in placement.families if not family[0].startswith(SINK_FAMILIES)
                ]
                yield {"node": placement.node[:12], "camera": placement.config.name}, families
        if self.sink_families and self.sink_node:
            families = [family for family in self.sink_families if family[0].startswith(SINK_FAMILIES)]
            yield {"node": self.sink_node[:12]}, families

    def exposition(self) -> bytes:
        with self._lock:
            return generate_latest(self.registry)


class _ClusterCollector:
    """The driver's own series: restarts and placement per camera."""

    def __init__(self, daemon: ClusterDaemon) -> None:
        self._daemon = daemon

    def describe(self) -> list:
        return []

    def collect(self):
        restarts = CounterMetricFamily(
            "stream_detector_camera_restarts",
            "Times Ray restarted the camera's actor (its process or node died)",
            labels=["camera", "node"],
        )
        placed = GaugeMetricFamily(
            "stream_detector_camera_placed",
            "1 while the camera's actor answers on a node (0: restarting, unplaceable, dead)",
            labels=["camera", "node"],
        )
        for placement in list(self._daemon.cameras.values()):
            node = (placement.node or "")[:12]
            restarts.add_metric([placement.config.name, node], placement.restarts)
            placed.add_metric([placement.config.name, node], 1.0 if placement.state == "running" else 0.0)
        yield restarts
        yield placed
