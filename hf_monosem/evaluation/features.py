"""Monosemanticity metrics of a feature matrix.

Every function takes a feature matrix ``[N, F]`` (torch Tensor, numpy array or nested lists) and,
where needed, integer labels ``[N]``; all are vectorised over examples and features:

- :func:`activation_sparsity`: how many features fire per example (L0);
- :func:`dead_features`: features that never fire on the data;
- :func:`class_consistency`: the paper's semantic consistency, i.e. the share of a feature's
  top-activating examples that carry its majority label (1.0 = each feature speaks for one class);
- :func:`feature_label_mutual_information`: mean MI (bits) between each discretised feature and the label;
- :func:`monosemanticity_report`: all of them in one flat dict of floats.

Example:
    >>> import torch
    >>> feats = torch.eye(4).repeat_interleave(5, dim=0)  # 20 examples, each class has its own feature
    >>> labels = torch.arange(4).repeat_interleave(5)
    >>> report = monosemanticity_report(feats, labels)
    >>> report["class_consistency"], report["l0"]
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch

__all__ = [
    "activation_sparsity",
    "class_consistency",
    "dead_features",
    "feature_label_mutual_information",
    "monosemanticity_report",
]

ArrayLike: TypeAlias = torch.Tensor | np.ndarray | Sequence

# Work on at most this many matrix entries at once in the per-feature binning, to bound memory
# (a [N, F] long index tensor is 8 bytes per entry).
_CHUNK_ENTRIES = 1 << 22


# ----------------------------------------------------------------------------------------------
# input checks (shared with classification and explain)
# ----------------------------------------------------------------------------------------------
def as_feature_matrix(features: ArrayLike) -> torch.Tensor:
    """``features`` as a float32 CPU ``[N, F]`` tensor, or :class:`ValueError` naming what is wrong.

    The one input check of the feature metrics, shared with :mod:`.classification` and :mod:`.explain`."""
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


def as_class_labels(labels: ArrayLike, n: int) -> torch.Tensor:
    """``labels`` as ``n`` int64 class ids (integer-valued floats accepted), or :class:`ValueError`."""
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


def check_threshold(threshold: Any) -> float:
    """An activation threshold as a float: finite and >= 0 (booleans refused)."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise ValueError(f"threshold={threshold!r} is not allowed; allowed: a finite number >= 0")
    return float(threshold)


# the names these checks had in the flat layout's hf_monosem.metrics, which the deprecated alias of that
# module still resolves (alias_module looks names up here) until the alias goes in 0.3.0
_features = as_feature_matrix
_labels = as_class_labels
_check_threshold = check_threshold


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
    threshold = check_threshold(threshold)
    x = as_feature_matrix(features)
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
    threshold = check_threshold(threshold)
    x = as_feature_matrix(features)
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
    threshold = check_threshold(threshold)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not supported; allowed values: ['mean', 'none']")
    x = as_feature_matrix(features)
    y, num_classes = _dense_labels(as_class_labels(labels, x.shape[0]))
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
    threshold = check_threshold(threshold)
    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 2):
        raise ValueError(f"bins={bins!r} is not allowed; allowed: None (active/inactive) or an integer >= 2")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not supported; allowed values: ['mean', 'none']")
    x = as_feature_matrix(features)
    y, num_classes = _dense_labels(as_class_labels(labels, x.shape[0]))
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
    x = as_feature_matrix(features)
    y = as_class_labels(labels, x.shape[0])
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
