"""Evaluation of frozen features and comparisons: linear probe, kNN retrieval, markdown report, figures."""

from hrrl_jax.evaluate.plots import plot_concept_distribution, plot_per_concept_accuracy, plot_transfer_accuracy
from hrrl_jax.evaluate.probe import (
    DEFAULT_L2_GRID,
    LinearProbe,
    evaluate_linear_probe,
    fit_linear_probe,
    fit_logistic_regression,
    probe_accuracy,
    probe_predictions,
)
from hrrl_jax.evaluate.report import aggregate, paired_difference, render_report, summarise, write_report
from hrrl_jax.evaluate.retrieval import knn_accuracy, nearest_neighbour_labels, recall_at_k

__all__ = [
    "DEFAULT_L2_GRID",
    "LinearProbe",
    "aggregate",
    "evaluate_linear_probe",
    "fit_linear_probe",
    "fit_logistic_regression",
    "knn_accuracy",
    "nearest_neighbour_labels",
    "paired_difference",
    "plot_concept_distribution",
    "plot_per_concept_accuracy",
    "plot_transfer_accuracy",
    "probe_accuracy",
    "probe_predictions",
    "recall_at_k",
    "render_report",
    "summarise",
    "write_report",
]
