"""Many linear probes at once: one batched matmul trains a whole grid of noise levels x seeds.

A robustness sweep probes the *same* cached features under many label sets (noise rates, seeds,
few-shot subsets). Training those probes one by one through a Trainer spends most of its time in
Python overhead; here all ``P`` probes of a grid step together. Each probe keeps its own
initialisation, shuffling (one generator per seed, :class:`~hf_monosem.cached.minibatch.MiniBatches`),
labels and learning rate, so the result is the same as ``P`` separate runs of the same mini-batch loop
(tested against plainly written single runs and against one call per probe, in float64, in
``tests/cached/test_probe_grid.py``). Probes with the same seed and rows (a label-noise grid is rates x
seeds, a learning-rate selection is rates x seeds) draw the same batches, views and initial weights, so
they are grouped: per step the batch is gathered once per group, ``[S, batch, F]``, and one ``bmm`` with
the ``[S, F, G * C]`` weights of the groups' probes gives every logit (groups padded to the largest ``G``
with probes that stay zero); the weight gradients are ``x_s^T dlogits`` per group, the cross-entropy
gradient in closed form, and AdamW is written out over the grid (``torch.optim.AdamW``'s operations, a
rate per probe).

Two optimisation recipes share the loop: AdamW at a constant rate (the default, our controlled
protocol) and the authors' linear-probe recipe (solo-learn's ``LARS`` on the classifier with a
per-step linear-warmup-cosine rate, ``optimizer="lars", schedule="warmup_cosine"``; or plain SGD
with momentum). Training features may also be ``[K, N, F]``: K augmented views of every training
row, extracted once (:func:`~hf_monosem.cached.augmented_views.augmented_view_features`); each epoch
every probe draws one view per row from its own generator, which is what augmenting on the fly
with K fixed augmentations per image would give, at the cost of K extractions instead of one per
epoch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checks import autocast_off, check_features
from .feature_shards import ShardedFeatures
from .minibatch import MiniBatches
from .row_source import FeatureRows

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
    features: torch.Tensor | ShardedFeatures,
    labels: torch.Tensor,
    num_labels: int,
    *,
    rows: torch.Tensor | None = None,
    epochs: int = 50,
    lr: float | Sequence[float] = 1e-3,
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

    Probes that share their seed and their rows (a label-noise grid: rates x seeds; a learning-rate
    grid: rates x seeds) draw the same batches, views and initial weights, so they are computed
    together: the batch is gathered once per distinct (seed, rows), ``[S, B, F]``, and multiplied with
    the weights of all its probes in one ``bmm`` (``[S, F, G * C]``, groups padded to the largest
    ``G`` with probes that stay zero). The result is the same as ``P`` separate runs.

    Args:
        features: ``[N, F]`` features shared by every probe, or ``[K, N, F]``: K augmented views of
            every row (each epoch, each probe draws one view per row with its generator, just
            before that epoch's permutation). ``[N, F]`` may be a
            :class:`~hf_monosem.cached.feature_shards.ShardedFeatures` (a matrix larger than memory): it
            is checked block by block and every batch is read from its files (on the CPU), never the
            whole matrix; the probes are those trained on the same matrix in memory (``torch.equal``).
        labels: ``[P, N]`` labels per probe (e.g. one noisy draw per rate and seed).
        num_labels: number of classes ``C``.
        rows: optional ``[P, M]`` row indices: probe ``p`` trains on ``features[rows[p]]`` with labels
            ``labels[p, rows[p]]`` (few-shot subsets, domain subsets); all probes use ``M`` rows.
        epochs, weight_decay, batch_size: the same budget for every probe (the paper's protocol:
            a fixed number of epochs, no early stopping on the noisy labels).
        lr: one learning rate for every probe, or ``P`` rates (one per probe; a schedule scales each
            probe's own rate).
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
        >>> per_rate = train_probe_grid(x, y.expand(2, -1), 2, epochs=5, lr=[0.001, 0.05], seeds=[0, 0])
        >>> alone = train_probe_grid(x, y[None], 2, epochs=5, lr=0.05, seeds=[0])  # one rate, one call
        >>> torch.allclose(per_rate.weight[1], alone.weight[0], atol=1e-5)
        True
    """
    # a tensor is read in place, shards a batch at a time (views [K, N, F] only as a tensor)
    source = FeatureRows(features)
    if len(features.shape) not in (2, 3):
        raise ValueError(f"features must be [N, F] or [K views, N, F], got shape {tuple(features.shape)}")
    num_rows = features.shape[-2]
    if labels.dim() != 2 or labels.shape[1] != num_rows:
        raise ValueError(f"labels must be [P, N={num_rows}], got shape {tuple(labels.shape)}")
    num_probes = labels.shape[0]
    rates = _probe_rates(lr, num_probes)
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
    if isinstance(features, torch.Tensor):
        check_features(features)
    else:  # one pass, block by block; the check itself is in .chunks
        for _ in source.chunks():
            pass
    _check_class_ids(labels, num_labels)
    if rows is None:
        rows = torch.arange(num_rows).expand(num_probes, -1)
    if rows.dim() != 2 or rows.shape[0] != num_probes:
        raise ValueError(f"rows must be [P={num_probes}, M], got shape {tuple(rows.shape)}")
    seeds = list(range(num_probes)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != num_probes:
        raise ValueError(f"seeds has {len(seeds)} entries for {num_probes} probes")

    device, dim, classes = source.device, features.shape[-1], num_labels
    num_views = features.shape[0] if len(features.shape) == 3 else 1
    groups = _SeedGroups(seeds, rows)
    num_groups, width = groups.num_groups, groups.width
    # one shuffle per distinct (seed, rows) and epoch, each from that seed's own generator: the draws
    # of every probe in the group (initial weights, views, permutations) are the same
    batches = MiniBatches(rows.shape[1], batch_size, groups.seeds, epochs=epochs, device=device)
    init = (
        torch.stack([torch.randn(dim, classes, generator=g) for g in batches.generators]) * initializer_range
    )
    slot_of = groups.slot.to(device)
    group_of = groups.group.to(device)
    # weights [S, F, G, C] (a probe per group slot; padded slots stay zero), biases [S, G, C]
    weight = torch.zeros(num_groups, dim, width, classes, dtype=init.dtype, device=device)
    weight[group_of, :, slot_of] = init.to(device)[group_of]
    bias = torch.zeros(num_groups, width, classes, dtype=init.dtype, device=device)
    real = torch.zeros(num_groups, width, dtype=torch.bool, device=device)
    real[group_of, slot_of] = True
    # labels per group slot and row position: [S, M, G] (padded slots: class 0, masked out of the loss)
    row_labels = labels.to(device).gather(1, rows.to(device)).long()  # [P, M]
    slot_labels = torch.zeros(num_groups, rows.shape[1], width, dtype=torch.long, device=device)
    slot_labels[group_of, :, slot_of] = row_labels
    group_rows = rows[groups.first].to(device)  # [S, M]
    base_rate = _slot_rates(rates, groups, device, init.dtype)  # [S, G] (padded slots: 1.0)
    uniform = len(set(rates)) == 1
    step_fn = (
        _adamw(weight, bias, weight_decay)
        if optimizer == "adam"
        else _momentum_sgd(weight, bias, weight_decay, momentum, lars_eta if optimizer == "lars" else None)
    )
    total_steps = batches.total_steps
    warmup_steps = int(warmup_epochs * batches.steps_per_epoch)
    distinct = sorted(set(rates))

    def rate_at(step: int) -> float | torch.Tensor:
        if schedule == "constant":
            return rates[0] if uniform else base_rate
        if uniform:
            return warmup_cosine_lr(step, total_steps, rates[0], warmup_steps)
        scheduled = {r: warmup_cosine_lr(step, total_steps, r, warmup_steps) for r in distinct}
        return _slot_rates([scheduled[r] for r in rates], groups, device, init.dtype)

    # one view: no draw, the plain matrix (in memory indexed in place, shards read batch by batch)
    plain = FeatureRows(features[0]) if len(features.shape) == 3 else source
    mask = real[:, None, :, None].to(init.dtype)  # [S, 1, G, 1]
    step = 0
    for epoch in batches:
        if num_views > 1:  # drawn before the epoch's permutation (made lazily), from the same generators
            views = torch.stack(
                [torch.randint(num_views, (rows.shape[1],), generator=g) for g in batches.generators]
            ).to(device)
        for batch in epoch:  # [S, B] positions into the group's rows
            batch_rows = group_rows.gather(1, batch)
            if num_views > 1:
                x = features[views.gather(1, batch), batch_rows]  # [S, B, F]
            else:
                x = plain.gather(batch_rows)
            x = x.to(weight.dtype)
            size = batch.shape[1]
            y = slot_labels.gather(1, batch[:, :, None].expand(-1, -1, width))  # [S, B, G]
            logits = (
                torch.bmm(x, weight.view(num_groups, dim, width * classes)).view(
                    num_groups, size, width, classes
                )
                + bias[:, None]
            )
            # each probe's mean cross-entropy gradient, in closed form: (softmax - one-hot) / B
            dlogits = torch.softmax(logits, dim=-1)
            dlogits.scatter_add_(-1, y[..., None], torch.full_like(dlogits[..., :1], -1.0))
            dlogits *= mask / size
            weight_grad = torch.bmm(x.transpose(1, 2), dlogits.view(num_groups, size, width * classes))
            step_fn(weight_grad.view_as(weight), dlogits.sum(1), rate_at(step))
            step += 1
    return ProbeGrid(weight[group_of, :, slot_of], bias[group_of, slot_of])


class _SeedGroups:
    """Probes grouped by identical (seed, rows): ``group[p]`` and ``slot[p]`` place probe ``p`` in a
    ``[S, G]`` layout (``G`` the largest group), ``first[s]`` is a probe of group ``s``. Groups so
    unequal that padding would more than double the probes' matmul work fall back to a group per probe
    (the same draws: a generator per probe, seeded alike)."""

    def __init__(self, seeds: list[int], rows: torch.Tensor):
        self._place(seeds, rows, grouped=True)
        if self.num_groups * self.width > 2 * len(seeds):
            self._place(seeds, rows, grouped=False)

    def _place(self, seeds: list[int], rows: torch.Tensor, grouped: bool) -> None:
        keys: dict[tuple[int, bytes], int] = {}
        group, slot, sizes, first = [], [], [], []
        rows_cpu = rows.detach().cpu().long().contiguous()
        for p, seed in enumerate(seeds):
            key = (seed, rows_cpu[p].numpy().tobytes() if grouped else str(p).encode())
            if key not in keys:
                keys[key] = len(sizes)
                sizes.append(0)
                first.append(p)
            g = keys[key]
            group.append(g)
            slot.append(sizes[g])
            sizes[g] += 1
        self.group, self.slot = torch.tensor(group), torch.tensor(slot)
        self.first = torch.tensor(first)
        self.seeds = [seeds[p] for p in first]
        self.num_groups, self.width = len(sizes), max(sizes)


def _probe_rates(lr: float | Sequence[float], num_probes: int) -> list[float]:
    """``P`` learning rates from one rate or a sequence of ``P``, each a number > 0."""
    if (isinstance(lr, numbers.Real) and not isinstance(lr, bool)) or (
        isinstance(lr, torch.Tensor) and lr.dim() == 0
    ):
        rates = [float(lr)] * num_probes
    else:
        try:
            rates = [float(r) for r in lr]
        except (TypeError, ValueError):
            raise ValueError(
                f"lr={lr!r} is not valid; allowed: a number > 0 or {num_probes} numbers > 0"
            ) from None
        if len(rates) != num_probes:
            raise ValueError(
                f"lr has {len(rates)} rates for {num_probes} probes; allowed: a number > 0 or {num_probes} "
                "numbers > 0 (one per probe)"
            )
    bad = [r for r in rates if not (r > 0 and math.isfinite(r))]
    if bad:
        raise ValueError(f"lr={lr!r} is not valid (holds {bad[0]!r}); allowed: finite numbers > 0")
    return rates


def _slot_rates(
    rates: list[float], groups: _SeedGroups, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The probes' rates in the ``[S, G]`` layout (padded slots: 1.0, their gradients are zero)."""
    out = torch.ones(groups.num_groups, groups.width, dtype=dtype)
    out[groups.group, groups.slot] = torch.tensor(rates, dtype=dtype)
    return out.to(device)


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


def _adamw(weight: torch.Tensor, bias: torch.Tensor, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
    """AdamW over the grid's ``[S, F, G, C]`` weights and ``[S, G, C]`` biases with a rate per probe,
    the operations of ``torch.optim.AdamW`` (decoupled decay, bias corrections, ``eps`` added after
    the bias-corrected square root; checked against it in ``tests/cached/test_probe_grid.py``)."""
    beta1, beta2 = betas
    state = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in (weight, bias)]
    steps = 0

    @torch.no_grad()
    def step(weight_grad: torch.Tensor, bias_grad: torch.Tensor, rate: float | torch.Tensor) -> None:
        nonlocal steps
        steps += 1
        bias_correction1 = 1 - beta1**steps
        bias_correction2_sqrt = (1 - beta2**steps) ** 0.5
        for (p, exp_avg, exp_avg_sq), grad in zip(state, (weight_grad, bias_grad)):
            r = rate if isinstance(rate, float) else _broadcast(rate, p)
            if weight_decay != 0:
                p.mul_(1 - r * weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            if isinstance(r, float):
                p.addcdiv_(exp_avg, denom, value=-(r / bias_correction1))
            else:
                p.add_(exp_avg / denom * -(r / bias_correction1))

    return step


def _broadcast(rate: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A ``[S, G]`` rate per probe shaped for weights ``[S, F, G, C]`` or biases ``[S, G, C]``."""
    return rate[:, None, :, None] if p.dim() == 4 else rate[:, :, None]


def _momentum_sgd(
    weight: torch.Tensor, bias: torch.Tensor, weight_decay: float, momentum: float, lars_eta: float | None
):
    """SGD with momentum (PyTorch's rule, dampening 0), optionally with solo-learn's LARS scaling of
    the weight's step (``clip_lr=True, exclude_bias_n_norm=True``), per probe of the grid."""
    buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(weight_grad: torch.Tensor, bias_grad: torch.Tensor, rate: float | torch.Tensor) -> None:
        for name, p, d, decays in (("weight", weight, weight_grad, True), ("bias", bias, bias_grad, False)):
            r = rate if isinstance(rate, float) else _broadcast(rate, p)
            if lars_eta is not None:
                if decays:  # LARS: the bias is excluded from both the scaling and the weight decay
                    p_norm = p.norm(dim=(1, 3), keepdim=True)  # per probe: over F and C
                    g_norm = d.norm(dim=(1, 3), keepdim=True)
                    trust = lars_eta * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
                    trust = torch.clamp(trust / r, max=1.0)
                    # solo-learn leaves a probe whose weight or gradient is all zeros unscaled, undecayed
                    d = torch.where((p_norm > 0) & (g_norm > 0), (d + weight_decay * p) * trust, d)
            elif weight_decay:
                d = d + weight_decay * p
            if name in buffers:
                buffers[name].mul_(momentum).add_(d)
            else:
                buffers[name] = d.clone()
            if isinstance(r, float):
                p.add_(buffers[name], alpha=-r)
            else:
                p.add_(buffers[name] * -r)

    return step
