"""Classification metrics (accuracy, macro-F1) and the ``compute_metrics`` of the Trainer.

:func:`classification_metrics` gives accuracy and macro-F1 through ``evaluate`` metric scripts that
ship inside the package (:data:`METRIC_SCRIPTS_DIR`, loaded by path with :func:`load_metric_script`,
so offline), falling back to scikit-learn. :func:`make_compute_metrics` builds the package's one
``compute_metrics`` for :class:`transformers.Trainer`: those two next to the feature metrics of
:mod:`hf_monosem.evaluation.features`, from the same evaluation pass. The features reach it only when
the Trainer keeps them in the predictions: evaluate with ``ignore_keys=KEEP_FEATURES``
(:data:`KEEP_FEATURES`; ``Trainer.train(ignore_keys_for_eval=KEEP_FEATURES)`` during training).

Example:
    >>> import numpy as np
    >>> compute = make_compute_metrics(use_evaluate=False)
    >>> logits = features = np.eye(2)[[0, 1, 1, 0]]
    >>> metrics = compute(((logits, features), np.array([0, 1, 1, 0])))
    >>> metrics["accuracy"], metrics["class_consistency"]
    (1.0, 1.0)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..training.trainer import NON_PREDICTION_KEYS
from .features import (
    ArrayLike,
    activation_sparsity,
    as_class_labels,
    check_threshold,
    class_consistency,
    dead_features,
    monosemanticity_report,
)

__all__ = [
    "KEEP_FEATURES",
    "METRIC_SCRIPTS_DIR",
    "classification_metrics",
    "load_metric_script",
    "make_compute_metrics",
]

logger = logging.getLogger(__name__)

#: folder of the offline ``evaluate`` metric scripts shipped with the package
METRIC_SCRIPTS_DIR = Path(__file__).resolve().parent / "metric_scripts"

#: ``ignore_keys`` for ``Trainer.evaluate`` / ``Trainer.predict`` (and ``ignore_keys_for_eval`` of
#: ``Trainer.train``) that keep the ``features`` of the model output in the gathered predictions
#: (every other non-prediction output stays out), so that :func:`make_compute_metrics` sees them.
KEEP_FEATURES = [key for key in NON_PREDICTION_KEYS if key != "features"]


# ----------------------------------------------------------------------------------------------
# accuracy / macro-F1 through offline evaluate scripts
# ----------------------------------------------------------------------------------------------
@functools.cache
def load_metric_script(name: str) -> Any:
    """Load one of the package's ``evaluate`` metric scripts (``"accuracy"``, ``"f1"``) by path.

    Works offline: ``evaluate.load("accuracy")`` needs the Hub, a local script does not. The
    loaded metric is cached and computes in memory (no cache files, safe with parallel runs).

    Example:
        >>> load_metric_script("accuracy").compute(predictions=[1, 0], references=[1, 1])
        {'accuracy': 0.5}
    """
    path = METRIC_SCRIPTS_DIR / f"{name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in METRIC_SCRIPTS_DIR.glob("*.py"))
        raise ValueError(
            f"metric script {name!r} not found in {METRIC_SCRIPTS_DIR}; allowed values: {available}"
        )
    import evaluate

    return evaluate.load(str(path), keep_in_memory=True)


_warned_fallback = False


def _to_predictions(predictions_or_logits: ArrayLike) -> np.ndarray:
    p = predictions_or_logits
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    if p.ndim == 2:  # logits or probabilities
        return p.argmax(axis=1)
    if p.ndim != 1:
        raise ValueError(
            f"predictions with shape {p.shape} is not supported; allowed: [N] labels or [N, C] logits"
        )
    if np.issubdtype(p.dtype, np.floating) and not np.all(p == np.round(p)):
        raise ValueError("1-D float predictions hold non-integer values; allowed: class ids or [N, C] logits")
    return p.astype(np.int64)


def classification_metrics(
    predictions_or_logits: ArrayLike, labels: ArrayLike, use_evaluate: bool = True
) -> dict[str, float]:
    """Accuracy and macro-F1 from class ids ``[N]`` or logits ``[N, C]`` (argmax taken).

    Uses the package's ``evaluate`` metric scripts (offline); when ``evaluate`` is not installed, or with
    ``use_evaluate=False``, scikit-learn directly (same numbers). A metric script that fails raises: a
    silent switch would hide a broken install or bad input behind numbers from another code path.

    Example:
        >>> classification_metrics([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 0, 0], use_evaluate=False)
        {'accuracy': 0.6666666666666666, 'macro_f1': 0.6666666666666666}
    """
    global _warned_fallback
    preds = _to_predictions(predictions_or_logits)
    refs = as_class_labels(labels, preds.shape[0]).numpy()
    if use_evaluate and importlib.util.find_spec("evaluate") is not None:
        accuracy = load_metric_script("accuracy").compute(predictions=preds, references=refs)["accuracy"]
        f1 = load_metric_script("f1").compute(predictions=preds, references=refs, average="macro")["f1"]
        return {"accuracy": float(accuracy), "macro_f1": float(f1)}
    if use_evaluate and not _warned_fallback:  # evaluate is an optional dependency: same maths without it
        logger.warning(
            "the evaluate package is not installed; computing accuracy and macro-F1 with scikit-learn"
        )
        _warned_fallback = True
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0)),
    }


# ----------------------------------------------------------------------------------------------
# Trainer glue
# ----------------------------------------------------------------------------------------------
def _as_numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        return None


def _feature_metrics(
    features: np.ndarray, labels: np.ndarray, full_report: bool, top_m: int | None, threshold: float
) -> dict[str, float]:
    x = torch.from_numpy(np.ascontiguousarray(features)).float()
    y = torch.from_numpy(labels.astype(np.int64))
    if full_report:
        return monosemanticity_report(x, y, top_m=top_m, threshold=threshold)
    sparsity = activation_sparsity(x, threshold)  # the summary: no MI, no counts
    return {
        "l0": sparsity["l0"],
        "active_fraction": sparsity["active_fraction"],
        "dead_fraction": dead_features(x, threshold)["dead_fraction"],
        "class_consistency": class_consistency(x, y, top_m=top_m, threshold=threshold),
    }


def make_compute_metrics(
    with_monosemanticity: bool = True,
    *,
    full_report: bool = False,
    prefix: str = "",
    logits_index: int = 0,
    features_index: int = 1,
    top_m: int | None = None,
    threshold: float = 0.0,
    use_evaluate: bool = True,
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for :class:`transformers.Trainer`: accuracy, macro-F1 and feature metrics.

    ``eval_pred.predictions`` may be the logits alone or a tuple from the model outputs
    (``(logits, features, ...)``; pick other positions with ``logits_index`` / ``features_index``),
    or a dict with ``"logits"`` / ``"features"``. When 2-D features with one row per example are
    there and ``with_monosemanticity`` is on, also reports ``l0``, ``active_fraction``,
    ``dead_fraction`` and ``class_consistency``, or with ``full_report=True`` every key of
    :func:`~hf_monosem.evaluation.features.monosemanticity_report`; each feature metric is named
    ``prefix + key`` (e.g. ``prefix="features_"``). Rows with a negative label (ignore index) are
    dropped. A Trainer gathers the features only when told to: evaluate with
    ``ignore_keys=KEEP_FEATURES`` (:data:`KEEP_FEATURES`).

    Example:
        >>> import numpy as np
        >>> compute = make_compute_metrics(use_evaluate=False)
        >>> logits, feats = np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[0, 1, 2, 0]]
        >>> compute(((logits, feats), np.array([0, 1, 2, 0])))["class_consistency"]
        1.0
        >>> full = make_compute_metrics(full_report=True, prefix="features_", use_evaluate=False)
        >>> sorted(full(((logits, feats), np.array([0, 1, 2, 0]))))[:4]
        ['accuracy', 'features_active_fraction', 'features_class_consistency', 'features_dead_fraction']
    """
    threshold = check_threshold(threshold)
    if not isinstance(prefix, str):
        raise ValueError(f"prefix={prefix!r} is not allowed; allowed: a string such as 'features_'")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions"):
            predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        else:
            predictions, label_ids = eval_pred[0], eval_pred[1]
        if isinstance(label_ids, (tuple, list)):
            label_ids = label_ids[0]
        if label_ids is None:
            raise ValueError("eval_pred.label_ids is None; allowed: an eval dataset with labels")
        features = None
        if isinstance(predictions, dict):
            logits, features = predictions["logits"], predictions.get("features")
        elif isinstance(predictions, (tuple, list)):
            logits = predictions[logits_index]
            features = predictions[features_index] if len(predictions) > features_index else None
        else:
            logits = predictions
        logits = _as_numpy(logits)
        labels = _as_numpy(label_ids).reshape(-1)
        keep = labels >= 0
        results = classification_metrics(logits[keep], labels[keep], use_evaluate=use_evaluate)
        features = _as_numpy(features)
        if (
            with_monosemanticity
            and features is not None
            and features.ndim == 2
            and features.shape[0] == labels.shape[0]
            and np.issubdtype(features.dtype, np.number)
        ):
            feature_metrics = _feature_metrics(features[keep], labels[keep], full_report, top_m, threshold)
            results.update({prefix + key: value for key, value in feature_metrics.items()})
        return results

    return compute_metrics
