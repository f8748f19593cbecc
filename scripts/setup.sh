#!/usr/bin/env bash
# Sets up everything the project needs to run, from a machine with nothing but Python 3.11:
# the virtual environment with the pinned packages, the project itself, and the BlazeFace face
# detector models taken from the mediapipe 0.10.21 wheel on the package index (checksum-verified).
# Idempotent: a stamp skips the pip step when nothing it depends on changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.stream-detector-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
fi

# The face detector models: mediapipe >= 0.10.30 ships none, 0.10.21's wheel carries both.
models=model/face_detector
declare -A SHA=(
    [face_detection_full_range_sparse.tflite]=2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1
    [face_detection_short_range.tflite]=bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8
)
verified() {
    for name in "${!SHA[@]}"; do
        [ -f "$models/$name" ] || return 1
        [ "$(sha256sum "$models/$name" | cut -d' ' -f1)" = "${SHA[$name]}" ] || return 1
    done
}
if ! verified; then
    mkdir -p "$models" .cache/wheels
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        -d .cache/wheels "mediapipe==0.10.21"
    wheel=$(ls .cache/wheels/mediapipe-0.10.21-*.whl | head -n 1)
    .venv/bin/python - "$wheel" "$models" <<'PY'
import sys, zipfile, pathlib
wheel, target = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("mediapipe/modules/face_detection/") and name.endswith(".tflite"):
            (target / pathlib.Path(name).name).write_bytes(archive.read(name))
PY
    verified || { echo "setup: face detector models in $models fail their checksum" >&2; exit 1; }
fi
echo "setup: ready (.venv, $models)"
