"""The colored-digits example on a small budget: Group DRO through the library raises worst-group test accuracy
over ERM (the colour is spuriously correlated with the label in training and reversed at test)."""

import numpy as np

from examples.colored_digits import train as colored_digits


def test_group_dro_raises_worst_group_accuracy_over_erm():
    worst = {"erm": [], "group_dro": []}
    for seed in range(3):
        problem = colored_digits.make_problem(seed)
        assert problem.group_sizes.min() < 0.1 * problem.group_sizes.max()  # two rare groups in training
        for method in worst:
            params = colored_digits.train(problem, method, seed, steps=600)
            worst[method].append(colored_digits.group_accuracies(params, problem.test).min())
    erm, group_dro = np.mean(worst["erm"]), np.mean(worst["group_dro"])
    assert group_dro > erm + 0.1, worst
