import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream_detector.pipeline.overlay import STATE_COLOURS
from tools.media import moving_face_frames, write_video

# Subprocesses, real servers, threads on real clocks or TensorFlow: not the fast lane (make test-fast).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def run_webcam(*arguments, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "stream_detector.cli", "webcam", *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def without_display():
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut_bgr):
    frames, _ = moving_face_frames(astronaut_bgr, count=45)
    return write_video(tmp_path_factory.mktemp("webcam") / "clip.mp4", frames, fps=30.0)


def test_no_camera_says_what_to_do_instead():
    result = run_webcam("--source", "9", env=without_display())
    assert result.returncode == 2
    line = error_line(result)
    assert "no camera at index 9" in line
    assert "--source clip.mp4" in line and "rtsp://" in line and "stream-detector serve" in line


def test_no_display_is_a_one_line_error_not_a_crash(clip):
    result = run_webcam("--source", str(clip), env=without_display())
    assert result.returncode == 2  # not -6 (SIGABRT from cv2.imshow)
    line = error_line(result)
    assert "no display" in line and "scan" in line


def test_display_that_cannot_be_opened_is_a_one_line_error(clip):
    env = dict(without_display(), DISPLAY=":4242")
    result = run_webcam("--source", str(clip), env=env)
    assert result.returncode == 2
    assert "cannot open display ':4242'" in error_line(result)


def test_bad_sources_are_named(tmp_path):
    result = run_webcam("--source", str(tmp_path / "nothing.mp4"), env=without_display())
    assert result.returncode == 2 and "no such file" in error_line(result) and "nothing.mp4" in result.stderr


def find_overlay_box(image):
    """The bounding box of a drawn verdict box: a state colour forming long straight runs."""
    for colour in STATE_COLOURS.values():
        mask = np.all(np.abs(image.astype(int) - np.array(colour)) <= 30, axis=2)
        rows = np.nonzero(longest_runs(mask) >= 50)[0]
        columns = np.nonzero(longest_runs(mask.T) >= 50)[0]
        if len(rows) and len(columns):
            return columns.min(), rows.min(), columns.max(), rows.max()
    return None


def longest_runs(mask):
    """Per row, the longest run of consecutive True values."""
    best = np.zeros(mask.shape[0], int)
    current = np.zeros(mask.shape[0], int)
    for column in range(mask.shape[1]):
        current = np.where(mask[:, column], current + 1, 0)
        best = np.maximum(best, current)
    return best


class VirtualDisplay:
    def __init__(self):
        read_end, write_end = os.pipe()
        self.process = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
            pass_fds=(write_end,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            self.display = f":{pipe.readline().strip()}"

    def env(self):
        return dict(without_display(), DISPLAY=self.display)

    def screenshot(self, path):
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "x11grab", "-video_size", "1280x720"]
            + ["-i", self.display, "-frames:v", "1", str(path)],
            check=True,
            timeout=20,
        )
        return cv2.imread(str(path))

    def close(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="run scripts/setup_test_system.sh"
)
def test_window_shows_the_overlay_and_keys_work(clip, tmp_path):
    display = VirtualDisplay()
    env = display.env()
    title = f"sd-test-{os.getpid()}"
    app = subprocess.Popen(
        [sys.executable, "-m", "stream_detector.cli", "webcam", "--source", str(clip), "--loop"]
        + ["--title", title, "--snapshot-dir", str(tmp_path / "snaps"), "--max-seconds", "60"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        window = subprocess.run(
            ["xdotool", "search", "--sync", "--onlyvisible", "--name", title],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()[0]
        # Qt under Xvfb sometimes leaves a fresh window black until it is mapped again.
        subprocess.run(
            ["xdotool", "windowunmap", "--sync", window, "windowmap", "--sync", window], env=env, timeout=20
        )
        box = None
        deadline = time.monotonic() + 30
        while box is None and time.monotonic() < deadline:
            time.sleep(0.5)
            shot = display.screenshot(tmp_path / "screen.png")
            box = find_overlay_box(shot[:360, :640])  # the window sits top left, at the clip's size
        assert box is not None, "no overlay box on screen"
        x1, y1, x2, y2 = box
        assert 40 <= x2 - x1 <= 300 and 40 <= y2 - y1 <= 300
        # The HUD's dark panel with white text, top left.
        assert shot[:15, :150].mean() < 100 and (shot[:15, :150] > 200).all(axis=2).any()

        subprocess.run(["xdotool", "key", "--window", window, "s"], env=env, timeout=20)
        snapshots = []
        deadline = time.monotonic() + 15
        while not snapshots and time.monotonic() < deadline:
            time.sleep(0.3)
            snapshots = sorted((tmp_path / "snaps").glob("snapshot-*.png"))
        assert snapshots, "s saved no snapshot"
        snapshot = cv2.imread(str(snapshots[0]))
        assert snapshot.shape == (360, 640, 3) and find_overlay_box(snapshot) is not None

        # The clip moves, so only a paused window gives two identical pictures.
        moving = display.screenshot(tmp_path / "a.png")[:360, :640]
        time.sleep(0.3)
        assert not np.array_equal(moving, display.screenshot(tmp_path / "b.png")[:360, :640])
        subprocess.run(["xdotool", "key", "--window", window, "p"], env=env, timeout=20)
        time.sleep(0.8)
        paused = display.screenshot(tmp_path / "c.png")[:360, :640]
        time.sleep(0.5)
        assert np.array_equal(paused, display.screenshot(tmp_path / "d.png")[:360, :640])
        subprocess.run(["xdotool", "key", "--window", window, "q"], env=env, timeout=20)
        _, stderr = app.communicate(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        display.close()
    assert app.returncode == 0, stderr
    summary = [line for line in stderr.splitlines() if line.startswith("webcam: quit:")]
    assert summary and "dropped" in summary[0] and "latency p50" in summary[0]
    assert "snapshot saved" in stderr


def test_the_window_starts_at_the_picture_size_fitted_to_the_screen():
    from stream_detector.apps.webcam import initial_window_size

    assert initial_window_size(640, 360, screen=(1920, 1080)) == (640, 360)
    width, height = initial_window_size(1920, 1080, screen=(1280, 720))
    assert width <= 1152 and height <= 648 and abs(width / height - 16 / 9) < 0.01


needs_xvfb = pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="run scripts/setup_test_system.sh"
)


@needs_xvfb
def test_losing_the_display_mid_run_is_one_line_and_exit_code_3(clip):
    display = VirtualDisplay()
    app = subprocess.Popen(
        [sys.executable, "-m", "stream_detector.cli", "webcam", "--source", str(clip), "--loop"]
        + ["--max-seconds", "90"],
        cwd=REPO,
        env=display.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until the window loop runs (the guard is armed with the window), then end the X server.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and app.poll() is None:
            names = subprocess.run(
                ["xdotool", "search", "--name", "stream-detector"], env=display.env(), capture_output=True
            )
            if names.stdout.strip():
                break
            time.sleep(0.5)
        time.sleep(2.0)
        display.process.kill()
        display.process.wait(10)
        _, stderr = app.communicate(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 3, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("stream-detector webcam: error: the display connection was lost")
    assert "terminate called" not in stderr and "X11 connection broke" not in stderr


@needs_xvfb
def test_a_file_that_cannot_be_read_to_its_end_is_not_a_normal_end(tmp_path, astronaut_bgr):
    frames, _ = moving_face_frames(astronaut_bgr, count=60)
    path = write_video(tmp_path / "cut.avi", frames, fps=30.0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    display = VirtualDisplay()
    try:
        result = run_webcam("--source", str(path), env=display.env(), timeout=90)
    finally:
        display.close()
    assert result.returncode == 1, result.stderr
    assert "webcam: end of source" in result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("webcam: warning:")]
    assert len(warning) == 1 and "cut.avi" in warning[0] and "truncated or corrupt" in warning[0]


@pytest.mark.skipif(
    Path("/dev/video0").exists(), reason="this machine has a camera: the demo is for machines without"
)
def test_without_camera_or_display_the_demo_clip_is_scanned():
    result = run_webcam(env=without_display(), timeout=120)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("webcam:")]
    assert "no camera at index 0" in notes[0] and "demo clip" in notes[0]
    assert "no display" in notes[1] and "scanning the demo clip" in notes[1]
    report = json.loads(result.stdout)
    assert report["path"].endswith("assets/demo.mp4") and report["tracks"]
    # A real photographed face: the demo must not raise a false alarm.
    assert report["verdict"] in ("REAL", "UNCERTAIN")


@needs_xvfb
@pytest.mark.skipif(
    Path("/dev/video0").exists(), reason="this machine has a camera: the demo is for machines without"
)
def test_without_camera_the_window_plays_the_demo_clip():
    display = VirtualDisplay()
    try:
        result = run_webcam("--max-seconds", "6", env=display.env(), timeout=120)
    finally:
        display.close()
    assert result.returncode == 0, result.stderr
    assert "showing the demo clip" in result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("webcam: time limit:")]
    assert summary and int(summary[0].split(": ")[2].split()[0]) > 20  # frames shown
