"""Per-face temporal smoothing of p(fake) into REAL / FAKE / UNCERTAIN verdicts, with hysteresis.

``Smoother.update(faces, timestamp_ms, unusable)`` is pure (the clock is an argument).

For each track id the smoother keeps an exponentially time-decayed mean of the calibrated scores it
has been given: every score weighs 1 when it arrives and half as much ``half_life_ms`` later. The
decayed weight is the *evidence*: about how many recent scores stand behind the mean. Averaging in
probability space (not logits) keeps one wild frame from dominating.

States:
- UNCERTAIN while the evidence is below ``min_evidence`` (a new face, or one that has been too small or
  too blurred to classify for a while, since its old evidence decays), or while the mean sits between
  the thresholds.
- FAKE when the mean reaches ``fake_enter``; it stays FAKE until the mean falls below ``fake_exit``.
- REAL when the mean falls to ``real_enter``; it stays REAL until the mean rises above ``real_exit``.
The gap between enter and exit thresholds is the hysteresis that stops a verdict flickering when the
score hovers near a threshold.

``Verdict.first_verdict_ms`` is the time-to-first-verdict: milliseconds from the track's first
appearance to its first REAL or FAKE state (None until it has one).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_detector.pipeline.types import TrackedFace, Verdict, VerdictState
from stream_detector.settings import setting

# The live FAKE thresholds recorded for the shipped model by scripts/evaluate_clips.py
# --choose-threshold in model/training.json, one per scoring, since a threshold belongs to the scores it
# was chosen on: "live_threshold" with the engine's mirror averaging (its default),
# "live_threshold_without_mirror" with each crop scored alone. Neither is below the 1 %-false-alarm
# score of the validation faces scored the same way; tests/pipeline/test_smoothing.py checks both
# against the record.
LIVE_THRESHOLD_MIRROR_AVERAGED = 0.856
LIVE_THRESHOLD_WITHOUT_MIRROR = 0.885


def live_threshold(mirror_average: bool) -> float:
    """The recorded live FAKE threshold for a scoring (EngineSettings.mirror_average)."""
    return LIVE_THRESHOLD_MIRROR_AVERAGED if mirror_average else LIVE_THRESHOLD_WITHOUT_MIRROR


def live_threshold_key(mirror_average: bool) -> str:
    """The training record's key for the live threshold of a scoring (evaluate_clips.py writes it)."""
    return "live_threshold" if mirror_average else "live_threshold_without_mirror"


def recorded_live_threshold(model_dir: str | Path | None, mirror_average: bool) -> tuple[float, Path | None]:
    """The live FAKE threshold for the model in ``model_dir`` and a scoring, and the record it came
    from: the one scripts/evaluate_clips.py --choose-threshold wrote in the training record beside
    the model (training.json), since a threshold belongs to the scores it was chosen on. Where that
    folder records none (or no folder is given): the shipped model's, and None. A record that does
    not parse: ValueError naming it."""
    key = live_threshold_key(mirror_average)
    record_path = Path(model_dir) / "training.json" if model_dir else None
    if record_path is not None and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{record_path}: not a training record ({error})") from None
        entry = record.get(key) if isinstance(record, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("fake_enter"), (int, float)):
            return float(entry["fake_enter"]), record_path
    return live_threshold(mirror_average), None


@dataclass(frozen=True)
class SmootherSettings:
    half_life_ms: float = setting(
        1000.0, "a score weighs half as much this long after it arrived", minimum=1.0, maximum=600000.0
    )
    min_evidence: float = setting(
        4.0, "decayed number of scores a verdict needs; UNCERTAIN below", minimum=0.0, maximum=1000.0
    )
    # The default is the threshold for the engine's default scoring; a command or config that turns
    # mirror averaging off takes live_threshold(False) unless fake_enter is given.
    fake_enter: float = setting(
        LIVE_THRESHOLD_MIRROR_AVERAGED,
        "smoothed p(fake) at which a face becomes FAKE (default: the model's recorded live threshold "
        f"for the scoring: {LIVE_THRESHOLD_MIRROR_AVERAGED} mirror-averaged, "
        f"{LIVE_THRESHOLD_WITHOUT_MIRROR} without)",
        minimum=0.0,
        maximum=1.0,
    )
    fake_exit: float = setting(
        0.55, "a FAKE face stays FAKE until its mean falls below this", minimum=0.0, maximum=1.0
    )
    real_enter: float = setting(
        0.30, "smoothed p(fake) at which a face becomes REAL", minimum=0.0, maximum=1.0
    )
    real_exit: float = setting(
        0.45, "a REAL face stays REAL until its mean rises above this", minimum=0.0, maximum=1.0
    )

    def __post_init__(self) -> None:
        if not (0.0 <= self.real_enter <= self.real_exit <= self.fake_exit <= self.fake_enter <= 1.0):
            raise ValueError(
                "smoothing thresholds must satisfy real_enter <= real_exit <= fake_exit <= fake_enter "
                f"in [0, 1], got {self.real_enter}, {self.real_exit}, {self.fake_exit}, {self.fake_enter}"
            )
        if self.half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be > 0, got {self.half_life_ms}")


def classify_score(p_fake: float, settings: SmootherSettings) -> VerdictState:
    """The state one score alone deserves, without history (used for still images)."""
    if p_fake >= settings.fake_enter:
        return VerdictState.FAKE
    if p_fake <= settings.real_enter:
        return VerdictState.REAL
    return VerdictState.UNCERTAIN


@dataclass
class _TrackEvidence:
    first_seen_ms: float
    last_update_ms: float
    weighted_sum: float = 0.0
    weight: float = 0.0
    observations: int = 0
    state: VerdictState = VerdictState.UNCERTAIN
    since_ms: float = 0.0
    first_verdict_ms: float | None = None
    last_mean: float = 0.5


class Smoother:
    """Evidence and state per track id of one source."""

    def __init__(self, settings: SmootherSettings | None = None) -> None:
        self.settings = settings or SmootherSettings()
        self._tracks: dict[int, _TrackEvidence] = {}

    def update(
        self,
        faces: Sequence[TrackedFace],
        timestamp_ms: float,
        unusable: Collection[int] = (),
    ) -> tuple[Verdict, ...]:
        """Verdicts for the faces of one frame, in their order.

        A face's ``p_fake`` is None when it was not classified this frame (rate limit); ids in
        ``unusable`` were too small or blurred, and their score, if any, is ignored.
        """
        return tuple(self._update_one(face, timestamp_ms, face.id in unusable) for face in faces)

    def _update_one(self, face: TrackedFace, timestamp_ms: float, unusable: bool) -> Verdict:
        settings = self.settings
        track = self._tracks.get(face.id)
        if track is None:
            track = _TrackEvidence(
                first_seen_ms=timestamp_ms, last_update_ms=timestamp_ms, since_ms=timestamp_ms
            )
            self._tracks[face.id] = track
        elapsed = max(timestamp_ms - track.last_update_ms, 0.0)
        decay = 0.5 ** (elapsed / settings.half_life_ms)
        track.weighted_sum *= decay
        track.weight *= decay
        track.last_update_ms = max(track.last_update_ms, timestamp_ms)
        if face.p_fake is not None and not unusable:
            track.weighted_sum += float(face.p_fake)
            track.weight += 1.0
            track.observations += 1
        if track.weight > 1e-9:
            track.last_mean = track.weighted_sum / track.weight
        mean = track.last_mean

        state = self._next_state(track.state, mean, track.weight)
        if state != track.state:
            track.state = state
            track.since_ms = timestamp_ms
        if state != VerdictState.UNCERTAIN and track.first_verdict_ms is None:
            track.first_verdict_ms = timestamp_ms - track.first_seen_ms
        return Verdict(
            id=face.id,
            box=face.box,
            state=state,
            p_smoothed=float(mean),
            since_ms=track.since_ms,
            evidence=track.observations,
            first_verdict_ms=track.first_verdict_ms,
        )

    def _next_state(self, state: VerdictState, mean: float, weight: float) -> VerdictState:
        settings = self.settings
        if weight < settings.min_evidence:
            return VerdictState.UNCERTAIN
        if state == VerdictState.FAKE and mean >= settings.fake_exit:
            return VerdictState.FAKE
        if state == VerdictState.REAL and mean <= settings.real_exit:
            return VerdictState.REAL
        return classify_score(mean, settings)

    def forget(self, track_ids: Iterable[int]) -> None:
        for track_id in track_ids:
            self._tracks.pop(track_id, None)

    def known_ids(self) -> set[int]:
        return set(self._tracks)
