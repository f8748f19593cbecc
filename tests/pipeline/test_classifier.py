"""Mirror averaging: each crop and its mirror, scored in one call, averaged in logit space."""

import numpy as np
import pytest

from stream_detector.pipeline.classifier import mirror_averaged


def _logit(p):
    return np.log(p / (1 - p))


def left_brightness_classifier(calls):
    """A fake classifier whose p(fake) follows the mean of the left half of each crop: not symmetric."""

    def classify(crops):
        calls.append(len(crops))
        left = crops[:, :, : crops.shape[2] // 2].mean(axis=(1, 2, 3)) / 255.0
        return (0.05 + 0.9 * left).astype(np.float32)

    return classify


def test_one_call_of_twice_the_batch_and_the_logit_mean():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    crops[0, :, :4] = 250  # bright left half: its mirror has it on the right
    crops[0, :, 4:] = 10
    calls = []
    classify = left_brightness_classifier(calls)
    averaged = mirror_averaged(classify, crops)
    assert calls == [6]
    plain = classify(crops)
    mirrored = classify(crops[:, :, ::-1])
    expected = 1 / (1 + np.exp(-(_logit(plain.astype(np.float64)) + _logit(mirrored.astype(np.float64))) / 2))
    np.testing.assert_allclose(averaged, expected, rtol=1e-5)
    # The lopsided crop scores high one way and low the other; the average sits between them.
    assert plain[0] > 0.8 and mirrored[0] < 0.2
    assert mirrored[0] < averaged[0] < plain[0]


def test_a_symmetric_crop_keeps_its_score():
    crops = np.full((2, 8, 8, 3), 128, np.uint8)
    calls = []
    classify = left_brightness_classifier(calls)
    np.testing.assert_allclose(mirror_averaged(classify, crops), classify(crops), rtol=1e-5)


def test_empty_and_malformed_batches():
    assert mirror_averaged(left_brightness_classifier([]), np.zeros((0, 8, 8, 3), np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="crops must be"):
        mirror_averaged(left_brightness_classifier([]), np.zeros((8, 8, 3), np.uint8))


class FakeInner:
    name = "fake"

    def __init__(self):
        self.calls = []
        self.closed = False
        self.classify = left_brightness_classifier(self.calls)

    def close(self):
        self.closed = True


def test_the_wrapper_says_so_in_its_name_and_closes_what_it_wraps():
    from stream_detector.pipeline.classifier import MirrorAveragedClassifier

    inner = FakeInner()
    wrapped = MirrorAveragedClassifier(inner)
    crops = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(wrapped.classify(crops), mirror_averaged(inner.classify, crops), rtol=1e-6)
    assert wrapped.name == "fake+mirror" and inner.calls[0] == 8
    wrapped.close()
    assert inner.closed


@pytest.mark.slow
def test_the_engine_mirror_averages_the_shipped_model_by_default(astronaut_bgr):
    from stream_detector.pipeline.classifier import load_classifier
    from stream_detector.pipeline.crops import crop_face
    from stream_detector.pipeline.engine import EngineSettings, build_engine

    crop = crop_face(astronaut_bgr, (175, 55, 320, 200))[None]
    plain = load_classifier("int8")
    wrapped = load_classifier("int8", mirror_average=True)
    assert plain.name == "litert-int8" and wrapped.name == "litert-int8+mirror"
    # The real model is not mirror-symmetric, so the averaged score is its own number, and it is the
    # log-odds mean of the crop's and its mirror's.
    expected = 1 / (
        1 + np.exp(-(_logit(plain.classify(crop)) + _logit(plain.classify(crop[:, :, ::-1]))) / 2)
    )
    np.testing.assert_allclose(wrapped.classify(crop), expected, rtol=1e-4)
    with build_engine(EngineSettings(backend="int8")) as engine:
        assert engine.backend == "litert-int8+mirror"
    with build_engine(EngineSettings(backend="int8", mirror_average=False)) as engine:
        assert engine.backend == "litert-int8"


def test_every_command_can_turn_it_off():
    import argparse

    from stream_detector.apps.arguments import add_engine_arguments
    from stream_detector.pipeline.engine import settings_from_arguments
    from stream_detector.pipeline.smoothing import live_threshold

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser, classify_hz=5.0)
    on = settings_from_arguments(parser.parse_args([]))
    off = settings_from_arguments(parser.parse_args(["--no-mirror-average"]))
    assert on.mirror_average is True and off.mirror_average is False
    # The FAKE threshold is the one chosen on scores of the same kind: plain scores reach higher on
    # real clips, so a command that turns the mirror off must not keep the mirror's threshold.
    assert on.smoothing.fake_enter == live_threshold(True)
    assert off.smoothing.fake_enter == live_threshold(False) > on.smoothing.fake_enter
