"""The wire formats other clients rely on: the ``POST /offer`` body and the DataChannel message.

Offer (request and answer), as in aiortc's examples::

    {"sdp": "v=0\\r\\n...", "type": "offer"}      ->      {"sdp": "v=0\\r\\n...", "type": "answer"}

One DataChannel message (JSON text) per processed frame::

    {"type": "verdicts", "frame": 42, "width": 640, "height": 480,
     "faces": [{"id": 1, "box": [x1, y1, x2, y2], "state": "REAL", "p_smoothed": 0.07,
                "too_small": false, "classified": true, "thumbnail": "data:image/jpeg;base64,..."}],
     "fps": 29.8, "latency_ms": 21.4, "dropped": 3, "source": "screen",
     "call": {"verdict": "REAL", "headline": "no sign of a deepfake so far", "faces": 1,
              "fake_faces": 0, "checked_s": 12.5},
     "smallest_judged_px": 48}

``thumbnail`` (a 64 px JPEG of the face) comes at most once a second per face; ``classified`` says
the face was scored in this frame (faces are scored at ``--classify-hz``); ``too_small`` marks a
face below ``smallest_judged_px`` (it stays UNCERTAIN: not judged); ``source`` is what the page said it
sends (``camera``, ``screen`` or ``file``, by a ``{"type": "source", "kind": ...}`` message on the
channel; ``camera`` until then); ``call`` is the verdict for the whole call, by scan's file rule.

``box`` is in pixels of the frame the server received (``width`` x ``height``); ``p_smoothed`` is the
smoothed p(fake) behind ``state``; ``latency_ms`` is the server's time from receiving the frame to
handing back the annotated one; ``dropped`` counts frames skipped so far because the engine was busy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.types import Verdict

MAX_OFFER_BYTES = 256 * 1024
VERDICT_CHANNEL_LABEL = "verdicts"
REQUIRED_SDP_FIELDS = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:")


class OfferError(StreamDetectorError):
    """An offer that cannot be used; the message is the one-line reason returned with HTTP 400."""


@dataclass(frozen=True)
class SessionDescription:
    sdp: str
    type: str

    def to_json(self) -> dict[str, str]:
        return {"sdp": self.sdp, "type": self.type}


def parse_offer(body: bytes) -> SessionDescription:
    """The offer in a request body, or an OfferError naming what is wrong with it."""
    if len(body) > MAX_OFFER_BYTES:
        raise OfferError(f"offer is larger than {MAX_OFFER_BYTES // 1024} KiB")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OfferError('offer is not JSON (expected {"sdp": ..., "type": "offer"})') from None
    except RecursionError:  # deeply nested arrays or objects: not an offer, and not worth a 500
        raise OfferError('offer is nested too deeply (expected {"sdp": ..., "type": "offer"})') from None
    if not isinstance(data, dict):
        raise OfferError('offer must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind = data.get("sdp"), data.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError('offer has no "sdp" string')
    if kind != "offer":
        raise OfferError(f'offer "type" must be "offer", not {kind!r}')
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError('offer "sdp" is not a session description (it must start with v=0)')
    if "m=video" not in sdp:
        raise OfferError("offer has no video track (m=video); send the camera's video")
    # What every WebRTC offer carries and aiortc asserts on (an AssertionError is no answer).
    missing = [field for field in REQUIRED_SDP_FIELDS if field not in sdp]
    if missing:
        raise OfferError(f'offer "sdp" is not a WebRTC offer: it lacks {", ".join(missing)}')
    return SessionDescription(sdp=sdp, type=kind)


SOURCE_KINDS = ("camera", "screen", "file")


def face_entry(verdict: Verdict, extra: Mapping[str, object] | None = None) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": int(verdict.id),
        "box": [round(float(value), 1) for value in verdict.box],
        "state": str(verdict.state),
        "p_smoothed": round(float(verdict.p_smoothed), 4),
    }
    if extra:
        entry.update(extra)
    return entry


def verdict_message(
    *,
    frame_index: int,
    width: int,
    height: int,
    verdicts: Sequence[Verdict],
    fps: float,
    latency_ms: float,
    dropped: int,
    extras: Mapping[int, Mapping[str, object]] | None = None,
    source: str = "camera",
    call: Mapping[str, object] | None = None,
    smallest_judged_px: int | None = None,
) -> str:
    message: dict[str, object] = {
        "type": "verdicts",
        "frame": frame_index,
        "width": width,
        "height": height,
        "faces": [face_entry(verdict, (extras or {}).get(verdict.id)) for verdict in verdicts],
        "fps": round(fps, 2),
        "latency_ms": round(latency_ms, 2),
        "dropped": dropped,
        "source": source,
    }
    if call is not None:
        message["call"] = dict(call)
    if smallest_judged_px is not None:
        message["smallest_judged_px"] = smallest_judged_px
    return json.dumps(message, separators=(",", ":"))


def parse_control(text: str) -> str | None:
    """The source kind in a page's control message ``{"type": "source", "kind": "screen"}``, or None
    for anything else (ignored: the channel is the page's, not an API)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and data.get("type") == "source" and data.get("kind") in SOURCE_KINDS:
        return str(data["kind"])
    return None
