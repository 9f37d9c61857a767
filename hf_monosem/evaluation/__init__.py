"""Evaluation, one module per job:

- :mod:`.features`: feature metrics (sparsity, dead units, class consistency, MI);
- :mod:`.classification`: accuracy / macro-F1 (offline ``evaluate`` scripts) and the Trainer's
  ``compute_metrics``;
- :mod:`.results`: the results schema (run and result records, the mean ± std summary);
- :mod:`.reporting`: robustness tables and plots;
- :mod:`.explain`: top-activating examples as image grids or text snippets;
- :mod:`.paper`: the paper's mono-minus-poly gaps and ours beside them;

plus :func:`extract_features` (from :mod:`hf_monosem.cached.extraction`). :mod:`.metrics` is the
former single module, a deprecated alias (:mod:`hf_monosem._deprecation`).
"""

from ..cached.extraction import extract_features
from . import classification, explain, features, paper, reporting, results
from .classification import *  # noqa: F403
from .explain import *  # noqa: F403
from .features import *  # noqa: F403
from .paper import *  # noqa: F403
from .reporting import *  # noqa: F403
from .results import *  # noqa: F403

__all__ = [
    *features.__all__,
    *classification.__all__,
    *results.__all__,
    *reporting.__all__,
    *explain.__all__,
    *paper.__all__,
    "extract_features",
]
