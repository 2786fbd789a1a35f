"""The protocol's arms: named settings of a method, in a family, resolved into the config of one training run.

An arm (`compare.arms`, keys in hrrl_jax.schema.ARM_KEYS) sets a method and some `config.robust` and
`config.optimizer` values. Its family (by default its method) is the group one selection chooses among, e.g. a
random-perturbation control of family `control` that trains as `el`. An arm with `combine = (f1, f2, ...)` starts
from the robust values of the arms selected for those families, in that order, and sets its own on top: e.g. HRRL
from the selected CL arm's concept level and the selected EL arm's example level. An arm whose resolved settings
equal an earlier arm's is that configuration: it is trained once, under the earlier name, and counted once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from hrrl_jax.experiments.compare import run_config
from hrrl_jax.schema import arm_family


@dataclasses.dataclass(frozen=True)
class Arm:
    """An arm as the config gives it: name, robust method, family, own values, families it combines."""

    name: str
    method: str
    family: str
    robust: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    combine: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ResolvedArm:
    """An arm's settings once its combined families are selected; `same_as` names an earlier, equal arm."""

    name: str
    method: str
    family: str
    robust: dict[str, Any]
    optimizer: dict[str, Any]
    combine: tuple[str, ...] = ()
    same_as: str | None = None

    @property
    def run_name(self) -> str:
        """The directory of its runs: its own name, or that of the earlier arm it equals."""
        return self.same_as or self.name

    def settings_key(self) -> str:
        """Equal for two arms exactly when they train the same configuration."""
        return json.dumps([self.method, self.robust, self.optimizer], sort_keys=True)

    def describe(self) -> str:
        """`key=value` for each value it sets, robust then optimizer (`lam=1 weight_decay=0.001`), or `(defaults)`."""
        values = {**self.robust, **self.optimizer}
        return " ".join(f"{key}={_short(value)}" for key, value in values.items()) or "(defaults)"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def arms_from_config(arms: Sequence[Mapping[str, Any]]) -> list[Arm]:
    """The `compare.arms` entries (checked by hrrl_jax.config_checks) as Arms, in their order."""
    return [
        Arm(
            name=arm["name"],
            method=arm["method"],
            family=arm_family(arm),
            robust=dict(arm.get("robust", {})),
            optimizer=dict(arm.get("optimizer", {})),
            combine=tuple(arm.get("combine", ())),
        )
        for arm in arms
    ]


def resolve_arm(arm: Arm, selected: Mapping[str, ResolvedArm], earlier: Sequence[ResolvedArm]) -> ResolvedArm:
    """`arm` with the robust values of the arms selected for its `combine` families under its own.

    Raises:
      KeyError: a combined family has no selected arm.
    """
    robust: dict[str, Any] = {}
    for family in arm.combine:
        robust.update(selected[family].robust)
    robust.update(arm.robust)
    resolved = ResolvedArm(arm.name, arm.method, arm.family, robust, dict(arm.optimizer), arm.combine)
    for other in earlier:
        if other.same_as is None and other.settings_key() == resolved.settings_key():
            return dataclasses.replace(resolved, same_as=other.name)
    return resolved


def arm_run_config(
    config: ml_collections.ConfigDict, arm: ResolvedArm, seed: int, *, test_split: str
) -> ml_collections.ConfigDict:
    """The training config of `arm` on `seed`: the shared budget, its robust and optimizer values, the split it
    is evaluated on at the end (the source validation rows in the selection phase)."""
    single = run_config(config, arm.method, seed, arm.robust)
    for key, value in arm.optimizer.items():
        single.optimizer[key] = value
    single.dataset.test_split = test_split
    return single
