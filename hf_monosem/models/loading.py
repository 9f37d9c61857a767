"""Checks on a checkpoint folder before ``from_pretrained`` reads it.

It lives beside the modeling code (and imports nothing from the package) because remote-code
export copies ``modeling.py`` and its same-folder relative imports next to the weights.
"""

from __future__ import annotations

import json
import os

__all__ = ["check_checkpoint_folder", "check_hub_checkpoint"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_checkpoint_folder(path: str | os.PathLike, expected_model_type: str = "monosemantic") -> None:
    """Check a local checkpoint folder before loading: config present, right model type, weights readable.

    Example:
        >>> import tempfile
        >>> check_checkpoint_folder(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... has no config.json; a checkpoint folder holds config.json and model.safetensors
    """
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{path} has no config.json; a checkpoint folder holds config.json and model.safetensors"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); the checkpoint is corrupt") from None
    _check_model_type(model_type, config_path, expected_model_type)
    present = [name for name in _WEIGHT_FILES if os.path.isfile(os.path.join(path, name))]
    if not present:
        raise FileNotFoundError(
            f"{path} has config.json but no weights; expected one of {list(_WEIGHT_FILES)}"
        )
    if present[0] == "model.safetensors":
        from safetensors import safe_open

        try:
            with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error types for truncated/garbled headers
            raise ValueError(
                f"{path}/model.safetensors cannot be read ({err}); the checkpoint is corrupt"
            ) from None


def _check_model_type(model_type: str | None, where: str, expected_model_type: str) -> None:
    if model_type != expected_model_type:
        raise ValueError(
            f"{where} has model_type={model_type!r}, expected {expected_model_type!r}: this is not an "
            "hf_monosem checkpoint; load it with the transformers class for that model type, or wrap it with "
            "from_backbone(...)"
        )


def check_hub_checkpoint(repo_id: str, expected_model_type: str = "monosemantic", **hub_kwargs) -> None:
    """:func:`check_checkpoint_folder`'s model-type check for a Hub id: a plain backbone's repository (a BERT, a
    Llama) is refused with the advice to wrap it, before its config is read as ours.

    ``hub_kwargs`` are ``from_pretrained``'s (``cache_dir``, ``revision``, ``token``, ``subfolder``,
    ``local_files_only``, ...). When ``config.json`` cannot be fetched this says nothing: ``from_pretrained``
    then raises its own error about the repository.
    """
    from transformers.utils import cached_file

    options = {key: hub_kwargs[key] for key in _HUB_OPTIONS if hub_kwargs.get(key) is not None}
    try:
        config_path = cached_file(
            repo_id,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **options,
        )
    except OSError:  # no such repository, gated, offline without a cache: from_pretrained explains it
        return
    if config_path is None:
        return
    try:
        with open(config_path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # from_pretrained reports a corrupt config with its own message
    _check_model_type(model_type, f"{repo_id} (config.json)", expected_model_type)


_HUB_OPTIONS = (
    "cache_dir",
    "revision",
    "token",
    "subfolder",
    "local_files_only",
    "force_download",
    "proxies",
)
