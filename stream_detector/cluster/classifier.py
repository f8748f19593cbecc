"""The classifier as a Ray Serve deployment, and the engine's ``Classifier`` over it.

Each camera actor sends one call per processed frame: that frame's due face crops, (N, 224, 224, 3)
uint8. ``@serve.batch`` joins the calls that arrive within ``batch_wait_s`` from every camera on every
node (up to ``max_batch_frames`` frames) into ONE model call, so a replica's cost per crop falls with the
number of cameras, as on one box. Replicas (``classifier_replicas``), their CPUs and GPUs
(``classifier_cpus``, ``classifier_gpus``) and a custom node resource to pin them
(``classifier_resource``) come from ``[cluster]``.

Each answer carries the size of the batch it was part of and how many calls were still waiting on the
replica, so the cameras' /metrics show Serve's batch sizes and queue lengths without a second channel.

A call that does not come back within ``classify_timeout_s`` (its replica was killed and Serve is
starting another) is a gap: ``ServeClassifier`` returns NaN for those crops, the engine leaves those
faces' verdicts as they were (pipeline/engine.py), and the gap is counted. No camera waits longer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ray import serve

from stream_detector.daemon.config import ClusterConfig
from stream_detector.pipeline.crops import CROP_SIZE
from stream_detector.pipeline.engine import EngineSettings

log = logging.getLogger("stream_detector.cluster")

APP_NAME = "stream_detector_classifier"
DEPLOYMENT_NAME = "Classifier"


class ClassifierDeployment:
    """One Serve replica: the project's own classifier (LiteRT int8 by default), batched across cameras."""

    def __init__(
        self,
        backend: str,
        model_dir: str | None,
        threads: int,
        max_batch_frames: int,
        batch_wait_s: float,
        mirror_average: bool = True,
    ) -> None:
        from stream_detector.pipeline.classifier import load_classifier

        # The mirror is made here, beside the model, so a camera sends each crop once.
        self.classifier = load_classifier(backend, model_dir, threads=threads, mirror_average=mirror_average)
        self.waiting = 0
        self.classify_frames.set_max_batch_size(max_batch_frames)
        self.classify_frames.set_batch_wait_timeout_s(batch_wait_s)
        log.info("classifier replica ready backend=%s", self.classifier.name)

    def backend(self) -> str:
        return str(self.classifier.name)

    async def classify(self, crops: np.ndarray) -> tuple[np.ndarray, int, int]:
        """One frame's crops -> (p(fake) per crop, frames in the batch, calls still waiting)."""
        self.waiting += 1
        try:
            return await self.classify_frames(crops)
        finally:
            self.waiting -= 1

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def classify_frames(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, int, int]]:
        counts = [len(frame) for frame in frames]
        waiting = max(0, self.waiting - len(frames))
        if sum(counts):
            stacked = np.concatenate([frame for frame in frames if len(frame)])
            # The model runs off the replica's event loop, so the next batch can gather meanwhile.
            scores = await asyncio.to_thread(self.classifier.classify, stacked)
            scores = np.asarray(scores, np.float32).reshape(-1)
        else:
            scores = np.zeros((0,), np.float32)
        answers = []
        offset = 0
        for count in counts:
            answers.append((scores[offset : offset + count], len(frames), waiting))
            offset += count
        return answers


def classifier_application(cluster: ClusterConfig, engine: EngineSettings):
    """The Serve application of ``[cluster]``'s classifier settings (``serve.run`` deploys it)."""
    actor_options: dict = {"num_cpus": cluster.classifier_cpus, "num_gpus": cluster.classifier_gpus}
    if cluster.classifier_resource:
        actor_options["resources"] = {cluster.classifier_resource: 0.01}
    deployment = serve.deployment(ClassifierDeployment).options(
        name=DEPLOYMENT_NAME,
        num_replicas=cluster.classifier_replicas,
        ray_actor_options=actor_options,
        # A batch fills only if the replica takes that many calls at once.
        max_ongoing_requests=max(32, 2 * cluster.max_batch_frames),
        health_check_period_s=2.0,
        health_check_timeout_s=10.0,
        # One access line per frame per camera would drown the daemon's own log.
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    return deployment.bind(
        engine.backend,
        str(engine.model_dir) if engine.model_dir else None,
        engine.threads,
        cluster.max_batch_frames,
        cluster.batch_wait_s,
        engine.mirror_average,
    )


@dataclass(frozen=True)
class ServeAnswer:
    """What one call told: its latency, its batch's size, the calls waiting behind it (None: a gap)."""

    crops: int
    seconds: float
    batch_frames: int | None
    waiting: int | None


class ServeClassifier:
    """The engine's Classifier over the Serve deployment (module docstring); ``name`` says so."""

    name = "serve"

    def __init__(
        self,
        handle,
        timeout_s: float,
        observer: Callable[[ServeAnswer], None] | None = None,
    ) -> None:
        """``handle``: ``serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME)``."""
        self.handle = handle
        self.timeout_s = timeout_s
        self.observer = observer or (lambda _answer: None)
        self.gaps = 0
        self._lock = threading.Lock()
        self._failing_since: float | None = None

    def classify(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
            raise ValueError(f"crops must be (N, {CROP_SIZE}, {CROP_SIZE}, 3), not {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0,), np.float32)
        started = time.perf_counter()
        try:
            scores, batch_frames, waiting = self.handle.classify.remote(crops).result(
                timeout_s=self.timeout_s
            )
        except Exception as error:  # timed out, replica gone, Serve restarting: a gap, never a stall
            with self._lock:
                self.gaps += 1
                first = self._failing_since is None
                if first:
                    self._failing_since = time.monotonic()
            if first:
                log.warning("classifier unreachable, frames skipped until it answers: %s", _short(error))
            self.observer(ServeAnswer(len(crops), time.perf_counter() - started, None, None))
            return np.full((len(crops),), np.nan, np.float32)
        with self._lock:
            failing_since, self._failing_since = self._failing_since, None
        if failing_since is not None:
            log.info("classifier answers again after %.1f s", time.monotonic() - failing_since)
        self.observer(ServeAnswer(len(crops), time.perf_counter() - started, int(batch_frames), int(waiting)))
        return np.asarray(scores, np.float32).reshape(-1)

    def close(self) -> None:
        pass


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
