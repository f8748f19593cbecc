"""A real RTSP server for the daemon's tests and benchmark: GStreamer's gst-rtsp-server on 127.0.0.1.

The server runs under Debian's /usr/bin/python3 (python3-gi + gir1.2-gst-rtsp-server-1.0;
scripts/setup_test_system.sh installs them), not the project's venv:

    /usr/bin/python3 tools/rtsp_server.py --port 8554 --frames DIR --mount cam --fps 10

It serves the JPEG files DIR/00000.jpg, 00001.jpg, ... in a loop, as H.264 (like an IP camera) or
MJPEG, at ``--fps``; or, with ``--video FILE.mp4``, an H.264 MP4 as it is, paced in real time and
never re-encoded (the benchmark: the server then costs almost no CPU beside the daemon it measures). Every mount is shared: one encoder, however many clients, so a benchmark with many
cameras on one box measures the daemon and not the server. Prints ``READY <port>`` once it listens.
Only loopback is ever bound.

From the venv (tests, benchmark), ``RtspServerProcess`` runs it as a subprocess (start, stop, kill, start
again on the same port) and ``write_face_frames`` makes the frames from a real photographed face.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SETUP_HINT = (
    "run scripts/setup_test_system.sh (Debian python3-gi, gir1.2-gst-rtsp-server-1.0, GStreamer plugins)"
)


def launch_line(
    frames: Path | None, fps: int, codec: str, bitrate_kbps: int, video: Path | None = None
) -> str:
    if video is not None:
        return f'( filesrc location="{video}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )'

    source = (
        f'multifilesrc location="{frames}/%05d.jpg" index=0 loop=true caps="image/jpeg,framerate={fps}/1"'
    )
    if codec == "mjpeg":
        return f"( {source} ! jpegparse ! rtpjpegpay name=pay0 pt=26 )"
    # A key frame every second: a client that (re)connects decodes within a second, as with real cameras.
    return (
        f"( {source} ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate={bitrate_kbps} "
        f"threads=1 ! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def serve() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=Path, help="directory of 00000.jpg, 00001.jpg, ...")
    parser.add_argument("--video", type=Path, help="an H.264 .mp4 served as it is (instead of --frames)")
    parser.add_argument("--mount", action="append", default=None, help="mount name(s); default 'cam'")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--codec", choices=("h264", "mjpeg"), default="h264")
    parser.add_argument("--bitrate-kbps", type=int, default=1500)
    args = parser.parse_args()
    if args.video is not None:
        if not args.video.is_file():
            print(f"rtsp_server: no such video {args.video}", file=sys.stderr)
            return 2
    elif args.frames is None or not (args.frames / "00000.jpg").is_file():
        print(f"rtsp_server: no {args.frames}/00000.jpg", file=sys.stderr)
        return 2

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount in args.mount or ["cam"]:
        factory = GstRtspServer.RTSPMediaFactory()
        frames = args.frames.resolve() if args.frames else None
        video = args.video.resolve() if args.video else None
        factory.set_launch(launch_line(frames, args.fps, args.codec, args.bitrate_kbps, video))
        factory.set_shared(True)
        # Keep the pipeline running between clients, so a reconnecting client gets frames at once.
        factory.set_suspend_mode(GstRtspServer.RTSPSuspendMode.NONE)
        mounts.add_factory("/" + mount.strip("/"), factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal_number, lambda *_: loop.quit() or False)
    # Clients that went away leave sessions behind; expiring them keeps a long soak's server flat.
    GLib.timeout_add_seconds(2, lambda: server.get_session_pool().cleanup() >= 0)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


def system_gstreamer_problem() -> str | None:
    """None when the system python can run the server, else what is missing and how to get it."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing; {SETUP_HINT}"
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        return f"GStreamer's RTSP server is not importable by {SYSTEM_PYTHON}; {SETUP_HINT}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_face_frames(
    directory: Path,
    face_bgr,
    count: int = 20,
    size: tuple[int, int] = (640, 360),
    face_height: float = 0.6,
) -> Path:
    """``count`` JPEG frames of ``size`` (width, height): the face on a grey background, drifting sideways."""
    import cv2
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    width, height = size
    side = int(height * face_height)
    face = cv2.resize(face_bgr, (side, side), interpolation=cv2.INTER_AREA)
    top = (height - side) // 2
    travel = max(1, (width - side) // 3)
    for index in range(count):
        image = np.full((height, width, 3), 96, np.uint8)
        # Back and forth, so the loop has no jump: the tracker sees one face moving, not a new one.
        phase = index / max(1, count - 1)
        left = (width - side) // 3 + int(travel * (1 - abs(2 * phase - 1)))
        image[top : top + side, left : left + side] = face
        cv2.imwrite(str(directory / f"{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return directory


class RtspServerProcess:
    """The server above as a subprocess on 127.0.0.1; restartable on the same port."""

    def __init__(
        self,
        frames: Path | None = None,
        mounts: tuple[str, ...] = ("cam",),
        port: int | None = None,
        fps: int = 10,
        codec: str = "h264",
        bitrate_kbps: int = 1500,
        video: Path | None = None,
    ) -> None:
        self.frames = Path(frames) if frames else None
        self.video = Path(video) if video else None
        self.mounts = mounts
        self.port = port or free_port()
        self.fps = fps
        self.codec = codec
        self.bitrate_kbps = bitrate_kbps
        self.process: subprocess.Popen | None = None

    def url(self, mount: str = "cam", credentials: str = "") -> str:
        return f"rtsp://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{mount}"

    def start(self, timeout_s: float = 20.0) -> RtspServerProcess:
        command = [SYSTEM_PYTHON, str(Path(__file__).resolve()), "--port", str(self.port)]
        if self.video is not None:
            command += ["--video", str(self.video)]
        else:
            command += ["--frames", str(self.frames)]
        command += ["--fps", str(self.fps), "--codec", self.codec]
        command += ["--bitrate-kbps", str(self.bitrate_kbps)]
        for mount in self.mounts:
            command += ["--mount", mount]
        deadline = time.monotonic() + timeout_s
        while True:
            # stderr goes to a file: a pipe nobody reads would fill up and freeze the server mid-soak.
            errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed below, on both paths)
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=errors, text=True, env=_system_env()
            )
            assert self.process.stdout is not None
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.1, deadline - time.monotonic()))
            line = self.process.stdout.readline() if ready else ""
            if line.startswith("READY"):
                errors.close()
                return self
            self._end(signal.SIGKILL)
            errors.seek(0)
            problem = errors.read().strip() or line.strip() or "no READY line in time"
            errors.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}: {problem[-500:]}")
            # The port may still be held for a moment after a kill: try again until the deadline.
            time.sleep(0.3)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, signal_number: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _system_env() -> dict[str, str]:
    # The venv's variables must not leak into Debian's python (its own site-packages has gi).
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment.pop("VIRTUAL_ENV", None)
    return environment


try:
    import pytest
except ImportError:  # Debian's python, which runs the server, has no pytest and needs no fixture
    pytest = None

if pytest is not None:

    @pytest.fixture
    def rtsp_server_factory(tmp_path_factory, astronaut_bgr):
        """make(**RtspServerProcess options) -> a started server on 127.0.0.1 serving the astronaut face."""
        problem = system_gstreamer_problem()
        if problem:
            pytest.fail(problem)
        from tools.media import head_patch

        # The head cut out of the photo, so the face is large enough to be classified (not just found).
        frames = write_face_frames(tmp_path_factory.mktemp("rtsp-frames"), head_patch(astronaut_bgr))
        servers: list[RtspServerProcess] = []

        def make(**options) -> RtspServerProcess:
            server = RtspServerProcess(frames=frames, **options).start()
            servers.append(server)
            return server

        yield make
        for server in servers:
            server.kill()


if __name__ == "__main__":
    sys.exit(serve())
