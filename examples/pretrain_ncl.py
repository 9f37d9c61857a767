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
NCL) are extracted once and linear probes are trained on them (one batched grid,
:func:`hf_monosem.scenarios.grid.label_noise_probe_grid`, the same budget for both methods, no early
stopping) with clean labels and with ``--label_noise`` symmetric label noise, and evaluated on the
clean test labels. Sparsity and class consistency of the test features are reported next to
accuracy.

Scale, honestly: the paper pretrains a ResNet-18 for 200 epochs on ImageNet-100 / CIFAR-100 (batch
256, LARS, projector 512 -> 16384 -> 2048). The offline default is a ~0.2M-parameter ResNet
(:func:`hf_monosem.data.small_resnet_config`) pretrained for 8 epochs on 5,000 Fashion-MNIST images with
a 128 -> 512 -> 512 projector, probed on those 5,000 images and tested on 2,000 -- orders of
magnitude less compute, so its numbers say whether the pipeline works and how sparse NCL's
features get, not whether the paper's robustness gains reproduce. Measured once: 3.1 min with
``accelerate launch`` on 2 quiet CPU cores (``OMP_NUM_THREADS=1``; 7.4 min while another job ran).
Plain NCL (``--activation_loss_weight 0``) collapses here: 63% of the units never fire (L0 18 of
512). The default adds the NCL authors' activation term at weight 10, chosen on 1,000 held-out
training rows by protocol P1 (docs/PROTOCOL.md; docs/results/p1_ncl_selection.md): 3.6% dead, L0
73, class consistency 0.62 vs SimCLR's 0.56, and held-out probe accuracy (clean / 40%-noisy labels,
2 pretraining seeds x 3 probe seeds) 0.755 / 0.731 vs SimCLR's 0.764 / 0.740 -- more
monosemantic and alive, no robustness gain at this scale. Several CPU processes: ``accelerate launch --multi_gpu
--num_processes 2 examples/pretrain_ncl.py --use_cpu``::

    accelerate launch examples/pretrain_ncl.py
    accelerate launch examples/pretrain_ncl.py --max_train_samples 0 --num_train_epochs 100 \\
        --feature_dim 2048 --projector_hidden_dim 4096          # the full 60k training set
    accelerate launch examples/pretrain_ncl.py --dataset_name cifar100 --label_column fine_label \\
        --model_name_or_path microsoft/resnet-18 --image_column img --bf16   # random init of that architecture

Writes to ``--output_dir`` (default ``runs/pretrain_ncl``): one folder per method (``simclr`` /
``ncl``) holding the pretrained ``MonoSemanticModel`` (``AutoModel.from_pretrained`` loads it after
``import hf_monosem``), its last Trainer checkpoint and ``run_result.json``; ``results.json`` and
``results.png`` (contrastive loss per epoch, probe accuracy). ``--resume_from_checkpoint True``
resumes unfinished pretraining runs and reuses finished ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from example_utils import DataArguments, LinearProbeArguments, parse_rate
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
from hf_monosem.cached import unit_rms
from hf_monosem.data import (
    LABEL_COLUMN,
    backbone_source,
    image_channels,
    label_names,
    load_dataset_by_name,
    preprocess,
)
from hf_monosem.evaluation.metrics import monosemanticity_report
from hf_monosem.models import NONNEG_ACTIVATIONS
from hf_monosem.scenarios.grid import label_noise_probe_grid
from hf_monosem.training import CONTRASTIVE_METHODS, IntensityJitterViews, use_available_cores
from hf_monosem.training.checkpoints import read_json, resume_checkpoint, wants_resume, write_json


@dataclass
class PretrainArguments:
    """The model pretrained with each method and its views."""

    methods: str = field(default="simclr,ncl", metadata={"help": "Comma-separated methods: simclr (linear projector "
                                                         "output), ncl (non-negative projector output)."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Backbone architecture (Hub id or folder); default a small ResNet. Randomly initialised "
                  "unless --use_pretrained_backbone."},
    )
    use_pretrained_backbone: bool = field(
        default=False, metadata={"help": "Start from --model_name_or_path's weights instead of a random init."}
    )
    feature_dim: int = field(default=512, metadata={"help": "Projector output width (the probed features)."})
    projector_hidden_dim: int = field(default=512, metadata={"help": "Projector hidden width (same for both methods)."})
    temperature: float = field(default=0.2, metadata={"help": "InfoNCE temperature (the paper: 0.2)."})
    pooling: str | None = field(default=None, metadata={"help": "cls, mean, last or pooler (default per family)."})
    crop_scale_min: float = field(default=0.2, metadata={"help": "Smallest area fraction of the random resized crop."})
    hflip_p: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    intensity_jitter: float = field(
        default=0.4,
        metadata={"help": "1-channel images: contrast factor in [1-s, 1+s] and brightness shift in [-s, s] (units of "
                  "the data std), applied to 80%% of the views; 0 turns it off. RGB inputs use colour jitter instead."},
    )
    text_mask_rate: float = field(default=0.1, metadata={"help": "Text datasets only: token masking rate of the views."})
    nonneg_activation: str = field(
        default="relu",
        metadata={"help": "NCL's non-negativity: relu, or rep_relu (ReLU forward, GELU's gradient backward: the NCL "
                  "authors' CIFAR default, against dead units)."},
    )
    activation_loss_weight: float = field(
        default=10.0,
        metadata={"help": "NCL only: weight of the activation term -mean_j mean_batch |z_j| on the unit-norm "
                  "projector output, against dead units (the Beyond-Interpretability authors' NCL adds it with "
                  "weight 1; 10 was chosen on held-out rows by protocol P1, docs/results/p1_ncl_selection.md; 0: off)."},
    )
    validation_rows: int = field(
        default=0,
        metadata={"help": "Hold out this many stratified training rows and evaluate (pretraining views and probes) on "
                  "them instead of --eval_split: for choosing settings without reading the test set (0: off)."},
    )


@dataclass
class ProbeArguments(LinearProbeArguments):
    """The linear probes trained on each frozen projector's outputs (same budget for every method)."""

    probe_normalize: bool = field(
        default=True,
        metadata={"help": "Rescale every feature vector to unit root-mean-square before probing (keeps zeros and "
                  "signs; the contrastive loss only sees directions)."},
    )


ARGUMENT_DATACLASSES = (PretrainArguments, ProbeArguments, DataArguments, TrainingArguments)


def parse_args(argv=None):
    parser = HfArgumentParser(ARGUMENT_DATACLASSES)
    # Defaults that suit a CPU laptop; every one can be overridden on the command line.
    parser.set_defaults(
        output_dir="runs/pretrain_ncl", dataset_name="fashion_mnist", max_train_samples=5000, max_eval_samples=2000,
        num_train_epochs=8, learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=20, weight_decay=1e-4,
        per_device_train_batch_size=256, per_device_eval_batch_size=256, dataloader_drop_last=True,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, logging_steps=10, report_to="none", seed=0,
    )
    pre_args, probe_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    methods = [m.strip() for m in pre_args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CONTRASTIVE_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        parser.error(f"--methods {pre_args.methods!r}: unknown or repeated {unknown or methods}; "
                     f"allowed {list(CONTRASTIVE_METHODS)}")
    parse_rate(parser, probe_args.label_noise, "--label_noise")
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
        parser.error(f"--nonneg_activation {pre_args.nonneg_activation!r} is not one of {', '.join(NONNEG_ACTIVATIONS)}")
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
    ncl = {"nonneg_activation": pre_args.nonneg_activation, "activation_loss_weight": pre_args.activation_loss_weight}
    config = MonoSemanticConfig(
        **source, pooling=pre_args.pooling or source.get("pooling"), feature_layer=kind,
        feature_dim=pre_args.feature_dim, projector_hidden_dim=pre_args.projector_hidden_dim,
        temperature=pre_args.temperature, **(ncl if kind == "nonneg" else {}),
    )
    return MonoSemanticModel(config)


def probe(features_train, features_test, y_train, y_test, label_feature, num_labels, probe_args) -> dict:
    """Clean and noisy-label linear probes (``probe_seeds`` each) in one batched grid; clean-test accuracy."""
    if probe_args.probe_normalize:
        features_train, features_test = unit_rms(features_train), unit_rms(features_test)
    cells = {"clean": 0.0, f"label_noise_{probe_args.label_noise:g}": probe_args.label_noise}
    probes = label_noise_probe_grid(
        features_train, features_test, y_train, y_test, label_feature, list(cells.values()),
        range(probe_args.probe_seeds), epochs=probe_args.probe_epochs, lr=probe_args.probe_lr,
        batch_size=probe_args.probe_batch_size, num_labels=num_labels,
    )
    return probes.summary(list(cells))


def plot(results: dict, path: str, noise_cell: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bar) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (method, r) in enumerate(results.items()):
        for key, style, label in (("train_loss_curve", "-", "train"), ("eval_loss_curve", "--", "test views")):
            if r["pretraining"].get(key):
                epochs, losses = zip(*r["pretraining"][key])
                ax_loss.plot(epochs, losses, style, color=f"C{i}", label=f"{method} ({label})")
    ax_loss.set(xlabel="epoch", ylabel="InfoNCE loss", title="contrastive pretraining")
    if ax_loss.get_lines():
        ax_loss.legend(fontsize=8)
    methods = list(results)
    x = np.arange(len(methods))
    for offset, cell, label in ((-0.2, "clean", "clean labels"), (0.2, noise_cell, noise_cell.replace("_", " "))):
        means = [results[m]["probe"][cell]["test_accuracy"] for m in methods]
        stds = [results[m]["probe"][cell]["test_accuracy_std"] for m in methods]
        ax_bar.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    ax_bar.set_xticks(x, [f"{m}\n{results[m]['features']['zero_fraction']:.0%} zeros" for m in methods])
    ax_bar.set_ylim(0, 1)
    ax_bar.set(ylabel="linear-probe clean test accuracy", title="probe on frozen projector outputs")
    ax_bar.legend(fontsize=8)
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
        "epochs": trainer.state.epoch, "steps": trainer.state.global_step,
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
    data, modality = load_dataset_by_name(data_args.dataset_name, seed=training_args.seed, **data_args.loading_options)
    names = label_names(data[data_args.train_split])
    source = backbone_source(pre_args.model_name_or_path, modality,
                             num_channels=image_channels(data[data_args.train_split]))
    data, processor = preprocess(data, modality, source.get("backbone"), **data_args.preprocessing_options)
    train, test = data[data_args.train_split], data[data_args.eval_split]
    if pre_args.validation_rows:  # model selection: the test split is never read
        held_out = train.train_test_split(test_size=pre_args.validation_rows, stratify_by_column=LABEL_COLUMN,
                                          seed=training_args.seed)
        train, test = held_out["train"], held_out["test"]
    text = modality == "text"
    collator = DataCollatorWithPadding(processor) if text else default_data_collator
    views = ImageViews(crop_scale=(pre_args.crop_scale_min, 1.0), hflip_p=pre_args.hflip_p,
                       mean=getattr(processor, "image_mean", None), std=getattr(processor, "image_std", None))
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
            model=model, args=args, train_dataset=train, eval_dataset=test,
            data_collator=UnlabeledDataCollator(collator), processing_class=processor, image_views=views,
            mask_rate=pre_args.text_mask_rate if text else 0.0,
        )
        trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, training_args.resume_from_checkpoint))
        trainer.save_model()
        summary = pretraining_summary(trainer)
        if main_process:
            write_json(done, summary)
        pretrained[method] = (trainer.accelerator.unwrap_model(trainer.model), summary)
        del trainer

    if not main_process:  # probing is cheap and runs once, on the main process
        return {}
    num_labels = len(names)
    label_feature = train.features[LABEL_COLUMN]
    y_train = torch.as_tensor(np.asarray(train.with_format("numpy")[LABEL_COLUMN]))
    y_test = torch.as_tensor(np.asarray(test.with_format("numpy")[LABEL_COLUMN]))
    results = {}
    for method, (model, summary) in pretrained.items():
        model.eval()
        extract = dict(batch_size=training_args.per_device_eval_batch_size, output="features",
                       collate_fn=collator, progress=not training_args.disable_tqdm)
        features_train = extract_pooled_features(model, train, **extract)
        features_test = extract_pooled_features(model, test, **extract)
        results[method] = {
            "feature_layer": CONTRASTIVE_METHODS[method], "pretraining": summary,
            "probe": probe(features_train, features_test, y_train, y_test, label_feature, num_labels, probe_args),
            "features": monosemanticity_report(features_test, y_test),
            "checkpoint": os.path.join(training_args.output_dir, method),
        }

    noise_cell = f"label_noise_{probe_args.label_noise:g}"
    payload = {
        "command": " ".join([os.path.basename(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "dataset": data_args.dataset_name, "modality": modality,
        "backbone": pre_args.model_name_or_path or source.get("backbone") or "small-resnet (random init)",
        "train_rows": len(train), "test_rows": len(test), "seed": training_args.seed,
        "evaluated_on": f"{pre_args.validation_rows} held-out training rows" if pre_args.validation_rows
        else data_args.eval_split,
        "pretrain": dataclasses.asdict(pre_args), "probe": dataclasses.asdict(probe_args),
        "scale_note": "far below the paper (ResNet-18, 200 epochs, ImageNet-100 / CIFAR-100)",
        "results": results,
        "records": [
            {"dataset": data_args.dataset_name, "scenario": "label_noise", "level": level, "method": method,
             "metric": "linear_probe_accuracy", "value": r["probe"][cell]["test_accuracy"],
             "seeds": list(range(probe_args.probe_seeds))}
            for method, r in results.items() for cell, level in (("clean", 0.0), (noise_cell, probe_args.label_noise))
        ],
    }
    write_json(os.path.join(training_args.output_dir, "results.json"), payload)
    plot(results, os.path.join(training_args.output_dir, "results.png"), noise_cell)
    print(f"\n{'method':>7} | probe acc clean | probe acc {noise_cell} | zero fraction | dead | L0 | class consistency")
    for method, r in results.items():
        clean, noisy, f = r["probe"]["clean"], r["probe"][noise_cell], r["features"]
        print(f"{method:>7} | {clean['test_accuracy']:.3f} ± {clean['test_accuracy_std']:.3f} | "
              f"{noisy['test_accuracy']:.3f} ± {noisy['test_accuracy_std']:.3f} | {f['zero_fraction']:13.3f} | "
              f"{f['dead_fraction']:.3f} | {f['l0']:4.0f} | {f['class_consistency']:.3f}")
    print(f"results: {os.path.join(training_args.output_dir, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
