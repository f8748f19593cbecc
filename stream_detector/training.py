"""Training: splits, batches with augmentation, a progressive-resolution schedule, checkpoint choice.

Backend-agnostic Keras 3 (TensorFlow on the CPU, JAX on a GPU); nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream_detector.augment import augment, degraded_view
from stream_detector.crops import CROP_SIZE
from stream_detector.dataset import FaceSet, resize_crop, split_by_group
from stream_detector.metrics import binary_metrics

SPLIT_FRACTIONS = {"train": 0.70, "validation": 0.15, "test": 0.15}


@dataclass(frozen=True)
class Splits:
    """Per source: train / validation (checkpoint choice and calibration) / test (never chooses anything)."""

    train: dict[str, FaceSet]
    validation: dict[str, FaceSet]
    test: dict[str, FaceSet]


def split_sources(sources: dict[str, FaceSet], seed: int) -> Splits:
    """Split each source by identity group (DFDC's groups.csv; each file its own group elsewhere)."""
    train, validation, test = {}, {}, {}
    for name, faces in sources.items():
        parts = split_by_group(faces.groups, SPLIT_FRACTIONS, seed=seed)
        train[name] = faces.subset(parts["train"], f"{name}/train")
        validation[name] = faces.subset(parts["validation"], f"{name}/validation")
        test[name] = faces.subset(parts["test"], f"{name}/test")
    return Splits(train, validation, test)


def plain_batch(faces: FaceSet, size: int) -> np.ndarray:
    """Unaugmented model inputs: each crop resized exactly as the live engine resizes it."""
    return np.stack([resize_crop(crop, size) for crop in faces.crops]).astype(np.float32)


class AugmentedBatches:
    """An endless stream of shuffled, augmented, class-mixed batches from several sources."""

    def __init__(
        self,
        sources: list[FaceSet],
        batch_size: int,
        seed: int,
        augmented: bool = True,
        paired: bool = False,
    ) -> None:
        """``augmented=False`` feeds the crops as they are, only resized (the reference recipe).
        ``paired``: each batch is batch_size / 2 augmented views followed by the same views degraded
        further (augment.degraded_view), in the same order, for the consistency loss (paired_loss)."""
        if paired and (batch_size % 2 or not augmented):
            raise ValueError("paired batches need an even batch size and augmentation")
        self._crops = [crop for faces in sources for crop in faces.crops]
        self._labels = np.concatenate([faces.labels for faces in sources]).astype(np.float32)
        self.batch_size = batch_size
        self.paired = paired
        self._augmented = augmented
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def steps_per_epoch(self) -> int:
        """Steps of batch_size inputs per epoch: the same compute per epoch paired or not (a paired
        epoch sees a fresh random half of the faces, each twice)."""
        return len(self._labels) // self.batch_size

    def epoch(self, size: int, patches: bool = False, pairs: bool = True):
        """One epoch in random order. ``patches``: random size x size windows of the 224 px crop, so the
        convolutions learn at the pixel scale they will see in production, for a fraction of the cost.
        ``pairs=False`` makes plain batches from paired ones, for epochs with no consistency term."""
        paired = self.paired and pairs
        order = self._rng.permutation(len(self._labels))
        full = CROP_SIZE if patches else size
        per_step = self.batch_size // 2 if paired else self.batch_size
        for step in range(self.steps_per_epoch):
            chosen = order[step * per_step : (step + 1) * per_step]
            if self._augmented:
                images = [augment(self._crops[i], self._rng, full) for i in chosen]
            else:
                images = [resize_crop(self._crops[i], full) for i in chosen]
            labels = self._labels[chosen]
            if paired:
                images = images + [degraded_view(image, self._rng) for image in images]
                labels = np.concatenate([labels, labels])
            if patches and size < full:
                offsets = self._rng.integers(0, full - size + 1, (len(chosen), 2))
                if paired:  # both views of a face through the same window
                    offsets = np.concatenate([offsets, offsets])
                images = [
                    image[y : y + size, x : x + size] for image, (y, x) in zip(images, offsets, strict=True)
                ]
            yield np.stack(images).astype(np.float32), labels.reshape(-1, 1)


def paired_loss(consistency_weight, label_smoothing: float = 0.02):
    """Binary cross-entropy on every input, plus consistency_weight times the mean squared difference
    between the logits of each view and its degraded twin (the second half of a paired batch).
    ``consistency_weight``: a number, or a keras.Variable that training ramps up."""
    import keras
    from keras import ops

    def loss(y_true, y_pred):
        cross_entropy = ops.mean(
            keras.losses.binary_crossentropy(y_true, y_pred, label_smoothing=label_smoothing)
        )
        probability = ops.clip(ops.reshape(y_pred, (-1,)), 1e-6, 1.0 - 1e-6)
        logits = ops.log(probability) - ops.log1p(-probability)
        half = ops.shape(logits)[0] // 2
        difference = logits[:half] - logits[half:]
        return cross_entropy + consistency_weight * ops.mean(ops.square(difference))

    return loss


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
    report["mean_auc"] = float(np.mean([report[name]["roc_auc"] for name in validation]))
    return report


def train(
    model,
    batches: AugmentedBatches,
    validation: dict[str, FaceSet],
    schedule: Schedule,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Train in place; restore the weights of the epoch with the best mean validation AUC."""
    import keras
    from tqdm import tqdm

    optimizer = keras.optimizers.Adam(schedule.learning_rate)
    if batches.paired != (schedule.consistency_weight > 0):
        raise ValueError("a consistency weight needs paired batches, and paired batches need one")
    consistency = keras.Variable(0.0, trainable=False, dtype="float32", name="consistency_weight")
    loss = (
        paired_loss(consistency) if batches.paired else keras.losses.BinaryCrossentropy(label_smoothing=0.02)
    )
    model.compile(optimizer=optimizer, loss=loss)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps_per_epoch * len(schedule.sizes())
    step, best, history, started = 0, None, [], time.time()
    sample_rng = np.random.default_rng(0)
    sampled = {
        name: faces.subset(sorted(sample_rng.permutation(len(faces))[:400]))
        for name, faces in validation.items()
    }

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = [np.asarray(model(images[i : i + 64], training=False)) for i in range(0, len(images), 64)]
        return np.concatenate(outputs).reshape(-1)

    for epoch, size in enumerate(schedule.sizes(), start=1):
        losses = []
        bar = tqdm(
            # Before the consistency term starts, each step spends its batch on distinct faces.
            batches.epoch(
                size,
                patches=schedule.patches,
                pairs=ramp(step + steps_per_epoch, total_steps, *schedule.consistency_ramp) > 0,
            ),
            total=steps_per_epoch,
            desc=f"epoch {epoch} @{size}px",
            disable=not progress,
        )
        for images, labels in bar:
            optimizer.learning_rate.assign(
                cosine_with_warmup(step, total_steps, schedule.learning_rate, schedule.warmup_steps)
            )
            consistency.assign(
                schedule.consistency_weight * ramp(step, total_steps, *schedule.consistency_ramp)
            )
            losses.append(float(model.train_on_batch(images, labels)))
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
            "validation_mean_auc": report["mean_auc"],
            **{f"validation_auc_{name}": report[name]["roc_auc"] for name in validation},
            "minutes": (time.time() - started) / 60,
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
    model.set_weights(best[2])
    return {
        "history": history,
        "best_epoch": best[1],
        "best_validation_mean_auc": best[0],
        "minutes": (time.time() - started) / 60,
    }
