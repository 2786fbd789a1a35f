"""InputPipeline: uint8 batches, determinism given (seed, step), resume, evaluation padding, label checks, sharding."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hrrl_jax.data import DatasetInfo, InputPipeline, SplitData, load_split
from hrrl_jax.data.image_ops import crop_with_padding, resize_bilinear
from hrrl_jax.data.image_readers import ImageReader
from hrrl_jax.data.loaders import DIGITS_INFO, FASHION_MNIST_INFO
from hrrl_jax.data.split_data import PAD_CROP_FLIP

BATCH = 32


@pytest.fixture(scope="module")
def digits_train() -> SplitData:
    return load_split("digits", "train")


def _tiny_fashion_split(num_examples: int = 70) -> SplitData:
    """Random 28x28 images with Fashion-MNIST's info (so its crop and flip apply)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8)
    return SplitData.from_arrays(FASHION_MNIST_INFO, images, np.arange(num_examples) % 10)


def _same_batches(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(second[key]))


def test_training_batches_are_uint8_images_of_the_drawn_examples(digits_train):
    pipeline = InputPipeline(digits_train, global_batch_size=BATCH, seed=0, train=True)
    batch = pipeline.host_batch(0)
    assert batch["image"].shape == (BATCH, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and "mask" not in batch
    order = np.random.default_rng([0, 0, 0]).permutation(len(digits_train))[:BATCH]
    np.testing.assert_array_equal(batch["label"], digits_train.labels[order])
    np.testing.assert_array_equal(batch["image"], digits_train.get_images(order))  # digits: no augmentation


def test_same_seed_same_batches_and_resume_equals_fresh_run():
    split = _tiny_fashion_split()
    first = InputPipeline(split, global_batch_size=16, seed=7, train=True)
    second = InputPipeline(split, global_batch_size=16, seed=7, train=True)
    assert first.steps_per_epoch == 4  # 70 // 16, the remainder of each epoch dropped
    fresh = first.iterate(0)
    fresh_batches = [next(fresh) for _ in range(7)]
    for step in (0, 3, 6):
        _same_batches(fresh_batches[step], second.host_batch(step))
    resumed = second.iterate(4)
    for step in (4, 5, 6):
        _same_batches(next(resumed), fresh_batches[step])
    other_seed = InputPipeline(split, global_batch_size=16, seed=8, train=True).host_batch(0)
    assert not np.array_equal(other_seed["label"], fresh_batches[0]["label"])


def test_each_epoch_visits_distinct_examples():
    split = SplitData.from_arrays(DIGITS_INFO, np.zeros((40, 8, 8, 1), np.uint8), np.arange(40) % 10)
    pipeline = InputPipeline(split, global_batch_size=8, seed=1, train=True)
    epoch_zero = [pipeline.host_batch(step)["label"] for step in range(5)]
    np.testing.assert_array_equal(np.sort(np.concatenate(epoch_zero)), np.sort(split.labels))
    assert not np.array_equal(pipeline.host_batch(5)["label"], epoch_zero[0])


def test_augmentation_crops_and_flips_within_padding():
    split = _tiny_fashion_split()
    pipeline = InputPipeline(split, global_batch_size=16, seed=0, train=True)
    plain = InputPipeline(split, global_batch_size=16, seed=0, train=True, augment=False)
    augmented, unaugmented = pipeline.host_batch(2)["image"], plain.host_batch(2)["image"]
    assert not np.array_equal(augmented, unaugmented)
    assert FASHION_MNIST_INFO.padding == 2
    for image, original in zip(augmented, unaugmented):  # each is a shifted (and maybe mirrored) copy
        candidates = [
            np.roll(np.pad(o, ((2, 2), (2, 2), (0, 0))), (dy, dx), (0, 1))[2:-2, 2:-2]
            for o in (original, original[:, ::-1])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(np.array_equal(image, candidate) for candidate in candidates)


def test_crop_with_padding_offsets():
    images = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(crop_with_padding(images, np.array([[2, 2]]), 2), images)
    shifted = crop_with_padding(images, np.array([[0, 2]]), 2)[0, :, :, 0]
    np.testing.assert_array_equal(shifted[:2], 0)
    np.testing.assert_array_equal(shifted[2:], images[0, :2, :, 0])


def test_image_size_resizes_digits(digits_train):
    pipeline = InputPipeline(digits_train, global_batch_size=BATCH, seed=0, train=True, image_size=28)
    batch = pipeline.host_batch(0)["image"]
    assert batch.shape == (BATCH, 28, 28, 1) and batch.dtype == np.uint8
    order = np.random.default_rng([0, 0, 0]).permutation(len(digits_train))[:BATCH]
    resized = resize_bilinear(digits_train.get_images(order), 28, 28)
    assert np.abs(batch - resized).max() <= 0.5 + 1e-4  # the pipeline's bilinear, rounded to uint8
    constant = np.full((2, 8, 8, 1), 9.0, np.float32)
    np.testing.assert_allclose(resize_bilinear(constant, 28, 28), 9.0, rtol=1e-6)
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[None, None, :, None], (1, 8, 8, 1))
    halved = resize_bilinear(ramp, 8, 4)[0, 0, :, 0]  # a ramp stays a ramp; edges renormalised as PIL does
    np.testing.assert_allclose(halved[1:3], [2.5, 4.5], atol=1e-5)
    assert 0.5 <= halved[0] < 1.0 and 6.0 < halved[3] <= 6.5


def test_eval_batches_count_every_example_once():
    test = load_split("digits", "test")  # 450 examples: 14 full batches of 32 and 2 left
    pipeline = InputPipeline(test, global_batch_size=BATCH, seed=0, train=False)
    batches = list(pipeline.eval_batches())
    assert pipeline.num_eval_batches == len(batches) == 15
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.dtype == np.float32 and masks.sum() == 450 and np.all(masks[:450] == 1)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:450], test.labels)
    assert batches[-1]["image"].shape == (BATCH, 8, 8, 1)
    _same_batches(batches[3], pipeline.host_eval_batch(3))


def test_label_outside_class_range_is_an_error():
    labels = np.arange(40) % 10
    labels[17] = 12
    split = SplitData.from_arrays(DIGITS_INFO, np.zeros((40, 8, 8, 1), np.uint8), labels)
    with pytest.raises(ValueError, match=r"label 12 of example 17 of digits is outside the class range \[0, 10\)"):
        InputPipeline(split, global_batch_size=8, seed=0, train=True)


def test_batch_larger_than_split_is_an_error(digits_train):
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        InputPipeline(digits_train, global_batch_size=4096, seed=0, train=True)


def test_sharded_global_batch_equals_host_batch(digits_train):
    assert jax.device_count() == 8
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    sharded = InputPipeline(digits_train, global_batch_size=BATCH, seed=3, train=True, sharding=sharding)
    batch = sharded.global_batch(5)
    assert isinstance(batch["image"], jax.Array) and batch["image"].sharding == sharding
    assert len(batch["label"].addressable_shards) == 8
    assert batch["label"].addressable_shards[0].data.shape == (BATCH // 8,)
    _same_batches(batch, sharded.host_batch(5))
    eval_batch = next(
        InputPipeline(digits_train, global_batch_size=BATCH, seed=0, train=False, sharding=sharding).eval_batches()
    )
    assert eval_batch["mask"].sharding == sharding


class _Unreadable(ImageReader):
    def stored(self, indices):
        return 1 / 0


def test_prefetch_reraises_errors_from_the_thread_with_the_step(digits_train):
    split = SplitData(DIGITS_INFO, digits_train.labels, _Unreadable())
    with pytest.raises(ZeroDivisionError) as error:
        next(InputPipeline(split, global_batch_size=BATCH, seed=0, train=True).iterate(3))
    assert "while building the training batch of step 3" in error.value.__notes__


@pytest.mark.parametrize(
    "policy, message",
    [
        ({"augmentation": "mixup"}, "augmentation must be one of"),
        ({"augmentation": PAD_CROP_FLIP}, "padding must be > 0 with pad_crop_flip"),
        ({"padding": 2}, "padding must be > 0 with pad_crop_flip and 0 otherwise; got 2"),
    ],
)
def test_a_data_set_policy_that_cannot_work_is_an_error(policy, message):
    fields = {"name": "x", "num_classes": 10, "image_shape": (8, 8, 1), "hierarchy": DIGITS_INFO.hierarchy}
    with pytest.raises(ValueError, match=message):
        DatasetInfo(**fields, mean=(0.5,), std=(0.2,), **policy)
