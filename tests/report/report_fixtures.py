"""A real offline Hub cache (tiny BERT with its tokenizer, tiny ViT with its image processor, a tiny ResNet)
and real user data (a csv of texts, an image folder with one sub-folder per class) for the report tests.

Imported by the tests as ``from report_fixtures import ...`` (``tests/report`` is on ``sys.path`` through
pytest's rootdir insertion of the test folder)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

BERT_REPO, VIT_REPO, RESNET_REPO = "tiny-org/bert", "tiny-org/vit", "tiny-org/resnet"
CLASSES = ("negative", "neutral", "positive")


def make_hub_cache(root: Path) -> str:
    """The three tiny backbones laid out in a Hub cache under ``root`` (returns the cache folder)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hub_cache, tiny_models
    from hub_cache import add_to_hub_cache
    from tiny_models import tiny_bert_config, tiny_resnet_config, tiny_vit_config
    from transformers import BertModel, BertTokenizerFast, ResNetModel, ViTImageProcessor, ViTModel

    cache = root / "hub"
    torch.manual_seed(0)
    bert = root / "bert"
    # weights drawn wider than BERT's 0.02: a random tiny BERT's [CLS] vector barely depends on the input
    BertModel(tiny_bert_config(initializer_range=0.5), add_pooling_layer=False).save_pretrained(bert)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(95)]]
    # the vocabulary as a dict: transformers 5's fast tokenizer ignores a vocab_file argument
    BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(bert)
    add_to_hub_cache(cache, BERT_REPO, bert)
    vit = root / "vit"
    ViTModel(tiny_vit_config(initializer_range=0.5), add_pooling_layer=False).save_pretrained(vit)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(vit)
    add_to_hub_cache(cache, VIT_REPO, vit)
    resnet = root / "resnet"
    ResNetModel(tiny_resnet_config()).save_pretrained(resnet)
    add_to_hub_cache(cache, RESNET_REPO, resnet)
    return str(cache)


def make_text_csv(
    path: Path,
    rows: int = 90,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    columns: tuple[str, str, str] = ("review", "sentiment", "source"),
) -> str:
    """A csv of texts whose words tell the class (with shared noise words), string labels and a domain
    (``classes``: the label names, by class id; ``columns``: the header)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(rows):
            c = i % len(classes)
            words = [f"w{c * 10 + int(rng.integers(0, 10))}" for _ in range(5)]
            words += [f"w{60 + int(rng.integers(0, 30))}" for _ in range(3)]
            writer.writerow(
                [" ".join(rng.permutation(words)), classes[c], ("shop", "web", "phone")[i % 7 % 3]]
            )
    return str(path)


def make_image_folder(root: Path, per_class: int = 20, seed: int = 0) -> str:
    """An image folder (``<class>/<n>.png``): dark vs bright images with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 60 + 120 * c
            pixels = np.clip(base + rng.normal(0, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)
