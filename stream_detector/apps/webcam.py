"""``stream-detector webcam``: the live overlay window on a camera, a video file, an image or a stream.

Keys: q or Esc quits, p pauses (frames keep being taken and dropped, so un-pausing shows *now*),
s saves the annotated frame as a PNG. Closing the window quits too.

Threads: a capture thread (sources.LatestFrameReader) keeps only the newest frame; the main thread
runs the engine, draws and shows. So when the engine is slower than the camera the window shows the
newest picture with a constant lag, and the HUD counts the frames dropped on the way.

No display, no GUI in OpenCV, or no camera: one line saying what to do instead. ``cv2.imshow`` on a
display that cannot be opened aborts the process from C++, so the display is checked first.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

from stream_detector.apps.arguments import add_engine_arguments
from stream_detector.errors import SourceError, StreamDetectorError

log = logging.getLogger(__name__)

DEMO_CLIP = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
DEMO_NOTE = "no camera found: demo clip (--source for yours)"
QUIT_KEYS = {ord("q"), ord("Q"), 27}
PAUSE_KEYS = {ord("p"), ord("P")}
SNAPSHOT_KEYS = {ord("s"), ord("S")}
ALTERNATIVES = (
    "to try it without a camera, run on a file (stream-detector webcam --source clip.mp4), "
    "an RTSP/HTTP stream (--source rtsp://host:8554/path), or open the WebRTC page (stream-detector serve)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=None,
        help="camera index (default 0; without a camera the demo clip plays), video file, image, folder "
        "of images, or rtsp://, http(s):// URL",
    )
    add_engine_arguments(parser, classify_hz=15.0)
    parser.add_argument("--loop", action="store_true", help="play a video file again at its end")
    parser.add_argument("--snapshot-dir", default=".", help="where the s key saves PNGs (default: here)")
    parser.add_argument("--title", default="stream-detector", help="window title")
    parser.add_argument("--max-seconds", type=float, default=None, help="quit after this many seconds")


def check_display() -> None:
    """Raise a StreamDetectorError unless a window can be opened (instead of OpenCV's abort)."""
    import cv2

    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() in ("NONE", "NO"):
        raise StreamDetectorError(
            "this OpenCV build has no GUI support, so no window can open; use "
            "`stream-detector scan FILE --output annotated.mp4` or `stream-detector serve`"
        )
    if not sys.platform.startswith("linux"):
        return
    display = os.environ.get("DISPLAY")
    if not display:
        if os.environ.get("WAYLAND_DISPLAY"):
            return
        raise StreamDetectorError(
            "no display (DISPLAY is not set), so no window can open: run it in a desktop session "
            "(or under Xvfb), or use `stream-detector scan FILE --output annotated.mp4` or `stream-detector serve`"
        )
    x11 = xlib()
    if x11 is None:
        return  # Qt may still manage (e.g. its own xcb); nothing to probe with
    connection = x11.XOpenDisplay(display.encode())
    if not connection:
        raise StreamDetectorError(
            f"cannot open display {display!r} (no X server there?), so no window can open; "
            "use `stream-detector scan FILE --output annotated.mp4` or `stream-detector serve`"
        )
    x11.XCloseDisplay(connection)


def open_live_source(spec: str, loop: bool):
    from stream_detector.pipeline.sources import open_source

    try:
        return open_source(spec, realtime=True, loop=loop)
    except SourceError as error:
        if spec.strip().isdigit():
            raise SourceError(f"{error}; {ALTERNATIVES}") from None
        raise


def snapshot_path(directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for number in range(1000):
        path = directory / f"snapshot-{stamp}-{number:03d}.png"
        if not path.exists():
            return path
    raise StreamDetectorError(f"too many snapshots this second in {directory}")


def run(args: argparse.Namespace) -> int:
    demo = False
    if args.source is None:
        # No --source: the first camera, or, on a machine without one, the demo clip.
        try:
            source = open_live_source("0", args.loop)
        except SourceError as error:
            if not DEMO_CLIP.is_file():
                raise
            print(
                f"webcam: {str(error).split(';')[0]}: showing the demo clip instead "
                "(--source FILE, URL or camera index for your own)",
                file=sys.stderr,
                flush=True,
            )
            demo = True
            args.source, args.loop = str(DEMO_CLIP), True
            source = open_live_source(args.source, loop=True)
    else:
        source = open_live_source(args.source, args.loop)
    try:
        check_display()
    except StreamDetectorError as error:
        source.close()
        if demo:
            return scan_demo_clip(args, str(error))
        raise

    import cv2

    from stream_detector.pipeline.engine import build_engine, settings_from_arguments
    from stream_detector.pipeline.meters import PerformanceMeter, monotonic_ms
    from stream_detector.pipeline.overlay import draw
    from stream_detector.pipeline.sources import LatestFrameReader

    try:
        engine = build_engine(settings_from_arguments(args))
        engine.prepare(getattr(source, "source_id", "0"))
    except BaseException:
        source.close()
        raise

    reader = LatestFrameReader(source)
    meter = PerformanceMeter()
    title = args.title
    # Resizable, keeping the picture's aspect ratio: a 1080p source fits a 720p screen.
    cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
    sized = False
    guard = DisplayLossGuard()
    started = time.monotonic()
    shown = 0
    paused = False
    image = None
    first_verdicts: list[float] = []
    reason = "quit"
    try:
        while True:
            frame = reader.read(timeout=0.03)
            if frame is None and reader.ended:
                reason = "end of source"
                break
            if frame is not None and not paused:
                result = engine.process(frame)
                stats = meter.stats(dropped_frames=reader.dropped, backend=engine.backend)
                image = draw(
                    frame.image, result.verdicts, stats, status=DEMO_NOTE if demo else None, copy=False
                )
                if not sized:
                    cv2.resizeWindow(title, *initial_window_size(image.shape[1], image.shape[0]))
                    sized = True
                cv2.imshow(title, image)
                # Live sources stamp frames with the monotonic clock at capture: this is capture-to-overlay.
                meter.record(latency_ms=monotonic_ms() - frame.timestamp_ms)
                shown += 1
                first_verdicts.extend(
                    verdict.first_verdict_ms
                    for verdict in result.verdicts
                    if verdict.first_verdict_ms is not None and verdict.since_ms == frame.timestamp_ms
                )
            key = cv2.waitKey(1) & 0xFF
            if key in QUIT_KEYS:
                break
            if key in PAUSE_KEYS and image is not None:
                paused = not paused
                shown_image = draw(image, [], banner="PAUSED - p to resume") if paused else image
                cv2.imshow(title, shown_image)
            if key in SNAPSHOT_KEYS and image is not None:
                path = snapshot_path(args.snapshot_dir)
                cv2.imwrite(str(path), image)
                print(f"snapshot saved: {path}", file=sys.stderr, flush=True)
            if shown and cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                reason = "window closed"
                break
            if args.max_seconds is not None and time.monotonic() - started >= args.max_seconds:
                reason = "time limit"
                break
    finally:
        reader.close()
        engine.close()
        cv2.destroyAllWindows()
        cv2.waitKey(1)
        guard.disarm()
    elapsed = time.monotonic() - started
    summary = (
        f"webcam: {reason}: {shown} frames shown in {elapsed:.1f} s ({shown / max(elapsed, 1e-9):.1f} fps), "
        f"{reader.dropped} dropped, latency p50 {meter.latency_percentile(50):.0f} ms "
        f"p95 {meter.latency_percentile(95):.0f} ms, {engine.description}"
    )
    if first_verdicts:
        summary += f", first verdict after {min(first_verdicts):.0f} ms"
    unreadable = getattr(source, "frames_unreadable", 0)
    if unreadable:
        summary += f", {unreadable} undecodable frame(s) skipped"
    print(summary, file=sys.stderr, flush=True)
    # A file that could not be read to its end is not a normal end.
    stopped = getattr(source, "stopped_early", None)
    if stopped:
        print(f"webcam: warning: {args.source}: {stopped}", file=sys.stderr, flush=True)
        return 1
    return 0


def scan_demo_clip(args: argparse.Namespace, why: str) -> int:
    """Without a camera and a display: the demo clip through ``scan``, its report printed."""
    import json

    from stream_detector.pipeline.engine import settings_from_arguments
    from stream_detector.scan.report import scan_video

    print(f"webcam: {why.split(':')[0]}: scanning the demo clip instead", file=sys.stderr, flush=True)
    report = scan_video(DEMO_CLIP, settings_from_arguments(args), progress=False)
    print(json.dumps(report, indent=2))
    return 0


def xlib():
    """libX11 through ctypes with the signatures used here, or None where it is not installed."""
    library = ctypes.util.find_library("X11")
    if library is None:
        return None
    x11 = ctypes.CDLL(library)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x11.XConnectionNumber.argtypes = [ctypes.c_void_p]
    x11.XDefaultScreen.argtypes = [ctypes.c_void_p]
    x11.XDisplayWidth.argtypes = x11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return x11


def initial_window_size(width: int, height: int, screen: tuple[int, int] | None = None) -> tuple[int, int]:
    """The picture's size, scaled down (aspect kept) to fit ``screen`` (default 90 % of 1280x720 or
    of the X screen when known); the window stays resizable from there."""
    limit_width, limit_height = screen or screen_size() or (1280, 720)
    scale = min(1.0, 0.9 * limit_width / width, 0.9 * limit_height / height)
    return max(1, int(width * scale)), max(1, int(height * scale))


def screen_size() -> tuple[int, int] | None:
    """The X screen's size in pixels, or None where it cannot be asked."""
    x11 = xlib()
    display = os.environ.get("DISPLAY")
    if x11 is None or not display:
        return None
    connection = x11.XOpenDisplay(display.encode())
    if not connection:
        return None
    try:
        screen = x11.XDefaultScreen(connection)
        return int(x11.XDisplayWidth(connection, screen)), int(x11.XDisplayHeight(connection, screen))
    finally:
        x11.XCloseDisplay(connection)


DISPLAY_LOST_EXIT = 3
DISPLAY_LOST_MESSAGE = (
    b"stream-detector webcam: error: the display connection was lost (did the X server stop?); "
    b"the window is gone, so the run ends here\n"
)


class DisplayLossGuard:
    """A clean line and exit code when the X server goes away under the window.

    OpenCV's Qt backend then ends the process from C++ (``exit(1)`` inside ``waitKey``, or an abort),
    past every Python handler. This guard holds its own connection to the display and watches its
    socket: the server closing it is the display lost; the guard writes one line on the real stderr
    and exits with code 3 before Qt gets to it.
    """

    def __init__(self) -> None:
        self.armed = False
        self._connection = None
        self._x11 = xlib()
        display = os.environ.get("DISPLAY")
        if self._x11 is None or not display:
            return
        self._connection = self._x11.XOpenDisplay(display.encode())
        if not self._connection:
            return
        self._socket = socket.socket(fileno=os.dup(self._x11.XConnectionNumber(self._connection)))
        self.armed = True
        threading.Thread(target=self._watch, name="display-watch", daemon=True).start()

    def _watch(self) -> None:
        while self.armed:
            readable, _, _ = select.select([self._socket], [], [], 0.5)
            if not readable or not self.armed:
                continue
            try:
                alive = bool(self._socket.recv(1, socket.MSG_PEEK))
            except OSError:
                alive = False
            if not alive and self.armed:
                from stream_detector.quiet import original_stderr

                os.write(original_stderr(), DISPLAY_LOST_MESSAGE)
                os._exit(DISPLAY_LOST_EXIT)
            # Events the server sent this connection (none are asked for): nothing to read them for.
            time.sleep(0.5)

    def disarm(self) -> None:
        self.armed = False
