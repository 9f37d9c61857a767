"""Few-shot subsets and domain-shift splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict

from .checks import (
    DatasetLike,
    apply_to_splits,
    check_column,
    check_int,
    check_seed,
    column_array,
    integer_labels,
)

__all__ = ["few_shot", "split_by_domain"]


def few_shot(
    dataset: DatasetLike,
    k: int,
    seed: int = 0,
    label_column: str = "label",
    *,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Exactly ``k`` examples per class, drawn by a seeded stratified sample; rows keep their order.

    Classes are those of the ``ClassLabel`` (so an empty class is reported) or the labels present.
    With the same seed the ``k``-shot set is contained in the ``k'``-shot set for ``k < k'``.
    Raises ``ValueError`` naming every class with fewer than ``k`` examples. For a DatasetDict only
    ``"train"`` is subsampled unless ``splits`` says otherwise.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"label": [0, 0, 0, 1, 1, 1, 2, 2]})
        >>> sorted(few_shot(ds, 2, seed=0)["label"])
        [0, 0, 1, 1, 2, 2]
    """
    k = check_int("k", k, 1)
    seed = check_seed(seed)

    def validate(ds: Dataset) -> np.ndarray:
        labels = integer_labels(ds, label_column)
        feature = ds.features[label_column]
        size = max(
            feature.num_classes if isinstance(feature, ClassLabel) else 0, int(labels.max(initial=-1)) + 1
        )
        counts = np.bincount(labels, minlength=size)
        classes = np.arange(size) if isinstance(feature, ClassLabel) else np.unique(labels)
        short = classes[counts[classes] < k]
        if short.size:

            def name(c: int) -> str:
                return f"{c} ({feature.int2str(int(c))!r})" if isinstance(feature, ClassLabel) else str(c)

            detail = ", ".join(f"class {name(c)} has {counts[c]}" for c in short)
            raise ValueError(f"k={k} examples per class requested but {detail} examples in {label_column!r}")
        if labels.size == 0:
            raise ValueError(f"few_shot(k={k}) needs a non-empty dataset; got 0 rows")
        return labels

    def work(ds: Dataset, labels: np.ndarray) -> Dataset:
        rng = np.random.default_rng(seed)
        order = rng.permutation(labels.size)
        order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within class
        grouped = labels[order]
        rank = np.arange(labels.size) - np.searchsorted(grouped, grouped, side="left")
        return ds.select(np.sort(order[rank < k]))

    return apply_to_splits(dataset, splits, ("train",), validate, work)


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def split_by_domain(
    dataset: Dataset,
    domain_column: str,
    source: Any,
    target: Any,
) -> DatasetDict:
    """Domain-shift split: ``train`` = rows whose domain is in ``source``, ``test`` = in ``target``.

    ``source`` and ``target`` are one value or a list of values of ``domain_column``; each must
    occur in the column and they must not overlap. Row order is kept.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"topic": ["air", "apple", "air", "cars"], "label": [0, 1, 0, 1]})
        >>> dd = split_by_domain(ds, "topic", "air", ["apple", "cars"])
        >>> dd["train"].num_rows, dd["test"].num_rows
        (2, 2)
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset of type {type(dataset).__name__} is not supported; allowed: Dataset")
    check_column(dataset, domain_column, "domain")
    values = np.asarray(column_array(dataset, domain_column).to_pylist(), dtype=object)
    present = set(values.tolist())
    sources, targets = _as_values(source), _as_values(target)
    shown = sorted(present, key=str)[:30]
    for role, wanted in (("source", sources), ("target", targets)):
        missing = [v for v in wanted if v not in present]
        if not wanted or missing:
            raise ValueError(
                f"{role}={missing or wanted!r} not found in domain column {domain_column!r}; "
                f"allowed values: {shown}{' ...' if len(present) > 30 else ''}"
            )
    overlap = set(sources) & set(targets)
    if overlap:
        raise ValueError(f"source and target share {sorted(overlap, key=str)!r}; allowed: disjoint domains")
    in_source = np.isin(values, np.asarray(sources, dtype=object))
    in_target = np.isin(values, np.asarray(targets, dtype=object))
    return DatasetDict(
        train=dataset.select(np.flatnonzero(in_source)), test=dataset.select(np.flatnonzero(in_target))
    )
