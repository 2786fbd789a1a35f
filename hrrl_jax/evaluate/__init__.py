"""Evaluation of frozen features and comparisons: linear probe, kNN retrieval, few-shot probes, per-concept read-outs,
markdown reports, figures."""

from hrrl_jax.evaluate.concepts import concept_groups, per_concept_accuracy, worst_concept
from hrrl_jax.evaluate.few_shot import (
    few_shot_accuracy,
    nearest_class_mean_predictions,
    support_draws,
    within_concept_few_shot,
)
from hrrl_jax.evaluate.plots import (
    plot_concept_distribution,
    plot_few_shot_curves,
    plot_per_concept_accuracy,
    plot_transfer_accuracy,
)
from hrrl_jax.evaluate.probe import (
    DEFAULT_L2_GRID,
    LinearProbe,
    evaluate_linear_probe,
    fit_linear_probe,
    fit_logistic_regression,
    probe_accuracy,
    probe_predictions,
)
from hrrl_jax.evaluate.protocol_report import render_confirmation_report, render_selection_log
from hrrl_jax.evaluate.report import aggregate, paired_difference, render_report, summarise, write_report
from hrrl_jax.evaluate.retrieval import knn_accuracy, nearest_neighbour_labels, recall_at_k

__all__ = [
    "DEFAULT_L2_GRID",
    "LinearProbe",
    "aggregate",
    "concept_groups",
    "evaluate_linear_probe",
    "few_shot_accuracy",
    "fit_linear_probe",
    "fit_logistic_regression",
    "knn_accuracy",
    "nearest_class_mean_predictions",
    "nearest_neighbour_labels",
    "paired_difference",
    "per_concept_accuracy",
    "plot_concept_distribution",
    "plot_few_shot_curves",
    "plot_per_concept_accuracy",
    "plot_transfer_accuracy",
    "probe_accuracy",
    "probe_predictions",
    "recall_at_k",
    "render_confirmation_report",
    "render_report",
    "render_selection_log",
    "summarise",
    "support_draws",
    "within_concept_few_shot",
    "worst_concept",
    "write_report",
]
