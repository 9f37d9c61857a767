"""Run a model over a dataset, batched and without gradients; cache a frozen model's features on disk.

:func:`collect_outputs` is the package's one batched-inference loop: it picks the model inputs from
the rows, runs the model in eval mode under ``no_grad`` and gathers output fields on the CPU,
leaving every module's train/eval mode (and the model's device) as it found them. Two entry points
use it:

* :func:`extract_pooled_features`: post-hoc SAE fitting and linear probing train small layers on a
  frozen backbone, whose output never changes, so it is computed once and reused (for every epoch,
  every noise rate of a sweep, every seed). The matrix is written as safetensors under
  ``cache_dir``, keyed by a hash of the model (config + a fingerprint of its weights), the dataset
  (``datasets.Dataset._fingerprint``) and what is extracted; the second call loads it.
* :func:`extract_features`: ``(features, pooled, labels)`` of any model whose output has
  ``.features`` (the evaluation helper, also exported by :mod:`hf_monosem.evaluation`).

:func:`augmented_view_features` is the probe protocol's augmentation made affordable: K augmented
views of every training image go through the frozen model once (``[K, N, F]``), and the probe grid
draws one view per image and epoch (:func:`~hf_monosem.cached.probe_grid.train_probe_grid`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, default_data_collator

from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from ..training.views import LABEL_KEYS
from .cache_files import load_tensors, save_tensors
from .checks import check_features

__all__ = [
    "augmented_view_features",
    "collect_outputs",
    "extract_features",
    "extract_pooled_features",
    "input_columns",
    "model_fingerprint",
    "resolve_base_model",
    "text_view_features",
    "TEXT_VIEW_KINDS",
]

logger = logging.getLogger(__name__)

_OUTPUTS = ("pooled", "features")
# inputs taken from the rows when a forward takes **kwargs and says nothing more precise
_INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "token_type_ids", "position_ids")
# parameters that are never columns of a dataset
_NOT_INPUTS = {"args", "kwargs", "return_dict", "output_hidden_states", *LABEL_KEYS}
# values sampled per tensor for the weights fingerprint (plus the tensor's exact float64 sum)
_FINGERPRINT_SAMPLES = 4096


def resolve_base_model(model_or_backbone: nn.Module, pooling: str | None = None) -> MonoSemanticModel:
    """The :class:`MonoSemanticModel` inside a classifier, the model itself, or a plain backbone wrapped
    in one (its weights shared, not copied) so that pooling follows the same rules everywhere.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=20))
        >>> base = resolve_base_model(bert, pooling="mean")
        >>> type(base).__name__, base.backbone is bert, base.config.pooling
        ('MonoSemanticModel', True, 'mean')
    """
    if isinstance(model_or_backbone, MonoSemanticModel):
        return model_or_backbone
    if isinstance(model_or_backbone, MonoSemanticPreTrainedModel):
        return model_or_backbone.monosemantic
    if isinstance(model_or_backbone, PreTrainedModel):
        kwargs = {"pooling": pooling} if pooling else {}
        return MonoSemanticModel.from_backbone(
            model_or_backbone, feature_layer="linear", feature_dim=1, **kwargs
        )
    raise ValueError(
        f"expected a MonoSemantic model or a transformers backbone (PreTrainedModel), got {type(model_or_backbone).__name__}"
    )


@torch.no_grad()
def view_generator(seed: int, view: int, chunk: int) -> torch.Generator:
    """The generator of augmented view ``view`` of the ``chunk``-th block of images: every block of
    every view has its own, so any one view of any image can be rebuilt without the others."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(view)) * 1_000_003 + int(chunk))


@torch.no_grad()
def augmented_view_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    num_views: int,
    *,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """``[num_views, N, F]``: ``encode`` of ``num_views`` augmented copies of every image.

    View ``k`` of images ``[c * batch_size, (c + 1) * batch_size)`` is
    ``encode(views(block, view_generator(seed, k, c)))``, so the cache equals augmenting on the fly with
    the same generators (tested). ``views`` is e.g. :class:`~hf_monosem.training.ImageViews` with the
    authors' probe augmentation (``crop_scale=(0.08, 1.0)``, horizontal flips).

    Example:
        >>> flip = lambda x, g: x.flip(-1) if torch.rand((), generator=g) < 0.5 else x
        >>> cache = augmented_view_features(lambda x: x.flatten(1), torch.arange(8.0).view(2, 1, 1, 4), flip, 3)
        >>> cache.shape
        torch.Size([3, 2, 4])
    """
    if not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views={num_views!r} is not valid; allowed: a positive integer")
    if images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, ...] tensor, got shape {tuple(images.shape)}")
    from tqdm.auto import tqdm

    blocks = images.split(batch_size)
    out = []
    with tqdm(total=num_views * len(blocks), desc="augmented views", disable=not progress) as bar:
        for k in range(num_views):
            view = []
            for c, block in enumerate(blocks):
                view.append(encode(views(block, view_generator(seed, k, c))).float().cpu())
                bar.update(1)
            out.append(torch.cat(view))
    return torch.stack(out)


#: kinds of encoder-level text views: SimCSE dropout, or token masking (dropout off)
TEXT_VIEW_KINDS = ("dropout", "mask")


def text_view_features(
    model_or_backbone: nn.Module,
    dataset: Any,
    num_views: int,
    *,
    kind: str = "dropout",
    mask_rate: float = 0.15,
    mask_token_id: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    pooling: str | None = None,
    collate_fn: Callable | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """``[num_views, N, hidden]``: pooled encoder vectors of ``num_views`` views of every text, the text
    twin of :func:`augmented_view_features` (the projector fitting draws two of them per row and step).

    ``kind="dropout"`` runs the encoder with dropout on (SimCSE: two passes of one post differ only
    in their dropout masks); ``kind="mask"`` runs it in eval mode on inputs whose tokens are replaced by
    ``mask_token_id`` with probability ``mask_rate`` (never the first and last attended token, CLS/SEP).
    View ``k`` draws from a generator seeded with ``(seed, k)``, so the result is fixed by ``seed``. Both
    go through :func:`collect_outputs`, the one inference loop. With ``cache_dir`` the tensor is cached
    like :func:`extract_pooled_features`, keyed by the model, the dataset and these settings.

    Example:
        >>> import datasets
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=20))
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 3})
        >>> views = text_view_features(bert, ds, 2, seed=0)
        >>> views.shape, bool((views[0] != views[1]).any())
        (torch.Size([2, 3, 16]), True)
    """
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views={num_views!r} is not valid; allowed: a positive integer")
    if kind not in TEXT_VIEW_KINDS:
        raise ValueError(f"kind={kind!r} is not valid; allowed: {', '.join(map(repr, TEXT_VIEW_KINDS))}")
    if kind == "mask" and (mask_token_id is None or not 0 < mask_rate < 1):
        raise ValueError(
            f"kind='mask' needs mask_token_id (got {mask_token_id!r}) and mask_rate in (0, 1) (got {mask_rate!r})"
        )
    base = resolve_base_model(model_or_backbone, pooling)
    columns = _input_columns(base, dataset)
    path = None
    if cache_dir is not None:
        key = _cache_key(base, dataset, "pooled", columns, cache_key)
        if key is None:
            logger.warning("dataset has no _fingerprint and no cache_key was given: views are not cached")
        else:
            settings = (
                f"{key}|{kind}|{num_views}|{seed}|{mask_rate if kind == 'mask' else ''}|{mask_token_id}"
            )
            path = Path(cache_dir) / f"views-{hashlib.sha256(settings.encode()).hexdigest()[:32]}.safetensors"
            # checked like the pooled cache: content hash, the settings it was written for, its shape
            cached = load_tensors(path, {"key": settings}, {"features": (num_views, len(dataset), None)})
            if cached is not None:
                return cached["features"]
    base_collate = collate_fn or default_data_collator
    views = []
    for k in range(num_views):
        generator = view_generator(seed, k, 0)
        collate = base_collate
        if kind == "mask":

            def collate(rows: list[Any], generator: torch.Generator = generator) -> Any:
                return _mask_tokens(base_collate(rows), mask_rate, int(mask_token_id), generator)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            out = collect_outputs(
                base,
                dataset,
                batch_size,
                outputs=("pooled",),
                inputs=columns or None,
                collate_fn=collate,
                progress=progress,
                desc=f"text view {k + 1}/{num_views}",
                dropout=kind == "dropout",
            )
        views.append(out["pooled"])
    result = torch.stack(views)
    if path is not None:
        save_tensors(path, {"features": result}, {"output": "views", "key": settings})  # atomic
    return result


def _mask_tokens(batch: Any, rate: float, mask_token_id: int, generator: torch.Generator) -> Any:
    """``batch`` with attended tokens (not the first or last of a row) replaced by ``mask_token_id``."""
    ids = batch["input_ids"]
    attended = batch.get("attention_mask", torch.ones_like(ids)).bool()
    position = torch.arange(ids.shape[1]).expand_as(ids)
    inner = attended & (position > 0) & (position < attended.sum(1, keepdim=True) - 1)
    hit = inner & (torch.rand(ids.shape, generator=generator) < rate)
    batch["input_ids"] = ids.masked_fill(hit, mask_token_id)
    return batch


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
    base: MonoSemanticModel,
    dataset: Any,
    output: str,
    input_columns: list[str],
    cache_key: str | None,
    collate_fn: Callable | None = None,
) -> str | None:
    dataset_fingerprint = cache_key or getattr(dataset, "_fingerprint", None)
    if dataset_fingerprint is None:
        return None
    collate = _collate_fingerprint(collate_fn)
    if collate is None:
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
        "collate_fn": collate,
        "rows": len(dataset),
        "version": 2,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _collate_fingerprint(collate_fn: Callable | None) -> str | None:
    """What the collate function is, as a hash (code, closure and state: the ``datasets`` hasher ``map``
    caches by), since another collate function (e.g. one that truncates) gives other features.
    ``None`` when it cannot be hashed (then nothing is cached)."""
    if collate_fn is None:
        return "default_data_collator"
    from datasets.fingerprint import Hasher

    try:
        return Hasher.hash(collate_fn)
    except Exception:  # unpicklable state: no safe key
        return None


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
        key = _cache_key(base, dataset, output, columns, cache_key, collate_fn)
        if key is None:
            logger.warning(
                "dataset has no _fingerprint and no cache_key was given, or collate_fn cannot be hashed: "
                "features are not cached"
            )
        else:
            path = Path(cache_dir) / f"{output}-{key[:32]}.safetensors"
            # checked: content hash, the full key it was written for, one row per example; a file that
            # fails is named in a warning and rebuilt below
            cached = load_tensors(path, {"key": key}, {"features": (len(dataset), None)})
            if cached is not None:
                logger.info("loading cached features from %s", path)
                return cached["features"]

    features = _run(base, dataset, columns, batch_size, collate_fn, device, output, progress)
    # a NaN/inf input row (or a diverged backbone) is named here, by dataset row, not as NaN weights later
    check_features(features, f"{output} features of the dataset")

    if path is not None:
        save_tensors(path, {"features": features}, {"output": output, "key": key})  # atomic
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


# ------------------------------------------------------------------------------ the inference loop
def _accepted_inputs(model: nn.Module) -> set[str]:
    """Input names ``model`` takes from a batch: a MonoSemantic model's backbone arguments, else the
    forward's named parameters (the usual input names when the forward takes ``**kwargs``)."""
    backbone_arguments = getattr(getattr(model, "monosemantic", model), "_backbone_arguments", None)
    if backbone_arguments is not None:
        return set(backbone_arguments) - _NOT_INPUTS
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(_INPUT_NAMES)
    return set(params) - _NOT_INPUTS


def input_columns(model: nn.Module, available: Sequence[str]) -> list[str]:
    """The names among ``available`` (dataset columns or row keys) that are inputs of ``model``, in order.

    A MonoSemantic model takes what its backbone's forward takes; another module what its forward
    names (``pixel_values``, ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``
    when it takes ``**kwargs``). Labels and other columns are never inputs.

    Example:
        >>> import torch
        >>> class M(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask=None, labels=None): ...
        >>> input_columns(M(), ["text", "input_ids", "attention_mask", "label", "labels"])
        ['input_ids', 'attention_mask']
    """
    accepted = _accepted_inputs(model)
    columns = [c for c in available if c in accepted]
    if not columns:
        raise ValueError(
            f"no column of the rows ({sorted(available)}) is an input of {type(model).__name__}; "
            f"its inputs: {sorted(accepted)}"
        )
    return columns


def _row_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if names is None:
        first = dataset[0]
        names = list(first) if isinstance(first, Mapping) else None
    return list(names) if names is not None else None


@torch.no_grad()
def _default_collate(rows: list[Any]) -> Any:
    """``default_data_collator``, after a check that names unpadded text instead of torch's bare
    ``expected sequence of length 5 at dim 1 (got 4)``."""
    if rows and isinstance(rows[0], Mapping):
        for key in rows[0]:
            lengths = sorted({n for n in (_sequence_length(row.get(key)) for row in rows) if n is not None})
            if len(lengths) > 1:
                raise ValueError(
                    f"rows of {key!r} have different lengths ({', '.join(map(str, lengths[:5]))}): the text is not "
                    "padded; pass collate_fn=DataCollatorWithPadding(tokenizer), or tokenise with "
                    "padding='max_length' (and truncation=True, max_length=...)"
                )
    return default_data_collator(rows)


def _sequence_length(value: Any) -> int | None:
    """The length of a row's list / tuple / tensor value (``None`` for scalars, 0-d tensors included)."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.shape[0]
    return None


def collect_outputs(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 64,
    *,
    outputs: Sequence[str] = ("features",),
    inputs: Sequence[str] | None = None,
    with_labels: bool = False,
    collate_fn: Callable | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    num_workers: int = 0,
    desc: str = "extracting features",
    dropout: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Run ``model`` over ``dataset`` once, in dataset order, and gather output fields on the CPU.

    Args:
        model: any module; its output's fields named by ``outputs`` are read (attribute or key).
        dataset: a ``datasets.Dataset``, a list of dict rows or any map-style dataset whose
            ``collate_fn`` batches are dicts.
        outputs: the output fields to gather (each as float32, concatenated over batches; ``None`` in
            the result when the model does not return that field).
        inputs: the row keys fed to the model (default: :func:`input_columns` of the rows). When the
            rows' keys are known, only these and the label reach the collator (``select_columns`` for
            a ``datasets.Dataset``), so text or id columns never trip it.
        with_labels: also return ``"labels"``: the rows' ``labels``/``label``/``label_ids`` (``None``
            when there are none).
        collate_fn: batches rows (default ``transformers.default_data_collator``).
        device: where to run; default the model's device (the model is moved back afterwards).
        progress, desc: a progress bar and its text. num_workers: DataLoader workers.
        dropout: run with dropout on (every module in train mode except batch-norm layers, which
            keep their running statistics): SimCSE's views, drawn from torch's global generator.

    The model runs in eval mode (dropout off, BatchNorm running statistics) under ``no_grad``; every
    module's train/eval mode is restored exactly afterwards.

    Example:
        >>> import torch, types
        >>> class M(torch.nn.Module):
        ...     def forward(self, pixel_values):
        ...         return types.SimpleNamespace(features=pixel_values.flatten(1) * 2)
        >>> rows = [{"pixel_values": torch.ones(2), "label": i, "name": "x"} for i in range(3)]
        >>> out = collect_outputs(M(), rows, batch_size=2, outputs=("features", "pooled"), with_labels=True)
        >>> out["features"].tolist(), out["pooled"], out["labels"].tolist()
        ([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]], None, [0, 1, 2])
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
    if len(dataset) == 0:
        raise ValueError("dataset has 0 rows; allowed: a non-empty dataset")
    names = _row_names(dataset)
    if inputs is not None:
        inputs = list(inputs)
        missing = [c for c in inputs if names is not None and c not in names]
        if missing or not inputs:
            raise ValueError(
                f"columns={missing or inputs!r} not found in the rows; available: {sorted(names or [])}"
            )
    elif names is not None:
        inputs = input_columns(model, names)
    accepted = set(inputs) if inputs is not None else _accepted_inputs(model)
    base_collate = collate_fn or _default_collate
    if names is not None:  # only the model inputs and the label reach the collator
        wanted = [c for c in names if c in accepted or c in LABEL_KEYS]
        if hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns(wanted)

        def collate(rows: list[Any]) -> Any:
            return base_collate([{k: v for k, v in row.items() if k in wanted} for row in rows])
    else:
        collate = base_collate

    current = next((p.device for p in model.parameters()), None)
    device = torch.device(device) if device is not None else (current or torch.device("cpu"))
    moved = current is not None and device != current
    modes = {module: module.training for module in model.modules()}  # restored exactly, module by module
    if moved:
        model.to(device)
    model.eval()
    if dropout:
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers
    )
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in [*outputs, "labels"]}
    batches = 0
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress):
            batches += 1
            label = next((batch[k] for k in LABEL_KEYS if k in batch), None)
            out = model(
                **{
                    k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                    if k in accepted
                }
            )
            for name in outputs:
                value = out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)
                if value is not None:
                    chunks[name].append(value.detach().float().cpu())
            if label is not None:
                chunks["labels"].append(torch.as_tensor(label).cpu())
    finally:
        for module, mode in modes.items():
            module.training = mode
        if moved:
            model.to(current)
    wanted_fields = [*outputs, "labels"] if with_labels else list(outputs)
    return {name: torch.cat(chunks[name]) if len(chunks[name]) == batches else None for name in wanted_fields}


def extract_features(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 64,
    columns: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    *,
    tokenizer: Any = None,
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Run ``model`` over ``dataset`` and collect ``(features [N, F], pooled, labels)`` on the CPU.

    :func:`collect_outputs` of ``.features`` and ``.pooled``: batched, ``no_grad``, in eval mode (the
    model's modes are restored afterwards). The model's output must have ``.features`` (and may have
    ``.pooled``; else ``pooled`` is None). Rows hold the model inputs and ``label``/``labels``
    (``labels`` is None when there are none). ``columns`` names the inputs passed to the model
    (default: :func:`input_columns` of the rows). Batches are built by
    ``transformers.default_data_collator``, or ``DataCollatorWithPadding(tokenizer)`` when a
    tokenizer is given (variable-length ``input_ids``).

    Example:
        >>> import torch, types
        >>> class M(torch.nn.Module):
        ...     def forward(self, pixel_values):
        ...         return types.SimpleNamespace(features=pixel_values.flatten(1), pooled=None)
        >>> rows = [{"pixel_values": torch.ones(2, 2), "label": i % 2} for i in range(5)]
        >>> feats, pooled, labels = extract_features(M(), rows, batch_size=2, progress=False)
        >>> tuple(feats.shape), labels.tolist()
        ((5, 4), [0, 1, 0, 1, 0])
    """
    from transformers import DataCollatorWithPadding

    out = collect_outputs(
        model,
        dataset,
        batch_size,
        outputs=("features", "pooled"),
        inputs=columns,
        with_labels=True,
        collate_fn=DataCollatorWithPadding(tokenizer) if tokenizer is not None else None,
        device=device,
        progress=progress,
        num_workers=num_workers,
        desc="extract_features",
    )
    if out["features"] is None:
        raise ValueError(
            f"the output of {type(model).__name__} has no .features; allowed: a model returning features"
        )
    return out["features"], out["pooled"], out["labels"]
