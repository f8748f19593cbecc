#!/usr/bin/env bash
# Sets up everything the project needs to run, from a machine with nothing but Python 3.11:
# the virtual environment with the pinned packages, the project itself, and the BlazeFace face
# detector models taken from the mediapipe 0.10.21 wheel on the package index (checksum-verified).
# Idempotent: a stamp skips the pip step when nothing it depends on changed.
# --cluster also installs the optional Ray extra (requirements-cluster.lock), which the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=0
[ "${1:-}" = "--cluster" ] && cluster=1

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
cluster_stamp=.venv/.stream-detector-cluster-installed
cluster_want=$(cat requirements.lock requirements-cluster.lock | sha256sum | cut -d' ' -f1)
if [ "$cluster" = 1 ] && { [ ! -f "$cluster_stamp" ] || [ "$(cat "$cluster_stamp")" != "$cluster_want" ]; }; then
    .venv/bin/python -m pip install -q -r requirements.lock -r requirements-cluster.lock
    .venv/bin/python -m pip check >/dev/null
    echo "$cluster_want" > "$cluster_stamp"
fi

# The face models (BlazeFace detectors, FaceMesh landmarks for training): mediapipe >= 0.10.30 ships
# none, 0.10.21's wheel carries them. Their checksums live in one file, stream_detector/pipeline/face_models.sha256,
# which stream_detector/pipeline/faces.py reads too.
models=model/face_detector
verified() {
    [ -d "$models" ] && (cd "$models" && sha256sum --quiet -c ../../stream_detector/pipeline/face_models.sha256 >/dev/null 2>&1)
}
if ! verified; then
    mkdir -p "$models" .cache/wheels
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        -d .cache/wheels "mediapipe==0.10.21"
    wheel=$(ls .cache/wheels/mediapipe-0.10.21-*.whl | head -n 1)
    .venv/bin/python - "$wheel" "$models" stream_detector/pipeline/face_models.sha256 <<'PY'
import sys, zipfile, pathlib
wheel, target, sums = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
wanted = {line.split()[1] for line in sums.read_text().splitlines() if line.strip()}
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if pathlib.Path(name).name in wanted and name.startswith("mediapipe/modules/face_"):
            (target / pathlib.Path(name).name).write_bytes(archive.read(name))
PY
    verified || { echo "setup: face models in $models fail their checksums (stream_detector/pipeline/face_models.sha256)" >&2; exit 1; }
fi
echo "setup: ready (.venv, $models)"
