"""A frozen model's features, computed once and kept on disk (keyed by model weights and dataset).

Post-hoc SAE fitting and linear probing train small layers on a frozen backbone, whose output never
changes, so :func:`extract_pooled_features` computes it once (through the one inference loop,
:func:`~.extraction.collect_outputs`) and reuses it for every epoch, every noise rate of a sweep,
every seed. The matrix is written as safetensors under ``cache_dir``, keyed by a hash of the model
(config + :func:`model_fingerprint` of its weights), the dataset (``datasets.Dataset._fingerprint``)
and what is extracted; the second call loads it.

:func:`text_view_features` is the text twin of :func:`~.augmented_views.augmented_view_features`: K
views of every post (SimCSE dropout or token masking) through the same loop, cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import default_data_collator

from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from .augmented_views import gather_view_blocks, view_blocks, view_generator
from .cache_files import load_tensors, save_tensors
from .checks import check_features
from .distributed import barrier, process_world, row_block
from .extraction import collect_outputs, input_columns, length_order, resolve_base_model, select_rows
from .feature_shards import ShardedFeatures, ShardWriter, open_shards, write_manifest

__all__ = ["TEXT_VIEW_KINDS", "extract_pooled_features", "model_fingerprint", "text_view_features"]

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
    """What the collate function is, as a hash, since another collate function (e.g. one that truncates)
    gives other features. ``None`` when it cannot be hashed (then nothing is cached).

    A ``DataCollatorWithPadding`` is described by what its padded batches depend on (:func:`_padding_facts`),
    never by hashing its tokenizer object: that object's state changes when it is *called* (the backend
    tokenizer keeps the last truncation settings), so a run that tokenised its rows and a resumed run whose
    ``datasets.map`` loaded them from the ``datasets`` cache hashed differently, and the resumed run
    extracted everything again. Any other collate function is hashed like ``datasets.map`` hashes its
    function (code, closure and state).
    """
    if collate_fn is None:
        return "default_data_collator"
    from transformers import DataCollatorWithPadding

    if type(collate_fn) is DataCollatorWithPadding:  # a subclass may batch differently: hashed below
        return json.dumps(_padding_facts(collate_fn), sort_keys=True)
    from datasets.fingerprint import Hasher

    try:
        return Hasher.hash(collate_fn)
    except Exception:  # unpicklable state: no safe key
        return None


def _padding_facts(collator: Any) -> dict[str, Any]:
    """The stable facts a ``DataCollatorWithPadding``'s batches depend on: how it pads (strategy, length,
    multiple, side, pad ids, the columns it pads) and which tokenizer (class, vocabulary size, maximum
    length). The token ids themselves are the dataset's key (the caller's ``cache_key`` or fingerprint).

    Example:
        >>> from transformers import BertTokenizerFast, DataCollatorWithPadding
        >>> vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
        >>> facts = _padding_facts(DataCollatorWithPadding(BertTokenizerFast(vocab=vocab)))
        >>> facts["pad_token_id"], facts["padding_side"], facts["vocab_size"]
        (0, 'right', 7)
    """
    tokenizer = collator.tokenizer
    return {
        "collator": type(collator).__name__,
        "padding": str(collator.padding),
        "max_length": collator.max_length,
        "pad_to_multiple_of": collator.pad_to_multiple_of,
        "return_tensors": collator.return_tensors,
        "tokenizer": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "model_max_length": tokenizer.model_max_length,
        "padding_side": tokenizer.padding_side,
        "pad_token_id": tokenizer.pad_token_id,
        "pad_token_type_id": tokenizer.pad_token_type_id,
        "model_input_names": list(tokenizer.model_input_names),
    }


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
    split_processes: bool = False,
    memory_map: bool = False,
    rows_per_shard: int = 65536,
    sort_by_length: bool = False,
) -> torch.Tensor | ShardedFeatures:
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
        split_processes: under ``accelerate launch --num_processes N`` / ``torchrun`` (one machine or
            several), each process extracts its own contiguous block of rows and the blocks are
            gathered, so every process returns the whole matrix in dataset order, as one process
            would; then every process must call this (a process that skips it, e.g. code that runs
            only on the main process, would leave the others waiting in the gather), which is why it
            is opt-in: ``False`` (default) extracts everything in each process, as before. Only the
            main process writes the cache file.
        memory_map: stream the matrix to shard files under ``cache_dir`` (``rows_per_shard`` rows each,
            float32) instead of holding it in memory, and return a :class:`~.feature_shards.ShardedFeatures`
            that reads rows lazily: a matrix larger than RAM (1.3M x 2048 floats is ~10 GB) needs disk,
            not memory. Needs ``cache_dir`` and a cache key. With ``split_processes`` every process writes
            its own block's shards (a shared file system for several machines); nothing is gathered.
        sort_by_length: run the texts longest first, so that padded batches waste no compute on padding,
            and return them in dataset order (:func:`~.extraction.collect_outputs`; what
            ``hf-monosem report`` does). Not with ``memory_map``, which streams rows in order.

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
    if memory_map and sort_by_length:
        raise ValueError(
            "sort_by_length=True with memory_map=True is not allowed: shards are written in row order"
        )
    if memory_map and cache_dir is None:
        raise ValueError("memory_map=True needs cache_dir (where the shard files go); allowed: a folder")
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard={rows_per_shard!r} is not valid; allowed: an integer >= 1")
    base = resolve_base_model(model_or_backbone, pooling)
    columns = _input_columns(base, dataset)
    world = process_world()[0]
    split = world > 1 and bool(split_processes)
    if memory_map:
        key = _cache_key(base, dataset, output, columns, cache_key, collate_fn)
        if key is None:
            raise ValueError(
                "memory_map=True needs a cache key: the dataset has no _fingerprint (pass cache_key=...) or "
                "collate_fn cannot be hashed"
            )
        folder = Path(cache_dir) / f"{output}-{key[:32]}.shards"
        sharded = open_shards(folder, key)  # checked: manifest, key, every shard's size and hash
        if sharded is not None:
            logger.info("reading cached feature shards from %s", folder)
            return sharded
        run = functools.partial(
            _run, base, dataset, columns, batch_size, collate_fn, device, output, progress
        )
        return _run_to_shards(run, output, split, len(dataset), folder, key, rows_per_shard)

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

    features = _run(base, dataset, columns, batch_size, collate_fn, device, output, progress, split,
                    sort_by_length=sort_by_length)  # fmt: skip
    # a NaN/inf input row (or a diverged backbone) is named here, by dataset row, not as NaN weights later
    check_features(features, f"{output} features of the dataset")

    if path is not None:
        if not split or process_world()[1] == 0:  # every process holds the same matrix: one writes it
            save_tensors(path, {"features": features}, {"output": output, "key": str(key)})  # atomic
        if split:
            barrier()  # the file is complete before any process returns (and, e.g., a later call reads it)
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
    split: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None,
    sort_by_length: bool = False,
) -> torch.Tensor | None:
    outputs = collect_outputs(
        base,
        dataset,
        batch_size,
        outputs=(output,),
        inputs=columns or None,
        collate_fn=collate_fn,
        device=device,
        progress=progress,
        split_processes=split,
        on_batch=on_batch,
        sort_by_length=sort_by_length,
    )
    return outputs[output]


def _run_to_shards(
    run: Callable[..., Any],
    output: str,
    split: bool,
    num_rows: int,
    folder: Path,
    key: str,
    rows_per_shard: int,
) -> ShardedFeatures:
    """``run`` (:func:`_run` but for ``split`` and ``on_batch``: the one inference loop) streamed into shard
    files, this process's block of rows when ``split``; the main process writes the manifest once every
    process's shards are on disk."""
    world, rank = process_world()
    split = split and 1 < world <= num_rows  # as collect_outputs decides
    first_row = row_block(num_rows, rank, world).start if split else 0
    writer = ShardWriter(folder, rows_per_shard=rows_per_shard, prefix=f"block{rank if split else 0:05d}-")
    written = [0]

    def write(values: dict[str, torch.Tensor]) -> None:
        batch = values.get(output)
        if batch is None:
            raise ValueError(f"the model's output has no {output!r}; allowed: a model returning it")
        # named by dataset row before it reaches the disk, as the in-memory route does
        check_features(batch, f"{output} features of the dataset", row_offset=first_row + written[0])
        writer.write(batch)
        written[0] += len(batch)

    run(split, on_batch=write)
    shards = writer.close()
    if split:
        every: list[Any] = [None] * world
        torch.distributed.all_gather_object(every, (shards, writer.width))
        if rank == 0:
            width = next(w for _, w in every if w is not None)
            write_manifest(folder, [entries for entries, _ in every], width, key)
        barrier()  # the manifest exists before any process opens it
    else:
        write_manifest(folder, [shards], int(writer.width or 0), key)
    sharded = open_shards(folder, key, verify=False)  # just written, hashed on the way
    if sharded is None or len(sharded) != num_rows:
        raise RuntimeError(f"feature shards in {folder} were written but cannot be read back")
    return sharded


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
    split_processes: bool = False,
    sort_by_length: bool = False,
) -> torch.Tensor:
    """``[num_views, N, hidden]``: pooled encoder vectors of ``num_views`` views of every text, the text
    twin of :func:`augmented_view_features` (the projector fitting draws two of them per row and step).

    ``kind="dropout"`` runs the encoder with dropout on (SimCSE: two passes of one post differ only
    in their dropout masks); ``kind="mask"`` runs it in eval mode on inputs whose tokens are replaced by
    ``mask_token_id`` with probability ``mask_rate`` (never the first and last attended token, CLS/SEP).
    The rows run in blocks of ``batch_size`` (one forward pass each); block ``c`` of view ``k`` draws its
    masks from :func:`~.augmented_views.view_generator` ``(seed, k, c)`` and its dropout from torch's
    global generator seeded from that one inside ``torch.random.fork_rng`` (the caller's random state is
    left alone), so the result is fixed by ``seed``, ``batch_size`` and ``sort_by_length`` and no block's
    draws depend on which blocks ran before it. Every block goes through :func:`collect_outputs`, the one
    inference loop. With ``cache_dir`` the tensor is cached like :func:`extract_pooled_features`, keyed
    by the model, the dataset and these settings.

    ``split_processes``: under ``accelerate launch --num_processes N`` each process runs only its
    contiguous run of the blocks (:func:`~.augmented_views.view_blocks`) and the blocks are gathered back
    in order (:func:`~.augmented_views.gather_view_blocks`), so every process returns what one process
    computes (tested with ``torch.equal``); every process must then call this. Only the main process
    writes the cache file. ``sort_by_length``: the blocks are cut from the rows sorted longest first
    (stable, over the whole dataset, so the same blocks whatever N), so that padded batches waste no
    compute on padding; the result is in dataset order.

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
            f"kind='mask' needs mask_token_id (got {mask_token_id!r}) and mask_rate in (0, 1) (got "
            f"{mask_rate!r})"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid; allowed: a positive integer")
    if len(dataset) == 0:
        raise ValueError("dataset has 0 rows; allowed: a non-empty dataset")
    base = resolve_base_model(model_or_backbone, pooling)
    columns = _input_columns(base, dataset)
    path = None
    if cache_dir is not None:
        key = _cache_key(base, dataset, "pooled", columns, cache_key)
        if key is None:
            logger.warning("dataset has no _fingerprint and no cache_key was given: views are not cached")
        else:
            # "blocks-v2": per-block generators (the draws of version 1, one stream per view, differ)
            settings = (
                f"{key}|{kind}|{num_views}|{seed}|{mask_rate if kind == 'mask' else ''}|{mask_token_id}"
                f"|blocks-v2|{batch_size}|{bool(sort_by_length)}"
            )
            path = Path(cache_dir) / f"views-{hashlib.sha256(settings.encode()).hexdigest()[:32]}.safetensors"
            # checked like the pooled cache: content hash, the settings it was written for, its shape
            cached = load_tensors(path, {"key": settings}, {"features": (num_views, len(dataset), None)})
            if cached is not None:
                return cached["features"]
    order = length_order(dataset) if sort_by_length else None  # global: the same blocks in every process
    ordered = dataset if order is None else select_rows(dataset, order.tolist())
    num_rows = len(dataset)
    mine = view_blocks(num_rows, batch_size, split_processes)
    device = next((p.device for p in base.parameters()), torch.device("cpu"))
    forked = [device] if device.type == "cuda" else []  # dropout on a GPU draws from its own generator
    views = []
    with tqdm(total=num_views * len(mine), desc="text views", disable=not progress) as bar:
        for k in range(num_views):
            view = []
            for c in mine:
                block = select_rows(ordered, range(c * batch_size, min((c + 1) * batch_size, num_rows)))
                view.append(_view_block(base, block, columns, kind, mask_rate, mask_token_id, collate_fn,
                                        view_generator(seed, k, c), forked))  # fmt: skip
                bar.update(1)
            views.append(torch.cat(view))
    result = gather_view_blocks(torch.stack(views), mine, num_rows, batch_size)
    if order is not None:  # back to dataset order: row order[j] came out j-th
        result = result[:, torch.argsort(order)]
    split = len(mine) < math.ceil(num_rows / batch_size)
    if path is not None:
        if process_world()[1] == 0:  # every process holds the same views: one writes them
            save_tensors(path, {"features": result}, {"output": "views", "key": settings})  # atomic
        if split:
            barrier()  # the file is complete before any process returns
    return result


def _view_block(
    base: MonoSemanticModel,
    block: Any,
    columns: list[str],
    kind: str,
    mask_rate: float,
    mask_token_id: int | None,
    collate_fn: Callable | None,
    generator: torch.Generator,
    forked: list[torch.device],
) -> torch.Tensor:
    """One block of one text view, in one forward pass: masks from ``generator``, dropout from the global
    generator(s) seeded from it inside ``fork_rng`` (dropout on the CPU draws from torch's global CPU
    generator, on a GPU from that device's), so the block's draws are fixed by its own generator."""
    base_collate = collate_fn or default_data_collator
    collate = base_collate
    if kind == "mask":

        def collate(rows: list[Any]) -> Any:
            return mask_tokens(base_collate(rows), mask_rate, int(mask_token_id), generator)

    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        out = collect_outputs(
            base,
            block,
            len(block),
            outputs=("pooled",),
            inputs=columns or None,
            collate_fn=collate,
            dropout=kind == "dropout",
        )
    return out["pooled"]


def mask_tokens(batch: Any, rate: float, mask_token_id: int, generator: torch.Generator) -> Any:
    """``batch`` with attended tokens (not the first or last of a row) replaced by ``mask_token_id``."""
    ids = batch["input_ids"]
    attended = batch.get("attention_mask", torch.ones_like(ids)).bool()
    position = torch.arange(ids.shape[1]).expand_as(ids)
    inner = attended & (position > 0) & (position < attended.sum(1, keepdim=True) - 1)
    hit = inner & (torch.rand(ids.shape, generator=generator) < rate)
    batch["input_ids"] = ids.masked_fill(hit, mask_token_id)
    return batch
