"""The model zoo: ``create_model`` builds a network by name; each returns (logits, deep features).

A model built with ``auxiliary_batch_norm=True`` (``config.robust.input_batch_norm='auxiliary'``) has a second
BatchNorm set ``bn_aux`` for the perturbed pass of the ``input`` example level (AdvProp);
``hrrl_jax.models.resnet`` explains it.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from hrrl_jax.models.flops import count_flops
from hrrl_jax.models.resnet import RESNET_ARCHITECTURES, ResNet
from hrrl_jax.schema import BATCH_NORM_VARIANCES, INPUT_BATCH_NORMS, MODEL_NAMES, PRECISION_NAMES, STEMS

PRECISIONS = {name: jnp.dtype(name) for name in PRECISION_NAMES}  # config.precision -> compute dtype.


def create_model(
    name: str,
    *,
    num_classes: int,
    width: int = 64,
    stem: str = "auto",
    dtype: jnp.dtype = jnp.float32,
    batch_norm_variance: str = "shifted_one_pass",
    auxiliary_batch_norm: bool = False,
) -> nn.Module:
    """Builds the model ``name`` (one of ``MODEL_NAMES``).

    Args:
        name: ``resnet10``, ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        num_classes: outputs of the linear head.
        width: channels of the first stage (64 is the standard ResNet; small values make tiny nets).
        stem: ``"small"``, ``"imagenet"`` or ``"auto"`` (ImageNet stem for inputs of side >= 128).
        dtype: compute dtype (float32 or bfloat16); parameters, logits and features stay float32.
        batch_norm_variance: how BatchNorm computes the batch variance, one of ``BATCH_NORM_VARIANCES``
            (``hrrl_jax.models.batch_norm`` explains them).
        auxiliary_batch_norm: add the auxiliary BatchNorm set (AdvProp): every BatchNorm ``bn`` gets a sibling
            ``bn_aux`` with its own scale, bias and running statistics, for the perturbed pass of the ``input``
            example level; convolutions and head are shared. Evaluation and features always use the main set,
            and checkpoints of such a model carry the extra ``bn_aux`` entries. False builds exactly the model
            without the option.

    Returns:
        A Flax Linen module; ``apply(variables, images, train=..., batch_norm="main")`` returns (logits, features);
        ``batch_norm="auxiliary"`` runs the pass through the auxiliary set.
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
    if batch_norm_variance not in BATCH_NORM_VARIANCES:
        raise ValueError(
            f"Unknown batch_norm_variance {batch_norm_variance!r}; choose one of {', '.join(BATCH_NORM_VARIANCES)}."
        )
    if not isinstance(auxiliary_batch_norm, bool):
        raise ValueError(
            f"auxiliary_batch_norm must be True or False, got {auxiliary_batch_norm!r}; "
            "pass config.robust.input_batch_norm == 'auxiliary'."
        )
    stage_sizes, block_cls = RESNET_ARCHITECTURES[name]
    return ResNet(
        stage_sizes=stage_sizes,
        block_cls=block_cls,
        num_classes=num_classes,
        width=width,
        stem=stem,
        dtype=dtype,
        batch_norm_variance=batch_norm_variance,
        auxiliary_batch_norm=auxiliary_batch_norm,
    )


def configured_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The network `config.model` and `config.precision` describe, with `num_classes` outputs.

    `config.robust.input_batch_norm == 'auxiliary'` adds the auxiliary BatchNorm set; configs written before
    that key existed build the model without it.
    """
    return create_model(
        config.model.name,
        num_classes=num_classes,
        width=config.model.width,
        stem=config.model.stem,
        dtype=PRECISIONS[config.precision],
        batch_norm_variance=config.model.batch_norm_variance,
        auxiliary_batch_norm=config.robust.get("input_batch_norm", "main") == "auxiliary",
    )


__all__ = [
    "BATCH_NORM_VARIANCES",
    "INPUT_BATCH_NORMS",
    "MODEL_NAMES",
    "PRECISIONS",
    "ResNet",
    "configured_model",
    "count_flops",
    "create_model",
]
