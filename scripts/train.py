#!/usr/bin/env python
"""Train the detector (or the reference recipe) on real/ + fake/ face folders.

    python scripts/train.py                      # ../shared/data/faces: ffhq-tpdne + dfdc -> model/
    python scripts/train.py --reference --out runs/reference   # the reference project's recipe

The split is by identity group (DFDC groups.csv), 70/15/15: train, validation (chooses the checkpoint
and fits calibration), test (chooses nothing; scripts/evaluate.py --split test reports on it).
Works with KERAS_BACKEND=jax on a GPU; the LiteRT export needs the TensorFlow backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stream_detector  # noqa: E402,F401  (pylibsrtp before TensorFlow)
from stream_detector.errors import StreamDetectorError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FACES = REPO.parent / "shared" / "data" / "faces"
# v6 is v5 continued for six epochs with three times v5's self-blends and the sharpness consistency twin
# (model card): these defaults are that run, which starts from v5's weights (model/v5/). v5 was v4
# continued with the consistency weight halved; v4 two continuations of v3 (stage 1 kept in
# model/experiments/framing/v4_from_v3/). The faces kept in train are v0.3's, which v2 (and v1) started from:
# v2's to v6's train, validation and test are the same face for face, and no face v0.3 or a later model
# trained or chose on reaches validation or test.
INIT_FROM = REPO / "model" / "v5" / "detector.keras"
KEEP_IN_TRAIN = REPO / "model" / "v0.3" / "training.json"
# faces/gan-b is never trained on: it is the cross-source check (scripts/evaluate.py).
DEFAULT_DATA = [DEFAULT_FACES / "ffhq-tpdne", DEFAULT_FACES / "dfdc"]
# The shipped model's recipe (model/MODEL_CARD.md): sized to finish within 120 minutes on 2 cores
# (v6: 62.6 minutes in bfloat16 at ~10 min per epoch; v5: 43.8 on a day its epochs took 3.5; v4's
# stages 57 and 37). No 112 px stage: v0.3 and v2 learned at 224,
# and v1's 112 px epochs moved it away from what the 224 px inference crop shows (validation 0.684 for v2 against 0.644).
LOW_EPOCHS = 0
# v5: 12; v6 continues it for 6 (the self-blends' share and the sharpness twin below).
HIGH_EPOCHS = 6
# 0 runs the whole schedule; a number ends the run after that epoch (v1 was stopped after epoch 6 of
# its 7 for a session's time: `--low-epochs 5 --high-epochs 2 --stop-after-epoch 6 --learning-rate 3e-4`).
STOP_AFTER_EPOCH = 0
# v4's stage 2, v5 and v6 continue a fine-tuned model: half v3's 3e-4.
LEARNING_RATE = 1.5e-4
# v3: at 0.5 (v1, v2) the twins did not hold a softened real's score: JPEG-50 turned 9-13 % of DFDC's
# real validation faces FAKE (model card, Experiments, "Training views left undegraded"), so v3 and v4
# trained at 2. v5, from v4 which already holds its twins, at 1: DFDC validation +0.014 with the JPEG
# and sharpness flips as v4's (model card, "What v5 changed").
CONSISTENCY_WEIGHT = 1.0
# The fractions of training between which the consistency term ramps from off to its weight. v3
# ramped it in over (0.5, 0.75) from v2; v4 and v5 start from a model that already holds its twins, so
# it is on from the first step (v6 too).
CONSISTENCY_RAMP = (0.0, 0.0)
# v1-v6 pull both sides of a pair together (loop.CONSISTENCY_TARGETS; "clean" diverged, model card).
CONSISTENCY_TARGET = "both"
PRECISIONS = ("float32", "mixed_bfloat16")


def share(text: str) -> float:
    """A share in (0, 1], for --blend-share; anything else is argparse's one-line error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, not {text}")
    return value


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    # The strengths' and twins' one lists (AugmentedBatches takes the same names).
    from stream_detector.training.augment import STRENGTHS, TWINS
    from stream_detector.training.loop import BOUNDARY_STRIDES, CONSISTENCY_TARGETS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        action="append",
        type=Path,
        help="folder(s) with real/ and fake/ (default: ../shared/data/faces/ffhq-tpdne and dfdc)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "model", help="where the model files go")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache", help="face-crop cache folder")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--low-size", type=int, default=112, help="input size of the cheap early epochs")
    parser.add_argument("--low-epochs", type=int, default=LOW_EPOCHS)
    parser.add_argument(
        "--low-mode",
        choices=["patch", "resize"],
        default="resize",
        help="early epochs on the whole crop resized down (resize), or on random windows of the 224 "
        "crop at the pixel scale of production (patch: with the shortcut removed it learned nothing "
        "in 7 epochs; model card)",
    )
    parser.add_argument("--high-epochs", type=int, default=HIGH_EPOCHS, help="final epochs at 224")
    parser.add_argument(
        "--equalise-compression",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="JPEG-compress lossless (PNG) training and validation files whole at quality "
        "75 before their faces are cut, as the fakes were (stream_detector/dataset.py)",
    )
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=CONSISTENCY_WEIGHT,
        help="weight of the loss that ties each view's score to its further-compressed twin's "
        "(stream_detector/training.py; 0 turns the pairs off)",
    )
    parser.add_argument(
        "--consistency-ramp",
        type=float,
        nargs=2,
        default=CONSISTENCY_RAMP,
        metavar=("START", "END"),
        help=f"fractions of training between which the consistency term ramps linearly from off to its "
        f"weight (default {CONSISTENCY_RAMP[0]:g} {CONSISTENCY_RAMP[1]:g}: on from the first step; v3's "
        "0.5 0.75: plain batches for the first half)",
    )
    parser.add_argument(
        "--consistency-target",
        choices=CONSISTENCY_TARGETS,
        default=CONSISTENCY_TARGET,
        help="which side of each pair the consistency term moves: both (v1-v5: the view and its "
        "degraded twin pulled together) or clean (the view's score held fixed, only the twin pulled "
        "to it, so the clean view learns from its label alone)",
    )
    parser.add_argument(
        "--boundary-weight",
        type=float,
        default=0.0,
        help="weight of a training-only head's loss that maps where each self-blend's blending "
        "boundary runs (zeros for reals) from --boundary-layer; 0 (the shipped models') turns it "
        "off; the shipped file never has the head (stream_detector/training/loop.py)",
    )
    parser.add_argument(
        "--boundary-layer",
        choices=list(BOUNDARY_STRIDES),
        default="conv4",
        help="the convolution the boundary head reads (conv4: 28x28 cells at 224 px; conv6, the last: 7x7)",
    )
    parser.add_argument(
        "--self-blend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every real training face with FaceMesh landmarks comes with its self-blended twin as a "
        "fake (stream_detector/training/blending.py)",
    )
    parser.add_argument(
        "--match-sharpness",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="blur the sharper class of each source (train and validation) so both share one "
        "sharpness distribution (stream_detector/training/augment.py)",
    )
    parser.add_argument(
        "--match-blockiness",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="JPEG-compress the less blocky class of each source (train and validation), after the "
        "sharpness matching, so both share one blockiness distribution (augment.match_blockiness)",
    )
    parser.add_argument(
        "--without-fakes-of",
        action="append",
        default=[],
        metavar="SOURCE",
        help="leave this source's fakes out of training and validation (e.g. dfdc: the cross-method "
        "model, which must find face swaps from self-blended images alone)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint written after every epoch (default: OUT/checkpoint.pkl)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.add_argument(
        "--stop-after-epoch",
        type=int,
        default=STOP_AFTER_EPOCH,
        help=f"(default {STOP_AFTER_EPOCH}; 0: the whole schedule) "
        "end after this epoch of the schedule (which stays the whole run's); with --resume past it, "
        "finish from the checkpoint: the best epoch so far is calibrated and exported",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=INIT_FROM,
        help="start from this .keras model's weights (default: v5's, "
        "model/v5/, which v6 continued; from scratch the "
        "network's ReLUs died within an epoch on this data, model card 'Experiments'); --no-init: fresh",
    )
    parser.add_argument("--no-init", dest="init_from", action="store_const", const=None)
    parser.add_argument(
        "--keep-in-train",
        type=Path,
        default=KEEP_IN_TRAIN,
        help="a training record whose train and validation files stay in train, so no face the start "
        "model saw reaches validation or test (default: v0.3's, which v2's splits follow); a start "
        "model whose own record (training.json beside it) lists faces of the new test split is refused",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=LEARNING_RATE,
        help=f"peak learning rate (default {LEARNING_RATE:g}, for fine-tuning from --init-from)",
    )
    parser.add_argument(
        "--dense-dropout",
        type=float,
        default=0.0,
        help="dropout rate of the three dense layers while training (v3: 0; v1, v2: 0.5; the shipped file keeps the "
        "reference's 0.5 layers: dropout does nothing at inference)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="mixed_bfloat16",
        help="float32, or mixed_bfloat16: bfloat16 arithmetic on float32 weights, ~2x the training "
        "steps per second on a CPU with AVX512-BF16 (docs/benchmarks.md); the shipped file is float32",
    )
    parser.add_argument(
        "--augmentation",
        choices=list(STRENGTHS),
        default="jpeg",
        help="strength of the codec steps of the symmetric augmentation: standard (JPEG from "
        "quality 30 with blur, scaling, colour and noise: v1's and v2's), light (from 60, noise half as often), flip (no "
        "degradation at all, only the mirror flip), or jpeg (the flip and standard's two JPEG passes, "
        "nothing else: v3's; stream_detector/training/augment.py)",
    )
    parser.add_argument(
        "--twin",
        choices=list(TWINS),
        default="sharpness",
        help="how the consistency twin's sharpness changes: standard (v1-v5's: 40 %% of twins blurred "
        "or scaled down and up), or sharpness (v6's: nearly all blurred up to sigma 2.2, scaled down "
        "and up, or sharpened; stream_detector/training/augment.py)",
    )
    parser.add_argument(
        "--blend-share",
        type=share,
        default=0.3,
        help="share of the real training faces blended each epoch, and so of the fake class that is "
        "self-blended (the rest: real fakes); v6: 0.3, v3-v5: 0.1, v1 and v2: 0.5; at most 1",
    )
    parser.add_argument(
        "--pair-groups",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="each fake comes in its batch right after a real of its identity group (DFDC: the video "
        "it was made from), through the same augmentation, so the pair differs by the manipulation",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="use at most this many images per source (smoke runs)"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the reference recipe: ffhq-tpdne whole images at 128 px, "
        "no augmentation, Glorot init, Adam 1e-5, no calibration",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def source_folders(data: list[Path] | None) -> dict[str, Path]:
    from stream_detector.training.dataset import find_class_folders

    roots = data or DEFAULT_DATA
    folders: dict[str, Path] = {}
    for root in roots:
        if not root.exists():
            raise StreamDetectorError(f"data folder not found: {root}")
        for folder in find_class_folders(root):
            # ffhq-tpdne/train and ffhq-tpdne/val are one source; the split is ours, by group.
            name = (
                folder.parent.name if folder.name in ("train", "val", "validation", "test") else folder.name
            )
            folders.setdefault(name, folder)
            if folders[name] != folder:
                folders[f"{name}/{folder.name}"] = folder
    return folders


def merge(sets):
    import numpy as np

    from stream_detector.training.dataset import FaceSet

    return FaceSet(
        sets[0].name.split("/")[0],
        [crop for faces in sets for crop in faces.crops],
        np.concatenate([faces.labels for faces in sets]),
        [file for faces in sets for file in faces.files],
        [group for faces in sets for group in faces.groups],
        tuple(file for faces in sets for file in faces.no_face_files),
    )


def self_blended_validation(validation_sets: dict, cache: Path, seed: int):
    """Validation reals beside one fixed self-blend each: how well the blends themselves are learned."""
    import numpy as np

    from stream_detector.training.blending import self_blend, usable_landmarks
    from stream_detector.training.dataset import FaceSet
    from stream_detector.training.landmarks import landmarks_for_crops

    rng = np.random.default_rng(seed)
    crops, labels, files = [], [], []
    for name, faces in validation_sets.items():
        reals = [i for i, label in enumerate(faces.labels) if label == 0][:300]
        found = landmarks_for_crops(
            [faces.crops[i] for i in reals], [faces.files[i] for i in reals], cache, name=f"{name}-validation"
        )
        for i, points in zip(reals, found, strict=True):
            if usable_landmarks(points, faces.crops[i].shape):
                crops += [faces.crops[i], self_blend(faces.crops[i], points, rng)]
                labels += [0, 1]
                files += [faces.files[i], faces.files[i] + "#blend"]
    if not crops:
        raise StreamDetectorError("--self-blend: no validation face has usable landmarks")
    return FaceSet("sbi", crops, np.array(labels, np.int32), files, files, ())


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.consistency_weight < 0:
        raise StreamDetectorError(
            f"--consistency-weight must be 0 (off) or more, not {arguments.consistency_weight}"
        )
    ramp_start, ramp_end = arguments.consistency_ramp
    if not 0.0 <= ramp_start <= ramp_end <= 1.0:
        raise StreamDetectorError(
            f"--consistency-ramp needs 0 <= START <= END <= 1, not {ramp_start:g} {ramp_end:g}"
        )
    if arguments.boundary_weight < 0:
        raise StreamDetectorError(
            f"--boundary-weight must be 0 (off) or more, not {arguments.boundary_weight}"
        )
    if arguments.boundary_weight > 0 and (arguments.reference or not arguments.self_blend):
        raise StreamDetectorError("--boundary-weight needs --self-blend (its maps come from the blends)")
    if arguments.boundary_weight > 0 and arguments.low_epochs and arguments.low_mode == "patch":
        raise StreamDetectorError(
            "--boundary-weight needs whole crops: use --low-mode resize or --low-epochs 0"
        )
    # The layer the boundary head reads, or None: no head, no maps.
    boundary_layer = arguments.boundary_layer if arguments.boundary_weight > 0 else None
    if not 0.0 <= arguments.dense_dropout < 1.0:
        raise StreamDetectorError(f"--dense-dropout must be in [0, 1), not {arguments.dense_dropout}")
    if arguments.consistency_weight > 0 and arguments.batch_size % 2:
        raise StreamDetectorError(
            f"--batch-size {arguments.batch_size} is odd: consistency pairs need an even batch "
            "(or --consistency-weight 0)"
        )
    started = time.time()
    import keras
    import numpy as np

    from stream_detector.pipeline.model import (
        KERAS_FILE,
        apply_platt_scaling,
        build_model,
        fit_platt_scaling,
        fold_platt_scaling,
    )
    from stream_detector.training.dataset import (
        FAKE_CLASS_JPEG_QUALITY,
        load_face_set,
        read_record_splits,
        read_training_record,
        record_splits,
        relative_name,
    )
    from stream_detector.training.loop import (
        AugmentedBatches,
        Schedule,
        plain_batch,
        seen_faces_in_test,
        split_sources,
        train,
        trained_or_chosen_on,
    )
    from stream_detector.training.metrics import real_score_at_false_alarm_rate

    keras.utils.set_random_seed(arguments.seed)
    folders = source_folders(arguments.data)
    roots = [Path(root).resolve() for root in (arguments.data or DEFAULT_DATA)]

    def root_of(file: str) -> Path:
        return next((root for root in roots if Path(file).resolve().is_relative_to(root)), Path("/"))

    grouped: dict[str, list] = {}
    for name, folder in folders.items():
        # These sets are face crops already: where no face is found the whole image is the face.
        faces = load_face_set(
            folder,
            no_face="whole",
            cache_dir=arguments.cache,
            progress=not arguments.no_progress,
            # The reference recipe is reproduced as it was: on the files as they are.
            equalise_quality=FAKE_CLASS_JPEG_QUALITY
            if arguments.equalise_compression and not arguments.reference
            else None,
        )
        grouped.setdefault(name.split("/")[0], []).append(faces)
        print(f"data: {folder}: {len(faces)} faces ({faces.no_face} without a detected face, used whole)")
    sources = {name: merge(sets) for name, sets in grouped.items()}
    if arguments.limit:
        rng = np.random.default_rng(arguments.seed)
        sources = {
            name: faces.subset(sorted(rng.permutation(len(faces))[: arguments.limit]))
            for name, faces in sources.items()
        }
    if arguments.reference:
        from stream_detector.training.reference import reference_sources

        sources = reference_sources(sources)
    keep = None
    if arguments.init_from is None or arguments.reference:
        arguments.keep_in_train = None
    if arguments.init_from and not arguments.keep_in_train:
        raise StreamDetectorError(
            "--init-from needs --keep-in-train: the faces that model saw must not reach the test split"
        )
    if arguments.keep_in_train:
        if not arguments.keep_in_train.is_file():
            raise StreamDetectorError(f"--keep-in-train: no training record at {arguments.keep_in_train}")
        keep = trained_or_chosen_on(
            read_record_splits(arguments.keep_in_train, "--keep-in-train", ("train", "validation"))
        )
        print(
            f"keep in train: {len(keep)} files an earlier model trained or chose on ({arguments.keep_in_train})"
        )
    splits = split_sources(sources, seed=arguments.seed, keep_in_train=keep)
    for part in ("train", "validation", "test"):
        counts = {name: len(faces) for name, faces in getattr(splits, part).items()}
        print(f"split {part}: {counts}")
    start_record = Path(arguments.init_from).with_name("training.json") if arguments.init_from else None
    if start_record and start_record.is_file() and not arguments.reference:
        # --keep-in-train defaults to v0.3's record: a start model trained on other splits (a --no-init
        # run's) would otherwise have seen faces the test split reports on.
        start_data = read_training_record(start_record, "--init-from")
        if not isinstance(start_data.get("schedule", {}), dict):
            raise StreamDetectorError(
                f"--init-from: {start_record} is not a training record (its schedule is not an object)"
            )
        # A record whose split lists were stripped (model/experiments/) names no faces to check.
        start_splits = (
            record_splits(start_data, start_record, "--init-from", ("train", "validation"))
            if "splits" in start_data
            else None
        )
        seen = seen_faces_in_test(splits, start_splits) if start_splits else 0
        if seen:
            raise StreamDetectorError(
                f"--init-from {arguments.init_from}: {seen} test faces of these splits were trained or "
                f"chosen on by that model ({start_record}); pass --keep-in-train {start_record}"
            )
        # A constant output satisfies the consistency pull at once: a start trained without the term,
        # pulled from the first step, fell to the prior within an epoch (model card, Experiments,
        # "Self-blends first, then the swaps"). v3 from v2 ramped it in over the second half.
        start_weight = start_data.get("schedule", {}).get("consistency_weight")
        if start_weight == 0 and arguments.consistency_weight > 0 and ramp_start == 0:
            print(
                f"warning: {start_record} trained without the consistency term and this run pulls from "
                "its first step (a run like it fell to the prior in one epoch); --consistency-ramp 0.5 "
                "0.75 trains plain batches first"
            )
    unknown = set(arguments.without_fakes_of) - set(sources)
    if unknown:
        raise StreamDetectorError(
            f"--without-fakes-of {sorted(unknown)[0]}: no such source (have {sorted(sources)})"
        )
    train_sets, validation_sets = dict(splits.train), dict(splits.validation)
    for name in arguments.without_fakes_of:
        for sets in (train_sets, validation_sets):
            kept = [i for i, label in enumerate(sets[name].labels) if label == 0]
            sets[name] = sets[name].subset(kept)
        del validation_sets[name]  # a set of one class chooses nothing
        print(f"without fakes of {name}: {len(train_sets[name])} real training faces kept")
    from dataclasses import replace

    from stream_detector.training.augment import match_blockiness, match_sharpness

    # Sharpness first: blurring DFDC's sharper reals also smooths their JPEG steps (a sample of 400 + 400
    # files: blockiness AUC 0.55 before, 0.64 after), which the blockiness matching then takes away.
    matchers = [
        (arguments.match_sharpness, match_sharpness, "sharpness", "blurred"),
        (arguments.match_blockiness, match_blockiness, "blockiness", "re-compressed"),
    ]
    for wanted, match, statistic, verb in matchers:
        if not wanted or arguments.reference:
            continue
        for sets in (train_sets, validation_sets):
            for name, faces in sets.items():
                crops, changed = match(faces.crops, faces.labels)
                sets[name] = replace(faces, crops=crops)
                print(f"{statistic} matched: {faces.name}: {changed} of {len(faces)} faces {verb}")
    landmarks = None
    if arguments.self_blend and not arguments.reference:
        from stream_detector.training.blending import usable_landmarks
        from stream_detector.training.landmarks import landmarks_for_crops

        landmarks = []
        for name, faces in train_sets.items():
            # Only reals are blended: FaceMesh on the fakes would double the preparation time.
            reals_at = np.flatnonzero(faces.labels == 0)
            found_for_reals = (
                landmarks_for_crops(
                    [faces.crops[i] for i in reals_at],
                    [faces.files[i] for i in reals_at],
                    arguments.cache,
                    name=f"{name}-train-reals",
                )
                if len(reals_at)
                else []
            )
            found = [None] * len(faces)
            for i, points in zip(reals_at, found_for_reals, strict=True):
                found[i] = points
            usable = [
                points if usable_landmarks(points, crop.shape) else None
                for points, crop in zip(found, faces.crops, strict=True)
            ]
            print(
                f"self-blend: {name}: {sum(p is not None for p in usable)} of {len(reals_at)} real faces blendable"
            )
            landmarks.extend(usable)
        if not any(points is not None for points in landmarks):
            raise StreamDetectorError(
                "--self-blend: no real training face has usable landmarks (>= 48 px face)"
            )
        validation_sets["sbi"] = self_blended_validation(validation_sets, arguments.cache, arguments.seed)
        print(f"self-blend: validation pairs (watched, not chosen on): {len(validation_sets['sbi'])} faces")

    if arguments.reference:
        schedule = Schedule(
            low_epochs=0,
            low_size=128,
            high_epochs=arguments.high_epochs,
            high_size=128,
            learning_rate=1e-5,
            warmup_steps=0,
            patches=False,
        )
        model = build_model(input_size=128, initializer="glorot_uniform", unit_scale=True)
        batches = AugmentedBatches(
            list(splits.train.values()), arguments.batch_size, arguments.seed, augmented=False
        )
        result = train(model, batches, splits.validation, schedule, progress=not arguments.no_progress)
    else:
        schedule = Schedule(
            arguments.low_epochs,
            arguments.low_size,
            arguments.high_epochs,
            learning_rate=arguments.learning_rate,
            patches=arguments.low_mode == "patch",
            consistency_weight=arguments.consistency_weight,
            consistency_ramp=(ramp_start, ramp_end),
            consistency_target=arguments.consistency_target,
            boundary_weight=arguments.boundary_weight,
        )
        keras.mixed_precision.set_global_policy(arguments.precision)
        model = build_model(input_size=None, dropout=arguments.dense_dropout)
        if arguments.init_from:
            from stream_detector.pipeline.model import load_keras_model  # a missing file: one line

            # The same weights for any input size (global pooling): the 224 model's go straight in.
            model.set_weights(load_keras_model(arguments.init_from).get_weights())
            print(f"init: weights of {arguments.init_from}")
        else:
            from stream_detector.training.initialise import silent_fraction, unit_variance_start

            start_rng = np.random.default_rng(arguments.seed)
            start_faces = [
                faces.subset(sorted(start_rng.permutation(len(faces))[:32])) for faces in train_sets.values()
            ]
            start_batch = np.concatenate([plain_batch(faces, schedule.low_size) for faces in start_faces])
            stds = unit_variance_start(model, start_batch)
            print(
                "init: unit-variance start on "
                f"{len(start_batch)} training faces (output std per layer {', '.join(f'{s:.2f}' for s in stds)}; "
                f"{silent_fraction(model, start_batch):.0%} of pooled channels silent)"
            )
        batches = AugmentedBatches(
            list(train_sets.values()),
            arguments.batch_size,
            arguments.seed,
            paired=arguments.consistency_weight > 0,
            landmarks=landmarks,
            pair_groups=arguments.pair_groups,
            augmentation=arguments.augmentation,
            twin=arguments.twin,
            blend_share=arguments.blend_share,
            boundary_layer=boundary_layer,
        )
        settings = {
            "data": sorted(str(root) for root in roots),
            "seed": arguments.seed,
            "schedule": repr(schedule),
            "batch_size": arguments.batch_size,
            "self_blend": arguments.self_blend,
            "match_sharpness": arguments.match_sharpness,
            "without_fakes_of": sorted(arguments.without_fakes_of),
            "init_from": str(arguments.init_from) if arguments.init_from else None,
            "keep_in_train": str(arguments.keep_in_train) if arguments.keep_in_train else None,
            "limit": arguments.limit,
            # Only when not the reference's 0.5: checkpoints from before the option still resume.
            **({"dense_dropout": arguments.dense_dropout} if arguments.dense_dropout != 0.5 else {}),
            **({"pair_groups": True} if arguments.pair_groups else {}),
            **({"precision": arguments.precision} if arguments.precision != "float32" else {}),
            **({"augmentation": arguments.augmentation} if arguments.augmentation != "standard" else {}),
            **({"twin": arguments.twin} if arguments.twin != "standard" else {}),
            **({"blend_share": arguments.blend_share} if arguments.blend_share != 0.5 else {}),
            **({"match_blockiness": True} if arguments.match_blockiness else {}),
            **(
                {"consistency_target": arguments.consistency_target}
                if arguments.consistency_target != "both"
                else {}
            ),
            **(
                {"boundary_weight": arguments.boundary_weight, "boundary_layer": boundary_layer}
                if boundary_layer
                else {}
            ),
        }
        print(f"training: {len(batches)} images per epoch, {batches.blended_pairs} of them self-blended")
        if arguments.pair_groups:
            print(f"pair groups: {batches.groupable_fakes} training fakes have a real of their group")
        checkpoint = arguments.checkpoint or arguments.out / "checkpoint.pkl"
        result = train(
            model,
            batches,
            validation_sets,
            schedule,
            progress=not arguments.no_progress,
            checkpoint=checkpoint,
            resume=arguments.resume,
            settings=settings,
            stop_after_epoch=arguments.stop_after_epoch or None,
        )
        if result["best_epoch"] is None:
            print(
                f"stopped: after epoch {result['stopped_after_epoch']} of {len(schedule.sizes())}, "
                f"{result['minutes']:.1f} minutes of training; the checkpoint is chosen among the last "
                "three epochs, so nothing is exported yet: continue with the same command and --resume "
                f"(and --stop-after-epoch 0 for the rest); checkpoint {checkpoint}"
            )
            return 0

    size = schedule.high_size
    # The shipped model computes in float32 (LiteRT, the engine): its weights were float32 throughout.
    keras.mixed_precision.set_global_policy("float32")
    shipped = build_model(input_size=size, unit_scale=arguments.reference)
    shipped.set_weights(model.get_weights())
    calibration = None
    if not arguments.reference:
        # Calibrated on the real methods' validation faces, not the self-blended ones.
        calibration_sets = [faces for name, faces in validation_sets.items() if name != "sbi"]
        validation_images = np.concatenate([plain_batch(faces, size) for faces in calibration_sets])
        validation_labels = np.concatenate([faces.labels for faces in calibration_sets])
        raw = np.asarray(shipped.predict(validation_images, batch_size=64, verbose=0)).reshape(-1)
        slope, intercept = fit_platt_scaling(raw, validation_labels)
        fold_platt_scaling(shipped, slope, intercept)
        calibrated = apply_platt_scaling(raw, slope, intercept)
        # The score that 99 % of real validation faces stay under (Keras, plain scores), kept for the
        # record: the live FAKE threshold's face half is measured again with the engine's own scoring
        # by evaluate_clips.py --choose-threshold (int8 mirror-averaged scores spread less).
        fake_threshold = real_score_at_false_alarm_rate(calibrated[validation_labels == 0])
        calibration = {
            "method": "platt",
            "slope": slope,
            "intercept": intercept,
            "fitted_on": "validation split",
            "fake_threshold_at_1pct_false_alarms": fake_threshold,
        }
        print(f"calibration: p = sigmoid({slope:.4f} * logit + {intercept:.4f})")
        print(f"operating point: 99% of real validation faces score under {fake_threshold:.4f}")

    arguments.out.mkdir(parents=True, exist_ok=True)
    shipped.save(arguments.out / KERAS_FILE)
    # This sitting's wall time (data, training, calibration) plus the earlier sittings' training.
    minutes = (time.time() - started) / 60 + result.get("minutes_before_resume", 0.0)
    record = {
        "recipe": "reference" if arguments.reference else "stream_detector",
        "seed": arguments.seed,
        "backend": keras.backend.backend(),
        "schedule": schedule.__dict__,
        "batch_size": arguments.batch_size,
        "equalise_compression": bool(arguments.equalise_compression and not arguments.reference),
        "self_blend": bool(arguments.self_blend and not arguments.reference),
        "match_sharpness": bool(arguments.match_sharpness and not arguments.reference),
        "match_blockiness": bool(arguments.match_blockiness and not arguments.reference),
        "without_fakes_of": sorted(arguments.without_fakes_of),
        "init_from": str(arguments.init_from) if arguments.init_from else None,
        "keep_in_train": str(arguments.keep_in_train) if arguments.keep_in_train else None,
        "dense_dropout": arguments.dense_dropout,
        "pair_groups": bool(arguments.pair_groups and not arguments.reference),
        "precision": arguments.precision if not arguments.reference else "float32",
        "augmentation": "none" if arguments.reference else arguments.augmentation,
        "twin": "none" if arguments.reference or arguments.consistency_weight <= 0 else arguments.twin,
        "blend_share": arguments.blend_share if arguments.self_blend and not arguments.reference else 0.0,
        "boundary_weight": arguments.boundary_weight,
        "boundary_layer": boundary_layer,
        "calibration": calibration,
        "total_minutes": minutes,
        **result,
        # Names relative to their data root: the record stays valid wherever the data is mounted.
        "splits": {
            part: {
                name: [relative_name(file, root_of(file)) for file in faces.files]
                for name, faces in getattr(splits, part).items()
            }
            for part in ("train", "validation", "test")
        },
    }
    (arguments.out / "training.json").write_text(json.dumps(record, indent=1))
    if keras.backend.backend() == "tensorflow":
        from stream_detector.training.export import export_all, sample_crops

        # The int8 file's activation ranges come from training faces (never validation or test ones).
        calibration = sample_crops([crop for faces in splits.train.values() for crop in faces.crops], size)
        for name, path in export_all(shipped, arguments.out, calibration).items():
            print(f"export: {name} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    else:
        print("export: run scripts/export.py under the TensorFlow backend to write the .tflite files")
    print(
        f"done: best epoch {result['best_epoch']}, validation mean AUC {result['best_validation_mean_auc']:.4f}, "
        f"{minutes:.1f} minutes in all"
    )
    return 0


if __name__ == "__main__":
    from tools.script import run_script

    run_script("train", main)
