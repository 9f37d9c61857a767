"""Argument checks and column helpers shared by the scenario families.

Every check raises :class:`ValueError` naming the bad value and what is allowed, and runs before
any work is done (:func:`apply_to_splits` validates every target split first, then transforms).

The helpers are public to the scenario modules that share them (``labels``, ``images``, ``text``,
``splits``, ``paper_toy``; a new scenario uses them too, see CONTRIBUTING.md) but are not part of the
user API: ``__all__`` stays empty, so ``from hf_monosem.scenarios import *`` does not export them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Value

__all__: list[str] = []

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
STRING_DTYPES = ("string", "large_string")

DatasetLike = TypeVar("DatasetLike", Dataset, DatasetDict)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """``value`` must be one of ``allowed``; otherwise :class:`ValueError` naming both."""
    if not isinstance(value, Hashable) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (booleans refused: ``True`` is not a rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value!r} is outside the allowed range [0, 1]")
    return float(value)


def check_strength(value: Any) -> float:
    """A noise strength as a float: finite and >= 0 (booleans refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"strength={value!r} is not allowed; allowed: a finite number >= 0")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= {minimum}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A seed: an integer >= 0."""
    return check_int("seed", seed, 0)


def check_column(dataset: Dataset, column: str, role: str) -> None:
    """``column`` must be a column of ``dataset``; ``role`` names it in the error ("label", "image")."""
    if column not in dataset.column_names:
        raise ValueError(f"{role} column {column!r} not found; available columns: {dataset.column_names}")


def has_custom_transform(dataset: Dataset) -> bool:
    """Whether ``dataset`` has a ``set_transform`` / ``with_transform`` formatter (lazy columns)."""
    return dataset.format.get("type") == "custom"


def column_array(dataset: Dataset, column: str) -> pa.Array:
    """The column as one Arrow array, in the dataset's row order (indices mapping applied)."""
    chunked = dataset.with_format("arrow")[column]
    return chunked.combine_chunks() if isinstance(chunked, pa.ChunkedArray) else chunked


def integer_labels(dataset: Dataset, column: str) -> np.ndarray:
    """``dataset[column]`` as int64 class ids, checked: an integer feature, no nulls, no id < 0."""
    check_column(dataset, column, "label")
    feature = dataset.features[column]
    if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype in INT_DTYPES)):
        raise ValueError(
            f"label column {column!r} has feature {feature}; allowed: integer class ids "
            f"(ClassLabel or Value with dtype in {list(INT_DTYPES)})"
        )
    array = column_array(dataset, column)
    if array.null_count:
        raise ValueError(f"label column {column!r} has {array.null_count} missing labels; allowed: no nulls")
    labels = array.to_numpy(zero_copy_only=False).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"label column {column!r} holds negative label {int(labels.min())}; allowed: class ids >= 0"
        )
    return labels


def _resolve_splits(
    dataset: DatasetDict, splits: str | Sequence[str] | None, default: Sequence[str] | None
) -> list[str]:
    if splits is None:
        chosen = [s for s in (default or []) if s in dataset] or list(dataset)
    else:
        chosen = [splits] if isinstance(splits, str) else list(splits)
    unknown = [s for s in chosen if s not in dataset]
    if unknown:
        raise ValueError(f"splits={unknown!r} not found; available splits: {list(dataset)}")
    return chosen


def apply_to_splits(
    dataset: DatasetLike,
    splits: str | Sequence[str] | None,
    default_splits: Sequence[str] | None,
    validate: Callable[[Dataset], Any],
    work: Callable[[Dataset, Any], Dataset],
) -> DatasetLike:
    """Validate every target split first, then transform: nothing is computed if an argument is bad."""
    if isinstance(dataset, DatasetDict):
        names = _resolve_splits(dataset, splits, default_splits)
        checked = {name: validate(dataset[name]) for name in names}
        return DatasetDict(
            {name: work(ds, checked[name]) if name in checked else ds for name, ds in dataset.items()}
        )
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset of type {type(dataset).__name__} is not supported; allowed: Dataset, DatasetDict"
        )
    if splits is not None:
        raise ValueError(f"splits={splits!r} only applies to a DatasetDict; got a Dataset")
    return work(dataset, validate(dataset))


def replace_column(
    dataset: Dataset, name: str, values: np.ndarray | pa.Array | list, feature: Any
) -> Dataset:
    """A copy of ``dataset`` with column ``name`` set to ``values``, keeping the column order."""
    order = list(dataset.column_names)
    if isinstance(values, pa.Array):
        values = values.to_pylist() if not pa.types.is_integer(values.type) else values.to_numpy()
    if name not in order:
        return dataset.add_column(name, values, feature=feature)
    # add under a temporary name first: removing a dataset's only column would leave it with 0 rows
    temporary = f"{name}__hf_monosem_new"
    dataset = dataset.add_column(temporary, values, feature=feature).remove_columns(name)
    return dataset.rename_column(temporary, name).select_columns(order)


def exact_count(rate: float, n: int) -> int:
    """How many of ``n`` items a ``rate`` moves: ``floor(rate * n + 0.5)``, at most ``n``."""
    # round half up: Python's round() is banker's rounding, which would make 0.5 * 5 -> 2
    return min(n, int(math.floor(rate * n + 0.5)))
