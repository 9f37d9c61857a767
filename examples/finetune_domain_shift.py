"""Domain shift: fine-tune poly vs mono feature layers on a source domain, test in-domain and shifted.

The paper's out-of-domain question in one command: the same backbone, the same head, the same
training budget; only ``feature_layer`` differs (``linear`` = polysemantic baseline, ``nonneg`` =
NCL-style non-negative features, ``sae`` / ``topk`` = sparse autoencoder codes). Every model trains
on the source domain only and is evaluated on held-out source-domain data (in-domain) and on the
target domain (shifted), with the sparsity and class consistency of its features on both.

Two ways to define the shift (``--shift_by``):

* ``split``: the dataset has a shifted test split (``--shifted_split``, default ``test_shifted``):
  ``--dataset_name newsgroups_shift`` (20 Newsgroups computers vs recreation: graphics+ms-windows /
  autos+motorcycles -> mac.hardware+windows.x / baseball+hockey) and ``--dataset_name digits``
  (UCI optical digits -> real MNIST digits at 8x8, a small ResNet trained from scratch);
* ``domain``: a domain column (``--domain_column``) splits train and test rows into source domains
  (``--source_domains``) and target domains (``--target_domains``, default every other domain):
  the tweets default, airline tweets -> Apple / self-driving cars / other topics
  (:func:`hf_monosem.scenarios.split_by_domain`).

``auto`` (default) uses ``split`` when the dataset has ``--shifted_split``, else ``domain``.

Offline default (no arguments): MiniLM-L6 (mean pooling) fully fine-tuned on 1,000 airline tweets,
linear vs nonneg, 2 epochs, tested on 500 airline and 500 other-topic tweets (Apple, self-driving
cars, Coachella, ...). Measured once: 5.9 min with ``accelerate launch`` on 2 CPU cores partly shared
with another job (``OMP_NUM_THREADS=1``). Accuracy in-domain / shifted: linear 0.812 / 0.434, nonneg
0.792 / 0.418 (one seed); class consistency of the features in-domain / shifted: 0.67 / 0.48 vs
0.69 / 0.48. ``--dataset_name digits`` with the command below: 56 s, linear 0.978 / 0.518, nonneg
0.981 / 0.560. Several CPU processes: ``accelerate launch --multi_gpu --num_processes 2 ... --use_cpu``::

    accelerate launch examples/finetune_domain_shift.py
    accelerate launch examples/finetune_domain_shift.py --dataset_name newsgroups_shift --max_length 128
    accelerate launch examples/finetune_domain_shift.py --dataset_name digits --learning_rate 2e-3 \\
        --num_train_epochs 20 --per_device_train_batch_size 64   # digits -> MNIST, 1 min
    accelerate launch examples/finetune_domain_shift.py --source_domains airline,apple \\
        --target_domains driverless_cars --feature_layers linear,nonneg,topk

Writes to ``--output_dir`` (default ``runs/finetune_domain_shift``): one folder per feature layer
(the final model, loadable with ``AutoModelFor*Classification.from_pretrained`` after
``import hf_monosem``, its last Trainer checkpoint and ``run_result.json``), ``results.json`` and
``results.png`` (in-domain vs shifted accuracy per epoch and after training); each folder also holds the
model card (``README.md``) and ``train_results.json`` / ``eval_results.json``.
``--resume_from_checkpoint True`` skips finished feature layers and resumes the others. A dataset you
name keeps every row unless ``--max_train_samples`` / ``--max_eval_samples`` say otherwise (the built-in
ones default to 1,000 training and 500 test rows per test set). As with transformers' ``run_*.py``:
``--push_to_hub`` pushes each feature layer to its own repository (``--hub_model_id ID`` gives
``ID-linear``, ...), ``--report_to`` logs each to its own tracker run, ``--log_level`` sets the
verbosity, training images of Hub datasets are augmented (random resized crop + flip), and the backbone
takes ``--model_revision``, ``--token``, ``--trust_remote_code``, ``--cache_dir``,
``--attn_implementation`` and ``--dtype``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import transformers
from datasets import DatasetDict
from example_utils import (
    DataArguments,
    FeatureLayerArguments,
    parse_feature_layers,
    parse_sample_limits,
    setup_logging,
)
from transformers import (
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_monosem import MonoSemanticTrainer
from hf_monosem.cached.distributed import end_process_group
from hf_monosem.data import (
    BUILTIN_DATASETS,
    backbone_source,
    build_classifier,
    image_channels,
    label_names,
    load_dataset_by_name,
    preprocess,
    subsample,
)
from hf_monosem.evaluation import KEEP_FEATURES, make_compute_metrics
from hf_monosem.hub import feature_layer_repo_ids
from hf_monosem.scenarios import split_by_domain
from hf_monosem.training import use_available_cores
from hf_monosem.training.checkpoints import (
    public_record,
    read_json,
    recorded_command,
    resume_checkpoint,
    wants_resume,
    write_json,
)

logger = transformers.utils.logging.get_logger(__name__)

SHIFT_MODES = ("auto", "split", "domain")
TEST_SETS = ("in_domain", "shifted")
#: sample sizes of the built-in offline datasets when --max_train_samples / --max_eval_samples are not given
BUILTIN_SAMPLES = {"max_train_samples": 1000, "max_eval_samples": 500}


@dataclass
class DomainShiftArguments:
    """What the source (training) domain and the shifted (target) domain are."""

    shift_by: str = field(
        default="auto",
        metadata={
            "help": "split: train on --train_split, test on --eval_split (in-domain) and --shifted_split; "
            "domain: split train and test rows by --domain_column; auto: split if the dataset has "
            "--shifted_split, else domain."
        },
    )
    shifted_split: str = field(
        default="test_shifted", metadata={"help": "The shifted test split (shift_by=split)."}
    )
    domain_column: str = field(
        default="domain", metadata={"help": "Column naming each row's domain (shift_by=domain)."}
    )
    source_domains: str = field(
        default="airline", metadata={"help": "Comma-separated training domains (shift_by=domain)."}
    )
    target_domains: str = field(
        default="",
        metadata={"help": "Comma-separated shifted domains (shift_by=domain); empty: every other domain."},
    )


ARGUMENT_DATACLASSES = (FeatureLayerArguments, DataArguments, DomainShiftArguments, TrainingArguments)


def parse_args(argv=None):
    parser = HfArgumentParser(ARGUMENT_DATACLASSES)
    # Defaults that suit a CPU laptop; every one can be overridden on the command line.
    parser.set_defaults(
        output_dir="runs/finetune_domain_shift",
        num_train_epochs=2,
        learning_rate=5e-5,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=10,
        report_to="none",
        seed=0,
        weight_decay=0.01,
    )
    model_args, data_args, shift_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    kinds = parse_feature_layers(parser, model_args.feature_layers)
    parse_sample_limits(data_args, **BUILTIN_SAMPLES)
    try:
        feature_layer_repo_ids(training_args.hub_model_id, kinds, training_args.output_dir)
    except ValueError as error:
        parser.error(f"--hub_model_id: {error}")
    if shift_args.shift_by not in SHIFT_MODES:
        parser.error(f"--shift_by {shift_args.shift_by!r}: allowed {', '.join(SHIFT_MODES)}")
    if shift_args.shift_by != "split" and not _values(shift_args.source_domains):
        parser.error(f"--source_domains {shift_args.source_domains!r} names no domain")
    overlap = set(_values(shift_args.source_domains)) & set(_values(shift_args.target_domains))
    if overlap:
        parser.error(
            f"--target_domains {shift_args.target_domains!r} shares {sorted(overlap)} with --source_domains"
        )
    return model_args, data_args, shift_args, training_args, kinds


def _values(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def shifted_data(data_args, shift_args, seed: int) -> tuple[DatasetDict, str, str]:
    """``train`` (source domain), ``in_domain`` and ``shifted`` test sets; the modality; the mode used."""
    every_row = {
        **data_args.loading_options,
        "max_train_samples": None,
        "max_eval_samples": None,
    }  # cut after the split
    data, modality = load_dataset_by_name(
        data_args.dataset_name, seed=seed, **every_row
    )  # labels in LABEL_COLUMN
    mode = shift_args.shift_by
    if mode == "auto":
        mode = "split" if shift_args.shifted_split in data else "domain"
    if mode == "split":
        if shift_args.shifted_split not in data:
            raise SystemExit(
                f"--shifted_split {shift_args.shifted_split!r} not in dataset {data_args.dataset_name!r}; "
                f"it has {sorted(data)} (or use --shift_by domain)"
            )
        parts = {
            "train": data[data_args.train_split],
            "in_domain": data[data_args.eval_split],
            "shifted": data[shift_args.shifted_split],
        }
    else:
        column = shift_args.domain_column
        train, test = data[data_args.train_split], data[data_args.eval_split]
        if column not in train.column_names:
            raise SystemExit(
                f"--domain_column {column!r} not in dataset {data_args.dataset_name!r}; "
                f"columns: {train.column_names}"
            )
        source = _values(shift_args.source_domains)
        target = _values(shift_args.target_domains) or sorted(
            {d for d in train.unique(column) + test.unique(column) if d not in source}, key=str
        )
        try:
            split_train = split_by_domain(train, column, source, target)
            split_test = split_by_domain(test, column, source, target)
        except ValueError as error:
            raise SystemExit(
                f"--source_domains {shift_args.source_domains!r} / --target_domains "
                f"{shift_args.target_domains!r}: {error}"
            ) from None
        parts = {
            "train": split_train["train"],
            "in_domain": split_test["train"],
            "shifted": split_test["test"],
        }
    limits = {
        "train": data_args.max_train_samples,
        "in_domain": data_args.max_eval_samples,
        "shifted": data_args.max_eval_samples,
    }
    parts = {
        name: subsample(part, limits[name], seed) if limits[name] else part for name, part in parts.items()
    }
    for name, part in parts.items():
        if len(part) == 0:
            raise SystemExit(f"the {name} set of {data_args.dataset_name!r} is empty (shift_by={mode})")
    return DatasetDict(parts), modality, mode


def final_metrics(trainer, dataset, name: str) -> dict[str, float]:
    """Accuracy, macro-F1 and ``features_*`` monosemanticity on one test set after training: the last
    per-epoch evaluation when it is current, else one more evaluation pass."""
    prefix, step = f"eval_{name}_", trainer.state.global_step
    metrics = next(
        (
            log
            for log in reversed(trainer.state.log_history)
            if f"{prefix}accuracy" in log and log.get("step") == step
        ),
        None,
    )
    if metrics is None:
        metrics = trainer.evaluate(dataset, ignore_keys=KEEP_FEATURES, metric_key_prefix=prefix[:-1])
    return {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}


def plot(results: dict, path: str, title: str) -> None:
    """In-domain (solid) and shifted (dashed) accuracy per epoch; both after training."""
    import pandas as pd
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    curves, after = fig.subplots(1, 2)
    for i, (kind, r) in enumerate(results.items()):
        for name, style in zip(TEST_SETS, ("-", "--")):
            curve = r["eval_curves"].get(name) or []
            if curve:
                curves.plot(
                    [e for e, _ in curve],
                    [a for _, a in curve],
                    style,
                    marker="o",
                    color=f"C{i}",
                    label=f"{kind} ({name})",
                )
    curves.set(xlabel="epoch", ylabel="test accuracy", title=title)
    curves.legend(fontsize=8)
    bars = pd.DataFrame(
        {
            "in-domain": [r["in_domain_accuracy"] for r in results.values()],
            "shifted": [r["shifted_accuracy"] for r in results.values()],
        },
        index=list(results),
    )
    bars.plot.bar(ax=after, rot=0, ylim=(0, 1), title="after training").legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    model_args, data_args, shift_args, training_args, kinds = parse_args(argv)
    use_available_cores()  # accelerate launch defaults to one thread on CPU
    setup_logging(training_args, logger)
    logger.info(f"training/evaluation parameters {training_args}")
    with training_args.main_process_first(desc="loading, splitting and preprocessing the dataset"):
        data, modality, mode = shifted_data(data_args, shift_args, seed=training_args.seed)
        names = label_names(data["train"])
        source = backbone_source(
            model_args.model_name_or_path,
            modality,
            num_channels=image_channels(data["train"]),
            **model_args.loading_options,
        )
        augment = (
            data_args.train_augmentation
            and modality == "image"
            and "pixel_values" not in data["train"].column_names
        )
        data, processor = preprocess(
            data,
            modality,
            source.get("backbone"),
            augment_split="train" if augment else None,
            loading_kwargs=source.get("backbone_loading_kwargs"),
            **data_args.preprocessing_options,
        )
    logger.info(
        f"{data_args.dataset_name} ({mode} shift): "
        + ", ".join(f"{n} {len(d)} rows" for n, d in data.items())
    )
    collator = DataCollatorWithPadding(processor) if modality == "text" else default_data_collator
    main_process = training_args.process_index == 0
    tests = {name: data[name] for name in TEST_SETS}
    repo_ids = feature_layer_repo_ids(training_args.hub_model_id, kinds, training_args.output_dir)
    run_name = training_args.run_name or os.path.basename(os.path.abspath(training_args.output_dir))
    named_dataset = data_args.dataset_name not in BUILTIN_DATASETS and not os.path.isdir(
        data_args.dataset_name
    )
    dataset_label = (
        os.path.basename(os.path.normpath(data_args.dataset_name))
        if os.path.isdir(data_args.dataset_name)
        else data_args.dataset_name
    )
    splits = {
        "in_domain": data_args.eval_split,  # where each test set comes from, for the model card
        "shifted": shift_args.shifted_split if mode == "split" else data_args.eval_split,
    }

    results = {}
    for kind in kinds:
        run_dir = os.path.join(training_args.output_dir, kind)
        done = os.path.join(run_dir, "run_result.json")
        if wants_resume(training_args.resume_from_checkpoint) and os.path.isfile(done):
            results[kind] = read_json(done)
            logger.warning(f"{kind}: finished before, result reused from {done}")
            continue
        # one folder, one Hub repository and one tracker run per feature layer
        args = dataclasses.replace(
            training_args, output_dir=run_dir, run_name=f"{run_name}-{kind}", hub_model_id=repo_ids[kind]
        )
        set_seed(args.seed)  # the same initialisation for every feature layer
        model = build_classifier(kind, names, modality, source, **model_args.classifier_options)
        trainer = MonoSemanticTrainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            eval_dataset=tests,
            data_collator=collator,
            processing_class=processor,
            compute_metrics=make_compute_metrics(full_report=True, prefix="features_"),
        )
        logger.info(f"{kind}: fine-tuning into {run_dir}")
        # evaluations keep the features, so accuracy and monosemanticity come from the same pass
        train_result = trainer.train(
            resume_from_checkpoint=resume_checkpoint(run_dir, training_args.resume_from_checkpoint),
            ignore_keys_for_eval=KEEP_FEATURES,
        )
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics = {name: final_metrics(trainer, tests[name], name) for name in TEST_SETS}
        flat = {
            f"eval_{name}_{key}": value
            for name, m in metrics.items()
            for key, value in m.items()
            if not isinstance(value, (dict, list))
        }
        trainer.log_metrics("eval", flat)
        trainer.save_metrics("eval", flat)
        card = {
            "results": [
                {
                    "dataset": dataset_label,
                    "split": splits[name],
                    "scenario": f"domain_shift_{name}",
                    "level": None,
                    "method": kind,
                    "metric": metric,
                    "value": metrics[name][metric],
                    "seeds": [training_args.seed],
                }
                for name in TEST_SETS
                for metric in ("accuracy", "macro_f1")
            ],
            "dataset_tags": data_args.dataset_name if named_dataset else None,
            "recipe": {
                **trainer.training_recipe(),
                "training data": f"{len(data['train'])} rows of the source "
                f"domain of `{data_args.dataset_name}` ({mode} shift)",
            },
        }
        if args.push_to_hub:
            trainer.push_to_hub(commit_message="End of training", **card)
        else:
            trainer.create_model_card(**card)
        trainer.end_tracker_runs()  # the next feature layer logs to a tracker run of its own
        if main_process:
            result = {
                "in_domain_accuracy": metrics["in_domain"]["accuracy"],
                "shifted_accuracy": metrics["shifted"]["accuracy"],
                "accuracy_drop": metrics["in_domain"]["accuracy"] - metrics["shifted"]["accuracy"],
                "in_domain_macro_f1": metrics["in_domain"]["macro_f1"],
                "shifted_macro_f1": metrics["shifted"]["macro_f1"],
                **{
                    f"features_{name}": {
                        key[len("features_") :]: value
                        for key, value in metrics[name].items()
                        if key.startswith("features_")
                    }
                    for name in TEST_SETS
                },
                "eval_curves": {
                    name: [
                        (h["epoch"], h[f"eval_{name}_accuracy"])
                        for h in trainer.state.log_history
                        if f"eval_{name}_accuracy" in h
                    ]
                    for name in TEST_SETS
                },
                "checkpoint": run_dir,
            }
            write_json(done, public_record(result, training_args.output_dir))
            results[kind] = result
        del trainer, model

    if main_process:
        if mode == "split":
            shift = {
                "mode": "split",
                "train_split": data_args.train_split,
                "in_domain_split": data_args.eval_split,
                "shifted_split": shift_args.shifted_split,
            }
        else:
            shift = {
                "mode": "domain",
                "domain_column": shift_args.domain_column,
                "source": _values(shift_args.source_domains),
                "target": _values(shift_args.target_domains) or "every other domain",
            }
        payload = {
            "command": recorded_command(
                __file__, sys.argv[1:] if argv is None else argv
            ),  # no token, no local paths
            "dataset": data_args.dataset_name,
            "modality": modality,
            "backbone": model_args.model_name_or_path
            or source.get("backbone")
            or "small-resnet (random init)",
            "shift": shift,
            "rows": {name: len(part) for name, part in data.items()},
            "seed": training_args.seed,
            "freeze_backbone": model_args.freeze_backbone,
            "results": results,
            "records": [
                {
                    "dataset": data_args.dataset_name,
                    "scenario": f"domain_shift_{name}",
                    "level": 0,
                    "method": kind,
                    "metric": "accuracy",
                    "value": r[f"{name}_accuracy"],
                    "seeds": [training_args.seed],
                }
                for kind, r in results.items()
                for name in TEST_SETS
            ],
        }
        write_json(
            os.path.join(training_args.output_dir, "results.json"),
            public_record(payload, training_args.output_dir),
        )
        plot(
            results,
            os.path.join(training_args.output_dir, "results.png"),
            f"{data_args.dataset_name}: {mode} shift",
        )
        print(
            f"\n{'feature_layer':>13} | in-domain acc | shifted acc |  drop | L0 (shifted) | class "
            f"consistency (in/shifted)"
        )
        for kind, r in results.items():
            fi, fs = r["features_in_domain"], r["features_shifted"]
            print(
                f"{kind:>13} | {r['in_domain_accuracy']:13.3f} | {r['shifted_accuracy']:11.3f} | "
                f"{r['accuracy_drop']:5.3f} | {fs['l0']:12.0f} | {fi['class_consistency']:.3f} / "
                f"{fs['class_consistency']:.3f}"
            )
        print(f"results: {os.path.join(training_args.output_dir, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
    end_process_group()  # under accelerate launch: leave the process group together, none aborts at exit
