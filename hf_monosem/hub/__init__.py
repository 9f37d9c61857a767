"""Model cards and Hub publishing for hf_monosem checkpoints, one module per job:

* :mod:`.cards`: :func:`make_model_card` (YAML metadata with a ``model-index``, usage snippet,
  recipe, poly-vs-mono :func:`results_table`) and its template :data:`MODEL_CARD_TEMPLATE`;
* :mod:`.remote_code`: :func:`enable_remote_code`, checkpoints that load without hf_monosem;
* :mod:`.publishing`: :func:`save_for_hub` (the folder that is uploaded),
  :func:`push_to_hub_with_card` (that folder, uploaded in one commit), :func:`feature_layer_repo_ids`
  (one repository per feature layer of a run) and :func:`save_scenario_for_hub` /
  :func:`push_scenario_to_hub` (a noisy-label draw as a dataset repository with its card).

The Trainer's own ``push_to_hub`` / ``create_model_card``
(:class:`~hf_monosem.MonoSemanticTrainer`) write the card of :func:`make_model_card` too.

Results follow the package's one schema, :mod:`hf_monosem.evaluation.results`; its
:func:`load_results`, :data:`RESULT_FIELDS` and :data:`POLY_METHODS` are re-exported here.

Example:
    >>> from hf_monosem import hub
    >>> hub.load_results([{"dataset": "tweets", "scenario": "clean", "method": "linear",
    ...                    "metric": "accuracy", "value": 0.8}])[0]["split"]
    'test'
"""

from ..evaluation.results import POLY_METHODS, RESULT_FIELDS, load_results  # noqa: F401 (re-exported)
from . import cards, publishing, remote_code
from .cards import *  # noqa: F403
from .publishing import *  # noqa: F403
from .remote_code import *  # noqa: F403

__all__ = sorted(
    [
        *cards.__all__,
        *remote_code.__all__,
        *publishing.__all__,
        "POLY_METHODS",
        "RESULT_FIELDS",
        "load_results",
    ]
)
