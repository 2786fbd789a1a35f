"""Forward FLOPs of a model from XLA's cost analysis, for model FLOPs utilisation (MFU)."""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _flops_of(cost_analysis: Any) -> float:
    """Reads ``flops`` from a cost analysis: a dict (current jax) or a list of per-module dicts (older)."""
    if isinstance(cost_analysis, Mapping):
        entries = [cost_analysis]
    elif isinstance(cost_analysis, Sequence):
        entries = list(cost_analysis)
    else:
        entries = []
    flops = [float(entry["flops"]) for entry in entries if "flops" in entry]
    if not flops:
        raise RuntimeError(
            f"XLA's cost analysis on backend {jax.default_backend()!r} reported no 'flops' "
            f"(got {cost_analysis!r}); count FLOPs on a backend that supports cost analysis (CPU does)."
        )
    return sum(flops)


def count_flops(model: nn.Module, variables: Any, input_shape: Sequence[int]) -> float:
    """Forward FLOPs per example of ``model.apply(variables, images, train=False)``.

    Compiles the inference forward pass for a float32 batch of ``input_shape`` ([B, H, W, C]) and
    divides XLA's count by B. XLA counts a multiply-add as 2 FLOPs (ResNet-50 at 224x224: about
    4.1 G multiply-adds; XLA on CPU reports 8.0e9). A training step costs about 3x the forward pass.
    ``variables`` may be concrete arrays or ``jax.ShapeDtypeStruct``s (from ``jax.eval_shape``),
    so no parameters need to be allocated.
    """
    if len(input_shape) != 4 or input_shape[0] < 1:
        raise ValueError(
            f"count_flops needs input_shape [batch, height, width, channels] with batch >= 1, got {tuple(input_shape)}."
        )
    images = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    abstract_variables = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), variables)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    # Counted by the CPU compiler on every machine: GPU cost analysis leaves out the convolutions that
    # become cuDNN calls (it reported about 1/150 of the FLOPs of ResNet-50 on an H200).
    with jax.default_device(jax.devices("cpu")[0]):
        compiled = forward.lower(abstract_variables, images).compile()
    return _flops_of(compiled.cost_analysis()) / input_shape[0]
