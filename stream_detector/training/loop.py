"""Training: splits, batches with augmentation, a progressive-resolution schedule, checkpoint choice.

Backend-agnostic Keras 3 (TensorFlow on the CPU, JAX on a GPU); nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.crops import CROP_SIZE
from stream_detector.training.augment import STRENGTHS, TWINS, augment_with_mask, degraded_view, named
from stream_detector.training.dataset import FaceSet, resize_crop, split_by_group
from stream_detector.training.initialise import silent_fraction
from stream_detector.training.metrics import binary_metrics

SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}
MONITOR_ONLY_PREFIX = "sbi"
# The layers the boundary head (train --boundary-weight, --boundary-layer) may read, and how many
# input pixels one cell of each spans: conv4 (32 channels) is 28x28 at 224 px, conv6 (16 channels,
# what the global pooling averages into everything the dense head sees) 7x7.
BOUNDARY_STRIDES = {"conv4": 8, "conv5": 16, "conv6": 32}
# A boundary map cell that says nothing (a real fake: where its manipulation lies is unknown).
UNSUPERVISED = -1.0
# The head's logits are this many times its convolution's output, and start at about the share of a
# supervised cell that is boundary (reals' maps are empty; a blend's boundary fills part of its map).
BOUNDARY_HEAD_SCALE = 20.0
BOUNDARY_PRIOR_LOGIT = -2.4


@dataclass(frozen=True)
class Splits:
    """Per source: train / validation (checkpoint choice and calibration) / test (never chooses anything)."""

    train: dict[str, FaceSet]
    validation: dict[str, FaceSet]
    test: dict[str, FaceSet]


def split_sources(sources: dict[str, FaceSet], seed: int, keep_in_train: set[str] | None = None) -> Splits:
    """Split each source by identity group (DFDC's groups.csv; each file its own group elsewhere).
    ``keep_in_train``: file names (relative_name's) whose groups must be in train: the faces a model we
    start from was trained or chosen on."""
    from stream_detector.training.dataset import in_file_list

    train, validation, test = {}, {}, {}
    for name, faces in sources.items():
        forced = (
            {
                group: "train"
                for file, group in zip(faces.files, faces.groups, strict=True)
                if in_file_list(file, keep_in_train)
            }
            if keep_in_train
            else None
        )
        parts = split_by_group(faces.groups, SPLIT_FRACTIONS, seed=seed, forced=forced)
        train[name] = faces.subset(parts["train"], f"{name}/train")
        validation[name] = faces.subset(parts["validation"], f"{name}/validation")
        test[name] = faces.subset(parts["test"], f"{name}/test")
    return Splits(train, validation, test)


def trained_or_chosen_on(earlier_splits: dict) -> set[str]:
    """The files of a training record's train and validation lists (its "splits"): what its model saw."""
    return {
        file for part in ("train", "validation") for files in earlier_splits[part].values() for file in files
    }


def seen_faces_in_test(splits: Splits, earlier_splits: dict) -> int:
    """How many faces an earlier record's model trained or chose on the new splits put in test. A
    start model must have seen none of them; sharing its validation faces is how a continued line
    (v2 to v5) keeps choosing on the same faces."""
    from stream_detector.training.dataset import in_file_list

    seen = trained_or_chosen_on(earlier_splits)
    return sum(in_file_list(file, seen) for faces in splits.test.values() for file in faces.files)


def plain_batch(faces: FaceSet, size: int) -> np.ndarray:
    """Unaugmented model inputs: each crop resized exactly as the live engine resizes it."""
    return np.stack([resize_crop(crop, size) for crop in faces.crops]).astype(np.float32)


class AugmentedBatches:
    """An endless stream of shuffled, augmented, class-mixed batches from several sources.

    With ``landmarks`` (aligned with the sources' crops, None where a face has none), every real face
    that has them comes with its self-blended twin (blending.self_blend, label fake) right after it in
    the same batch, both through the very same augmentation: the pair differs only by the blend.

    With ``pair_groups``, each fake drawn for an epoch whose identity group (DFDC's groups.csv: the real
    video it was made from) has a real in the sources comes right after that real, through the same
    augmentation, when the real is not being blended that epoch: scene, camera and compression are the
    same on both sides, so the difference the pair teaches is the manipulation.
    """

    def __init__(
        self,
        sources: list[FaceSet],
        batch_size: int,
        seed: int,
        augmented: bool = True,
        paired: bool = False,
        landmarks: list[np.ndarray | None] | None = None,
        pair_groups: bool = False,
        augmentation: str = "standard",
        twin: str = "standard",
        blend_share: float = 0.5,
        boundary_layer: str | None = None,
    ) -> None:
        """``augmented=False`` feeds the crops as they are, only resized (the reference recipe).
        ``paired``: each batch is batch_size / 2 augmented views followed by the same views degraded
        further (augment.degraded_view), in the same order, for the consistency loss (paired_loss).
        ``blend_share``: the share of the reals blended each epoch, so of the fake class that is
        self-blended (the rest are real fakes); 0.5 is the shipped models'.
        ``boundary_layer`` (a key of BOUNDARY_STRIDES): each batch also carries a (batch, side, side,
        1) target for a boundary head on that layer (side = size / its stride): a self-blend's
        blending boundary (blending.boundary_map), zeros for a real (nothing was blended),
        UNSUPERVISED for a real fake."""
        if not 0.0 < blend_share <= 1.0:
            raise ValueError(f"the blend share must be in (0, 1], not {blend_share}")
        if paired and (batch_size % 2 or not augmented):
            raise ValueError("paired batches need an even batch size and augmentation")
        self._crops = [crop for faces in sources for crop in faces.crops]
        self._labels = np.concatenate([faces.labels for faces in sources]).astype(np.float32)
        if landmarks is not None and len(landmarks) != len(self._crops):
            raise ValueError(f"{len(landmarks)} landmark entries for {len(self._crops)} crops")
        if landmarks is not None and (batch_size % 4 if paired else batch_size % 2):
            raise ValueError(
                "self-blended pairs need a batch size divisible by 2 (by 4 with consistency pairs)"
            )
        self._landmarks = landmarks
        if boundary_layer is not None:
            named(BOUNDARY_STRIDES, "boundary layer", boundary_layer)
        self.boundary_layer = boundary_layer
        self.batch_size = batch_size
        self.paired = paired
        self._augmented = augmented
        self._strength = named(STRENGTHS, "augmentation", augmentation)
        self._twin = named(TWINS, "twin", twin)
        self._rng = np.random.default_rng(seed)
        # What one epoch is made of: (index, blended) per image; a blend follows its real.
        blendable = (
            {i for i, points in enumerate(landmarks) if points is not None and self._labels[i] == 0}
            if landmarks is not None
            else set()
        )
        self._blendable = np.array(sorted(blendable), dtype=np.int64)
        self._reals = np.flatnonzero(self._labels == 0)
        self._fakes = np.flatnonzero(self._labels == 1)
        # fake index -> the index of a real of its group (groups are per source: names may repeat).
        self._group_real: dict[int, int] = {}
        if pair_groups:
            groups = [f"{number}:{group}" for number, faces in enumerate(sources) for group in faces.groups]
            real_of_group: dict[str, int] = {}
            for index in self._reals:
                real_of_group.setdefault(groups[index], int(index))
            self._group_real = {
                int(index): real_of_group[groups[index]]
                for index in self._fakes
                if groups[index] in real_of_group
            }
        if landmarks is not None:
            # Balanced epochs: every real once; blend_share of them (at most; half in the shipped
            # models) with its blend right after it; real fakes drawn afresh each epoch to make up
            # the rest of the fake class. With
            # twice as many fakes as reals the network settled on the prior and its ReLUs died
            # (model card, "Experiments": the first v1 run).
            self.blended_pairs = min(len(self._blendable), int(len(self._reals) * blend_share))
            self._fakes_per_epoch = min(len(self._fakes), len(self._reals) - self.blended_pairs)
        else:
            self.blended_pairs = 0
            self._fakes_per_epoch = len(self._fakes)

    @property
    def boundary_maps(self) -> bool:
        """Whether batches carry boundary-map targets (a boundary layer was given)."""
        return self.boundary_layer is not None

    @property
    def groupable_fakes(self) -> int:
        """Fakes with a real of their group in the sources (pair_groups)."""
        return len(self._group_real)

    def __len__(self) -> int:
        """Images per epoch."""
        return len(self._reals) + self.blended_pairs + self._fakes_per_epoch

    @property
    def rng_state(self) -> dict:
        return self._rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    @property
    def steps_per_epoch(self) -> int:
        """Steps of batch_size inputs per epoch: the same compute per epoch paired or not (a paired
        epoch sees a fresh random half of the faces, each twice)."""
        return len(self) // self.batch_size

    def _epoch_order(self) -> list[tuple[int, bool, int]]:
        """(index, blended, augmentation key) per image; images of one key share one augmentation."""
        # Drawn in this order so that without group pairs an epoch is what it was before the option.
        candidates = self._rng.permutation(self._blendable)
        fakes = self._rng.permutation(self._fakes)[: self._fakes_per_epoch].tolist()
        group_pairs: dict[int, int] = {}  # real -> the fake of its group drawn this epoch
        for fake in fakes:
            real = self._group_real.get(fake)
            if real is not None and real not in group_pairs:
                group_pairs[real] = fake
        # Blends come from the reals not paired with their group's fake first, so both kinds of pair
        # fit in one epoch; a pair gives way to a blend only when the other reals run short.
        free = [int(i) for i in candidates if int(i) not in group_pairs]
        taken = [int(i) for i in candidates if int(i) in group_pairs]
        blended = set((free + taken)[: self.blended_pairs])
        for real in blended & set(group_pairs):
            del group_pairs[real]
        paired_fakes = set(group_pairs.values())
        pairs = [[(int(i), False, int(i)), (int(i), True, int(i))] for i in self._reals if i in blended]
        pairs += [[(real, False, real), (fake, False, real)] for real, fake in group_pairs.items()]
        others = [int(i) for i in self._reals if i not in blended and int(i) not in group_pairs] + [
            fake for fake in fakes if fake not in paired_fakes
        ]
        singles = [(others[i], False, others[i]) for i in self._rng.permutation(len(others))]
        # Singles two by two, so that every unit is two images and no pair straddles batches.
        units = pairs + [singles[i : i + 2] for i in range(0, len(singles) - 1, 2)]
        return [item for position in self._rng.permutation(len(units)) for item in units[position]]

    def _view(self, index: int, blended: bool, size: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The model input, and with boundary maps its (side, side) target."""
        from stream_detector.training.blending import boundary_map, self_blend_with_weight

        crop, weight = self._crops[index], None
        if blended:
            crop, weight = self_blend_with_weight(
                crop, self._landmarks[index], np.random.default_rng(seed + 1)
            )
        elif self.boundary_maps and self._labels[index] == 0:
            weight = np.zeros(crop.shape[:2], np.float32)
        # The same seed for a real and its blend: the same augmentation, decision for decision.
        rng = np.random.default_rng(seed)
        if self._augmented:
            image, weight = augment_with_mask(
                crop, weight if self.boundary_maps else None, rng, size, self._strength
            )
        else:
            image = resize_crop(crop, size)
        if not self.boundary_maps:
            return image, None
        side = max(1, size // BOUNDARY_STRIDES[self.boundary_layer])
        if weight is None:
            return image, np.full((side, side), UNSUPERVISED, np.float32)
        return image, boundary_map(weight, side)

    def epoch(self, size: int, patches: bool = False, pairs: bool = True):
        """One epoch in random order. ``patches``: random size x size windows of the 224 px crop, so the
        convolutions learn at the pixel scale they will see in production, for a fraction of the cost.
        ``pairs=False`` makes plain batches from paired ones, for epochs with no consistency term."""
        paired = self.paired and pairs
        items = self._epoch_order()
        full = CROP_SIZE if patches else size
        per_step = self.batch_size // 2 if paired else self.batch_size
        for step in range(self.steps_per_epoch):
            chosen = items[step * per_step : (step + 1) * per_step]
            if len(chosen) < per_step:
                break
            seeds = self._rng.integers(0, 2**62, len(chosen))
            shared = {}  # the two images of a pair share one seed
            images, maps = [], []
            for (index, blended, key), seed in zip(chosen, seeds, strict=True):
                seed = shared.setdefault(key, int(seed))
                image, target = self._view(index, blended, full, seed)
                images.append(image)
                maps.append(target)
            labels = np.array(
                [1.0 if blended else self._labels[index] for index, blended, _ in chosen], np.float32
            )
            if paired:
                images = images + [
                    degraded_view(image, self._rng, self._strength, self._twin) for image in images
                ]
                labels = np.concatenate([labels, labels])
                maps = maps + maps  # the twin changes no geometry
            if patches and size < full:
                if self.boundary_maps:
                    raise ValueError("boundary maps need whole crops, not low-resolution patches")
                offsets = self._rng.integers(0, full - size + 1, (len(chosen), 2))
                if paired:  # both views of a face through the same window
                    offsets = np.concatenate([offsets, offsets])
                images = [
                    image[y : y + size, x : x + size] for image, (y, x) in zip(images, offsets, strict=True)
                ]
            if self.boundary_maps:
                yield np.stack(images).astype(np.float32), labels.reshape(-1, 1), np.stack(maps)[..., None]
            else:
                yield np.stack(images).astype(np.float32), labels.reshape(-1, 1)


def prefetched(batches, depth: int = 3):
    """Make the batches of a generator on a second thread while the model trains on the last ones
    (OpenCV and NumPy release the GIL for most of the augmentation)."""
    import queue
    import threading

    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def fill() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # surfaced to the consumer, not lost on a thread
            slots.put(error)
            return
        slots.put(done)

    thread = threading.Thread(target=fill, name="batches", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


LABEL_SMOOTHING = 0.02


def training_optimizer(learning_rate):
    """Adam with global gradient clipping, as every training run here uses it."""
    import keras

    # Clipped: one large early step can silence the ReLUs of the narrow (16-channel) last convolutions.
    return keras.optimizers.Adam(learning_rate, global_clipnorm=1.0)


def plain_loss():
    """Binary cross-entropy with the label smoothing every run trains with (paired_loss adds to it)."""
    import keras

    return keras.losses.BinaryCrossentropy(label_smoothing=LABEL_SMOOTHING)


# How the consistency term moves the pair: "both" pulls the view and its degraded twin towards each
# other (v1-v5); "clean" holds the view's logit fixed (no gradient) and pulls only the twin to it, so
# the clean view's score is learned from its label alone and the twin must follow it.
CONSISTENCY_TARGETS = ("both", "clean")


def paired_loss(consistency_weight, label_smoothing: float = LABEL_SMOOTHING, target: str = "both"):
    """Binary cross-entropy on every input, plus consistency_weight times the mean squared difference
    between the logits of each view and its degraded twin (the second half of a paired batch).
    ``consistency_weight``: a number, or a keras.Variable that training ramps up. ``target``: one of
    CONSISTENCY_TARGETS."""
    import keras
    from keras import ops

    if target not in CONSISTENCY_TARGETS:
        raise ValueError(
            f"consistency target must be one of {', '.join(CONSISTENCY_TARGETS)}, not {target!r}"
        )

    def loss(y_true, y_pred):
        cross_entropy = ops.mean(
            keras.losses.binary_crossentropy(y_true, y_pred, label_smoothing=label_smoothing)
        )
        probability = ops.clip(ops.reshape(y_pred, (-1,)), 1e-6, 1.0 - 1e-6)
        logits = ops.log(probability) - ops.log1p(-probability)
        half = ops.shape(logits)[0] // 2
        views = logits[:half]
        if target == "clean":
            views = ops.stop_gradient(views)
        difference = views - logits[half:]
        return cross_entropy + consistency_weight * ops.mean(ops.square(difference))

    return loss


def boundary_loss():
    """Binary cross-entropy of the boundary head, averaged over the map cells that have a target
    (a real fake's are UNSUPERVISED: they add nothing)."""
    from keras import ops

    def loss(y_true, y_pred):
        probability = ops.clip(ops.cast(y_pred, "float32"), 1e-6, 1.0 - 1e-6)
        y_true = ops.cast(y_true, "float32")
        supervised = ops.cast(y_true >= 0.0, "float32")
        target = ops.maximum(y_true, 0.0)
        cross = -(target * ops.log(probability) + (1.0 - target) * ops.log(1.0 - probability))
        return ops.sum(cross * supervised) / ops.maximum(ops.sum(supervised), 1.0)

    return loss


def with_boundary_head(model, layer: str):
    """A training-only model: ``model``'s output and a boundary map read off ``layer`` by one
    1x1 convolution. The head shares every weight of ``model`` and is dropped when training ends, so
    the shipped network stays the reference one; what it leaves behind is a trunk whose ``layer``
    had to say where a blend's boundary runs (dense evidence, not one label per face)."""
    import keras
    from keras import layers

    features = model.get_layer(layer).output
    # A fresh head at a fine-tune's learning rate (1e-4) would move its logits by ~1e-4 a step and
    # sit at p = 0.5 for thousands of steps, sending the trunk gradients that only say "lower": its
    # logits are scaled up (Adam's steps are the same size whatever the scale, so the head learns
    # BOUNDARY_HEAD_SCALE times faster than the trunk) and start at the maps' prior.
    logits = layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer=keras.initializers.Constant(BOUNDARY_PRIOR_LOGIT / BOUNDARY_HEAD_SCALE),
        dtype="float32",
        name="boundary_logits",
    )(features)
    logits = layers.Rescaling(BOUNDARY_HEAD_SCALE, dtype="float32", name="boundary_scale")(logits)
    head = layers.Activation("sigmoid", dtype="float32", name="boundary")(logits)
    return keras.Model(model.input, [model.output, head], name="with_boundary_head")


def boundary_auc(trainer, faces: FaceSet, size: int) -> float:
    """How well the boundary head alone tells the self-blended validation pairs apart: the ROC-AUC
    of its mean map over blends (label 1) and their own reals. 0.5 is a head that has learned only
    where boundaries usually run, not whether this face has one."""
    images = plain_batch(faces, size)
    means = [
        np.asarray(trainer(images[i : i + 64], training=False)[1])
        .reshape(len(images[i : i + 64]), -1)
        .mean(axis=1)
        for i in range(0, len(images), 64)
    ]
    return float(binary_metrics(faces.labels, np.concatenate(means))["roc_auc"])


@dataclass(frozen=True)
class Schedule:
    """Epochs at a low resolution (cheap) followed by epochs at the model's 224 input."""

    low_epochs: int
    low_size: int
    high_epochs: int
    high_size: int = 224
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    patches: bool = True  # low-resolution epochs see windows of the 224 crop rather than a resized crop
    consistency_weight: float = 0.0  # > 0 with paired batches (paired_loss)
    # The consistency term is off for the first part of training, then ramps linearly to its weight.
    # The first half learns the label from distinct faces (plain batches, twice the faces per step);
    # the term then removes the part of a learned score that compression moves. Whether it could run
    # from the first step in resize mode is untested (model card, "Experiments", runs C and D).
    consistency_ramp: tuple[float, float] = (0.5, 0.75)
    # CONSISTENCY_TARGETS: which side of a pair the term moves. Out of the repr, which resume compares:
    # checkpoints from before the field still resume (train.py's settings name it when not "both").
    consistency_target: str = field(default="both", repr=False)
    # > 0 with boundary maps (AugmentedBatches(boundary_layer=...)): the weight of the boundary head's
    # loss (boundary_loss) beside the classification loss, from the first step.
    boundary_weight: float = 0.0

    def sizes(self) -> list[int]:
        return [self.low_size] * self.low_epochs + [self.high_size] * self.high_epochs


def ramp(step: int, total: int, start: float, end: float) -> float:
    """0 before start * total steps, 1 after end * total, linear between."""
    progress = step / max(1, total)
    if progress <= start:
        return 0.0
    return min(1.0, (progress - start) / max(1e-9, end - start))


def cosine_with_warmup(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def validation_score(
    predict: Callable[[np.ndarray], np.ndarray], validation: dict[str, FaceSet], size: int
) -> dict:
    """Per-source metrics on clean validation crops, plus the mean AUC used to choose the checkpoint."""
    report = {}
    for name, faces in validation.items():
        scores = predict(plain_batch(faces, size))
        report[name] = binary_metrics(faces.labels, scores)
    # Self-blended validation pairs are watched, never chosen on: a checkpoint that fits its own
    # blends best is the one that over-learned them (model card, the SBI probe).
    chosen_on = [name for name in validation if not name.startswith(MONITOR_ONLY_PREFIX)] or list(validation)
    report["mean_auc"] = float(np.mean([report[name]["roc_auc"] for name in chosen_on]))
    return report


def train(
    model,
    batches: AugmentedBatches,
    validation: dict[str, FaceSet],
    schedule: Schedule,
    log: Callable[[str], None] = print,
    progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
    settings: dict | None = None,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train in place; restore the weights of the epoch with the best mean validation AUC.

    ``stop_after_epoch``: end there (the schedule, and so the learning rate, stay those of the whole
    run); with ``resume`` past that epoch, nothing more trains and the best checkpoint so far is kept.
    Stopped before any epoch the checkpoint is chosen among, the result's ``best_epoch`` is None and
    the weights are the last epoch's (a first sitting of a long run).
    ``checkpoint``: a file written after every epoch (weights, optimizer state, the batches' random
    state, history, the best epoch so far, and ``settings``); ``resume`` continues from it, after the
    last finished epoch, and refuses a checkpoint made with other settings.
    """
    import keras
    from tqdm import tqdm

    optimizer = training_optimizer(schedule.learning_rate)
    if batches.paired != (schedule.consistency_weight > 0):
        raise ValueError("a consistency weight needs paired batches, and paired batches need one")
    if batches.boundary_maps != (schedule.boundary_weight > 0):
        raise ValueError("a boundary weight needs batches with boundary maps, and they need one")
    consistency = keras.Variable(0.0, trainable=False, dtype="float32", name="consistency_weight")
    loss = paired_loss(consistency, target=schedule.consistency_target) if batches.paired else plain_loss()
    # With the boundary head the steps train ``trainer``, which shares every weight of ``model``;
    # validation, the checkpoint's weights and the result stay ``model``'s.
    trainer = with_boundary_head(model, batches.boundary_layer) if batches.boundary_maps else model
    if batches.boundary_maps:
        trainer.compile(
            optimizer=optimizer, loss=[loss, boundary_loss()], loss_weights=[1.0, schedule.boundary_weight]
        )
    else:
        trainer.compile(optimizer=optimizer, loss=loss)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps_per_epoch * len(schedule.sizes())
    step, best, history, started = 0, None, [], time.time()
    stopped = False
    first_epoch, minutes_before = 1, 0.0
    if resume:
        state = load_checkpoint(checkpoint, settings or {})
        optimizer.build(trainer.trainable_variables)
        model.set_weights(state["weights"])
        if batches.boundary_maps:
            trainer.get_layer("boundary_logits").set_weights(state["boundary_head"])
        for variable, value in zip(optimizer.variables, state["optimizer"], strict=True):
            variable.assign(value)
        batches.rng_state = state["rng_state"]
        step, history, first_epoch = state["step"], state["history"], state["epoch"] + 1
        best = state["best"]
        minutes_before = state["minutes"]
        log(f"resume: {checkpoint} after epoch {state['epoch']} (step {step})")
    sample_rng = np.random.default_rng(0)
    sampled = {
        name: faces.subset(sorted(sample_rng.permutation(len(faces))[:400]))
        for name, faces in validation.items()
    }

    # A fixed handful of validation faces shows each epoch whether the network is still alive.
    liveness_faces = [faces.subset(list(range(min(32, len(faces))))) for faces in sampled.values()]

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = [np.asarray(model(images[i : i + 64], training=False)) for i in range(0, len(images), 64)]
        return np.concatenate(outputs).reshape(-1)

    for epoch, size in enumerate(schedule.sizes(), start=1):
        if epoch < first_epoch:
            continue
        if stop_after_epoch is not None and epoch > stop_after_epoch:
            log(f"stop: after epoch {stop_after_epoch} of {len(schedule.sizes())} (--stop-after-epoch)")
            stopped = True
            break
        losses, boundary_losses = [], []
        bar = tqdm(
            # Before the consistency term starts, each step spends its batch on distinct faces.
            prefetched(
                batches.epoch(
                    size,
                    patches=schedule.patches,
                    pairs=ramp(step + steps_per_epoch, total_steps, *schedule.consistency_ramp) > 0,
                )
            ),
            total=steps_per_epoch,
            desc=f"epoch {epoch} @{size}px",
            disable=not progress,
        )
        for images, labels, *maps in bar:
            optimizer.learning_rate.assign(
                cosine_with_warmup(step, total_steps, schedule.learning_rate, schedule.warmup_steps)
            )
            consistency.assign(
                schedule.consistency_weight * ramp(step, total_steps, *schedule.consistency_ramp)
            )
            if maps:
                # Keras names each output's loss after its layer: p_fake (the classification, with
                # the consistency term) and boundary.
                logs = trainer.train_on_batch(images, [labels, maps[0]], return_dict=True)
                losses.append(float(logs["p_fake_loss"]))
                boundary_losses.append(float(logs["boundary_loss"]))
            else:
                losses.append(float(trainer.train_on_batch(images, labels)))
            step += 1
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        # Early epochs are checked on a fixed sample (a full 224 px pass costs about a minute on
        # 2 cores); the last three epochs, which the checkpoint is chosen among, on the whole split.
        checked = validation if epoch > len(schedule.sizes()) - 3 else sampled
        report = validation_score(predict, checked, schedule.high_size)
        entry = {
            "epoch": epoch,
            "size": size,
            "train_loss": float(np.mean(losses)),
            "consistency_weight": float(keras.ops.convert_to_numpy(consistency)),
            **({"boundary_loss": float(np.mean(boundary_losses))} if boundary_losses else {}),
            **(
                {
                    "validation_boundary_auc_sbi": boundary_auc(
                        trainer, checked[MONITOR_ONLY_PREFIX], schedule.high_size
                    )
                }
                if batches.boundary_maps and MONITOR_ONLY_PREFIX in checked
                else {}
            ),
            "validation_mean_auc": report["mean_auc"],
            "silent_channels": silent_fraction(
                model, np.concatenate([plain_batch(faces, size) for faces in liveness_faces])
            ),
            **{f"validation_auc_{name}": report[name]["roc_auc"] for name in validation},
            "minutes": minutes_before + (time.time() - started) / 60,
        }
        history.append(entry)
        log(
            " ".join(
                f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                for key, value in entry.items()
            )
        )
        if checked is validation and (best is None or report["mean_auc"] >= best[0]):
            best = (report["mean_auc"], epoch, [weight.copy() for weight in model.get_weights()])
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "settings": settings or {},
                    "epoch": epoch,
                    "step": step,
                    "weights": model.get_weights(),
                    **(
                        {"boundary_head": trainer.get_layer("boundary_logits").get_weights()}
                        if batches.boundary_maps
                        else {}
                    ),
                    "optimizer": [np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer.variables],
                    "rng_state": batches.rng_state,
                    "history": history,
                    "best": best,
                    "minutes": entry["minutes"],
                },
            )
    if best is None and stopped:
        # A sitting that ends before the epochs the checkpoint is chosen among: nothing to choose
        # yet, and nothing wrong; the checkpoint holds the run for --resume.
        return {
            "history": history,
            "best_epoch": None,
            "stopped_after_epoch": stop_after_epoch,
            "minutes": minutes_before + (time.time() - started) / 60,
        }
    if best is None:
        raise StreamDetectorError("training ran no epoch that the checkpoint could be chosen from")
    model.set_weights(best[2])
    return {
        "history": history,
        "best_epoch": best[1],
        "best_validation_mean_auc": best[0],
        "minutes": minutes_before + (time.time() - started) / 60,
        # Training minutes of the earlier sittings of a resumed run: the caller's own clock
        # started with this sitting, and the 120-minute budget counts the whole run.
        "minutes_before_resume": minutes_before,
    }


def save_checkpoint(path: Path, state: dict) -> None:
    """Written atomically: an interrupted write never replaces the last good checkpoint."""
    from stream_detector.training.dataset import write_pickle

    write_pickle(path, state)


def load_checkpoint(path: Path | None, settings: dict) -> dict:
    """A checkpoint to resume from; one-line errors for a missing or corrupt file or other settings."""
    if path is None or not Path(path).is_file():
        raise StreamDetectorError(f"--resume: no checkpoint at {path}")
    try:
        with Path(path).open("rb") as handle:
            state = pickle.load(handle)
        state["weights"], state["epoch"]  # noqa: B018 - the keys every checkpoint has
    except Exception as error:
        raise StreamDetectorError(
            f"--resume: checkpoint {path} is corrupt ({type(error).__name__})"
        ) from None
    saved = state.get("settings", {})
    for key in sorted(set(saved) | set(settings)):
        if saved.get(key) != settings.get(key):
            raise StreamDetectorError(
                f"--resume: checkpoint {path} was made with {key}={saved.get(key)!r}, "
                f"this run has {key}={settings.get(key)!r}"
            )
    return state
