"""F1 score as an offline ``evaluate`` metric script (loaded by path, no Hub access).

Defaults to macro averaging, which is what robustness tables report (every class counts equally,
so a model that collapses onto the majority class under label noise is not flattered).

Example (``hf_monosem.evaluation.load_metric_script("f1")`` does the same, cached)::

    import evaluate
    from hf_monosem.evaluation import METRIC_SCRIPTS_DIR
    f1 = evaluate.load(str(METRIC_SCRIPTS_DIR / "f1.py"), keep_in_memory=True)
    f1.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'f1': 0.666...}
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1: harmonic mean of precision and recall, macro-averaged over classes by default."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    average (str): "macro" (default), "micro", "weighted", "binary" or None (per class).
    labels (list of int): optional label set to score.
    sample_weight (list of float): optional per-example weights.
Returns:
    f1 (float, or list of float when average is None)
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """Offline F1 metric (scikit-learn ``f1_score``), macro-averaged by default."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="macro", labels=None, sample_weight=None):
        score = f1_score(
            references,
            predictions,
            average=average,
            labels=labels,
            sample_weight=sample_weight,
            zero_division=0,
        )
        return {
            "f1": score.tolist() if hasattr(score, "tolist") and getattr(score, "ndim", 0) else float(score)
        }
