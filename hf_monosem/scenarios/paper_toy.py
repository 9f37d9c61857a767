"""The paper's two toy analyses (Zhang et al., ICLR 2025, Sections 4.2 and 4.3), seeded and vectorised.

* **Section 4.3, two features.** ``x_i = b_i u_i`` (``b_i ~ Bernoulli(1 - S)``, ``u_i ~ U[0, 1]``), the
  task ``argmax_i x_i`` (class 1 iff ``x2 > x1``), the monosemantic feature ``nu_mono = x1`` and the
  polysemantic one ``nu_poly = x1 - x2``. :func:`two_feature_moments` gives the closed forms (at
  ``S = 0``) of the class-conditional means and variances, per *observed* class, under symmetric label
  noise ``eta`` and under Gaussian input noise ``x + lambda N(0, I)``; :func:`monte_carlo_moments` the
  same quantities estimated from samples. :func:`fisher_ratio` (scale-free) and :func:`gap_minus_k_sd`
  (the scale-dependent family ``mean gap - k (sd_0 + sd_1)``) are separability measures built from
  them; :func:`crossover` finds where mono overtakes poly along a noise axis.
* **Section 4.2, a toy model of superposition** (Elhage et al. 2022): :func:`train_superposition_toys`
  trains many ``h = W x``, ``x_hat = ReLU(W^T h + b)`` models at once (seeds x sparsities x importance
  decays, one batched matmul), :func:`features_represented` is Elhage et al.'s measure of how many
  features a model represents (``||W||_F^2``), :func:`argmax_task` draws the downstream task.
* :func:`block_probes` trains the linear probes of both toys with the project's probe grid
  (:func:`~hf_monosem.cached.train_probe_grid`, one batched grid over data seeds x noise levels, label
  draws from :func:`~hf_monosem.scenarios.grid.noisy_label_draws`), and :func:`protocol_lr` picks a
  :class:`~hf_monosem.scenarios.protocols.ProbeProtocol`'s learning rate the way the scenario grid does.

The paper's own separability measure (Appendix B.3) is not reproduced here: its definition was not
reachable (see ``docs/results/paper_toy.md``).

Example:
    >>> moments = two_feature_moments("label", torch.tensor([0.0, 0.25]))
    >>> [round(v, 4) for v in moments["mono"][0].tolist()]  # mean_0, mean_1, var_0, var_1 at eta = 0
    [0.6667, 0.3333, 0.0556, 0.0556]
    >>> [round(v, 3) for v in fisher_ratio(moments["poly"]).tolist()]
    [4.0, 0.4]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import ClassLabel

from ..cached.probe_grid import ProbeGrid, train_probe_grid
from .grid import noisy_label_draws, selection_labels
from .protocols import ProbeProtocol

__all__ = [
    "TOY_FEATURES",
    "TOY_NOISES",
    "SuperpositionToys",
    "argmax_task",
    "block_probes",
    "class_moments",
    "crossover",
    "features_represented",
    "fisher_ratio",
    "gap_minus_k_sd",
    "k_for_crossing",
    "monte_carlo_moments",
    "protocol_lr",
    "sparse_features",
    "train_superposition_toys",
    "two_feature_data",
    "two_feature_features",
    "two_feature_moments",
]

#: the two features of Section 4.3
TOY_FEATURES = ("mono", "poly")
#: the two noises of Section 4.3: symmetric label noise (rate eta), Gaussian input noise (lambda)
TOY_NOISES = ("label", "gaussian")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed: {', '.join(map(repr, allowed))}")


def _check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r} is not valid; allowed: 0 <= sparsity < 1")


# ----------------------------------------------------------------------------------------------
# Section 4.3: two features
# ----------------------------------------------------------------------------------------------
def sparse_features(
    shape: Sequence[int], sparsity: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Features that are zero with probability ``sparsity`` and else ``U[0, 1]`` (Elhage et al.'s data).

    ``sparsity`` may be a tensor broadcastable to ``shape`` (one value per model of a batch).

    Example:
        >>> x = sparse_features((10000, 4), 0.9, torch.Generator().manual_seed(0))
        >>> round(float((x == 0).float().mean()), 2), bool(x.max() <= 1)
        (0.9, True)
    """
    values = torch.rand(tuple(shape), generator=generator)
    active = torch.rand(tuple(shape), generator=generator) >= torch.as_tensor(sparsity)
    return values * active


def two_feature_data(num_rows: int, seed: int, sparsity: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, 2], y [N])`` of Section 4.3: ``x_i = b_i u_i``, ``y = 1`` iff ``x2 > x1`` (ties: class 0).

    Example:
        >>> x, y = two_feature_data(5, seed=0)
        >>> x.shape, y.tolist() == (x[:, 1] > x[:, 0]).long().tolist()
        (torch.Size([5, 2]), True)
    """
    _check_sparsity(sparsity)
    x = sparse_features((num_rows, 2), sparsity, torch.Generator().manual_seed(seed))
    return x, (x[:, 1] > x[:, 0]).long()


def two_feature_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"mono": x1, "poly": x1 - x2}`` as ``[..., 1]`` feature matrices of ``x [..., 2]``.

    Example:
        >>> two_feature_features(torch.tensor([[0.5, 0.25]]))["poly"].tolist()
        [[0.25]]
    """
    return {"mono": x[..., :1], "poly": x[..., :1] - x[..., 1:]}


def two_feature_moments(noise: str, levels: torch.Tensor | Sequence[float]) -> dict[str, torch.Tensor]:
    """Closed forms (``S = 0``) of ``[L, 4]`` = (mean_0, mean_1, var_0, var_1) per observed class.

    Without noise both features have class-conditional variance 1/18 (the densities are triangular);
    ``x1`` has means 2/3 and 1/3, ``x1 - x2`` has 1/3 and -1/3. Symmetric label noise ``eta`` mixes the
    classes: mean ``(1 - eta) m_0 + eta m_1``, variance ``v + eta (1 - eta) (m_0 - m_1)^2``. Gaussian noise
    ``lambda`` on both inputs adds ``lambda^2`` to ``x1``'s variance and ``2 lambda^2`` to ``x1 - x2``'s.

    Example:
        >>> two_feature_moments("gaussian", [1.0])["poly"].tolist()[0][2:]
        [2.0555555555555554, 2.0555555555555554]
    """
    check_choice("noise", noise, TOY_NOISES)
    level = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    clean = {"mono": (2 / 3, 1 / 3, 1.0), "poly": (1 / 3, -1 / 3, 2.0)}  # (m_0, m_1, noise variance factor)
    out = {}
    for name, (m0, m1, factor) in clean.items():
        if noise == "label":
            mean0 = (1 - level) * m0 + level * m1
            mean1 = (1 - level) * m1 + level * m0
            var = 1 / 18 + level * (1 - level) * (m0 - m1) ** 2
        else:
            mean0, mean1 = torch.full_like(level, m0), torch.full_like(level, m1)
            var = 1 / 18 + factor * level**2
        out[name] = torch.stack([mean0, mean1, var, var], dim=1)
    return out


def class_moments(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` = (mean_0, mean_1, var_0, var_1) of ``features [..., N]`` per class of
    ``labels [..., N]``.

    Example:
        >>> class_moments(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 1])).tolist()
        [2.0, 10.0, 1.0, 0.0]
    """
    stats = []
    for c in (0, 1):
        weight = (labels == c).to(features.dtype)
        count = weight.sum(-1).clamp_min(1)
        mean = (features * weight).sum(-1) / count
        stats.append((mean, ((features - mean[..., None]) ** 2 * weight).sum(-1) / count))
    return torch.stack([stats[0][0], stats[1][0], stats[0][1], stats[1][1]], dim=-1)


def monte_carlo_moments(noise: str, level: float, num_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """:func:`two_feature_moments` estimated from ``num_samples`` draws (``S = 0``) at one noise level.

    Label noise moves exactly ``floor(N eta)`` labels (:func:`~hf_monosem.scenarios.add_label_noise`);
    Gaussian noise is added to both inputs before the features are formed.

    Example:
        >>> mc = monte_carlo_moments("label", 0.25, 100000, seed=0)
        >>> bool((mc["mono"] - two_feature_moments("label", [0.25])["mono"][0]).abs().max() < 0.01)
        True
    """
    check_choice("noise", noise, TOY_NOISES)
    x, y = two_feature_data(num_samples, seed)
    x, y = x.double(), y
    if noise == "label":
        y = noisy_label_draws(y, ClassLabel(num_classes=2), [level], [seed])[0]
    else:
        generator = torch.Generator().manual_seed(seed + 1)
        x = x + level * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return {name: class_moments(f[:, 0], y) for name, f in two_feature_features(x).items()}


def fisher_ratio(moments: torch.Tensor) -> torch.Tensor:
    """Fisher's ratio ``(mean_0 - mean_1)^2 / (var_0 + var_1)`` of ``[..., 4]`` moments (scale-free).

    Example:
        >>> fisher_ratio(torch.tensor([1.0, 0.0, 0.5, 0.5])).item()
        1.0
    """
    return (moments[..., 0] - moments[..., 1]) ** 2 / (moments[..., 2] + moments[..., 3])


def gap_minus_k_sd(moments: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    """``|mean_0 - mean_1| - k (sd_0 + sd_1)``: a separability measure that depends on the feature's scale.

    Example:
        >>> gap_minus_k_sd(torch.tensor([1.0, 0.0, 0.25, 0.25]), 1.0).item()
        0.0
    """
    gap = (moments[..., 0] - moments[..., 1]).abs()
    return gap - torch.as_tensor(k) * (moments[..., 2].sqrt() + moments[..., 3].sqrt())


def k_for_crossing(mono: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """The ``k`` at which :func:`gap_minus_k_sd` of mono equals poly's (from ``[..., 4]`` moments).

    Example:
        >>> k = k_for_crossing(torch.tensor([1.0, 0.0, 0.25, 0.25]), torch.tensor([2.0, 0.0, 1.0, 1.0]))
        >>> k.item(), gap_minus_k_sd(torch.tensor([1.0, 0.0, 0.25, 0.25]), k).item()
        (1.0, 0.0)
    """

    def gap_sd(m):
        return (m[..., 0] - m[..., 1]).abs(), m[..., 2].sqrt() + m[..., 3].sqrt()

    (gap_m, sd_m), (gap_p, sd_p) = gap_sd(mono), gap_sd(poly)
    return (gap_p - gap_m) / (sd_p - sd_m)


def crossover(
    levels: Sequence[float] | torch.Tensor, diff: Sequence[float] | torch.Tensor
) -> tuple[str, float]:
    """Where ``diff = mono - poly`` turns from ``<= 0`` to ``> 0`` along ``levels`` (P4's rule).

    Returns ``("crosses", level)`` with the level placed by linear interpolation between the two grid
    levels around the first sign change, ``("mono_ahead_from_start", levels[0])`` if ``diff[0] > 0``, or
    ``("none", nan)`` if ``diff <= 0`` everywhere.

    Example:
        >>> crossover([0.0, 0.1, 0.2], [-0.2, -0.1, 0.1])
        ('crosses', 0.15)
        >>> crossover([0.0, 0.1], [-1.0, -0.5])
        ('none', nan)
    """
    level = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    d = torch.as_tensor(diff, dtype=torch.float64).reshape(-1)
    if level.shape != d.shape or level.numel() == 0:
        raise ValueError(
            f"levels and diff must be non-empty and of one length, got {level.numel()} and {d.numel()}"
        )
    if d[0] > 0:
        return "mono_ahead_from_start", float(level[0])
    ahead = torch.nonzero(d > 0).flatten()
    if ahead.numel() == 0:
        return "none", math.nan
    i = int(ahead[0])
    lo, hi, dlo, dhi = level[i - 1], level[i], d[i - 1], d[i]
    at = lo + (hi - lo) * (0 - dlo) / (dhi - dlo)
    return "crosses", round(float(at), 10)


# ----------------------------------------------------------------------------------------------
# Section 4.2: a toy model of superposition
# ----------------------------------------------------------------------------------------------
@dataclass
class SuperpositionToys:
    """Trained toy models: ``weight [seeds, sparsities, decays, m, n]``,
    ``bias [seeds, sparsities, decays, n]``.

    ``hidden(x, i)`` is ``h = W x`` of the models at seed index ``i`` for inputs ``x [S, D, N, n]``.
    """

    seeds: list[int]
    sparsities: list[float]
    decays: list[float]
    weight: torch.Tensor
    bias: torch.Tensor
    final_loss: torch.Tensor

    def hidden(self, x: torch.Tensor, seed_index: int) -> torch.Tensor:
        """``h = W x`` ``[S, D, N, m]`` of the seed's models on ``x [S, D, N, n]`` (one input set per
        model)."""
        return torch.einsum("sdbn,sdmn->sdbm", x, self.weight[seed_index])


def train_superposition_toys(
    sparsities: Sequence[float],
    decays: Sequence[float],
    seeds: Sequence[int],
    *,
    num_features: int = 40,
    hidden_dims: int = 20,
    steps: int = 4000,
    batch_size: int = 1024,
    lr: float = 1e-3,
) -> SuperpositionToys:
    """Elhage et al.'s toy, every (seed, sparsity, importance decay) trained at once.

    ``h = W x`` (``W [m, n]``), ``x_hat = ReLU(W^T h + b)``, loss ``sum_i I_i (x_i - x_hat_i)^2`` averaged
    over a fresh batch of :func:`sparse_features` per step, importance ``I_i = decay^i``, Adam. Each seed's
    generator draws its models' initial weights (Xavier normal) and all their data.

    Example:
        >>> toys = train_superposition_toys([0.0], [1.0], [0], num_features=4, hidden_dims=2, steps=50)
        >>> toys.weight.shape, toys.bias.shape
        (torch.Size([1, 1, 1, 2, 4]), torch.Size([1, 1, 1, 4]))
    """
    for s in sparsities:
        _check_sparsity(s)
    if any(not 0 < r <= 1 for r in decays):
        raise ValueError(f"decays={list(decays)!r} are not valid; allowed: 0 < decay <= 1")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps!r}, batch_size={batch_size!r} are not valid; allowed: integers >= 1")
    seeds = [int(s) for s in seeds]
    n_s, n_d, n, m = len(sparsities), len(decays), num_features, hidden_dims
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    std = math.sqrt(2.0 / (n + m))  # Xavier normal, as in Elhage et al.'s notebook
    weight = torch.stack([torch.randn(n_s, n_d, m, n, generator=g) * std for g in generators])
    weight.requires_grad_(True)
    bias = torch.zeros(len(seeds), n_s, n_d, n, requires_grad=True)
    importance = torch.tensor(decays)[:, None] ** torch.arange(n)  # [D, n]
    sparsity = torch.tensor(sparsities, dtype=torch.float32)[:, None, None, None]  # [S, 1, 1, 1]
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(steps):
        x = torch.stack([sparse_features((n_s, n_d, batch_size, n), sparsity, g) for g in generators])
        h = torch.einsum("esdbn,esdmn->esdbm", x, weight)
        x_hat = torch.relu(torch.einsum("esdbm,esdmn->esdbn", h, weight) + bias[..., None, :])
        per_model = ((x - x_hat) ** 2 * importance[:, None, :]).sum(-1).mean(-1)  # [E, S, D]
        optimizer.zero_grad(set_to_none=True)
        per_model.sum().backward()  # independent models: each gets its own loss's gradient
        optimizer.step()
    return SuperpositionToys(seeds, [float(s) for s in sparsities], [float(r) for r in decays],
                             weight.detach(), bias.detach(), per_model.detach())  # fmt: skip


def features_represented(weight: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Elhage et al.'s measures on ``weight [..., m, n]``: ``frobenius`` = ``||W||_F^2`` (about the
    number of features represented; above ``m`` means superposition) and ``count`` = features with
    ``||W_i|| > threshold``.

    Example:
        >>> out = features_represented(torch.eye(2, 3))
        >>> out["frobenius"].item(), out["count"].item()
        (2.0, 2)
    """
    norms = weight.norm(dim=-2)  # [..., n]: the length of each feature's direction in the hidden space
    return {"frobenius": (norms**2).sum(-1), "count": (norms > threshold).sum(-1)}


def argmax_task(
    num_rows: int, num_features: int, sparsity: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, n], y [N])``: :func:`sparse_features` rows with at least one active feature,
    ``y = argmax_i x_i``.

    Rows with no active feature have no argmax, so they are not drawn (rejection, in whole batches).

    Example:
        >>> x, y = argmax_task(100, 40, 0.97, torch.Generator().manual_seed(0))
        >>> bool((x.amax(1) > 0).all()), bool((x.argmax(1) == y).all())
        (True, True)
    """
    _check_sparsity(sparsity)
    keep = 1 - sparsity**num_features
    parts, found = [], 0
    while found < num_rows:  # one or two rounds: each draws enough rows for the expected rejection rate
        draw = sparse_features((int((num_rows - found) / keep * 1.1) + 16, num_features), sparsity, generator)
        draw = draw[draw.amax(1) > 0]
        parts.append(draw)
        found += len(draw)
    x = torch.cat(parts)[:num_rows]
    return x, x.argmax(1)


# ----------------------------------------------------------------------------------------------
# probes for both toys
# ----------------------------------------------------------------------------------------------
def block_probes(
    train: torch.Tensor,
    labels: torch.Tensor,
    rates: Sequence[float],
    seeds: Sequence[int],
    num_labels: int,
    **budget,
) -> tuple[ProbeGrid, torch.Tensor]:
    """Linear probes on ``B`` blocks of data (``train [B, N, F]``, clean ``labels [B, N]``), one per
    (rate, block), rate-major, all in one :func:`~hf_monosem.cached.train_probe_grid`.

    Block ``b``'s probe at ``rate`` trains on its block's rows with symmetric label noise drawn with
    ``seeds[b]`` (:func:`~hf_monosem.scenarios.grid.noisy_label_draws`), and ``seeds[b]`` also seeds its
    initialisation and shuffling. ``budget`` goes to ``train_probe_grid``. Returns the probes and each
    probe's block index (score probe ``p`` on block ``block[p]``'s test rows).

    Example:
        >>> x = torch.randn(2, 200, 1, generator=torch.Generator().manual_seed(0)); y = (x[..., 0] > 0).long()
        >>> grid, block = block_probes(x, y, [0.0, 0.2], [0, 1], 2, epochs=20, lr=0.1, batch_size=32)
        >>> block.tolist(), bool(grid.accuracy(x[block], y[block]).min() > 0.85)
        ([0, 1, 0, 1], True)
    """
    num_blocks, num_rows, dim = train.shape
    rates, seeds = [float(r) for r in rates], [int(s) for s in seeds]
    if labels.shape != (num_blocks, num_rows) or len(seeds) != num_blocks:
        raise ValueError(
            f"labels {tuple(labels.shape)} and {len(seeds)} seeds do not fit train {tuple(train.shape)}; "
            "allowed: labels [B, N] and one seed per block"
        )
    num_probes = len(rates) * num_blocks
    block = torch.arange(num_blocks).repeat(len(rates))
    rows = block[:, None] * num_rows + torch.arange(num_rows)  # [P, N] rows of the flat matrix
    flat_labels = labels.reshape(-1)
    if any(rates):
        label_feature = ClassLabel(num_classes=num_labels)
        draws = torch.stack(
            [noisy_label_draws(labels[b], label_feature, rates, [seeds[b]]) for b in range(num_blocks)]
        )
        full = flat_labels.repeat(num_probes, 1)
        full.scatter_(1, rows, draws.transpose(0, 1).reshape(num_probes, num_rows))  # rate-major like block
    else:  # clean labels everywhere: one shared row, no copy per probe
        full = flat_labels.expand(num_probes, -1)
    grid = train_probe_grid(train.reshape(-1, dim), full, num_labels, rows=rows,
                            seeds=[seeds[b] for b in block.tolist()], **budget)  # fmt: skip
    return grid, block


def protocol_lr(
    protocol: ProbeProtocol, train: torch.Tensor, labels: torch.Tensor, num_labels: int, seed: int = 0
) -> tuple[float, dict[float, float]]:
    """``protocol``'s learning rate for one representation (``train [N, F]``, clean ``labels [N]``), chosen as
    the scenario grid chooses it: labels noised at ``selection_rate`` (seed ``seed``), a held-out share
    ``selection_fraction`` of the rows scored against them; ``(protocol.lr, {})`` without an ``lr_grid``.

    Example:
        >>> from hf_monosem.scenarios.protocols import PAPER_PROBE
        >>> protocol_lr(PAPER_PROBE, torch.randn(10, 2), torch.zeros(10, dtype=torch.long), 2)
        (0.4, {})
    """
    if not protocol.lr_grid:
        return protocol.lr, {}
    noisy, held_out = selection_labels(labels, ClassLabel(num_classes=num_labels), protocol, seed)
    return protocol.select_lr(train, noisy, num_labels, [seed], held_out)
