"""Evaluation: feature metrics (sparsity, dead units, class consistency, MI), classification
metrics for the Trainer, robustness tables and plots, feature explanations.
"""
from .metrics import (
    METRIC_SCRIPTS_DIR,
    activation_sparsity,
    class_consistency,
    classification_metrics,
    dead_features,
    extract_features,
    feature_label_mutual_information,
    load_metric_script,
    make_compute_metrics,
    monosemanticity_report,
)
from .reporting import (
    plot_robustness,
    plot_robustness_panel,
    robustness_markdown_table,
    summarize_robustness,
)
from .explain import (
    TopExamples,
    image_grid_for_feature,
    text_snippets_for_feature,
    top_activating_examples,
)

__all__ = [
    "METRIC_SCRIPTS_DIR",
    "activation_sparsity",
    "class_consistency",
    "classification_metrics",
    "dead_features",
    "extract_features",
    "feature_label_mutual_information",
    "load_metric_script",
    "make_compute_metrics",
    "monosemanticity_report",
    "plot_robustness",
    "plot_robustness_panel",
    "robustness_markdown_table",
    "summarize_robustness",
    "TopExamples",
    "image_grid_for_feature",
    "text_snippets_for_feature",
    "top_activating_examples",
]
