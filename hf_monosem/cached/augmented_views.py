"""Augmented views of a training set, extracted once: ``[K, N, F]`` features for the paper's probe protocol.

:func:`augmented_view_features` is the probe protocol's augmentation made affordable: K augmented
views of every training image go through the frozen model once (``[K, N, F]``), and the probe grid
draws one view per image and epoch (:func:`~hf_monosem.cached.probe_grid.train_probe_grid`).

Views are computed in blocks of rows, each (seed, view, block) with its own generator
(:func:`view_generator`), so a block's draws do not depend on what ran before it. That is what lets
``accelerate launch --num_processes N`` split them: :func:`view_blocks` gives each process a contiguous
run of the (global) blocks and :func:`gather_view_blocks` puts them back in order through
:func:`~.distributed.gather_blocks`, the same result one process computes.
:func:`~.feature_cache.text_view_features` splits its text views the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .distributed import gather_blocks, process_world, row_block

__all__ = ["augmented_view_features", "gather_view_blocks", "view_blocks", "view_generator"]


@torch.no_grad()
def view_generator(seed: int, view: int, chunk: int) -> torch.Generator:
    """The generator of augmented view ``view`` of the ``chunk``-th block of images: every block of
    every view has its own, so any one view of any image can be rebuilt without the others."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(view)) * 1_000_003 + int(chunk))


def view_blocks(num_rows: int, block_rows: int, split_processes: bool) -> range:
    """The blocks of ``block_rows`` rows (the last one shorter) that this process computes: all of them,
    or with ``split_processes`` under a process group of N > 1 its contiguous run of them
    (:func:`~.distributed.row_block` over blocks; ignored with fewer blocks than processes). The blocks
    themselves are the same whatever N, so each keeps its generator.

    Example:
        >>> view_blocks(10, 4, split_processes=True)  # one process: every block
        range(0, 3)
    """
    num_blocks = math.ceil(num_rows / block_rows)
    world, rank = process_world()
    if split_processes and 1 < world <= num_blocks:
        return row_block(num_blocks, rank, world)
    return range(num_blocks)


def gather_view_blocks(local: torch.Tensor, blocks: range, num_rows: int, block_rows: int) -> torch.Tensor:
    """``[K, num_rows, F]``: every process's ``local`` ``[K, rows of its blocks, F]`` (its
    :func:`view_blocks`), in block order on every process; ``local`` itself when it holds every block.

    Each process's rows are padded to whole blocks and gathered as ``[blocks, K, block_rows, F]`` by
    :func:`~.distributed.gather_blocks` (only the last block of all is short, so the padding is trimmed
    from the end).

    Example:
        >>> gather_view_blocks(torch.ones(2, 5, 3), range(0, 2), 5, 4).shape  # one process: as it is
        torch.Size([2, 5, 3])
    """
    num_blocks = math.ceil(num_rows / block_rows)
    if len(blocks) == num_blocks:
        return local
    views = local.shape[0]
    padded = local.new_zeros((views, len(blocks) * block_rows, *local.shape[2:]))
    padded[:, : local.shape[1]] = local
    per_block = padded.unflatten(1, (len(blocks), block_rows)).transpose(0, 1).contiguous()
    every = gather_blocks(per_block, num_blocks)  # [num_blocks, K, block_rows, F], in block order
    return every.transpose(0, 1).flatten(1, 2)[:, :num_rows]


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
    split_processes: bool = False,
) -> torch.Tensor:
    """``[num_views, N, F]``: ``encode`` of ``num_views`` augmented copies of every image.

    View ``k`` of images ``[c * batch_size, (c + 1) * batch_size)`` is
    ``encode(views(block, view_generator(seed, k, c)))``, so the cache equals augmenting on the fly with
    the same generators (tested). ``views`` is e.g. :class:`~hf_monosem.training.ImageViews` with the
    authors' probe augmentation (``crop_scale=(0.08, 1.0)``, horizontal flips).

    ``split_processes``: under ``accelerate launch --num_processes N`` each process computes only its
    contiguous run of the blocks of ``batch_size`` images (:func:`view_blocks`) and the blocks are gathered
    back in order (:func:`gather_view_blocks`), so every process returns what one process computes; every
    process must then call this. ``False`` (default): every process computes every view.

    Example:
        >>> flip = lambda x, g: x.flip(-1) if torch.rand((), generator=g) < 0.5 else x
        >>> cache = augmented_view_features(
        ...     lambda x: x.flatten(1), torch.arange(8.0).view(2, 1, 1, 4), flip, 3)
        >>> cache.shape
        torch.Size([3, 2, 4])
    """
    if not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"num_views={num_views!r} is not valid; allowed: a positive integer")
    if images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, ...] tensor, got shape {tuple(images.shape)}")
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid; allowed: a positive integer")
    blocks = images.split(batch_size)
    mine = view_blocks(len(images), batch_size, split_processes)
    out = []
    with tqdm(total=num_views * len(mine), desc="augmented views", disable=not progress) as bar:
        for k in range(num_views):
            view = []
            for c in mine:  # block c draws from its own generator: the same draws in whichever process
                view.append(encode(views(blocks[c], view_generator(seed, k, c))).float().cpu())
                bar.update(1)
            out.append(torch.cat(view))
    return gather_view_blocks(torch.stack(out), mine, len(images), batch_size)
