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


class BlobDetector:
    """Finds each bright square (any position), but only when its side is at least 15 px at the
    detector's 192 px input, as BlazeFace misses faces that are small in its input."""

    def __init__(self):
        self.calls = 0
        self.widths: list[int] = []

    def detect(self, frame: Frame) -> Faces:
        import cv2

        self.calls += 1
        height, width = frame.image.shape[:2]
        self.widths.append(width)
        scale = 192 / max(width, height)
        mask = (frame.image[:, :, 0] > 200).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [
            (x, y, x + w, y + h)
            for x, y, w, h, _ in stats[1:count]
            if min(w, h) * scale >= 15 and min(w, h) >= 20
        ]
        return Faces(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32))


def gallery(shift: int = 0, faces=((200, 200), (1500, 200), (200, 700), (1500, 700))) -> np.ndarray:
    image = np.zeros((1000, 2000, 3), np.uint8)
    for x, y in faces:
        image[y : y + 100, x + shift : x + shift + 100] = 255
    return image


def test_between_tiled_searches_missed_faces_are_followed_in_small_windows():
    whole, tiles = BlobDetector(), BlobDetector()
    detector = TiledFaceDetector(whole, lambda: tiles, tile_above_px=1600, tiles_every_ms=1000.0)
    # The whole frame finds the large face only; the tiles find the four small ones as well.
    faces = ((200, 200), (1500, 200), (200, 700), (1500, 700))
    image = gallery(faces=faces)
    image[50:350, 800:1100] = 255
    assert len(detector.detect(Frame(image, 0, 0.0, "call"))) == 5
    assert tiles.calls == 4 and detector.tiled_searches == 1
    # The faces move; in the next frames each missed one is looked for in one window around it.
    for index, shift in enumerate((8, 16, 24), start=1):
        moved = gallery(shift, faces)
        moved[50:350, 800:1100] = 255
        found = detector.detect(Frame(moved, index, 66.0 * index, "call"))
        assert len(found) == 5
        assert sorted(found.boxes[:, 0].tolist())[:2] == [200 + shift, 200 + shift]
    assert tiles.calls == 4 + 3 * 4 and detector.window_searches == 12
    assert detector.tiled_searches == 1
    # Each window is three times the face, far smaller than a tile (1,200 px).
    assert max(tiles.widths[4:]) <= 300 and max(tiles.widths[:4]) == 1200
    # A second later the tiles are searched again: a face that joined the call is found.
    joined = gallery(24, (*faces, (900, 800)))
    joined[50:350, 800:1100] = 255
    found = detector.detect(Frame(joined, 4, 1000.0, "call"))
    assert len(found) == 6 and detector.tiled_searches == 2


def test_a_face_that_leaves_is_dropped_and_more_misses_than_tiles_search_the_tiles():
    whole, tiles = BlobDetector(), BlobDetector()
    detector = TiledFaceDetector(whole, lambda: tiles, tile_above_px=1600, tiles_every_ms=1000.0)
    detector.detect(Frame(gallery(), 0, 0.0, "call"))
    left = gallery(faces=((200, 200), (1500, 200), (200, 700)))
    assert len(detector.detect(Frame(left, 1, 66.0, "call"))) == 3
    assert detector.window_searches == 4  # the one that left was looked for once
    detector.detect(Frame(left, 2, 132.0, "call"))
    assert detector.window_searches == 7 and detector.tiled_searches == 1
    # Nine small faces missed by the whole frame: nine windows would cost more than four tiles.
    nine = [(100 + 600 * column, 100 + 300 * row) for row in range(3) for column in range(3)]
    detector = TiledFaceDetector(BlobDetector(), lambda: BlobDetector(), tile_above_px=1600)
    assert len(detector.detect(Frame(gallery(faces=nine), 0, 0.0, "call"))) == 9
    assert len(detector.detect(Frame(gallery(faces=nine), 1, 66.0, "call"))) == 9
    assert detector.tiled_searches == 2 and detector.window_searches == 0
