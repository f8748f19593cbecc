"""Shared fixtures. Media is generated here; ../shared/data is used only when present."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import stream_detector  # noqa: F401  (pylibsrtp before TensorFlow, see the package docstring)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """A real photographed face (scikit-image's astronaut, public domain), 512x512 BGR."""
    import skimage.data

    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not on this machine (../shared/data is optional)")
    return path
