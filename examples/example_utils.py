"""Argument dataclasses shared by the example scripts (like ``transformers``' ``examples/pytorch``).

Only command-line plumbing lives here (the options, their checks and :func:`setup_logging`): every piece
of work the scripts do is public ``hf_monosem`` API (datasets by name:
:func:`hf_monosem.data.load_dataset_by_name`; backbones and classifiers:
:func:`hf_monosem.data.backbone_source` / :func:`~hf_monosem.data.build_classifier`; resuming and
result files: :mod:`hf_monosem.training.checkpoints`), so the scripts double as usage documentation.
The defaults (no ``--dataset_name`` / ``--model_name_or_path``) run offline: tweets (20 Newsgroups in
``finetune_noisy.py``) with the MiniLM-L6 sentence encoder for text; Fashion-MNIST or digits with a small
ResNet trained from scratch for images. The options follow transformers' ``run_*.py``: ``--max_train_samples``
/ ``--max_eval_samples`` keep every row of a dataset you name (the built-in offline ones default to a small
sample, see
:func:`parse_sample_limits`), and the backbone takes ``--model_revision``, ``--token``,
``--trust_remote_code``, ``--cache_dir``, ``--attn_implementation`` and ``--dtype``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from hf_monosem.data import BUILTIN_DATASETS


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
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column (text datasets)."})
    image_column: str = field(
        default="img", metadata={"help": "Image column of Hub image datasets (PIL images)."}
    )
    label_column: str = field(default="label", metadata={"help": "Integer class-id column."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on (clean labels)."})
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep N training rows, drawn at random with --seed (default: every row of a dataset you "
            "name; a small sample of the built-in offline ones, see the script's docstring; 0: all)."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep N rows of every other split, drawn at random with --seed (default: every row of a "
            "dataset you name; a small sample of the built-in offline ones; 0: all)."
        },
    )
    max_length: int = field(default=64, metadata={"help": "Token limit for text inputs."})
    train_augmentation: bool = field(
        default=True,
        metadata={
            "help": "Fine-tuning on Hub images: a random resized crop and a horizontal flip of each training "
            "image, as transformers' run_image_classification.py does (--no_train_augmentation: none). The "
            "built-in tensor datasets (digits, fashion_mnist) are never augmented."
        },
    )

    @property
    def loading_options(self) -> dict:
        """These options as keyword arguments of ``hf_monosem.data.load_dataset_by_name`` (with the name)."""
        return {
            "config_name": self.dataset_config_name,
            "train_split": self.train_split,
            "eval_split": self.eval_split,
            "text_column": self.text_column,
            "image_column": self.image_column,
            "label_column": self.label_column,
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
        }

    @property
    def preprocessing_options(self) -> dict:
        """These options as keyword arguments of ``hf_monosem.data.preprocess``."""
        return {
            "text_column": self.text_column,
            "image_column": self.image_column,
            "max_length": self.max_length,
        }


@dataclass
class LinearProbeArguments:
    """The budget of the linear probes on frozen features (scripts add how they scale the inputs)."""

    label_noise: float = field(
        default=0.4, metadata={"help": "Symmetric label-noise rate of the noisy probes, in [0, 1]."}
    )
    probe_seeds: int = field(
        default=3, metadata={"help": "Probe seeds (initialisation, order, noise draw) per cell."}
    )
    probe_epochs: int = field(
        default=50, metadata={"help": "Probe epochs (the paper: 50; no early stopping)."}
    )
    probe_lr: float = field(default=1e-3, metadata={"help": "Probe Adam learning rate."})
    probe_batch_size: int = field(default=256, metadata={"help": "Probe batch size."})


@dataclass
class FeatureLayerArguments:
    """The backbone and the feature layers to compare (one model per feature layer, same head)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Backbone Hub id or folder (default: MiniLM-L6 for text, a small ResNet for images)."
        },
    )
    feature_layers: str = field(
        default="linear,nonneg",
        metadata={
            "help": "Comma-separated feature layers, one model each: linear (polysemantic baseline), "
            "nonneg (NCL-style), sae (ReLU SAE + L1), topk (TopK SAE)."
        },
    )
    feature_dim: int | None = field(
        default=None, metadata={"help": "Feature-layer width (default 4x backbone width)."}
    )
    projector_hidden_dim: int | None = field(
        default=None,
        metadata={"help": "Hidden width of a two-layer MLP projector (linear/nonneg); default none."},
    )
    topk: int | None = field(
        default=None, metadata={"help": "Active features of the topk layer (default width/8)."}
    )
    sparsity_weight: float = field(default=1e-3, metadata={"help": "L1 weight of the sae layer."})
    pooling: str | None = field(
        default=None,
        metadata={"help": "cls, mean, last or pooler (default: mean for MiniLM, else per family)."},
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Linear probing: train only the feature layer and the head."}
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "The backbone's revision on the Hub: a branch, a tag or a commit id."},
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "Hub token for a private or gated backbone (default: the one `hf auth login` stored)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow a backbone whose modeling code lives in its Hub repository (read that code first)."
        },
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded backbones are stored (default: the Hub cache)."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "The backbone's attention: eager, sdpa, flash_attention_2, ... (default: "
            "transformers' choice)."
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype the backbone is loaded in (default: auto, the checkpoint's own; the feature layer "
            "and head follow it, SAE layers stay float32).",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )

    @property
    def loading_options(self) -> dict:
        """How the backbone is fetched and built: ``hf_monosem.data.backbone_source`` keyword arguments."""
        return {
            "revision": self.model_revision,
            "token": self.token,
            "trust_remote_code": self.trust_remote_code or None,
            "cache_dir": self.cache_dir,
            "attn_implementation": self.attn_implementation,
            "dtype": self.dtype,
        }

    @property
    def classifier_options(self) -> dict:
        """These options as ``MonoSemanticConfig`` keyword arguments of
        ``hf_monosem.data.build_classifier``."""
        return {
            "pooling": self.pooling,
            "feature_dim": self.feature_dim,
            "projector_hidden_dim": self.projector_hidden_dim,
            "topk": self.topk,
            "sparsity_weight": self.sparsity_weight,
            "freeze_backbone": self.freeze_backbone,
        }


def parse_feature_layers(parser, text: str, option: str = "--feature_layers") -> list[str]:
    """Comma-separated feature-layer names, checked against the registry (``parser.error`` if bad)."""
    from hf_monosem import FEATURE_LAYERS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FEATURE_LAYERS]
    if unknown or not kinds:
        parser.error(
            f"{option} {text!r}: unknown {unknown or 'empty list'}; allowed {sorted(FEATURE_LAYERS)}"
        )
    if len(set(kinds)) != len(kinds):
        parser.error(f"{option} {text!r} names a feature layer twice")
    return kinds


def parse_rate(parser, value: float, option: str) -> float:
    """A fraction in [0, 1] (``parser.error`` naming the value otherwise)."""
    if not 0.0 <= value <= 1.0:
        parser.error(f"{option} {value} must be in [0, 1]")
    return float(value)


def parse_positive_ints(parser, text: str, option: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``--shots 5,20`` (``parser.error`` naming the value)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{option} {text!r} must be comma-separated positive integers")
    if not values or any(v < 1 for v in values):
        parser.error(f"{option} {text!r} must be comma-separated positive integers")
    return sorted(set(values))


def parse_sample_limits(
    data_args: DataArguments, max_train_samples: int | None, max_eval_samples: int | None
) -> None:
    """Sample sizes as transformers' ``run_*.py`` have them: a dataset you name keeps every row unless
    ``--max_train_samples`` / ``--max_eval_samples`` say otherwise; a built-in offline dataset, when they
    are not given, takes the script's small defaults (``max_train_samples``, ``max_eval_samples``). In
    place."""
    if data_args.dataset_name not in BUILTIN_DATASETS:
        return
    if data_args.max_train_samples is None:
        data_args.max_train_samples = max_train_samples
    if data_args.max_eval_samples is None:
        data_args.max_eval_samples = max_eval_samples


def setup_logging(training_args, logger: logging.Logger) -> int:
    """Logging as in transformers' ``run_*.py``: ``--log_level`` on the main process, ``--log_level_replica``
    on the others (``training_args.get_process_log_level()``), for the script's ``logger``, transformers and
    datasets alike. Returns that level. The scripts print only their final summary, on the main process;
    everything else goes through these loggers."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    return log_level
