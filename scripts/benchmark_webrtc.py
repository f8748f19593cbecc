"""Benchmark the WebRTC call check: returned fps and added latency with 1 and with 4 peers.

Starts ``stream-detector serve`` (the real engine) on 127.0.0.1 in a subprocess, then connects aiortc
sender peers from this process. Each sends 640x480 frames at 30 fps of a moving real face (the
astronaut photo; needs scikit-image from the test extras), with its frame number stamped into the
picture; the number read back from each annotated frame gives the latency from capture (the frame
handed to the sender's encoder) to the annotated frame decoded back at the sender. Everything stays on
loopback. The senders receive like a browser does (a frame is complete at its RTP marker bit;
``--stock-receiver`` uses aiortc's own buffer, which waits for the next frame's first packet).

    .venv/bin/python scripts/benchmark_webrtc.py [--peers 1 4] [--seconds 10] [--json out.json]
    .venv/bin/python scripts/benchmark_webrtc.py --gallery 1 4 9   # a shared 1920x1080 call at 15 fps

``--gallery N``: one peer sends what a shared call window looks like: 1920x1080 at 15 fps, a grid of
N tiles (1, 2x2, 3x3) with a face in each (clips of ../shared/data/videos, real and face-swap
alternating, where present; else the astronaut photo); besides fps and latency it reports each face's
classification rate (from the messages' ``classified``) and the smallest face box judged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

import aiohttp  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

import stream_detector  # noqa: E402,F401  (pylibsrtp first)
from stream_detector.apps.arguments import add_mirror_average_argument  # noqa: E402
from stream_detector.webrtc.ice import restrict_host_addresses  # noqa: E402
from stream_detector.webrtc.latency import marker_frame_assembly  # noqa: E402
from tools.webrtc_client import StampedTrack, frame_stamp, read_frames, start_call  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30
SCREEN_WIDTH, SCREEN_HEIGHT, SCREEN_FPS = 1920, 1080, 15


@dataclass
class PeerFigures:
    returned: int
    fps: float
    latency_p50_ms: float
    latency_p95_ms: float
    server_latency_p50_ms: float
    dropped: int
    messages: int
    messages_with_faces: int


@dataclass
class RunFigures:
    peers: int
    seconds: float
    server_cpu_cores: float
    sender_cpu_cores: float
    fps_per_peer: float
    latency_p50_ms: float
    latency_p95_ms: float
    server_latency_p50_ms: float
    per_peer: list[PeerFigures]
    gallery_faces: int = 0
    faces_seen_p50: float = 0.0
    classified_hz_per_face_min: float = 0.0
    classified_hz_per_face_mean: float = 0.0
    smallest_face_judged_px: float | None = None
    return_max_width: int = 0
    variant: str = "current"


def face_frames(count: int, phase: float) -> list[np.ndarray]:
    """A real face (the astronaut's head) drifting over a plain background."""
    import skimage.data

    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    head = photo[0:240, 100:340]
    frames = []
    for index in range(count):
        angle = 2 * np.pi * (index / count + phase)
        x = int(WIDTH / 2 - 120 + 140 * np.sin(angle))
        y = int(HEIGHT / 2 - 130 + 30 * np.cos(angle))
        column = np.linspace(70, 130, HEIGHT, dtype=np.float32).astype(np.uint8)
        frame = np.repeat(np.repeat(column[:, None], WIDTH, axis=1)[:, :, None], 3, axis=2).copy()
        frame[y : y + 240, x : x + 240] = head
        frames.append(frame)
    return frames


SHARED_VIDEOS = REPOSITORY.parent / "shared" / "data" / "videos"


def gallery_clips(faces: int) -> list[Path]:
    """Real and face-swap clips of ../shared/data/videos, alternating (real first), one per tile; []
    when there are not enough of them."""
    reals = sorted((SHARED_VIDEOS / "real").glob("*.mp4"))
    fakes = sorted((SHARED_VIDEOS / "fake").glob("*.mp4")) + sorted(
        (SHARED_VIDEOS / "dfdc-faces" / "fake").glob("*.mp4")
    )
    chosen = [clip for pair in zip(reals, fakes, strict=False) for clip in pair][:faces]
    return chosen if len(chosen) == faces else []


def clip_gallery_frames(clips: list[Path], count: int) -> list[np.ndarray]:
    """A shared call window made from clips: 1920x1080, one clip per tile of a square grid, each
    letterboxed into its tile, ``count`` frames (a clip shorter than that starts again)."""
    side = int(np.ceil(np.sqrt(len(clips))))
    tile_width, tile_height = SCREEN_WIDTH // side, SCREEN_HEIGHT // side
    tiles = []
    for clip in clips:
        capture = cv2.VideoCapture(str(clip))
        frames = []
        while len(frames) < count:
            ok, image = capture.read()
            if not ok:
                if not frames:
                    raise SystemExit(f"cannot read {clip}")
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            height, width = image.shape[:2]
            scale = min((tile_width - 8) / width, (tile_height - 8) / height)
            frames.append(
                cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
            )
        capture.release()
        tiles.append(frames)
    gallery = []
    for index in range(count):
        frame = np.full((SCREEN_HEIGHT, SCREEN_WIDTH, 3), 32, np.uint8)
        for tile, frames in enumerate(tiles):
            row, column = divmod(tile, side)
            image = frames[index]
            x = column * tile_width + (tile_width - image.shape[1]) // 2
            y = row * tile_height + (tile_height - image.shape[0]) // 2
            frame[y : y + image.shape[0], x : x + image.shape[1]] = image
        gallery.append(frame)
    return gallery


def gallery_frames(faces: int, count: int = 60) -> list[np.ndarray]:
    """A shared call window: 1920x1080, a grid of ``faces`` tiles (1, 4 = 2x2, 9 = 3x3), a face in each:
    the shared clips (real and face-swap, alternating) where ../shared has them, else one photo."""
    clips = gallery_clips(faces)
    if clips:
        return clip_gallery_frames(clips, count)
    import skimage.data

    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    head = photo[0:240, 100:340]
    side = int(np.ceil(np.sqrt(faces)))
    tile_width, tile_height = SCREEN_WIDTH // side, SCREEN_HEIGHT // side
    size = int(0.8 * min(tile_width, tile_height))
    scaled = cv2.resize(head, (size, size), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(count):
        frame = np.full((SCREEN_HEIGHT, SCREEN_WIDTH, 3), 40, np.uint8)
        for tile in range(faces):
            row, column = divmod(tile, side)
            sway = int(6 * np.sin(2 * np.pi * (index / count + tile / faces)))
            x = column * tile_width + (tile_width - size) // 2 + sway
            y = row * tile_height + (tile_height - size) // 2
            frame[y : y + size, x : x + size] = scaled
        frames.append(frame)
    return frames


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to show what each side costs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_for_server(http: aiohttp.ClientSession, base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/status") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.5)
    raise SystemExit("the server did not start within 120 s")


async def measure(
    base: str, server_pid: int, peers: int, seconds: float, warmup: float, gallery: int = 0
) -> RunFigures:
    async with aiohttp.ClientSession() as http:
        tracks, calls, widths = [], [], []
        for peer in range(peers):
            if gallery:
                frames, fps = gallery_frames(gallery), SCREEN_FPS
            else:
                frames, fps = face_frames(90, phase=peer / max(peers, 1)), FPS
            track = StampedTrack(lambda index, frames=frames: frames[index % len(frames)], fps=fps)
            tracks.append(track)
            widths.append(frames[0].shape[1])
            calls.append(await start_call(http, base, track))
        returned_tracks = [await asyncio.wait_for(call.returned, 20) for call in calls]

        window = {"open": False}
        latencies: list[list[float]] = [[] for _ in range(peers)]
        seen: list[set[int]] = [set() for _ in range(peers)]

        def collector(peer: int):
            def on_frame(frame, arrived: float) -> None:
                if not window["open"]:
                    return
                # The server may send its video back smaller (serve --return-max-width).
                stamp = frame_stamp(frame, widths[peer])
                sent = tracks[peer].sent_at.get(stamp) if stamp is not None else None
                if sent is None or stamp in seen[peer]:
                    return
                seen[peer].add(stamp)
                latencies[peer].append((arrived - sent) * 1000.0)

            return on_frame

        stop = asyncio.Event()
        readers = [
            asyncio.create_task(read_frames(track, collector(peer), stop))
            for peer, track in enumerate(returned_tracks)
        ]
        await asyncio.sleep(warmup)
        first_message = [len(call.messages) for call in calls]
        window["open"] = True
        started = time.monotonic()
        server_cpu, sender_cpu = process_cpu_seconds(server_pid), own_cpu_seconds()
        await asyncio.sleep(seconds)
        window["open"] = False
        elapsed = time.monotonic() - started
        server_cpu = (process_cpu_seconds(server_pid) - server_cpu) / elapsed
        sender_cpu = (own_cpu_seconds() - sender_cpu) / elapsed
        stop.set()

        per_peer = []
        for peer, call in enumerate(calls):
            messages = call.messages[first_message[peer] :]
            server_latencies = [message["latency_ms"] for message in messages] or [0.0]
            values = sorted(latencies[peer]) or [float("nan")]
            per_peer.append(
                PeerFigures(
                    returned=len(latencies[peer]),
                    fps=len(latencies[peer]) / elapsed,
                    latency_p50_ms=float(np.percentile(values, 50)),
                    latency_p95_ms=float(np.percentile(values, 95)),
                    server_latency_p50_ms=float(np.percentile(server_latencies, 50)),
                    dropped=messages[-1]["dropped"] - (messages[0]["dropped"] if messages else 0)
                    if messages
                    else 0,
                    messages=len(messages),
                    messages_with_faces=sum(bool(message["faces"]) for message in messages),
                )
            )
        for call in calls:
            await call.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for track in tracks:
            track.stop()

    every_latency = [value for values in latencies for value in values] or [float("nan")]
    # Per face: how often it was classified, and the smallest box that was judged (not too small).
    classified: dict[int, int] = {}
    judged_sides: list[float] = []
    faces_seen = []
    for call, start in zip(calls, first_message, strict=True):
        for message in call.messages[start:]:
            faces_seen.append(len(message["faces"]))
            for face in message["faces"]:
                if face.get("classified"):
                    classified[face["id"]] = classified.get(face["id"], 0) + 1
                if not face.get("too_small", False):
                    x1, y1, x2, y2 = face["box"]
                    judged_sides.append(min(x2 - x1, y2 - y1))
    # The faces that were there the whole time (the gallery's tiles), by how often each was seen.
    steady = sorted(classified.values(), reverse=True)[: gallery or len(classified)]
    rates = [count / elapsed for count in steady] or [0.0]
    return RunFigures(
        gallery_faces=gallery,
        faces_seen_p50=float(np.percentile(faces_seen, 50)) if faces_seen else 0.0,
        classified_hz_per_face_min=min(rates),
        classified_hz_per_face_mean=statistics.fmean(rates),
        smallest_face_judged_px=min(judged_sides) if judged_sides else None,
        peers=peers,
        seconds=elapsed,
        server_cpu_cores=server_cpu,
        sender_cpu_cores=sender_cpu,
        fps_per_peer=statistics.fmean(figures.fps for figures in per_peer),
        latency_p50_ms=float(np.percentile(every_latency, 50)),
        latency_p95_ms=float(np.percentile(every_latency, 95)),
        server_latency_p50_ms=statistics.fmean(figures.server_latency_p50_ms for figures in per_peer),
        per_peer=per_peer,
    )


# What the server did before 2026-12-02: every tile of every large frame searched, every face at
# --classify-hz, and the classifier on each frame's own path.
BASELINE_ARGUMENTS = ["--tiles-every-ms", "0", "--classify-budget", "0", "--inline-classification"]


async def benchmark(arguments: argparse.Namespace) -> list[RunFigures]:
    """Every run once per ``--return-max-width`` (each its own server), in this one invocation; with
    ``--baseline`` first once more on a server as it was before (BASELINE_ARGUMENTS), and the ratios."""
    results = []
    variants = [("baseline", arguments.return_max_width[0], BASELINE_ARGUMENTS)] if arguments.baseline else []
    variants += [("current", width, []) for width in arguments.return_max_width]
    for label, width, extra in variants:
        print(f"serve --return-max-width {width} {' '.join(extra)} ({label}):", flush=True)
        for figures in await benchmark_one(arguments, width, extra):
            figures.return_max_width = width
            figures.variant = label
            results.append(figures)
    if arguments.baseline:
        width = arguments.return_max_width[0]
        before = [figures for figures in results if figures.variant == "baseline"]
        after = [
            figures
            for figures in results
            if figures.variant == "current" and figures.return_max_width == width
        ]
        for old, new in zip(before, after, strict=True):
            what = f"{old.gallery_faces} face(s)" if old.gallery_faces else f"{old.peers} peer(s)"
            print(
                f"ratio current / baseline, {what}: fps x{new.fps_per_peer / max(old.fps_per_peer, 1e-9):.2f}, "
                f"latency p50 x{new.latency_p50_ms / max(old.latency_p50_ms, 1e-9):.2f}, "
                f"p95 x{new.latency_p95_ms / max(old.latency_p95_ms, 1e-9):.2f}, "
                f"server CPU x{new.server_cpu_cores / max(old.server_cpu_cores, 1e-9):.2f}",
                flush=True,
            )
    return results


async def benchmark_one(
    arguments: argparse.Namespace, return_max_width: int, extra: list[str]
) -> list[RunFigures]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "stream_detector.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-peers",
        str(max(arguments.peers)),
        # Measuring from one address: the offer rate limit is not what is measured.
        "--offers-per-minute",
        "600",
        "--backend",
        arguments.backend,
        "--mirror-average" if arguments.mirror_average else "--no-mirror-average",
        "--classify-hz",
        str(arguments.classify_hz),
        "--return-max-width",
        str(return_max_width),
        *extra,
    ]
    server = subprocess.Popen(command, cwd=REPOSITORY, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    receiver = contextlib.nullcontext() if arguments.stock_receiver else marker_frame_assembly()
    try:
        with restrict_host_addresses(["127.0.0.1"]), receiver:
            async with aiohttp.ClientSession() as http:
                await wait_for_server(http, base, server)
            results = []
            for faces in arguments.gallery or []:
                figures = await measure(
                    base, server.pid, 1, arguments.seconds, arguments.warmup, gallery=faces
                )
                results.append(figures)
                print(
                    f"shared 1920x1080@15 with {faces} face(s): {figures.fps_per_peer:5.1f} fps returned, "
                    f"{figures.faces_seen_p50:.0f} faces found, each classified at >= "
                    f"{figures.classified_hz_per_face_min:4.1f} Hz (mean {figures.classified_hz_per_face_mean:4.1f}), "
                    f"added latency p50 {figures.latency_p50_ms:5.1f} ms p95 {figures.latency_p95_ms:5.1f} ms, "
                    f"smallest face judged {figures.smallest_face_judged_px or 0:.0f} px; server CPU "
                    f"{figures.server_cpu_cores:.2f} cores of {os.cpu_count()}",
                    flush=True,
                )
                await asyncio.sleep(2)
            for peers in [] if arguments.gallery else arguments.peers:
                figures = await measure(base, server.pid, peers, arguments.seconds, arguments.warmup)
                results.append(figures)
                print(
                    f"{peers} peer(s): {figures.fps_per_peer:5.1f} fps returned per peer, added latency "
                    f"p50 {figures.latency_p50_ms:5.1f} ms, p95 {figures.latency_p95_ms:5.1f} ms "
                    f"(server share p50 {figures.server_latency_p50_ms:4.1f} ms); CPU cores busy: server "
                    f"{figures.server_cpu_cores:.2f}, senders {figures.sender_cpu_cores:.2f} of {os.cpu_count()}",
                    flush=True,
                )
                await asyncio.sleep(2)  # the server closes the finished peers
            return results
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers", type=int, nargs="+", default=[1, 4], help="peer counts to run (default 1 4)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring (default 4)")
    parser.add_argument("--backend", default="auto", help="classifier backend for the server (default auto)")
    parser.add_argument("--classify-hz", type=float, default=15.0, help="server's --classify-hz (default 15)")
    add_mirror_average_argument(
        parser,
        "server's mirror averaging (default: the engine's default, on)",
    )
    parser.add_argument(
        "--stock-receiver", action="store_true", help="aiortc's own receive buffer at the senders"
    )
    parser.add_argument(
        "--gallery",
        type=int,
        nargs="+",
        choices=(1, 4, 9),
        help="instead of --peers: one shared 1920x1080 call at 15 fps with this many faces (1 4 9)",
    )
    parser.add_argument(
        "--return-max-width",
        type=int,
        nargs="+",
        default=[1280],
        help="server's --return-max-width, one full set of runs each (e.g. 0 1280: as received vs scaled)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first run everything on a server as it was before 2026-12-02 (every tile searched in "
        "every frame, no classification budget, classification inline) and print the ratios",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    results = asyncio.run(benchmark(arguments))
    report = {
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "mirror_average": arguments.mirror_average,
        "resolution": f"{SCREEN_WIDTH}x{SCREEN_HEIGHT}@{SCREEN_FPS}"
        if arguments.gallery
        else f"{WIDTH}x{HEIGHT}@{FPS}",
        "runs": [asdict(figures) for figures in results],
    }
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
