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
