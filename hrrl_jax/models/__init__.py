"""The model zoo: ``create_model`` builds a network by name; each returns (logits, deep features)."""

import flax.linen as nn
import jax.numpy as jnp

from hrrl_jax.models.flops import count_flops
from hrrl_jax.models.resnet import RESNET_ARCHITECTURES, STEMS, ResNet

MODEL_NAMES = tuple(RESNET_ARCHITECTURES)


def create_model(
    name: str, *, num_classes: int, width: int = 64, stem: str = "auto", dtype: jnp.dtype = jnp.float32
) -> nn.Module:
    """Builds the model ``name`` (one of ``MODEL_NAMES``).

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        num_classes: outputs of the linear head.
        width: channels of the first stage (64 is the standard ResNet; small values make tiny nets).
        stem: ``"small"``, ``"imagenet"`` or ``"auto"`` (ImageNet stem for inputs of side >= 128).
        dtype: compute dtype (float32 or bfloat16); parameters, logits and features stay float32.

    Returns:
        A Flax Linen module; ``apply(variables, images, train=...)`` returns (logits, features).
    """
    if name not in RESNET_ARCHITECTURES:
        raise ValueError(f"Unknown model name {name!r}; known models: {', '.join(MODEL_NAMES)}.")
    if num_classes < 1 or width < 1:
        raise ValueError(
            f"Model {name!r} needs num_classes >= 1 and width >= 1, got num_classes={num_classes}, width={width}."
        )
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r} for model {name!r}; choose one of {', '.join(STEMS)}.")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"Model compute dtype must be float32 or bfloat16, got {dtype!r}.")
    stage_sizes, block_cls = RESNET_ARCHITECTURES[name]
    return ResNet(
        stage_sizes=stage_sizes, block_cls=block_cls, num_classes=num_classes, width=width, stem=stem, dtype=dtype
    )


__all__ = ["MODEL_NAMES", "create_model", "count_flops", "ResNet"]
