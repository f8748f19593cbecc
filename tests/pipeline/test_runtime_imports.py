"""The runtime on the LiteRT backend never imports TensorFlow, Keras or the training package."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHECK = r"""
import sys
import cv2
import numpy as np
import skimage.data

from stream_detector import cli
from stream_detector.pipeline.engine import EngineSettings, build_engine
from stream_detector.pipeline.types import Frame
from tools.media import moving_face_frames, write_video

folder = sys.argv[1]
cv2.imwrite(f"{folder}/face.jpg", cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
frames, _ = moving_face_frames(astronaut, count=20)
write_video(f"{folder}/clip.avi", frames, fps=10)
assert cli.main(["scan", f"{folder}/face.jpg", "--backend", "int8", "--json", f"{folder}/a.json"]) == 0
assert cli.main(["scan", f"{folder}/clip.avi", "--backend", "int8", "--json", f"{folder}/b.json", "--no-progress"]) == 0
# What the daemon and serve build: the shared detector pool and the int8 classifier, on a frame.
import stream_detector.apps.daemon, stream_detector.apps.webcam, stream_detector.apps.webrtc  # noqa: E401
import stream_detector.daemon.service, stream_detector.webrtc.server, stream_detector.webrtc.peer  # noqa: E401
engine = build_engine(EngineSettings(backend="int8"), shared_detectors=True)
engine.prepare("check")
engine.process(Frame(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), 0, 0.0, "check"))
engine.close()
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "jax"))
loaded += sorted(name for name in sys.modules if name.startswith("stream_detector.training"))
print("LOADED", loaded[:10])
"""


def test_scan_daemon_and_serve_on_litert_import_no_tensorflow_and_no_training_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout[-2000:]
