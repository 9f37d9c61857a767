"""The arguments of ``hf-monosem report`` and the checks that need no data (the rest: :mod:`.inputs`).

Example:
    >>> args = parse_report_arguments(
    ...     ["--model_name_or_path", "org/bert", "--dataset_name", "d.csv", "--quick"])
    >>> args.seeds, args.probe_epochs, list_of(args.probe_protocols)
    (3, 10, ['paper_cifar', 'controlled'])
    >>> parse_report_arguments(["--model_name_or_path", "m", "--dataset_name", "d", "--seeds", "1"])
    Traceback (most recent call last):
    ...
    ValueError: --seeds 1 is not valid; allowed: an integer >= 2 (a verdict needs the spread over seeds)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..cached.projector_fitting import NCL_RECIPES
from ..scenarios.protocols import probe_protocol_names
from .model_card import check_repo_id

__all__ = ["ReportArguments", "list_of", "numbers_of", "parse_report_arguments"]

#: the label-noise rates tried by default (the paper's grid); those at or above (C-1)/C are left out
DEFAULT_RATES = "0,0.1,0.3,0.6,0.8"
#: --quick's: three of them (again only those below (C-1)/C)
QUICK_RATES = "0,0.3,0.6"


@dataclass
class ReportArguments:
    """Every option of ``hf-monosem report`` (``--help`` prints them)."""

    model_name_or_path: str = field(metadata={"help": "The backbone: a Hub id or a local folder."})
    dataset_name: str = field(
        metadata={
            "help": "The data: a Hub id, a folder (save_to_disk, csv / json / parquet files, or an image "
            "folder with one sub-folder per class), a csv / json / jsonl / parquet file, or a built-in "
            "name (hf_monosem.data.BUILTIN_DATASETS)."
        }
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's config."})
    text_column: str | None = field(
        default=None, metadata={"help": "Column of the texts (default: 'text', or the one string column)."}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Column of the images (default: the one Image column)."}
    )
    label_column: str = field(default="label", metadata={"help": "Column of the class labels."})
    split: str = field(default="train", metadata={"help": "Split the probes and representations train on."})
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "Split they are tested on (default: 'test', else 'validation', else 20%% of --split)."
        },
    )
    domain_column: str | None = field(
        default=None, metadata={"help": "Column naming each row's domain (for the domain-shift scenario)."}
    )
    train_domains: str | None = field(
        default=None, metadata={"help": "Comma-separated domains the domain-shift probe trains on."}
    )
    shifted_domains: str | None = field(
        default=None, metadata={"help": "Comma-separated domains it is then tested on."}
    )
    shifted_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A second data set (same forms as --dataset_name, the same column names and class names) "
            "as the shifted domain: probes trained on --split are tested on its rows."
        },
    )
    shifted_dataset_config_name: str | None = field(
        default=None, metadata={"help": "The second data set's config (a Hub data set)."}
    )
    shifted_split: str | None = field(
        default=None,
        metadata={"help": "The second data set's split (default: 'test', else its first split)."},
    )
    output_dir: str = field(default="hf_monosem_report", metadata={"help": "Where the report goes."})
    quick: bool = field(default=False, metadata={"help": "Small data and budgets: a look, not a result."})
    seeds: int = field(default=3, metadata={"help": "Seeds per cell (>= 2: verdicts need a spread)."})
    label_noise: str | None = field(
        default=None,
        metadata={"help": f"Label-noise rates (default: {DEFAULT_RATES}, those below (C-1)/C)."},
    )
    shots: str = field(default="1,5,10", metadata={"help": "k of the k-shot scenario (examples per class)."})
    typo_rates: str = field(default="0.1,0.3", metadata={"help": "Text: test-time character-typo rates."})
    pixel_noise: str = field(
        default="0.2,0.4,0.6", metadata={"help": "Images: Gaussian / uniform strengths on normalised pixels."}
    )
    probe_protocols: str = field(
        default="paper_cifar,paper_in100,controlled",
        metadata={"help": f"Linear-probe protocols, of {', '.join(probe_protocol_names())}."},
    )
    probe_epochs: int = field(default=50, metadata={"help": "Linear-probe epochs."})
    representation_epochs: int = field(default=20, metadata={"help": "Epochs of every SAE / projector fit."})
    sae_topk: str = field(default="16,32,64,128", metadata={"help": "k of the post-hoc TopK SAE sweep."})
    feature_dim: int | None = field(
        default=None, metadata={"help": "Width of the SimCLR / NCL projectors (default: 4 x the backbone's)."}
    )
    sae_lr: float | None = field(
        default=None, metadata={"help": "Adam's lr of the SAE fits (default: fit_sae's, width-scaled)."}
    )
    ncl_recipe: str = field(
        default="authors-nn", metadata={"help": f"NCL recipe, of {', '.join(NCL_RECIPES)} (P3's choice)."}
    )
    num_views: int = field(
        default=2, metadata={"help": "Encoder views per training row (text: dropout; images: augmented)."}
    )
    max_train_samples: int = field(default=4000, metadata={"help": "Training rows kept (seeded draw)."})
    max_test_samples: int = field(default=1500, metadata={"help": "Test rows kept (seeded draw)."})
    max_length: int = field(default=64, metadata={"help": "Text: token limit."})
    pooling: str | None = field(
        default=None, metadata={"help": "cls / mean / last / pooler (default: per family)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass of the backbone."})
    explain_features: int = field(
        default=3, metadata={"help": "Features of each mono representation shown by their top examples."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "The backbone's Hub revision."})
    dtype: str | None = field(default=None, metadata={"help": "dtype the backbone is loaded in."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the backbone's own code."})
    token: str | None = field(default=None, metadata={"help": "Hub token (private / gated repositories)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hub cache for the backbone's files."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager / sdpa / ..."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the report as a dataset repository."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The dataset repository the report is pushed to."}
    )
    model_card_repo_id: str | None = field(
        default=None,
        metadata={
            "help": "A model repository whose card (README.md) gets or updates a 'Monosemanticity report' "
            "section with the verdicts (with --push_to_hub)."
        },
    )
    model_card_create_pr: bool = field(
        default=False, metadata={"help": "Open a pull request on that model card instead of committing."}
    )

    def loading_kwargs(self) -> dict:
        """The backbone's ``from_pretrained`` options that were given."""
        options = {
            "revision": self.model_revision,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code or None,
            "token": self.token,
            "cache_dir": self.cache_dir,
            "attn_implementation": self.attn_implementation,
        }
        return {key: value for key, value in options.items() if value is not None}


def list_of(text: str | None) -> list[str]:
    """The comma-separated names of ``text`` (none for ``None``)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def numbers_of(option: str, text: str) -> list[float]:
    """The comma-separated numbers of ``--option``, or a ``ValueError`` naming it."""
    try:
        return [float(t) for t in list_of(text)]
    except ValueError:
        raise ValueError(f"--{option} {text!r} is not valid; allowed: comma-separated numbers") from None


def _quick(args: ReportArguments, given: set[str]) -> None:
    """``--quick``: smaller data and budgets, for every option the user did not set."""
    budget = {
        "max_train_samples": 400,
        "max_test_samples": 200,
        "probe_epochs": 10,
        "representation_epochs": 3,
        "sae_topk": "8,32",
        "shots": "1,5",
        "typo_rates": "0.2",
        "pixel_noise": "0.5",
        "probe_protocols": "paper_cifar,controlled",
    }
    for name, value in budget.items():
        if name not in given:
            setattr(args, name, value)


def _check(args: ReportArguments) -> None:
    if args.seeds < 2:
        raise ValueError(
            f"--seeds {args.seeds} is not valid; allowed: an integer >= 2 (a verdict needs the spread "
            "over seeds)"
        )
    for name in ("probe_epochs", "representation_epochs", "num_views", "max_train_samples",
                 "max_test_samples", "max_length", "batch_size"):  # fmt: skip
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)} is not valid; allowed: an integer >= 1")
    if args.num_views < 2:
        raise ValueError(f"--num_views {args.num_views} is not valid; allowed: an integer >= 2")
    if args.feature_dim is not None and args.feature_dim < 1:
        raise ValueError(f"--feature_dim {args.feature_dim} is not valid; allowed: an integer >= 1")
    if args.sae_lr is not None and not 0 < args.sae_lr < math.inf:
        raise ValueError(f"--sae_lr {args.sae_lr} is not valid; allowed: a number > 0 (or leave it out)")
    if args.explain_features < 0:
        raise ValueError(f"--explain_features {args.explain_features} is not valid; allowed: an integer >= 0")
    unknown = [p for p in list_of(args.probe_protocols) if p not in probe_protocol_names()]
    if unknown or not list_of(args.probe_protocols):
        raise ValueError(
            f"--probe_protocols {args.probe_protocols!r} is not valid; allowed: "
            f"{', '.join(probe_protocol_names())}"
        )
    if args.ncl_recipe not in NCL_RECIPES:
        raise ValueError(f"--ncl_recipe {args.ncl_recipe!r} is not valid; allowed: {', '.join(NCL_RECIPES)}")
    for name in ("shots", "sae_topk"):
        values = numbers_of(name, getattr(args, name))
        if not values or any(k < 1 or k != int(k) for k in values):
            raise ValueError(f"--{name} {getattr(args, name)!r} is not valid; allowed: positive integers")
    for name in ("typo_rates", "pixel_noise"):
        if any(v <= 0 for v in numbers_of(name, getattr(args, name))):
            raise ValueError(f"--{name} {getattr(args, name)!r} is not valid; allowed: numbers > 0")
    rates = numbers_of("label_noise", args.label_noise or DEFAULT_RATES)
    if 0.0 not in rates or any(not 0 <= r < 1 for r in rates):
        raise ValueError(
            f"--label_noise {args.label_noise!r} is not valid; allowed: rates in [0, 1) including 0 (the "
            "clean probes are the ones tested under input noise)"
        )
    domain = [args.domain_column, args.train_domains, args.shifted_domains]
    if any(domain) and not all(domain):
        raise ValueError(
            f"--domain_column {args.domain_column!r}, --train_domains {args.train_domains!r} and "
            f"--shifted_domains {args.shifted_domains!r}: allowed: all three or none"
        )
    if args.shifted_dataset_name is None and (args.shifted_dataset_config_name or args.shifted_split):
        raise ValueError(
            f"--shifted_dataset_config_name {args.shifted_dataset_config_name!r} / --shifted_split "
            f"{args.shifted_split!r} without --shifted_dataset_name; allowed: them with "
            "--shifted_dataset_name"
        )
    if args.shifted_dataset_name is not None and args.domain_column is not None:
        raise ValueError(
            f"--shifted_dataset_name {args.shifted_dataset_name!r} and --domain_column "
            f"{args.domain_column!r}: allowed: one source of the shifted domain"
        )
    overlap = set(list_of(args.train_domains)) & set(list_of(args.shifted_domains))
    if overlap:
        raise ValueError(
            f"domains {sorted(overlap)} are both training and shifted domains; allowed: disjoint sets"
        )
    if args.text_column and args.image_column:
        raise ValueError(
            f"--text_column {args.text_column!r} and --image_column {args.image_column!r}: allowed: one "
            "of them"
        )
    if args.push_to_hub and not (args.hub_model_id or args.model_card_repo_id):
        raise ValueError(
            "--push_to_hub needs --hub_model_id (the dataset repository to push to, e.g. me/report) and/or "
            "--model_card_repo_id (a model repository whose card gets the verdicts)"
        )
    if (args.model_card_repo_id or args.model_card_create_pr) and not args.push_to_hub:
        raise ValueError(
            f"--model_card_repo_id {args.model_card_repo_id!r} / --model_card_create_pr without "
            "--push_to_hub; allowed: them with --push_to_hub"
        )
    for option in ("hub_model_id", "model_card_repo_id"):
        if getattr(args, option) is not None:
            check_repo_id(option, getattr(args, option))


def parse_report_arguments(argv: Sequence[str] | None = None) -> ReportArguments:
    """The checked arguments of ``hf-monosem report`` (``--quick`` applied); a ``ValueError`` names a bad
    one."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = HfArgumentParser(ReportArguments).parse_args_into_dataclasses(args=argv)
    if args.quick:
        given = {a.lstrip("-").split("=")[0] for a in argv if a.startswith("--")}
        _quick(args, given)
    _check(args)
    return args
