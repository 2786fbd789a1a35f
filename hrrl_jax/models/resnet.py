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
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrrl_jax.models.batch_norm import BatchNorm
from hrrl_jax.schema import STEMS

# Input side from which stem="auto" picks the ImageNet stem (7x7 stride 2 + max-pool).
IMAGENET_STEM_MIN_SIDE = 128

# He initialisation with fan-out, as in the reference ResNet implementations.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _ConvBatchNorm(nn.Module):
    """Convolution (no bias) followed by BatchNorm; the building unit of every block."""

    features: int
    kernel_size: int
    strides: int = 1
    zero_init_scale: bool = False
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
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
        return BatchNorm(
            use_running_average=not train,
            variance=self.batch_norm_variance,
            momentum=0.9,
            epsilon=1e-5,
            scale_init=nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones,
            dtype=self.dtype,
            name="bn",
        )(x)


def _join_shortcut(x: jax.Array, y: jax.Array, *, unit: functools.partial, strides: int, train: bool) -> jax.Array:
    """relu(shortcut + y): the input itself, or a strided 1x1 ``projection`` of it where the shape changes.

    Called inside a block's compact ``__call__``, so the projection is a submodule of that block.
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != y.shape[-1]:
        shortcut = unit(y.shape[-1], 1, strides, name="projection")(x, train=train)
    return nn.relu(shortcut + y)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34); output channels = ``features``."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        unit = functools.partial(_ConvBatchNorm, dtype=self.dtype, batch_norm_variance=self.batch_norm_variance)
        y = nn.relu(unit(self.features, 3, self.strides, name="unit1")(x, train=train))
        y = unit(self.features, 3, zero_init_scale=True, name="unit2")(y, train=train)
        return _join_shortcut(x, y, unit=unit, strides=self.strides, train=train)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 x ``features`` channels (ResNet-50/101)."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        unit = functools.partial(_ConvBatchNorm, dtype=self.dtype, batch_norm_variance=self.batch_norm_variance)
        y = nn.relu(unit(self.features, 1, name="unit1")(x, train=train))
        y = nn.relu(unit(self.features, 3, self.strides, name="unit2")(y, train=train))
        y = unit(self.features * self.expansion, 1, zero_init_scale=True, name="unit3")(y, train=train)
        return _join_shortcut(x, y, unit=unit, strides=self.strides, train=train)


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
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int
    width: int = 64
    stem: str = "auto"
    dtype: jnp.dtype = jnp.float32
    batch_norm_variance: str = "shifted_one_pass"

    def _uses_imagenet_stem(self, image_side: int) -> bool:
        if self.stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}.")
        if self.stem == "auto":
            return image_side >= IMAGENET_STEM_MIN_SIDE
        return self.stem == "imagenet"

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Maps images [B, H, W, C] to (logits float32 [B, num_classes], features float32 [B, D]).

        ``train=True`` normalises with batch statistics and updates the running averages in
        ``batch_stats`` (apply with ``mutable=["batch_stats"]``); ``train=False`` uses the running
        averages. D = ``width * 8 * block_cls.expansion``.
        """
        if images.ndim != 4:
            raise ValueError(
                f"ResNet expects images of shape [batch, height, width, channels] (NHWC), got shape "
                f"{images.shape}; add a channel axis to grey-scale images."
            )
        x = images.astype(self.dtype)
        stem_unit = functools.partial(
            _ConvBatchNorm, self.width, dtype=self.dtype, batch_norm_variance=self.batch_norm_variance, name="stem"
        )
        if self._uses_imagenet_stem(images.shape[1]):
            x = nn.max_pool(
                nn.relu(stem_unit(7, strides=2)(x, train=train)), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))
            )
        else:
            x = nn.relu(stem_unit(3)(x, train=train))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = self.block_cls(
                    self.width * 2**stage,
                    strides=strides,
                    dtype=self.dtype,
                    batch_norm_variance=self.batch_norm_variance,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train=train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # The head runs in float32: it is a negligible share of the compute, and it keeps
        # logits == features @ kernel + bias exact for the trainer's perturbation of the features.
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(features)
        return logits, features


# Name -> (blocks per stage, block type) of the standard depths.
RESNET_ARCHITECTURES = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock),
    "resnet101": ((3, 4, 23, 3), BottleneckBlock),
}
