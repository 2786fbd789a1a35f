"""Tests of the ResNet family: shapes, stems, precision, features/head contract, BatchNorm modes, sizes.

Compiling random initialisers is slow on the CPU test machines, so most tests fill the variables
from a host-side numpy generator (`_host_variables`); the initialisers themselves are tested once
on single blocks.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax.models import BATCH_NORM_VARIANCES, MODEL_NAMES, count_flops, create_model
from hrrl_jax.models.batch_norm import BatchNorm, batch_moments
from hrrl_jax.models.resnet import BasicBlock, BottleneckBlock

NUM_CLASSES = 5


def _abstract_variables(model, images_shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images_shape), train=False))


def _host_variables(model, images_shape, seed=0):
    """He-scaled normal kernels, unit BN scales, zero biases, running stats (0, 1): no compilation."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, jnp.float32)
        return jnp.zeros(leaf.shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, images_shape))


def _apply_eval(model, variables, images):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def _apply_train(model, variables, images):
    """Train-mode forward; returns ((logits, features), updated batch_stats collection)."""
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, images)


def _images(batch, side, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, side, side, 3), jnp.float32)


@pytest.mark.parametrize(
    "name, stem, side, feature_dim",
    [
        ("resnet18", "small", 16, 4 * 8),
        ("resnet18", "imagenet", 64, 4 * 8),
        ("resnet50", "small", 16, 4 * 8 * 4),
        ("resnet50", "imagenet", 64, 4 * 8 * 4),
    ],
)
def test_logits_and_features_shapes(name, stem, side, feature_dim):
    model = create_model(name, num_classes=NUM_CLASSES, width=4, stem=stem)
    images = _images(2, side)
    logits, features = _apply_eval(model, _host_variables(model, images.shape), images)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert features.shape == (2, feature_dim) and features.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(features))


@pytest.mark.parametrize(
    "stem, side, expected_side", [("small", 32, 32), ("imagenet", 32, 8), ("auto", 32, 32), ("auto", 128, 32)]
)
def test_stem_choice_sets_kernel_and_downsampling(stem, side, expected_side):
    """The ImageNet stem (7x7 conv) divides the side by 4 before stage 1; the small stem (3x3) keeps it."""
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=4, stem=stem)
    shapes = _abstract_variables(model, (1, side, side, 3))
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
        shapes,
        jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32),
    )
    assert state["intermediates"]["stage1_block1"]["__call__"][0].shape[1] == expected_side
    kernel_side = 3 if expected_side == side else 7
    assert shapes["params"]["stem"]["conv"]["kernel"].shape == (kernel_side, kernel_side, 3, 4)


def test_features_are_the_input_of_the_head():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=4, stem="small")
    images = _images(3, 16)
    variables = _host_variables(model, images.shape)
    head = {
        "kernel": jnp.asarray(np.random.default_rng(1).normal(size=(32, NUM_CLASSES)), jnp.float32),
        "bias": jnp.arange(NUM_CLASSES, dtype=jnp.float32),
    }
    variables = {**variables, "params": {**variables["params"], "head": head}}
    logits, features = _apply_eval(model, variables, images)
    np.testing.assert_allclose(logits, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert np.std(np.asarray(features)) > 0


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    images = _images(4, 16)
    model32 = create_model("resnet18", num_classes=NUM_CLASSES, width=8, stem="small")
    model16 = create_model("resnet18", num_classes=NUM_CLASSES, width=8, stem="small", dtype=jnp.bfloat16)
    shapes16 = _abstract_variables(model16, images.shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes16))
    variables = _host_variables(model32, images.shape)
    (logits32, features32), _ = _apply_train(model32, variables, images)
    (logits16, features16), _ = _apply_train(model16, variables, images)
    assert logits16.dtype == jnp.float32 and features16.dtype == jnp.float32
    assert not np.array_equal(features16, features32)  # bf16 really was used
    scale = float(np.abs(features32).max())
    np.testing.assert_allclose(features16, features32, atol=0.05 * scale)
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * float(np.abs(logits32).max()))


@pytest.mark.parametrize("block_cls, last_unit", [(BasicBlock, "unit2"), (BottleneckBlock, "unit3")])
def test_each_block_starts_as_identity_with_zero_last_batchnorm_scale(block_cls, last_unit):
    """Zero last BN scale: a block without projection maps x >= 0 to relu(x) = x at initialisation."""
    block = block_cls(features=8 // block_cls.expansion)
    inputs = jnp.abs(_images(2, 4)[..., :1].repeat(8, axis=-1))
    outputs, variables = jax.jit(
        lambda x: block.init_with_output(jax.random.key(0, impl="unsafe_rbg"), x, train=False)
    )(inputs)
    assert "projection" not in variables["params"]
    np.testing.assert_array_equal(variables["params"][last_unit]["bn"]["scale"], 0.0)
    np.testing.assert_array_equal(variables["params"]["unit1"]["bn"]["scale"], 1.0)
    assert np.std(np.asarray(variables["params"]["unit1"]["conv"]["kernel"])) > 0
    np.testing.assert_allclose(outputs, inputs, rtol=1e-6)


def test_batch_stats_update_only_in_train_mode():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=4, stem="small")
    images = _images(4, 16) * 3.0 + 1.0
    variables = _host_variables(model, images.shape)

    (logits_train, _), updated = _apply_train(model, variables, images)
    new_mean = updated["batch_stats"]["stem"]["bn"]["mean"]
    # Running average with momentum 0.9 from 0: new = 0.1 * batch mean of the stem convolution.
    stem_conv = jax.lax.conv_general_dilated(
        images,
        variables["params"]["stem"]["conv"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(new_mean, 0.1 * stem_conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)

    # Eval mode normalises with the running averages, so its output follows them.
    logits_eval = _apply_eval(model, variables, images)[0]
    logits_eval_updated = _apply_eval(model, {**variables, **updated}, images)[0]
    assert not np.allclose(logits_eval, logits_eval_updated)

    # Train mode normalises with batch statistics: an example's output depends on the others;
    # in eval mode it does not.
    other_batch = images.at[2:].set(_images(2, 16, seed=7))
    (logits_train_other, _), _ = _apply_train(model, variables, other_batch)
    assert not np.allclose(logits_train[:2], logits_train_other[:2])
    logits_eval_other = _apply_eval(model, variables, other_batch)[0]
    np.testing.assert_allclose(logits_eval[:2], logits_eval_other[:2], rtol=1e-5, atol=1e-6)


# Relative error of the batch variance under a mean 10-100 x the spread: the exact forms keep float32 rounding
# (a few u, u = 6e-8; bound 1e-5 leaves a margin), E[x²] - E[x]² loses it to cancellation (measured 6e-3).
@pytest.mark.parametrize(
    "batch_norm_variance, max_relative_error", [("shifted_one_pass", 1e-5), ("two_pass", 1e-5), ("one_pass", 1e-1)]
)
def test_batch_norm_variance_modes_under_a_large_mean(batch_norm_variance, max_relative_error):
    """Every mode gives the batch variance; only one_pass loses digits when the mean dwarfs the spread."""
    images = jax.random.normal(jax.random.key(0), (8, 8, 8, 16)) + 100.0
    block = BottleneckBlock(4, batch_norm_variance=batch_norm_variance)
    variables = block.init(jax.random.key(1), images, train=False)
    _, updated = block.apply(variables, images, train=True, mutable=["batch_stats"])
    # unit1 is a 1x1 convolution (no padding): its outputs in float64, means ~ 100 x their spread.
    kernel = np.asarray(variables["params"]["unit1"]["conv"]["kernel"][0, 0], np.float64)
    outputs = np.einsum("bhwc,cd->bhwd", np.asarray(images, np.float64), kernel)
    expected = outputs.var(axis=(0, 1, 2))
    assert np.min(np.abs(outputs.mean(axis=(0, 1, 2))) / np.sqrt(expected)) > 10
    # Running variance with momentum 0.9 from 1: new = 0.9 + 0.1 * batch variance.
    got = (np.asarray(updated["batch_stats"]["unit1"]["bn"]["var"], np.float64) - 0.9) / 0.1
    relative_error = np.max(np.abs(got - expected) / expected)
    assert relative_error < max_relative_error
    if batch_norm_variance == "one_pass":
        assert relative_error > 1e-4


@pytest.mark.parametrize("variance", BATCH_NORM_VARIANCES)
@pytest.mark.parametrize("mean", [0.0, 1e3])
def test_batch_moments_match_float64_and_carry_the_exact_gradient(variance, mean):
    x = np.random.default_rng(0).normal(mean, 2.0, (16, 5, 7, 3)).astype(np.float32)
    got_mean, got_var = batch_moments(jnp.asarray(x), variance)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(got_mean, x64.mean(axis=(0, 1, 2)), rtol=1e-6, atol=1e-6 * 2.0)  # 2.0: the spread.
    if not (variance == "one_pass" and mean):  # A mean 500 x the spread: one_pass keeps no digit to compare.
        np.testing.assert_allclose(got_var, x64.var(axis=(0, 1, 2)), rtol=1e-5)
    # The shift carries no gradient, so d var / d x is that of the variance itself: 2 (x - E[x]) / n.
    if mean == 0.0:
        grad = jax.grad(lambda v: batch_moments(v, variance)[1].sum())(jnp.asarray(x))
        expected = 2 * (x64 - x64.mean(axis=(0, 1, 2))) / (x.size / x.shape[-1])
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variance, use_fast_variance", [("one_pass", True), ("two_pass", False)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_earlier_modes_compute_what_flax_batch_norm_computes(variance, use_fast_variance, dtype):
    """Checkpoints trained with Flax's BatchNorm in either mode load and continue bit for bit."""
    x = (jax.random.normal(jax.random.key(0), (8, 6, 6, 16)) * 3.0 + 5.0).astype(dtype)
    ours = BatchNorm(use_running_average=False, variance=variance, dtype=dtype)
    flax_batch_norm = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=use_fast_variance, dtype=dtype)
    variables = flax_batch_norm.init(jax.random.key(1), x, use_running_average=False)
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    variables = {"params": {"scale": jnp.linspace(0.5, 2.0, 16), "bias": jnp.linspace(-1.0, 1.0, 16)},
                 "batch_stats": variables["batch_stats"]}  # fmt: skip
    for train in (True, False):
        expected = flax_batch_norm.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])
        got = ours.clone(use_running_average=not train).apply(variables, x, mutable=["batch_stats"])
        assert got[0].dtype == expected[0].dtype
        jax.tree.map(np.testing.assert_array_equal, got, expected)


# ResNet-10: stem 9,536 + stages 73,984 + 230,144 + 919,040 + 3,673,088 + head 513,000 (BasicBlocks, one a stage).
@pytest.mark.parametrize(
    "name, expected, feature_dim",
    [("resnet10", 5_418_792, 512), ("resnet18", 11_689_512, 512), ("resnet50", 25_557_032, 2048)],
)
def test_standard_parameter_counts(name, expected, feature_dim):
    model = create_model(name, num_classes=1000)
    shapes = _abstract_variables(model, (1, 224, 224, 3))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == expected
    assert shapes["params"]["head"]["kernel"].shape == (feature_dim, 1000)


def test_resnet50_forward_flops_at_224():
    model = create_model("resnet50", num_classes=1000)
    flops = count_flops(model, _abstract_variables(model, (1, 224, 224, 3)), (1, 224, 224, 3))
    assert 7.5e9 <= flops <= 8.5e9  # about 4.1 G multiply-adds, 2 FLOPs each


def test_count_flops_is_per_example():
    model = create_model("resnet18", num_classes=NUM_CLASSES, width=4, stem="small")
    shapes = _abstract_variables(model, (1, 16, 16, 3))
    one = count_flops(model, shapes, (1, 16, 16, 3))
    four = count_flops(model, shapes, (4, 16, 16, 3))
    assert one > 5e5
    np.testing.assert_allclose(four, one, rtol=0.05)


def test_unknown_names_and_bad_arguments_are_rejected():
    assert MODEL_NAMES == ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101")
    with pytest.raises(ValueError, match="resnet10, resnet18, resnet34, resnet50, resnet101"):
        create_model("vgg16", num_classes=10)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", num_classes=10, stem="large")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        create_model("resnet18", num_classes=10, dtype=jnp.float16)
    with pytest.raises(ValueError, match="shifted_one_pass, one_pass, two_pass"):
        create_model("resnet18", num_classes=10, batch_norm_variance="welford")
    model = create_model("resnet18", num_classes=10, width=4)
    with pytest.raises(ValueError, match="NHWC"):
        _abstract_variables(model, (2, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        count_flops(model, _abstract_variables(model, (1, 16, 16, 3)), (16, 16, 3))
