"""Datasets by name (the built-in offline ones, a ``save_to_disk`` folder or a Hub id), ready for a
classifier.

:func:`load_dataset_by_name` is what a training script calls with its ``--dataset_name``: a name of
:data:`BUILTIN_DATASETS` (offline, from installed packages, see :mod:`hf_monosem.data.assets`), a
folder saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or any ``datasets`` Hub
id. It returns a :class:`datasets.DatasetDict` whose label column is named ``label``
(:data:`LABEL_COLUMN`) and the modality (``"text"`` or ``"image"``). :func:`preprocess` then
tokenises text, or turns Hub images into ``pixel_values`` with the backbone's image processor.

Example:
    >>> data, modality = load_dataset_by_name("digits", max_train_samples=100, seed=0)
    >>> modality, len(data["train"]), sorted(data)
    ('image', 100, ['test', 'test_shifted', 'train'])
    >>> label_names(data["train"])[:3], image_channels(data["train"])
    (['0', '1', '2'], 1)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from huggingface_hub.errors import HFValidationError

from . import assets

__all__ = [
    "BUILTIN_DATASETS",
    "LABEL_COLUMN",
    "BuiltinDataset",
    "ensure_padding_token",
    "image_channels",
    "label_names",
    "load_dataset_by_name",
    "preprocess",
    "subsample",
]

#: the label column of every dataset :func:`load_dataset_by_name` returns. The Trainer keeps only
#: forward arguments and columns named ``label`` / ``labels`` / ``label_ids``; the collators turn
#: ``label`` into the model's ``labels``.
LABEL_COLUMN = "label"


class BuiltinDataset(NamedTuple):
    """One entry of :data:`BUILTIN_DATASETS`."""

    modality: str  #: "text" or "image"
    load: Callable[
        [int], DatasetDict
    ]  #: seed -> the dataset (the seed draws the splits where they are random)
    description: str


#: the offline datasets, by the name a script's ``--dataset_name`` uses
BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "tweets": BuiltinDataset(
        "text",
        lambda seed: assets.load_tweets(seed=seed),
        "sentiment tweets, 3 classes, with a domain column (assets.load_tweets)",
    ),
    "20newsgroups": BuiltinDataset(
        "text", lambda seed: assets.load_20newsgroups(), "20 Newsgroups bydate (assets.load_20newsgroups)"
    ),
    "reuters_r8": BuiltinDataset(
        "text", lambda seed: assets.load_reuters_r8(), "Reuters-21578 R8 (assets.load_reuters_r8)"
    ),
    "newsgroups_shift": BuiltinDataset(
        "text",
        lambda seed: assets.newsgroups_domain_shift(),
        "computers vs recreation with a test_shifted split (assets.newsgroups_domain_shift)",
    ),
    "fashion_mnist": BuiltinDataset(
        "image", lambda seed: assets.load_fashion_mnist(), "Fashion-MNIST 28x28 (assets.load_fashion_mnist)"
    ),
    "digits": BuiltinDataset(
        "image",
        lambda seed: assets.load_digits_domain_shift(seed=seed),
        "UCI digits 8x8 with an MNIST test_shifted split (assets.load_digits_domain_shift)",
    ),
}


def load_dataset_by_name(
    name: str,
    config_name: str | None = None,
    *,
    train_split: str = "train",
    eval_split: str = "test",
    text_column: str = "text",
    label_column: str = LABEL_COLUMN,
    image_column: str = "img",
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> tuple[DatasetDict, str]:
    """Load ``name`` as a DatasetDict for classification; return it and its modality (``"text"``/``"image"``).

    ``name``: a key of :data:`BUILTIN_DATASETS`, a folder saved with ``save_to_disk`` or a ``datasets``
    Hub id (with ``config_name``); a dataset that is not a built-in is ``"text"`` when its
    ``train_split`` has ``text_column``, ``"image"`` when it has ``image_column``, an ``Image`` feature or
    ``pixel_values``; one with string columns but neither is refused, naming ``text_column`` (the
    examples' ``--text_column``) and its string columns. ``train_split`` and ``eval_split`` must
    exist and ``label_column`` must be a column; a ``label_column`` other than ``label`` is renamed to
    ``label`` (an existing ``label`` column is dropped), so the returned label column is always
    :data:`LABEL_COLUMN`. ``max_train_samples`` keeps that many training rows and
    ``max_eval_samples`` that many rows of every other split, drawn by :func:`subsample` with ``seed``
    (``None`` or 0: all). Every failure is a ``ValueError`` naming what is allowed.

    Example:
        >>> load_dataset_by_name("./no_such_folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: dataset './no_such_folder' is not a built-in (tweets, 20newsgroups, ...
    """
    if name in BUILTIN_DATASETS:
        entry = BUILTIN_DATASETS[name]
        data, modality = entry.load(seed), entry.modality
    else:
        try:
            data = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, config_name)
        except (FileNotFoundError, ConnectionError, HFValidationError) as error:
            # not on the Hub (DatasetNotFoundError is a FileNotFoundError), offline, or not a valid Hub id
            raise ValueError(
                f"dataset {name!r} is not a built-in ({', '.join(BUILTIN_DATASETS)}), a folder saved with "
                f"save_to_disk, or a dataset the Hub has: {error}"
            ) from error
        if not isinstance(data, DatasetDict):
            data = DatasetDict({train_split: data})
        modality = None  # from the columns, once the splits are checked
    for split in (train_split, eval_split):
        if split not in data:
            raise ValueError(f"split {split!r} not in dataset {name!r}; it has {sorted(data)}")
    modality = modality or _modality_of(data[train_split], name, text_column, image_column)
    columns = data[train_split].column_names
    if label_column not in columns:
        raise ValueError(f"label column {label_column!r} not in dataset {name!r}; columns: {columns}")
    if label_column != LABEL_COLUMN:
        data = data.remove_columns([c for c in [LABEL_COLUMN] if c in columns])
        data = data.rename_column(label_column, LABEL_COLUMN)
    data = DatasetDict(data)  # a copy: the subsampling below must not change a cached built-in
    for split in data:
        limit = max_train_samples if split == train_split else max_eval_samples
        if limit:
            data[split] = subsample(data[split], limit, seed)
    return data, modality


def _modality_of(split: Dataset, name: str, text_column: str, image_column: str) -> str:
    """``"text"`` or ``"image"`` from the columns of a dataset that is not a built-in (``ValueError`` if
    neither)."""
    features = split.features
    if text_column in features:
        return "text"
    images = [c for c, f in features.items() if isinstance(f, ImageFeature)]
    if image_column in features or images or "pixel_values" in features:
        return "image"
    strings = [
        c for c, f in features.items() if isinstance(f, Value) and f.dtype in ("string", "large_string")
    ]
    if strings:
        raise ValueError(
            f"dataset {name!r} has no text column {text_column!r} (text_column=, --text_column in the "
            f"examples): its string columns are {strings}; pass the one that holds the text, e.g. "
            f"--text_column {strings[0]}"
        )
    raise ValueError(
        f"dataset {name!r} has neither a text column {text_column!r} (--text_column) nor an image column "
        f"{image_column!r} (--image_column); its columns: {list(features)}"
    )


def subsample(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` rows drawn uniformly at random (seeded), kept in their original order; all rows if fewer.

    Not simply the first ``n`` rows: several built-in splits are sorted by class (20 Newsgroups,
    Reuters, ``newsgroups_shift``, the MNIST ``test_shifted`` split of ``digits``), so their first
    rows would hold one or two classes only.

    Example:
        >>> sorted_by_class = Dataset.from_dict({"label": [0] * 50 + [1] * 50})
        >>> picked = subsample(sorted_by_class, 10, seed=0)
        >>> len(picked), sorted(set(picked["label"]))
        (10, [0, 1])
    """
    if n >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    return dataset.select(rows)


def label_names(dataset: Dataset, label_column: str = LABEL_COLUMN) -> list[str]:
    """The class names of ``label_column``: its ``ClassLabel`` names, else ``"0"`` .. the largest id.

    Example:
        >>> label_names(Dataset.from_dict({"label": [2, 0, 1]}))
        ['0', '1', '2']
    """
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[:][label_column])
    return [str(i) for i in range(int(labels.max()) + 1)]


def image_channels(dataset: Dataset) -> int:
    """Channels of a dataset with a ``pixel_values`` column (the built-in image datasets), 3 for anything
    else (Hub images, converted to RGB by :func:`preprocess`)."""
    if "pixel_values" in dataset.column_names:
        return int(np.asarray(dataset.with_format("numpy")[0]["pixel_values"]).shape[0])
    return 3


def preprocess(
    data: DatasetDict,
    modality: str,
    backbone: str | None,
    *,
    text_column: str = "text",
    image_column: str = "img",
    label_column: str = LABEL_COLUMN,
    max_length: int = 64,
    augment_split: str | None = None,
    loading_kwargs: dict[str, Any] | None = None,
) -> tuple[DatasetDict, Any]:
    """Model inputs for every split; returns ``(data, tokenizer_or_image_processor)``.

    Text: tokenised with ``backbone``'s tokenizer (truncated to ``max_length``; pad in the collator,
    e.g. ``DataCollatorWithPadding``). A tokenizer without a padding token (decoder LMs such as
    Llama 3 ship none) pads with its end-of-sequence token, with a warning, as transformers' examples
    do; the attention mask keeps those pads out of every pooled vector. Images already held as
    ``pixel_values`` (the built-ins) are returned in torch format with ``None`` as the processor.
    Other images (PIL, in ``image_column``) are converted to RGB and resized / normalised on the fly
    by ``backbone``'s image processor; they are kept in a column named ``pixel_values``, which the
    Trainer keeps as a forward argument. The rows of ``augment_split`` (the training split) are also
    augmented on the fly, as in transformers' ``run_image_classification.py``: a random resized crop
    (scale 0.08-1) back to the processor's size and a random horizontal flip (kornia, drawn from
    torch's random state). ``loading_kwargs`` (``revision``, ``token``, ``trust_remote_code``,
    ``cache_dir``; others are ignored) go to ``from_pretrained`` of the tokenizer / processor.

    Example:
        >>> from hf_monosem.data import minilm_path
        >>> text = DatasetDict(train=Dataset.from_dict({"text": ["great flight"], "label": [2]}))
        >>> tokens, tokenizer = preprocess(text, "text", minilm_path())
        >>> sorted(tokens["train"].column_names)
        ['attention_mask', 'input_ids', 'label', 'text', 'token_type_ids']
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    fetch = {
        k: v
        for k, v in (loading_kwargs or {}).items()
        if k in ("revision", "token", "trust_remote_code", "cache_dir") and v is not None
    }
    if modality == "text":
        tokenizer = AutoTokenizer.from_pretrained(backbone, **fetch)
        ensure_padding_token(tokenizer)

        def tokenize(batch):
            return tokenizer(batch[text_column], truncation=True, max_length=max_length)

        return data.map(tokenize, batched=True, desc="tokenizing"), tokenizer
    columns = next(iter(data.values())).column_names
    if "pixel_values" in columns:  # built-in image datasets are already normalised tensors
        return data.with_format("torch"), None
    if backbone is None:
        raise ValueError(
            "images that are not pixel_values tensors need a backbone (its image processor resizes "
            "and normalises them): pass --model_name_or_path"
        )
    if image_column not in columns:
        raise ValueError(f"image column {image_column!r} not in the dataset; columns: {columns}")
    processor = AutoImageProcessor.from_pretrained(backbone, **fetch)
    data = data.rename_column(image_column, "pixel_values")

    def transform(batch, augment=None):
        images = [image.convert("RGB") for image in batch["pixel_values"]]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        out = {"pixel_values": augment(pixels) if augment is not None else pixels}
        if label_column in batch:  # absent when only the model inputs were selected
            out[label_column] = batch[label_column]
        return out

    for split in data:
        augment = _train_augmentation(processor) if split == augment_split else None
        data[split].set_transform(lambda batch, augment=augment: transform(batch, augment))
    return data, processor


def _train_augmentation(processor: Any) -> Callable:
    """Random resized crop (back to the processor's output size) + horizontal flip, on a pixel batch."""
    import kornia.augmentation as K
    import torch

    crop, flip = {}, K.RandomHorizontalFlip()

    def augment(pixels):
        size = tuple(pixels.shape[-2:])
        if size not in crop:
            crop[size] = K.RandomResizedCrop(size, scale=(0.08, 1.0))
        with torch.no_grad():
            return flip(crop[size](pixels)).to(pixels.dtype)

    return augment


def ensure_padding_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a padding token its end-of-sequence token as one (with a warning), as
    transformers' examples do for decoder LMs such as Llama 3; a tokenizer with neither is refused.

    Pads never reach a feature: every pooling reads the attention mask (``last`` takes the last
    non-pad position, left or right padded alike).

    Example:
        >>> from types import SimpleNamespace
        >>> import warnings
        >>> tok = SimpleNamespace(pad_token=None, eos_token="</s>", name_or_path="org/decoder")
        >>> with warnings.catch_warnings(record=True):
        ...     ensure_padding_token(tok).pad_token
        '</s>'
    """
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    eos = getattr(tokenizer, "eos_token", None)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if eos is None:
        raise ValueError(
            f"the tokenizer of {name!r} has neither a padding token nor an end-of-sequence token to pad "
            f"with; "
            "set tokenizer.pad_token (or add one with tokenizer.add_special_tokens) before padding batches"
        )
    warnings.warn(
        f"the tokenizer of {name!r} has no padding token: padding with its end-of-sequence token {eos!r} "
        "(as transformers' examples do); the attention mask keeps the pads out of every feature",
        UserWarning,
        stacklevel=2,
    )
    tokenizer.pad_token = eos
    return tokenizer
