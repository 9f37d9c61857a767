"""``hf-monosem report``: the paper's question (do monosemantic features buy robustness, and is it the
features or the optimisation?) on any backbone and any data set, in one command.

:mod:`~hf_monosem.report.tracks` builds a scenario-grid track from a backbone's features (the same
builder the benchmark's tracks use); :mod:`~hf_monosem.report.inputs` loads and checks the data and
the backbone before any work; :mod:`~hf_monosem.report.estimate` measures what the run will take;
:mod:`~hf_monosem.report.run` runs the grid (resumable);
:mod:`~hf_monosem.report.writing` writes ``report.md``, ``results.json`` and the plots;
:mod:`~hf_monosem.report.publish` prepares and pushes the report as a dataset repository;
:mod:`~hf_monosem.report.model_card` adds its verdicts to a model repository's card.
"""

from __future__ import annotations

from . import arguments, estimate, inputs, model_card, publish, run, tracks, writing
from .arguments import *  # noqa: F403
from .estimate import *  # noqa: F403
from .inputs import *  # noqa: F403
from .model_card import *  # noqa: F403
from .publish import *  # noqa: F403
from .run import *  # noqa: F403
from .tracks import *  # noqa: F403
from .writing import *  # noqa: F403

__all__ = [
    *tracks.__all__,
    *arguments.__all__,
    *inputs.__all__,
    *estimate.__all__,
    *run.__all__,
    *writing.__all__,
    *publish.__all__,
    *model_card.__all__,
]
