import pytest

from stream_detector.pipeline.smoothing import Smoother, SmootherSettings, classify_score
from stream_detector.pipeline.types import TrackedFace, VerdictState

BOX = (10.0, 10.0, 110.0, 110.0)


def face(p_fake, track_id=1):
    return TrackedFace(id=track_id, box=BOX, p_fake=p_fake)


def feed(smoother, scores, start_ms=0.0, step_ms=66.7, track_id=1, unusable=()):
    verdicts = []
    for index, score in enumerate(scores):
        (verdict,) = smoother.update([face(score, track_id)], start_ms + index * step_ms, unusable)
        verdicts.append(verdict)
    return verdicts


def test_uncertain_until_evidence_then_fake_with_time_to_first_verdict():
    # These tests name the FAKE threshold: the default follows the shipped model's record (tested
    # below), and the logic is the same at any threshold.
    smoother = Smoother(SmootherSettings(min_evidence=4.0, fake_enter=0.8))
    verdicts = feed(smoother, [0.95] * 10)
    states = [verdict.state for verdict in verdicts]
    assert states[0] == VerdictState.UNCERTAIN
    assert states[-1] == VerdictState.FAKE
    first_fake = states.index(VerdictState.FAKE)
    assert first_fake >= 3  # four recent scores are needed, decayed a little by time
    assert verdicts[-1].first_verdict_ms == pytest.approx(first_fake * 66.7)
    assert verdicts[-1].since_ms == pytest.approx(first_fake * 66.7)
    assert verdicts[-1].evidence == 10
    assert verdicts[-1].p_smoothed == pytest.approx(0.95)


def test_real_faces_become_real():
    verdicts = feed(Smoother(), [0.1, 0.2, 0.15, 0.05, 0.1, 0.2, 0.1])
    assert verdicts[-1].state == VerdictState.REAL
    assert verdicts[0].first_verdict_ms is None


def test_hysteresis_holds_a_verdict_near_its_threshold():
    settings = SmootherSettings(fake_enter=0.7, fake_exit=0.55, half_life_ms=300.0)
    smoother = Smoother(settings)
    feed(smoother, [0.9] * 10)
    # Scores hovering at 0.62: below the entry threshold, above the exit one.
    hovering = feed(smoother, [0.6, 0.65] * 10, start_ms=10 * 66.7)
    assert all(verdict.state == VerdictState.FAKE for verdict in hovering)
    # A fresh track hovering at the same level never enters FAKE.
    fresh = feed(Smoother(settings), [0.6, 0.65] * 10, track_id=2)
    assert all(verdict.state == VerdictState.UNCERTAIN for verdict in fresh)
    # Clearly lower scores do leave FAKE.
    leaving = feed(smoother, [0.3] * 15, start_ms=30 * 66.7)
    assert leaving[-1].state != VerdictState.FAKE


def test_one_wild_score_does_not_flip_a_verdict():
    smoother = Smoother(SmootherSettings(fake_enter=0.8))
    feed(smoother, [0.1] * 20)
    (verdict,) = smoother.update([face(0.99)], 20 * 66.7)
    assert verdict.state == VerdictState.REAL


def test_frames_without_a_score_keep_the_verdict_and_unusable_scores_are_ignored():
    smoother = Smoother(SmootherSettings(half_life_ms=500.0, fake_enter=0.8))
    feed(smoother, [0.9] * 10)
    (not_classified,) = smoother.update([face(None)], 10 * 66.7)
    assert not_classified.state == VerdictState.FAKE and not_classified.evidence == 10
    # A blurred face's scores are ignored, so its evidence decays and the verdict goes UNCERTAIN.
    blurred = feed(smoother, [0.1] * 40, start_ms=11 * 66.7, unusable={1})
    assert blurred[-1].state == VerdictState.UNCERTAIN
    assert blurred[-1].evidence == 10
    assert blurred[-1].p_smoothed == pytest.approx(0.9)


def test_tracks_are_independent_and_can_be_forgotten():
    smoother = Smoother(SmootherSettings(fake_enter=0.8))
    for index in range(8):
        smoother.update([face(0.95, 1), face(0.05, 2)], index * 66.7)
    first, second = smoother.update([face(0.95, 1), face(0.05, 2)], 8 * 66.7)
    assert (first.state, second.state) == (VerdictState.FAKE, VerdictState.REAL)
    assert smoother.known_ids() == {1, 2}
    smoother.forget([1])
    assert smoother.known_ids() == {2}
    (restarted,) = smoother.update([face(0.95, 1)], 9 * 66.7)
    assert restarted.state == VerdictState.UNCERTAIN and restarted.evidence == 1


def test_classify_score_and_settings_validation():
    settings = SmootherSettings(fake_enter=0.8)
    assert classify_score(0.9, settings) == VerdictState.FAKE
    assert classify_score(0.1, settings) == VerdictState.REAL
    assert classify_score(0.5, settings) == VerdictState.UNCERTAIN
    with pytest.raises(ValueError):
        SmootherSettings(fake_enter=0.5, fake_exit=0.6)
    with pytest.raises(ValueError):
        SmootherSettings(half_life_ms=0)


def test_default_fake_threshold_is_the_live_threshold_recorded_for_the_shipped_model():
    import json

    from tests.conftest import REPO

    record = json.loads((REPO / "model" / "training.json").read_text())
    # 99 % of real validation faces score under this, scored as the engine scores them (int8,
    # mirror-averaged): the live threshold is never below it.
    live = record["live_threshold"]
    assert live["face_threshold_scoring"] == live["classifier"]
    assert live["fake_enter"] >= live["face_threshold"]
    # scripts/evaluate_clips.py --choose-threshold: also above every validation real clip's track.
    assert live["fake_enter"] > live["highest_validation_real_track"]
    # A retrained model that moves it needs a new default (and configs/daemon.toml, the docs).
    assert SmootherSettings().fake_enter == pytest.approx(live["fake_enter"], abs=0.005)


def test_each_scoring_has_its_own_recorded_threshold():
    import json

    from stream_detector.pipeline.smoothing import live_threshold
    from tests.conftest import REPO

    record = json.loads((REPO / "model" / "training.json").read_text())
    for mirror_average, key, classifier in (
        (True, "live_threshold", "+mirror"),
        (False, "live_threshold_without_mirror", "int8"),
    ):
        live = record[key]
        # Chosen on tracks scored the way this threshold will be used.
        assert live["classifier"].endswith(classifier), (key, live["classifier"])
        # Its face half too: the validation faces scored the same way, not train.py's Keras figure.
        assert live["face_threshold_scoring"] == live["classifier"]
        assert live["fake_enter"] >= live["face_threshold"]
        assert live["fake_enter"] > live["highest_validation_real_track"]
        assert live_threshold(mirror_average) == pytest.approx(live["fake_enter"], abs=0.005)
    # The default scoring's threshold is the settings' default.
    assert SmootherSettings().fake_enter == live_threshold(True)


@pytest.mark.parametrize(
    ("document", "pattern"),
    [
        ("README.md", r"live threshold \((0\.\d+)\)"),
        ("docs/webcam.md", r"\*\*FAKE\*\* at a mean of (0\.\d+)"),
        ("docs/scan.md", r"\(FAKE >= (0\.\d+),"),
    ],
)
def test_hand_written_docs_quote_the_default_fake_threshold(document, pattern):
    import re

    from tests.conftest import REPO

    # These sentences are typed, not generated (docs/daemon.md's table is): a new model's threshold
    # must reach them too, or users read a verdict rule the engine does not apply.
    quoted = re.findall(pattern, (REPO / document).read_text())
    assert quoted, f"{document} no longer says the FAKE threshold where this test looks"
    assert {float(value) for value in quoted} == {SmootherSettings().fake_enter}
