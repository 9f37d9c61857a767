"""Many linear probes at once: one batched matmul trains a whole grid of noise levels x seeds.

A robustness sweep probes the *same* cached features under many label sets (noise rates, seeds,
few-shot subsets). Training those probes one by one through a Trainer spends most of its time in
Python overhead; here all ``P`` probes of a grid step together: the features are gathered into a
``[P, batch, F]`` tensor and multiplied with a ``[P, F, C]`` weight tensor. Each probe keeps its own
initialisation, shuffling (one generator per probe, :class:`~hf_monosem.cached.minibatch.MiniBatches`)
and labels, so the result is the same as ``P`` separate runs of the same mini-batch Adam loop (tested
against :func:`hf_monosem.cached.probing.probe_on_features`-style
single runs in ``tests/cached/test_probe_grid.py``).

Two optimisation recipes share the loop: AdamW at a constant rate (the default, our controlled
protocol) and the authors' linear-probe recipe (solo-learn's ``LARS`` on the classifier with a
per-step linear-warmup-cosine rate, ``optimizer="lars", schedule="warmup_cosine"``; or plain SGD
with momentum). Training features may also be ``[K, N, F]``: K augmented views of every training
row, extracted once (:func:`~hf_monosem.cached.extraction.augmented_view_features`); each epoch
every probe draws one view per row from its own generator, which is what augmenting on the fly
with K fixed augmentations per image would give, at the cost of K extractions instead of one per
epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import autocast_off, check_features
from .minibatch import MiniBatches

__all__ = ["PROBE_OPTIMIZERS", "PROBE_SCHEDULES", "ProbeGrid", "train_probe_grid", "warmup_cosine_lr"]

#: optimisers of :func:`train_probe_grid`
PROBE_OPTIMIZERS = ("adam", "sgd", "lars")
#: learning-rate schedules of :func:`train_probe_grid` (per optimiser step)
PROBE_SCHEDULES = ("constant", "warmup_cosine")


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    lr: float,
    warmup_steps: int,
    warmup_start_lr: float = 3e-5,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at ``step`` of a linear warmup then cosine decay (pl_bolts'
    ``LinearWarmupCosineAnnealingLR`` stepped per batch, as the authors' solo-learn probes use it).

    Example:
        >>> [round(warmup_cosine_lr(s, 10, 1.0, 3, warmup_start_lr=0.0), 3) for s in range(10)]
        [0.0, 0.5, 1.0, 1.0, 0.95, 0.812, 0.611, 0.389, 0.188, 0.05]
    """
    if step < warmup_steps:
        if warmup_steps == 1:
            return lr
        return warmup_start_lr + step * (lr - warmup_start_lr) / (warmup_steps - 1)
    span = max(total_steps - warmup_steps, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup_steps) / span))


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


@autocast_off  # a caller's autocast must not reach the fit (see .checks)
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
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str = "constant",
    warmup_epochs: float = 0,
    lars_eta: float = 0.02,
) -> ProbeGrid:
    """Train ``P`` linear probes with Adam on mini-batches of cached features, all at once.

    Args:
        features: ``[N, F]`` features shared by every probe, or ``[K, N, F]``: K augmented views of
            every row (each epoch, each probe draws one view per row with its generator, just
            before that epoch's permutation).
        labels: ``[P, N]`` labels per probe (e.g. one noisy draw per rate and seed).
        num_labels: number of classes ``C``.
        rows: optional ``[P, M]`` row indices: probe ``p`` trains on ``features[rows[p]]`` with labels
            ``labels[p, rows[p]]`` (few-shot subsets, domain subsets); all probes use ``M`` rows.
        epochs, lr, weight_decay, batch_size: the same budget for every probe (the paper's protocol:
            a fixed number of epochs, no early stopping on the noisy labels).
        seeds: ``P`` seeds for initialisation and shuffling (default ``0..P-1``): probe ``p``'s
            generator draws its initial weights, then one permutation per epoch.
        optimizer: ``"adam"`` (AdamW), ``"sgd"`` (SGD with ``momentum``, weight decay added to the
            gradient) or ``"lars"`` (solo-learn's LARS with ``clip_lr`` and ``exclude_bias_n_norm``:
            the weight's step is scaled by ``min(lars_eta * |w| / (|g| + wd |w|) / lr, 1)`` per probe;
            the bias takes plain momentum SGD without weight decay).
        schedule: ``"constant"`` or ``"warmup_cosine"`` (:func:`warmup_cosine_lr`, ``warmup_epochs``
            of linear warmup from 3e-5, then cosine to 0, stepped per batch).

    Example:
        >>> x = torch.randn(200, 5); y = (x[:, 0] > 0).long()
        >>> grid = train_probe_grid(x, torch.stack([y, 1 - y]), 2, epochs=20, lr=0.05, batch_size=32)
        >>> grid.accuracy(x, torch.stack([y, 1 - y])).min().item() > 0.9
        True
    """
    if features.dim() not in (2, 3):
        raise ValueError(f"features must be [N, F] or [K views, N, F], got shape {tuple(features.shape)}")
    num_rows = features.shape[-2]
    if labels.dim() != 2 or labels.shape[1] != num_rows:
        raise ValueError(f"labels must be [P, N={num_rows}], got shape {tuple(labels.shape)}")
    if lr <= 0:
        raise ValueError(f"lr={lr!r} is not valid; allowed: a number > 0")
    if optimizer not in PROBE_OPTIMIZERS:
        raise ValueError(
            f"optimizer={optimizer!r} is not valid; allowed: {', '.join(map(repr, PROBE_OPTIMIZERS))}"
        )
    if schedule not in PROBE_SCHEDULES:
        raise ValueError(
            f"schedule={schedule!r} is not valid; allowed: {', '.join(map(repr, PROBE_SCHEDULES))}"
        )
    if not 0 <= warmup_epochs < max(epochs, 1):
        raise ValueError(
            f"warmup_epochs={warmup_epochs!r} is not valid; allowed: 0 <= warmup_epochs < epochs={epochs}"
        )
    check_features(features)
    _check_class_ids(labels, num_labels)
    num_probes = labels.shape[0]
    if rows is None:
        rows = torch.arange(num_rows).expand(num_probes, -1)
    if rows.dim() != 2 or rows.shape[0] != num_probes:
        raise ValueError(f"rows must be [P={num_probes}, M], got shape {tuple(rows.shape)}")
    seeds = list(range(num_probes)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != num_probes:
        raise ValueError(f"seeds has {len(seeds)} entries for {num_probes} probes")

    device, dim = features.device, features.shape[-1]
    num_views = features.shape[0] if features.dim() == 3 else 1
    # one shuffle per probe and epoch, each from the probe's own generator
    batches = MiniBatches(rows.shape[1], batch_size, seeds, epochs=epochs, device=device)
    weight = (
        torch.stack([torch.randn(dim, num_labels, generator=g) for g in batches.generators])
        * initializer_range
    )
    weight = weight.to(device).requires_grad_(True)
    bias = torch.zeros(num_probes, num_labels, device=device, requires_grad=True)
    step_fn = (
        _adamw(weight, bias, lr, weight_decay)
        if optimizer == "adam"
        else _momentum_sgd(weight, bias, weight_decay, momentum, lars_eta if optimizer == "lars" else None)
    )
    total_steps = batches.total_steps
    warmup_steps = int(warmup_epochs * batches.steps_per_epoch)
    probe_index = torch.arange(num_probes, device=device)[:, None]
    row_labels = labels.to(device).gather(1, rows.to(device))  # [P, M]
    rows = rows.to(device)

    plain = features[0] if features.dim() == 3 else features  # one view: no draw, the plain matrix
    step = 0
    for epoch in batches:
        if num_views > 1:  # drawn before the epoch's permutation (made lazily), from the same generators
            views = torch.stack(
                [torch.randint(num_views, (rows.shape[1],), generator=g) for g in batches.generators]
            ).to(device)
        for batch in epoch:  # [P, B] positions into rows
            if num_views > 1:
                x = features[views[probe_index, batch], rows[probe_index, batch]]  # [P, B, F]
            else:
                x = plain[rows[probe_index, batch]]
            y = row_labels[probe_index, batch]  # [P, B]
            logits = torch.bmm(x, weight) + bias[:, None, :]
            # sum of per-probe mean losses: each probe's gradient equals its own mean-loss gradient
            loss = F.cross_entropy(logits.reshape(-1, num_labels), y.reshape(-1), reduction="none")
            loss = loss.view(num_probes, -1).mean(1).sum()
            weight.grad = bias.grad = None
            loss.backward()
            rate = lr if schedule == "constant" else warmup_cosine_lr(step, total_steps, lr, warmup_steps)
            step_fn(rate)
            step += 1
    return ProbeGrid(weight.detach(), bias.detach())


def _check_class_ids(labels: torch.Tensor, num_labels: int) -> None:
    """Labels must be integer class ids in ``[0, num_labels)``: float 0/1 labels or an id out of range
    would train (or crash in cross-entropy) far from where the mistake is."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels >= num_labels)
    if bool(bad.any()):
        probe, row = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels must be class ids in [0, {num_labels - 1}] for num_labels={num_labels}; found "
            f"{int(labels[probe, row])} (probe {probe}, row {row})"
        )


def _adamw(weight: torch.Tensor, bias: torch.Tensor, lr: float, weight_decay: float):
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)

    def step(rate: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.step()

    return step


def _momentum_sgd(
    weight: torch.Tensor, bias: torch.Tensor, weight_decay: float, momentum: float, lars_eta: float | None
):
    """SGD with momentum (PyTorch's rule, dampening 0), optionally with solo-learn's LARS scaling of
    the weight's step (``clip_lr=True, exclude_bias_n_norm=True``), per probe of the grid."""
    buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(rate: float) -> None:
        for name, p, decays in (("weight", weight, True), ("bias", bias, False)):
            d = p.grad
            if lars_eta is not None:
                if decays:  # LARS: the bias is excluded from both the scaling and the weight decay
                    dims = tuple(range(1, p.dim()))
                    p_norm = p.norm(dim=dims, keepdim=True)
                    g_norm = d.norm(dim=dims, keepdim=True)
                    trust = lars_eta * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
                    trust = torch.clamp(trust / rate, max=1.0)
                    # solo-learn leaves a probe whose weight or gradient is all zeros unscaled, undecayed
                    d = torch.where((p_norm > 0) & (g_norm > 0), (d + weight_decay * p) * trust, d)
            elif weight_decay:
                d = d + weight_decay * p
            if name in buffers:
                buffers[name].mul_(momentum).add_(d)
            else:
                buffers[name] = d.clone()
            p.add_(buffers[name], alpha=-rate)

    return step
