"""The data and the backbone of ``hf-monosem report``, loaded and checked before any work.

:func:`load_report_inputs` reads the data (a built-in name, a Hub id, a folder, a csv / json / parquet
file), decides text or image from its columns and from the backbone's config (and says why), splits it
into the track's keys (``train``, ``test`` and, with a domain column, ``domain_train`` / ``domain_test`` /
``domain_shifted``), and refuses every bad argument with the value and what is allowed: a missing
column, one class, too few training rows per class for the requested shots, a label-noise rate at or
above (C-1)/C, a backbone that cannot pool, data of the other modality.

Example:
    >>> from datasets import ClassLabel
    >>> usable_rates([0.0, 0.3, 0.6, 0.8], ClassLabel(num_classes=2))
    [0.0, 0.3]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset, load_from_disk
from datasets import Image as ImageFeature

from ..data.registry import BUILTIN_DATASETS, subsample
from ..models.configuration import MonoSemanticConfig, public_name
from ..scenarios.grid import DOMAIN_SHIFTED, DOMAIN_TEST, DOMAIN_TRAIN, TEST, TRAIN
from .arguments import DEFAULT_RATES, QUICK_RATES, ReportArguments, list_of, numbers_of

__all__ = ["ReportInputs", "load_report_inputs", "usable_rates"]

#: file endings read with the ``datasets`` builder of the same name
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: share of the training split held out as the test split when the data has none
HELD_OUT_SHARE = 0.2


@dataclass
class ReportInputs:
    """What the checks established: the rows of each track key, the labels, the modality and why."""

    modality: str
    column: str  # the text or image column
    splits: dict[str, Dataset]
    label_feature: ClassLabel
    rates: list[float]
    shots: list[int]
    config: MonoSemanticConfig
    decisions: list[str] = field(default_factory=list)


def _load(args: ReportArguments) -> DatasetDict:
    return _load_data(args.dataset_name, args.dataset_config_name, args.split, "dataset_name")


def _load_data(name: str, config_name: str | None, split: str, option: str) -> DatasetDict:
    """The data ``--option`` names (``config_name``: a Hub data set's config; ``split``: the name a single
    file's rows get)."""
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name].load(0)
    ending = os.path.splitext(name)[1].lower()
    try:
        if os.path.isfile(name) and ending in FILE_BUILDERS:
            options = {"delimiter": "\t"} if ending == ".tsv" else {}
            data = load_dataset(FILE_BUILDERS[ending], data_files=name, **options)
        elif os.path.isfile(name):
            raise ValueError(
                f"--{option} {name!r} is a file of an unknown type; allowed endings: "
                f"{', '.join(FILE_BUILDERS)}"
            )
        elif os.path.isdir(name) and any(
            os.path.exists(os.path.join(name, f))
            for f in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            data = load_from_disk(name)
        else:  # a folder of data files or images, or a Hub id (from the local cache when offline)
            data = load_dataset(name, config_name)
    except (FileNotFoundError, ConnectionError, OSError) as error:
        raise ValueError(
            f"--{option} {name!r} is not a built-in ({', '.join(BUILTIN_DATASETS)}), a file, a folder or a "
            f"dataset the Hub (or its local cache) has: {error}"
        ) from error
    return data if isinstance(data, DatasetDict) else DatasetDict({split: data})


def _strings(features) -> list[str]:
    return [c for c, f in features.items() if isinstance(f, Value) and f.dtype in ("string", "large_string")]


def _data_column(args: ReportArguments, train: Dataset) -> tuple[str, str, str]:
    """``(modality, column, why)`` from the columns of the training split."""
    features = train.features
    columns = list(features)
    for option, wanted in (("text_column", args.text_column), ("image_column", args.image_column)):
        if wanted is not None and wanted not in features:
            raise ValueError(f"--{option} {wanted!r} is not a column of the data; allowed: {columns}")
    if args.image_column or "pixel_values" in features:
        column = args.image_column or "pixel_values"
        return "image", column, f"column {column!r} holds images"
    if args.text_column:
        return "text", args.text_column, f"column {args.text_column!r} holds the texts (--text_column)"
    images = [c for c, f in features.items() if isinstance(f, ImageFeature)]
    if images:
        return "image", images[0], f"column {images[0]!r} holds images"
    strings = [c for c in _strings(features) if c not in (args.label_column, args.domain_column)]
    if "text" in strings or len(strings) == 1:
        column = "text" if "text" in strings else strings[0]
        return "text", column, f"column {column!r} holds strings"
    raise ValueError(
        f"cannot tell which column holds the inputs: string columns {strings}, no image column; allowed: "
        f"--text_column (one of {strings}) or --image_column (one of {columns})"
    )


def _backbone_config(args: ReportArguments, modality: str) -> tuple[MonoSemanticConfig, str]:
    """The backbone's config (no weights read) with the pooling it will use; refuses a backbone that cannot
    pool, or one of the other modality."""
    try:
        config = MonoSemanticConfig(
            backbone=args.model_name_or_path,
            pooling=args.pooling,
            feature_layer="linear",
            feature_dim=8,
            freeze_backbone=True,
            backbone_loading_kwargs=args.loading_kwargs() or None,
        )
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--model_name_or_path {args.model_name_or_path!r} cannot serve as a pooled backbone: {error}"
        ) from error
    backbone = config.backbone_config
    reads_images = hasattr(backbone, "num_channels") or hasattr(backbone, "image_size")
    if reads_images != (modality == "image"):
        kind = "images" if reads_images else "tokens"
        raise ValueError(
            f"--model_name_or_path {args.model_name_or_path!r} ({backbone.model_type}) reads {kind}, but the "
            f"data is {modality}; allowed: a {modality} backbone, or --text_column / --image_column naming "
            "the column it reads"
        )
    return (
        config,
        f"{backbone.model_type} backbone, {config.pooling} pooling of width {config.backbone_hidden_size}",
    )


def _class_labels(data: DatasetDict, column: str) -> tuple[DatasetDict, ClassLabel]:
    """The label column as a ``ClassLabel`` (strings encoded in sorted order)."""
    feature = data[next(iter(data))].features[column]
    if isinstance(feature, ClassLabel):
        return data, feature
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        data = data.class_encode_column(column)
        return data, data[next(iter(data))].features[column]
    values = np.concatenate([np.asarray(split[column][:]) for split in data.values()])
    if not np.issubdtype(values.dtype, np.integer) or values.min() < 0:
        raise ValueError(f"--label_column {column!r} holds {feature}; allowed: class names or ids >= 0")
    label = ClassLabel(names=[str(i) for i in range(int(values.max()) + 1)])
    return data.cast_column(column, label), label


def usable_rates(rates: list[float], label_feature: ClassLabel) -> list[float]:
    """The default label-noise rates that lie below ``(C-1)/C`` for ``C`` classes."""
    limit = (label_feature.num_classes - 1) / label_feature.num_classes
    return [r for r in rates if r < limit]


def _stratified_split(train: Dataset, share: float) -> tuple[Dataset, Dataset]:
    """A seeded held-out share of every class (selection by row ids: a stable fingerprint for the caches)."""
    labels = np.asarray(train["label"][:])
    rng = np.random.default_rng(0)
    held = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[: int(round(share * (labels == c).sum()))]
            for c in np.unique(labels)
        ]
    )
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return train.select(keep), train.select(np.sort(held))


def _domain_splits(args: ReportArguments, train: Dataset, test: Dataset) -> dict[str, Dataset]:
    column = args.domain_column
    assert column is not None
    if column not in train.column_names:
        raise ValueError(
            f"--domain_column {column!r} is not a column of the data; allowed: {train.column_names}"
        )
    domains = sorted({str(d) for split in (train, test) for d in split[column][:]})
    wanted = list_of(args.train_domains) + list_of(args.shifted_domains)
    unknown = [d for d in wanted if d not in domains]
    if unknown:
        raise ValueError(
            f"domains {unknown} are not values of --domain_column {column!r}; allowed: {domains}"
        )

    def rows(split: Dataset, keep: list[str]) -> Dataset:
        values = [str(d) for d in split[column][:]]
        return split.select([i for i, d in enumerate(values) if d in keep])

    train_domains, shifted = list_of(args.train_domains), list_of(args.shifted_domains)
    out = {
        DOMAIN_TRAIN: rows(train, train_domains),
        DOMAIN_TEST: rows(test, train_domains),
        DOMAIN_SHIFTED: rows(test, shifted),
    }
    for key, split in out.items():
        if len(split) == 0:
            raise ValueError(
                f"the domain-shift split {key!r} has no rows; allowed: domains with test and training rows"
            )
    return out


def _class_names(split: Dataset, column: str) -> list[str]:
    """The class names a label column holds: a ``ClassLabel``'s names, else its values as strings."""
    feature = split.features[column]
    if isinstance(feature, ClassLabel):
        return [feature.names[int(v)] for v in split[column][:]]
    return [str(v) for v in split[column][:]]


def _shifted_rows(args: ReportArguments, modality: str, column: str, label_feature: ClassLabel) -> Dataset:
    """The rows of ``--shifted_dataset_name`` as the shifted domain: the same input and label columns as the
    main data, the same class names (encoded with the main data's ids), at most ``--max_test_samples``."""
    name = args.shifted_dataset_name
    assert name is not None
    option = "shifted_dataset_name"
    data = _load_data(name, args.shifted_dataset_config_name, args.shifted_split or "test", option)
    split_name = args.shifted_split or ("test" if "test" in data else next(iter(data)))
    if split_name not in data:
        raise ValueError(
            f"--shifted_split {split_name!r} is not a split of --shifted_dataset_name {name!r}; allowed: "
            f"{sorted(data)}"
        )
    split = data[split_name]
    for option, wanted in ((f"{modality}_column", column), ("label_column", args.label_column)):
        if wanted not in split.column_names:
            raise ValueError(
                f"--shifted_dataset_name {name!r} has no column {wanted!r} (--{option}); allowed: data with "
                f"the same column names as --dataset_name (its columns: {split.column_names})"
            )
    feature = split.features[column]
    readable = (
        isinstance(feature, ImageFeature) or column == "pixel_values"
        if modality == "image"
        else isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    )
    if not readable:
        raise ValueError(
            f"--shifted_dataset_name {name!r}: column {column!r} holds {feature}; allowed: the main data's "
            f"modality ({modality})"
        )
    names = _class_names(split, args.label_column)
    ours, theirs = set(label_feature.names), set(names)
    if theirs != ours:
        raise ValueError(
            f"--shifted_dataset_name {name!r}: its classes differ from --dataset_name's (only in the "
            f"shifted data: {sorted(theirs - ours)}; only in the main data: {sorted(ours - theirs)}); "
            f"allowed: the same class names, {sorted(ours)}"
        )
    ids = {class_name: i for i, class_name in enumerate(label_feature.names)}
    split = split.remove_columns([c for c in split.column_names if c != column])
    split = split.add_column("label", [ids[n] for n in names]).cast_column("label", label_feature)
    return subsample(split, args.max_test_samples, seed=0)


def load_report_inputs(args: ReportArguments) -> ReportInputs:
    """Load and check everything the report needs before any work (see the module docstring)."""
    data = _load(args)
    if args.split not in data:
        raise ValueError(f"--split {args.split!r} is not a split of the data; allowed: {sorted(data)}")
    if args.label_column not in data[args.split].column_names:
        raise ValueError(
            f"--label_column {args.label_column!r} is not a column of the data; allowed: "
            f"{data[args.split].column_names}"
        )
    decisions = []
    modality, column, why = _data_column(args, data[args.split])
    config, backbone = _backbone_config(args, modality)
    decisions.append(f"{modality}: {why}; {backbone}")
    data, label_feature = _class_labels(data, args.label_column)
    if args.label_column != "label":
        data = data.rename_column(args.label_column, "label")
    train_split = data[args.split]
    test_name = args.test_split or next(
        (s for s in ("test", "validation") if s in data and s != args.split), None
    )
    if args.test_split is not None and args.test_split not in data:
        raise ValueError(
            f"--test_split {args.test_split!r} is not a split of the data; allowed: {sorted(data)}"
        )
    if test_name is None:
        train_split, test_split = _stratified_split(train_split, HELD_OUT_SHARE)
        decisions.append(f"test rows: {HELD_OUT_SHARE:.0%} of {args.split!r} per class, held out (seed 0)")
    else:
        test_split = data[test_name]
        decisions.append(f"test rows: split {test_name!r}")
    train_split = subsample(train_split, args.max_train_samples, seed=0)
    test_split = subsample(test_split, args.max_test_samples, seed=0)
    counts = np.bincount(np.asarray(train_split["label"][:]), minlength=label_feature.num_classes)
    present = int((counts > 0).sum())
    if present < 2:
        raise ValueError(
            f"--label_column {args.label_column!r} has {present} class in the training rows; allowed: at "
            "least 2"
        )
    shots = [int(k) for k in numbers_of("shots", args.shots)]
    fewest = int(counts[counts > 0].min())
    if max(shots) > fewest:
        name = label_feature.names[int(np.flatnonzero(counts == fewest)[0])]
        raise ValueError(
            f"--shots {args.shots!r}: class {name!r} has only {fewest} training rows; allowed: k <= {fewest}"
        )
    classes = label_feature.num_classes
    limit = (classes - 1) / classes
    if args.label_noise is None:
        defaults = QUICK_RATES if args.quick else DEFAULT_RATES
        rates = usable_rates(numbers_of("label_noise", defaults), label_feature)
    else:
        rates = numbers_of("label_noise", args.label_noise)
        too_high = [r for r in rates if r >= limit]
        if too_high:
            raise ValueError(
                f"--label_noise {args.label_noise!r}: rates {too_high} are at or above (C-1)/C = {limit:.3g} "
                "for "
                f"{classes} classes, where noisy labels carry no signal; allowed: 0 <= rate < {limit:.3g}"
            )
    splits = {TRAIN: train_split, TEST: test_split}
    if args.domain_column:
        splits.update(_domain_splits(args, train_split, test_split))
        decisions.append(
            f"domain shift: train on {args.train_domains}, test on {args.shifted_domains} "
            f"({args.domain_column!r})"
        )
    elif args.shifted_dataset_name:
        splits.update({DOMAIN_TRAIN: train_split, DOMAIN_TEST: test_split})
        splits[DOMAIN_SHIFTED] = _shifted_rows(args, modality, column, label_feature)
        decisions.append(
            f"domain shift: train on {args.split!r}, test on {len(splits[DOMAIN_SHIFTED])} rows of "
            f"{public_name(args.shifted_dataset_name)!r} (--shifted_dataset_name)"
        )
    else:
        decisions.append("domain shift: not run (no --domain_column or --shifted_dataset_name)")
    return ReportInputs(modality, column, splits, label_feature, rates, shots, config, decisions)
