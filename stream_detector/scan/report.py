"""``stream-detector scan PATH``: verdicts for an image, a folder of images or a video file, as JSON.

    stream-detector scan clip.mp4 [--json report.json] [--output annotated.mp4]

A video goes through the live engine frame by frame (every frame detected and, by default, every
face classified), with the same tracking and smoothing as the webcam window; the report has one entry
per face track and an overall verdict. An image is one frame: each face gets the state its one score
deserves. A folder is scanned image by image.

The verdict rule (``track_state`` and ``file_verdict``):
- a track is FAKE if its smoothed verdict was FAKE for at least ``MIN_FAKE_MS`` (1 s) or, for a
  shorter track, for at least half of its time on screen; else REAL if its verdict was REAL for at
  least half of its time on screen; else UNCERTAIN. (In an image: the state of the face's one score.)
- the file is NO_FACE when no face was found; FAKE if any track is FAKE; otherwise tracks seen for
  less than ``MIN_TRACK_MS`` (0.5 s: passers-by and false detections) are set aside unless they are
  all there is, and the file is REAL if every remaining track is REAL, else UNCERTAIN.
- ``p_fake`` beside the verdict is the mean p(fake) of the most suspicious track that decided it
  (the highest among the FAKE tracks when FAKE, among the remaining tracks otherwise); null without
  any classified face.

A video whose decoding stops early (truncated or corrupt) still gets its report, for the frames that
could be read, with ``complete: false`` and ``stopped`` saying where; frames FFmpeg cannot decode in
a damaged stretch are skipped and counted (``frames_unreadable``, ``damaged`` says where the first
was), which also makes the report ``complete: false``. The command then exits 1.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stream_detector.errors import SourceError, StreamDetectorError
from stream_detector.pipeline.smoothing import SmootherSettings, classify_score
from stream_detector.pipeline.types import VerdictState

log = logging.getLogger(__name__)

MIN_FAKE_MS = 1000.0
MIN_TRACK_MS = 500.0
NO_FACE = "NO_FACE"
RULE = (
    "track FAKE if FAKE for >= 1 s (or half its time when shorter); REAL if REAL for >= half its time; "
    "else UNCERTAIN. File: NO_FACE without faces; FAKE if any track FAKE; else, ignoring tracks < 0.5 s, "
    "REAL if all REAL, else UNCERTAIN. p_fake: mean p(fake) of the most suspicious deciding track."
)


@dataclass
class TrackSummary:
    """What a scan learned about one face track."""

    id: int
    frames_seen: int = 0
    scores: list[float] = field(default_factory=list)
    # The track's smoothed evidence (Verdict.p_smoothed) on each frame it had enough of it to decide.
    smoothed: list[float] = field(default_factory=list)
    first_ms: float = 0.0
    last_ms: float = 0.0
    state_ms: dict[str, float] = field(default_factory=lambda: {state.value: 0.0 for state in VerdictState})
    time_to_first_verdict_ms: float | None = None
    state: str = VerdictState.UNCERTAIN.value

    @property
    def duration_ms(self) -> float:
        return sum(self.state_ms.values())

    @property
    def mean_p_fake(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "frames_seen": self.frames_seen,
            "frames_classified": len(self.scores),
            "mean_p_fake": _round(self.mean_p_fake),
            "max_p_fake": _round(max(self.scores)) if self.scores else None,
            "mean_p_smoothed": _round(sum(self.smoothed) / len(self.smoothed)) if self.smoothed else None,
            "max_p_smoothed": _round(max(self.smoothed)) if self.smoothed else None,
            "state": self.state,
            "first_ms": round(self.first_ms, 1),
            "last_ms": round(self.last_ms, 1),
            "fake_ms": round(self.state_ms[VerdictState.FAKE.value], 1),
            "real_ms": round(self.state_ms[VerdictState.REAL.value], 1),
            "uncertain_ms": round(self.state_ms[VerdictState.UNCERTAIN.value], 1),
            "time_to_first_verdict_ms": _round(self.time_to_first_verdict_ms, 1),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def track_state(track: TrackSummary) -> str:
    """The state of a whole video track from the time it spent in each smoothed state."""
    duration = track.duration_ms
    fake, real = track.state_ms[VerdictState.FAKE.value], track.state_ms[VerdictState.REAL.value]
    if fake > 0 and fake >= min(MIN_FAKE_MS, 0.5 * duration):
        return VerdictState.FAKE.value
    if real > 0 and real >= 0.5 * duration:
        return VerdictState.REAL.value
    return VerdictState.UNCERTAIN.value


def file_verdict(tracks: list[TrackSummary], still: bool = False) -> tuple[str, float | None]:
    """(verdict, p_fake) for a file from its tracks' states (the rule in the module docstring)."""
    if not tracks:
        return NO_FACE, None
    fakes = [track for track in tracks if track.state == VerdictState.FAKE.value]
    if fakes:
        return VerdictState.FAKE.value, _most_suspicious(fakes)
    considered = tracks if still else [track for track in tracks if track.duration_ms >= MIN_TRACK_MS]
    considered = considered or tracks
    if all(track.state == VerdictState.REAL.value for track in considered):
        return VerdictState.REAL.value, _most_suspicious(considered)
    return VerdictState.UNCERTAIN.value, _most_suspicious(considered)


def _most_suspicious(tracks: list[TrackSummary]) -> float | None:
    means = [track.mean_p_fake for track in tracks if track.mean_p_fake is not None]
    return _round(max(means)) if means else None


def _report(path: Path | str, kind: str, tracks: list[TrackSummary], engine, still: bool) -> dict[str, Any]:
    verdict, p_fake = file_verdict(tracks, still=still)
    first_verdicts = [track.time_to_first_verdict_ms for track in tracks if track.time_to_first_verdict_ms]
    return {
        "path": str(path),
        "kind": kind,
        "verdict": verdict,
        "p_fake": p_fake,
        "rule": RULE,
        "model": engine.backend,
        "detector": f"blazeface-{engine.settings.detector_range}",
        "tracks": [track.to_json() for track in tracks],
        "time_to_first_verdict_ms": _round(min(first_verdicts), 1) if first_verdicts else None,
    }


def _still_tracks(result, smoothing: SmootherSettings) -> list[TrackSummary]:
    tracks = []
    for face in result.faces:
        track = TrackSummary(id=face.id, frames_seen=1)
        if face.p_fake is not None:
            track.scores.append(face.p_fake)
            track.state = classify_score(face.p_fake, smoothing).value
        tracks.append(track)
    return tracks


def scan_image(path: Path, settings, output: Path | None) -> dict[str, Any]:
    import cv2

    from stream_detector.pipeline.engine import build_engine
    from stream_detector.pipeline.overlay import draw
    from stream_detector.pipeline.sources import ImageSource

    frame = ImageSource(path).read()
    with build_engine(settings, video=False) as engine:
        result = engine.process(frame)
        tracks = _still_tracks(result, settings.smoothing)
        report = _report(path, "image", tracks, engine, still=True)
    report.update(width=frame.image.shape[1], height=frame.image.shape[0])
    if output is not None:
        verdicts = [
            _still_verdict(verdict, track) for verdict, track in zip(result.verdicts, tracks, strict=True)
        ]
        if not cv2.imwrite(str(output), draw(frame.image, verdicts)):
            raise StreamDetectorError(f"cannot write image {output} (use .png or .jpg)")
    return report


def _still_verdict(verdict, track: TrackSummary):
    p = track.mean_p_fake if track.mean_p_fake is not None else verdict.p_smoothed
    return replace(verdict, state=VerdictState(track.state), p_smoothed=p)


def scan_folder(path: Path, settings) -> dict[str, Any]:
    from stream_detector.pipeline.engine import build_engine
    from stream_detector.pipeline.sources import ImageFolderSource, is_video_file

    source = ImageFolderSource(path)
    files = []
    with build_engine(settings, video=False) as engine:
        while (frame := source.read()) is not None:
            # Unrelated photos: a source id per file, so no track links one photo to the next.
            source_id = str(source.current_file)
            result = engine.process(replace(frame, source_id=source_id))
            engine.close_source(source_id)
            tracks = _still_tracks(result, settings.smoothing)
            files.append(_report(source.current_file, "image", tracks, engine, still=True))
        backend = engine.backend
    # The folder's verdict is the file rule over its images, each image standing for one track.
    images = [
        TrackSummary(
            id=index, scores=[entry["p_fake"]] if entry["p_fake"] is not None else [], state=entry["verdict"]
        )
        for index, entry in enumerate(files)
        if entry["verdict"] != NO_FACE
    ]
    verdict, p_fake = file_verdict(images, still=True)
    videos = [name for name in source.not_images if is_video_file(path / name)]
    for entry in files:
        entry.pop("rule")
    return {
        "path": str(path),
        "kind": "folder",
        "verdict": verdict,
        "p_fake": p_fake,
        "rule": "FAKE if any image is FAKE; NO_FACE if none has a face; REAL if every image with a face is "
        "REAL; else UNCERTAIN. Per image: each face's state from its one score.",
        "model": backend,
        "files": files,
        "skipped": source.skipped,
        # Files that are not images: videos are named apart, with why they are not in the verdict.
        "not_images": source.not_images,
        "videos": videos,
        "videos_note": "videos are not part of a folder's verdict (it judges still images); scan each "
        "one: stream-detector scan FILE"
        if videos
        else None,
    }


def scan_video(
    path: Path,
    settings,
    output: Path | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    engine=None,
) -> dict[str, Any]:
    """The report for one video. ``engine`` may be shared between calls (each file is its own source
    there, closed at the end); without it one is built from ``settings`` and closed."""
    from tqdm import tqdm

    from stream_detector.pipeline.engine import build_engine
    from stream_detector.pipeline.overlay import draw
    from stream_detector.pipeline.sources import CaptureSource, LatestFrameReader, VideoFileSource, is_url

    stream = is_url(str(path))
    if stream:
        source = CaptureSource(str(path), source_id="stream")
        label = source.name  # its password masked: the report and the bar show the URL
    else:
        source = VideoFileSource(path, source_id=str(path))
        label = str(path)
    frame_ms = 1000.0 / source.fps
    limit = source.frame_count or None
    if max_seconds is not None:
        limit = min(limit or 10**9, max(1, int(round(max_seconds * source.fps))))
    own_engine = engine is None
    if own_engine:
        try:
            engine = build_engine(settings)
        except BaseException:
            source.close()
            raise
    engine.prepare(source.source_id)
    # Decoding on its own thread overlaps with detection; no frame is dropped.
    reader = LatestFrameReader(source, drop_frames=False, name="scan-decode")
    writer = None
    tracks: dict[int, TrackSummary] = {}
    frames = frames_with_faces = 0
    started = time.monotonic()
    bar = tqdm(
        total=limit,
        unit="frame",
        file=sys.stderr,
        disable=not progress,
        desc=Path(label).name if not stream else label,
        leave=False,
    )
    try:
        while limit is None or frames < limit:
            # A stream's reported rate may be wrong (or absent): its watch time is wall-clock time too.
            if stream and max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            try:
                frame = reader.read()
            except SourceError as error:
                if not stream or frames == 0:
                    raise
                # A stream lost mid-scan: the report covers what arrived, and says where it stopped.
                source.stopped_early = str(error)
                break
            if frame is None:
                break
            result = engine.process(frame)
            frames += 1
            frames_with_faces += bool(result.faces)
            for face, verdict in zip(result.faces, result.verdicts, strict=True):
                track = tracks.get(face.id)
                if track is None:
                    track = tracks[face.id] = TrackSummary(id=face.id, first_ms=frame.timestamp_ms)
                track.frames_seen += 1
                track.last_ms = frame.timestamp_ms
                track.state_ms[verdict.state.value] += frame_ms
                if face.p_fake is not None and face.id not in result.unusable_ids:
                    track.scores.append(face.p_fake)
                if verdict.evidence >= engine.settings.smoothing.min_evidence:
                    track.smoothed.append(verdict.p_smoothed)
                if verdict.first_verdict_ms is not None:
                    track.time_to_first_verdict_ms = verdict.first_verdict_ms
            if output is not None:
                if writer is None:
                    writer = _open_writer(output, frame.image.shape, source.fps)
                writer.write(draw(frame.image, result.verdicts, status=f"{frame.timestamp_ms / 1000:.2f} s"))
            bar.update(1)
    finally:
        bar.close()
        reader.close()
        if own_engine:
            engine.close()
        else:
            engine.close_source(source.source_id)
        if writer is not None:
            writer.release()
    elapsed = time.monotonic() - started
    if frames == 0 and stream:
        raise SourceError(f"stream {source.name} delivered no frame")
    if frames == 0:
        raise SourceError(
            f"cannot decode any frame of video (by its content neither a video nor an image): {label}"
        )
    for track in tracks.values():
        track.state = track_state(track)
    report = _report(
        label,
        "video" if not stream else "stream",
        sorted(tracks.values(), key=lambda track: track.id),
        engine,
        still=False,
    )
    stopped = None
    if source.stopped_early:
        stopped = {
            "frame": frames,
            "time_s": round(frames / source.fps, 3),
            "reason": source.stopped_early,
        }
    damaged = None
    if source.frames_unreadable:
        damaged = {
            "first_at_s": round(source.first_unreadable_s or 0.0, 3),
            "reason": f"{source.frames_unreadable} frame(s) could not be decoded and were skipped",
        }
    report.update(
        complete=stopped is None and damaged is None,
        stopped=stopped,
        damaged=damaged,
        frames=frames,
        frames_unreadable=source.frames_unreadable,
        frames_with_faces=frames_with_faces,
        fps=round(source.fps, 3),
        duration_s=round((frames + source.frames_unreadable) / source.fps, 3),
        width=source.width,
        height=source.height,
        processing={"seconds": round(elapsed, 2), "fps": round(frames / max(elapsed, 1e-9), 1)},
    )
    if output is not None:
        report["output"] = str(output)
    return report


def _open_writer(output: Path, shape: tuple[int, ...], fps: float):
    import cv2

    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if output.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(output), fourcc, fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise StreamDetectorError(f"cannot write video {output} (use .mp4 or .avi)")
    return writer
