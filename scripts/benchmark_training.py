"""Training speed of the detector network: float32 against mixed_bfloat16, in one run.

    .venv/bin/python scripts/benchmark_training.py [--sizes 112 224] [--steps 12] [--json OUT]

Each cell is train steps of the reference network (batch 32, Adam with clipping and binary
cross-entropy, as scripts/train.py trains it) on random pixels: the arithmetic only, no data loading
or augmentation, which train.py runs on a thread beside it. float32 is the baseline; the ratio is
mixed_bfloat16's images per second over float32's at the same size. bfloat16 pays where the CPU has
AVX512-BF16 (or AMX) instructions, which oneDNN uses; elsewhere it is emulated and slower.

Speed is the machine's: on a shared CPU (another process training) expect lower figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)

POLICIES = ("float32", "mixed_bfloat16")
WARM_UP_STEPS = 3


def cpu_flags() -> list[str]:
    """The CPU's bfloat16-related instruction sets (Linux), which decide whether bfloat16 pays."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx"))


def images_per_second(policy: str, size: int, steps: int, batch_size: int) -> float:
    import keras
    import numpy as np

    from stream_detector.pipeline.model import build_model
    from stream_detector.training.loop import plain_loss, training_optimizer

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(input_size=None)
        model.compile(optimizer=training_optimizer(1e-4), loss=plain_loss())
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch_size, size, size, 3)).astype(np.float32)
        labels = rng.integers(0, 2, (batch_size, 1)).astype(np.float32)
        for _ in range(WARM_UP_STEPS):
            model.train_on_batch(images, labels)
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        return batch_size * steps / (time.perf_counter() - started)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224], help="input sizes (pixels)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per cell")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", dest="json_path", type=Path, help="write the results here")
    arguments = parser.parse_args(argv)
    if arguments.steps < 1 or arguments.batch_size < 1 or min(arguments.sizes) < 64:
        parser.error("--steps and --batch-size must be at least 1, --sizes at least 64 (six poolings)")
    results: dict = {"cpu_bf16_flags": cpu_flags(), "machine": platform.processor() or platform.machine()}
    print(f"cpu bfloat16 instructions: {', '.join(results['cpu_bf16_flags']) or 'none'}")
    for size in arguments.sizes:
        cell = {
            policy: images_per_second(policy, size, arguments.steps, arguments.batch_size)
            for policy in POLICIES
        }
        cell["ratio"] = cell["mixed_bfloat16"] / cell["float32"]
        results[f"{size}px"] = cell
        print(
            f"{size} px: float32 {cell['float32']:.1f} img/s, mixed_bfloat16 {cell['mixed_bfloat16']:.1f} img/s, "
            f"ratio {cell['ratio']:.2f}x"
        )
    if arguments.json_path:
        arguments.json_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("benchmark_training", main)
