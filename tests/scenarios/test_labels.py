"""add_label_noise as the paper does it: floor(N r) labels moved, each to another class, and symmetric
rates at or above (C-1)/C (where the noisy labels say nothing about the true class) refused up front."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features

from hf_monosem.scenarios import CLEAN_LABEL_COLUMN, add_label_noise, grid
from hf_monosem.scenarios import labels as labels_module


def _table(n: int, num_classes: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    features = Features({"label": ClassLabel(num_classes=num_classes)})
    return Dataset.from_dict({"label": rng.integers(0, num_classes, n)}, features=features)


def _moved(noisy: Dataset) -> np.ndarray:
    return np.array(noisy["label"][:]) != np.array(noisy[CLEAN_LABEL_COLUMN][:])


# ---------------------------------------------------------------------------------------------
# the count: floor(N r), every picked label moved
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, rate, num_classes",
    # N r = 3.5, 6.6, 9.99, 11.7, 0.9, 34.65, 499.95: the fraction is dropped, never rounded (half) up
    [(7, 0.5, 3), (11, 0.6, 3), (37, 0.27, 2), (13, 0.9, 11), (3, 0.3, 2), (99, 0.35, 10), (1111, 0.45, 4)],
)
def test_symmetric_noise_moves_exactly_floor_n_rate_labels(n, rate, num_classes):
    expected = math.floor(n * rate)
    assert expected == math.floor(n * rate + 0.5) - 1  # each case tells floor from rounding
    ds = _table(n, num_classes, seed=n)
    for seed in range(4):
        moved = _moved(add_label_noise(ds, rate, seed=seed))
        assert moved.sum() == expected, (n, rate, seed)


@pytest.mark.parametrize(
    "n, rate, expected", [(100, 0.29, 29), (100, 0.57, 57), (1000, 0.58, 580), (3, 1 / 3, 1)]
)
def test_the_floor_forgives_floating_point_error(n, rate, expected):
    """0.29 * 100 is 28.999999999999996 in floats: the count is still 29 (floor of the real product)."""
    assert _moved(add_label_noise(_table(n, 10), rate, seed=0)).sum() == expected


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_every_moved_label_differs_from_its_original_and_stays_a_class(num_classes):
    """The picked rows are those of the seeded permutation; each of them, and only they, changes class."""
    n, rate = 200, 0.4
    ds = _table(n, num_classes, seed=num_classes)
    clean = np.array(ds["label"][:])
    for seed in range(5):
        noisy = np.array(add_label_noise(ds, rate, seed=seed)["label"][:])
        picked = np.random.default_rng(seed).permutation(n)[: math.floor(n * rate)]
        assert (noisy[picked] != clean[picked]).all()
        rest = np.setdiff1d(np.arange(n), picked)
        np.testing.assert_array_equal(noisy[rest], clean[rest])
        assert ((noisy >= 0) & (noisy < num_classes)).all()


def test_asymmetric_noise_counts_with_the_floor_too_and_keeps_every_rate():
    ds = Dataset.from_dict({"label": list(range(7))}, features=Features({"label": ClassLabel(num_classes=7)}))
    assert _moved(add_label_noise(ds, 0.5, kind="asymmetric", seed=0)).sum() == 3  # 3.5 -> 3
    # custom transition: 5 eligible rows (classes 2 and 3), 0.5 of them -> 2
    five = Dataset.from_dict(
        {"label": [2, 3, 2, 3, 2, 0, 1]}, features=Features({"label": ClassLabel(num_classes=4)})
    )
    assert _moved(add_label_noise(five, 0.5, kind="asymmetric", transition={2: 3, 3: 2}, seed=0)).sum() == 2
    # pair flips are not refused at high rates (their semantics are unchanged): every label flips at rate 1
    noisy = add_label_noise(ds, 1.0, kind="asymmetric", seed=0)
    np.testing.assert_array_equal(noisy["label"][:], [(c + 1) % 7 for c in range(7)])


# ---------------------------------------------------------------------------------------------
# the refusal: symmetric rate >= (C-1)/C
# ---------------------------------------------------------------------------------------------
LIMITS = {2: "0.5", 3: "0.667", 10: "0.9"}


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_rates_at_and_above_c_minus_1_over_c_are_refused_naming_value_and_range(num_classes):
    limit = (num_classes - 1) / num_classes
    ds = _table(60, num_classes)
    for rate in (limit, limit + 1e-9, (limit + 1) / 2, 1.0):
        with pytest.raises(ValueError) as err:
            add_label_noise(ds, rate, seed=0)
        message = str(err.value)
        assert f"rate={rate!r} with {num_classes} classes is not valid" in message
        assert f"(C-1)/C = {LIMITS[num_classes]}" in message
        assert f"allowed: 0 <= rate < {LIMITS[num_classes]}" in message


def test_the_example_message():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "label noise rate=0.7 with 3 classes is not valid: at rate >= (C-1)/C = 0.667 the noisy labels "
            "carry no signal about the true class"
        ),
    ) as err:
        add_label_noise(_table(30, 3), 0.7)
    assert str(err.value).endswith("allowed: 0 <= rate < 0.667")


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_rates_just_below_c_minus_1_over_c_and_zero_are_accepted(num_classes):
    limit = (num_classes - 1) / num_classes
    ds = _table(1000, num_classes)
    for rate in (0.0, limit - 1e-3, limit - 1e-6):
        moved = _moved(add_label_noise(ds, rate, seed=1))
        assert moved.sum() == math.floor(1000 * rate)


@pytest.mark.parametrize("how", ["class_label", "num_classes", "max_label_plus_one"])
def test_the_number_of_classes_comes_from_wherever_add_label_noise_reads_it(how):
    """C from the ClassLabel, from num_classes=, or from max(label) + 1 on plain ints: all refuse at
    (C-1)/C."""
    if how == "class_label":
        ds, kwargs = _table(30, 3), {}
    elif how == "num_classes":
        ds, kwargs = Dataset.from_dict({"label": [0, 1] * 15}), {"num_classes": 3}
    else:
        ds, kwargs = Dataset.from_dict({"label": [0, 1, 2] * 10}), {}
    with pytest.raises(ValueError, match=r"rate=0\.7 with 3 classes"):
        add_label_noise(ds, 0.7, **kwargs)
    assert _moved(add_label_noise(ds, 0.6, **kwargs)).sum() == 18


def test_one_class_refuses_any_positive_rate_and_accepts_zero():
    ds = Dataset.from_dict({"label": [0] * 10})
    with pytest.raises(ValueError, match=r"num_classes=1 is not allowed for symmetric noise at rate=0\.05"):
        add_label_noise(ds, 0.05)
    assert add_label_noise(ds, 0.0)["label"][:] == [0] * 10


def test_the_refusal_comes_before_any_work(monkeypatch):
    """With one good and one bad split nothing is computed: no column written, no random number drawn."""

    def no_work(*args, **kwargs):
        raise AssertionError("add_label_noise did work before refusing the rate")

    dd = DatasetDict(train=_table(30, 10), test=_table(30, 3))  # 0.7 < 0.9 for train, >= 0.667 for test
    monkeypatch.setattr(labels_module, "replace_column", no_work)
    monkeypatch.setattr(labels_module.np.random, "default_rng", no_work)
    with pytest.raises(ValueError, match=r"rate=0\.7 with 3 classes"):
        add_label_noise(dd, 0.7, splits=["train", "test"])


def test_the_grid_passes_the_refusal_on():
    """noisy_label_draws (the probe and fine-tune grids) draws through add_label_noise: 0.8 on 3 classes
    fails."""
    labels = torch.tensor([0, 1, 2] * 4)
    with pytest.raises(ValueError, match=r"rate=0\.8 with 3 classes"):
        grid.noisy_label_draws(labels, ClassLabel(num_classes=3), [0.0, 0.4, 0.8], [0])
    draws = grid.noisy_label_draws(labels, ClassLabel(num_classes=3), [0.0, 0.4, 0.6], [0])
    assert (draws != labels).sum(1).tolist() == [0, 4, 7]  # floor(12 r)
