"""Generated media for tests and the benchmark: the astronaut's real face moved and scaled over a plain
background, written as short clips. Nothing here needs a camera or downloaded data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The astronaut photo (512x512) with her head in the middle of this square: forehead, hair and chin,
# enough context for BlazeFace. Her face box inside the square is about FACE_IN_PATCH.
HEAD_REGION = (100, 0, 340, 240)  # x1, y1, x2, y2 in the 512x512 photo
FACE_IN_PATCH = (73.0, 67.0, 176.0, 170.0)  # the detector's box, relative to HEAD_REGION, at scale 1


def head_patch(astronaut_bgr: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = HEAD_REGION
    return np.ascontiguousarray(astronaut_bgr[y1:y2, x1:x2])


@dataclass(frozen=True)
class Placement:
    """A head patch at (x, y) (its top-left corner, pixels) scaled by ``scale``."""

    x: float
    y: float
    scale: float = 1.0

    def face_box(self) -> tuple[float, float, float, float]:
        """Roughly where the detector should find the face of this placement."""
        fx1, fy1, fx2, fy2 = FACE_IN_PATCH
        return (
            self.x + fx1 * self.scale,
            self.y + fy1 * self.scale,
            self.x + fx2 * self.scale,
            self.y + fy2 * self.scale,
        )


def background(width: int, height: int, shade: int = 96) -> np.ndarray:
    """A soft vertical gradient: plain enough to hold no faces, not so flat that codecs erase it."""
    column = np.linspace(shade - 30, shade + 30, height, dtype=np.float32).astype(np.uint8)
    image = np.repeat(column[:, None], width, axis=1)
    return cv2.merge([image, image, (image * 0.9).astype(np.uint8)])


def compose(
    patch: np.ndarray, placements: Sequence[Placement], width: int, height: int, shade: int = 96
) -> np.ndarray:
    """A frame with one head per placement, later placements drawn over earlier ones."""
    frame = background(width, height, shade)
    for placement in placements:
        size = max(int(round(patch.shape[0] * placement.scale)), 8)
        resized = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        x, y = int(round(placement.x)), int(round(placement.y))
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + size, width), min(y + size, height)
        if x2 > x1 and y2 > y1:
            frame[y1:y2, x1:x2] = resized[y1 - y : y2 - y, x1 - x : x2 - x]
    return frame


def moving_face_path(count: int, width: int, height: int, scale_from: float = 0.8, scale_to: float = 1.2):
    """Placements of one head drifting left to right and growing, over ``count`` frames."""
    placements = []
    for index in range(count):
        progress = index / max(count - 1, 1)
        scale = scale_from + (scale_to - scale_from) * progress
        size = 240 * scale
        x = 0.1 * width + progress * (0.8 * width - size)
        y = (height - size) / 2 + 0.05 * height * np.sin(progress * np.pi * 2)
        placements.append(Placement(float(x), float(y), float(scale)))
    return placements


def moving_face_frames(
    astronaut_bgr: np.ndarray, count: int = 30, width: int = 640, height: int = 360
) -> tuple[list[np.ndarray], list[tuple[float, float, float, float]]]:
    """Frames of the moving, scaling head and the expected face box in each."""
    patch = head_patch(astronaut_bgr)
    placements = moving_face_path(count, width, height)
    frames = [compose(patch, [placement], width, height) for placement in placements]
    return frames, [placement.face_box() for placement in placements]


# Staggered so that every head sits well inside BlazeFace full-range's anchor grid: in a plain 2x2
# grid one of four identical heads scores below 0.5 in most frames.
FOUR_FACE_CENTRES = ((0.2, 0.3), (0.45, 0.7), (0.65, 0.3), (0.85, 0.7))


def grid_faces_frames(
    astronaut_bgr: np.ndarray, count: int, width: int, height: int, faces: int, scale: float = 1.3
) -> list[np.ndarray]:
    """``faces`` heads (1 to 4) swaying a little (centred when alone), for the benchmark's clips."""
    patch = head_patch(astronaut_bgr)
    size = patch.shape[0] * scale
    centres = [(0.5, 0.5)] if faces == 1 else list(FOUR_FACE_CENTRES[:faces])
    anchors = [(width * x - size / 2, height * y - size / 2) for x, y in centres]
    frames = []
    for index in range(count):
        sway = 40 * np.sin(index / 15.0)
        placements = [Placement(x + sway, y + sway / 3, scale) for x, y in anchors]
        frames.append(compose(patch, placements, width, height))
    return frames


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 30.0) -> Path:
    """Write frames with OpenCV: MJPG in .avi (frame-exact, truncation-tolerant), mp4v otherwise."""
    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_webm(path: str | Path, frames: Sequence[np.ndarray], fps: int = 15) -> Path:
    """Frames as a VP8 WebM (PyAV's libvpx): what a browser's <video> plays without licensed codecs."""
    import av

    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 3_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
