"""Publishing: the folder that goes to the Hub, and its upload in one commit.

* :func:`save_for_hub` writes exactly the folder that would be uploaded: ``config.json``,
  ``model.safetensors``, ``README.md`` (the card), the tokenizer/processor if given, ``results.json``
  if results were given, and with ``remote_code=True`` the code that lets transformers load the
  checkpoint without hf_monosem (``trust_remote_code=True``, see :mod:`hf_monosem.hub.remote_code`).
* :func:`push_to_hub_with_card` saves that folder and uploads it in one commit
  (``HfApi.create_repo`` + ``HfApi.upload_folder``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from huggingface_hub import HfApi, ModelCard
from transformers import PreTrainedModel

from ..evaluation.results import load_results
from ..models.configuration import MonoSemanticConfig
from .cards import _config_of, _looks_like_hub_id, make_model_card
from .remote_code import _remote_code_enabled

__all__ = ["push_to_hub_with_card", "save_for_hub"]


@contextlib.contextmanager
def _published_backbone_name(config: MonoSemanticConfig, base_model: str | None) -> Iterator[None]:
    """Name the backbone by its Hub id, not by the publisher's local folder, in the saved config."""
    old = config.backbone
    replace = base_model is not None and old is not None and not _looks_like_hub_id(old) and old != base_model
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
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"), feature_dim=32)
        >>> results = [{"dataset": "digits", "scenario": "clean", "method": "nonneg", "metric": "accuracy", "value": 0.9}]
        >>> folder = tempfile.mkdtemp()
        >>> card = save_for_hub(model, folder, results, repo_id="me/tiny")
        >>> sorted(os.listdir(folder))
        ['README.md', 'config.json', 'model.safetensors', 'results.json']
    """
    config = _config_of(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError("save_for_hub needs a model with weights; for a planned checkpoint use make_model_card(config)")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    records = load_results(results) if results is not None else None
    card = make_model_card(
        model, records, repo_id=repo_id, has_preprocessor=tokenizer_or_processor is not None,
        remote_code=remote_code, **card_kwargs,
    )
    base_model = card.data.base_model
    with contextlib.ExitStack() as stack:
        stack.enter_context(_published_backbone_name(config, base_model))
        if remote_code:
            stack.enter_context(_remote_code_enabled(model))
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
        >>> model = build_classifier("nonneg", ["cat", "dog"], "image", backbone_source(None, "image"), feature_dim=32)
        >>> with mock.patch("hf_monosem.hub.publishing.HfApi") as api:
        ...     _ = push_to_hub_with_card(model, "me/tiny", token="hf_x")
        >>> api.return_value.create_repo.call_args.args, api.return_value.upload_folder.call_args.kwargs["repo_id"]
        (('me/tiny',), 'me/tiny')
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(
            model, folder, results, tokenizer_or_processor=tokenizer_or_processor, remote_code=remote_code,
            repo_id=repo_id, **card_kwargs,
        )
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {type(model).__name__} with model card (hf_monosem)",
            revision=revision,
            create_pr=create_pr,
        )
