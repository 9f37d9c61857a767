"""Label noise: symmetric (``rate`` = the true corruption rate) or asymmetric class-pair flips."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from datasets import ClassLabel, Dataset

from ._checks import (
    DatasetLike,
    _apply,
    _check_choice,
    _check_fraction,
    _check_int,
    _check_seed,
    _exact_count,
    _integer_labels,
    _replace_column,
)

__all__ = ["CLEAN_LABEL_COLUMN", "LABEL_NOISE_KINDS", "add_label_noise"]

LABEL_NOISE_KINDS = ("symmetric", "asymmetric")

#: column that keeps the original label next to a noisy one
CLEAN_LABEL_COLUMN = "clean_label"


def add_label_noise(
    dataset: DatasetLike,
    rate: float,
    *,
    kind: str = "symmetric",
    seed: int = 0,
    label_column: str = "label",
    num_classes: int | None = None,
    transition: Mapping[int, int] | None = None,
    splits: str | Sequence[str] | None = None,
) -> DatasetLike:
    """Corrupt a fraction ``rate`` of the labels; the original label is kept in ``clean_label``.

    - ``kind="symmetric"``: exactly ``round(rate * n)`` examples (a seeded permutation picks them)
      get a label drawn uniformly from the *other* classes, so ``rate`` is the true corruption rate.
    - ``kind="asymmetric"``: class-pair flips ``c -> transition[c]`` (default ``c -> (c + 1) % C``);
      exactly ``round(rate * n_eligible)`` of the examples whose class is flipped by ``transition``
      are changed (with the default transition every example is eligible).

    A ``clean_label`` column that already exists is kept (noise applied twice still remembers the
    original labels); the noise is applied to the current ``label_column``. ``num_classes`` defaults
    to the ``ClassLabel``'s size, else ``max(label) + 1``. For a :class:`~datasets.DatasetDict` only
    the ``"train"`` split is corrupted unless ``splits`` says otherwise (the paper's protocol: noisy
    training labels, clean evaluation); every split uses the same ``seed``.

    Example:
        >>> from datasets import Dataset
        >>> ds = Dataset.from_dict({"label": [0, 1, 2, 0, 1, 2]})
        >>> noisy = add_label_noise(ds, 0.5, kind="asymmetric", seed=1)
        >>> noisy["clean_label"][:], sum(a != b for a, b in zip(noisy["label"], noisy["clean_label"]))
        ([0, 1, 2, 0, 1, 2], 3)
    """
    rate = _check_fraction("rate", rate)
    _check_choice("kind", kind, LABEL_NOISE_KINDS)
    seed = _check_seed(seed)
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes, 1)
    if transition is not None and kind != "asymmetric":
        raise ValueError(f"transition={transition!r} is only used with kind='asymmetric'; got kind={kind!r}")
    if label_column == CLEAN_LABEL_COLUMN:
        raise ValueError(
            f"label_column={label_column!r} is reserved for the clean labels; allowed: any other column"
        )

    def validate(ds: Dataset) -> tuple[np.ndarray, int, np.ndarray | None]:
        labels = _integer_labels(ds, label_column)
        feature = ds.features[label_column]
        n_cls = num_classes or (
            feature.num_classes if isinstance(feature, ClassLabel) else int(labels.max(initial=-1)) + 1
        )
        if labels.size and labels.max() >= n_cls:
            raise ValueError(
                f"num_classes={n_cls} but label column {label_column!r} holds label {int(labels.max())}; "
                f"allowed: num_classes > max label"
            )
        mapping = None
        if kind == "symmetric":
            if n_cls < 2 and _exact_count(rate, labels.size) > 0:
                raise ValueError(
                    f"num_classes={n_cls} is not allowed for symmetric noise; allowed: at least 2 classes"
                )
        else:
            mapping = np.arange(n_cls)
            pairs = transition if transition is not None else {c: (c + 1) % n_cls for c in range(n_cls)}
            if not isinstance(pairs, Mapping):
                raise ValueError(
                    f"transition={transition!r} is not allowed; allowed: a dict {{class: class}}"
                )
            for src, dst in pairs.items():  # loop over classes, not examples
                for value in (src, dst):
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, numbers.Integral)
                        or not 0 <= value < n_cls
                    ):
                        raise ValueError(
                            f"transition entry {src!r}: {dst!r} is not allowed; allowed: class ids in [0, {n_cls})"
                        )
                mapping[int(src)] = int(dst)
        return labels, n_cls, mapping

    def work(ds: Dataset, checked: tuple[np.ndarray, int, np.ndarray | None]) -> Dataset:
        labels, n_cls, mapping = checked
        rng = np.random.default_rng(seed)
        noisy = labels.copy()
        if kind == "symmetric":
            chosen = rng.permutation(labels.size)[: _exact_count(rate, labels.size)]
            if chosen.size:  # a shift in [1, C) mod C is uniform over the other classes, never the same
                noisy[chosen] = (labels[chosen] + rng.integers(1, n_cls, size=chosen.size)) % n_cls
        else:
            eligible = np.flatnonzero(mapping[labels] != labels)
            chosen = rng.permutation(eligible)[: _exact_count(rate, eligible.size)]
            noisy[chosen] = mapping[labels[chosen]]
        feature = ds.features[label_column]
        if CLEAN_LABEL_COLUMN not in ds.column_names:
            ds = _replace_column(ds, CLEAN_LABEL_COLUMN, labels, feature)
        return _replace_column(ds, label_column, noisy, feature)

    return _apply(dataset, splits, ("train",), validate, work)
