"""Shuffled mini-batch epochs over a cached feature matrix, under one seeding rule.

Every loop of the cached route that trains on a feature matrix
(:func:`~hf_monosem.cached.sae_fitting.train_sae_layer`,
:func:`~hf_monosem.cached.projector_fitting.fit_contrastive_projector`,
:func:`~hf_monosem.cached.probe_grid.train_probe_grid`) walks the rows with :class:`MiniBatches`.

The seeding rule: a run with seed ``s`` shuffles with its own CPU generator,
``torch.Generator().manual_seed(s)``, made once with the loop and drawn by one ``torch.randperm`` per
epoch; the global RNG never decides the order. Whatever else the run draws at random in its own
order (SAE resampling targets, a probe's initial weights) comes from that same generator
(:attr:`MiniBatches.generator`, :attr:`MiniBatches.generators`), and modules are built after
``torch.manual_seed(s)``. A grid of ``P`` runs (one seed each) has ``P`` generators and gets ``[P, B]``
batches: row ``p`` is exactly what run ``p`` alone would get.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["MiniBatches"]


class MiniBatches:
    """``epochs`` epochs of shuffled row indices ``0..n-1`` cut into batches of ``batch_size``.

    Iterating gives one iterator of index batches per epoch (``[B]`` for one seed, ``[P, B]`` for
    ``P`` seeds, on ``device``); the last batch of an epoch may be smaller, and batches smaller than
    ``min_size`` are skipped. ``progress`` shows a tqdm bar over all steps (:meth:`set_postfix` adds
    per-epoch numbers); it closes after the last epoch, or on leaving a ``with`` block.

    Example:
        >>> batches = MiniBatches(10, 4, seed=0, epochs=2)
        >>> [[len(rows) for rows in epoch] for epoch in batches], batches.steps_per_epoch
        ([[4, 4, 2], [4, 4, 2]], 3)
        >>> first_epoch = torch.cat(list(next(iter(MiniBatches(10, 4, seed=0, epochs=1)))))
        >>> torch.equal(first_epoch, torch.randperm(10, generator=torch.Generator().manual_seed(0)))
        True
        >>> [rows.shape for rows in next(iter(MiniBatches(10, 4, seed=[0, 1, 2], epochs=1, min_size=3)))]
        [torch.Size([3, 4]), torch.Size([3, 4])]
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int | Sequence[int],
        *,
        epochs: int,
        device: str | torch.device | None = None,
        min_size: int = 1,
        progress: bool = False,
        desc: str | None = None,
    ):
        for name, value in (("n", n), ("batch_size", batch_size), ("epochs", epochs), ("min_size", min_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; allowed: a positive integer")
        self.n, self.batch_size, self.epochs, self.min_size = n, batch_size, epochs, min_size
        self._one_run = isinstance(seed, int)
        seeds = [seed] if self._one_run else [int(s) for s in seed]
        if not seeds:
            raise ValueError("seed is an empty list; give one seed per run")
        #: one generator per run, seeded once: the epoch orders (and what the run draws besides)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = device
        self.progress, self.desc = progress, desc
        self._bar = None

    @property
    def generator(self) -> torch.Generator:
        """The generator of a one-seed loop."""
        if not self._one_run:
            raise ValueError(f"this loop has {len(self.generators)} seeds: use .generators")
        return self.generators[0]

    @property
    def steps_per_epoch(self) -> int:
        full, tail = divmod(self.n, self.batch_size)
        return full + int(tail >= self.min_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def __iter__(self) -> Iterator[Iterator[torch.Tensor]]:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.total_steps, desc=self.desc, disable=not self.progress)
        try:
            for _ in range(self.epochs):
                yield self._epoch()
        finally:
            self.close()

    def _epoch(self) -> Iterator[torch.Tensor]:
        orders = [torch.randperm(self.n, generator=g) for g in self.generators]
        order = (orders[0] if self._one_run else torch.stack(orders)).to(self.device)
        for rows in order.split(self.batch_size, dim=-1):
            if rows.shape[-1] < self.min_size:
                continue
            yield rows
            if self._bar is not None:
                self._bar.update(1)

    def set_postfix(self, **values) -> None:
        """Show ``values`` next to the progress bar (e.g. the epoch's loss)."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MiniBatches:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
