"""Publishing: the folder that goes to the Hub, and its upload in one commit.

* :func:`save_for_hub` writes exactly the folder that would be uploaded: ``config.json``,
  ``model.safetensors``, ``README.md`` (the card), the tokenizer/processor if given, ``results.json``
  if results were given, and with ``remote_code=True`` the code that lets transformers load the
  checkpoint without hf_monosem (``trust_remote_code=True``, see :mod:`hf_monosem.hub.remote_code`).
* :func:`push_to_hub_with_card` saves that folder and uploads it in one commit
  (``HfApi.create_repo`` + ``HfApi.upload_folder``).
* :func:`feature_layer_repo_ids`: one repository per feature layer when a script trains several
  (the Trainer would name every one after its output folder, or push them all into ``hub_model_id``).
* :func:`save_scenario_for_hub` / :func:`push_scenario_to_hub`: a noisy-label draw (``scenario.json``)
  as a dataset repository with a dataset card, so that others can train on the very same labels.

Training scripts push with the Trainer (``--push_to_hub``): :class:`~hf_monosem.MonoSemanticTrainer`
writes this package's card (:func:`~hf_monosem.hub.cards.make_model_card`) in place of transformers'.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, HfApi, ModelCard
from transformers import PreTrainedModel

from ..evaluation.results import load_results
from ..models.configuration import MonoSemanticConfig
from .cards import config_of, looks_like_hub_id, make_model_card
from .remote_code import remote_code_enabled

__all__ = [
    "feature_layer_repo_ids",
    "push_scenario_to_hub",
    "push_to_hub_with_card",
    "save_for_hub",
    "save_scenario_for_hub",
]


@contextlib.contextmanager
def _published_backbone_name(config: MonoSemanticConfig, base_model: str | None) -> Iterator[None]:
    """Name the backbone by its Hub id, not by the publisher's local folder, in the saved config."""
    old = config.backbone
    replace = base_model is not None and old is not None and not looks_like_hub_id(old) and old != base_model
    if replace:
        config.backbone = base_model
    try:
        yield
    finally:
        if replace:
            config.backbone = old


# --------------------------------------------------------------------------------------- publishing
def save_for_hub(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    results: str | os.PathLike | Sequence[Mapping] | Mapping | None = None,
    *,
    tokenizer_or_processor: Any = None,
    remote_code: bool = False,
    repo_id: str | None = None,
    **card_kwargs: Any,
) -> ModelCard:
    """Write the folder :func:`push_to_hub_with_card` uploads, and return its card.

    The folder holds ``config.json``, ``model.safetensors``, ``README.md`` (the card),
    ``results.json`` (the normalised records, when ``results`` is given), the tokenizer/processor
    files (when given) and, with ``remote_code=True``, ``configuration.py``/``modeling.py``/... plus
    an ``auto_map`` in ``config.json`` (see the module docstring). ``card_kwargs`` go to
    :func:`make_model_card`. A local-folder ``config.backbone`` is replaced by ``base_model`` in
    the saved config. Nothing about ``model`` is changed.

    Example:
        >>> import os, tempfile
        >>> from hf_monosem.data import backbone_source, build_classifier
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"),
        ...                          feature_dim=32)
        >>> results = [{"dataset": "digits", "scenario": "clean", "method": "nonneg", "metric": "accuracy",
        ...             "value": 0.9}]
        >>> folder = tempfile.mkdtemp()
        >>> card = save_for_hub(model, folder, results, repo_id="me/tiny")
        >>> sorted(os.listdir(folder))
        ['README.md', 'config.json', 'model.safetensors', 'results.json']
    """
    config = config_of(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            "save_for_hub needs a model with weights; for a planned checkpoint use make_model_card(config)"
        )
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    records = load_results(results) if results is not None else None
    card = make_model_card(
        model,
        records,
        repo_id=repo_id,
        has_preprocessor=tokenizer_or_processor is not None,
        remote_code=remote_code,
        **card_kwargs,
    )
    base_model = card.data.base_model
    with contextlib.ExitStack() as stack:
        stack.enter_context(_published_backbone_name(config, base_model))
        if remote_code:
            stack.enter_context(remote_code_enabled(model))
        model.save_pretrained(folder)
    if tokenizer_or_processor is not None:
        tokenizer_or_processor.save_pretrained(folder)
    if records is not None:
        with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2)
            f.write("\n")
    card.save(os.path.join(folder, "README.md"))
    return card


def push_to_hub_with_card(
    model: PreTrainedModel,
    repo_id: str,
    results: str | os.PathLike | Sequence[Mapping] | Mapping | None = None,
    *,
    tokenizer_or_processor: Any = None,
    remote_code: bool = False,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    **card_kwargs: Any,
):
    """Save model + card (+ tokenizer, results, code) with :func:`save_for_hub` and upload it in one commit.

    Uses ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder``; returns the
    ``CommitInfo``. Needs a write token (``token=`` or ``hf auth login``).

    Example (with ``HfApi`` replaced by a mock, so nothing is uploaded):
        >>> from unittest import mock
        >>> from hf_monosem.data import backbone_source, build_classifier
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"),
        ...                          feature_dim=32)
        >>> with mock.patch("hf_monosem.hub.publishing.HfApi") as api:
        ...     _ = push_to_hub_with_card(model, "me/tiny", token="hf_x")
        >>> (api.return_value.create_repo.call_args.args,
        ...  api.return_value.upload_folder.call_args.kwargs["repo_id"])
        (('me/tiny',), 'me/tiny')
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(
            model,
            folder,
            results,
            tokenizer_or_processor=tokenizer_or_processor,
            remote_code=remote_code,
            repo_id=repo_id,
            **card_kwargs,
        )
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {type(model).__name__} with model card (hf_monosem)",
            revision=revision,
            create_pr=create_pr,
        )


# ------------------------------------------------------------------------- one repo per feature layer
def feature_layer_repo_ids(
    hub_model_id: str | None, kinds: Sequence[str], output_dir: str | os.PathLike
) -> dict[str, str]:
    """The Hub repository of each feature layer of a run that trains several (one model per kind).

    ``hub_model_id``: ``None`` (``<name of output_dir>-<kind>``, in the namespace of the token's user, as
    the Trainer names a repository after its output folder), one id with ``{feature_layer}`` in it
    (filled in), a comma-separated list of one id per kind (in order; a single kind takes the id
    as it is), or one id that every kind suffixes with ``-<kind>``. Two kinds never share a repository.

    Example:
        >>> feature_layer_repo_ids("me/vit-cifar100", ["linear", "nonneg"], "runs/x")
        {'linear': 'me/vit-cifar100-linear', 'nonneg': 'me/vit-cifar100-nonneg'}
        >>> feature_layer_repo_ids(None, ["linear"], "runs/finetune_noisy")
        {'linear': 'finetune_noisy-linear'}
    """
    kinds = list(kinds)
    if hub_model_id is None:
        name = os.path.basename(os.path.abspath(os.fspath(output_dir)))
        ids = [f"{name}-{kind}" for kind in kinds]
    elif "{feature_layer}" in hub_model_id:
        ids = [hub_model_id.format(feature_layer=kind) for kind in kinds]
    else:
        given = [part.strip() for part in hub_model_id.split(",") if part.strip()]
        if len(given) == len(kinds):
            ids = given
        elif len(given) == 1:
            ids = [f"{given[0]}-{kind}" for kind in kinds]
        else:
            raise ValueError(
                f"hub_model_id={hub_model_id!r} names {len(given)} ids for {len(kinds)} feature layers "
                f"{kinds}: give "
                "one id per feature layer, one id to suffix with -<feature layer>, or one with "
                "{feature_layer} in it"
            )
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"hub_model_id={hub_model_id!r} names a repository twice ({ids}); every feature layer needs its "
            f"own"
        )
    return dict(zip(kinds, ids))


# ------------------------------------------------------------------------------ the noisy-label draw
_SCENARIO_FILE = "scenario.json"

_SCENARIO_CARD = """---
{{ card_data }}
---

# {{ title }}

The exact noisy training labels of one label-noise scenario, drawn by
hf_monosem's `add_label_noise`: {{ noise_text }} of the `{{ label_column }}` labels of
`{{ dataset }}` (training split, {{ num_rows }} rows), with seed {{ seed }}. Publishing the draw lets
anyone train on the very same labels, so poly vs mono comparisons on it are like for like.

## Contents

`scenario.json`: what the draw was made for (`dataset`, `label_column`, `label_noise`, `kind`, `seed`,
`num_rows`) and `labels`, the noisy class id of every training row, in the order of the dataset's rows.

## Usage

```python
import json
from huggingface_hub import hf_hub_download

scenario = json.load(open(hf_hub_download("{{ repo_id }}", "scenario.json", repo_type="dataset")))
noisy_labels = scenario["labels"]  # one class id per training row of {{ dataset }}
```

`examples/finetune_noisy.py` reuses a draw it finds in its `--output_dir`: put `scenario.json` there and run
it with the same dataset, label column, noise, seed and number of rows.
"""


def _read_scenario(scenario: str | os.PathLike | Mapping) -> dict:
    if isinstance(scenario, Mapping):
        return dict(scenario)
    with open(os.fspath(scenario), encoding="utf-8") as f:
        return json.load(f)


def save_scenario_for_hub(
    scenario: str | os.PathLike | Mapping,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    modality: str | None = None,
    license: str | None = None,
) -> DatasetCard:
    """Write the dataset repository of a noisy-label draw: ``scenario.json`` and ``README.md`` (its card).

    ``scenario``: the ``scenario.json`` that ``examples/finetune_noisy.py`` writes (a path or its dict:
    ``dataset``, ``label_column``, ``label_noise``, ``kind``, ``seed``, ``num_rows``, ``labels``);
    ``modality`` (``"image"`` / ``"text"``) sets the card's task category; ``license`` is the licence of
    the labelled dataset the draw belongs to, when known. Returns the card.

    Example:
        >>> import os, tempfile
        >>> draw = {"dataset": "digits", "label_column": "label", "label_noise": 0.4, "kind": "symmetric",
        ...         "seed": 0, "num_rows": 3, "labels": [1, 0, 2]}
        >>> folder = tempfile.mkdtemp()
        >>> card = save_scenario_for_hub(draw, folder, repo_id="me/digits-noise40", modality="image")
        >>> sorted(os.listdir(folder)), card.data.task_categories
        (['README.md', 'scenario.json'], ['image-classification'])
    """
    draw = _read_scenario(scenario)
    missing = [key for key in ("dataset", "label_noise", "labels") if key not in draw]
    if missing:
        raise ValueError(f"{scenario!r} is not a noisy-label draw: it lacks {missing}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, _SCENARIO_FILE), "w", encoding="utf-8") as f:
        json.dump(draw, f)
        f.write("\n")
    rate, kind = float(draw["label_noise"]), draw.get("kind", "symmetric")
    dataset = str(draw["dataset"])
    task = {"image": "image-classification", "text": "text-classification"}.get(modality or "")
    data = DatasetCardData(
        license=license,
        task_categories=[task] if task else None,
        tags=["hf_monosem", "label-noise", "noisy-labels", f"{kind}-label-noise"],
        pretty_name=f"{dataset}: {rate:.0%} {kind} label noise (seed {draw.get('seed')})",
        source_datasets=[dataset] if looks_like_hub_id(dataset) else None,
        size_categories=None,
    )
    card = DatasetCard.from_template(
        data,
        template_str=_SCENARIO_CARD,
        title=data.pretty_name,
        noise_text=f"{rate:.0%} {kind} label noise (each corrupted label moved to "
        + ("a uniformly drawn other class)" if kind == "symmetric" else "a fixed other class)"),
        label_column=draw.get("label_column", "label"),
        dataset=dataset,
        num_rows=draw.get("num_rows", len(draw["labels"])),
        seed=draw.get("seed"),
        repo_id=repo_id or "<namespace>/<dataset-name>",
    )
    card.save(os.path.join(folder, "README.md"))
    return card


def push_scenario_to_hub(
    scenario: str | os.PathLike | Mapping,
    repo_id: str,
    *,
    modality: str | None = None,
    license: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
):
    """Upload a noisy-label draw as a dataset repository (:func:`save_scenario_for_hub`'s folder), in one
    commit.

    Example (with ``HfApi`` replaced by a mock, so nothing is uploaded):
        >>> from unittest import mock
        >>> draw = {"dataset": "digits", "label_noise": 0.4, "labels": [1, 0, 2]}
        >>> with mock.patch("hf_monosem.hub.publishing.HfApi") as api:
        ...     _ = push_scenario_to_hub(draw, "me/digits-noise40", token="hf_x")
        >>> api.return_value.upload_folder.call_args.kwargs["repo_type"]
        'dataset'
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_scenario_for_hub(scenario, folder, repo_id=repo_id, modality=modality, license=license)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=commit_message or "Upload a noisy-label draw with its dataset card (hf_monosem)",
        )
