import socket
import threading
import time

import cv2
import numpy as np
import pytest

from stream_detector.errors import SourceError
from stream_detector.pipeline import sources
from stream_detector.pipeline.sources import (
    CaptureSource,
    ImageFolderSource,
    ImageSource,
    LatestFrameReader,
    VideoFileSource,
    open_source,
)
from stream_detector.pipeline.types import Frame, FrameSource
from tools.media import background, write_video


def numbered_frames(count, width=160, height=120):
    """Frames whose brightness encodes their index, so a test can tell which frame it got."""
    return [np.full((height, width, 3), (10 + 8 * index) % 250, np.uint8) for index in range(count)]


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.avi", numbered_frames(20), fps=25.0)


def test_video_file_gives_every_frame_in_media_time_then_a_clean_end(clip):
    source = open_source(str(clip))
    assert isinstance(source, VideoFileSource) and isinstance(source, FrameSource)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert [frame.index for frame in frames] == list(range(20))
    assert [frame.timestamp_ms for frame in frames] == pytest.approx([index * 40.0 for index in range(20)])
    assert abs(int(frames[7].image.mean()) - (10 + 8 * 7)) <= 3
    assert source.stopped_early is None and source.fps == pytest.approx(25.0)
    assert source.read() is None


def test_realtime_video_is_paced_and_live_stamped(clip):
    source = VideoFileSource(clip, realtime=True)
    started = time.monotonic()
    frames = [source.read() for _ in range(6)]
    elapsed = time.monotonic() - started
    source.close()
    assert elapsed >= 5 * 0.040 * 0.9
    stamps = [frame.timestamp_ms for frame in frames]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.monotonic() * 1000) < 5000


def test_looping_video_starts_again(clip):
    source = VideoFileSource(clip, loop=True)
    frames = [source.read() for _ in range(45)]
    source.close()
    assert all(frame is not None for frame in frames)
    assert [frame.index for frame in frames] == list(range(45))


def test_truncated_video_ends_and_says_where_it_stopped(tmp_path):
    path = write_video(tmp_path / "long.avi", numbered_frames(60), fps=30.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = open_source(str(path))
    count = 0
    while source.read() is not None:
        count += 1
    assert 0 < count < 55
    assert source.stopped_early and f"after frame {count} of 60" in source.stopped_early


def test_not_a_video_and_missing_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4") as error:
        open_source(str(junk))
    assert "\n" not in str(error.value)
    with pytest.raises(SourceError, match="no such file: .*missing.mp4"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="empty source"):
        open_source("  ")


def test_image_once_or_repeated(tmp_path, astronaut_bgr):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), astronaut_bgr)
    single = open_source(str(path))
    assert isinstance(single, ImageSource)
    frame = single.read()
    assert frame.image.shape == (512, 512, 3) and np.array_equal(frame.image, astronaut_bgr)
    assert single.read() is None
    repeated = open_source(str(path), realtime=True)
    stamps = [repeated.read().timestamp_ms for _ in range(3)]
    assert stamps[2] - stamps[0] >= 2 * 1000 / 30 * 0.9


def test_image_that_is_not_an_image(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("hello")
    # Named .jpg, but its content is no image: tried as a video, and named as neither.
    with pytest.raises(SourceError, match="neither a video nor an image.*photo.jpg"):
        source = open_source(str(fake))
        source.read()
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.png"):
        ImageSource(empty)


def test_grayscale_and_alpha_images_become_bgr(tmp_path):
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((40, 50), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "alpha.png"), np.full((40, 50, 4), 200, np.uint8))
    for name in ("gray.png", "alpha.png"):
        assert ImageSource(tmp_path / name).read().image.shape == (40, 50, 3)


def test_huge_frames_are_refused(tmp_path, monkeypatch, clip):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 400, 3), np.uint8))
    monkeypatch.setattr(sources, "MAX_FRAME_PIXELS", 100 * 100)
    with pytest.raises(SourceError, match=r"frame too large: 400x300.*big.png"):
        open_source(str(path))
    with pytest.raises(SourceError, match=r"frame too large: 160x120.*clip.avi"):
        open_source(str(clip))


def test_folder_of_images_in_name_order_skipping_bad_files(tmp_path):
    for index in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{index}.png"), np.full((30, 40, 3), 50 * index, np.uint8))
    (tmp_path / "img1b.jpg").write_bytes(b"\xff\xd8\xff\xe0 a truncated JPEG")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    assert [int(frame.image.mean()) for frame in frames] == [0, 50, 100]
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert len(source.skipped) == 1 and source.skipped[0].endswith("img1b.jpg")
    assert source.not_images == ["notes.txt"]
    # As a live slideshow: each image held for its interval at 30 fps, then the next.
    slideshow = ImageFolderSource(tmp_path, realtime=True, frame_interval_ms=100.0)
    shown = []
    while (frame := slideshow.read()) is not None:
        shown.append(int(frame.image.mean()))
    assert shown[0] == 0 and shown[-1] == 100 and 6 <= len(shown) <= 12
    assert sorted(shown) == shown and len(set(shown)) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(empty))


def test_missing_camera_is_a_clear_error():
    with pytest.raises(SourceError, match="no camera at index 97"):
        open_source("97")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_url_that_refuses_fails_fast_naming_it(scheme):
    url = f"{scheme}://user:secret@127.0.0.1:{closed_port()}/stream"
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream") as error:
        open_source(url)
    assert time.monotonic() - started < 10
    assert "127.0.0.1" in str(error.value) and "secret" not in str(error.value)


def test_stream_that_hangs_times_out(monkeypatch):
    """A server that accepts and then says nothing: the open timeout ends the wait."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot open stream"):
        CaptureSource(f"rtsp://127.0.0.1:{port}/x", open_timeout_ms=1000, read_timeout_ms=1000)
    assert time.monotonic() - started < 8
    server.close()


class CountingSource:
    """A fast fake source: ``count`` frames, optionally then an error."""

    def __init__(self, count, interval_s=0.001, fail=False):
        self.count, self.interval_s, self.fail = count, interval_s, fail
        self.index = 0
        self.closed = False

    def read(self):
        if self.index >= self.count:
            if self.fail:
                raise SourceError("camera 0 stopped delivering frames (disconnected?)")
            return None
        time.sleep(self.interval_s)
        frame = Frame(background(32, 24), self.index, time.monotonic() * 1000)
        self.index += 1
        return frame

    def close(self):
        self.closed = True


def test_reader_keeps_only_the_newest_frame_and_counts_drops():
    source = CountingSource(200, interval_s=0.002)
    reader = LatestFrameReader(source)
    taken = []
    while (frame := reader.read(timeout=2.0)) is not None:
        taken.append(frame)
        time.sleep(0.02)  # a consumer 10x slower than the source
    reader.close()
    indices = [frame.index for frame in taken]
    assert indices == sorted(indices) and reader.captured == 200
    assert len(indices) < 100 and reader.dropped > 100
    assert reader.dropped + reader.delivered == reader.captured
    # Lag does not grow: each frame taken is one of the newest, not the oldest waiting.
    lags = [time.monotonic() * 1000 - frame.timestamp_ms for frame in taken[-5:]]
    assert max(lags) < 1000
    assert reader.ended and source.closed


def test_reader_without_dropping_delivers_every_frame_in_order():
    reader = LatestFrameReader(CountingSource(50, interval_s=0), drop_frames=False)
    indices = []
    while (frame := reader.read(timeout=2.0)) is not None:
        indices.append(frame.index)
    reader.close()
    assert indices == list(range(50)) and reader.dropped == 0


def test_reader_passes_on_the_source_error_after_its_last_frame():
    reader = LatestFrameReader(CountingSource(3, fail=True), drop_frames=False)
    got = [reader.read(timeout=2.0) for _ in range(3)]
    assert all(frame is not None for frame in got)
    deadline = time.monotonic() + 2
    while not reader.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.failed and not reader.ended  # a lost camera is not the end of a file
    with pytest.raises(SourceError, match="stopped delivering"):
        reader.read(timeout=2.0)
    reader.close()


def test_reader_read_timeout_returns_none_without_ending():
    reader = LatestFrameReader(CountingSource(1000, interval_s=0.5))
    started = time.monotonic()
    assert reader.read(timeout=0.05) is None
    assert time.monotonic() - started < 0.5
    assert not reader.ended
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < 2.0


def test_a_damaged_stretch_is_skipped_and_counted(tmp_path):
    path = write_video(tmp_path / "damaged.mp4", numbered_frames(200, 320, 240), fps=25.0)
    data = bytearray(path.read_bytes())
    middle = len(data) * 2 // 5
    data[middle : middle + 20000] = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    source = VideoFileSource(path)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert source.frames_unreadable >= 1 and len(frames) + source.frames_unreadable >= 195
    assert source.stopped_early is None and 2.0 < source.first_unreadable_s < 5.0
    # Media time keeps the skipped frames' places: the last frame sits near the clip's end.
    assert frames[-1].timestamp_ms == pytest.approx((len(frames) + source.frames_unreadable - 1) * 40.0)


def test_an_mp4_cut_off_before_its_index_says_so(tmp_path):
    path = write_video(tmp_path / "recording.mp4", numbered_frames(60), fps=25.0)
    whole = path.read_bytes()
    assert sources.mp4_top_level_boxes(path)[-1] == "moov"  # OpenCV writes the index last
    path.write_bytes(whole[: len(whole) // 2])
    assert "moov" not in sources.mp4_top_level_boxes(path)
    with pytest.raises(SourceError) as error:
        VideoFileSource(path)
    message = str(error.value)
    assert "moov" in message and "cut off" in message and "recording.mp4" in message and "\n" not in message
    assert sources.mp4_top_level_boxes(tmp_path / "recording.mp4") != []
    (tmp_path / "text.mp4").write_text("hello, not a box")
    assert sources.mp4_top_level_boxes(tmp_path / "text.mp4") == []
