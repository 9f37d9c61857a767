"""Offline data assets as ``datasets`` objects, and the dataset checks run before training.
"""
from .assets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    NEWSGROUPS_SHIFT,
    TWEET_DOMAINS,
    TWEET_LABELS,
    load_20newsgroups,
    load_digits_domain_shift,
    load_fashion_mnist,
    load_reuters_r8,
    load_tweets,
    minilm_path,
    newsgroups_domain_shift,
)
from .backbones import default_text_backbone, small_resnet_config
from .validation import (
    validate_classification_batch,
    validate_classification_dataset,
)

__all__ = [
    "default_text_backbone",
    "small_resnet_config",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "NEWSGROUPS_SHIFT",
    "TWEET_DOMAINS",
    "TWEET_LABELS",
    "load_20newsgroups",
    "load_digits_domain_shift",
    "load_fashion_mnist",
    "load_reuters_r8",
    "load_tweets",
    "minilm_path",
    "newsgroups_domain_shift",
    "validate_classification_batch",
    "validate_classification_dataset",
]
