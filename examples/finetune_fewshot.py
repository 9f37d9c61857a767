"""Few-shot fine-tuning: poly vs mono feature layers trained on k examples per class.

The paper's few-shot question in one command: the same backbone, the same head, the same training
budget; only ``feature_layer`` differs (``linear`` = polysemantic baseline, ``nonneg`` = NCL-style
non-negative features, ``sae`` / ``topk`` = sparse autoencoder codes). For every ``k`` in
``--shots`` a seeded stratified sample of exactly ``k`` training examples per class is drawn
(:func:`hf_monosem.scenarios.few_shot`; the k-shot set is contained in the k'-shot set for k < k'),
each feature layer is fine-tuned on it, and everything is evaluated on the clean test set
(accuracy, macro-F1, and how sparse / class-consistent the test features are).

Offline default (no arguments): MiniLM-L6 (mean pooling) fully fine-tuned on 5 and 20 sentiment
tweets per class (3 classes; 15 epochs, AdamW 1e-4, batch 16), linear vs nonneg, 1,000 test
tweets. Measured once: 7.8 min with ``accelerate launch`` on 2 CPU cores shared with another
training job (``OMP_NUM_THREADS=1``; most of it is the four 1,000-tweet test passes). Clean test
accuracy for k = 5 / 20: linear 0.477 / 0.625, nonneg 0.479 / 0.625 (one subset seed: differences
this small are noise); class consistency of the test features 0.52 / 0.62 vs 0.53 / 0.65::

    accelerate launch examples/finetune_fewshot.py
    accelerate launch examples/finetune_fewshot.py --shots 1,5,20,50 --freeze_backbone --learning_rate 1e-3
    accelerate launch examples/finetune_fewshot.py --dataset_name fashion_mnist --shots 10,100 \\
        --learning_rate 2e-3 --num_train_epochs 30
    accelerate launch examples/finetune_fewshot.py \\
        --model_name_or_path google/vit-base-patch16-224-in21k --dataset_name cifar100 \\
        --label_column fine_label --shots 1,5,10 --feature_layers linear,nonneg,topk --bf16

Writes to ``--output_dir`` (default ``runs/finetune_fewshot``): ``fewshot_subsets.json`` (the row
indices of every k-shot set, reused by a resumed run), one folder ``k{k}/{feature_layer}`` per run
holding the final model (loadable with ``AutoModelFor*Classification.from_pretrained`` after
``import hf_monosem``), its model card (``README.md``), its Trainer checkpoints, ``train_results.json`` /
``eval_results.json`` and ``run_result.json``; ``results.json`` and ``results.png`` (test accuracy vs k).
``--resume_from_checkpoint True`` skips finished runs and resumes the others from their last checkpoint.
A dataset you name keeps every row unless ``--max_train_samples`` / ``--max_eval_samples`` say otherwise
(the built-in tweets default to 1,000 test rows). As with transformers' ``run_*.py``: ``--push_to_hub``
pushes each run to its own repository (``--hub_model_id ID`` gives ``ID-k5-linear``, ...),
``--report_to`` logs each run to its own tracker run, ``--log_level`` sets the verbosity, and the
backbone takes ``--model_revision``, ``--token``, ``--trust_remote_code``, ``--cache_dir``,
``--attn_implementation`` and ``--dtype``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import transformers
from datasets import DatasetDict
from example_utils import (
    DataArguments,
    FeatureLayerArguments,
    parse_feature_layers,
    parse_positive_ints,
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
    LABEL_COLUMN,
    backbone_source,
    build_classifier,
    image_channels,
    label_names,
    load_dataset_by_name,
    preprocess,
)
from hf_monosem.evaluation import KEEP_FEATURES, make_compute_metrics
from hf_monosem.hub import feature_layer_repo_ids
from hf_monosem.scenarios import few_shot
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

SUBSETS_FILE = "fewshot_subsets.json"
ROW_COLUMN = "__fewshot_row__"
#: sample sizes of the built-in offline datasets when --max_train_samples / --max_eval_samples are not given
BUILTIN_SAMPLES = {"max_train_samples": 0, "max_eval_samples": 1000}


@dataclass
class FewShotArguments:
    """Which k-shot training sets to draw."""

    shots: str = field(
        default="5,20",
        metadata={
            "help": "Comma-separated k values: train on exactly k examples per class, one run per k and "
            "feature layer (every class needs at least max(k) training rows)."
        },
    )
    subset_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the k-shot sampling (default: --seed). Stored with the subsets."},
    )


ARGUMENT_DATACLASSES = (FeatureLayerArguments, DataArguments, FewShotArguments, TrainingArguments)


def parse_args(argv=None):
    parser = HfArgumentParser(ARGUMENT_DATACLASSES)
    # Defaults that suit a CPU laptop; every one can be overridden on the command line. Few-shot runs
    # are short, so a checkpoint is kept at the end of each run only (use --save_strategy epoch for more).
    parser.set_defaults(
        output_dir="runs/finetune_fewshot",
        num_train_epochs=15,
        learning_rate=1e-4,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=10_000,
        save_total_limit=1,
        logging_steps=5,
        report_to="none",
        seed=0,
        weight_decay=0.01,
    )
    model_args, data_args, shot_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    kinds = parse_feature_layers(parser, model_args.feature_layers)
    shots = parse_positive_ints(parser, shot_args.shots, "--shots")
    parse_sample_limits(data_args, **BUILTIN_SAMPLES)
    try:
        feature_layer_repo_ids(training_args.hub_model_id, run_names(kinds, shots), training_args.output_dir)
    except ValueError as error:
        parser.error(f"--hub_model_id: {error}")
    if shot_args.subset_seed is None:
        shot_args.subset_seed = training_args.seed
    if shot_args.subset_seed < 0:
        parser.error(f"--subset_seed {shot_args.subset_seed} must be >= 0")
    return model_args, data_args, shot_args, training_args, kinds, shots


def run_names(kinds, shots) -> list[str]:
    """One name per run, ``k{k}-{feature_layer}``: its Hub repository and tracker run are named after it."""
    return [f"k{k}-{kind}" for k in shots for kind in kinds]


def draw_subsets(train, shots, shot_args, training_args, data_args) -> dict[int, list[int]]:
    """Row indices of every k-shot set, drawn once and stored so that a resumed run reuses them.

    ``train``'s class ids are in ``LABEL_COLUMN``; the stored spec names the ``--label_column`` they came
    from."""
    path = os.path.join(training_args.output_dir, SUBSETS_FILE)
    spec = {
        "dataset": data_args.dataset_name,
        "train_split": data_args.train_split,
        "label_column": data_args.label_column,
        "num_rows": len(train),
        "seed": shot_args.subset_seed,
    }
    stored = {}
    if os.path.isfile(path):
        payload = read_json(path)
        if {k: payload.get(k) for k in spec} != spec:
            raise SystemExit(
                f"{path} was drawn for { ({k: payload.get(k) for k in spec}) }, not {spec}; "
                "use another --output_dir or delete the old run"
            )
        stored = {int(k): v for k, v in payload["subsets"].items()}
    rows = train.select_columns([LABEL_COLUMN]).add_column(ROW_COLUMN, np.arange(len(train)))
    subsets = dict(stored)
    for k in shots:
        if k in subsets:
            continue
        try:
            subsets[k] = few_shot(rows, k, seed=shot_args.subset_seed, label_column=LABEL_COLUMN)[ROW_COLUMN]
        except ValueError as error:
            raise SystemExit(f"--shots {k}: {error}") from None
        subsets[k] = [int(i) for i in subsets[k]]
    if subsets != stored and training_args.process_index == 0:
        write_json(path, {**spec, "subsets": {str(k): v for k, v in sorted(subsets.items())}})
    return {k: subsets[k] for k in shots}


def plot(results: dict, path: str, dataset: str) -> None:
    """Clean test accuracy and class consistency of the test features against k (log scale)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    panels = fig.subplots(1, 2)
    shots = sorted({int(k) for by_k in results.values() for k in by_k})
    for ax, key, ylabel in zip(
        panels,
        ("test_accuracy", "features_class_consistency"),
        ("clean test accuracy", "class consistency of test features"),
    ):
        for kind, by_k in results.items():
            ks = sorted(by_k, key=int)
            ax.plot([int(k) for k in ks], [by_k[k][key] for k in ks], marker="o", label=kind)
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set(xlabel="training examples per class (k)", ylabel=ylabel)
        ax.legend()
    panels[0].set_title(f"few-shot fine-tuning on {dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    model_args, data_args, shot_args, training_args, kinds, shots = parse_args(argv)
    use_available_cores()  # accelerate launch defaults to one thread on CPU
    setup_logging(training_args, logger)
    logger.info(f"training/evaluation parameters {training_args}")
    with training_args.main_process_first(desc="loading the dataset and drawing the k-shot sets"):
        # the label column is renamed to LABEL_COLUMN
        data, modality = load_dataset_by_name(
            data_args.dataset_name, seed=training_args.seed, **data_args.loading_options
        )
        train, test = data[data_args.train_split], data[data_args.eval_split]
        names = label_names(train)
        source = backbone_source(
            model_args.model_name_or_path,
            modality,
            num_channels=image_channels(train),
            **model_args.loading_options,
        )
        subsets = draw_subsets(train, shots, shot_args, training_args, data_args)

        # preprocess only the rows some k-shot set uses (tokenising a whole corpus would dominate the run)
        union = sorted(set().union(*subsets.values()))
        augment = (
            data_args.train_augmentation and modality == "image" and "pixel_values" not in train.column_names
        )
        data, processor = preprocess(
            DatasetDict({data_args.train_split: train.select(union), data_args.eval_split: test}),
            modality,
            source.get("backbone"),
            augment_split=data_args.train_split if augment else None,
            loading_kwargs=source.get("backbone_loading_kwargs"),
            **data_args.preprocessing_options,
        )
    train, test = data[data_args.train_split], data[data_args.eval_split]
    position = {row: i for i, row in enumerate(union)}
    collator = DataCollatorWithPadding(processor) if modality == "text" else default_data_collator
    main_process = training_args.process_index == 0
    repo_ids = feature_layer_repo_ids(
        training_args.hub_model_id, run_names(kinds, shots), training_args.output_dir
    )
    run_name = training_args.run_name or os.path.basename(os.path.abspath(training_args.output_dir))
    named_dataset = data_args.dataset_name not in BUILTIN_DATASETS and not os.path.isdir(
        data_args.dataset_name
    )
    dataset_label = (
        os.path.basename(os.path.normpath(data_args.dataset_name))
        if os.path.isdir(data_args.dataset_name)
        else data_args.dataset_name
    )

    results: dict[str, dict[str, dict]] = {kind: {} for kind in kinds}
    for k in shots:
        subset = train.select([position[row] for row in subsets[k]])
        for kind in kinds:
            run_dir = os.path.join(training_args.output_dir, f"k{k}", kind)
            done = os.path.join(run_dir, "run_result.json")
            if wants_resume(training_args.resume_from_checkpoint) and os.path.isfile(done):
                results[kind][str(k)] = read_json(done)
                logger.warning(f"k={k} {kind}: finished before, result reused from {done}")
                continue
            # one folder, one Hub repository and one tracker run per k and feature layer
            args = dataclasses.replace(
                training_args,
                output_dir=run_dir,
                run_name=f"{run_name}-k{k}-{kind}",
                hub_model_id=repo_ids[f"k{k}-{kind}"],
            )
            set_seed(args.seed)  # the same head initialisation for every feature layer
            model = build_classifier(kind, names, modality, source, **model_args.classifier_options)
            trainer = MonoSemanticTrainer(
                model=model,
                args=args,
                train_dataset=subset,
                eval_dataset=test,
                data_collator=collator,
                processing_class=processor,
                compute_metrics=make_compute_metrics(full_report=True, prefix="features_"),
            )
            logger.info(f"k={k} {kind}: fine-tuning on {len(subset)} rows into {run_dir}")
            train_result = trainer.train(
                resume_from_checkpoint=resume_checkpoint(run_dir, training_args.resume_from_checkpoint),
                ignore_keys_for_eval=KEEP_FEATURES,
            )
            trainer.save_model()
            trainer.log_metrics("train", train_result.metrics)
            trainer.save_metrics("train", train_result.metrics)
            trainer.save_state()
            # one pass over the test set: accuracy, macro-F1 and the monosemanticity of the test features
            metrics = trainer.evaluate(ignore_keys=KEEP_FEATURES)
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
            card = {
                "results": [
                    {
                        "dataset": dataset_label,
                        "split": data_args.eval_split,
                        "scenario": "few_shot",
                        "level": k,
                        "method": kind,
                        "metric": metric,
                        "value": metrics[f"eval_{metric}"],
                        "seeds": [shot_args.subset_seed],
                    }
                    for metric in ("accuracy", "macro_f1")
                ],
                "dataset_tags": data_args.dataset_name if named_dataset else None,
                "recipe": {
                    **trainer.training_recipe(),
                    "training data": f"{k} examples per class of "
                    f"`{data_args.dataset_name}` ({len(subset)} rows, subset seed {shot_args.subset_seed})",
                },
            }
            if args.push_to_hub:
                trainer.push_to_hub(commit_message="End of training", **card)
            else:
                trainer.create_model_card(**card)
            trainer.end_tracker_runs()  # the next run logs to a tracker run of its own
            if main_process:
                result = {
                    "k": k,
                    "train_rows": len(subset),
                    "test_accuracy": metrics["eval_accuracy"],
                    "test_macro_f1": metrics["eval_macro_f1"],
                    "train_steps": trainer.state.global_step,
                    **{
                        key[len("eval_") :]: value
                        for key, value in metrics.items()
                        if key.startswith("eval_features_")
                    },
                    "checkpoint": run_dir,
                }
                write_json(done, public_record(result, training_args.output_dir))
                results[kind][str(k)] = result
            del trainer, model

    if main_process:
        payload = {
            "command": recorded_command(
                __file__, sys.argv[1:] if argv is None else argv
            ),  # no token, no local paths
            "dataset": data_args.dataset_name,
            "modality": modality,
            "backbone": model_args.model_name_or_path
            or source.get("backbone")
            or "small-resnet (random init)",
            "shots": shots,
            "subset_seed": shot_args.subset_seed,
            "seed": training_args.seed,
            "freeze_backbone": model_args.freeze_backbone,
            "test_rows": len(test),
            "results": results,
            "records": [
                {
                    "dataset": data_args.dataset_name,
                    "scenario": "few_shot",
                    "level": int(k),
                    "method": kind,
                    "metric": "accuracy",
                    "value": r["test_accuracy"],
                    "seeds": [shot_args.subset_seed],
                }
                for kind, by_k in results.items()
                for k, r in by_k.items()
            ],
        }
        write_json(
            os.path.join(training_args.output_dir, "results.json"),
            public_record(payload, training_args.output_dir),
        )
        plot(results, os.path.join(training_args.output_dir, "results.png"), data_args.dataset_name)
        print(f"\n{'feature_layer':>13} | {'k':>4} | clean test acc | macro-F1 |   L0 | class consistency")
        for kind, by_k in results.items():
            for k, r in sorted(by_k.items(), key=lambda item: int(item[0])):
                print(
                    f"{kind:>13} | {int(k):4d} | {r['test_accuracy']:14.3f} | {r['test_macro_f1']:8.3f} | "
                    f"{r['features_l0']:4.0f} | {r['features_class_consistency']:.3f}"
                )
        print(f"results: {os.path.join(training_args.output_dir, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
    end_process_group()  # under accelerate launch: leave the process group together, none aborts at exit
