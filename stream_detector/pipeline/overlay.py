"""Drawing verdicts on a frame: ``draw(image, verdicts, stats) -> image``.

Per face: a box in the colour of its state (REAL green, FAKE red, UNCERTAIN amber), a label
``#id STATE p`` with the smoothed p(fake), and a score bar under the box filled to p(fake).
The HUD (top left): processed fps, capture-to-overlay latency, dropped frames, and the model/backend.
Sizes follow the frame so the overlay reads the same at 480p and 4K.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stream_detector.pipeline.types import Stats, Verdict, VerdictState

# BGR. Saturated and far apart so that they read at a glance (and tests can find them on screen).
STATE_COLOURS: dict[VerdictState, tuple[int, int, int]] = {
    VerdictState.REAL: (0, 200, 0),
    VerdictState.FAKE: (0, 0, 255),
    VerdictState.UNCERTAIN: (0, 190, 255),
}
BAR_BACKGROUND = (70, 70, 70)
HUD_BACKGROUND = (20, 20, 20)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _scale(image: np.ndarray) -> float:
    return max(min(image.shape[:2]) / 720.0, 0.7)


def hud_text(stats: Stats) -> str:
    parts = [
        f"{stats.fps:5.1f} fps",
        f"latency {stats.latency_ms:4.0f} ms",
        f"dropped {stats.dropped_frames}",
    ]
    if stats.backend:
        parts.append(stats.backend)
    return " | ".join(parts)


def draw(
    image: np.ndarray,
    verdicts: Sequence[Verdict],
    stats: Stats | None = None,
    status: str | None = None,
    copy: bool = True,
    banner: str | None = None,
) -> np.ndarray:
    """The frame with its verdicts (and HUD when ``stats`` is given; ``status`` adds a line to it).
    ``banner`` (e.g. PAUSED) is centred at the bottom, clear of the HUD in the top-left corner.
    ``copy=False`` draws in place, saving a 720p copy per frame when the caller owns it."""
    canvas = image.copy() if copy else image
    scale = _scale(canvas)
    for verdict in verdicts:
        _draw_face(canvas, verdict, scale)
    if stats is not None or status:
        lines = [hud_text(stats)] if stats is not None else []
        if status:
            lines.append(status)
        _draw_hud(canvas, lines, scale)
    if banner:
        _draw_banner(canvas, banner, scale)
    return canvas


def _draw_banner(canvas: np.ndarray, text: str, scale: float) -> None:
    height, width = canvas.shape[:2]
    font_scale = 0.9 * scale
    thickness = max(1, int(round(2 * scale)))
    pad = max(4, int(round(10 * scale)))
    (text_width, text_height), baseline = cv2.getTextSize(text, FONT, font_scale, thickness)
    box_width = min(text_width + 2 * pad, width)
    box_height = min(text_height + baseline + 2 * pad, height)
    left = max(0, (width - box_width) // 2)
    top = max(0, height - box_height - pad)
    cv2.rectangle(canvas, (left, top), (left + box_width, top + box_height), HUD_BACKGROUND, cv2.FILLED)
    cv2.putText(
        canvas,
        text,
        (left + pad, top + pad + text_height),
        FONT,
        font_scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def _draw_face(canvas: np.ndarray, verdict: Verdict, scale: float) -> None:
    height, width = canvas.shape[:2]
    colour = STATE_COLOURS[verdict.state]
    thickness = max(2, int(round(3 * scale)))
    x1, y1, x2, y2 = (int(round(value)) for value in verdict.box)
    x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
    y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)

    label = f"#{verdict.id} {verdict.state.value} {verdict.p_smoothed:.2f}"
    font_scale = 0.6 * scale
    text_thickness = max(1, int(round(1.5 * scale)))
    (text_width, text_height), baseline = cv2.getTextSize(label, FONT, font_scale, text_thickness)
    pad = max(2, int(round(4 * scale)))
    label_height = text_height + baseline + 2 * pad
    # Above the box when there is room, else inside its top edge.
    top = y1 - label_height if y1 - label_height >= 0 else y1
    left = min(x1, max(0, width - text_width - 2 * pad))
    cv2.rectangle(canvas, (left, top), (left + text_width + 2 * pad, top + label_height), colour, cv2.FILLED)
    text_colour = (255, 255, 255) if verdict.state == VerdictState.FAKE else (0, 0, 0)
    cv2.putText(
        canvas,
        label,
        (left + pad, top + pad + text_height),
        FONT,
        font_scale,
        text_colour,
        text_thickness,
        cv2.LINE_AA,
    )

    bar_height = max(4, int(round(8 * scale)))
    bar_top = y2 + thickness + 1
    if bar_top + bar_height >= height:
        bar_top = max(0, y2 - thickness - 1 - bar_height)
    cv2.rectangle(canvas, (x1, bar_top), (x2, bar_top + bar_height), BAR_BACKGROUND, cv2.FILLED)
    filled = x1 + int(round((x2 - x1) * min(max(verdict.p_smoothed, 0.0), 1.0)))
    if filled > x1:
        cv2.rectangle(canvas, (x1, bar_top), (filled, bar_top + bar_height), colour, cv2.FILLED)


def _draw_hud(canvas: np.ndarray, lines: Sequence[str], scale: float) -> None:
    font_scale = 0.55 * scale
    text_thickness = max(1, int(round(1.2 * scale)))
    pad = max(3, int(round(6 * scale)))
    sizes = [cv2.getTextSize(line, FONT, font_scale, text_thickness) for line in lines]
    line_height = max(size[0][1] + size[1] for size in sizes) + pad
    box_width = min(max(size[0][0] for size in sizes) + 2 * pad, canvas.shape[1])
    box_height = min(line_height * len(lines) + pad, canvas.shape[0])
    region = canvas[:box_height, :box_width]
    # Half-transparent so the HUD does not hide what is behind it.
    region[:] = (region.astype(np.uint16) * 2 // 5 + np.array(HUD_BACKGROUND, np.uint16) * 3 // 5).astype(
        np.uint8
    )
    for index, line in enumerate(lines):
        baseline_y = pad + (index + 1) * line_height - pad // 2 - sizes[index][1]
        cv2.putText(
            canvas, line, (pad, baseline_y), FONT, font_scale, (255, 255, 255), text_thickness, cv2.LINE_AA
        )
