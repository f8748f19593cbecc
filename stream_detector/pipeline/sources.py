"""Frame sources (``FrameSource.read() -> Frame | None``) and the newest-frame capture thread.

``open_source(spec)`` turns what a user typed into a source:
- ``"0"``, ``"1"``...: a camera by index (timestamps: the monotonic clock at capture);
- ``rtsp://``, ``rtsp(s)``, ``http(s)://`` ...: a network stream, opened with open/read timeouts so a
  refusing server fails in seconds, not OpenCV's default 20 s (timestamps: monotonic at capture);
- a video file (timestamps: media time, or the monotonic clock when ``realtime=True`` paces it like
  a camera);
- an image file (one frame, or repeated when ``repeat=True``);
- a folder of images (in name order; unreadable files are skipped and counted).

``read()`` returns None only at a clean end (end of a file). A camera or stream that disappears, a
file that cannot be opened, an image that is not an image, a frame too large: ``SourceError`` with one
line naming the input. A video whose decoding stops before its declared frame count ends "cleanly" for
the caller but says so in ``VideoFileSource.stopped_early`` (``scan`` reports it).

``LatestFrameReader(source)`` runs ``read()`` on a thread and keeps only the newest frame in a
one-frame slot: a consumer slower than the source gets the latest picture, never a queue, so lag cannot
grow; every frame overwritten before it was taken is counted in ``dropped``. With
``drop_frames=False`` the thread instead waits for the consumer (decode overlapped with processing,
every frame kept: files). Reconnection on top of this belongs to the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from stream_detector.errors import SourceError
from stream_detector.pipeline.meters import monotonic_ms
from stream_detector.pipeline.types import Frame, FrameSource

log = logging.getLogger(__name__)

# What a file is, told by its first bytes, never by its name (a JPEG renamed .mp4 is still a JPEG).
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"GIF87a",
    b"GIF89a",
)
URL_PATTERN = re.compile(r"^(rtsps?|rtmps?|https?|udp|tcp|srt)://", re.IGNORECASE)
# Above this a frame is refused: 8K (33 MP) passes; a 100 MP scan or a decompression bomb does not.
MAX_FRAME_PIXELS = 40_000_000
STREAM_OPEN_TIMEOUT_MS = 5000
STREAM_READ_TIMEOUT_MS = 5000
DEFAULT_FPS = 30.0
# Failed reads in a row after which a file is taken to have ended (truncated) rather than damaged.
MAX_UNREADABLE_IN_A_ROW = 64


def _quiet_opencv() -> None:
    # OpenCV prints backend warnings on stderr for every failed open; our SourceError says it in one line.
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _check_frame_size(image: np.ndarray, name: str) -> None:
    _check_dimensions(image.shape[1], image.shape[0], name)


def _check_dimensions(width: int, height: int, name: str) -> None:
    """A frame's size against MAX_FRAME_PIXELS, known from its pixels or from a header before decoding."""
    if height * width > MAX_FRAME_PIXELS:
        raise SourceError(
            f"frame too large: {width}x{height} ({height * width / 1e6:.0f} MP, the limit is "
            f"{MAX_FRAME_PIXELS / 1e6:.0f} MP): {name}"
        )


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def is_image_file(path: str | Path) -> bool:
    """Whether a file holds a still image, by its content (anything else is tried as a video)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return webp or any(head.startswith(signature) for signature in IMAGE_SIGNATURES)


def is_video_file(path: str | Path) -> bool:
    """By content: an MP4/MOV (ISO boxes), AVI, Matroska/WebM, FLV or MPEG-TS file's first bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return False
    if head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return True
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV")):
        return True
    # MPEG-TS: a sync byte every 188 bytes.
    return len(head) >= 3 * 188 and all(head[index] == 0x47 for index in (0, 188, 376))


def image_dimensions(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header alone, or None when Pillow cannot tell."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check would refuse the header we want to read; ours follows it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as image:
                    return int(image.width), int(image.height)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # not an image Pillow knows: OpenCV decides below
        return None


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image, or SourceError naming the file."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"no such file: {path}")
    if not path.is_file():
        raise SourceError(f"not a file: {path}")
    # Refused from the header, before a decompression bomb (a small PNG of 25000x25000) is decoded.
    dimensions = image_dimensions(path)
    if dimensions is not None:
        _check_dimensions(dimensions[0], dimensions[1], str(path))
    try:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (cv2.error, OSError, MemoryError):
        image = None
    if image is None:
        raise SourceError(f"cannot decode image (not an image, corrupt or too large): {path}")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    image = _as_bgr(image)
    _check_frame_size(image, str(path))
    return np.ascontiguousarray(image)


class ImageSource:
    """One still image: one frame, or the same frame again and again (``repeat``) at ``fps``."""

    def __init__(
        self,
        path: str | Path,
        source_id: str = "0",
        repeat: bool = False,
        fps: float = DEFAULT_FPS,
        clock: Callable[[], float] = monotonic_ms,
    ) -> None:
        self.path = Path(path)
        self.image = read_image(self.path)
        self.source_id = source_id
        self.repeat = repeat
        self.fps = fps
        self._clock = clock
        self._index = 0
        self._next_due = None

    def read(self) -> Frame | None:
        if self._index > 0 and not self.repeat:
            return None
        if self.repeat:
            # Paced like a camera, with live timestamps, so the window and the detector see a video.
            now = self._clock()
            if self._next_due is not None and now < self._next_due:
                time.sleep((self._next_due - now) / 1000.0)
            timestamp = self._clock()
            self._next_due = timestamp + 1000.0 / self.fps
        else:
            timestamp = 0.0
        frame = Frame(self.image, self._index, timestamp, self.source_id)
        self._index += 1
        return frame

    def close(self) -> None:
        pass


class ImageFolderSource:
    """The images of a folder in name order; files that do not decode are skipped (``skipped``).

    One frame per image, ``frame_interval_ms`` apart in media time; or with ``realtime``, each image
    held for ``frame_interval_ms`` as a 30 fps live stream (a slideshow in the window).
    """

    def __init__(
        self,
        path: str | Path,
        source_id: str = "0",
        frame_interval_ms: float = 1000.0,
        realtime: bool = False,
        clock: Callable[[], float] = monotonic_ms,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"not a folder: {self.path}")
        entries = sorted(entry for entry in self.path.iterdir() if entry.is_file())
        self.files = [entry for entry in entries if is_image_file(entry)]
        # Every other file is reported, never silently dropped (a video is scanned on its own).
        self.not_images = [entry.name for entry in entries if entry not in self.files]
        if not self.files:
            raise SourceError(f"no images in folder: {self.path}")
        self.source_id = source_id
        self.frame_interval_ms = frame_interval_ms
        self.realtime = realtime
        self.skipped: list[str] = []
        self.current_file: Path | None = None
        self._clock = clock
        self._position = 0
        self._index = 0
        self._image: np.ndarray | None = None
        self._shown_since: float | None = None
        self._next_due: float | None = None

    def _next_image(self) -> np.ndarray | None:
        while self._position < len(self.files):
            path = self.files[self._position]
            self._position += 1
            try:
                image = read_image(path)
            except SourceError as error:
                log.warning("skipping %s", error)
                self.skipped.append(str(path))
                continue
            self.current_file = path
            return image
        return None

    def read(self) -> Frame | None:
        if not self.realtime:
            image = self._next_image()
            if image is None:
                return None
            frame = Frame(image, self._index, self._index * self.frame_interval_ms, self.source_id)
            self._index += 1
            return frame
        now = self._clock()
        if self._next_due is not None and now < self._next_due:
            time.sleep((self._next_due - now) / 1000.0)
        now = self._clock()
        if self._image is None or now - self._shown_since >= self.frame_interval_ms:
            self._image = self._next_image()
            self._shown_since = now
            if self._image is None:
                return None
        self._next_due = now + 1000.0 / DEFAULT_FPS
        frame = Frame(self._image, self._index, now, self.source_id)
        self._index += 1
        return frame

    def close(self) -> None:
        pass


def mp4_top_level_boxes(path: str | Path, limit: int = 64) -> list[str]:
    """The types of an ISO-BMFF (MP4/MOV) file's top-level boxes, read from their headers only.

    Empty for anything else. A recording cut off before it was finalised has ``ftyp`` and ``mdat``
    (its last box running past the end of the file) but no ``moov``.
    """
    types: list[str] = []
    with open(path, "rb") as file:
        size_of_file = os.fstat(file.fileno()).st_size
        offset = 0
        while offset + 8 <= size_of_file and len(types) < limit:
            file.seek(offset)
            header = file.read(16)
            size, kind = struct.unpack(">I4s", header[:8])
            # Box types are four letters, digits or spaces (and the copyright sign of QuickTime).
            if not all(chr(byte).isalnum() or byte in (0x20, 0xA9) for byte in kind):
                return types
            if size == 1 and len(header) == 16:
                size = struct.unpack(">Q", header[8:16])[0]
            elif size == 0:
                size = size_of_file - offset
            if size < 8:
                break
            types.append(kind.decode("ascii"))
            offset += size
    return types


class VideoFileSource:
    """A video file decoded with OpenCV (FFmpeg).

    Timestamps are media time (index / fps) unless ``realtime``: then frames are released at the
    file's own rate and stamped with the monotonic clock, as a camera would deliver them. ``loop``
    starts again at the end (realtime only makes sense with it for a demo window).
    """

    def __init__(
        self,
        path: str | Path,
        source_id: str = "0",
        realtime: bool = False,
        loop: bool = False,
        clock: Callable[[], float] = monotonic_ms,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"no such file: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"not a file: {self.path}")
        _quiet_opencv()
        self._capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"cannot open video ({self._why_unreadable()}): {self.path}")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # Containers without a usable rate report 0 or absurd values; 30 is what cameras mostly do.
        self.fps = fps if 1.0 <= fps <= 240.0 else DEFAULT_FPS
        self.frame_count = max(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if self.width * self.height > MAX_FRAME_PIXELS:
            self._capture.release()
            _check_dimensions(self.width, self.height, str(self.path))
        self.source_id = source_id
        self.realtime = realtime
        self.loop = loop
        self._clock = clock
        self._index = 0
        self._frames_this_pass = 0
        self._start_ms: float | None = None
        self.frames_read = 0
        # Frames FFmpeg could not decode but read past (a damaged stretch): counted, not an end.
        self.frames_unreadable = 0
        self.first_unreadable_s: float | None = None
        self._unreadable_this_pass = 0
        self.stopped_early: str | None = None

    def read(self) -> Frame | None:
        pending = 0  # failed reads since the last decoded frame: damage only if a frame follows
        while True:
            ok, image = self._capture.read()
            if ok and image is not None:
                break
            # FFmpeg goes on after a damaged packet: keep reading while the header promises more.
            position = self._frames_this_pass + self._unreadable_this_pass + pending
            if pending < MAX_UNREADABLE_IN_A_ROW and (not self.frame_count or position < self.frame_count):
                pending += 1
                continue
            if self._frames_this_pass == 0:
                if self._index == 0:
                    raise SourceError(
                        f"cannot decode any frame of video ({self._why_unreadable()}): {self.path}"
                    )
                return None
            if self.loop:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._frames_this_pass = self._unreadable_this_pass = 0
                pending = 0
                continue
            self._note_end()
            return None
        if pending:
            if self.first_unreadable_s is None:
                self.first_unreadable_s = (self._frames_this_pass + self._unreadable_this_pass) / self.fps
            self._unreadable_this_pass += pending
            self.frames_unreadable += pending
        image = _as_bgr(image)
        if self._index == 0:
            _check_frame_size(image, str(self.path))
        if self.realtime:
            if self._start_ms is None:
                self._start_ms = self._clock()
            due = self._start_ms + self._index * 1000.0 / self.fps
            wait = due - self._clock()
            if wait > 0:
                time.sleep(wait / 1000.0)
            timestamp = self._clock()
        else:
            # Media time: frames that could not be decoded still took their place in the clip.
            timestamp = (self._frames_this_pass + self._unreadable_this_pass) * 1000.0 / self.fps
        frame = Frame(np.ascontiguousarray(image), self._index, timestamp, self.source_id)
        self._index += 1
        self._frames_this_pass += 1
        self.frames_read = max(self.frames_read, self._frames_this_pass)
        return frame

    def _why_unreadable(self) -> str:
        """Why nothing decodes: an MP4 cut off before its index was written says so."""
        boxes = mp4_top_level_boxes(self.path)
        if boxes and boxes[0] == "ftyp" and "moov" not in boxes:
            return (
                "an MP4 cut off before its index (moov atom) was written: no frame in it can be located "
                "without that index; recover it with a tool such as untrunc and a healthy file from the "
                "same camera"
            )
        return "unreadable, corrupt, or by its content neither a video nor an image"

    def _note_end(self) -> None:
        # Frame counts in headers are estimates; a few frames short is normal, a large gap is damage.
        expected = self.frame_count
        seen = self._frames_this_pass + self._unreadable_this_pass
        if expected and seen < expected - max(2, int(0.02 * expected)):
            self.stopped_early = (
                f"decoding stopped after frame {seen} of {expected} "
                f"(at {seen / self.fps:.2f} s): the file is truncated or corrupt"
            )

    def close(self) -> None:
        self._capture.release()


class CaptureSource:
    """A camera (by index) or a network stream: live timestamps; losing it is a SourceError."""

    def __init__(
        self,
        spec: str | int,
        source_id: str = "0",
        open_timeout_ms: int = STREAM_OPEN_TIMEOUT_MS,
        read_timeout_ms: int = STREAM_READ_TIMEOUT_MS,
        clock: Callable[[], float] = monotonic_ms,
    ) -> None:
        _quiet_opencv()
        self.spec = spec
        self.is_camera = isinstance(spec, int)
        self.source_id = source_id
        self._clock = clock
        self._index = 0
        if self.is_camera:
            self.name = f"camera {spec}"
            if os.name == "posix" and Path("/dev").is_dir() and not Path(f"/dev/video{spec}").exists():
                raise SourceError(f"no camera at index {spec} (/dev/video{spec} does not exist)")
            self._capture = cv2.VideoCapture(int(spec))
        else:
            self.name = redact_url(str(spec))
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                open_timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                read_timeout_ms,
            ]
            self._capture = cv2.VideoCapture(str(spec), cv2.CAP_FFMPEG, params)
        if not self._capture.isOpened():
            self._capture.release()
            if self.is_camera:
                raise SourceError(f"cannot open camera {spec} (busy, no permission or not a camera)")
            raise SourceError(
                f"cannot open stream {self.name} (refused, unreachable, timed out or not a video)"
            )
        # What a scan of a stream reports, as for a file (a live source has no frame count).
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 240.0 else DEFAULT_FPS
        self.frame_count = 0
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.frames_unreadable = 0
        self.first_unreadable_s: float | None = None
        self.stopped_early: str | None = None

    def read(self) -> Frame | None:
        ok, image = self._capture.read()
        if not ok or image is None:
            raise SourceError(f"{self.name} stopped delivering frames (disconnected?)")
        image = _as_bgr(image)
        if self._index == 0:
            _check_frame_size(image, self.name)
        frame = Frame(np.ascontiguousarray(image), self._index, self._clock(), self.source_id)
        self._index += 1
        return frame

    def close(self) -> None:
        self._capture.release()


def redact_url(url: str) -> str:
    """A URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def is_url(spec: str) -> bool:
    return bool(URL_PATTERN.match(spec))


def open_source(
    spec: str,
    source_id: str = "0",
    realtime: bool = False,
    loop: bool = False,
) -> FrameSource:
    """The source a user means by ``spec``: camera index, URL, video file, image or folder.

    ``realtime`` paces files (and repeats still images) like a camera, with live timestamps: what a
    window wants. Without it files are read as fast as the caller reads, in media time: what ``scan``
    wants.
    """
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty source (give a camera index, a file, a folder or a URL)")
    if spec.isdigit():
        return CaptureSource(int(spec), source_id)
    if is_url(spec):
        return CaptureSource(spec, source_id)
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"no such file: {path}")
    if path.is_dir():
        return ImageFolderSource(path, source_id, realtime=realtime)
    if is_image_file(path):
        return ImageSource(path, source_id, repeat=realtime)
    return VideoFileSource(path, source_id, realtime=realtime, loop=loop)


def forget_traceback(error: BaseException) -> None:
    """Drop the frames an exception (and those chained to it) holds.

    A capture thread's exception is kept by its reader and its traceback holds the reader's own frame:
    a reference cycle through the decoder (megabytes of buffers per camera) that only Python's full,
    rare garbage collection would free. A camera that reconnects every few minutes would look like a
    leak (measured: +60-80 MiB of RSS per restart of the server of 8 cameras, for many minutes).
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        item.__traceback__ = None
        pending += [item.__context__, item.__cause__]


class LatestFrameReader:
    """A capture thread over a FrameSource with a one-frame slot (see the module docstring).

    ``read(timeout)`` returns the newest frame not yet taken, waiting for one if needed; None at the
    source's clean end, or when ``timeout`` (seconds) passes first (check ``ended`` to tell them
    apart); the source's error (SourceError) is raised in the caller's thread once the slot is empty.
    ``close()`` stops the thread (joined with a timeout) and closes the source.
    """

    def __init__(
        self,
        source: FrameSource,
        drop_frames: bool = True,
        name: str = "capture",
        join_timeout_s: float = 6.0,
    ) -> None:
        self.source = source
        self.drop_frames = drop_frames
        self.join_timeout_s = join_timeout_s
        self.captured = 0
        self.dropped = 0
        self.delivered = 0
        self._slot: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def ended(self) -> bool:
        """True once the source has ended cleanly and its last frame has been taken. A failed source
        is not "ended": the next ``read`` raises its error, so a caller polling with a timeout cannot
        mistake a lost camera for the end of a file."""
        with self._condition:
            return self._ended and self._error is None and self._slot is None

    @property
    def failed(self) -> bool:
        with self._condition:
            return self._error is not None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                with self._condition:
                    if not self.drop_frames:
                        while self._slot is not None and not self._stop.is_set():
                            self._condition.wait(0.1)
                    if self._slot is not None:
                        self.dropped += 1
                    self._slot = frame
                    self.captured += 1
                    self._condition.notify_all()
        except BaseException as error:  # handed to the consumer, who decides what it means
            if not isinstance(error, SourceError):
                log.exception("capture of %s failed", getattr(self.source, "source_id", "source"))
            forget_traceback(error)
            with self._condition:
                self._error = error
                self._condition.notify_all()
            return
        with self._condition:
            self._ended = True
            self._condition.notify_all()

    def read(self, timeout: float | None = None) -> Frame | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._slot is None:
                if self._error is not None:
                    raise self._error
                if self._ended or self._stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining if remaining is not None else 0.5)
            frame, self._slot = self._slot, None
            self.delivered += 1
            self._condition.notify_all()
            return frame

    def close(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        self._thread.join(self.join_timeout_s)
        if self._thread.is_alive():
            # A blocked network read; its own read timeout ends it. Closing the capture under it
            # would crash OpenCV, so leave the source to the daemon thread.
            log.warning("capture thread did not stop within %.1f s", self.join_timeout_s)
            return
        self.source.close()

    def __enter__(self) -> LatestFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
