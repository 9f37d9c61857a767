"""A frozen model's features, computed once and kept on disk (keyed by model weights and dataset).

Post-hoc SAE fitting and linear probing train small layers on a frozen backbone, whose output never
changes, so :func:`extract_pooled_features` computes it once (through the one inference loop,
:func:`~.extraction.collect_outputs`) and reuses it for every epoch, every noise rate of a sweep,
every seed. The matrix is written as safetensors under ``cache_dir``, keyed by a hash of the model
(config + :func:`model_fingerprint` of its weights), the dataset (``datasets.Dataset._fingerprint``)
and what is extracted; the second call loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from .extraction import collect_outputs, input_columns, resolve_base_model

__all__ = ["extract_pooled_features", "model_fingerprint"]

logger = logging.getLogger(__name__)

_OUTPUTS = ("pooled", "features")
# values sampled per tensor for the weights fingerprint (plus the tensor's exact float64 sum)
_FINGERPRINT_SAMPLES = 4096


def model_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter/buffer: name, shape, dtype, exact sum and a strided sample of values.

    Cheap for large models (one pass per tensor, no copy of the weights to the host) and changed by
    any training step, since training moves every value of a tensor and hence its sum.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(3, 2)
        >>> before = model_fingerprint(layer)
        >>> with torch.no_grad():
        ...     _ = layer.bias.add_(1.0)
        >>> len(before), before == model_fingerprint(layer)
        (64, False)
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if flat.numel() == 0:
            continue
        if flat.dtype.is_floating_point or flat.dtype.is_complex:
            values = (
                flat.double() if not flat.dtype.is_complex else torch.view_as_real(flat).reshape(-1).double()
            )
        else:
            values = flat.to(torch.float64)
        step = max(1, values.numel() // _FINGERPRINT_SAMPLES)
        sample = torch.cat([values[::step][:_FINGERPRINT_SAMPLES], values.sum().reshape(1)])
        digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(
    base: MonoSemanticModel, dataset: Any, output: str, input_columns: list[str], cache_key: str | None
) -> str | None:
    dataset_fingerprint = cache_key or getattr(dataset, "_fingerprint", None)
    if dataset_fingerprint is None:
        return None
    what = base if output == "features" else base.backbone
    config = base.config.to_dict() if output == "features" else base.backbone.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "name_or_path"):
        config.pop(volatile, None)
    payload = {
        "config": config,
        "weights": model_fingerprint(what),
        "pooling": base.config.pooling,
        "output": output,
        "dataset": dataset_fingerprint,
        "columns": input_columns,
        "version": 1,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _input_columns(base: MonoSemanticModel, dataset: Any) -> list[str]:
    names = getattr(dataset, "column_names", None)
    return input_columns(base, names) if names is not None else []


def extract_pooled_features(
    model_or_backbone: nn.Module,
    dataset: Any,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    *,
    output: str = "pooled",
    pooling: str | None = None,
    collate_fn: Callable | None = None,
    device: str | torch.device | None = None,
    cache_key: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Pooled backbone vectors (or feature-layer outputs) of every example, ``[len(dataset), width]``.

    Args:
        model_or_backbone: a MonoSemantic model (base or classifier) or a plain transformers backbone
            (pooled with ``pooling``, default per family as in :class:`MonoSemanticConfig`).
        dataset: a ``datasets.Dataset`` (model input columns are selected; labels and other columns are
            ignored) or any map-style dataset whose ``collate_fn`` batches give model inputs.
        batch_size: examples per forward pass.
        cache_dir: where to cache the matrix; ``None`` disables caching.
        output: ``"pooled"`` (backbone output after pooling: the input of the feature layer / a post-hoc
            SAE) or ``"features"`` (the feature layer's output, e.g. a pretrained NCL projector, for
            linear probing on it).
        collate_fn: batches rows (default ``default_data_collator``; pass ``DataCollatorWithPadding``
            for unpadded text).
        device: where to run; default the model's device.
        cache_key: used instead of ``dataset._fingerprint`` (needed to cache a non-``datasets`` dataset).
        progress: show a progress bar.

    The model runs in eval mode (dropout off, BatchNorm running statistics) under ``no_grad``; every
    module's train/eval mode is restored afterwards. The result is a float32 CPU tensor in dataset order.

    Example:
        >>> import datasets, tempfile
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=20))
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]] * 5, "label": [0, 1, 0, 1, 0]})
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     first = extract_pooled_features(bert, ds, batch_size=2, cache_dir=cache)
        ...     again = extract_pooled_features(bert, ds, batch_size=2, cache_dir=cache)  # from the cache
        >>> first.shape, torch.equal(first, again)
        (torch.Size([5, 16]), True)
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output={output!r} is not valid; allowed: {', '.join(repr(o) for o in _OUTPUTS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid; allowed: a positive integer")
    if output == "features" and not isinstance(model_or_backbone, MonoSemanticPreTrainedModel):
        raise ValueError(
            "output='features' needs a MonoSemantic model (a plain backbone has no feature layer)"
        )
    base = resolve_base_model(model_or_backbone, pooling)
    columns = _input_columns(base, dataset)

    path = None
    if cache_dir is not None:
        key = _cache_key(base, dataset, output, columns, cache_key)
        if key is None:
            logger.warning("dataset has no _fingerprint and no cache_key was given: features are not cached")
        else:
            path = Path(cache_dir) / f"{output}-{key[:32]}.safetensors"
            if path.exists():
                from safetensors.torch import load_file

                logger.info("loading cached features from %s", path)
                return load_file(str(path))["features"]

    features = _run(base, dataset, columns, batch_size, collate_fn, device, output, progress)

    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": features}, tmp, metadata={"output": output, "key": key})
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return features


def _run(
    base: MonoSemanticModel,
    dataset: Any,
    columns: list[str],
    batch_size: int,
    collate_fn: Callable | None,
    device: str | torch.device | None,
    output: str,
    progress: bool,
) -> torch.Tensor:
    outputs = collect_outputs(
        base,
        dataset,
        batch_size,
        outputs=(output,),
        inputs=columns or None,
        collate_fn=collate_fn,
        device=device,
        progress=progress,
    )
    return outputs[output]
