"""Label noise: symmetric (``rate`` = the true corruption rate) or asymmetric class-pair flips."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from datasets import ClassLabel, Dataset

from .checks import (
    DatasetLike,
    apply_to_splits,
    check_choice,
    check_fraction,
    check_int,
    check_seed,
    integer_labels,
    replace_column,
)

__all__ = ["CLEAN_LABEL_COLUMN", "LABEL_NOISE_KINDS", "add_label_noise", "symmetric_label_noise"]

LABEL_NOISE_KINDS = ("symmetric", "asymmetric")

#: column that keeps the original label next to a noisy one
CLEAN_LABEL_COLUMN = "clean_label"


def _floor_count(rate: float, n: int) -> int:
    """``floor(n * rate)`` (the authors' count), forgiving floating-point error: ``0.29 * 100`` is
    ``28.999999999999996`` in floats and still moves 29 labels (the product is off by at most a few
    units in the last place; a relative 1e-12 below an integer counts as that integer)."""
    product = rate * n
    count = math.floor(product)
    if math.isclose(product, count + 1, rel_tol=1e-12, abs_tol=0.0):
        count += 1
    return min(n, count)


def _max_symmetric_rate_text(num_classes: int) -> str:
    """``(C-1)/C`` to 3 significant digits, with enough more that it never prints as 1."""
    return f"{(num_classes - 1) / num_classes:.{max(3, len(str(num_classes)) + 1)}g}"


def _check_symmetric_rate(rate: float, num_classes: int, num_rows: int) -> None:
    """Refuse a symmetric rate at or above ``(C-1)/C``: there the noisy labels carry no signal."""
    if rate == 0:
        return  # nothing is moved: every number of classes is fine
    if num_classes < 2:
        if num_rows:
            raise ValueError(
                f"num_classes={num_classes} is not allowed for symmetric noise at rate={rate!r}: there is no "
                f"other "
                "class to move a label to; allowed: at least 2 classes, or rate=0"
            )
        return
    if rate >= (num_classes - 1) / num_classes:
        limit = _max_symmetric_rate_text(num_classes)
        raise ValueError(
            f"label noise rate={rate!r} with {num_classes} classes is not valid: at rate >= (C-1)/C = "
            f"{limit} the "
            "noisy labels carry no signal about the true class (a wrong class is at least as likely as the "
            f"true one); allowed: 0 <= rate < {limit}"
        )


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int = 0) -> np.ndarray:
    """Symmetric noise on an array of class ids: the draw :func:`add_label_noise` makes, without a dataset.

    Exactly ``floor(rate * n)`` labels (a permutation seeded with ``seed`` picks them) each move to a class
    drawn uniformly from the ``num_classes - 1`` others; ``labels`` is not changed. A ``rate`` at or above
    ``(C-1)/C`` is refused. The scenario grid draws its noisy labels here (no table round trip per draw).

    Example:
        >>> noisy = symmetric_label_noise(np.array([0, 1, 2, 0, 1, 2]), 0.5, 3, seed=0)
        >>> int((noisy != np.array([0, 1, 2, 0, 1, 2])).sum())
        3
    """
    rate = check_fraction("rate", rate)
    num_classes = check_int("num_classes", num_classes, 1)
    labels = np.asarray(labels)
    _check_symmetric_rate(rate, num_classes, labels.size)
    rng = np.random.default_rng(check_seed(seed))
    noisy = labels.copy()
    chosen = rng.permutation(labels.size)[: _floor_count(rate, labels.size)]
    if chosen.size:  # a shift in [1, C) mod C is uniform over the other classes, never the same
        noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=chosen.size)) % num_classes
    return noisy


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

    - ``kind="symmetric"``: exactly ``floor(rate * n)`` examples (the authors' count; a seeded
      permutation picks them) each get a label drawn uniformly from the *other* ``C - 1`` classes, so
      every picked label really changes and ``rate`` is the true corruption rate (up to the floor).
      ``rate`` must be below ``(C-1)/C`` (``C`` = number of classes; 0.5 for 2 classes, 0.667 for 3,
      0.9 for 10): at ``(C-1)/C`` a noisy label is uniform over all classes whatever the true one,
      so a higher rate is refused with a :class:`ValueError` before any work. ``rate=0`` is always
      allowed.
    - ``kind="asymmetric"``: class-pair flips ``c -> transition[c]`` (default ``c -> (c + 1) % C``);
      exactly ``floor(rate * n_eligible)`` of the examples whose class is flipped by ``transition``
      are changed (with the default transition every example is eligible); any ``rate`` in
      ``[0, 1]`` is allowed.

    The floor forgives floating-point error: ``0.29`` of 100 labels moves 29, although ``0.29 * 100``
    is ``28.999999999999996`` in floats.

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
        >>> add_label_noise(ds, 0.7)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: label noise rate=0.7 with 3 classes is not valid: at rate >= (C-1)/C = 0.667 ...; allowed: 0 <= rate < 0.667
    """  # noqa: E501
    rate = check_fraction("rate", rate)
    check_choice("kind", kind, LABEL_NOISE_KINDS)
    seed = check_seed(seed)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1)
    if transition is not None and kind != "asymmetric":
        raise ValueError(f"transition={transition!r} is only used with kind='asymmetric'; got kind={kind!r}")
    if label_column == CLEAN_LABEL_COLUMN:
        raise ValueError(
            f"label_column={label_column!r} is reserved for the clean labels; allowed: any other column"
        )

    def validate(ds: Dataset) -> tuple[np.ndarray, int, np.ndarray | None]:
        labels = integer_labels(ds, label_column)
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
            _check_symmetric_rate(rate, n_cls, labels.size)
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
                            f"transition entry {src!r}: {dst!r} is not allowed; allowed: class ids in [0, "
                            f"{n_cls})"
                        )
                mapping[int(src)] = int(dst)
        return labels, n_cls, mapping

    def work(ds: Dataset, checked: tuple[np.ndarray, int, np.ndarray | None]) -> Dataset:
        labels, n_cls, mapping = checked
        if kind == "symmetric":
            noisy = symmetric_label_noise(labels, rate, n_cls, seed)
        else:
            rng = np.random.default_rng(seed)
            noisy = labels.copy()
            eligible = np.flatnonzero(mapping[labels] != labels)
            chosen = rng.permutation(eligible)[: _floor_count(rate, eligible.size)]
            noisy[chosen] = mapping[labels[chosen]]
        feature = ds.features[label_column]
        if CLEAN_LABEL_COLUMN not in ds.column_names:
            ds = replace_column(ds, CLEAN_LABEL_COLUMN, labels, feature)
        return replace_column(ds, label_column, noisy, feature)

    return apply_to_splits(dataset, splits, ("train",), validate, work)
