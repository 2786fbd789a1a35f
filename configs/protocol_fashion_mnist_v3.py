"""Protocol v3 on Fashion-MNIST at the CPU scale: can the two levels add up? Selection on seed 0, confirmation on 6-10.

    python launch.py --config configs/protocol_fashion_mnist_v3.py --workdir workdirs/protocol_fashion_mnist_v3

The protocol of docs/results/fashion_mnist_v3/protocol.md (written before any run), run by
hrrl_jax/experiments/protocol.py. Data, model, budget, targets and measurements are protocol v2's
(configs/protocol_fashion_mnist.py), so v2's arms are comparable. New: the selection score sees the source
worst concept (`compare.selection_score="levels_and_worst_concept"`), the random-perturbation controls (families
`control` and `control_hrrl`), and HRRL arms built from the example level's new forms (clean + robust mixture,
auxiliary BatchNorm, the clean-pass step on a fraction of the batch, coupling to the concept weights, γ warm-up).
Confirmation seeds are fresh (6-10). Output: WORKDIR/selection.{json,md}, confirmation.{json,md} and PNG plots;
finished runs are reused.
"""

import ml_collections

from configs import protocol_fashion_mnist as v2
from configs.protocol_fashion_mnist import EMPIRICAL, arm

CONFIRMATION_SEEDS = (6, 7, 8, 9, 10)
# The cheap input level: one step from the clean pass's input gradient, half the batch perturbed, clean and robust
# losses mixed half and half (docs/method.md §3).
CLEAN_PASS = {"input_gradient": "clean_pass", "input_beta": 0.5, "input_fraction": 0.5}
AUXILIARY = {"input_batch_norm": "auxiliary"}


def protocol_v3_arms(total_steps: int) -> tuple[dict, ...]:
    """The arms of protocol v3 for a run of `total_steps` (warm start 3/4 of the run, γ deferral and ramp 1/4 each)."""
    warm_start = {"step_offset": float(round(0.75 * total_steps))}
    quarter = round(0.25 * total_steps)
    ramp = {"input_defer_steps": quarter, "input_ramp_steps": quarter}
    return (
        arm("erm_wd5e-4", "erm", optimizer={"weight_decay": 5e-4}),
        arm("erm_wd1e-3", "erm", optimizer={"weight_decay": 1e-3}),
        arm("el_input_gamma0.3", "el", example_level="input", gamma=0.3),
        arm("el_input_gamma1", "el", example_level="input", gamma=1.0),
        arm("el_input_gamma3", "el", example_level="input", gamma=3.0),
        arm("el_clean_pass_gamma0.3", "el", example_level="input", gamma=0.3, **CLEAN_PASS),
        arm("el_clean_pass_gamma0.3_aux", "el", example_level="input", gamma=0.3, **CLEAN_PASS, **AUXILIARY),
        arm("cl_l2_lam0.3", "cl", divergence="l2", lam=0.3, **EMPIRICAL, **warm_start),
        arm("cl_l2_lam1", "cl", divergence="l2", lam=1.0, **EMPIRICAL, **warm_start),
        arm("cl_l2_lam3", "cl", divergence="l2", lam=3.0, **EMPIRICAL, **warm_start),
        arm("cl_kl_lam1", "cl", divergence="kl", lam=1.0, **EMPIRICAL, **warm_start),
        arm("cl_l2_lam0.3_floor0.5", "cl", divergence="l2", lam=0.3, floor=0.5, **EMPIRICAL, **warm_start),
        arm("group_dro_eta0.01", "group_dro", group_dro_eta=0.01, **EMPIRICAL),
        arm("group_dro_eta0.1", "group_dro", group_dro_eta=0.1, **EMPIRICAL),
        # The control: EL*'s settings, each image moved as far as EL* would move it, in a random direction.
        {**arm("control_random", "el", combine=("el",), input_direction="random"), "family": "control"},
        # HRRL: the selected CL arm's concept level with the selected EL arm's example level (v2's rule), then the
        # example level's new forms on top of it. An arm equal to an earlier one is trained once.
        arm("hrrl_selected", "hrrl", combine=("cl", "el")),
        arm(
            "hrrl_mix0.5",
            "hrrl",
            combine=("cl", "el"),
            input_gradient="ascent",
            input_beta=0.5,
            input_fraction=1.0,
            input_batch_norm="main",
        ),
        arm(
            "hrrl_mix0.5_aux",
            "hrrl",
            combine=("cl", "el"),
            input_gradient="ascent",
            input_beta=0.5,
            input_fraction=1.0,
            **AUXILIARY,
        ),
        arm(
            "hrrl_mix0.5_aux_craft_eval",
            "hrrl",
            combine=("cl", "el"),
            input_gradient="ascent",
            input_beta=0.5,
            input_fraction=1.0,
            input_craft_batch_norm="eval",
            **AUXILIARY,
        ),
        arm("hrrl_clean_pass", "hrrl", combine=("cl", "el"), **CLEAN_PASS, input_batch_norm="main"),
        arm("hrrl_clean_pass_aux", "hrrl", combine=("cl", "el"), **CLEAN_PASS, **AUXILIARY),
        arm(
            "hrrl_clean_pass_aux_f0.25",
            "hrrl",
            combine=("cl", "el"),
            **{**CLEAN_PASS, "input_fraction": 0.25},
            **AUXILIARY,
        ),
        arm(
            "hrrl_clean_pass_aux_coupled",
            "hrrl",
            combine=("cl", "el"),
            **CLEAN_PASS,
            **AUXILIARY,
            input_coupling="weights",
        ),
        arm("hrrl_clean_pass_aux_ramp", "hrrl", combine=("cl", "el"), **CLEAN_PASS, **AUXILIARY, **ramp),
        arm(
            "hrrl_clean_pass_aux_floor0.5",
            "hrrl",
            combine=("cl", "el"),
            **CLEAN_PASS,
            **AUXILIARY,
            floor=0.5,
        ),
        # The control of the selected HRRL arm: its settings, random directions of its per-example norms.
        {**arm("control_hrrl_random", "hrrl", combine=("hrrl",), input_direction="random"), "family": "control_hrrl"},
    )


def get_config() -> ml_collections.ConfigDict:
    config = v2.get_config()
    config.compare.arms = protocol_v3_arms(config.total_steps)
    config.compare.selection_score = "levels_and_worst_concept"
    config.compare.confirmation_seeds = CONFIRMATION_SEEDS
    # The EL control is confirmed whether or not its family's rule selects it (the verdict needs EL* − control;
    # the HRRL control is confirmed when its family's rule selects it, else as protocol.md says).
    # Amendment 2 (protocol.md, during the confirmation, before any of its figures was read): the cheap HRRL form,
    # selectable and 0.09 points of score below HRRL*, at 1.39 x ERM's step where HRRL* costs 3.0 x.
    config.compare.post_hoc_arms = ("control_random", "hrrl_clean_pass")
    # Amendment 1 (protocol.md, made after the first 14 arms' validation figures, before any HRRL run and any test
    # split): a family without a selectable arm is stood in for by its arm of the highest score, as the protocol
    # already said for HRRL; no EL arm met the constraint, so the HRRL arms and the control build on EL's stand-in.
    config.compare.stand_in_unselectable = True
    return config
