"""Checks that turn bad input into a clear error before any training or loading work is done.

Each function raises ``ValueError`` (or ``FileNotFoundError`` for missing files) whose message names
the bad value and what is allowed. Trainers and examples call :func:`validate_classification_dataset`
before training. Checkpoint folders are checked by :func:`hf_monosem.models.loading.check_checkpoint_folder`
(it lives with the models so that remote code stays one self-contained folder).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "LABEL_KEYS",
    "validate_classification_batch",
    "validate_classification_dataset",
]

#: batch / column names that carry class labels (the Trainer's collators use all three).
LABEL_KEYS = ("labels", "label", "label_ids")

# rows read at a time when scanning a column for NaN/inf (bounded memory on large datasets)
_CHUNK = 4096
_IGNORE_INDEX = -100  # label of rows the loss skips


def _columns(dataset: Any) -> list[str]:
    return list(dataset.column_names)


def validate_classification_dataset(
    dataset: Any,
    config: Any,
    *,
    label_column: str = "label",
    input_column: str | None = None,
    split_name: str = "train",
    check_finite: bool = True,
) -> None:
    """Check a ``datasets.Dataset`` against a :class:`MonoSemanticConfig` before training on it.

    Checks: the dataset is not empty; the label column exists and (for single-label classification,
    not regression or multi-label) holds integer class ids in ``[0, num_labels)`` or -100 (ignored);
    image inputs have the backbone's channel count (and, for ViT-like backbones, its image size) and
    hold no NaN/inf; token ids are below the backbone's ``vocab_size``.

    Example:
        >>> from datasets import Dataset
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=37), num_labels=2)
        >>> validate_classification_dataset(Dataset.from_dict({"input_ids": [[1, 2]], "label": [5]}), cfg)
        Traceback (most recent call last):
        ...
        ValueError: train labels must be class ids in [0, 1] for num_labels=2; found 5
    """
    if len(dataset) == 0:
        raise ValueError(f"the {split_name} dataset is empty (0 rows); nothing to train or evaluate on")
    columns = _columns(dataset)
    if label_column not in columns:
        raise ValueError(
            f"label column {label_column!r} not in the {split_name} dataset; its columns are {columns}"
        )
    feature = getattr(dataset, "features", {}).get(label_column) if hasattr(dataset, "features") else None
    names = getattr(feature, "names", None)
    if names is not None and len(names) < 2:
        # num_labels=1 would make it a regression with loss 0: nothing is learned, silently
        raise ValueError(
            f"the {split_name} label column {label_column!r} is a ClassLabel with {len(names)} class(es) "
            f"{names}; classification needs at least 2 classes"
        )
    if _problem_type(config) == "single_label_classification":
        # the column as one array (``dataset[column]`` iterates row by row in datasets >= 4)
        labels = np.asarray(dataset.select_columns([label_column]).with_format("numpy")[:][label_column])
        _check_class_ids(labels, config, split_name, f"in column {label_column!r} ")

    input_column = input_column or next((c for c in ("pixel_values", "input_ids") if c in columns), None)
    if input_column is None:
        raise ValueError(
            f"no model input column in the {split_name} dataset: expected 'pixel_values' or 'input_ids', "
            f"found {columns}"
        )
    if input_column == "pixel_values":
        _check_images(dataset, config, split_name, check_finite)
    elif input_column == "input_ids":
        _check_token_ids(dataset, config, split_name)


def validate_classification_batch(batch: Any, config: Any, *, split_name: str = "train") -> None:
    """The checks of :func:`validate_classification_dataset` on one collated batch (a dict of tensors).

    For datasets whose columns only exist after a transform (``set_transform``, an on-the-fly
    tokenising collator): :class:`~hf_monosem.MonoSemanticTrainer` checks their first batch instead.
    """
    keys = sorted(batch)
    label_key = next((k for k in LABEL_KEYS if batch.get(k) is not None), None)
    if label_key is None:
        raise ValueError(
            f"the first {split_name} batch has no labels (keys {keys}); a classifier needs labels"
        )
    if _problem_type(config) == "single_label_classification":
        _check_class_ids(_numpy(batch[label_key]), config, split_name, "")
    pixels = batch.get("pixel_values")
    if pixels is not None:
        _check_image_array(_numpy(pixels), config, split_name)
        if not np.isfinite(_numpy(pixels)).all():
            raise ValueError(
                f"{split_name} pixel_values hold NaN or inf (in the first batch); clean the data first"
            )
    ids = batch.get("input_ids")
    if ids is not None:
        ids = _numpy(ids)
        _check_max_token_id(int(ids.max(initial=0)), config, split_name)
        if ids.size and int(ids.min()) < 0:
            _check_min_token_id(int(ids.min()), split_name)
        if ids.ndim == 2:
            _check_length(ids.shape[1], config, split_name)
    if pixels is None and ids is None and batch.get("inputs_embeds") is None:
        raise ValueError(
            f"the first {split_name} batch has no model input: expected 'pixel_values' or 'input_ids', got {keys}"
        )


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.dtype.is_floating_point:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _problem_type(config: Any) -> str:
    """transformers' rule: regression for one output, else single- (or explicitly multi-) label classification."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type:
        return problem_type
    return "regression" if int(config.num_labels) == 1 else "single_label_classification"


def _check_class_ids(labels: np.ndarray, config: Any, split_name: str, where: str) -> None:
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            # transformers picks the loss from the label dtype: float labels train as multi-label (BCE)
            raise ValueError(
                f"{split_name} labels {where}must be integer class ids, got dtype {labels.dtype} "
                f"(e.g. {labels.ravel()[:3].tolist()}): float labels train as multi-label classification; "
                "cast the column to int64 (or a ClassLabel) for single-label classification"
            )
        else:
            raise ValueError(
                f"{split_name} labels {where}must be integer class ids, got dtype {labels.dtype} "
                f"(e.g. {labels.ravel()[:3].tolist()}); map label names to ids first (datasets' class_encode_column)"
            )
    num_labels = int(config.num_labels)
    bad = labels[((labels < 0) & (labels != _IGNORE_INDEX)) | (labels >= num_labels)]
    if bad.size:
        raise ValueError(
            f"{split_name} labels must be class ids in [0, {num_labels - 1}] for num_labels={num_labels}; "
            f"found {int(bad[0])}"
        )


def _check_token_ids(dataset: Any, config: Any, split_name: str) -> None:
    import pyarrow.compute as pc

    arrow = dataset.with_format("arrow")
    largest = 0
    for start in range(0, len(dataset), _CHUNK):
        column = arrow[start : start + _CHUNK]["input_ids"]
        while hasattr(column.type, "value_type"):  # list<...> -> its values
            column = pc.list_flatten(column)
        top, bottom = pc.max(column).as_py(), pc.min(column).as_py()
        largest = max(largest, top if top is not None else 0)
        if bottom is not None and bottom < 0:
            _check_min_token_id(bottom, split_name)
        longest = arrow[start : start + _CHUNK]["input_ids"]
        if hasattr(longest.type, "value_type"):
            _check_length(pc.max(pc.list_value_length(longest)).as_py() or 0, config, split_name)
    _check_max_token_id(largest, config, split_name)


#: families with a learned absolute position table: sequence length limit = max_position_embeddings
#: (RoBERTa-like ones start positions after the padding index)
_ABSOLUTE_POSITIONS = {"bert": 0, "distilbert": 0, "electra": 0, "albert": 0, "roberta": 1, "xlm-roberta": 1,
                       "camembert": 1, "mpnet": 1}  # fmt: skip


def _check_min_token_id(smallest: int, split_name: str) -> None:
    raise ValueError(f"{split_name} input_ids hold token id {smallest}; token ids must be >= 0")


def _check_length(length: int, config: Any, split_name: str) -> None:
    backbone = config.backbone_config
    offset = _ABSOLUTE_POSITIONS.get(getattr(backbone, "model_type", None))
    table = getattr(backbone, "max_position_embeddings", None)
    if offset is None or not isinstance(table, int):
        return
    limit = table - (offset * ((getattr(backbone, "pad_token_id", None) or 0) + 1))
    if length > limit:
        raise ValueError(
            f"{split_name} input_ids hold sequences of {length} tokens but the {backbone.model_type} backbone "
            f"has positions for {limit} (max_position_embeddings={table}); truncate when tokenising "
            f"(tokenizer(..., truncation=True, max_length={limit}))"
        )


def _check_max_token_id(largest: int, config: Any, split_name: str) -> None:
    backbone = config.backbone_config
    vocab_size = getattr(backbone, "vocab_size", None)
    if isinstance(vocab_size, int) and largest >= vocab_size:
        raise ValueError(
            f"{split_name} input_ids hold token id {largest} but the {backbone.model_type} backbone has "
            f"vocab_size={vocab_size}; tokenise with the backbone's own tokenizer"
        )


def _check_images(dataset: Any, config: Any, split_name: str, check_finite: bool) -> None:
    first = np.asarray(dataset.with_format("numpy")[:1]["pixel_values"])
    _check_image_array(first, config, split_name)
    if check_finite:
        numeric, arrow = dataset.with_format("numpy"), dataset.with_format("arrow")
        for start in range(0, len(dataset), _CHUNK):
            if _all_finite(arrow[start : start + _CHUNK]["pixel_values"]):
                continue  # the common case, without converting the rows to numpy
            block = np.asarray(numeric[start : start + _CHUNK]["pixel_values"])
            if not np.isfinite(block).all():
                row = start + int(np.argwhere(~np.isfinite(block.reshape(len(block), -1)).all(1)).ravel()[0])
                raise ValueError(
                    f"{split_name} pixel_values hold NaN or inf (first at row {row}); clean the data first"
                )


def _all_finite(column: Any) -> bool | None:
    """Whether a (nested list) arrow column holds only finite floats; ``None``: cannot tell in arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        while True:
            if isinstance(column.type, pa.ExtensionType):  # datasets' ArrayXD columns
                column = column.storage
            elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                column = pc.list_flatten(column)
            elif pa.types.is_fixed_size_list(column.type):
                column = column.flatten()
            else:
                break
        if not pa.types.is_floating(column.type):
            return None
        return bool(pc.all(pc.is_finite(column), skip_nulls=True).as_py() is not False)
    except (pa.ArrowException, TypeError, AttributeError):
        return None


def _check_image_array(images: np.ndarray, config: Any, split_name: str) -> None:
    """Shape checks of a ``[batch, channels, height, width]`` array against the backbone config."""
    backbone = config.backbone_config
    if images.ndim != 4:
        raise ValueError(
            f"{split_name} pixel_values must be [channels, height, width] per example; got shape {images.shape[1:]}"
        )
    channels = getattr(backbone, "num_channels", None)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"{split_name} images have {images.shape[1]} channel(s) but the {backbone.model_type} backbone expects "
            f"num_channels={channels}; convert the images or set num_channels in the backbone config"
        )
    image_size = getattr(backbone, "image_size", None)
    if isinstance(image_size, int) and tuple(images.shape[2:]) != (image_size, image_size):
        raise ValueError(
            f"{split_name} images are {images.shape[2]}x{images.shape[3]} but the {backbone.model_type} backbone "
            f"expects image_size={image_size}; resize them or set image_size in the backbone config"
        )
