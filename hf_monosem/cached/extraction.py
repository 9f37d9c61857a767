"""The package's one batched-inference loop: run a model over a dataset without gradients.

:func:`collect_outputs` picks the model inputs from the rows, runs the model in eval mode under
``no_grad`` and gathers output fields on the CPU, leaving every module's train/eval mode (and the
model's device) as it found them. :func:`extract_features` returns ``(features, pooled, labels)`` of
any model whose output has ``.features`` (the evaluation helper, also exported by
:mod:`hf_monosem.evaluation`); :func:`~.feature_cache.extract_pooled_features` keeps a frozen model's
output on disk, and :func:`~.augmented_views.augmented_view_features` extracts augmented views once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, default_data_collator

from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from ..training.views import LABEL_KEYS
from .distributed import gather_blocks, process_world, row_block

__all__ = ["collect_outputs", "extract_features", "input_columns", "resolve_base_model"]

logger = logging.getLogger(__name__)

# inputs taken from the rows when a forward takes **kwargs and says nothing more precise
_INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask", "token_type_ids", "position_ids")
# parameters that are never columns of a dataset
_NOT_INPUTS = {"args", "kwargs", "return_dict", "output_hidden_states", *LABEL_KEYS}


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
        f"expected a MonoSemantic model or a transformers backbone (PreTrainedModel), got "
        f"{type(model_or_backbone).__name__}"
    )


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


def _default_collate(rows: list[Any]) -> Any:
    """``default_data_collator``, after a check that names unpadded text instead of torch's bare
    ``expected sequence of length 5 at dim 1 (got 4)``."""
    if rows and isinstance(rows[0], Mapping):
        for key in rows[0]:
            lengths = sorted({n for n in (_sequence_length(row.get(key)) for row in rows) if n is not None})
            if len(lengths) > 1:
                raise ValueError(
                    f"rows of {key!r} have different lengths ({', '.join(map(str, lengths[:5]))}): the text "
                    f"is not "
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


@torch.no_grad()
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
    split_processes: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None,
    sort_by_length: bool = False,
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
        split_processes: under ``accelerate launch`` / ``torchrun`` (an initialised process group of
            N > 1), each process runs only its contiguous block of rows (:func:`~.distributed.row_block`)
            and the blocks are gathered back in dataset order, so every process returns what one
            process would (the per-row outputs; a batch's composition can move float sums in the last
            bits). Every process must call it. Ignored with one process or fewer rows than processes.
        on_batch: called with each batch's outputs (``{name: [B, ...] float32 CPU}``, ``"labels"``
            too) instead of keeping them: a matrix larger than memory streams to disk
            (:class:`~.feature_shards.ShardWriter`); the returned outputs are then ``None``. With
            ``split_processes`` each process streams its own block (nothing is gathered).
        sort_by_length: run the rows longest ``input_ids`` first (a stable sort; each process sorts its
            own block), so that a padding collator pads every batch to rows of about its own length, and
            return them in dataset order: unpadded texts of mixed lengths cost no forward pass over
            padding (as ``SentenceTransformer.encode`` does). The per-row outputs are those of the
            dataset order (a batch's composition can move float sums in the last bits). Rows without
            ``input_ids`` (images) keep their order; not with ``on_batch``, which streams in order.

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
    if sort_by_length and on_batch is not None:
        raise ValueError("sort_by_length=True with on_batch is not allowed: streamed rows keep dataset order")
    num_rows = len(dataset)
    world, rank = process_world()
    split = split_processes and 1 < world <= num_rows  # every process has rows: equal shapes to gather
    if split:
        dataset = select_rows(dataset, row_block(num_rows, rank, world))
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
    order = length_order(dataset) if sort_by_length and "input_ids" in accepted else None
    if order is not None:
        dataset = select_rows(dataset, order.tolist())

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
            values = {}
            for name in outputs:
                value = out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)
                if value is not None:
                    values[name] = value.detach().float().cpu()
            if label is not None:
                values["labels"] = torch.as_tensor(label).cpu()
            if on_batch is not None:  # streamed, not kept: the caller's sink holds the rows
                on_batch(values)
                continue
            for name, value in values.items():
                chunks[name].append(value)
    finally:
        for module, mode in modes.items():
            module.training = mode
        if moved:
            model.to(current)
    wanted_fields = [*outputs, "labels"] if with_labels else list(outputs)
    result = {name: torch.cat(chunks[name]) if chunks[name] and len(chunks[name]) == batches else None
              for name in wanted_fields}  # fmt: skip
    if order is not None:  # back to dataset order: row order[j] came out j-th
        inverse = torch.argsort(order)
        result = {name: None if v is None else v[inverse] for name, v in result.items()}
    if split and on_batch is None:  # the same fields on every process: one model, the same columns
        result = {name: None if v is None else gather_blocks(v, num_rows) for name, v in result.items()}
    return result


def select_rows(dataset: Any, rows: range | list[int]) -> Any:
    """The rows ``rows`` of a ``datasets.Dataset`` (``select``, no copy), a list, or any map-style dataset."""
    if hasattr(dataset, "select"):
        return dataset.select(rows)
    if isinstance(dataset, (list, tuple)):
        return dataset[rows.start : rows.stop] if isinstance(rows, range) else [dataset[i] for i in rows]
    return torch.utils.data.Subset(dataset, rows)


def length_order(dataset: Any) -> torch.Tensor | None:
    """Row indices, longest ``input_ids`` first (stable); ``None`` when the rows have no ``input_ids``.

    A ``datasets.Dataset`` is measured in Arrow (list lengths of the column, no Python list per row).

    Example:
        >>> length_order([{"input_ids": [1]}, {"input_ids": [1, 2, 3]}, {"input_ids": [4]}]).tolist()
        [1, 0, 2]
    """
    if hasattr(dataset, "with_format") and "input_ids" in (dataset.column_names or []):
        import pyarrow.compute as pc

        column = dataset.with_format("arrow")["input_ids"]
        lengths = torch.tensor(pc.list_value_length(column).to_pylist())
    else:
        found = [_sequence_length(dataset[i].get("input_ids")) for i in range(len(dataset))]
        if any(n is None for n in found):
            return None
        lengths = torch.tensor(found)
    return torch.argsort(lengths, descending=True, stable=True)


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
