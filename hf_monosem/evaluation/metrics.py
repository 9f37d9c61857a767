"""The former home of the metrics, kept as an import path: every name it had is re-exported here.

The code lives by job in :mod:`.features` (feature metrics), :mod:`.classification` (accuracy,
macro-F1, the Trainer's ``compute_metrics``), :mod:`.results` / :mod:`.reporting` (robustness
summaries, tables, plots) and :mod:`hf_monosem.cached.extraction` (``extract_features``, the
batched-inference loop).

Example:
    >>> from hf_monosem.evaluation import features
    >>> monosemanticity_report is features.monosemanticity_report
    True
"""

from importlib import import_module

from ..cached.extraction import extract_features
from .classification import (
    METRIC_SCRIPTS_DIR,
    classification_metrics,
    load_metric_script,
    make_compute_metrics,
)
from .features import (
    activation_sparsity,
    class_consistency,
    dead_features,
    feature_label_mutual_information,
    monosemanticity_report,
)
from .reporting import plot_robustness, robustness_markdown_table
from .results import summarize_robustness

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
    "robustness_markdown_table",
    "summarize_robustness",
]

# where the private helpers of the old module went, for code that reached into it
_PRIVATE_HOMES = (
    "hf_monosem.evaluation.features",
    "hf_monosem.evaluation.classification",
    "hf_monosem.cached.extraction",
)


def __getattr__(name: str):
    for home in _PRIVATE_HOMES:
        module = import_module(home)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
