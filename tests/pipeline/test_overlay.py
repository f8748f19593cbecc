import numpy as np
import pytest

from stream_detector.pipeline.engine import EngineSettings, build_engine
from stream_detector.pipeline.overlay import STATE_COLOURS, draw, hud_text
from stream_detector.pipeline.types import Frame, Stats, Verdict, VerdictState
from tools.media import moving_face_frames


def verdict(state, box=(200.0, 150.0, 400.0, 350.0), p=0.8, track_id=7):
    return Verdict(id=track_id, box=box, state=state, p_smoothed=p, since_ms=0.0)


def colour_mask(image, colour, tolerance=40):
    return np.all(np.abs(image.astype(int) - np.array(colour)) <= tolerance, axis=2)


@pytest.mark.parametrize("state", list(VerdictState))
def test_box_is_drawn_in_the_colour_of_its_state(state):
    image = np.full((720, 1280, 3), 128, np.uint8)
    drawn = draw(image, [verdict(state)])
    assert np.all(image == 128)  # the input is left alone
    mask = colour_mask(drawn, STATE_COLOURS[state])
    # The box's left and right edges run the box's height in the state's colour.
    assert mask[160:340, 199:202].all(axis=0).any() and mask[160:340, 398:402].all(axis=0).any()
    # Nothing inside the box is painted.
    assert not mask[200:300, 250:350].any()
    # The label sits above the box.
    assert mask[100:150, 200:300].sum() > 200


def test_score_bar_is_filled_to_p_fake():
    image = np.full((720, 1280, 3), 128, np.uint8)
    for p in (0.25, 0.75):
        drawn = draw(image, [verdict(VerdictState.UNCERTAIN, p=p)])
        bar_row = drawn[362]  # just under the box (y2 = 350 plus the line width)
        filled = colour_mask(bar_row[None], STATE_COLOURS[VerdictState.UNCERTAIN])[0, 200:401].sum()
        assert filled == pytest.approx(p * 200, abs=6)


def test_hud_shows_fps_latency_drops_and_backend():
    stats = Stats(fps=61.26, latency_ms=23.4, dropped_frames=5, backend="litert-int8")
    text = hud_text(stats)
    assert "61.3 fps" in text and "latency   23 ms" in text and "dropped 5" in text and "litert-int8" in text
    image = np.full((480, 640, 3), 200, np.uint8)
    drawn = draw(image, [], stats, status="PAUSED")
    # A darkened panel top left, with white text in it; the rest untouched.
    panel = drawn[:40, :200]
    assert panel.mean() < 150 and (panel == 255).all(axis=2).any()
    assert np.all(drawn[300:, 400:] == 200)


def test_boxes_outside_the_frame_and_in_place_drawing():
    image = np.zeros((100, 120, 3), np.uint8)
    result = draw(image, [verdict(VerdictState.FAKE, box=(-50.0, -20.0, 500.0, 400.0))], copy=False)
    assert result is image and colour_mask(image, STATE_COLOURS[VerdictState.FAKE]).any()
    assert draw(np.zeros((10, 10, 3), np.uint8), [verdict(VerdictState.REAL, box=(2, 2, 8, 8))]).shape == (
        10,
        10,
        3,
    )


@pytest.mark.slow
def test_overlay_follows_the_real_face(astronaut_bgr):
    frames, expected = moving_face_frames(astronaut_bgr, count=12)
    with build_engine(EngineSettings()) as engine:
        for index, image in enumerate(frames):
            result = engine.process(Frame(image, index, index * 33.3))
    (last,) = result.verdicts
    drawn = draw(result.frame.image, result.verdicts, Stats(backend=engine.backend))
    mask = colour_mask(drawn, STATE_COLOURS[last.state], tolerance=10)
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = expected[-1]
    # The drawn box's pixels lie around the face, not elsewhere in the frame.
    assert abs(np.median(xs) - (x1 + x2) / 2) < 40 and len(xs) > 200
    assert y1 - 60 < np.median(ys) < y2 + 30


def test_a_banner_sits_apart_from_the_hud():
    stats = Stats(fps=30.0, latency_ms=20.0, dropped_frames=0, backend="litert-int8")
    image = np.full((480, 640, 3), 200, np.uint8)
    with_hud = draw(image, [], stats)
    paused = draw(with_hud, [], banner="PAUSED - p to resume")
    # The HUD corner is exactly as it was: the banner is not drawn over it.
    assert np.array_equal(paused[:60, :300], with_hud[:60, :300])
    bottom = paused[380:, 150:490]
    assert (bottom < 60).all(axis=2).sum() > 2000 and (bottom == 255).all(axis=2).any()
