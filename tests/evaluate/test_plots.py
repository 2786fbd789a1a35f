"""Tests of the figures: each writes a PNG of sane size from synthetic results; bad input is refused."""

import numpy as np
import pytest
from matplotlib.image import imread

from hrrl_jax.evaluate import plots

CONCEPTS = ["tops", "trousers & dresses", "footwear", "bags"]
TARGETS = ["fashion_mnist_shift/lowres4", "fashion_mnist_shift/blur", "fashion_mnist_heldout"]


def _synthetic_records():
    rng = np.random.default_rng(0)
    means = {"erm": [0.86, 0.96, 0.97, 0.99], "cl": [0.87, 0.95, 0.96, 0.97], "group_dro": [0.88, 0.9, 0.92, 0.9]}
    records = []
    for method, concept_means in means.items():
        for seed in range(3):
            per_concept = {c: float(m + 0.005 * rng.normal()) for c, m in zip(CONCEPTS, concept_means)}
            targets = {t: {"probe": float(0.6 + 0.1 * i + 0.01 * rng.normal())} for i, t in enumerate(TARGETS)}
            targets["fashion_mnist_heldout"]["recall_at_1"] = float(0.5 + 0.02 * rng.normal())
            records.append(
                {
                    "method": method,
                    "seed": seed,
                    "source": {
                        "test_accuracy": float(np.mean(list(per_concept.values()))),
                        "per_concept_accuracy": per_concept,
                    },
                    "targets": targets,
                }
            )
    return records


def _assert_sane_png(path, min_width=500, max_width=3000):
    image = imread(path)
    height, width = image.shape[:2]
    assert min_width <= width <= max_width and 300 <= height <= 1500
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_per_concept_accuracy_png(tmp_path):
    path = plots.plot_per_concept_accuracy(
        _synthetic_records(), tmp_path / "figures" / "concepts.png", sort_by_method="erm"
    )
    _assert_sane_png(path)


def test_transfer_accuracy_png_has_a_recall_panel(tmp_path):
    records = _synthetic_records()
    with_recall = plots.plot_transfer_accuracy(records, tmp_path / "with_recall.png")
    for record in records:
        del record["targets"]["fashion_mnist_heldout"]["recall_at_1"]
    probe_only = plots.plot_transfer_accuracy(records, tmp_path / "probe_only.png")
    _assert_sane_png(with_recall)
    _assert_sane_png(probe_only)
    assert imread(with_recall).shape[1] > imread(probe_only).shape[1]  # the extra Recall@1 panel


def test_concept_distribution_png(tmp_path):
    steps = np.arange(0, 1000, 50)
    logits = np.outer(steps / 500, [1.0, 0.3, 0.1, -0.5])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    histories = {"cl": list(zip(steps, p)), "hrrl": list(zip(steps, p[:, ::-1]))}
    path = plots.plot_concept_distribution(histories, tmp_path / "p.png", concept_names=CONCEPTS)
    _assert_sane_png(path)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="one entry per concept \\(4\\).*shape \\(2, 3\\)"):
        plots.plot_concept_distribution(
            {"cl": [(0, [0.2, 0.3, 0.5]), (1, [0.2, 0.3, 0.5])]}, tmp_path / "p.png", concept_names=CONCEPTS
        )
    with pytest.raises(ValueError, match="sort_by_method='hrrl' has no records"):
        plots.plot_per_concept_accuracy(_synthetic_records(), tmp_path / "c.png", sort_by_method="hrrl")
    assert not (tmp_path / "c.png").exists()


def test_few_shot_curves_png_has_one_panel_per_task(tmp_path):
    def summary(mean, std):
        return {"mean": mean, "std": std, "n": 3, "by_seed": {}}

    one_task = {
        "held_out": {
            "erm*": [(k, summary(0.5 + 0.1 * i, 0.02)) for i, k in enumerate((1, 5, 10, 20))],
            "hrrl*": [(k, summary(0.55 + 0.1 * i, float("nan"))) for i, k in enumerate((1, 5, 10, 20))],
        }
    }
    two_tasks = {**one_task, "within-concept worst": {"erm*": [(5, summary(0.6, 0.05)), (20, summary(0.7, 0.04))]}}
    narrow = plots.plot_few_shot_curves(one_task, tmp_path / "one.png")
    wide = plots.plot_few_shot_curves(two_tasks, tmp_path / "two.png")
    _assert_sane_png(narrow)
    _assert_sane_png(wide)
    assert imread(wide).shape[1] > imread(narrow).shape[1]
    with pytest.raises(ValueError, match="curves is empty"):
        plots.plot_few_shot_curves({}, tmp_path / "none.png")
