"""Augmented views of a training set, extracted once: ``[K, N, F]`` features for the paper's probe protocol.

:func:`augmented_view_features` is the probe protocol's augmentation made affordable: K augmented
views of every training image go through the frozen model once (``[K, N, F]``), and the probe grid
draws one view per image and epoch (:func:`~hf_monosem.cached.probe_grid.train_probe_grid`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["augmented_view_features", "view_generator"]


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
