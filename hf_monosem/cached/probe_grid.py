"""Many linear probes at once: one batched matmul trains a whole grid of noise levels x seeds.

A robustness sweep probes the *same* cached features under many label sets (noise rates, seeds,
few-shot subsets). Training those probes one by one through a Trainer spends most of its time in
Python overhead; here all ``P`` probes of a grid step together: the features are gathered into a
``[P, batch, F]`` tensor and multiplied with a ``[P, F, C]`` weight tensor. Each probe keeps its own
initialisation, shuffling (one generator per probe, :class:`~hf_monosem.cached.minibatch.MiniBatches`)
and labels, so the result is the same as ``P`` separate runs of the same mini-batch Adam loop (tested
against :func:`hf_monosem.cached.probing.probe_on_features`-style
single runs in ``tests/cached/test_probe_grid.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .minibatch import MiniBatches

__all__ = ["ProbeGrid", "train_probe_grid"]


@dataclass
class ProbeGrid:
    """Trained probes: ``weight [P, F, C]`` and ``bias [P, C]``; ``predict`` scores new features."""

    weight: torch.Tensor
    bias: torch.Tensor

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[P, N, C]`` logits of every probe on shared features ``[N, F]`` or per-probe ``[P, N, F]``."""
        features = features.to(self.weight.dtype)
        if features.dim() == 2:
            return torch.einsum("nf,pfc->pnc", features, self.weight) + self.bias[:, None, :]
        return torch.bmm(features, self.weight) + self.bias[:, None, :]

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[P]`` accuracies on shared labelled features (labels ``[N]`` or ``[P, N]``)."""
        predictions = self.logits(features).argmax(-1)
        labels = labels.to(predictions.device)
        if labels.dim() == 1:
            labels = labels.expand_as(predictions)
        return (predictions == labels).float().mean(-1)


def train_probe_grid(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    *,
    rows: torch.Tensor | None = None,
    epochs: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seeds: torch.Tensor | list[int] | None = None,
    initializer_range: float = 0.02,
) -> ProbeGrid:
    """Train ``P`` linear probes with Adam on mini-batches of cached features, all at once.

    Args:
        features: ``[N, F]`` features shared by every probe.
        labels: ``[P, N]`` labels per probe (e.g. one noisy draw per rate and seed).
        num_labels: number of classes ``C``.
        rows: optional ``[P, M]`` row indices: probe ``p`` trains on ``features[rows[p]]`` with labels
            ``labels[p, rows[p]]`` (few-shot subsets, domain subsets); all probes use ``M`` rows.
        epochs, lr, weight_decay, batch_size: the same budget for every probe (the paper's protocol:
            a fixed number of epochs, no early stopping on the noisy labels).
        seeds: ``P`` seeds for initialisation and shuffling (default ``0..P-1``): probe ``p``'s
            generator draws its initial weights, then one permutation per epoch.

    Example:
        >>> x = torch.randn(200, 5); y = (x[:, 0] > 0).long()
        >>> grid = train_probe_grid(x, torch.stack([y, 1 - y]), 2, epochs=20, lr=0.05, batch_size=32)
        >>> grid.accuracy(x, torch.stack([y, 1 - y])).min().item() > 0.9
        True
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [N, F], got shape {tuple(features.shape)}")
    if labels.dim() != 2 or labels.shape[1] != features.shape[0]:
        raise ValueError(f"labels must be [P, N={features.shape[0]}], got shape {tuple(labels.shape)}")
    if lr <= 0:
        raise ValueError(f"lr={lr!r} is not valid; allowed: a number > 0")
    num_probes = labels.shape[0]
    if rows is None:
        rows = torch.arange(features.shape[0]).expand(num_probes, -1)
    if rows.dim() != 2 or rows.shape[0] != num_probes:
        raise ValueError(f"rows must be [P={num_probes}, M], got shape {tuple(rows.shape)}")
    seeds = list(range(num_probes)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != num_probes:
        raise ValueError(f"seeds has {len(seeds)} entries for {num_probes} probes")

    device, dim = features.device, features.shape[1]
    # one shuffle per probe and epoch, each from the probe's own generator
    batches = MiniBatches(rows.shape[1], batch_size, seeds, epochs=epochs, device=device)
    weight = torch.stack([torch.randn(dim, num_labels, generator=g) for g in batches.generators]) * initializer_range
    weight = weight.to(device).requires_grad_(True)
    bias = torch.zeros(num_probes, num_labels, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    probe_index = torch.arange(num_probes, device=device)[:, None]
    row_labels = labels.to(device).gather(1, rows.to(device))  # [P, M]
    rows = rows.to(device)

    for epoch in batches:
        for batch in epoch:  # [P, B] positions into rows
            x = features[rows[probe_index, batch]]  # [P, B, F]
            y = row_labels[probe_index, batch]  # [P, B]
            logits = torch.bmm(x, weight) + bias[:, None, :]
            # sum of per-probe mean losses: each probe's gradient equals its own mean-loss gradient
            loss = F.cross_entropy(logits.reshape(-1, num_labels), y.reshape(-1), reduction="none")
            loss = loss.view(num_probes, -1).mean(1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return ProbeGrid(weight.detach(), bias.detach())
