import numpy as np
import pytest

from stream_detector.training.dataset import FaceSet
from stream_detector.training.loop import (
    AugmentedBatches,
    Schedule,
    paired_loss,
    seen_faces_in_test,
    split_sources,
)


def face_set(count: int, seed: int = 0) -> FaceSet:
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (120, 120, 3), dtype=np.uint8) for _ in range(count)]
    labels = np.arange(count, dtype=np.int32) % 2
    return FaceSet(
        "toy", crops, labels, [f"{i}.png" for i in range(count)], [str(i) for i in range(count)], ()
    )


def test_paired_batches_hold_each_view_then_its_degraded_twin_through_the_same_window():
    batches = AugmentedBatches([face_set(40)], batch_size=8, seed=1, paired=True)
    assert batches.steps_per_epoch == 5
    epoch = list(batches.epoch(112, patches=True))
    assert len(epoch) == 5
    for images, labels in epoch:
        assert images.shape == (8, 112, 112, 3) and labels.shape == (8, 1)
        np.testing.assert_array_equal(labels[:4], labels[4:])
        for view, twin in zip(images[:4], images[4:], strict=True):
            # Same face, same window: close pixels; but not the same pixels (one more JPEG pass).
            assert 0 < np.abs(view - twin).mean() < 40
            assert np.corrcoef(view.ravel(), twin.ravel())[0, 1] > 0.5
        # Different faces in one batch are unrelated random crops.
        assert abs(np.corrcoef(images[0].ravel(), images[1].ravel())[0, 1]) < 0.3


def test_unpaired_batches_see_every_face_once_per_epoch():
    batches = AugmentedBatches([face_set(40)], batch_size=8, seed=1)
    labels = np.concatenate([labels for _, labels in batches.epoch(64)])
    assert labels.shape == (40, 1) and labels.sum() == 20


def test_paired_batches_need_an_even_batch_and_augmentation():
    with pytest.raises(ValueError):
        AugmentedBatches([face_set(10)], batch_size=7, seed=0, paired=True)
    with pytest.raises(ValueError):
        AugmentedBatches([face_set(10)], batch_size=8, seed=0, paired=True, augmented=False)


def test_paired_loss_adds_the_weighted_squared_logit_gap_to_cross_entropy():
    import keras

    labels = np.array([[0.0], [1.0], [0.0], [1.0]], np.float32)
    same = np.array([[0.2], [0.7], [0.2], [0.7]], np.float32)
    apart = np.array([[0.2], [0.7], [0.5], [0.9]], np.float32)
    plain = keras.losses.BinaryCrossentropy(label_smoothing=0.02)
    assert float(paired_loss(0.5)(labels, same)) == pytest.approx(float(plain(labels, same)), abs=1e-5)

    def logit(p):
        return np.log(p / (1 - p))

    gap = np.mean((logit(apart[:2, 0]) - logit(apart[2:, 0])) ** 2)
    expected = float(plain(labels, apart)) + 0.5 * gap
    assert float(paired_loss(0.5)(labels, apart)) == pytest.approx(expected, rel=1e-4)


def test_paired_loss_with_a_clean_target_moves_only_the_degraded_twins():
    import tensorflow as tf

    labels = tf.constant([[0.0], [1.0], [0.0], [1.0]])
    apart = tf.Variable([[0.2], [0.7], [0.5], [0.9]])

    def gradient(loss):
        with tf.GradientTape() as tape:
            value = loss(labels, apart)
        return value, tape.gradient(value, apart).numpy().reshape(-1)

    both_value, both = gradient(paired_loss(0.5))
    clean_value, clean = gradient(paired_loss(0.5, target="clean"))
    _, cross_entropy_only = gradient(paired_loss(0.0))
    # The same loss value; the views (first half) get cross-entropy's gradient alone, the twins more.
    assert float(clean_value) == pytest.approx(float(both_value), rel=1e-6)
    assert clean[:2] == pytest.approx(cross_entropy_only[:2], abs=1e-6)
    assert both[:2] != pytest.approx(cross_entropy_only[:2], abs=1e-3)
    assert clean[2:] == pytest.approx(both[2:], rel=1e-5)
    with pytest.raises(ValueError, match="consistency target"):
        paired_loss(0.5, target="twin")


def test_training_refuses_a_consistency_weight_without_pairs_and_the_reverse():
    from stream_detector.pipeline.model import build_model
    from stream_detector.training.loop import train

    model = build_model(input_size=None)
    unpaired = AugmentedBatches([face_set(8)], batch_size=4, seed=0)
    with pytest.raises(ValueError, match="consistency"):
        train(model, unpaired, {}, Schedule(1, 64, 0, consistency_weight=0.5), log=lambda _: None)


def test_consistency_ramps_from_off_to_full_between_its_two_fractions_of_training():
    from stream_detector.training.loop import ramp

    values = [ramp(step, 100, 0.5, 0.75) for step in (0, 50, 55, 62, 75, 99)]
    assert values[0] == values[1] == 0.0
    assert 0.0 < values[2] < values[3] < 1.0
    assert values[4] == values[5] == 1.0
    # `train.py --consistency-ramp 0 0`: off only before the first step, at full weight from then on.
    assert ramp(0, 100, 0.0, 0.0) == 0.0 and ramp(1, 100, 0.0, 0.0) == 1.0


def test_paired_batches_turn_plain_for_epochs_without_the_consistency_term():
    batches = AugmentedBatches([face_set(40)], batch_size=8, seed=1, paired=True)
    images, labels = next(batches.epoch(64, pairs=False))
    # Eight distinct faces, none the twin of another.
    assert images.shape == (8, 64, 64, 3)
    assert all(abs(np.corrcoef(images[0].ravel(), other.ravel())[0, 1]) < 0.3 for other in images[1:])


def test_each_blendable_real_comes_with_its_blend_in_the_same_batch_through_the_same_augmentation():
    from tests.training.test_blending import synthetic_face

    crops, points = [], []
    for seed in range(6):
        image, landmarks = synthetic_face(96, seed)
        crops.append(image)
        points.append(landmarks)
    labels = np.array([0, 0, 0, 0, 1, 1], np.int32)
    faces = FaceSet("toy", crops, labels, [f"{i}.png" for i in range(6)], [str(i) for i in range(6)], ())
    landmarks = [points[0], points[1], None, None, None, None]  # two of the four reals are blendable
    batches = AugmentedBatches([faces], batch_size=4, seed=3, landmarks=landmarks)
    # Balanced: four reals, two blends and two real fakes per epoch.
    assert len(batches) == 8 and batches.blended_pairs == 2 and batches.steps_per_epoch == 2
    images = np.concatenate([batch for batch, _ in batches.epoch(96)])
    targets = np.concatenate([target for _, target in batches.epoch(96)])
    assert targets.sum() == 4  # two fakes and two blends, in a second epoch of the same shape
    # A real and its own blend: same augmentation, so outside the face they agree, and inside it
    # they differ.
    found_pairs = count_twins(batches.epoch(96), edge_rows=8, centre=slice(40, 56), centre_difference=0.5)
    assert found_pairs == 2
    assert images.shape == (8, 96, 96, 3)


def blendable_set(reals: int, fakes: int):
    """Textured synthetic reals, each with landmarks, and flat grey fakes (told from blends by
    their texture): the faces and their landmark list."""
    from tests.training.test_blending import synthetic_face

    crops, landmarks = [], []
    for seed in range(reals):
        image, points = synthetic_face(96, seed)
        crops.append(image)
        landmarks.append(points)
    crops += [np.full((96, 96, 3), 128, np.uint8) for _ in range(fakes)]
    landmarks += [None] * fakes
    labels = np.array([0] * reals + [1] * fakes, np.int32)
    names = [str(i) for i in range(reals + fakes)]
    return FaceSet("toy", crops, labels, [f"{n}.png" for n in names], names, ()), landmarks


@pytest.mark.parametrize(("share", "blends"), [(0.5, 4), (0.75, 6), (1.0, 8)])
def test_the_blend_share_sets_how_much_of_the_fake_class_is_self_blended(share, blends):
    faces, landmarks = blendable_set(reals=8, fakes=8)
    batches = AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks, blend_share=share)
    # Still balanced: every real once, and as many fakes, blends first and real fakes for the rest.
    assert batches.blended_pairs == blends and len(batches) == 16
    for _ in range(2):  # every epoch has the same make-up
        epoch = list(batches.epoch(96))
        images = np.concatenate([batch for batch, _ in epoch])
        targets = np.concatenate([target for _, target in epoch]).reshape(-1)
        assert len(targets) == 16 and targets.sum() == 8
        textured = images.reshape(16, -1).std(axis=1) > 6  # the textures: 11-17, grey: under 3
        assert textured[targets == 1].sum() == blends  # the blends; the grey fakes are the rest
        assert textured[targets == 0].all()


def test_a_blend_share_outside_zero_to_one_is_refused_by_value():
    faces, landmarks = blendable_set(reals=2, fakes=2)
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"blend share .*{share}"):
            AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks, blend_share=share)


@pytest.mark.slow
def test_training_resumes_after_its_last_epoch_and_refuses_other_settings(tmp_path):
    from stream_detector.errors import StreamDetectorError
    from stream_detector.pipeline.model import build_model
    from stream_detector.training.loop import train

    validation = {"toy": face_set(8, seed=1)}
    checkpoint = tmp_path / "checkpoint.pkl"
    settings = {"seed": 0}

    def run(epochs, resume, run_settings=settings):
        model = build_model(input_size=None)
        batches = AugmentedBatches([face_set(16)], batch_size=8, seed=0)
        result = train(
            model,
            batches,
            validation,
            Schedule(epochs, 64, 0, high_size=64, warmup_steps=1),
            log=lambda _: None,
            progress=False,
            checkpoint=checkpoint,
            resume=resume,
            settings=run_settings,
        )
        return model, result

    _, first = run(2, resume=False)
    assert [entry["epoch"] for entry in first["history"]] == [1, 2]
    # A first sitting that stops before the epochs the checkpoint is chosen among is no error.
    model = build_model(input_size=None)
    sitting = train(
        model, AugmentedBatches([face_set(16)], batch_size=8, seed=0), validation,
        Schedule(5, 64, 0, high_size=64, warmup_steps=1), log=lambda _: None, progress=False,
        checkpoint=tmp_path / "sitting.pkl", settings=settings, stop_after_epoch=1,
    )  # fmt: skip
    assert sitting["best_epoch"] is None and sitting["stopped_after_epoch"] == 1
    assert [entry["epoch"] for entry in sitting["history"]] == [1] and (tmp_path / "sitting.pkl").is_file()
    _, resumed = run(3, resume=True)
    # Epochs 1-2 come from the checkpoint; only epoch 3 ran.
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]
    # The budget counts the whole run: the minutes before the resume are carried, not restarted.
    assert resumed["minutes_before_resume"] == pytest.approx(first["history"][-1]["minutes"])
    assert resumed["minutes"] >= resumed["minutes_before_resume"] > 0
    with pytest.raises(StreamDetectorError, match="made with seed=0, this run has seed=1"):
        run(3, resume=True, run_settings={"seed": 1})
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(StreamDetectorError, match="corrupt"):
        run(3, resume=True)


def group_paired_set() -> FaceSet:
    """Four reals whose groups each have a fake (the same picture with another centre), four reals and
    four fakes alone in their groups."""
    rng = np.random.default_rng(5)
    crops, labels, groups = [], [], []
    for group in range(4):
        scene = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
        swapped = scene.copy()
        swapped[40:80, 40:80] = 255 - swapped[40:80, 40:80]
        crops += [scene, swapped]
        labels += [0, 1]
        groups += [f"video{group}", f"video{group}"]
    for alone in range(8):
        crops.append(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8))
        labels.append(alone % 2)
        groups.append(f"alone{alone}")
    files = [f"{i}.png" for i in range(len(crops))]
    return FaceSet("toy", crops, np.array(labels, np.int32), files, groups, ())


def count_twins(epoch, edge_rows: int, centre: slice, centre_difference: float) -> int:
    """Adjacent real/fake images that agree in their top rows (one augmentation), each asserted to
    differ by more than centre_difference in the centre square."""
    found = 0
    for images, labels in epoch:
        for first in range(0, len(images), 2):
            view, twin = images[first], images[first + 1]
            if (
                labels[first, 0] == 0
                and labels[first + 1, 0] == 1
                and np.abs(view[:edge_rows] - twin[:edge_rows]).mean() < 1.0
            ):
                assert np.abs(view[centre, centre] - twin[centre, centre]).mean() > centre_difference
                found += 1
    return found


def count_group_pairs(batches: AugmentedBatches) -> int:
    return count_twins(batches.epoch(96), edge_rows=20, centre=slice(36, 60), centre_difference=20)


def test_pair_groups_puts_each_fake_after_a_real_of_its_group_through_the_same_augmentation():
    paired = AugmentedBatches([group_paired_set()], batch_size=4, seed=2, pair_groups=True)
    assert paired.groupable_fakes == 4 and len(paired) == 16
    assert count_group_pairs(paired) == 4
    # Without the option, the same faces land in random places: no pair shares an augmentation.
    assert count_group_pairs(AugmentedBatches([group_paired_set()], batch_size=4, seed=2)) == 0


def test_group_pairs_give_way_to_blends_only_when_other_reals_run_short():
    faces = group_paired_set()
    from tests.training.test_blending import synthetic_face

    _, points = synthetic_face(120, 0)
    # Every real blendable: 8 reals, so 4 blends and 4 fakes drawn; the reals whose group's fake was
    # drawn stay paired with it, and the blends take the other reals.
    landmarks = [points if label == 0 else None for label in faces.labels]
    batches = AugmentedBatches([faces], batch_size=4, seed=2, landmarks=landmarks, pair_groups=True)
    for _ in range(3):
        order = batches._epoch_order()
        blended = {index for index, is_blend, _ in order if is_blend}
        drawn_group_fakes = {index for index, _, _ in order if index in (1, 3, 5, 7)}
        assert len(blended) == 4 and drawn_group_fakes
        keys = {index: key for index, _, key in order}
        for fake in drawn_group_fakes:
            assert fake - 1 not in blended and keys[fake] == fake - 1
            position = [index for index, _, _ in order].index(fake)
            assert order[position - 1][0] == fake - 1 and position % 2 == 1


def test_boundary_maps_mark_each_blend_leave_reals_empty_and_real_fakes_unsupervised():
    from stream_detector.training.loop import UNSUPERVISED

    faces, landmarks = blendable_set(reals=8, fakes=8)
    batches = AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks, boundary_layer="conv6")
    kinds = {"real": 0, "blend": 0, "fake": 0}
    for images, labels, maps in batches.epoch(224):
        assert images.shape == (4, 224, 224, 3) and maps.shape == (4, 7, 7, 1)
        for image, label, target in zip(images, labels.reshape(-1), maps, strict=True):
            textured = image.std() > 6  # the synthetic faces; the real fakes are flat grey
            if label == 0:
                assert not target.any()
                kinds["real"] += 1
            elif textured:
                assert target.min() >= 0.0 and target.max() > 0.3
                kinds["blend"] += 1
            else:
                assert (target == UNSUPERVISED).all()
                kinds["fake"] += 1
    assert kinds == {"real": 8, "blend": 4, "fake": 4}
    # A head on conv4 gets a map of conv4's 28x28 cells at 224 px; an unknown layer is named.
    deeper = AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks, boundary_layer="conv4")
    assert next(iter(deeper.epoch(224)))[2].shape == (4, 28, 28, 1)
    with pytest.raises(ValueError, match="boundary layer 'dense1' is not one of conv4, conv5, conv6"):
        AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks, boundary_layer="dense1")
    # Without the option the batches are what every earlier run trained on: images and labels only.
    plain = AugmentedBatches([faces], batch_size=4, seed=5, landmarks=landmarks)
    assert all(len(batch) == 2 for batch in plain.epoch(96))


def test_the_boundary_loss_counts_only_supervised_cells():
    from stream_detector.training.loop import UNSUPERVISED, boundary_loss

    loss = boundary_loss()
    target = np.full((2, 3, 3, 1), UNSUPERVISED, np.float32)
    target[0] = 0.0
    prediction = np.full((2, 3, 3, 1), 0.5, np.float32)
    prediction[1] = 0.99  # the unsupervised face's cells: wrong by any target, and not counted
    assert float(loss(target, prediction)) == pytest.approx(np.log(2.0), rel=1e-4)
    assert float(loss(np.full_like(target, UNSUPERVISED), prediction)) == 0.0


@pytest.mark.slow
def test_training_with_the_boundary_head_resumes_and_ships_the_reference_network(tmp_path):
    from stream_detector.pipeline.model import build_model
    from stream_detector.training.loop import train

    faces, landmarks = blendable_set(reals=8, fakes=8)
    checkpoint = tmp_path / "checkpoint.pkl"

    def run(epochs, resume):
        model = build_model(input_size=None)
        batches = AugmentedBatches([faces], batch_size=8, seed=0, landmarks=landmarks, boundary_layer="conv4")
        schedule = Schedule(0, 64, epochs, high_size=224, warmup_steps=1, boundary_weight=1.0)
        result = train(
            model, batches, {"toy": faces, "sbi": faces}, schedule, log=lambda _: None, progress=False,
            checkpoint=checkpoint, resume=resume, settings={"seed": 0},
        )  # fmt: skip
        return model, result

    model, first = run(2, resume=False)
    assert all(entry["boundary_loss"] > 0 for entry in first["history"])
    # The head's own skill on the self-blended validation pairs is logged beside the classifier's.
    assert all(0.0 <= entry["validation_boundary_auc_sbi"] <= 1.0 for entry in first["history"])
    assert "boundary" not in [layer.name for layer in model.layers]
    assert len(model.get_weights()) == len(build_model(input_size=None).get_weights())
    _, resumed = run(3, resume=True)
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="boundary weight needs batches with boundary maps"):
        train(
            build_model(input_size=None), AugmentedBatches([faces], batch_size=8, seed=0), {"toy": faces},
            Schedule(0, 64, 1, high_size=224, boundary_weight=1.0), log=lambda _: None, progress=False,
        )  # fmt: skip


def test_a_start_model_that_saw_faces_of_the_new_test_split_is_found():
    crops = [np.zeros((8, 8, 3), np.uint8)] * 200
    files = [f"/data/toy/{'fake' if i % 2 else 'real'}/{i}.png" for i in range(200)]
    faces = FaceSet("toy", crops, np.arange(200) % 2, files, [str(i // 2) for i in range(200)], ())

    def record(splits) -> dict:
        return {
            part: {"toy": [file.removeprefix("/data/") for file in getattr(splits, part)["toy"].files]}
            for part in ("train", "validation", "test")
        }

    # A --no-init run's splits, then another seed's without --keep-in-train: its test holds faces the
    # first model trained or chose on. Kept in train with that record, none reach the test split.
    first = record(split_sources({"toy": faces}, seed=1))
    other = split_sources({"toy": faces}, seed=2)
    expected = sum(
        file.removeprefix("/data/") in first["train"]["toy"] + first["validation"]["toy"]
        for file in other.test["toy"].files
    )
    assert seen_faces_in_test(other, first) == expected > 0
    kept = {file for part in ("train", "validation") for file in first[part]["toy"]}
    assert seen_faces_in_test(split_sources({"toy": faces}, seed=2, keep_in_train=kept), first) == 0
    assert seen_faces_in_test(split_sources({"toy": faces}, seed=1), first) == 0
