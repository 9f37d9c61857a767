"""Tests for hf_monosem.scenarios: label/input/text noise, few-shot, domain shift, corruptions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import default_data_collator

from hf_monosem.scenarios import (
    CLEAN_LABEL_COLUMN,
    CORRUPTIONS,
    INDEX_COLUMN,
    add_image_corruption,
    add_image_noise,
    add_label_noise,
    add_text_noise,
    corrupt_images,
    few_shot,
    perturb_images,
    split_by_domain,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labelled() -> Dataset:
    rng = np.random.default_rng(123)
    features = Features({"x": Value("float32"), "label": ClassLabel(num_classes=NUM_CLASSES)})
    return Dataset.from_dict(
        {"x": rng.normal(size=1000).astype(np.float32), "label": rng.integers(0, NUM_CLASSES, 1000)},
        features=features,
    )


@pytest.fixture(scope="module")
def images() -> Dataset:
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "label": [i % 3 for i in range(12)]})


@pytest.fixture(scope="module")
def texts() -> Dataset:
    rows = [
        "the quick brown fox jumps over the lazy dog",
        "a plane landed late at the airport tonight",
        "my phone battery died again today",
        "",
        "driverless cars will change cities",
        "great service and friendly crew",
    ] * 5
    return Dataset.from_dict({"text": rows, "label": [i % 2 for i in range(len(rows))]})


def _snapshot(ds: Dataset) -> tuple:
    return ds.to_dict(), ds.column_names, ds._fingerprint, dict(ds.format)


# ---------------------------------------------------------------------------------------------
# label noise
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.4, 0.8999])  # 10 classes: rates below (C-1)/C = 0.9
def test_symmetric_noise_corrupts_exactly_rate_and_never_keeps_clean_label(labelled, rate):
    noisy = add_label_noise(labelled, rate, seed=3)
    y, clean = np.array(noisy["label"][:]), np.array(noisy[CLEAN_LABEL_COLUMN][:])
    np.testing.assert_array_equal(clean, labelled["label"][:])
    changed = y != clean
    assert changed.sum() == int(np.floor(rate * len(labelled)))
    # every selected example moved to another class: the count of differing labels is the selection
    assert y.min() >= 0 and y.max() < NUM_CLASSES
    assert noisy.features["label"] == labelled.features["label"]
    assert noisy.features[CLEAN_LABEL_COLUMN] == labelled.features["label"]
    assert noisy.column_names == ["x", "label", CLEAN_LABEL_COLUMN]


@pytest.mark.parametrize(
    "num_classes, n, rate, moved",
    # floor(n * rate), the authors' count: 2.1 -> 2, 1.3 -> 1, 2.9 -> 2, 4.9 -> 4 (not round, not half up),
    # and 0.29 * 100 (28.999999999999996 in floats) -> 29
    [
        (2, 7, 0.3, 2),
        (2, 13, 0.1, 1),
        (2, 10, 0.29, 2),
        (2, 10, 0.49, 4),
        (2, 100, 0.29, 29),
        (5, 7, 0.3, 2),
        (5, 7, 0.5, 3),
        (5, 5, 0.5, 2),
        (5, 9, 0.75, 6),
        (5, 100, 0.29, 29),
    ],
)
def test_symmetric_noise_moves_floor_n_rate_labels_each_to_another_class(n, rate, moved, num_classes):
    features = Features({"label": ClassLabel(num_classes=num_classes)})
    clean = np.arange(n) % num_classes
    for seed in range(3):
        noisy = add_label_noise(Dataset.from_dict({"label": clean}, features=features), rate, seed=seed)
        y = np.array(noisy["label"][:])
        changed = y != clean
        assert changed.sum() == moved  # exactly that many picked, and every picked label really moved
        assert ((y >= 0) & (y < num_classes)).all()
        if num_classes == 2:
            np.testing.assert_array_equal(y[changed], 1 - clean[changed])  # the other class is the only one


def test_symmetric_noise_is_uniform_over_other_classes(labelled):
    noisy = add_label_noise(labelled, 0.85, seed=0)  # the highest rates are refused: (C-1)/C = 0.9
    y, clean = np.array(noisy["label"][:]), np.array(noisy[CLEAN_LABEL_COLUMN][:])
    assert (y != clean).sum() == 850
    # pairs (clean, noisy) with clean != noisy: each off-diagonal target is about equally likely
    counts = np.bincount((y - clean) % NUM_CLASSES, minlength=NUM_CLASSES)
    assert counts[0] == 150  # exactly the unpicked examples keep their label
    assert counts[1:].min() > 0.6 * 850 / (NUM_CLASSES - 1)


def test_asymmetric_noise_follows_default_and_custom_transition(labelled):
    noisy = add_label_noise(labelled, 0.3, kind="asymmetric", seed=1)
    y, clean = np.array(noisy["label"][:]), np.array(noisy[CLEAN_LABEL_COLUMN][:])
    changed = y != clean
    assert changed.sum() == 300
    np.testing.assert_array_equal(y[changed], (clean[changed] + 1) % NUM_CLASSES)

    custom = add_label_noise(labelled, 0.5, kind="asymmetric", transition={2: 7, 7: 2}, seed=1)
    y, clean = np.array(custom["label"][:]), np.array(custom[CLEAN_LABEL_COLUMN][:])
    changed = y != clean
    eligible = np.isin(clean, [2, 7]).sum()
    assert changed.sum() == int(np.floor(0.5 * eligible))
    assert set(zip(clean[changed].tolist(), y[changed].tolist())) <= {(2, 7), (7, 2)}


def test_label_noise_does_not_mutate_input_and_is_seeded(labelled):
    before = _snapshot(labelled)
    a = add_label_noise(labelled, 0.4, seed=5)
    b = add_label_noise(labelled, 0.4, seed=5)
    c = add_label_noise(labelled, 0.4, seed=6)
    assert _snapshot(labelled) == before
    assert a["label"][:] == b["label"][:]
    assert a["label"][:] != c["label"][:]


def test_label_noise_keeps_existing_clean_label_and_handles_plain_ints(labelled):
    once = add_label_noise(labelled, 0.5, seed=0)
    twice = add_label_noise(once, 0.5, seed=1)
    assert twice[CLEAN_LABEL_COLUMN][:] == labelled["label"][:]
    assert twice.column_names.count(CLEAN_LABEL_COLUMN) == 1
    plain = Dataset.from_dict({"label": [0, 1, 2, 3] * 5})  # Value("int64"), classes from max + 1
    noisy = add_label_noise(plain, 0.5, seed=0)
    assert (np.array(noisy["label"][:]) != np.array(plain["label"][:])).sum() == 10


def test_label_noise_on_datasetdict_defaults_to_train(labelled):
    dd = DatasetDict(train=labelled, test=labelled.select(range(100)))
    noisy = add_label_noise(dd, 0.5, seed=0)
    assert CLEAN_LABEL_COLUMN in noisy["train"].column_names
    assert noisy["test"] is dd["test"]
    both = add_label_noise(dd, 0.5, seed=0, splits=["train", "test"])
    assert both["train"]["label"][:] == noisy["train"]["label"][:]  # same seed per split
    assert CLEAN_LABEL_COLUMN in both["test"].column_names


# ---------------------------------------------------------------------------------------------
# few-shot and domain shift
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 20])
def test_few_shot_returns_exactly_k_per_class(labelled, k):
    subset = few_shot(labelled, k, seed=0)
    counts = np.bincount(subset["label"][:], minlength=NUM_CLASSES)
    assert counts.tolist() == [k] * NUM_CLASSES
    assert few_shot(labelled, k, seed=0)["x"][:] == subset["x"][:]
    assert len(labelled) == 1000  # input untouched


def test_few_shot_is_seeded_and_nested(labelled):
    five, ten = few_shot(labelled, 5, seed=2), few_shot(labelled, 10, seed=2)
    assert set(five["x"][:]) <= set(ten["x"][:])
    assert set(few_shot(labelled, 5, seed=3)["x"][:]) != set(five["x"][:])


def test_few_shot_raises_naming_short_class():
    ds = Dataset.from_dict({"label": [0] * 5 + [1] * 2 + [2] * 6})
    with pytest.raises(ValueError, match=r"class 1 has 2"):
        few_shot(ds, 3)
    declared = Dataset.from_dict(
        {"label": [0, 0, 1, 1]}, features=Features({"label": ClassLabel(names=["neg", "pos", "neutral"])})
    )
    with pytest.raises(ValueError, match=r"class 2 \('neutral'\) has 0"):
        few_shot(declared, 1)


def test_split_by_domain_values_and_lists():
    ds = Dataset.from_dict({"topic": ["air", "apple", "air", "cars", "apple"], "label": [0, 1, 0, 1, 1]})
    dd = split_by_domain(ds, "topic", "air", ["apple", "cars"])
    assert dd["train"]["topic"][:] == ["air", "air"]
    assert dd["test"]["topic"][:] == ["apple", "cars", "apple"]
    with pytest.raises(ValueError, match="'boats'"):
        split_by_domain(ds, "topic", "air", "boats")
    with pytest.raises(ValueError, match="share"):
        split_by_domain(ds, "topic", ["air", "apple"], "apple")


# ---------------------------------------------------------------------------------------------
# image noise and corruptions
# ---------------------------------------------------------------------------------------------
def test_perturb_images_statistics_and_generator():
    x = torch.zeros(4, 3, 32, 32)
    g = perturb_images(x, "gaussian", 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g, perturb_images(x, "gaussian", 0.5, generator=torch.Generator().manual_seed(0)))
    assert abs(float(g.std()) - 0.5) < 0.03 and torch.equal(x, torch.zeros_like(x))
    u = perturb_images(x, "uniform", 0.6, generator=torch.Generator().manual_seed(0))
    assert float(u.min()) >= 0 and float(u.max()) < 0.6 and abs(float(u.mean()) - 0.3) < 0.02


def test_image_noise_is_deterministic_by_seed_and_example(images):
    before = _snapshot(images)
    noisy = add_image_noise(images, "gaussian", 0.3, seed=0)
    first = noisy[:]["pixel_values"]
    clean = torch.tensor(images["pixel_values"][:])
    assert isinstance(first, torch.Tensor) and first.shape == clean.shape
    assert abs(float((first - clean).std()) - 0.3) < 0.05
    assert torch.equal(first, noisy[:]["pixel_values"])  # same every read
    assert torch.equal(noisy[5]["pixel_values"], first[5])  # row read == batch read
    shuffled = noisy.shuffle(seed=1)  # noise follows the example, not its position
    order = torch.tensor(shuffled.with_format(None)[INDEX_COLUMN][:])
    assert torch.equal(shuffled[:]["pixel_values"], first[order])
    assert torch.equal(add_image_noise(images, "gaussian", 0.3, seed=0)[:]["pixel_values"], first)
    assert not torch.equal(add_image_noise(images, "gaussian", 0.3, seed=1)[:]["pixel_values"], first)
    assert _snapshot(images) == before
    # Trainer's remove_unused_columns drops the index column: noise is then keyed on content, so it
    # follows each image wherever it sits, and one image read alone gets the noise it gets in a batch
    dropped = noisy.remove_columns([INDEX_COLUMN])
    keyed = dropped[:]["pixel_values"]
    assert not torch.equal(keyed, clean) and abs(float((keyed - clean).std()) - 0.3) < 0.05
    order = [7, 2, 11, 0]
    rebuilt = add_image_noise(images, "gaussian", 0.3, seed=0).remove_columns([INDEX_COLUMN])
    assert torch.equal(rebuilt.select(order)[:]["pixel_values"], keyed[order])
    assert torch.equal(dropped[4]["pixel_values"], keyed[4])
    other_seed = add_image_noise(images, "gaussian", 0.3, seed=1).remove_columns([INDEX_COLUMN])
    assert not torch.equal(other_seed[:]["pixel_values"], keyed)


def test_uniform_image_noise_range_and_dataloader(images):
    noisy = add_image_noise(images, "uniform", 0.5, seed=0)
    delta = noisy[:]["pixel_values"] - torch.tensor(images["pixel_values"][:])
    assert float(delta.min()) >= -1e-6 and float(delta.max()) < 0.5 + 1e-6
    loader = torch.utils.data.DataLoader(noisy, batch_size=5, collate_fn=default_data_collator)
    batches = list(loader)
    assert batches[0]["pixel_values"].shape == (5, 3, 8, 8) and batches[0]["labels"].tolist() == [
        0,
        1,
        2,
        0,
        1,
    ]
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), noisy[:]["pixel_values"])


def test_image_noise_chains_after_existing_transform():
    raw = Dataset.from_dict({"raw": [[float(i)] * 16 for i in range(6)], "label": [0, 1, 0, 1, 0, 1]})

    def preprocess(batch):
        return {"pixel_values": torch.tensor(batch["raw"]).view(-1, 1, 4, 4), "label": batch["label"]}

    ds = raw.with_transform(preprocess)
    noisy = add_image_noise(ds, "gaussian", 0.1, seed=0)
    out = noisy[:]
    assert out["pixel_values"].shape == (6, 1, 4, 4) and out["label"] == [0, 1, 0, 1, 0, 1]
    assert torch.equal(noisy[2]["pixel_values"], out["pixel_values"][2])
    assert abs(float((out["pixel_values"] - preprocess(raw[:])["pixel_values"]).std()) - 0.1) < 0.05


def test_image_noise_on_datasetdict_and_strength_zero(images):
    dd = DatasetDict(train=images, test=images.select(range(4)))
    noisy = add_image_noise(dd, "uniform", 0.2, seed=0)
    assert set(noisy) == {"train", "test"}
    assert torch.equal(noisy["test"][:]["pixel_values"], noisy["train"][:4]["pixel_values"])
    only_test = add_image_noise(dd, "uniform", 0.2, seed=0, splits="test")
    assert only_test["train"] is dd["train"]
    same = add_image_noise(images, "gaussian", 0.0)[:]["pixel_values"]
    assert torch.equal(same, torch.tensor(images["pixel_values"][:]))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_images_all_severities(corruption):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    changes = []
    for severity in range(1, 6):
        out = corrupt_images(x, corruption, severity, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and torch.isfinite(out).all()
        changes.append(float((out - x).abs().mean()))
    assert torch.equal(x, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert min(changes) > 0
    if corruption in ("gaussian_blur", "contrast", "invert", "elastic"):
        assert changes == sorted(changes)  # more severe, more change
    assert (
        corrupt_images(x[0], corruption, 3, generator=torch.Generator().manual_seed(0)).shape == x.shape[1:]
    )


def test_full_inversion_and_elastic_dataset_determinism(images):
    x = torch.randn(1, 1, 8, 8)
    flat = x.flatten()
    assert torch.allclose(corrupt_images(x, "invert", 5).flatten(), flat.min() + flat.max() - flat)
    warped = add_image_corruption(images, "elastic", 4, seed=0)
    # the random warp of an image depends on (seed, example) only: a rebuilt dataset, a reordered one and a
    # single-row read all give each image the same warp
    first = warped[:]["pixel_values"]
    assert not torch.allclose(first, torch.tensor(images["pixel_values"][:]))
    order = [5, 0, 9, 3]
    assert torch.equal(
        add_image_corruption(images, "elastic", 4, seed=0).select(order)[:]["pixel_values"], first[order]
    )
    assert torch.equal(warped[6]["pixel_values"], first[6])
    assert not torch.equal(
        warped[:]["pixel_values"], add_image_corruption(images, "elastic", 4, seed=1)[:]["pixel_values"]
    )
    blurred = add_image_corruption(images, "gaussian_blur", 2)
    assert INDEX_COLUMN not in blurred.column_names  # deterministic corruptions need no index
    expected = corrupt_images(torch.tensor(images["pixel_values"][:]), "gaussian_blur", 2)
    assert torch.allclose(blurred[:]["pixel_values"], expected)


# ---------------------------------------------------------------------------------------------
# text noise
# ---------------------------------------------------------------------------------------------
def _words(ds: Dataset) -> list[list[str]]:
    return [t.split() for t in ds["text"][:]]


def test_text_deletion_removes_exact_share_and_is_seeded(texts):
    before = _snapshot(texts)
    total = sum(len(w) for w in _words(texts))
    noisy = add_text_noise(texts, "delete", 0.3, seed=0)
    assert total - sum(len(w) for w in _words(noisy)) == int(np.floor(0.3 * total + 0.5))
    assert all(not o or n for o, n in zip(_words(texts), _words(noisy)))  # no text emptied
    assert noisy["text"][:] == add_text_noise(texts, "delete", 0.3, seed=0)["text"][:]
    assert noisy["text"][:] != add_text_noise(texts, "delete", 0.3, seed=1)["text"][:]
    assert add_text_noise(texts, "typo", 0.0)["text"][:] == texts["text"][:]
    assert _snapshot(texts) == before


def test_text_substitution_uses_own_vocabulary(texts):
    vocab = {w for ws in _words(texts) for w in ws}
    total = sum(len(w) for w in _words(texts))
    noisy = add_text_noise(texts, "substitute", 0.5, seed=0)
    changed = 0
    for old, new in zip(_words(texts), _words(noisy)):
        assert len(old) == len(new) and set(new) <= vocab
        changed += sum(a != b for a, b in zip(old, new))
    assert changed == int(np.floor(0.5 * total + 0.5))


def _one_edit(a: str, b: str) -> bool:
    """``b`` is ``a`` with exactly one character edit: a substitution by another character, a deletion,
    an insertion, or a swap of two adjacent different characters."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swap = (
            len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
        )
        return len(diff) == 1 or swap
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def test_one_edit_checker():
    assert (
        _one_edit("cat", "cut")
        and _one_edit("cat", "act")
        and _one_edit("cat", "ca")
        and _one_edit("at", "cat")
    )
    assert not _one_edit("cat", "cat") and not _one_edit("cat", "dog") and not _one_edit("cat", "tac")
    assert not _one_edit("cat", "cuts") and not _one_edit("cat", "c")


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_text_typos_make_exactly_one_edit_in_each_picked_word(texts, rate):
    words = _words(texts)
    total = sum(len(w) for w in words)
    noisy = _words(add_text_noise(texts, "typo", rate, seed=0))
    changed = 0
    for old, new in zip(words, noisy):
        assert len(old) == len(new)
        for a, b in zip(old, new):
            assert a == b or _one_edit(a, b), (a, b)
            changed += a != b
    assert changed == int(np.floor(rate * total + 0.5))  # every picked word changed, no other


def test_typos_of_words_with_double_letters_still_change_them():
    """A swap of two equal letters ("ll") would change nothing: such a word still gets its one edit."""
    doubled = Dataset.from_dict({"text": ["aa bb llama bookkeeper see ll"] * 20})
    noisy = add_text_noise(doubled, "typo", 1.0, seed=0)
    for old, new in zip(_words(doubled), _words(noisy)):
        assert all(_one_edit(a, b) for a, b in zip(old, new)), list(zip(old, new))


# ---------------------------------------------------------------------------------------------
# argument validation: ValueError naming the bad value, before any work
# ---------------------------------------------------------------------------------------------
BAD_CALLS = [
    ("rate=1.5", lambda d: add_label_noise(d["labelled"], 1.5)),
    ("rate=-0.1", lambda d: add_label_noise(d["labelled"], -0.1)),
    ("rate=0.9 with 10 classes", lambda d: add_label_noise(d["labelled"], 0.9)),  # symmetric: rate < (C-1)/C
    ("kind='pairflip'", lambda d: add_label_noise(d["labelled"], 0.1, kind="pairflip")),
    ("'nope'", lambda d: add_label_noise(d["labelled"], 0.1, label_column="nope")),
    ("'x'", lambda d: add_label_noise(d["labelled"], 0.1, label_column="x")),  # float labels
    (
        "transition entry 3: 99",
        lambda d: add_label_noise(d["labelled"], 0.1, kind="asymmetric", transition={3: 99}),
    ),
    ("k=0", lambda d: few_shot(d["labelled"], 0)),
    ("'nope'", lambda d: few_shot(d["labelled"], 2, label_column="nope")),
    ("kind='salt'", lambda d: add_image_noise(d["images"], "salt", 0.1)),
    ("strength=-1", lambda d: add_image_noise(d["images"], "gaussian", -1)),
    ("'pix'", lambda d: add_image_noise(d["images"], "gaussian", 0.1, image_column="pix")),
    ("kind='swap'", lambda d: add_text_noise(d["texts"], "swap", 0.1)),
    ("rate=2", lambda d: add_text_noise(d["texts"], "delete", 2)),
    ("'body'", lambda d: add_text_noise(d["texts"], "delete", 0.1, text_column="body")),
    ("'label'", lambda d: add_text_noise(d["texts"], "delete", 0.1, text_column="label")),
    ("severity=6", lambda d: corrupt_images(torch.zeros(1, 3, 8, 8), "contrast", 6)),
    ("severity=0", lambda d: add_image_corruption(d["images"], "rotate", 0)),
    ("corruption='fog'", lambda d: corrupt_images(torch.zeros(1, 3, 8, 8), "fog", 1)),
    ("kind='pink'", lambda d: perturb_images(torch.zeros(2), "pink", 0.1)),
    ("'region'", lambda d: split_by_domain(d["labelled"], "region", 0, 1)),
    ("splits=['valid']", lambda d: add_label_noise(DatasetDict(train=d["labelled"]), 0.1, splits=["valid"])),
]


@pytest.mark.parametrize(("expected", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_value_error_naming_value(labelled, images, texts, expected, call):
    with pytest.raises(ValueError, match=re.escape(expected)):
        call({"labelled": labelled, "images": images, "texts": texts})
