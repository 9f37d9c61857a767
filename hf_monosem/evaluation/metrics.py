"""Deprecated import path: use :mod:`hf_monosem.evaluation` (the former single metrics module).

The code lives by job in :mod:`.features` (feature metrics), :mod:`.classification` (accuracy,
macro-F1, the Trainer's ``compute_metrics``), :mod:`.results` / :mod:`.reporting` (robustness
summaries, tables, plots) and :mod:`hf_monosem.cached.extraction` (``extract_features``).
"""

from .._deprecation import alias_module

__getattr__, __dir__, __all__ = alias_module(
    __name__,
    "hf_monosem.evaluation",
    "hf_monosem.evaluation.features",
    "hf_monosem.evaluation.classification",
    "hf_monosem.cached.extraction",
)
