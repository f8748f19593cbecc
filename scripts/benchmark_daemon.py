"""How many 720p RTSP cameras one box sustains with the daemon, faces classified at 5 Hz per camera.

    .venv/bin/python scripts/benchmark_daemon.py --cameras 4 8 12 --seconds 60 --json bench.json

For each camera count: one real GStreamer RTSP server on 127.0.0.1 (tools/rtsp_server.py, Debian's
python3) serves a pre-encoded 720p H.264 clip of a real face (the astronaut photo, or ``--clip`` e.g. a
clip from ../shared/data/videos) to N cameras; the daemon runs as its own process
(``stream-detector daemon``), and its /metrics and /proc figures are sampled after a warm-up.

"Sustained" means, over the measured window: every camera processed >= 90 % of ``process_hz`` frames
per second, faces were classified at >= 90 % of that rate, and the lag (age of the newest processed
frame when its verdicts came out) did not grow (second half's mean <= first half's + 0.25 s) and
stayed under 2 s. The daemon's CPU use (cores) and RSS are reported too, so the result can be read on a
box shared with other work: cores per camera says what a dedicated box would sustain.

``--cluster``: each camera count runs twice in the same run, the single-box daemon (the baseline) and the
same config with ``[cluster] address = "local"`` (Ray in the daemon's process, camera actors, the Serve
classifier, the sink actor); CPU and RSS then cover the daemon's whole process tree (Ray's GCS, raylet
and workers), and the table gives the cluster mode's cost per camera against the baseline and the
classification round trip through Serve. It then measures the Serve classifier alone: crops/s against
the batch size, from concurrent callers, beside the same model called in-process at that batch size.

``--mirror-average both``: each camera count with the engine's mirror averaging on (the daemon's
default) and then off, and the cost of it as a ratio from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stream_detector  # noqa: E402,F401  (pylibsrtp before anything that loads TensorFlow)
from tools.rtsp_server import RtspServerProcess, system_gstreamer_problem, write_face_frames  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def make_clip(directory: Path, size: tuple[int, int], fps: int, seconds: float, source: Path | None) -> Path:
    """An H.264 MP4 long enough for the whole run (a short loop repeated without re-encoding)."""
    import cv2
    import skimage.data

    from tools.media import head_patch

    width, height = size
    loop = directory / "loop.mp4"
    if source is not None:
        encode = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(source), "-t", "20"]
        encode += [
            "-vf",
            f"scale={width}:{height}:force_original_aspect_ratio=decrease,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,fps={fps}",
        ]
    else:
        face = head_patch(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
        frames = write_face_frames(directory / "frames", face, count=fps * 4, size=size, face_height=0.45)
        encode = [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-framerate",
            str(fps),
            "-i",
            str(frames / "%05d.jpg"),
        ]
    # A key frame every second, like an IP camera; baseline profile, no B-frames.
    encode += ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-profile:v", "baseline"]
    encode += ["-pix_fmt", "yuv420p", "-g", str(fps), "-b:v", "2000k", "-an", str(loop)]
    subprocess.run(encode, check=True)
    long_clip = directory / "long.mp4"
    loops = int(seconds / 4) + 2 if source is None else int(seconds / 20) + 2
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-stream_loop",
            str(loops),
            "-i",
            str(loop),
            "-c",
            "copy",
            str(long_clip),
        ],
        check=True,
    )
    return long_clip


def free_port() -> int:
    from tools.rtsp_server import free_port as pick

    return pick()


def daemon_config(
    directory: Path,
    url: str,
    cameras: int,
    process_hz: float,
    http_port: int,
    cluster: bool = False,
    mirror_average: bool | None = None,
) -> Path:
    """A daemon config for ``cameras`` cameras on one stream; ``mirror_average`` None leaves the key out,
    so the daemon runs its own default (the soak)."""
    lines = [
        "[daemon]",
        'log_format = "json"',
        "[http]",
        f"port = {http_port}",
        "[engine]",
        f"classify_hz = {process_hz}",
        *([] if mirror_average is None else [f"mirror_average = {'true' if mirror_average else 'false'}"]),
        "[events]",
        f'directory = "{directory / "events"}"',
        "[reconnect]",
        "stall_timeout_s = 10",
    ]
    if cluster:
        # Every logical CPU shared by the cameras; the classifier replica asks for none (it is busy
        # only while the cameras wait for it).
        lines += [
            "[cluster]",
            'address = "local"',
            f"camera_cpus = {min(1.0, round((os.cpu_count() or 2) / cameras, 3))}",
            "classifier_cpus = 0",
        ]
    for index in range(cameras):
        lines += [f"[cameras.cam{index:02d}]", f'url = "{url}"', f"process_hz = {process_hz}"]
    path = directory / f"daemon-{cameras}{'-cluster' if cluster else ''}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """{(metric name, camera label or ''): value} from a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, sample.labels.get("camera", ""))] = values.get(
                (sample.name, sample.labels.get("camera", "")), 0.0
            ) + float(sample.value)
    return values


def process_figures(pid: int, tree: bool = False) -> tuple[float, float]:
    """(CPU seconds used so far, RSS in MiB) of a process (``tree``: and all its descendants), from /proc."""
    pids = [pid] + (descendants(pid) if tree else [])
    cpu = rss_kib = 0.0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue  # ended between the listing and the read
        # Own plus waited-for children's time, so workers that already exited still count.
        cpu += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLOCK_TICKS
        rss_kib += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
    return cpu, rss_kib / 1024.0


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


@dataclass
class Sample:
    t: float
    cpu_s: float
    rss_mib: float
    metrics: dict


class DaemonProcess:
    """``stream-detector daemon`` as a subprocess, with its HTTP port known in advance."""

    def __init__(self, config: Path, http_port: int, log_path: Path, tree: bool = False) -> None:
        self.http_port = http_port
        self.tree = tree
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "daemon", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=REPO,
        )

    def wait_connected(self, cameras: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}; see {self.log.name}")
            try:
                health = json.loads(fetch(self.http_port, "/healthz"))
                if sum(camera["connected"] for camera in health["cameras"].values()) == cameras:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"not all {cameras} cameras connected within {timeout_s:.0f} s")

    def sample(self) -> Sample:
        cpu, rss = process_figures(self.process.pid, self.tree)
        return Sample(time.monotonic(), cpu, rss, parse_metrics(fetch(self.http_port, "/metrics")))

    def stop(self) -> float:
        """SIGTERM; seconds until it exited."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        return time.monotonic() - started


@dataclass
class Result:
    cameras: int
    sustained: bool
    processed_fps_min: float
    processed_fps_mean: float
    classified_per_camera_s_min: float
    lag_first_half_s: float
    lag_second_half_s: float
    lag_max_s: float
    cpu_cores: float
    cpu_cores_per_camera: float
    rss_start_mib: float
    rss_end_mib: float
    inference_mean_ms: float
    dropped_per_camera_s: float
    stop_seconds: float
    mode: str = "single-box"
    serve_round_trip_ms: float | None = None
    serve_batch_frames_mean: float | None = None
    mirror_average: bool = True


def summarise(
    cameras: int, samples: list[Sample], process_hz: float, stop_seconds: float, mode: str = "single-box"
) -> Result:
    first, last = samples[0], samples[-1]
    span = last.t - first.t
    names = [f"cam{index:02d}" for index in range(cameras)]

    def rate(metric: str, name: str) -> float:
        return (last.metrics.get((metric, name), 0.0) - first.metrics.get((metric, name), 0.0)) / span

    processed = [rate("stream_detector_camera_frames_processed_total", name) for name in names]
    classified = [rate("stream_detector_classified_faces_total", name) for name in names]
    dropped = [rate("stream_detector_camera_dropped_frames_total", name) for name in names]
    lags = [
        statistics.mean(
            sample.metrics.get(("stream_detector_camera_lag_seconds", name), 0.0) for name in names
        )
        for sample in samples
    ]
    half = len(lags) // 2
    lag_first, lag_second = statistics.mean(lags[:half]), statistics.mean(lags[half:])
    lag_max = max(
        sample.metrics.get(("stream_detector_camera_lag_seconds", name), 0.0)
        for sample in samples
        for name in names
    )

    def total(metric: str) -> float:
        # Single box: one unlabelled series; cluster: one per camera actor. Summed either way.
        keys = [""] + names
        return sum(
            last.metrics.get((metric, key), 0.0) - first.metrics.get((metric, key), 0.0) for key in keys
        )

    inference_count = total("stream_detector_inference_seconds_count")
    inference_sum = total("stream_detector_inference_seconds_sum")
    serve_count = total("stream_detector_serve_classify_seconds_count")
    batch_count = total("stream_detector_serve_batch_frames_count")
    cores = (last.cpu_s - first.cpu_s) / span
    sustained = (
        min(processed) >= 0.9 * process_hz
        and min(classified) >= 0.9 * process_hz
        and lag_second <= lag_first + 0.25
        and lag_max < 2.0
    )
    return Result(
        cameras=cameras,
        sustained=sustained,
        processed_fps_min=round(min(processed), 2),
        processed_fps_mean=round(statistics.mean(processed), 2),
        classified_per_camera_s_min=round(min(classified), 2),
        lag_first_half_s=round(lag_first, 3),
        lag_second_half_s=round(lag_second, 3),
        lag_max_s=round(lag_max, 3),
        cpu_cores=round(cores, 2),
        cpu_cores_per_camera=round(cores / cameras, 3),
        rss_start_mib=round(first.rss_mib, 1),
        rss_end_mib=round(last.rss_mib, 1),
        inference_mean_ms=round(1000 * inference_sum / max(inference_count, 1), 1),
        dropped_per_camera_s=round(statistics.mean(dropped), 1),
        stop_seconds=round(stop_seconds, 2),
        mode=mode,
        serve_round_trip_ms=(
            round(1000 * total("stream_detector_serve_classify_seconds_sum") / serve_count, 1)
            if serve_count
            else None
        ),
        serve_batch_frames_mean=(
            round(total("stream_detector_serve_batch_frames_sum") / batch_count, 2) if batch_count else None
        ),
    )


def run_one(
    workdir: Path,
    url: str,
    cameras: int,
    process_hz: float,
    warmup_s: float,
    seconds: float,
    interval_s: float,
    *,
    cluster: bool,
    mirror_average: bool,
) -> tuple[Result, list[Sample]]:
    http_port = free_port()
    config = daemon_config(
        workdir, url, cameras, process_hz, http_port, cluster=cluster, mirror_average=mirror_average
    )
    mode = "cluster" if cluster else "single-box"
    daemon = DaemonProcess(config, http_port, workdir / f"daemon-{cameras}-{mode}.log", tree=cluster)
    try:
        daemon.wait_connected(cameras)
        time.sleep(warmup_s)
        samples = [daemon.sample()]
        deadline = samples[0].t + seconds
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            samples.append(daemon.sample())
    finally:
        stop_seconds = daemon.stop()
    result = summarise(cameras, samples, process_hz, stop_seconds, mode)
    return replace(result, mirror_average=mirror_average), samples


def serve_throughput(batch_sizes: list[int], callers: int, seconds: float) -> list[dict]:
    """Crops/s of the Serve classifier (one replica, local Ray) against its max batch size, ``callers``
    threads each sending one crop at a time, beside the same model called in this process on batches of
    that size (the baseline, measured in the same run)."""
    import threading

    import numpy as np
    import ray
    from ray import serve

    from stream_detector.cluster.classifier import APP_NAME, classifier_application
    from stream_detector.daemon.config import ClusterConfig, daemon_engine_defaults
    from stream_detector.pipeline.classifier import load_classifier

    settings = daemon_engine_defaults()
    crop = np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3), dtype=np.uint8)
    local = load_classifier(
        settings.backend, threads=settings.threads, mirror_average=settings.mirror_average
    )
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
    serve.start(proxy_location="Disabled")
    rows = []
    try:
        for batch in batch_sizes:
            cluster = ClusterConfig(max_batch_frames=batch, batch_wait_s=0.01, classifier_cpus=0)
            handle = serve.run(classifier_application(cluster, settings), name=APP_NAME, route_prefix=None)
            for _ in range(3):
                handle.classify.remote(crop).result()
            counts = [0] * callers
            sizes: list[int] = []
            deadline = time.monotonic() + seconds

            started = time.monotonic()
            threads = [
                threading.Thread(target=_call_until, args=(handle, crop, deadline, counts, sizes, index))
                for index in range(callers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            serve_rate = sum(counts) / (time.monotonic() - started)
            stacked = np.repeat(crop, batch, axis=0)
            done, started = 0, time.monotonic()
            while time.monotonic() - started < seconds / 2:
                local.classify(stacked)
                done += batch
            local_rate = done / (time.monotonic() - started)
            rows.append(
                {
                    "max_batch_frames": batch,
                    "callers": callers,
                    "serve_crops_s": round(serve_rate, 1),
                    "serve_batch_mean": round(statistics.mean(sizes), 2) if sizes else None,
                    "in_process_crops_s": round(local_rate, 1),
                    "ratio": round(serve_rate / local_rate, 3),
                }
            )
            print("  " + json.dumps(rows[-1]), flush=True)
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _call_until(handle, crop, deadline: float, counts: list[int], sizes: list[int], index: int) -> None:
    while time.monotonic() < deadline:
        _, frames, _ = handle.classify.remote(crop).result()
        counts[index] += 1
        sizes.append(frames)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    from stream_detector.pipeline.engine import EngineSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per camera count")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--process-hz", type=float, default=5.0)
    parser.add_argument("--fps", type=int, default=25, help="the cameras' frame rate")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--clip", type=Path, help="a video to serve instead of the generated face clip")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run each camera count in cluster mode (local Ray) and measure the Serve classifier",
    )
    parser.add_argument(
        "--mirror-average",
        choices=("on", "off", "both"),
        default="on" if EngineSettings().mirror_average else "off",
        help="the engine's mirror averaging (default: the daemon's, which is the engine's); both: each camera "
        "count with it on, then off",
    )
    parser.add_argument("--serve-batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--serve-callers", type=int, default=16)
    args = parser.parse_args()
    problem = system_gstreamer_problem()
    if problem:
        print(f"benchmark_daemon: {problem}", file=sys.stderr)
        return 2
    width, height = (int(value) for value in args.size.split("x"))
    total = sum(args.warmup + args.seconds + 30 for _ in args.cameras) + 60
    with tempfile.TemporaryDirectory(prefix="benchmark-daemon-") as temporary:
        workdir = Path(temporary)
        clip = make_clip(workdir, (width, height), args.fps, total, args.clip)
        server = RtspServerProcess(video=clip, mounts=("cam",)).start()
        results = []
        try:
            mirror_settings = {"on": (True,), "off": (False,), "both": (True, False)}[args.mirror_average]
            for cameras, mirror_average in [(c, m) for c in args.cameras for m in mirror_settings]:
                for cluster in (False, True) if args.cluster else (False,):
                    print(
                        f"{cameras} cameras{' (cluster mode)' if cluster else ''}"
                        f"{'' if mirror_average else ', mirror averaging off'}: measuring {args.seconds:.0f} s "
                        f"after {args.warmup:.0f} s warm-up (load average {load_average()})",
                        flush=True,
                    )
                    result, _ = run_one(
                        workdir,
                        server.url("cam"),
                        cameras,
                        args.process_hz,
                        args.warmup,
                        args.seconds,
                        args.interval,
                        cluster=cluster,
                        mirror_average=mirror_average,
                    )
                    results.append(result)
                    print("  " + json.dumps(asdict(result)), flush=True)
        finally:
            server.stop()
    serve_rows = []
    if args.cluster:
        print(f"Serve classifier alone: {args.serve_callers} callers, one crop per call", flush=True)
        serve_rows = serve_throughput(args.serve_batches, args.serve_callers, min(args.seconds, 20.0))
    print()
    print(
        f"{'mode':>10} {'mirror':>6} {'cameras':>7} {'sustained':>9} {'fps min':>7} {'cls/s min':>9} {'lag 1st/2nd half s':>18} {'lag max s':>9} "
        f"{'cores':>5} {'cores/cam':>9} {'RSS MiB':>13} {'infer ms':>8}"
    )
    for r in results:
        print(
            f"{r.mode:>10} {'on' if r.mirror_average else 'off':>6} {r.cameras:>7} {str(r.sustained):>9} {r.processed_fps_min:>7.2f} {r.classified_per_camera_s_min:>9.2f} "
            f"{r.lag_first_half_s:>8.3f}/{r.lag_second_half_s:<9.3f} {r.lag_max_s:>9.3f} {r.cpu_cores:>5.2f} "
            f"{r.cpu_cores_per_camera:>9.3f} {r.rss_start_mib:>6.0f}->{r.rss_end_mib:<6.0f} {r.inference_mean_ms:>8.1f}"
        )
    if args.cluster:
        print()
        print("cluster mode against the single-box daemon (same run, same cameras):")
        for cameras in args.cameras:
            single = next(r for r in results if r.cameras == cameras and r.mode == "single-box")
            cluster = next(
                r
                for r in results
                if r.cameras == cameras and r.mode == "cluster" and r.mirror_average == single.mirror_average
            )
            ratio = cluster.cpu_cores_per_camera / max(single.cpu_cores_per_camera, 1e-6)
            print(
                f"  {cameras} cameras: cores/camera {single.cpu_cores_per_camera:.3f} -> "
                f"{cluster.cpu_cores_per_camera:.3f} (x{ratio:.2f}); RSS {single.rss_end_mib:.0f} -> "
                f"{cluster.rss_end_mib:.0f} MiB; classification round trip through Serve "
                f"{cluster.serve_round_trip_ms} ms (mean batch {cluster.serve_batch_frames_mean} frames); "
                f"engine batch {single.inference_mean_ms:.1f} -> {cluster.inference_mean_ms:.1f} ms"
            )
        for row in serve_rows:
            print(
                f"  Serve max_batch_frames={row['max_batch_frames']}: {row['serve_crops_s']} crops/s "
                f"(mean batch {row['serve_batch_mean']}) vs in-process {row['in_process_crops_s']} (x{row['ratio']})"
            )
    if args.mirror_average == "both":
        print()
        print("mirror averaging on against off (same run, same cameras):")
        for cameras in args.cameras:
            on, off = (
                next(
                    r
                    for r in results
                    if r.cameras == cameras and r.mode == "single-box" and r.mirror_average is m
                )
                for m in (True, False)
            )
            print(
                f"  {cameras} cameras: classified/s min {on.classified_per_camera_s_min:.2f} vs "
                f"{off.classified_per_camera_s_min:.2f}; cores {on.cpu_cores:.2f} vs {off.cpu_cores:.2f} "
                f"(x{on.cpu_cores / max(off.cpu_cores, 1e-6):.2f}); inference {on.inference_mean_ms:.1f} vs "
                f"{off.inference_mean_ms:.1f} ms; sustained {on.sustained} vs {off.sustained}"
            )
    sustained = [r.cameras for r in results if r.sustained and r.mode == "single-box"]
    print(
        f"most cameras sustained: {max(sustained) if sustained else 0} (of {', '.join(map(str, args.cameras))}); "
        f"{os.cpu_count()} CPUs, load average now {load_average()}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": [asdict(r) for r in results], "serve": serve_rows, "cpus": os.cpu_count()},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
