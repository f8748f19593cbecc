"""The reference project's recipe, reproduced for comparison: whole images, ffhq-tpdne only."""

from __future__ import annotations

from pathlib import Path

import cv2

from stream_detector.training.dataset import FaceSet, decode_image

REFERENCE_SOURCE = "ffhq-tpdne"
REFERENCE_SIZE = 128


def whole_image(path: str | Path, size: int = REFERENCE_SIZE):
    """The reference's input: the whole file decoded to RGB and resized, no face crop."""
    image = cv2.cvtColor(decode_image(Path(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(
        image, (size, size), interpolation=cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    )


def reference_sources(sources: dict[str, FaceSet]) -> dict[str, FaceSet]:
    """The reference trained on ffhq-tpdne whole images; same files and groups, hence the same split."""
    faces = sources[REFERENCE_SOURCE]
    crops = [whole_image(file) for file in faces.files]
    return {REFERENCE_SOURCE: FaceSet(REFERENCE_SOURCE, crops, faces.labels, faces.files, faces.groups, ())}
