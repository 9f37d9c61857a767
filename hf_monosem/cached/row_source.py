"""Where a fit's rows come from: a feature matrix in memory, or one in shard files that never is.

The label-free fits (:func:`~hf_monosem.cached.sae_fitting.train_sae_layer`,
:func:`~hf_monosem.cached.projector_fitting.fit_contrastive_projector`) and the probe grid
(:func:`~hf_monosem.cached.probe_grid.train_probe_grid`) read their matrix through
:class:`FeatureRows`: one pass over it in blocks (:meth:`FeatureRows.chunks`, for the statistics a fit
needs up front, each block checked by :func:`~hf_monosem.cached.checks.check_features`) and the rows of
every mini-batch (:meth:`FeatureRows.gather`). A tensor is indexed in place (no copy, no overhead); a
:class:`~hf_monosem.cached.feature_shards.ShardedFeatures` is read from its files a batch at a time, so
a matrix larger than memory costs disk, not RAM. Both give the same values, so a fit on shards walks
the same :class:`~hf_monosem.cached.minibatch.MiniBatches` to the same weights as a fit in memory.

Example:
    >>> import tempfile
    >>> from hf_monosem.cached.feature_shards import ShardWriter, open_shards, write_manifest
    >>> x = torch.arange(30.0).view(10, 3)
    >>> writer = ShardWriter(tempfile.mkdtemp(), rows_per_shard=4)
    >>> writer.write(x)
    >>> write_manifest(writer.folder, [writer.close()], width=3, key="k")
    >>> on_disk, in_memory = FeatureRows(open_shards(writer.folder)), FeatureRows(x)
    >>> batch = torch.tensor([9, 0, 5, 4])
    >>> torch.equal(on_disk.gather(batch), in_memory.gather(batch)), on_disk.in_memory, len(on_disk)
    (True, False, 10)
    >>> torch.equal(on_disk.gather(batch.view(2, 2)), x[batch.view(2, 2)])  # [S, B] batches: [S, B, F]
    True
    >>> [(start, len(block)) for start, block in on_disk.chunks(4)]
    [(0, 4), (4, 4), (8, 2)]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .checks import check_features
from .feature_shards import ShardedFeatures

__all__ = ["FeatureRows"]

#: values per block of a pass over the whole matrix (the statistics a fit computes up front): 4 MB of
#: float32, so the float64 temporaries of the statistics stay a few tens of MB at any width
BLOCK_VALUES = 1 << 20


class FeatureRows:
    """The rows of a ``[N, F]`` feature matrix as a fit reads them.

    Args:
        features: a tensor (read on its own device, in place) or a
            :class:`~hf_monosem.cached.feature_shards.ShardedFeatures` (read from its files, a batch or
            a block at a time, never the whole matrix).
        device: where the rows of a ``ShardedFeatures`` go (default: the CPU); a tensor stays where it is.
    """

    def __init__(self, features: torch.Tensor | ShardedFeatures, device: str | torch.device | None = None):
        if isinstance(features, ShardedFeatures):
            self.device = torch.device(device) if device is not None else torch.device("cpu")
        elif isinstance(features, torch.Tensor):
            self.device = features.device
        else:
            raise ValueError(
                f"features of type {type(features).__name__} are not valid; allowed: a torch.Tensor or a "
                "ShardedFeatures (extract_pooled_features(..., memory_map=True))"
            )
        self.features = features
        self.shape = tuple(features.shape)

    @property
    def in_memory(self) -> bool:
        """Whether the matrix is a tensor (indexed in place) rather than shard files."""
        return isinstance(self.features, torch.Tensor)

    def __len__(self) -> int:
        return self.shape[0]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """``features[rows]`` on :attr:`device`: ``[*rows.shape, F]``, in the order of ``rows`` (any shape,
        e.g. ``[B]`` or the ``[S, B]`` batches of several seeds).

        From shards the rows are read in ascending order (each shard file once, its pages front to
        back) and put back in the batch's order afterwards.
        """
        if isinstance(self.features, torch.Tensor):
            return self.features[rows]
        ascending, order = rows.cpu().flatten().sort()
        read = self.features[ascending]
        out = torch.empty_like(read)
        out[order] = read
        return out.view(*rows.shape, self.shape[1]).to(self.device)

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` rows (all of them when fewer), on :attr:`device`."""
        return self.features[: min(count, len(self))].to(self.device)

    def chunks(self, rows: int | None = None, what: str = "features") -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, block)`` over the matrix in order, ``rows`` rows a block (default: about
        :data:`BLOCK_VALUES` values), on :attr:`device`; each block checked finite and in range first
        (:func:`~hf_monosem.cached.checks.check_features`, the bad value named by its row in the whole
        matrix). The same blocks in memory and from shards."""
        rows = rows or max(1, BLOCK_VALUES // max(1, self.shape[1]))
        if isinstance(self.features, torch.Tensor):
            blocks: Iterator[torch.Tensor] = iter(self.features.split(rows))
        else:
            blocks = (block.to(self.device) for block in self.features.chunks(rows))
        start = 0
        for block in blocks:
            check_features(block, what, row_offset=start)
            yield start, block
            start += len(block)
