"""Intrinsic monosemanticity at small scale: pretrain SimCLR vs NCL from scratch, then linear-probe.

The paper's intrinsic path (Zhang et al., ICLR 2025): contrastive pretraining where the projector
output passes through a ReLU before the InfoNCE loss (NCL, non-negative contrastive learning)
against the same pretraining without it (SimCLR). Here both are :class:`~hf_monosem.MonoSemanticModel`
s that differ in ``feature_layer`` only (``"linear"`` = SimCLR, ``"nonneg"`` = NCL), with the same
MLP projector (``--projector_hidden_dim``), temperature 0.2 and views
(:class:`~hf_monosem.ImageViews`: random resized crop + horizontal flip with ``kornia``; colour
jitter / grayscale for RGB inputs, and for 1-channel images a random brightness / contrast jitter,
:class:`~hf_monosem.training.IntensityJitterViews`, since grayscale images get no colour
augmentation). They are trained by :class:`~hf_monosem.ContrastiveTrainer` from a random
initialisation, without labels.

Then each frozen model's projector outputs (the features the paper's heads read, ReLU kept on for
NCL) are extracted once and linear probes are trained on them (one batched grid per method,
:func:`hf_monosem.scenarios.grid.label_noise_probe_grid`, the same label draws and budget for both
methods, no early stopping) with clean labels and with symmetric label noise at every
``--label_noise`` rate (comma-separated; each below (C-1)/C for the dataset's C classes, checked
before any training), and evaluated on the clean test labels. ``--probe_protocols`` says how the
probes train (:mod:`hf_monosem.scenarios.protocols`), each protocol probing both methods:

* ``fixed`` (the offline default, the probes P1 was decided with): unit-RMS feature vectors
  (``--probe_normalize``), Adam at ``--probe_lr``;
* ``paper_cifar`` (the authors' CIFAR linear probe; ``paper`` is its P2 name) and ``paper_in100``
  (their ImageNet-100 probe: plain SGD lr 1.5, constant): features at their natural scale, LARS lr 0.4
  with a warmup-cosine schedule (CIFAR), and for images ``--probe_views`` K augmented views of every training
  image (random resized crop 0.08-1 + flip, no colour jitter), extracted once
  (:func:`hf_monosem.cached.augmented_view_features`), one drawn per image and epoch;
* ``controlled``: both methods rescaled to SimCLR's mean L2 norm
  (:func:`hf_monosem.cached.equalize_scales`), Adam at a rate chosen per method
  (:meth:`~hf_monosem.scenarios.protocols.ProbeProtocol.select_lr`) on 20% of the training rows held
  out with 30%-noisy labels -- never the test split.

``--online_label_loss`` (off by default) is the authors' label leak as a named variant: both methods
pretrain with a non-detached online classifier whose label cross-entropy is added to the contrastive
loss (``ContrastiveTrainer(online_label_loss=True)``), as in their solo-learn base; its results are
never mixed with the label-free runs'.

A gain under one protocol and not the other is optimisation, not monosemanticity. ``--probe_epochs``
and ``--probe_batch_size`` set every protocol's budget (the paper's warmup scales along). Sparsity and
class consistency of the test features are reported next to accuracy.

Scale, honestly: the paper pretrains a ResNet-18 for 200 epochs on ImageNet-100 / CIFAR-100 (batch
256, LARS, projector 512 -> 16384 -> 2048). The offline default is a ~0.2M-parameter ResNet
(:func:`hf_monosem.data.small_resnet_config`) pretrained for 8 epochs on 5,000 Fashion-MNIST images with
a 128 -> 512 -> 512 projector, probed on those 5,000 images and tested on 2,000 -- orders of
magnitude less compute, so its numbers say whether the pipeline works and how sparse NCL's
features get, not whether the paper's robustness gains reproduce. Measured once: 3.1 min with
``accelerate launch`` on 2 quiet CPU cores (``OMP_NUM_THREADS=1``; 7.4 min while another job ran).
``--probe_protocols paper,controlled`` adds about 70 s to it (the probing stage alone, 1 thread on
a loaded machine: fixed 13 s; paper 35 s, of which 21 s extract the 8 views; controlled 45 s, its
learning-rate search training one grid per candidate rate), which is why it is not the offline default.
Plain NCL (``--activation_loss_weight 0``) collapses here: 63% of the units never fire (L0 18 of
512). The default adds the NCL authors' activation term at weight 10, chosen on 1,000 held-out
training rows by protocol P1 (docs/PROTOCOL.md; docs/results/p1_ncl_selection.md): 3.6% dead, L0
73, class consistency 0.62 vs SimCLR's 0.56, and held-out probe accuracy (clean / 40%-noisy labels,
2 pretraining seeds x 3 probe seeds) 0.755 / 0.731 vs SimCLR's 0.764 / 0.740 -- more
monosemantic and alive, no robustness gain at this scale. Several CPU processes: ``accelerate launch
--multi_gpu --num_processes 2 examples/pretrain_ncl.py --use_cpu``::

    accelerate launch examples/pretrain_ncl.py
    accelerate launch examples/pretrain_ncl.py --probe_protocols paper,controlled --label_noise 0,0.4,0.8
    accelerate launch examples/pretrain_ncl.py --max_train_samples 0 --num_train_epochs 100 \\
        --feature_dim 2048 --projector_hidden_dim 4096          # the full 60k training set

The GPU-scale run, the paper's CIFAR-100 setting (a dataset you name is used whole; the built-in
offline ones default to 5,000 / 2,000 rows)::

    accelerate launch examples/pretrain_ncl.py --dataset_name uoft-cs/cifar100 --image_column img \\
        --label_column fine_label --model_name_or_path microsoft/resnet-18 --use_pretrained_backbone False \\
        --num_train_epochs 200 --per_device_train_batch_size 256 --learning_rate 1e-3 --warmup_steps 0.05 \\
        --crop_scale_min 0.08 --projector_hidden_dim 16384 --feature_dim 2048 \\
        --probe_protocols paper,controlled --probe_views 8 --label_noise 0,0.1,0.3,0.6,0.9 \\
        --bf16 --dataloader_num_workers 8 --output_dir runs/pretrain_ncl_cifar100

That is ResNet-18's architecture from a random initialisation (only its config and image processor
are read), 200 epochs at batch 256 with a 10-epoch warmup, the SimCLR crop scale 0.08-1, and the
authors' pretraining projector for CIFAR (``PKU-ML/Beyond_Interpretability``,
``scripts/pretrain/cifar/*.yaml``: hidden 16384, output 2048 -- so the probed features are 2048
units, as theirs; the 4096 -> 512 in their linear-probe configs is not the pretraining projector),
both probe protocols, and their label-noise grid up to 90% (CIFAR-100 allows rates below 0.99).
Where it differs from the authors: AdamW at 1e-3 (cosine) instead of LARS at 0.4 (transformers has
no LARS; the rate is not tuned at this scale), the NCL activation term at P1's weight 10, and
transformers' ImageNet ResNet-18 stem on the processor's 224-pixel upsampling of the 32-pixel images
(the authors use the CIFAR stem on 32 pixels: about 49x less compute per image). Not run here (no
GPU): ``tests/test_examples_gpu_scale.py`` runs exactly these flags through ``accelerate launch`` on
CPU with tiny sizes (a tiny ResNet as ``microsoft/resnet-18`` and a CIFAR-100-shaped
``uoft-cs/cifar100`` in a temporary Hub / datasets cache).

Writes to ``--output_dir`` (default ``runs/pretrain_ncl``): one folder per method (``simclr`` /
``ncl``) holding the pretrained ``MonoSemanticModel`` (``AutoModel.from_pretrained`` loads it after
``import hf_monosem``), its last Trainer checkpoint and ``run_result.json``; ``results.json``
(per method ``probe[protocol][cell]``: mean / std / per-seed clean-test accuracy, cells ``clean`` and
``label_noise_<rate>``, and ``probe_lr[protocol]``; ``probe_protocols[protocol]``: its settings,
inputs, augmented views, the learning rate and held-out scores per method; one record per method,
protocol and rate, metric ``linear_probe_accuracy_<protocol>``) and ``results.png`` (contrastive loss per
epoch, probe accuracy per protocol).
``--resume_from_checkpoint True`` resumes unfinished pretraining runs and reuses finished ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from example_utils import DataArguments, LinearProbeArguments, parse_rate, parse_sample_limits
from transformers import (
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_monosem import (
    ContrastiveTrainer,
    ImageViews,
    MonoSemanticConfig,
    MonoSemanticModel,
    UnlabeledDataCollator,
    extract_pooled_features,
)
from hf_monosem.cached import augmented_view_features, equalize_scales, unit_rms
from hf_monosem.cached.distributed import end_process_group
from hf_monosem.data import (
    LABEL_COLUMN,
    backbone_source,
    image_channels,
    label_names,
    load_dataset_by_name,
    preprocess,
)
from hf_monosem.evaluation import monosemanticity_report
from hf_monosem.models import NONNEG_ACTIVATIONS, NONNEG_ORDERS
from hf_monosem.scenarios.grid import label_noise_probe_grid, noisy_label_draws
from hf_monosem.scenarios.protocols import ProbeProtocol, probe_protocol, probe_protocol_names
from hf_monosem.training import CONTRASTIVE_METHODS, IntensityJitterViews, use_available_cores
from hf_monosem.training.checkpoints import (
    public_record,
    read_json,
    recorded_command,
    resume_checkpoint,
    wants_resume,
    write_json,
)


@dataclass
class PretrainArguments:
    """The model pretrained with each method and its views."""

    methods: str = field(
        default="simclr,ncl",
        metadata={
            "help": "Comma-separated methods: simclr (linear projector "
            "output), ncl (non-negative projector output)."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Backbone architecture (Hub id or folder); default a small ResNet. Randomly initialised "
            "unless --use_pretrained_backbone."
        },
    )
    use_pretrained_backbone: bool = field(
        default=False,
        metadata={"help": "Start from --model_name_or_path's weights instead of a random init."},
    )
    feature_dim: int = field(default=512, metadata={"help": "Projector output width (the probed features)."})
    projector_hidden_dim: int = field(
        default=512, metadata={"help": "Projector hidden width (same for both methods)."}
    )
    temperature: float = field(default=0.2, metadata={"help": "InfoNCE temperature (the paper: 0.2)."})
    pooling: str | None = field(
        default=None, metadata={"help": "cls, mean, last or pooler (default per family)."}
    )
    crop_scale_min: float = field(
        default=0.2, metadata={"help": "Smallest area fraction of the random resized crop."}
    )
    hflip_p: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    intensity_jitter: float = field(
        default=0.4,
        metadata={
            "help": "1-channel images: contrast factor in [1-s, 1+s] and brightness shift in [-s, s] (units "
            "of the data std), applied to 80%% of the views; 0 turns it off. RGB inputs use colour jitter "
            "instead."
        },
    )
    text_mask_rate: float = field(
        default=0.1, metadata={"help": "Text datasets only: token masking rate of the views."}
    )
    nonneg_activation: str = field(
        default="relu",
        metadata={
            "help": "NCL's non-negativity: relu, or rep_relu (ReLU forward, GELU's gradient backward: the "
            "NCL authors' CIFAR default, against dead units)."
        },
    )
    nonneg_order: str = field(
        default="plain",
        metadata={
            "help": "NCL's order: plain (the non-negativity on the projector output) or authors (normalise "
            "-> non-negativity -> normalise, as PKU-ML/Beyond_Interpretability's NCL; protocol P3's text "
            "recipe with --nonneg_activation rep_relu --activation_loss_weight 1). Saved in the model's "
            "config."
        },
    )
    activation_loss_weight: float = field(
        default=10.0,
        metadata={
            "help": "NCL only: weight of the activation term -mean_j mean_batch |z_j| on the unit-norm "
            "projector output, against dead units (the Beyond-Interpretability authors' NCL adds it with "
            "weight 1; 10 was chosen on held-out rows by protocol P1, docs/results/p1_ncl_selection.md; 0: "
            "off)."
        },
    )
    online_label_loss: bool = field(
        default=False,
        metadata={
            "help": "The label leak, a named variant (off by default): add the cross-entropy of an online "
            "linear classifier on the backbone's pooled vector, NOT detached, to the contrastive loss of "
            "both methods, as the Beyond-Interpretability authors' solo-learn base does (labels then reach "
            "the backbone during pretraining). Use its own --output_dir."
        },
    )
    validation_rows: int = field(
        default=0,
        metadata={
            "help": "Hold out this many stratified training rows and evaluate (pretraining views and probes) "
            "on them instead of --eval_split: for choosing settings without reading the test set (0: off)."
        },
    )


#: the probe protocols --probe_protocols takes: "fixed" (the offline default: unit-RMS inputs, Adam at
#: --probe_lr) and the presets of hf_monosem.scenarios.protocols (paper_cifar, paper_in100, controlled;
#: paper: P2's name of paper_cifar)
PROTOCOL_NAMES = ("fixed", *probe_protocol_names())
#: the authors' linear-probe augmentation of the training images (solo-learn: random resized crop
#: 0.08-1 and a horizontal flip, no colour jitter), for the protocols with augmented views
PROBE_VIEW_CROP, PROBE_VIEW_HFLIP = (0.08, 1.0), 0.5


@dataclass
class ProbeArguments(LinearProbeArguments):
    """The linear probes trained on each frozen projector's outputs (same budget for every method)."""

    label_noise: str = field(
        default="0.4",
        metadata={
            "help": "Comma-separated symmetric label-noise rates of the noisy probes (e.g. "
            "0,0.1,0.3,0.6,0.9), each in [0, 1) and below (C-1)/C for the dataset's C classes; clean-label "
            "probes always run."
        },
    )
    probe_lr: float = field(
        default=1e-3,
        metadata={"help": "Adam learning rate of the fixed protocol (the others set their own)."},
    )
    probe_protocols: str = field(
        default="fixed",
        metadata={
            "help": "Comma-separated probe protocols, each probing every method: fixed (unit-RMS inputs if "
            "--probe_normalize, Adam at --probe_lr), paper_cifar (the authors' CIFAR linear probe: natural "
            "scale, LARS lr 0.4 warmup-cosine, --probe_views augmented views of each training image; 'paper' "
            "is its P2 name), paper_in100 (their ImageNet-100 probe: plain SGD lr 1.5, no momentum, no "
            "weight decay, constant rate, augmented views), controlled (every "
            "method at SimCLR's mean feature norm, Adam with the lr chosen per method on held-out training "
            "rows with noisy labels). --probe_epochs and --probe_batch_size apply to all."
        },
    )
    probe_views: int = field(
        default=8,
        metadata={
            "help": "Paper protocol, image datasets: augmented views (crop 0.08-1 + flip) of every training "
            "image, extracted once; each probe epoch draws one per image."
        },
    )
    probe_normalize: bool = field(
        default=True,
        metadata={
            "help": "Fixed protocol: rescale every feature vector to unit root-mean-square before probing "
            "(keeps zeros and signs; the contrastive loss only sees directions)."
        },
    )

    @property
    def rates(self) -> list[float]:
        """0 (the clean-label probes) then every other ``--label_noise`` rate, once each, in the given
        order."""
        rates = [0.0]
        for rate in (float(r) for r in self.label_noise.split(",") if r.strip()):
            if rate not in rates:
                rates.append(rate)
        return rates

    @property
    def protocols(self) -> list[str]:
        return [p.strip() for p in self.probe_protocols.split(",") if p.strip()]


ARGUMENT_DATACLASSES = (PretrainArguments, ProbeArguments, DataArguments, TrainingArguments)


def parse_args(argv=None):
    parser = HfArgumentParser(ARGUMENT_DATACLASSES)
    # Defaults that suit a CPU laptop; every one can be overridden on the command line.
    parser.set_defaults(
        output_dir="runs/pretrain_ncl",
        dataset_name="fashion_mnist",
        num_train_epochs=8,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        weight_decay=1e-4,
        per_device_train_batch_size=256,
        per_device_eval_batch_size=256,
        dataloader_drop_last=True,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=10,
        report_to="none",
        seed=0,
    )
    pre_args, probe_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # a dataset you name is used whole, the built-in offline ones default to small samples (--max_*_samples 0:
    # all)
    parse_sample_limits(data_args, 5000, 2000)
    methods = [m.strip() for m in pre_args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CONTRASTIVE_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        parser.error(
            f"--methods {pre_args.methods!r}: unknown or repeated {unknown or methods}; "
            f"allowed {list(CONTRASTIVE_METHODS)}"
        )
    try:
        rates = [float(r) for r in probe_args.label_noise.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--label_noise {probe_args.label_noise!r} must be comma-separated rates in [0, 1)")
    if not rates:
        parser.error(f"--label_noise {probe_args.label_noise!r} names no rate; give rates in [0, 1)")
    for rate in rates:
        if not 0 <= rate < 1:
            parser.error(f"--label_noise {probe_args.label_noise!r}: rate {rate:g} must be in [0, 1)")
    protocols = probe_args.protocols
    unknown = [p for p in protocols if p not in PROTOCOL_NAMES]
    if unknown or not protocols or len(set(protocols)) != len(protocols):
        problem = (
            f"unknown {unknown}"
            if unknown
            else "names no protocol"
            if not protocols
            else "repeats a protocol"
        )
        parser.error(
            f"--probe_protocols {probe_args.probe_protocols!r} {problem}; allowed {list(PROTOCOL_NAMES)}"
        )
    if probe_args.probe_views < 1:
        parser.error(
            f"--probe_views {probe_args.probe_views} is not valid; allowed: a positive integer (augmented "
            "views per training image)"
        )
    parse_rate(parser, pre_args.hflip_p, "--hflip_p")
    if not 0 < pre_args.crop_scale_min <= 1:
        parser.error(f"--crop_scale_min {pre_args.crop_scale_min} must be in (0, 1]")
    if pre_args.intensity_jitter < 0 or pre_args.intensity_jitter >= 1:
        parser.error(f"--intensity_jitter {pre_args.intensity_jitter} must be in [0, 1)")
    if not 0 <= pre_args.text_mask_rate < 1:
        parser.error(f"--text_mask_rate {pre_args.text_mask_rate} must be in [0, 1)")
    if pre_args.temperature <= 0:
        parser.error(f"--temperature {pre_args.temperature} must be > 0")
    if pre_args.nonneg_activation not in NONNEG_ACTIVATIONS:
        parser.error(
            f"--nonneg_activation {pre_args.nonneg_activation!r} is not one of "
            f"{', '.join(NONNEG_ACTIVATIONS)}"
        )
    if pre_args.nonneg_order not in NONNEG_ORDERS:
        parser.error(f"--nonneg_order {pre_args.nonneg_order!r} is not one of {', '.join(NONNEG_ORDERS)}")
    if not pre_args.activation_loss_weight >= 0:
        parser.error(f"--activation_loss_weight {pre_args.activation_loss_weight} must be >= 0")
    if pre_args.validation_rows < 0:
        parser.error(f"--validation_rows {pre_args.validation_rows} must be >= 0")
    for name in ("feature_dim", "projector_hidden_dim"):
        if getattr(pre_args, name) < 1:
            parser.error(f"--{name} {getattr(pre_args, name)} must be a positive integer")
    for name in ("probe_seeds", "probe_epochs", "probe_batch_size"):
        if getattr(probe_args, name) < 1:
            parser.error(f"--{name} {getattr(probe_args, name)} must be a positive integer")
    if probe_args.probe_lr <= 0:
        parser.error(f"--probe_lr {probe_args.probe_lr} must be > 0")
    return pre_args, probe_args, data_args, training_args, methods


def build_model(kind: str, pre_args: PretrainArguments, source: dict) -> MonoSemanticModel:
    source = dict(source)
    if "backbone" in source and pre_args.model_name_or_path:
        source["use_pretrained_backbone"] = pre_args.use_pretrained_backbone
    ncl = {
        "nonneg_activation": pre_args.nonneg_activation,
        "nonneg_order": pre_args.nonneg_order,
        "activation_loss_weight": pre_args.activation_loss_weight,
    }
    config = MonoSemanticConfig(
        **source,
        pooling=pre_args.pooling or source.get("pooling"),
        feature_layer=kind,
        feature_dim=pre_args.feature_dim,
        projector_hidden_dim=pre_args.projector_hidden_dim,
        temperature=pre_args.temperature,
        **(ncl if kind == "nonneg" else {}),
    )
    return MonoSemanticModel(config)


def check_rates(probe_args, num_labels: int, dataset: str) -> None:
    """Refuse (before any training) a label-noise rate the dataset's classes leave no signal at."""
    limit = (num_labels - 1) / num_labels
    bad = [r for r in probe_args.rates if not r < limit]
    if bad:
        raise SystemExit(
            f"--label_noise {probe_args.label_noise!r}: rate {bad[0]:g} is not valid for {dataset!r} "
            f"with {num_labels} classes; allowed: rates in [0, {limit:.3g}) -- symmetric noise at "
            "(C-1)/C or more leaves no signal in the labels"
        )


def protocol_for(name: str, probe_args) -> ProbeProtocol:
    """The probe protocol called ``name`` at this run's budget (``--probe_epochs``, ``--probe_batch_size``;
    the paper protocol's warmup scales along)."""
    budget = {"epochs": probe_args.probe_epochs, "batch_size": probe_args.probe_batch_size}
    if name == "fixed":
        return ProbeProtocol("fixed", lr=probe_args.probe_lr, **budget)
    return probe_protocol(name).with_budget(**budget)


def cell_name(rate: float) -> str:
    return "clean" if rate == 0 else f"label_noise_{rate:g}"


@torch.no_grad()
def training_view_features(
    model, train, views, num_views: int, seed: int, device, chunk: int = 4096
) -> torch.Tensor:
    """``[num_views, N, F]`` projector outputs of ``num_views`` augmented copies of every training image,
    extracted once (:func:`hf_monosem.cached.augmented_view_features`), ``chunk`` images at a time so
    that a whole Hub dataset never sits in memory as pixels. Every method gets the same views."""

    def encode(images):
        return model(pixel_values=images).features

    parts = []
    for j, start in enumerate(range(0, len(train), chunk)):
        images = torch.as_tensor(train[start : start + chunk]["pixel_values"]).float().to(device)
        parts.append(augmented_view_features(encode, images, views, num_views, seed=seed * 1_000_003 + j))
    return torch.cat(parts, dim=1)


def probe(
    protocol: ProbeProtocol,
    features: dict,
    train_views: dict,
    y_train,
    y_test,
    label_feature,
    num_labels,
    probe_args,
    device,
) -> dict:
    """Clean and noisy-label linear probes of every method under ``protocol`` (``probe_seeds`` each, one
    batched grid per method, :func:`hf_monosem.scenarios.grid.label_noise_probe_grid`; the same label
    draws for every method); clean-test accuracy per cell, the probe learning rate and the input scale.

    ``features[method]`` holds ``train`` / ``test`` ``[N, F]`` matrices and ``train_views[method]``
    ``[K, N, F]`` augmented training views (used by protocols with ``augmented_views``). The fixed
    protocol probes unit-RMS vectors (``--probe_normalize``); a protocol with ``equalize_scale`` rescales
    every method to SimCLR's mean norm (:func:`hf_monosem.cached.equalize_scales`); one with an
    ``lr_grid`` chooses the rate per method (:meth:`ProbeProtocol.select_lr`) on 20% of the training rows
    held out, with labels noised at its ``selection_rate`` -- never the test split.
    """
    features = {method: dict(f) for method, f in features.items()}
    views = dict(train_views) if protocol.augmented_views else {}
    scales = dict.fromkeys(features, 1.0)
    if protocol.name == "fixed" and probe_args.probe_normalize:
        features = {method: {key: unit_rms(x) for key, x in f.items()} for method, f in features.items()}
    if protocol.equalize_scale:
        reference = "simclr" if "simclr" in features else next(iter(features))
        scales = equalize_scales(features, reference)
        views = {method: v * scales[method] for method, v in views.items()}
    rates, seeds = probe_args.rates, list(range(probe_args.probe_seeds))
    draws = noisy_label_draws(y_train, label_feature, rates, seeds)
    if (
        protocol.lr_grid
    ):  # the held-out rows and noisy labels the learning rate is chosen on (as the benchmark's)
        noisy = noisy_label_draws(y_train, label_feature, [protocol.selection_rate], [0])[0]
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
        held_out = order[: max(1, int(len(y_train) * protocol.selection_fraction))]
    out = {}
    for method, f in features.items():
        plain = f["train"].to(device)
        train = views[method].to(device) if method in views else plain
        lr, scores = (protocol.select_lr(train, noisy, num_labels, seeds, held_out) if protocol.lr_grid
                      else (protocol.lr, {}))  # fmt: skip
        probes = label_noise_probe_grid(
            train, f["test"].to(device), y_train, y_test, label_feature, rates, seeds, num_labels=num_labels,
            label_draws=draws, unaugmented_train_features=plain, **protocol.training_kwargs(lr),
        )  # fmt: skip
        out[method] = {
            "cells": probes.summary([cell_name(r) for r in rates]),
            "probe_lr": lr,
            "lr_selection": {f"{k:g}": v for k, v in scores.items()},
            "input_scale": scales[method],
            "augmented_views": int(train.shape[0]) if train.dim() == 3 else 0,
        }
    return out


def plot(results: dict, path: str, protocols: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(protocols), figsize=(5 * (1 + len(protocols)), 3.8), squeeze=False)
    ax_loss, bar_axes = axes[0][0], axes[0][1:]
    for i, (method, r) in enumerate(results.items()):
        for key, style, label in (
            ("train_loss_curve", "-", "train"),
            ("eval_loss_curve", "--", "test views"),
        ):
            if r["pretraining"].get(key):
                epochs, losses = zip(*r["pretraining"][key])
                ax_loss.plot(epochs, losses, style, color=f"C{i}", label=f"{method} ({label})")
    ax_loss.set(xlabel="epoch", ylabel="InfoNCE loss", title="contrastive pretraining")
    if ax_loss.get_lines():
        ax_loss.legend(fontsize=8)
    methods = list(results)
    width = 0.8 / len(methods)
    for ax, protocol in zip(bar_axes, protocols):
        cells = list(results[methods[0]]["probe"][protocol])
        x = np.arange(len(cells))
        for i, method in enumerate(methods):
            probes = results[method]["probe"][protocol]
            ax.bar(
                x + (i - (len(methods) - 1) / 2) * width,
                [probes[c]["test_accuracy"] for c in cells],
                width,
                yerr=[probes[c]["test_accuracy_std"] for c in cells],
                capsize=3,
                color=f"C{i}",
                label=f"{method} ({results[method]['features']['zero_fraction']:.0%} zeros)",
            )
        ax.set_xticks(x, [c.replace("label_noise_", "noise ") for c in cells], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set(
            ylabel="linear-probe clean test accuracy",
            title=f"probes on projector outputs ({protocol} protocol)",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pretraining_summary(trainer) -> dict:
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h and "contrastive_loss" in h]
    per_epoch: dict[float, list[float]] = {}
    for h in train_logs:
        per_epoch.setdefault(float(np.ceil(h["epoch"])), []).append(h["contrastive_loss"])
    final = train_logs[-1] if train_logs else {}
    return {
        "epochs": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "train_loss_curve": [(e, float(np.mean(v))) for e, v in sorted(per_epoch.items())],
        "eval_loss_curve": [(h["epoch"], h["eval_loss"]) for h in history if "eval_loss" in h],
        "final_contrastive_loss": final.get("contrastive_loss"),
        "final_contrastive_accuracy": final.get("contrastive_accuracy"),
        "final_active_fraction": final.get("active_fraction"),
        "train_runtime_s": next((h["train_runtime"] for h in history if "train_runtime" in h), None),
    }


def main(argv=None) -> dict:
    pre_args, probe_args, data_args, training_args, methods = parse_args(argv)
    use_available_cores()  # accelerate launch defaults to one thread on CPU
    # the label column is renamed to LABEL_COLUMN
    data, modality = load_dataset_by_name(
        data_args.dataset_name, seed=training_args.seed, **data_args.loading_options
    )
    names = label_names(data[data_args.train_split])
    check_rates(probe_args, len(names), data_args.dataset_name)  # before any training
    source = backbone_source(
        pre_args.model_name_or_path, modality, num_channels=image_channels(data[data_args.train_split])
    )
    data, processor = preprocess(data, modality, source.get("backbone"), **data_args.preprocessing_options)
    train, test = data[data_args.train_split], data[data_args.eval_split]
    if pre_args.validation_rows:  # model selection: the test split is never read
        held_out = train.train_test_split(
            test_size=pre_args.validation_rows, stratify_by_column=LABEL_COLUMN, seed=training_args.seed
        )
        train, test = held_out["train"], held_out["test"]
    text = modality == "text"
    collator = DataCollatorWithPadding(processor) if text else default_data_collator
    views = ImageViews(
        crop_scale=(pre_args.crop_scale_min, 1.0),
        hflip_p=pre_args.hflip_p,
        mean=getattr(processor, "image_mean", None),
        std=getattr(processor, "image_std", None),
    )
    views = IntensityJitterViews(views, pre_args.intensity_jitter)
    main_process = training_args.process_index == 0

    pretrained = {}
    for method in methods:
        run_dir = os.path.join(training_args.output_dir, method)
        done = os.path.join(run_dir, "run_result.json")
        if wants_resume(training_args.resume_from_checkpoint) and os.path.isfile(done):
            pretrained[method] = (MonoSemanticModel.from_pretrained(run_dir), read_json(done))
            print(f"{method}: pretrained before, reusing {run_dir}")
            continue
        args = dataclasses.replace(training_args, output_dir=run_dir)
        set_seed(args.seed)  # both methods start from the same backbone weights
        model = build_model(CONTRASTIVE_METHODS[method], pre_args, source)
        trainer = ContrastiveTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=test,
            data_collator=UnlabeledDataCollator(collator),
            processing_class=processor,
            image_views=views,
            mask_rate=pre_args.text_mask_rate if text else 0.0,
            online_label_loss=pre_args.online_label_loss,
            num_labels=len(names) if pre_args.online_label_loss else None,
        )
        trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, training_args.resume_from_checkpoint))
        trainer.save_model()
        summary = {**pretraining_summary(trainer), "online_label_loss": pre_args.online_label_loss}
        if main_process:
            write_json(done, public_record(summary, training_args.output_dir))
        pretrained[method] = (trainer.accelerator.unwrap_model(trainer.model), summary)
        del trainer

    if not main_process:  # probing is cheap and runs once, on the main process
        return {}
    num_labels = len(names)
    label_feature = train.features[LABEL_COLUMN]
    y_train = torch.as_tensor(np.asarray(train.with_format("numpy")[LABEL_COLUMN]))
    y_test = torch.as_tensor(np.asarray(test.with_format("numpy")[LABEL_COLUMN]))
    protocols = [protocol_for(name, probe_args) for name in probe_args.protocols]
    # the authors' probe augmentation (crop + flip, no colour jitter) on the model's inputs; mean / std: the
    # processor's normalisation, which ImageViews undoes before augmenting and redoes after
    probe_views = ImageViews(
        crop_scale=PROBE_VIEW_CROP,
        hflip_p=PROBE_VIEW_HFLIP,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        mean=getattr(processor, "image_mean", None),
        std=getattr(processor, "image_std", None),
    )
    with_views = not text and any(p.augmented_views for p in protocols)
    device = training_args.device
    features, train_views, results = {}, {}, {}
    for method, (model, summary) in pretrained.items():
        model.to(device).eval()
        extract = dict(
            batch_size=training_args.per_device_eval_batch_size,
            output="features",
            collate_fn=collator,
            progress=not training_args.disable_tqdm,
        )
        features[method] = {
            "train": extract_pooled_features(model, train, **extract),
            "test": extract_pooled_features(model, test, **extract),
        }
        if with_views:
            train_views[method] = training_view_features(
                model, train, probe_views, probe_args.probe_views, training_args.seed, device
            )
        results[method] = {
            "feature_layer": CONTRASTIVE_METHODS[method],
            "pretraining": summary,
            "probe": {},
            "probe_lr": {},
            "features": monosemanticity_report(features[method]["test"], y_test),
            "checkpoint": os.path.join(training_args.output_dir, method),
        }
    protocol_settings = {}
    for protocol in protocols:
        probes = probe(
            protocol, features, train_views, y_train, y_test, label_feature, num_labels, probe_args, device
        )
        for method, p in probes.items():
            results[method]["probe"][protocol.name] = p["cells"]
            results[method]["probe_lr"][protocol.name] = p["probe_lr"]
        protocol_settings[protocol.name] = {
            **protocol.to_dict(),
            "inputs": "unit-RMS vectors"
            if protocol.name == "fixed" and probe_args.probe_normalize
            else "equal mean L2 norm (SimCLR's)"
            if protocol.equalize_scale
            else "natural scale",
            "probe_views": next(iter(probes.values()))["augmented_views"],
            **{
                key: {method: p[key] for method, p in probes.items()}
                for key in ("probe_lr", "lr_selection", "input_scale")
            },
        }

    seeds = list(range(probe_args.probe_seeds))
    payload = {
        "command": recorded_command(
            __file__, sys.argv[1:] if argv is None else argv
        ),  # no token, no local paths
        "dataset": data_args.dataset_name,
        "modality": modality,
        "backbone": pre_args.model_name_or_path or source.get("backbone") or "small-resnet (random init)",
        "train_rows": len(train),
        "test_rows": len(test),
        "num_labels": num_labels,
        "seed": training_args.seed,
        "evaluated_on": f"{pre_args.validation_rows} held-out training rows"
        if pre_args.validation_rows
        else data_args.eval_split,
        "pretrain": dataclasses.asdict(pre_args),
        "probe": dataclasses.asdict(probe_args),
        "label_noise_rates": probe_args.rates,
        "probe_protocols": protocol_settings,
        "scale_note": "far below the paper (ResNet-18, 200 epochs, ImageNet-100 / CIFAR-100)",
        "results": results,
        # result records (hf_monosem.evaluation.results), the protocol in the metric's name so that each is
        # unique
        "records": [
            {
                "dataset": data_args.dataset_name,
                "scenario": "label_noise",
                "level": rate,
                "method": method,
                "metric": f"linear_probe_accuracy_{name}",
                "value": r["probe"][name][cell_name(rate)]["test_accuracy"],
                "std": r["probe"][name][cell_name(rate)]["test_accuracy_std"],
                "seeds": seeds,
                "protocol": name,
                "probe_lr": r["probe_lr"][name],
            }
            for method, r in results.items()
            for name in probe_args.protocols
            for rate in probe_args.rates
        ],
    }
    write_json(
        os.path.join(training_args.output_dir, "results.json"),
        public_record(payload, training_args.output_dir),
    )
    plot(results, os.path.join(training_args.output_dir, "results.png"), probe_args.protocols)
    cells = [cell_name(r) for r in probe_args.rates]
    for name, settings in protocol_settings.items():
        augmented = (
            f", {settings['probe_views']} augmented views per training image"
            if settings["probe_views"]
            else ""
        )
        print(
            f"\nprobe protocol {name}: {settings['optimizer']} ({settings['schedule']}), "
            f"{settings['epochs']} epochs, {settings['inputs']}{augmented}; clean test accuracy, mean ± std "
            f"over {len(seeds)} probe seeds"
        )
        widths = [max(13, len(c)) for c in cells]
        print(f"{'method':>7} | probe lr | " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)))
        for method, r in results.items():
            accs = [r["probe"][name][c] for c in cells]
            print(
                f"{method:>7} | {r['probe_lr'][name]:8.2g} | "
                + " | ".join(
                    f"{a['test_accuracy']:.3f} ± {a['test_accuracy_std']:.3f}".rjust(w)
                    for a, w in zip(accs, widths)
                )
            )
    print(f"\n{'method':>7} | zero fraction | dead  |  L0  | class consistency (test features)")
    for method, r in results.items():
        f = r["features"]
        print(
            f"{method:>7} | {f['zero_fraction']:13.3f} | {f['dead_fraction']:.3f} | {f['l0']:4.0f} | "
            f"{f['class_consistency']:.3f}"
        )
    print(f"results: {os.path.join(training_args.output_dir, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
    end_process_group()  # under accelerate launch: leave the process group together, none aborts at exit
