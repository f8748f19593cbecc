import numpy as np
import pytest

from stream_detector.pipeline.faces import TiledFaceDetector, merge_detections, tile_windows
from stream_detector.pipeline.types import Faces, Frame


def test_only_frames_wider_than_the_limit_are_tiled():
    assert tile_windows(1280, 720, 1600) == []
    assert tile_windows(1920, 1080, 0) == []
    windows = tile_windows(1920, 1080, 1600)
    assert len(windows) == 4
    # Overlapping, and together covering the whole frame.
    covered = np.zeros((1080, 1920), bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all() and windows[0][2] > 960 and windows[1][0] < 960
    assert len(tile_windows(3840, 2160, 1600)) == 9


def test_merging_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [300, 0, 400, 100], [10, 10, 60, 60]], np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.95], np.float32)
    merged = merge_detections(boxes, scores)
    # The small box inside the first ones is a face cut by a tile edge: it is the same face.
    assert sorted(map(tuple, merged.boxes.tolist())) == [(10, 10, 60, 60), (300, 0, 400, 100)]


class ScriptedDetector:
    """Finds a face wherever a bright square is, but only when it is at least 15 px in its input at
    192 px (as BlazeFace misses faces that are small in its input)."""

    def __init__(self):
        self.calls = 0

    def detect(self, frame: Frame) -> Faces:
        self.calls += 1
        height, width = frame.image.shape[:2]
        scale = 192 / max(width, height)
        mask = frame.image[:, :, 0] > 200
        boxes = []
        for x in range(0, width, 100):
            for y in range(0, height, 100):
                if mask[y : y + 100, x : x + 100].mean() > 0.5 and 100 * scale >= 15:
                    boxes.append((x, y, x + 100, y + 100))
        return Faces(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32))


def test_tiles_find_the_small_faces_of_a_large_frame_that_the_whole_frame_misses():
    image = np.zeros((1000, 2000, 3), np.uint8)
    for x, y in ((200, 200), (1500, 200), (200, 700), (1500, 700)):
        image[y : y + 100, x : x + 100] = 255
    frame = Frame(image, 0, 0.0, "call")
    whole = ScriptedDetector()
    assert len(whole.detect(frame)) == 0  # 100 px in 2000 is under 15 px at 192
    tiles = ScriptedDetector()
    detector = TiledFaceDetector(ScriptedDetector(), lambda: tiles, tile_above_px=1600)
    found = detector.detect(frame)
    assert len(found) == 4 and tiles.calls == 4
    assert sorted(map(tuple, found.boxes[:, :2].tolist())) == [
        (200, 200),
        (200, 700),
        (1500, 200),
        (1500, 700),
    ]
    small = Frame(np.zeros((720, 1280, 3), np.uint8), 1, 1.0, "call")
    detector.detect(small)
    assert tiles.calls == 4  # a 720p frame is searched whole only


@pytest.mark.parametrize("count", [0, 1])
def test_merging_nothing_or_one(count):
    boxes = np.array([[0, 0, 10, 10]] * count, np.float32).reshape(-1, 4)
    assert len(merge_detections(boxes, np.full(count, 0.5, np.float32))) == count
