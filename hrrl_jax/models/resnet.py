"""ResNet family (He et al. 2016) in Flax Linen that returns logits and the deep features.

The network is a feature extractor g followed by a linear head: for images x it returns
``logits = head(z)`` and ``z = g(x)``, the global-average-pooled input of the last linear layer
(the "deep features" on which the example-level Wasserstein cost of the HRRL objective is measured).

Layout is NHWC. Parameters are float32; ``dtype`` sets the compute dtype of the convolutions
(float32 or bfloat16). BatchNorm statistics are reduced in float32 and kept in the ``batch_stats``
collection; ``batch_norm_variance`` picks how the batch variance is computed (``hrrl_jax.models.batch_norm``
explains the three forms and their numerics). The features and the head run in float32, so logits and features
always come out float32.

Conventions follow the torchvision ResNet so that parameter counts match the published figures:
convolutions without bias before every BatchNorm, stride on the 3x3 convolution of a bottleneck
block ("ResNet v1.5"), 1x1 projection shortcuts where the shape changes, symmetric padding.
The scale of the last BatchNorm of each residual block starts at zero (Goyal et al. 2017,
"Accurate, Large Minibatch SGD"), so every block starts as the identity and deep nets train stably
with large learning rates.

Auxiliary BatchNorm (AdvProp, Xie et al. 2020, arXiv 1911.09665): with ``auxiliary_batch_norm=True`` every
BatchNorm ``bn`` of the network (stem, blocks, projections) has a sibling ``bn_aux`` with its own scale, bias
and running statistics, initialised like ``bn``; the convolutions and the head are shared. The perturbed
pass of the ``input`` example level runs with ``batch_norm="auxiliary"``, so the statistics of perturbed
images never mix into those of clean ones. The main set keeps the names of a model without the option and
is what evaluation, features and a checkpoint's ``batch_stats`` mean; checkpoints of such a model carry the
extra ``bn_aux`` entries in ``params`` and ``batch_stats``.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrrl_jax.models.batch_norm import BatchNorm
from hrrl_jax.schema import INPUT_BATCH_NORMS, STEMS

# Input side from which stem="auto" picks the ImageNet stem (7x7 stride 2 + max-pool).
IMAGENET_STEM_MIN_SIDE = 128

# He initialisation with fan-out, as in the reference ResNet implementations.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_batch_norm(batch_norm: str, auxiliary_batch_norm: bool) -> None:
    """Raises a one-line ValueError unless ``batch_norm`` names a BatchNorm set the model has."""
    if batch_norm not in INPUT_BATCH_NORMS:
        raise ValueError(f"Unknown batch_norm {batch_norm!r}; choose one of {', '.join(INPUT_BATCH_NORMS)}.")
    if batch_norm == "auxiliary" and not auxiliary_batch_norm:
        raise ValueError(
            "batch_norm='auxiliary' needs the auxiliary BatchNorm, which this model lacks; build the model with "
            "auxiliary_batch_norm=True (config.robust.input_batch_norm='auxiliary')."
        )


class _ConvBatchNorm(nn.Module):
    """Convolution (no bias) followed by BatchNorm; the building unit of every block.

    With ``auxiliary_batch_norm`` the convolution is followed by one of two BatchNorms, ``bn`` or its
    sibling ``bn_aux``, as ``batch_norm`` ("main" or "auxiliary") selects; initialisation creates both.
    """

    features: int
    kernel_size: int
    strides: int = 1
    zero_init_scale: bool = False
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"
    auxiliary_batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, batch_norm: str = "main") -> jax.Array:
        _check_batch_norm(batch_norm, self.auxiliary_batch_norm)
        pad = self.kernel_size // 2
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.strides,
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=conv_kernel_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv",
        )(x)
        batch_norm_of = functools.partial(
            BatchNorm,
            use_running_average=not train,
            variance=self.batch_norm_variance,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones,
            dtype=self.dtype,
        )
        main = batch_norm_of(name="bn")
        if not self.auxiliary_batch_norm:
            return main(x)
        auxiliary = batch_norm_of(name="bn_aux")
        selected, other = (auxiliary, main) if batch_norm == "auxiliary" else (main, auxiliary)
        if self.is_initializing():
            other(x)  # A submodule that is never called has no variables: init creates both sets.
        return selected(x)


def _conv_batch_norm_units(module: nn.Module) -> functools.partial:
    """`_ConvBatchNorm` with the compute dtype, BatchNorm variance and auxiliary-BatchNorm option of `module` (a
    block or the network), so that every unit of a network is built alike."""
    return functools.partial(
        _ConvBatchNorm,
        dtype=module.dtype,
        batch_norm_variance=module.batch_norm_variance,
        auxiliary_batch_norm=module.auxiliary_batch_norm,
    )


def _join_shortcut(
    x: jax.Array, y: jax.Array, *, unit: functools.partial, strides: int, train: bool, batch_norm: str
) -> jax.Array:
    """relu(shortcut + y): the input itself, or a strided 1x1 ``projection`` of it where the shape changes.

    Called inside a block's compact ``__call__``, so the projection is a submodule of that block.
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != y.shape[-1]:
        shortcut = unit(y.shape[-1], 1, strides, name="projection")(x, train=train, batch_norm=batch_norm)
    return nn.relu(shortcut + y)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34); output channels = ``features``."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"
    auxiliary_batch_norm: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, batch_norm: str = "main") -> jax.Array:
        unit = _conv_batch_norm_units(self)
        y = nn.relu(unit(self.features, 3, self.strides, name="unit1")(x, train=train, batch_norm=batch_norm))
        y = unit(self.features, 3, zero_init_scale=True, name="unit2")(y, train=train, batch_norm=batch_norm)
        return _join_shortcut(x, y, unit=unit, strides=self.strides, train=train, batch_norm=batch_norm)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 x ``features`` channels (ResNet-50/101)."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"
    auxiliary_batch_norm: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, batch_norm: str = "main") -> jax.Array:
        unit = _conv_batch_norm_units(self)
        y = nn.relu(unit(self.features, 1, name="unit1")(x, train=train, batch_norm=batch_norm))
        y = nn.relu(unit(self.features, 3, self.strides, name="unit2")(y, train=train, batch_norm=batch_norm))
        y = unit(self.features * self.expansion, 1, zero_init_scale=True, name="unit3")(
            y, train=train, batch_norm=batch_norm
        )
        return _join_shortcut(x, y, unit=unit, strides=self.strides, train=train, batch_norm=batch_norm)


class ResNet(nn.Module):
    """A ResNet: stem, four stages of residual blocks, global average pooling, linear ``head``.

    Attributes:
        stage_sizes: number of blocks in each stage; stage s has ``width * 2**s`` base channels
            and, after the first, halves the spatial side.
        block_cls: ``BasicBlock`` or ``BottleneckBlock``.
        num_classes: outputs of the head.
        width: channels of the stem and the first stage (64 for the standard ResNet).
        stem: ``"small"`` (3x3 stride-1 conv, no pooling: 28x28 or 32x32 inputs), ``"imagenet"``
            (7x7 stride-2 conv + 3x3 stride-2 max-pool) or ``"auto"`` (ImageNet stem when the input
            side is at least 128).
        dtype: compute dtype of the convolutions (float32 or bfloat16); parameters stay float32.
        batch_norm_variance: how BatchNorm computes the batch variance, one of
            ``hrrl_jax.models.batch_norm.BATCH_NORM_VARIANCES``.
        auxiliary_batch_norm: give every BatchNorm ``bn`` a sibling ``bn_aux`` (own scale, bias and running
            statistics; convolutions and head shared) for the perturbed pass of the ``input`` example level
            (AdvProp); ``__call__``'s ``batch_norm`` picks the set. False: exactly the network without the option.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    width: int = 64
    stem: str = "auto"
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"
    auxiliary_batch_norm: bool = False

    def _uses_imagenet_stem(self, image_side: int) -> bool:
        if self.stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}.")
        if self.stem == "auto":
            return image_side >= IMAGENET_STEM_MIN_SIDE
        return self.stem == "imagenet"

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool, batch_norm: str = "main") -> tuple[jax.Array, jax.Array]:
        """Maps images [B, H, W, C] to (logits float32 [B, num_classes], features float32 [B, D]).

        ``train=True`` normalises with batch statistics and updates the running averages in
        ``batch_stats`` (apply with ``mutable=["batch_stats"]``); ``train=False`` uses the running
        averages. D = ``width * 8 * block_cls.expansion``.

        ``batch_norm`` (one of ``INPUT_BATCH_NORMS``) picks the BatchNorm set: ``"main"`` (the default; what
        evaluation and features always use) or ``"auxiliary"`` (the ``bn_aux`` set of a model built with
        ``auxiliary_batch_norm=True``, for the perturbed pass). A pass uses, and in train mode updates, only the
        statistics of its set, and its gradient reaches only that set's scales and biases besides the shared
        convolutions and head.
        """
        if images.ndim != 4:
            raise ValueError(
                f"ResNet expects images of shape [batch, height, width, channels] (NHWC), got shape "
                f"{images.shape}; add a channel axis to grey-scale images."
            )
        x = images.astype(self.dtype)
        stem_unit = functools.partial(_conv_batch_norm_units(self), self.width, name="stem")
        if self._uses_imagenet_stem(images.shape[1]):
            x = nn.max_pool(
                nn.relu(stem_unit(7, strides=2)(x, train=train, batch_norm=batch_norm)),
                (3, 3),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
            )
        else:
            x = nn.relu(stem_unit(3)(x, train=train, batch_norm=batch_norm))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = self.block_cls(
                    self.width * 2**stage,
                    strides=strides,
                    dtype=self.dtype,
                    batch_norm_variance=self.batch_norm_variance,
                    auxiliary_batch_norm=self.auxiliary_batch_norm,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train=train, batch_norm=batch_norm)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # The head runs in float32: it is a negligible share of the compute, and it keeps
        # logits == features @ kernel + bias exact for the trainer's perturbation of the features.
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(features)
        return logits, features


# Name -> (blocks per stage, block type) of the standard depths.
RESNET_ARCHITECTURES = {
    "resnet10": ((1, 1, 1, 1), BasicBlock),
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock),
    "resnet101": ((3, 4, 23, 3), BottleneckBlock),
}
