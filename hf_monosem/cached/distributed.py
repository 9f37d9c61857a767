"""Rows split across the processes of ``accelerate launch`` / ``torchrun``, and gathered back in order.

Under ``accelerate launch --num_processes N`` (one or several machines) every process runs the same
script; without a split each one would extract the whole dataset. :func:`row_block` gives process
``r`` of ``N`` one contiguous block of rows (sizes differ by at most one, blocks in rank order), and
:func:`gather_blocks` puts the blocks of all processes back together, padded to equal length for the
collective and trimmed after, so every process holds the rows in dataset order: the same matrix one
process would have computed. Nothing here runs unless ``torch.distributed`` is initialised with more
than one process; every process must then make the same calls (they are collectives).
"""

from __future__ import annotations

import torch

__all__ = ["barrier", "block_sizes", "end_process_group", "gather_blocks", "process_world", "row_block"]


def process_world() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised process group; ``(1, 0)`` without one.

    Example:
        >>> process_world()
        (1, 0)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def row_block(num_rows: int, rank: int, world: int) -> range:
    """The contiguous rows of process ``rank`` out of ``world``: the first ``num_rows % world`` processes
    take one row more, so that the blocks, in rank order, are ``range(num_rows)``.

    Example:
        >>> [list(row_block(7, r, 3)) for r in range(3)]
        [[0, 1, 2], [3, 4], [5, 6]]
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} is not valid for world={world}; allowed: 0 <= rank < world")
    base, extra = divmod(num_rows, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def block_sizes(local: torch.Tensor, num_rows: int) -> list[int]:
    """The row counts of every process's block of ``num_rows`` (rank order), after checking that this
    process holds its own block's count in ``local``.

    Example:
        >>> block_sizes(torch.zeros(5, 2), 5)  # one process: the whole block
        [5]
    """
    world, rank = process_world()
    sizes = [len(row_block(num_rows, r, world)) for r in range(world)]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"process {rank} holds {local.shape[0]} rows, its block has {sizes[rank]}")
    return sizes


def gather_blocks(local: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Every process's block (from :func:`row_block`), concatenated in rank order: ``[num_rows, ...]``
    on every process, on the CPU. Without a process group of more than one, ``local`` itself.

    The blocks are padded to the largest one for ``all_gather`` (it needs one shape) and trimmed after;
    under NCCL they travel through the current CUDA device.
    """
    if process_world()[0] == 1:
        return local
    sizes = block_sizes(local, num_rows)
    device = torch.device("cpu")
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    padded = local.new_zeros((max(sizes), *local.shape[1:])).to(device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).cpu()


def barrier() -> None:
    """Wait for every process (nothing without a process group of more than one)."""
    if process_world()[0] > 1:
        torch.distributed.barrier()


def end_process_group() -> None:
    """Wait for every process, then destroy the default process group: the last call of a script that
    ``accelerate launch`` / ``torchrun`` ran (the examples and ``hf-monosem report`` make it).

    Why: a process that exits with its gloo process group alive can abort *after* its work is done
    (``terminate called without an active exception``, SIGABRT, exit code -6): gloo's C++ threads still
    hold tensors when the interpreter is torn down (pytorch/pytorch#179291, #190489; torch does not
    destroy the group for you). The barrier first keeps one process from tearing the group down while
    another still sends on it. Does nothing without an initialised process group.

    Example:
        >>> end_process_group()  # not launched: nothing to end
        >>> process_world()
        (1, 0)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
