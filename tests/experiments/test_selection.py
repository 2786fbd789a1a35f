"""The selection rule and the arms: score by level, the top-1 constraint, ties, combining selected arms."""

import numpy as np
import pytest

from hrrl_jax.experiments.arms import Arm, ResolvedArm, resolve_arm
from hrrl_jax.experiments.selection import (
    Candidate,
    level_means,
    score_formula,
    select,
    selection_score,
    top1_threshold,
)

TARGETS = {
    "shift/blur": {"probe": 0.80, "recall_at_1": 0.5},
    "shift/noise": {"probe": 0.60, "recall_at_1": 0.5},
    "held_out": {"probe": 0.90, "recall_at_1": 0.7},
    "digits": {"probe": 0.50, "recall_at_1": 0.9},
}


def test_score_is_the_mean_over_levels_of_each_level_mean():
    names = ["shift/blur", "shift/noise", "held_out", "digits"]
    assert level_means(TARGETS, names, "probe") == {"example": pytest.approx(0.7), "concept": pytest.approx(0.7)}
    assert selection_score(TARGETS, names, "probe") == pytest.approx(0.7)
    # One concept-level target weighs as much as the two example-level ones together: (0.7 + 0.9) / 2.
    assert selection_score(TARGETS, ["shift/blur", "shift/noise", "held_out"], "probe") == pytest.approx(0.8)
    assert selection_score(TARGETS, names, "recall_at_1") == pytest.approx((0.5 + 0.8) / 2)
    assert selection_score(TARGETS, ["digits"], "probe") == pytest.approx(0.5)


def test_the_best_score_under_the_constraint_is_selected():
    threshold = top1_threshold([0.840, 0.851], tolerance=0.01)
    assert threshold == pytest.approx(0.841)
    candidates = [
        Candidate("fair", score=0.70, top1=0.86),
        Candidate("best_but_too_inaccurate", score=0.75, top1=0.8409),
        Candidate("better", score=0.72, top1=0.841),  # Exactly at the threshold: selectable.
    ]
    assert select(candidates, threshold=threshold, tie_tolerance=0.0) == "better"
    assert select(candidates[:2], threshold=threshold, tie_tolerance=0.0) == "fair"
    assert select(candidates[1:2], threshold=threshold, tie_tolerance=0.0) is None


def test_an_accuracy_equal_to_the_threshold_in_float32_is_selectable():
    # 3,919 of 4,200 correct is exactly the best ERM arm's 3,961 of 4,200 minus 1 point; both stored in float32.
    threshold = top1_threshold([float(np.float32(3961 / 4200))], tolerance=0.01)
    at_threshold = float(np.float32(3919 / 4200))
    assert at_threshold < threshold  # Float32 rounding puts the equal accuracy 5e-8 below.
    one_example_fewer = float(np.float32(3918 / 4200))
    candidates = [Candidate("equal", 0.7, at_threshold), Candidate("one_fewer", 0.8, one_example_fewer)]
    assert select(candidates, threshold=threshold, tie_tolerance=0.0) == "equal"


def test_a_tie_goes_to_the_arm_listed_first():
    candidates = [Candidate("first", 0.7000, 0.9), Candidate("second", 0.7004, 0.9), Candidate("third", 0.71, 0.9)]
    assert select(candidates[:2], threshold=0.5, tie_tolerance=0.0005) == "first"
    assert select(candidates[:2], threshold=0.5, tie_tolerance=0.0001) == "second"
    assert select(candidates, threshold=0.5, tie_tolerance=0.0005) == "third"


def test_a_combined_arm_takes_the_selected_values_in_order_and_its_own_on_top():
    selected = {
        "cl": ResolvedArm("cl_a", "cl", "cl", {"lam": 1.0, "prior": "empirical", "step_offset": 300.0}, {}),
        "el": ResolvedArm("el_b", "el", "el", {"gamma": 0.1, "example_level": "input", "step_offset": 0.0}, {}),
    }
    arm = Arm("hrrl_c", "hrrl", "hrrl", robust={"gamma": 0.5}, optimizer={"weight_decay": 1e-3}, combine=("cl", "el"))
    resolved = resolve_arm(arm, selected, earlier=[])
    assert resolved.robust == {
        "lam": 1.0,
        "prior": "empirical",
        "step_offset": 0.0,  # The later family's value.
        "gamma": 0.5,  # The arm's own.
        "example_level": "input",
    }
    assert resolved.optimizer == {"weight_decay": 1e-3} and resolved.same_as is None
    assert resolved.run_name == "hrrl_c"
    assert resolved.describe() == "lam=1 prior=empirical step_offset=0 gamma=0.5 example_level=input weight_decay=0.001"


def test_an_arm_equal_to_an_earlier_one_is_that_arm():
    selected = {"cl": ResolvedArm("cl_a", "cl", "cl", {"lam": 1.0, "floor": 0.5}, {})}
    first = resolve_arm(Arm("hrrl_1", "hrrl", "hrrl", {}, {}, ("cl",)), selected, earlier=[])
    again = resolve_arm(Arm("hrrl_2", "hrrl", "hrrl", {"floor": 0.5}, {}, ("cl",)), selected, earlier=[first])
    assert again.same_as == "hrrl_1" and again.run_name == "hrrl_1"
    other = resolve_arm(Arm("hrrl_3", "hrrl", "hrrl", {"floor": 0.2}, {}, ("cl",)), selected, earlier=[first, again])
    assert other.same_as is None
    cl_twin = resolve_arm(Arm("cl_twin", "cl", "cl", {"lam": 1.0, "floor": 0.5}, {}, ()), {}, earlier=[first])
    assert cl_twin.same_as is None  # Another method: another configuration.


def test_the_levels_and_worst_concept_score_is_the_mean_of_three_equal_terms():
    names = ["shift/blur", "shift/noise", "held_out", "digits"]
    # Example level (0.8 + 0.6) / 2 = 0.7, concept level (0.9 + 0.5) / 2 = 0.7, worst concept 0.4.
    score = selection_score(TARGETS, names, "probe", score="levels_and_worst_concept", source_worst_concept=0.4)
    assert score == pytest.approx((0.7 + 0.7 + 0.4) / 3)
    assert selection_score(TARGETS, names, "probe", score="levels", source_worst_concept=0.4) == pytest.approx(0.7)
    # Example 0.7, concept 0.9 (held_out alone), worst concept 0.2: not (0.7 + 0.9) / 2 nor 0.2 weighed by targets.
    three = ["shift/blur", "shift/noise", "held_out"]
    kwargs = dict(score="levels_and_worst_concept", source_worst_concept=0.2)
    assert selection_score(TARGETS, three, "probe", **kwargs) == pytest.approx(0.6)
    assert selection_score(TARGETS, ["digits"], "probe", **kwargs) == pytest.approx((0.5 + 0.2) / 2)
    with pytest.raises(ValueError, match="needs the source-validation worst-concept accuracy"):
        selection_score(TARGETS, names, "probe", score="levels_and_worst_concept")
    with pytest.raises(ValueError, match="selection score 'worst' is not known"):
        selection_score(TARGETS, names, "probe", score="worst")


def test_the_score_formula_states_each_rule():
    by_level = {"example": ["shift/blur"], "concept": ["held_out", "digits"]}
    assert score_formula("levels", by_level, "probe") == (
        "the mean over levels (example: shift/blur; concept: held_out, digits) of the mean validation `probe` of "
        "the level's targets"
    )
    assert score_formula("levels_and_worst_concept", by_level, "probe") == (
        "the mean of 3 equal terms, (example mean + concept mean + worst concept) / 3: each level's mean validation "
        "`probe` over its targets (example: shift/blur; concept: held_out, digits) and the arm's source-validation "
        "worst-concept accuracy"
    )


def test_an_arm_keeps_its_family_apart_from_its_method():
    selected = {"el": ResolvedArm("el_b", "el", "el", {"example_level": "input", "gamma": 0.3}, {})}
    control = Arm("control_random", "el", "control", {"input_direction": "random"}, {}, ("el",))
    resolved = resolve_arm(control, selected, earlier=[selected["el"]])
    assert (resolved.method, resolved.family, resolved.same_as) == ("el", "control", None)
    assert resolved.robust == {"example_level": "input", "gamma": 0.3, "input_direction": "random"}
    same = resolve_arm(Arm("control_same", "el", "control", {}, {}, ("el",)), selected, earlier=[selected["el"]])
    assert same.same_as == "el_b"  # The same training configuration, whatever its family.
