"""Data-parallel steps of the label-free fits (SAE, contrastive projector) across processes.

Under ``accelerate launch --num_processes N`` / ``torchrun`` every process holds the same feature matrix
(extracted with ``split_processes=True``, gathered back in order) and walks the same mini-batches (one
seed, :class:`~hf_monosem.cached.minibatch.MiniBatches`). :func:`local_rows` gives each process its
contiguous block of every batch (:func:`~hf_monosem.cached.distributed.row_block`) and the block's share
of the batch; a loss that is a mean over the batch's rows, computed on the block and multiplied by the
share, sums over the processes to the one-process loss, so :func:`sum_gradients_` (one ``all_reduce`` of
the flattened gradients) leaves every process with the one-process gradient. Identical gradients and
identical starting weights (:func:`broadcast_parameters_`) keep the weights identical across processes.
:func:`gather_rows_with_grad` gives every process the whole batch's embeddings, with the gradient path
back to the process that computed them, for losses whose negatives are the other rows (InfoNCE).

Without a process group of more than one process every function here is the identity (or does nothing),
so a loop written with them is the one-process loop. Every process must make the same calls in the same
order (they are collectives). A fit uses them through :class:`DataParallelFit`, which is active only when
the caller asked for it (``split_processes=True``): code that fits on the main process only, while the
others wait elsewhere, keeps working.

Example:
    >>> rows = torch.tensor([4, 1, 3])
    >>> local_rows(rows)  # one process: the whole batch, all of it
    (tensor([4, 1, 3]), 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..training.losses import gather_with_grad
from .distributed import block_sizes, process_world, row_block
from .feature_shards import ShardedFeatures

__all__ = [
    "DataParallelFit",
    "all_processes",
    "all_reduce_sum_",
    "broadcast_parameters_",
    "check_same_on_every_process",
    "gather_rows_with_grad",
    "local_rows",
    "sum_gradients_",
]


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """Where a collective on ``tensor`` runs: the current CUDA device under NCCL, the CPU under gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor.device.type != "cuda" else tensor.device


def local_rows(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(this process's block of the batch rows, its share of the batch)``: the contiguous block of
    :func:`~hf_monosem.cached.distributed.row_block` in rank order, and ``len(block) / len(rows)``
    (``(rows, 1.0)`` in one process). A block may be empty when the batch has fewer rows than processes.
    """
    world, rank = process_world()
    if world == 1:
        return rows, 1.0
    block = row_block(rows.shape[-1], rank, world)
    return rows[..., block.start : block.stop], len(block) / rows.shape[-1]


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes, in place (returned for chaining; unchanged in one process)."""
    if process_world()[0] == 1:
        return tensor
    device = _collective_device(tensor)
    buffer = tensor.to(device)
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


def all_processes(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (``flag`` itself in one process): one decision that all
    processes take together, e.g. "the cached fit is on disk", so that none skips a collective the others
    run.

    Example:
        >>> all_processes(True), all_processes(False)
        (True, False)
    """
    if process_world()[0] == 1:
        return bool(flag)
    count = all_reduce_sum_(torch.tensor([float(bool(flag))], dtype=torch.float64))
    return int(count.item()) == process_world()[0]


def sum_gradients_(parameters: Iterable[nn.Parameter]) -> None:
    """Every parameter's gradient summed over the processes, in place, in one ``all_reduce``.

    A process whose block was empty (or a parameter that got no gradient) contributes zeros; afterwards
    every parameter has a gradient on every process, so the optimiser steps the same on all of them.
    """
    if process_world()[0] == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = all_reduce_sum_(torch.cat([p.grad.reshape(-1) for p in params]))
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


@torch.no_grad()
def broadcast_parameters_(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from process ``src`` to all others, in place (the start
    of a fit, so that a caller's differently seeded initialisation cannot make the processes diverge)."""
    if process_world()[0] == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        buffer = tensor.data.to(_collective_device(tensor))
        torch.distributed.broadcast(buffer, src=src)
        if buffer is not tensor.data:
            tensor.data.copy_(buffer)


def gather_rows_with_grad(local: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``[num_rows, ...]``: every process's block (:func:`local_rows` of a ``num_rows`` batch) in rank
    order, on every process, with the autograd graph kept.

    The blocks may differ by one row: each is padded to the largest one for the collective and trimmed
    after. The backward pass sums, over processes, the gradient each one computed for a block and hands
    it to the process that owns the block (:func:`~hf_monosem.training.losses.gather_with_grad`): a loss
    computed by every process on the gathered rows and divided by the number of processes then gives each
    block exactly its one-process gradient. ``local`` itself in one process.
    """
    if process_world()[0] == 1:
        return local
    sizes = block_sizes(local, num_rows)
    largest = max(sizes)
    padding = [0, 0] * (local.dim() - 1) + [0, largest - local.shape[0]]
    gathered = gather_with_grad(F.pad(local, padding))
    return torch.cat([gathered[r * largest : r * largest + size] for r, size in enumerate(sizes)])


@torch.no_grad()
def check_same_on_every_process(tensor: torch.Tensor | ShardedFeatures, name: str) -> None:
    """Refuse (``ValueError`` on every process) when the processes hold different ``tensor``s: the shape,
    the sum and the sum of squares are compared (a data-parallel fit needs the same matrix everywhere);
    for a :class:`~hf_monosem.cached.feature_shards.ShardedFeatures`, its shape and
    :attr:`~hf_monosem.cached.feature_shards.ShardedFeatures.fingerprint` (the manifest's shard hashes: no
    row is read, the matrix may be larger than memory)."""
    world, rank = process_world()
    if world == 1:
        return
    shape = [*map(float, tensor.shape[:2]), 0.0, 0.0][:2]  # the first two sizes (0 where absent)
    if isinstance(tensor, ShardedFeatures):
        digest = tensor.fingerprint  # two 48-bit parts: exact in float64
        content = [float(int(digest[:12], 16)), float(int(digest[12:24], 16))]
    else:
        x = tensor.double()
        content = [float(x.sum()), float(x.pow(2).sum())]
    summary = torch.tensor([float(len(tensor.shape)), *shape, *content], dtype=torch.float64)
    device = _collective_device(summary)
    parts = [torch.empty(5, dtype=summary.dtype, device=device) for _ in range(world)]
    torch.distributed.all_gather(parts, summary.to(device))
    summaries = [part.cpu() for part in parts]
    if any(not torch.equal(s, summaries[0]) for s in summaries):
        raise ValueError(
            f"{name} differs between the {world} processes (process {rank}: shape {tuple(tensor.shape)}); "
            "allowed: the same matrix on every process (extract it with split_processes=True, which gathers "
            "the rows in order, or load the same cache file)"
        )


class DataParallelFit:
    """The data-parallel steps of one fit, active when ``split_processes`` is true and a process group of
    more than one process is initialised; otherwise every method is the one-process identity (no
    collective), whatever the process group.

    Example:
        >>> fit = DataParallelFit(split_processes=True)  # no process group here: inactive
        >>> fit.active, fit.world, fit.rank, fit.local_rows(torch.tensor([4, 1, 3]))
        (False, 1, 0, (tensor([4, 1, 3]), 1.0))
    """

    def __init__(self, split_processes: bool) -> None:
        world, rank = process_world()
        self.active = bool(split_processes) and world > 1
        self.world, self.rank = (world, rank) if self.active else (1, 0)

    def local_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """:func:`local_rows` when active, ``(rows, 1.0)`` otherwise."""
        return local_rows(rows) if self.active else (rows, 1.0)

    def sum_gradients_(self, parameters: Iterable[nn.Parameter]) -> None:
        """:func:`sum_gradients_` when active."""
        if self.active:
            sum_gradients_(parameters)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """:func:`all_reduce_sum_` when active, ``tensor`` otherwise."""
        return all_reduce_sum_(tensor) if self.active else tensor

    def broadcast_parameters_(self, module: nn.Module) -> None:
        """:func:`broadcast_parameters_` from process 0 when active."""
        if self.active:
            broadcast_parameters_(module)

    def gather_rows_with_grad(self, local: torch.Tensor, num_rows: int) -> torch.Tensor:
        """:func:`gather_rows_with_grad` when active, ``local`` otherwise."""
        return gather_rows_with_grad(local, num_rows) if self.active else local

    def check_same_on_every_process(self, tensor: torch.Tensor | ShardedFeatures, name: str) -> None:
        """:func:`check_same_on_every_process` when active."""
        if self.active:
            check_same_on_every_process(tensor, name)
