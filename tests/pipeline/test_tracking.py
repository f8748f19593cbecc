import numpy as np
import pytest

from stream_detector.pipeline.tracking import Tracker, TrackerSettings, appearance_descriptor, box_iou
from stream_detector.pipeline.types import Faces


def faces_at(*boxes):
    if not boxes:
        return Faces.empty()
    return Faces(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32))


def square(centre_x, centre_y, size=100.0):
    return (centre_x - size / 2, centre_y - size / 2, centre_x + size / 2, centre_y + size / 2)


def unit(vector):
    vector = np.asarray(vector, np.float32) - np.mean(vector)
    return vector / np.linalg.norm(vector)


def test_one_moving_face_keeps_its_id_and_follows_the_box():
    tracker = Tracker()
    ids = []
    for index in range(30):
        box = square(100 + 12 * index, 200 + 3 * index, 100 + index)
        (face,) = tracker.update(faces_at(box), index * 33.3)
        ids.append(face.id)
        assert face.box == pytest.approx(box)
        assert face.p_fake is None and face.detection_score == pytest.approx(0.9)
    assert set(ids) == {1}


def test_faces_come_back_in_the_order_they_were_given():
    tracker = Tracker()
    first = tracker.update(faces_at(square(100, 100), square(400, 100)), 0.0)
    swapped = tracker.update(faces_at(square(402, 100), square(101, 100)), 33.0)
    assert [face.id for face in swapped] == [first[1].id, first[0].id]


@pytest.mark.parametrize("occluded_frames", [0, 4])
def test_two_faces_crossing_keep_their_ids(occluded_frames):
    """A walks right, B walks left a little lower; they overlap heavily in the middle (and B may be
    hidden behind A for a few frames). Matching the nearest last box would swap them; prediction does not."""
    tracker = Tracker()
    frames = 40
    hidden = set(range(20 - occluded_frames // 2, 20 + (occluded_frames + 1) // 2))
    identities: dict[str, set[int]] = {"A": set(), "B": set()}
    for index in range(frames):
        a = square(100 + 30 * index, 200)
        b = square(1270 - 30 * index, 230)
        boxes, names = [a], ["A"]
        if index not in hidden:
            boxes.append(b)
            names.append("B")
        for name, face in zip(names, tracker.update(faces_at(*boxes), index * 33.3), strict=True):
            identities[name].add(face.id)
    assert len(identities["A"]) == 1 and len(identities["B"]) == 1
    assert identities["A"] != identities["B"]


def test_face_that_leaves_and_comes_back_is_reidentified_by_appearance():
    rng = np.random.default_rng(0)
    person, stranger = unit(rng.normal(size=768)), unit(rng.normal(size=768))
    tracker = Tracker()
    (first,) = tracker.update(faces_at(square(300, 300)), 0.0, [person])
    tracker.update(faces_at(square(320, 300)), 33.0, [person])
    # Gone for 2 s (left the frame), then back somewhere else, a little changed.
    assert tracker.update(faces_at(), 1000.0, []) == ()
    back_appearance = unit(person + 0.3 * unit(rng.normal(size=768)))
    (back,) = tracker.update(faces_at(square(900, 250)), 2000.0, [back_appearance])
    assert back.id == first.id
    # Someone else entering where she was is a new face.
    (_same, other) = tracker.update(faces_at(square(905, 250), square(300, 300)), 2033.0, [person, stranger])
    assert other.id not in (first.id,)


def test_without_appearance_a_long_absence_starts_a_new_track():
    tracker = Tracker()
    (first,) = tracker.update(faces_at(square(300, 300)), 0.0)
    (back,) = tracker.update(faces_at(square(300, 300)), 2000.0)
    assert back.id != first.id


def test_short_dropouts_are_bridged_by_motion():
    tracker = Tracker()
    (first,) = tracker.update(faces_at(square(100, 100)), 0.0)
    tracker.update(faces_at(square(110, 100)), 33.0)
    tracker.update(faces_at(), 66.0)
    tracker.update(faces_at(), 100.0)
    (later,) = tracker.update(faces_at(square(140, 100)), 133.0)
    assert later.id == first.id


def test_tracks_are_forgotten_and_ids_never_reused():
    tracker = Tracker(TrackerSettings(reidentify_ms=1000.0))
    (first,) = tracker.update(faces_at(square(100, 100)), 0.0, [unit(np.arange(768.0))])
    assert tracker.live_ids() == {first.id}
    tracker.update(faces_at(), 1500.0)
    assert tracker.live_ids() == set()
    (again,) = tracker.update(faces_at(square(100, 100)), 1600.0, [unit(np.arange(768.0))])
    assert again.id > first.id


def test_appearance_descriptor_tells_images_apart(astronaut_bgr):
    box = (173, 67, 276, 170)
    face = appearance_descriptor(astronaut_bgr, box)
    assert face.shape == (768,) and np.linalg.norm(face) == pytest.approx(1.0, abs=1e-4)
    shifted = appearance_descriptor(astronaut_bgr, (175, 69, 278, 172))
    elsewhere = appearance_descriptor(astronaut_bgr, (300, 350, 403, 453))
    assert float(face @ shifted) > 0.9
    assert float(face @ elsewhere) < float(face @ shifted) - 0.3
    # Boxes off the image edge still give a descriptor.
    assert appearance_descriptor(astronaut_bgr, (-50, -50, 10, 10)).shape == (768,)


def test_box_iou():
    assert box_iou(np.array([0, 0, 10, 10.0]), np.array([0, 0, 10, 10.0])) == pytest.approx(1.0)
    assert box_iou(np.array([0, 0, 10, 10.0]), np.array([5, 0, 15, 10.0])) == pytest.approx(1 / 3)
    assert box_iou(np.array([0, 0, 10, 10.0]), np.array([20, 20, 30, 30.0])) == 0.0
