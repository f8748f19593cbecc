"""End-to-end speed of the live engine against a reference-style baseline, on generated 720p clips.

    .venv/bin/python scripts/benchmark.py [--json OUT] [--frames 300] [--backend auto]

Measured in one run, on clips made from scikit-image's astronaut photo (one face, and four faces):
- processed fps: decode (capture thread) -> detect -> crop -> classify (15 Hz per face, the product
  default) -> track -> smooth -> draw, every frame of the file, nothing displayed;
- per-stage times (decode, detect, crop, classify, draw; mean ms per frame);
- capture-to-overlay latency (p50/p95) with the clip played like a 30 fps camera, and again with a
  source replaying frames at 240 fps (faster than the engine): the newest-frame slot must keep that
  latency flat (``latency_growth_ms``: last quarter's median minus the first quarter's);
- the same throughput with the engine's mirror averaging off (``mirror_average``; on by default: each
  crop is classified with its mirror image), so the cost of that setting is a ratio from the same run;
- the baseline the reference project used: OpenCV Haar cascade + one keras ``model.predict`` call
  per frame, decoding in the same thread; and the speed-up.

Speed is the machine's: on a shared CPU (another process training) expect lower figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)
from stream_detector.apps.arguments import add_mirror_average_argument  # noqa: E402
from stream_detector.pipeline.engine import EngineSettings, build_engine  # noqa: E402
from stream_detector.pipeline.meters import monotonic_ms  # noqa: E402
from stream_detector.pipeline.overlay import draw  # noqa: E402
from stream_detector.pipeline.sources import LatestFrameReader, VideoFileSource  # noqa: E402
from stream_detector.pipeline.types import Frame, Stats  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 30.0
TARGETS = {"fps_720p_1face": 60.0, "speedup_vs_baseline": 6.0, "latency_p95_ms": 50.0}


def make_clip(directory: Path, faces: int, frames: int) -> Path:
    import cv2
    import skimage.data

    from tools.media import grid_faces_frames, write_video

    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    images = grid_faces_frames(astronaut, frames, WIDTH, HEIGHT, faces)
    return write_video(directory / f"astronaut_720p_{faces}face.mp4", images, FPS)


class TimedSource:
    """A FrameSource wrapper that records how long each read (decode) took."""

    def __init__(self, source) -> None:
        self.source = source
        self.read_ms: list[float] = []

    def read(self):
        started = time.perf_counter()
        frame = self.source.read()
        if frame is not None:
            self.read_ms.append((time.perf_counter() - started) * 1000.0)
        return frame

    def close(self) -> None:
        self.source.close()


class ReplaySource:
    """Decoded frames released at ``fps`` with live timestamps: a camera faster than the engine."""

    def __init__(self, images: list[np.ndarray], fps: float, count: int) -> None:
        self.images, self.fps, self.count = images, fps, count
        self.index = 0
        self.started: float | None = None

    def read(self):
        if self.index >= self.count:
            return None
        if self.started is None:
            self.started = monotonic_ms()
        wait = self.started + self.index * 1000.0 / self.fps - monotonic_ms()
        if wait > 0:
            time.sleep(wait / 1000.0)
        frame = Frame(self.images[self.index % len(self.images)], self.index, monotonic_ms(), "replay")
        self.index += 1
        return frame

    def close(self) -> None:
        pass


def throughput(engine, clip: Path) -> dict:
    """Every frame of the clip through the whole pipeline, decode overlapped on its thread."""
    source = TimedSource(VideoFileSource(clip, source_id=f"throughput-{clip.stem}"))
    reader = LatestFrameReader(source, drop_frames=False)
    stages: dict[str, list[float]] = {
        name: [] for name in ("detect", "crop", "classify", "track", "smooth", "draw")
    }
    faces, classified = [], 0
    track_time: dict[int, list[float]] = {}
    frames = 0
    engine.prepare(source.source.source_id)
    started = time.perf_counter()
    while (frame := reader.read()) is not None:
        result = engine.process(frame)
        before_draw = time.perf_counter()
        draw(frame.image, result.verdicts, Stats(fps=result.fps, backend=engine.backend), copy=False)
        stages["draw"].append((time.perf_counter() - before_draw) * 1000.0)
        for name in ("detect", "crop", "classify", "track", "smooth"):
            stages[name].append(result.timings_ms[name])
        faces.append(len(result.faces))
        classified += len(result.classified_ids)
        for face in result.faces:
            track_time.setdefault(face.id, []).append(frame.timestamp_ms)
        frames += 1
    elapsed = time.perf_counter() - started
    reader.close()
    engine.close_source(source.source.source_id)
    face_seconds = sum((times[-1] - times[0]) / 1000.0 + 1.0 / FPS for times in track_time.values())
    return {
        "frames": frames,
        "fps": frames / elapsed,
        "faces_per_frame": float(np.mean(faces)),
        "tracks": len(track_time),
        "classify_hz_per_face": classified / face_seconds if face_seconds else 0.0,
        "stages_ms": {
            "decode": float(np.mean(source.read_ms)),
            **{name: float(np.mean(values)) for name, values in stages.items()},
        },
    }


def latency(engine, source, seconds: float) -> dict:
    """Live-style: newest-frame slot, capture-to-overlay latency per processed frame."""
    reader = LatestFrameReader(source)
    engine.prepare(getattr(source, "source_id", "replay"))
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (frame := reader.read(timeout=1.0)) is not None:
        result = engine.process(frame)
        draw(frame.image, result.verdicts, Stats(fps=result.fps, backend=engine.backend), copy=False)
        latencies.append(monotonic_ms() - frame.timestamp_ms)
    reader.close()
    for source_id in engine.sources():
        engine.close_source(source_id)
    values = np.array(latencies)
    quarter = max(len(values) // 4, 1)
    return {
        "frames_processed": len(values),
        "frames_captured": reader.captured,
        "dropped": reader.dropped,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "growth_ms": float(np.median(values[-quarter:]) - np.median(values[:quarter])),
    }


def baseline(clip: Path, frames: int) -> dict:
    """The reference project's loop: decode, Haar cascade, keras model.predict per frame, one thread."""
    import cv2

    from stream_detector.pipeline.crops import crop_face
    from stream_detector.pipeline.model import load_keras_model

    model = load_keras_model()
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    capture = cv2.VideoCapture(str(clip))
    # Warm-up: the first predict call builds the graph.
    model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)
    found, count = [], 0
    started = time.perf_counter()
    while count < frames:
        ok, image = capture.read()
        if not ok:
            break
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
        found.append(len(boxes))
        if len(boxes):
            crops = np.stack([crop_face(image, (x, y, x + w, y + h)) for x, y, w, h in boxes])
            model.predict(crops.astype(np.float32), verbose=0)
        count += 1
    elapsed = time.perf_counter() - started
    capture.release()
    return {"frames": count, "fps": count / elapsed, "faces_per_frame": float(np.mean(found))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", dest="json_path", help="write the results here")
    parser.add_argument("--frames", type=int, default=300, help="frames per 720p clip (default 300 = 10 s)")
    parser.add_argument("--baseline-frames", type=int, default=60)
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--backend", default="auto")
    add_mirror_average_argument(
        parser,
        "the engine's mirror averaging for the headline figures (default: the engine's default); "
        "the other setting is measured beside it",
    )
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    settings = EngineSettings(classify_hz=15.0, backend=args.backend, mirror_average=args.mirror_average)
    with tempfile.TemporaryDirectory(prefix="benchmark-") as directory:
        print("generating 720p clips ...", file=sys.stderr)
        one = make_clip(Path(directory), 1, args.frames)
        four = make_clip(Path(directory), 4, args.frames)
        engine = build_engine(settings)
        try:
            print("throughput, 1 face ...", file=sys.stderr)
            one_face = throughput(engine, one)
            print("throughput, 4 faces ...", file=sys.stderr)
            four_faces = throughput(engine, four)
            print("latency, 30 fps camera-like source ...", file=sys.stderr)
            camera = latency(
                engine,
                VideoFileSource(one, source_id="camera", realtime=True, loop=True),
                args.latency_seconds,
            )
            print("latency, 240 fps source (faster than the engine) ...", file=sys.stderr)
            images = _first_frames(one, 60)
            fast = latency(engine, ReplaySource(images, 240.0, 10**9), args.latency_seconds)
            backend = engine.backend
        finally:
            engine.close()
        print("throughput without mirror averaging, 1 and 4 faces ...", file=sys.stderr)
        with build_engine(replace(settings, mirror_average=not settings.mirror_average)) as other:
            one_face_other = throughput(other, one)
            four_faces_other = throughput(other, four)
        print("baseline (Haar + keras model.predict per frame) ...", file=sys.stderr)
        reference = baseline(one, args.baseline_frames)

    results = {
        "fps_720p_1face": round(one_face["fps"], 1),
        "fps_720p_4faces": round(four_faces["fps"], 1),
        "mirror_average": settings.mirror_average,
        "fps_720p_1face_other_mirror_setting": round(one_face_other["fps"], 1),
        "fps_720p_4faces_other_mirror_setting": round(four_faces_other["fps"], 1),
        "latency_p50_ms": round(camera["p50_ms"], 1),
        "latency_p95_ms": round(camera["p95_ms"], 1),
        "baseline_fps_720p_1face": round(reference["fps"], 2),
        "speedup_vs_baseline": round(one_face["fps"] / reference["fps"], 1),
        "latency_fast_source_p95_ms": round(fast["p95_ms"], 1),
        "latency_growth_ms": round(fast["growth_ms"], 1),
        "fast_source_dropped": fast["dropped"],
        "classify_hz_per_face_1face": round(one_face["classify_hz_per_face"], 1),
        "classify_hz_per_face_4faces": round(four_faces["classify_hz_per_face"], 1),
        "faces_per_frame_4faces": round(four_faces["faces_per_frame"], 2),
        "stages_ms_1face": {name: round(value, 2) for name, value in one_face["stages_ms"].items()},
        "stages_ms_4faces": {name: round(value, 2) for name, value in four_faces["stages_ms"].items()},
        "details": {
            "1face": one_face,
            "4faces": four_faces,
            "camera": camera,
            "fast_source": fast,
            "baseline": reference,
            "1face_other_mirror_setting": one_face_other,
            "4faces_other_mirror_setting": four_faces_other,
        },
        "backend": backend,
        "classify_hz_setting": settings.classify_hz,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": [round(value, 2) for value in load_before],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
            "active_threads": threading.active_count(),
        },
    }
    results["targets_met"] = {
        "fps_720p_1face >= 60": results["fps_720p_1face"] >= TARGETS["fps_720p_1face"],
        "speedup_vs_baseline >= 6": results["speedup_vs_baseline"] >= TARGETS["speedup_vs_baseline"],
        "latency_p95_ms <= 50": results["latency_p95_ms"] <= TARGETS["latency_p95_ms"],
        "classify_hz_per_face >= 15": results["classify_hz_per_face_1face"] >= 15.0 * 0.95,
    }
    _print_table(results)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json_path}", file=sys.stderr)
    return 0


def _first_frames(clip: Path, count: int) -> list[np.ndarray]:
    source = VideoFileSource(clip)
    images = []
    while len(images) < count and (frame := source.read()) is not None:
        images.append(frame.image)
    source.close()
    return images


def _print_table(results: dict) -> None:
    one, four = results["stages_ms_1face"], results["stages_ms_4faces"]
    print(
        f"backend {results['backend']}, {results['machine']['cpus']} CPUs, load before "
        f"{results['machine']['load_average_before'][0]}"
    )
    print(f"{'':28s}{'1 face':>10s}{'4 faces':>10s}")
    print(
        f"{'processed fps (720p)':28s}{results['fps_720p_1face']:>10.1f}{results['fps_720p_4faces']:>10.1f}"
    )
    other = "off" if results["mirror_average"] else "on"
    print(
        f"{'  with mirror averaging ' + other:28s}{results['fps_720p_1face_other_mirror_setting']:>10.1f}"
        f"{results['fps_720p_4faces_other_mirror_setting']:>10.1f}"
    )
    for stage in ("decode", "detect", "crop", "classify", "draw"):
        print(f"{'  ' + stage + ' ms/frame':28s}{one[stage]:>10.2f}{four[stage]:>10.2f}")
    print(
        f"{'classify Hz per face':28s}{results['classify_hz_per_face_1face']:>10.1f}"
        f"{results['classify_hz_per_face_4faces']:>10.1f}"
    )
    print(
        f"latency p50 / p95 (30 fps camera): {results['latency_p50_ms']:.1f} / {results['latency_p95_ms']:.1f} ms"
    )
    print(
        f"latency p95 with a 240 fps source: {results['latency_fast_source_p95_ms']:.1f} ms, growth "
        f"{results['latency_growth_ms']:+.1f} ms, {results['fast_source_dropped']} frames dropped"
    )
    print(
        f"baseline (Haar + keras predict): {results['baseline_fps_720p_1face']:.2f} fps -> speed-up "
        f"{results['speedup_vs_baseline']:.1f}x"
    )
    print(
        "targets: "
        + ", ".join(f"{name}: {'yes' if met else 'NO'}" for name, met in results["targets_met"].items())
    )


if __name__ == "__main__":
    sys.exit(main())
