import math
import threading

import cv2
import numpy as np
import pytest

from stream_detector.pipeline.engine import (
    STAGES,
    Engine,
    EngineSettings,
    build_engine,
    crop_sharpness,
)
from stream_detector.pipeline.faces import DetectorPool
from stream_detector.pipeline.meters import PerformanceMeter, RateMeter
from stream_detector.pipeline.smoothing import SmootherSettings
from stream_detector.pipeline.tracking import box_iou
from stream_detector.pipeline.types import Classifier, FaceDetector, Faces, Frame, VerdictState
from tools.media import Placement, compose, head_patch, moving_face_frames


class ScriptedDetector:
    """Returns the boxes that a frame's ``boxes_for`` says, whatever the pixels are."""

    def __init__(self, boxes_for):
        self.boxes_for = boxes_for
        self.closed = False
        self.calls = 0

    def detect(self, frame: Frame) -> Faces:
        self.calls += 1
        boxes = self.boxes_for(frame)
        if not boxes:
            return Faces.empty()
        return Faces(np.array(boxes, np.float32), np.full(len(boxes), 0.9, np.float32))

    def close(self):
        self.closed = True


class RecordingClassifier:
    """p(fake) = mean red channel of the crop / 255, so tests control the score through the pixels."""

    name = "recording"

    def __init__(self):
        self.batches: list[int] = []

    def classify(self, crops: np.ndarray) -> np.ndarray:
        assert crops.ndim == 4 and crops.shape[1:] == (224, 224, 3) and crops.dtype == np.uint8
        self.batches.append(len(crops))
        return crops[..., 0].reshape(len(crops), -1).mean(axis=1).astype(np.float32) / 255.0


def textured(width=640, height=360, red=200):
    """A sharp (noisy) image whose crops have a chosen mean red level."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[..., 2] = np.clip(red + rng.integers(-20, 20, (height, width)), 0, 255)
    return image


def make_engine(boxes_for, settings=None):
    detectors = []

    def factory():
        detectors.append(ScriptedDetector(boxes_for))
        return detectors[-1]

    classifier = RecordingClassifier()
    engine = Engine(factory, classifier, settings or EngineSettings(classify_hz=0))
    return engine, classifier, detectors


def test_fakes_satisfy_the_stage_protocols():
    assert isinstance(ScriptedDetector(lambda frame: []), FaceDetector)
    assert isinstance(RecordingClassifier(), Classifier)


def test_all_faces_of_a_frame_are_classified_in_one_batch():
    engine, classifier, _ = make_engine(lambda frame: [(50, 50, 150, 150), (300, 60, 400, 160)])
    result = engine.process(Frame(textured(), 0, 0.0))
    assert classifier.batches == [2]
    assert [face.id for face in result.faces] == [1, 2]
    assert all(face.p_fake == pytest.approx(200 / 255, abs=0.05) for face in result.faces)
    assert [verdict.id for verdict in result.verdicts] == [1, 2]
    assert result.classified_ids == {1, 2}
    assert set(STAGES) <= set(result.timings_ms) and result.timings_ms["total"] >= 0
    assert engine.backend == "recording"


def test_a_batch_of_frames_from_several_sources_makes_one_classifier_call():
    engine, classifier, detectors = make_engine(lambda frame: [(50, 50, 150, 150)])
    frames = [Frame(textured(red=red), 0, 0.0, source_id=name) for name, red in (("a", 250), ("b", 20))]
    first, second = engine.process_batch(frames)
    assert classifier.batches == [2]
    assert len(detectors) == 2  # each source has its own detector (VIDEO mode timestamps)
    # Each source has its own tracker: both faces are "1" in their own source.
    assert first.faces[0].id == second.faces[0].id == 1
    assert first.faces[0].p_fake > 0.8 and second.faces[0].p_fake < 0.2
    assert sorted(engine.sources()) == ["a", "b"]
    engine.close_source("a")
    assert detectors[0].closed and engine.sources() == ["b"]


def test_frames_of_distinct_sources_are_detected_side_by_side():
    # Both detections must be in flight at once to pass the barrier; one after the other, the
    # first waits alone and the barrier breaks.
    barrier = threading.Barrier(2, timeout=5.0)
    threads = set()

    def boxes_for(frame):
        threads.add(threading.get_ident())
        barrier.wait()
        return [(50, 50, 150, 150)]

    engine, classifier, _ = make_engine(boxes_for, EngineSettings(classify_hz=0, threads=2))
    frames = [Frame(textured(), 0, 0.0, source_id=name) for name in ("a", "b")]
    results = engine.process_batch(frames)
    assert [result.frame.source_id for result in results] == ["a", "b"]
    assert len(threads) == 2 and classifier.batches == [2]
    engine.close()


def test_one_thread_setting_detects_in_the_calling_thread():
    seen = set()
    engine, _, _ = make_engine(
        lambda frame: seen.add(threading.get_ident()) or [], EngineSettings(classify_hz=0, threads=1)
    )
    engine.process_batch([Frame(textured(), 0, 0.0, source_id=name) for name in ("a", "b")])
    assert seen == {threading.get_ident()}


def test_a_detector_pool_serves_many_sources_with_at_most_its_size_of_detectors():
    made = []
    in_use = []
    peak = [0]
    lock = threading.Lock()

    class SlowDetector(ScriptedDetector):
        def detect(self, frame):
            with lock:
                in_use.append(self)
                peak[0] = max(peak[0], len(in_use))
            try:
                threading.Event().wait(0.02)
                return super().detect(frame)
            finally:
                with lock:
                    in_use.remove(self)

    def factory():
        made.append(SlowDetector(lambda frame: [(50, 50, 150, 150)]))
        return made[-1]

    pool = DetectorPool(factory, size=2)
    engine = Engine(
        pool.handle, RecordingClassifier(), EngineSettings(classify_hz=0, threads=2), owned=(pool,)
    )
    for index in range(3):
        frames = [Frame(textured(), index, index * 100.0, source_id=f"cam{n}") for n in range(6)]
        assert all(len(result.faces) == 1 for result in engine.process_batch(frames))
    assert len(made) == 2 and peak[0] == 2 and len(engine.sources()) == 6
    engine.close_source("cam0")  # a source leaving closes nothing that others use
    assert not any(detector.closed for detector in made)
    engine.close()
    assert all(detector.closed for detector in made)


def test_two_frames_of_one_source_in_a_batch_are_processed_in_order():
    engine, classifier, _ = make_engine(
        lambda frame: [(50 + 5 * frame.index, 50, 150 + 5 * frame.index, 150)]
    )
    results = engine.process_batch([Frame(textured(), index, index * 33.0) for index in range(3)])
    assert [result.frame.index for result in results] == [0, 1, 2]
    assert {result.faces[0].id for result in results} == {1}
    assert classifier.batches == [1, 1, 1]


def test_classification_rate_is_limited_per_face():
    settings = EngineSettings(classify_hz=15)
    engine, classifier, detectors = make_engine(
        lambda frame: [(50, 50, 150, 150), (300, 60, 400, 160)], settings
    )
    frame_ms = 1000 / 60
    results = [engine.process(Frame(textured(), index, index * frame_ms)) for index in range(120)]
    # Detection and tracking on every frame, classification at ~15 Hz per face over these 2 s.
    assert detectors[0].calls == 120
    classified_per_face = sum(len(result.classified_ids) for result in results) / 2
    assert 28 <= classified_per_face <= 34
    assert all(len(result.verdicts) == 2 for result in results)
    # Frames where nothing was due carry no p_fake and make no classifier call.
    assert any(not result.classified_ids for result in results)
    assert len(classifier.batches) < 120


def test_a_gallery_shares_the_classification_budget_in_turns():
    boxes = [(20 + 150 * column, 40, 120 + 150 * column, 140) for column in range(4)]
    settings = EngineSettings(classify_hz=15, classify_budget_hz=30)
    engine, classifier, _ = make_engine(lambda frame: boxes, settings)
    frame_ms = 1000 / 12
    results = [engine.process(Frame(textured(), index, index * frame_ms)) for index in range(36)]
    # The first frame gives every face a first score at once.
    assert classifier.batches[0] == 4 and len(results[0].classified_ids) == 4
    # Then 30 per second in all (7.5 Hz per face over the 3 s), in turns: at most 3 per frame.
    later = results[1:]
    counts = {face_id: sum(face_id in result.classified_ids for result in later) for face_id in (1, 2, 3, 4)}
    assert all(18 <= count <= 25 for count in counts.values()), counts
    assert max(len(result.classified_ids) for result in later) <= 3
    assert sum(counts.values()) <= 30 * 35 / 12 + 1
    # Without the budget, every face is due in the same frames (4 at once, at 12 fps all the time).
    engine, classifier, _ = make_engine(lambda frame: boxes, EngineSettings(classify_hz=15))
    for index in range(36):
        engine.process(Frame(textured(), index, index * frame_ms))
    assert classifier.batches == [4] * 36


def test_one_face_keeps_its_own_rate_under_a_budget():
    settings = EngineSettings(classify_hz=15, classify_budget_hz=30)
    engine, classifier, _ = make_engine(lambda frame: [(50, 50, 150, 150)], settings)
    results = [engine.process(Frame(textured(), index, index * 1000 / 60)) for index in range(120)]
    assert 28 <= sum(len(result.classified_ids) for result in results) <= 34  # 15 Hz over 2 s


class BlockingClassifier(RecordingClassifier):
    """Holds each call until ``release`` is set (a slow model), counting the calls in flight."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def classify(self, crops: np.ndarray) -> np.ndarray:
        assert self.release.wait(5.0)
        return super().classify(crops)


def test_in_the_background_frames_come_back_before_their_faces_are_scored():
    boxes = [(50, 50, 150, 150), (300, 60, 400, 160)]
    classifier = BlockingClassifier()
    settings = EngineSettings(classify_hz=0, classify_in_background=True)
    engine = Engine(lambda: ScriptedDetector(lambda frame: boxes), classifier, settings)
    # The model is stuck on the first frame's crops, yet frames keep coming back, tracked, unscored.
    results = [engine.process(Frame(textured(), index, index * 33.0)) for index in range(5)]
    assert all(len(result.faces) == 2 and not result.classified_ids for result in results)
    assert all(face.p_fake is None for result in results for face in result.faces)
    assert classifier.batches == []  # one job in flight, none queued behind it
    classifier.release.set()
    engine.wait_for_classification()
    assert classifier.batches == [2]
    # The scores land on the next frame, and the faces become due again.
    landed = engine.process(Frame(textured(), 5, 165.0))
    assert landed.classified_ids == {1, 2}
    assert all(face.p_fake == pytest.approx(200 / 255, abs=0.05) for face in landed.faces)
    engine.wait_for_classification()
    assert classifier.batches == [2, 2]
    engine.close()


def test_a_failing_background_classification_leaves_the_verdicts_and_the_engine_running(caplog):
    class Failing(RecordingClassifier):
        def classify(self, crops):
            raise RuntimeError("model gone")

    settings = EngineSettings(classify_hz=0, classify_in_background=True)
    engine = Engine(lambda: ScriptedDetector(lambda frame: [(50, 50, 150, 150)]), Failing(), settings)
    for index in range(3):
        engine.process(Frame(textured(), index, index * 33.0))
        engine.wait_for_classification()
    result = engine.process(Frame(textured(), 3, 99.0))
    assert len(result.faces) == 1 and not result.classified_ids
    assert "classifying 1 crops failed" in caplog.text
    engine.close()


def test_every_frame_is_classified_with_rate_zero():
    engine, classifier, _ = make_engine(lambda frame: [(50, 50, 150, 150)], EngineSettings(classify_hz=0))
    for index in range(10):
        engine.process(Frame(textured(), index, index * 16.7))
    assert classifier.batches == [1] * 10


def test_fake_scores_become_a_fake_verdict_and_real_ones_real():
    settings = EngineSettings(classify_hz=0, smoothing=SmootherSettings(min_evidence=3.0, fake_enter=0.8))
    engine, _, _ = make_engine(lambda frame: [(50, 50, 150, 150)], settings)
    for red, expected in ((240, VerdictState.FAKE), (10, VerdictState.REAL)):
        states = [
            engine.process(Frame(textured(red=red), index, index * 33.0, source_id=str(red)))
            .verdicts[0]
            .state
            for index in range(8)
        ]
        assert states[0] == VerdictState.UNCERTAIN and states[-1] == expected


def test_a_crop_the_classifier_could_not_score_leaves_the_verdict_as_it_was():
    # A remote classifier whose replica is gone answers NaN (cluster/classifier.py): no made-up score.
    settings = EngineSettings(classify_hz=0, smoothing=SmootherSettings(min_evidence=3.0, fake_enter=0.8))
    engine, classifier, _ = make_engine(lambda frame: [(50, 50, 150, 150)], settings)
    results = [engine.process(Frame(textured(red=240), index, index * 33.0)) for index in range(8)]
    assert results[-1].verdicts[0].state == VerdictState.FAKE
    before = results[-1].verdicts[0].p_smoothed
    classifier.classify = lambda crops: np.full(len(crops), np.nan, np.float32)
    gap = engine.process(Frame(textured(red=240), 8, 8 * 33.0))
    assert gap.classified_ids == frozenset()
    assert gap.verdicts[0].state == VerdictState.FAKE
    assert gap.verdicts[0].p_smoothed == pytest.approx(before, abs=0.05)
    assert not math.isnan(gap.verdicts[0].p_smoothed)


def test_small_and_blurred_faces_are_not_classified_and_stay_uncertain(astronaut_bgr):
    small_box = (50, 50, 80, 80)
    engine, classifier, _ = make_engine(lambda frame: [small_box])
    for index in range(10):
        result = engine.process(Frame(textured(red=240), index, index * 33.0))
    assert classifier.batches == [] and result.unusable_ids == {1}
    assert result.verdicts[0].state == VerdictState.UNCERTAIN

    engine, classifier, _ = make_engine(lambda frame: [(173, 67, 276, 170)])
    blurred = cv2.GaussianBlur(astronaut_bgr, (0, 0), 3)
    for index in range(10):
        result = engine.process(Frame(blurred, index, index * 33.0))
    assert classifier.batches == [] and result.verdicts[0].state == VerdictState.UNCERTAIN
    # The same face unblurred is classified.
    engine.process(Frame(astronaut_bgr, 10, 10 * 33.0))
    assert classifier.batches == [1]


def test_no_faces_means_no_classifier_call():
    engine, classifier, _ = make_engine(lambda frame: [])
    result = engine.process(Frame(textured(), 0, 0.0))
    assert result.faces == () and result.verdicts == () and classifier.batches == []


def test_close_closes_every_detector():
    engine, _, detectors = make_engine(lambda frame: [])
    engine.process_batch([Frame(textured(), 0, 0.0, "a"), Frame(textured(), 0, 0.0, "b")])
    engine.close()
    assert all(detector.closed for detector in detectors) and engine.sources() == []


def test_settings_are_validated():
    with pytest.raises(ValueError):
        EngineSettings(classify_hz=-1)
    with pytest.raises(ValueError):
        EngineSettings(detector_range="medium")


def test_meters():
    meter = RateMeter(window_ms=1000)
    for index in range(31):
        meter.tick(index * 1000 / 30)
    assert meter.rate == pytest.approx(30, rel=0.05)
    performance = PerformanceMeter(clock=lambda: 0.0)
    for index in range(100):
        performance.record(latency_ms=float(index), now_ms=index * 10.0)
    stats = performance.stats(dropped_frames=3, backend="x")
    assert stats.fps == pytest.approx(100, rel=0.05)
    assert stats.latency_ms == pytest.approx(49.5) and stats.extra["latency_p95_ms"] == pytest.approx(94.05)
    assert stats.dropped_frames == 3 and stats.backend == "x"


def test_crop_sharpness_separates_sharp_from_blurred(astronaut_bgr):
    crop = cv2.cvtColor(cv2.resize(astronaut_bgr[60:180, 160:290], (224, 224)), cv2.COLOR_BGR2RGB)
    threshold = EngineSettings().min_sharpness
    assert crop_sharpness(crop) > threshold > crop_sharpness(cv2.GaussianBlur(crop, (0, 0), 3))


@pytest.mark.slow
def test_real_stages_follow_a_moving_face_with_one_id(astronaut_bgr):
    frames, expected_boxes = moving_face_frames(astronaut_bgr, count=24)
    with build_engine(EngineSettings(classify_hz=15)) as engine:
        results = [engine.process(Frame(image, index, index * 33.3)) for index, image in enumerate(frames)]
        assert engine.backend.startswith(("litert", "keras"))
    found = [result for result in results if result.verdicts]
    assert len(found) >= 22
    assert {verdict.id for result in found for verdict in result.verdicts} == {1}
    for result in found:
        assert box_iou(result.verdicts[0].box, expected_boxes[result.frame.index]) > 0.6
    scores = [face.p_fake for result in results for face in result.faces if face.p_fake is not None]
    # ~15 Hz over 0.8 s: about 12 classifications, and real probabilities.
    assert 8 <= len(scores) <= 16 and all(0.0 <= score <= 1.0 for score in scores)
    assert all(isinstance(result.verdicts[0].state, VerdictState) for result in found)


@pytest.mark.slow
def test_real_stages_keep_ids_of_two_real_faces_crossing(astronaut_bgr):
    patch = head_patch(astronaut_bgr)
    identities: dict[str, set[int]] = {"left": set(), "right": set()}
    with build_engine(EngineSettings(classify_hz=5)) as engine:
        for index in range(30):
            left = Placement(20 + 14 * index, 40, 0.7)
            right = Placement(460 - 14 * index, 150, 0.7)
            # The right-hand face passes in front of the left-hand one.
            image = compose(patch, [left, right], 640, 360)
            result = engine.process(Frame(image, index, index * 33.3))
            for verdict in result.verdicts:
                ious = {
                    name: box_iou(verdict.box, placement.face_box())
                    for name, placement in (("left", left), ("right", right))
                }
                name = max(ious, key=ious.get)
                if ious[name] > 0.5:
                    identities[name].add(verdict.id)
    assert len(identities["left"]) == 1 and len(identities["right"]) == 1
    assert identities["left"] != identities["right"]


@pytest.mark.slow
def test_shared_image_mode_detectors_find_the_same_faces_as_per_source_video_ones(astronaut_bgr):
    # BlazeFace keeps nothing between frames: a pool in IMAGE mode must see what VIDEO mode sees.
    frames, _ = moving_face_frames(astronaut_bgr, count=12)
    boxes = {}
    for shared in (False, True):
        with build_engine(EngineSettings(classify_hz=0), shared_detectors=shared) as engine:
            results = [
                engine.process_batch(
                    [Frame(image, index, index * 33.3, source_id=name) for name in ("a", "b")]
                )
                for index, image in enumerate(frames)
            ]
        boxes[shared] = [[face.box for result in batch for face in result.faces] for batch in results]
    assert sum(len(found) for found in boxes[False]) >= 20
    for video_boxes, image_boxes in zip(boxes[False], boxes[True], strict=True):
        assert len(video_boxes) == len(image_boxes)
        assert all(box_iou(a, b) > 0.98 for a, b in zip(video_boxes, image_boxes, strict=True))
