import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from stream_detector.quiet import _without_noise

REPO = Path(__file__).resolve().parents[1]

NOISE_LINES = [
    b"WARNING: [model_load.cc:402] Sparsity tensors may not yet be fully supported.",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    b"W0000 00:00:1796156600.290782    6351 inference_runner_litert.cc:1433] Input tensor memory ...",
    b"[mpeg4 @ 0x562cb4d55cc0] header damaged",
    b"I0000 00:00:1796156594.791026    6320 port.cc:153] oneDNN custom operations are on.",
]


@pytest.mark.parametrize("line", NOISE_LINES)
def test_noise_lines_go_and_their_newline_with_them(line):
    assert _without_noise(line, b"\n") == b""


def test_our_lines_pass_and_a_bar_keeps_its_text():
    line = b"stream-detector scan: error: no such file: x.mp4"
    assert _without_noise(line, b"\n") == line + b"\n"
    assert _without_noise(b"clip.mp4:  40%|####", b"\r") == b"clip.mp4:  40%|####\r"
    # A library writing while a bar is drawn: the bar's text stays, the noise goes.
    assert _without_noise(b"clip.mp4:  4%|WARNING: Logging before InitGoogle() is written", b"\n") == (
        b"clip.mp4:  4%|"
    )


@pytest.mark.slow
def test_a_scan_prints_only_its_own_lines_unless_verbose(tmp_path, astronaut_bgr):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), astronaut_bgr)

    def scan(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "stream_detector.cli",
                *extra,
                "scan",
                str(image),
                "--json",
                str(tmp_path / "r.json"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    quiet, verbose = scan(), scan("--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        line for line in quiet.stderr.strip().splitlines() if line.startswith("scan:")
    ]
    assert len(quiet.stderr.strip().splitlines()) == 1
    # The filter is what hides them: they are there with --verbose.
    assert "Sparsity tensors" in verbose.stderr
