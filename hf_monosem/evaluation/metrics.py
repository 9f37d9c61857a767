"""Monosemanticity metrics, classification metrics and Trainer glue.

Feature metrics take a feature matrix ``[N, F]`` (torch Tensor or numpy array) and, where needed,
integer labels ``[N]``; all are vectorised over examples and features:

- :func:`activation_sparsity`: how many features fire per example (L0);
- :func:`dead_features`: features that never fire on the data;
- :func:`class_consistency`: the paper's semantic consistency, i.e. the share of a feature's
  top-activating examples that carry its majority label (1.0 = each feature speaks for one class);
- :func:`feature_label_mutual_information`: mean MI (bits) between each discretised feature and the label.

:func:`classification_metrics` gives accuracy and macro-F1 through ``evaluate`` metric scripts that
ship inside the package (loaded by path, so offline), falling back to scikit-learn.
:func:`make_compute_metrics` builds a ``compute_metrics`` for :class:`transformers.Trainer` that logs
both next to each other, and :func:`extract_features` runs a model over a dataset.

Example:
    >>> import torch
    >>> feats = torch.eye(4).repeat_interleave(5, dim=0)  # 20 examples, each class has its own feature
    >>> labels = torch.arange(4).repeat_interleave(5)
    >>> report = monosemanticity_report(feats, labels)
    >>> report["class_consistency"], report["l0"]
    (1.0, 1.0)
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .reporting import plot_robustness, robustness_markdown_table, summarize_robustness

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

logger = logging.getLogger(__name__)

#: folder of the offline ``evaluate`` metric scripts shipped with the package
METRIC_SCRIPTS_DIR = Path(__file__).resolve().parent / "metric_scripts"

ArrayLike = torch.Tensor | np.ndarray | Sequence

# Work on at most this many matrix entries at once in the per-feature binning, to bound memory
# (a [N, F] long index tensor is 8 bytes per entry).
_CHUNK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _features(features: ArrayLike) -> torch.Tensor:
    try:
        x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"features of type {type(features).__name__} is not supported; allowed: a numeric [N, F] matrix"
        ) from error
    if x.dim() != 2:
        raise ValueError(
            f"features with shape {tuple(x.shape)} is not supported; allowed: a 2-D [N, F] matrix"
        )
    if x.is_complex():
        raise ValueError(f"features of dtype {x.dtype} is not supported; allowed: real numbers")
    return x.detach().to(device="cpu", dtype=torch.float32)


def _labels(labels: ArrayLike, n: int) -> torch.Tensor:
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    y = y.detach().cpu().reshape(-1)
    if y.is_floating_point():
        if not bool(torch.all(y == torch.round(y))):
            raise ValueError(f"labels of dtype {y.dtype} hold non-integer values; allowed: integer class ids")
        y = y.long()
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"labels of dtype {y.dtype} are not supported; allowed: integer class ids")
    if y.numel() != n:
        raise ValueError(
            f"labels has {y.numel()} entries but features has {n} rows; allowed: one label per row"
        )
    return y.long()


def _check_threshold(threshold: Any) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"threshold={threshold!r} is not allowed; allowed: a finite number >= 0")
    return float(threshold)


def _dense_labels(y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer labels to 0..C-1 (so sparse or negative ids cost no memory)."""
    classes, inverse = torch.unique(y, return_inverse=True)
    return inverse, int(classes.numel())


# ----------------------------------------------------------------------------------------------
# feature metrics
# ----------------------------------------------------------------------------------------------
def activation_sparsity(features: ArrayLike, threshold: float = 0.0) -> dict[str, float]:
    """Sparsity of a feature matrix: an entry is active when ``|x| > threshold``.

    Returns ``l0`` (mean number of active features per example), ``zero_fraction`` (share of
    inactive entries) and ``active_fraction`` (``l0 / F``).

    Example:
        >>> activation_sparsity([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
        {'l0': 1.5, 'zero_fraction': 0.625, 'active_fraction': 0.375}
    """
    threshold = _check_threshold(threshold)
    x = _features(features)
    active = x.abs() > threshold
    n, f = x.shape
    l0 = float(active.sum(dim=1, dtype=torch.float64).mean()) if n else 0.0
    active_fraction = l0 / f if f else 0.0
    return {"l0": l0, "zero_fraction": 1.0 - active_fraction, "active_fraction": active_fraction}


def dead_features(features: ArrayLike, threshold: float = 0.0) -> dict[str, Any]:
    """Features never active (``|x| > threshold``) on any example of the data.

    Returns ``dead_fraction``, ``num_dead`` and ``dead_indices`` (a LongTensor). For non-negative
    layers (ReLU, TopK) this is the usual "never fires"; for a linear layer it is nearly always 0.

    Example:
        >>> out = dead_features([[1.0, 0.0, 0.0], [2.0, 0.0, 0.5]])
        >>> out["dead_fraction"], out["dead_indices"].tolist()
        (0.3333333333333333, [1])
    """
    threshold = _check_threshold(threshold)
    x = _features(features)
    dead = ~(x.abs() > threshold).any(dim=0)
    indices = torch.nonzero(dead).flatten()
    return {
        "dead_fraction": float(dead.double().mean()) if x.shape[1] else 0.0,
        "num_dead": int(indices.numel()),
        "dead_indices": indices,
    }


def _default_top_m(n: int, num_classes: int) -> int:
    # Half the average class size (at most 100): a perfectly class-selective feature can then fill
    # its top-m from its own class, so the score does not punish small evaluation sets.
    return max(1, min(100, n // max(1, 2 * num_classes)))


def class_consistency(
    features: ArrayLike,
    labels: ArrayLike,
    top_m: int | None = None,
    threshold: float = 0.0,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Semantic consistency: for each live feature, the share of its top-``m`` activating examples
    that carry the majority label among them, averaged over live features.

    Only examples on which the feature is active (``x > threshold``) count, so a feature that fires
    on fewer than ``m`` examples is judged on those. 1.0 for a one-hot (one class per feature) code;
    about ``1/C`` for random features (slightly above: the majority of a small random sample beats
    the average). ``top_m`` defaults to half the average class size, at most 100. With
    ``reduction="none"`` returns the per-feature scores (NaN for features that never fire).

    Example:
        >>> import torch
        >>> labels = torch.arange(3).repeat(10)
        >>> class_consistency(torch.nn.functional.one_hot(labels).float(), labels, top_m=5)
        1.0
    """
    threshold = _check_threshold(threshold)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not supported; allowed values: ['mean', 'none']")
    x = _features(features)
    y, num_classes = _dense_labels(_labels(labels, x.shape[0]))
    n, f = x.shape
    if top_m is None:
        top_m = _default_top_m(n, num_classes)
    if isinstance(top_m, bool) or not isinstance(top_m, int) or top_m < 1:
        raise ValueError(f"top_m={top_m!r} is not allowed; allowed: an integer >= 1")
    if n == 0 or f == 0:
        return float("nan") if reduction == "mean" else torch.full((f,), float("nan"))
    m = min(top_m, n)
    values, rows = torch.topk(x, m, dim=0)  # [m, F]: the m largest activations of every feature
    valid = (values > threshold).float()
    counts = torch.zeros(num_classes, f).scatter_add_(0, y[rows], valid)  # [C, F] label histogram
    total = valid.sum(dim=0)
    per_feature = counts.max(dim=0).values / total.clamp_min(1.0)
    per_feature[total == 0] = float("nan")
    if reduction == "none":
        return per_feature
    live = total > 0
    return float(per_feature[live].mean()) if bool(live.any()) else float("nan")


def _entropy_bits(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim=dim) / math.log(2.0)


def feature_label_mutual_information(
    features: ArrayLike,
    labels: ArrayLike,
    bins: int | None = None,
    threshold: float = 0.0,
    reduction: str = "mean",
) -> float | torch.Tensor:
    """Mean mutual information (bits) between each discretised feature and the label.

    ``bins=None`` binarises each feature (active ``|x| > threshold`` vs not); an integer ``bins >= 2``
    uses per-feature quantile bins (ties, e.g. the many zeros of a sparse code, share a bin).
    MI = H(feature) + H(label) - H(feature, label), from joint counts. ``reduction="none"`` gives
    the per-feature values.

    Example:
        >>> import torch
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> feature_label_mutual_information(torch.tensor([[1.0], [1.0], [0.0], [0.0]]), labels)
        1.0
    """
    threshold = _check_threshold(threshold)
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 2):
        raise ValueError(f"bins={bins!r} is not allowed; allowed: None (active/inactive) or an integer >= 2")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not supported; allowed values: ['mean', 'none']")
    x = _features(features)
    y, num_classes = _dense_labels(_labels(labels, x.shape[0]))
    n, f = x.shape
    if n == 0 or f == 0:
        return float("nan") if reduction == "mean" else torch.full((f,), float("nan"))
    onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)  # [N, C]
    class_counts = onehot.sum(dim=0)  # [C]
    if bins is None:
        active = (x.abs() > threshold).to(torch.float64)
        on = active.T @ onehot  # [F, C]: a matmul gives every feature's joint counts at once
        joint = torch.stack([class_counts.expand_as(on) - on, on], dim=1)  # [F, 2, C]
    else:
        joint = torch.empty(f, bins, num_classes, dtype=torch.float64)
        chunk = max(1, _CHUNK_ENTRIES // max(1, n))
        cut_rows = ((torch.arange(1, bins, dtype=torch.float64) / bins) * (n - 1)).round().long()
        for start in range(0, f, chunk):  # loop over feature chunks (memory bound), not examples
            block = x[:, start : start + chunk]  # [N, f']
            edges = block.sort(dim=0).values[cut_rows].T.contiguous()  # [f', bins-1] quantiles
            bin_index = torch.searchsorted(edges, block.T.contiguous())  # [f', N] in 0..bins-1
            flat = bin_index * num_classes + y[None, :]
            counts = torch.zeros(block.shape[1], bins * num_classes, dtype=torch.float64)
            counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
            joint[start : start + chunk] = counts.view(-1, bins, num_classes)
    p = joint / n
    mi = _entropy_bits(p.sum(dim=2), 1) + _entropy_bits(class_counts / n, 0) - _entropy_bits(p.flatten(1), 1)
    mi = mi.clamp_min(0.0).float()  # tiny negative values are rounding error
    return float(mi.mean()) if reduction == "mean" else mi


def monosemanticity_report(
    features: ArrayLike,
    labels: ArrayLike,
    top_m: int | None = None,
    threshold: float = 0.0,
) -> dict[str, float]:
    """All feature metrics in one flat dict of floats (ready for logging).

    Keys: ``l0``, ``zero_fraction``, ``active_fraction``, ``dead_fraction``, ``num_dead``,
    ``class_consistency``, ``mutual_information`` (bits, active/inactive), ``num_features``,
    ``num_examples``.

    Example:
        >>> import torch
        >>> sorted(monosemanticity_report(torch.rand(20, 4), torch.arange(20) % 2))[:3]
        ['active_fraction', 'class_consistency', 'dead_fraction']
    """
    x = _features(features)
    y = _labels(labels, x.shape[0])
    dead = dead_features(x, threshold)
    return {
        **activation_sparsity(x, threshold),
        "dead_fraction": dead["dead_fraction"],
        "num_dead": float(dead["num_dead"]),
        "class_consistency": class_consistency(x, y, top_m=top_m, threshold=threshold),
        "mutual_information": feature_label_mutual_information(x, y, threshold=threshold),
        "num_features": float(x.shape[1]),
        "num_examples": float(x.shape[0]),
    }


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

    Uses the package's ``evaluate`` metric scripts (offline); if they cannot be loaded, or with
    ``use_evaluate=False``, scikit-learn directly (same numbers).

    Example:
        >>> classification_metrics([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 0, 0], use_evaluate=False)
        {'accuracy': 0.6666666666666666, 'macro_f1': 0.6666666666666666}
    """
    global _warned_fallback
    preds = _to_predictions(predictions_or_logits)
    refs = _labels(labels, preds.shape[0]).numpy()
    if use_evaluate:
        try:
            accuracy = load_metric_script("accuracy").compute(predictions=preds, references=refs)["accuracy"]
            f1 = load_metric_script("f1").compute(predictions=preds, references=refs, average="macro")["f1"]
            return {"accuracy": float(accuracy), "macro_f1": float(f1)}
        except Exception as error:  # noqa: BLE001 - any evaluate failure falls back to the same maths
            if not _warned_fallback:
                logger.warning("evaluate metric scripts unavailable (%s); using scikit-learn", error)
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


def make_compute_metrics(
    with_monosemanticity: bool = True,
    *,
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
    ``dead_fraction`` and ``class_consistency``. Rows with a negative label (ignore index) are dropped.

    Example:
        >>> import numpy as np
        >>> compute = make_compute_metrics(use_evaluate=False)
        >>> logits, feats = np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[0, 1, 2, 0]]
        >>> compute(((logits, feats), np.array([0, 1, 2, 0])))["class_consistency"]
        1.0
    """
    threshold = _check_threshold(threshold)

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
            x = torch.from_numpy(np.ascontiguousarray(features[keep])).float()
            y = torch.from_numpy(labels[keep].astype(np.int64))
            sparsity = activation_sparsity(x, threshold)
            results.update(
                l0=sparsity["l0"],
                active_fraction=sparsity["active_fraction"],
                dead_fraction=dead_features(x, threshold)["dead_fraction"],
                class_consistency=class_consistency(x, y, top_m=top_m, threshold=threshold),
            )
        return results

    return compute_metrics


_INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "token_type_ids", "position_ids")
_LABEL_NAMES = ("label", "labels", "label_ids")


def _forward_inputs(model: torch.nn.Module, available: Sequence[str]) -> list[str]:
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [c for c in _INPUT_NAMES if c in available]
    return [c for c in available if c in params and c not in _LABEL_NAMES]


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 64,
    columns: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    *,
    tokenizer: Any = None,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run ``model`` over ``dataset`` and collect ``(features [N, F], pooled, labels)`` on the CPU.

    Batched, ``no_grad``, in eval mode (the model's mode is restored afterwards). The model's output
    must have ``.features`` (and may have ``.pooled``; else ``pooled`` is None). Rows hold the model
    inputs and ``label``/``labels`` (``labels`` is None when there are none). ``columns`` names the
    inputs passed to the model (default: the forward's parameters found in the rows). Batches are
    built by ``transformers.default_data_collator``, or ``DataCollatorWithPadding(tokenizer)`` when
    a tokenizer is given (variable-length ``input_ids``).

    Example:
        >>> import torch, types
        >>> class M(torch.nn.Module):
        ...     def forward(self, pixel_values):
        ...         return types.SimpleNamespace(features=pixel_values.flatten(1), pooled=None)
        >>> rows = [{"pixel_values": torch.ones(2, 2), "label": i % 2} for i in range(5)]
        >>> feats, pooled, labels = extract_features(M(), rows, batch_size=2, progress=False)
        >>> tuple(feats.shape), labels.tolist()
        ((5, 4), [0, 1, 0, 1, 0])
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding, default_data_collator

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
    if len(dataset) == 0:
        raise ValueError("dataset has 0 rows; allowed: a non-empty dataset")
    first = dataset[0]
    inputs = list(columns) if columns is not None else _forward_inputs(model, list(first))
    missing = [c for c in inputs if c not in first]
    if missing or not inputs:
        raise ValueError(f"columns={missing or inputs!r} not found in the rows; available: {sorted(first)}")
    label_key = next((k for k in _LABEL_NAMES if k in first), None)
    wanted = set(inputs) | ({label_key} if label_key else set())
    base = DataCollatorWithPadding(tokenizer) if tokenizer is not None else default_data_collator

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        # keep only model inputs and the label (text or id columns would trip the collator)
        return base([{k: v for k, v in row.items() if k in wanted} for row in rows])

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )
    was_training = model.training
    model.eval()
    features, pooled, labels = [], [], []
    try:
        for batch in tqdm(loader, desc="extract_features", disable=not progress):
            label = next((batch.pop(k) for k in _LABEL_NAMES if k in batch), None)
            out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            features.append(out.features.detach().float().cpu())
            pooled_out = getattr(out, "pooled", None)
            if pooled_out is not None:
                pooled.append(pooled_out.detach().float().cpu())
            if label is not None:
                labels.append(torch.as_tensor(label).cpu())
    finally:
        model.train(was_training)
    return (
        torch.cat(features),
        torch.cat(pooled) if len(pooled) == len(features) else None,
        torch.cat(labels) if labels and len(labels) == len(features) else None,
    )
