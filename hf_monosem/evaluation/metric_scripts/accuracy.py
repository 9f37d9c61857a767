"""Accuracy as an offline ``evaluate`` metric script (loaded by path, no Hub access).

``evaluate.load("accuracy")`` needs the Hub; this script ships inside ``hf_monosem`` so
``evaluate.load(<path to this file>)`` works offline. Computed with scikit-learn.

Example (``hf_monosem.evaluation.load_metric_script("accuracy")`` does the same, cached)::

    import evaluate
    from hf_monosem.evaluation import METRIC_SCRIPTS_DIR
    acc = evaluate.load(str(METRIC_SCRIPTS_DIR / "accuracy.py"), keep_in_memory=True)
    acc.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666...}
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Accuracy: the fraction of predictions equal to the references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return the fraction (True, default) or the count of correct predictions.
    sample_weight (list of float): optional per-example weights.
Returns:
    accuracy (float)
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Offline accuracy metric (scikit-learn ``accuracy_score``)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {
            "accuracy": float(
                accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
            )
        }
