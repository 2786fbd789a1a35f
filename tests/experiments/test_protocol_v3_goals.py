"""scripts/protocol_v3_goals.py judges each pre-registered goal from the figures, met or not."""

import importlib.util
import os

from tests.train.helpers import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "protocol_v3_goals.py")
spec = importlib.util.spec_from_file_location("protocol_v3_goals", SCRIPT)
goals = importlib.util.module_from_spec(spec)
spec.loader.exec_module(goals)

SHIFTS = ("shift/noise", "shift/blur")


def record(method, seed, *, top1, worst, noise, blur, digits):
    """One confirmation record with the measures the goals read; every other accuracy 0.5."""

    def target(probe):
        return {
            "probe": probe,
            "probe_per_concept": {"a": probe},
            "probe_worst_concept": probe,
            "recall_at_1": 0.5,
            "recall_at_1_centred": 0.5,
            "few_shot": {},
        }

    return {
        "method": method,
        "seed": seed,
        "source": {
            "test_accuracy": top1,
            "per_concept_accuracy": {"a": worst, "b": 0.99},
            "worst_concept_accuracy": worst,
            "best_concept_accuracy": 0.99,
        },
        "targets": {"shift/noise": target(noise), "shift/blur": target(blur), "digits": target(digits)},
    }


def confirmation(hrrl_worst_gain, control_noise):
    """ERM*, EL* (a stand-in), CL*, control* and HRRL* on 5 seeds; the seed adds a small wobble to every arm."""
    arms = {
        "erm*": dict(top1=0.90, worst=0.80, noise=0.80, blur=0.80, digits=0.80),
        "el* (stand-in)": dict(top1=0.89, worst=0.78, noise=0.84, blur=0.80, digits=0.85),
        "cl*": dict(top1=0.90, worst=0.82, noise=0.80, blur=0.80, digits=0.80),
        "control*": dict(top1=0.90, worst=0.80, noise=control_noise, blur=0.80, digits=0.80),
        "hrrl*": dict(top1=0.90, worst=0.80 + hrrl_worst_gain, noise=0.84, blur=0.80, digits=0.85),
    }
    records = []
    for seed in range(6, 11):
        wobble = 0.001 * (seed % 3)
        for method, values in arms.items():
            records.append(record(method, seed, **{name: value + wobble for name, value in values.items()}))
    families = {"hrrl": {"selected": "hrrl_mix", "stand_in": None}}
    return {"families": families, "records": records}


def verdicts(data):
    return [met for _, met, _ in goals.judge(data)]


def test_goals_met_when_hrrl_has_both_levels_gains_and_el_beats_its_control():
    assert verdicts(confirmation(hrrl_worst_gain=0.02, control_noise=0.80)) == [True, True, True, True]


def test_goals_fail_on_a_small_worst_concept_gain_and_a_control_as_good_as_el():
    results = goals.judge(confirmation(hrrl_worst_gain=0.005, control_noise=0.84))
    assert [met for _, met, _ in results] == [True, False, True, False]
    assert "hrrl* − erm* source worst concept: +0.50" in results[1][2]
    assert "shift/noise probe: +0.00 [+0.00, +0.00]" in results[3][2]


def test_an_hrrl_family_without_a_selection_fails_goal_one():
    data = confirmation(hrrl_worst_gain=0.02, control_noise=0.80)
    data["families"]["hrrl"] = {"selected": None, "stand_in": "hrrl_mix"}
    assert verdicts(data)[0] is False
