"""Contrastive (SimCLR / NCL) training of a projector on a frozen backbone's cached features.

The paper's intrinsic route to monosemantic features is NCL: the SimCLR objective with a
non-negative projector output. Pretraining a whole backbone that way costs GPU days; this module is
the cheap variant for a *frozen* pretrained backbone: the pooled backbone vectors are extracted once
(:func:`hf_monosem.extract_pooled_features`), and only the projector (the ``linear`` = SimCLR or
``nonneg`` = NCL feature layer, usually with ``projector_hidden_dim``) is trained with InfoNCE.

Views are made in feature space, since the backbone is not run again: each view is the
standardised pooled vector with dropout (as SimCSE's dropout views, but on the output) plus small
Gaussian noise. Labels are never used, so the features a probe reads afterwards are as
label-independent as in the paper's pretrain-then-probe protocol.

The returned layer works on *raw* pooled vectors: the standardisation is folded into its first
linear map, so it drops into a :class:`~hf_monosem.MonoSemanticModel` unchanged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.feature_layers import FeatureLayerSettings, LinearFeatures, feature_layer_class
from ..training.losses import info_nce_loss
from .checks import autocast_off, check_features
from .data_parallel import DataParallelFit
from .feature_shards import ShardedFeatures
from .minibatch import MiniBatches
from .row_source import FeatureRows
from .scaling import standardize, streamed_feature_stats

__all__ = [
    "CONTRASTIVE_POSITIVES",
    "NCL_RECIPES",
    "fit_contrastive_projector",
    "nearest_neighbors",
    "ncl_recipe",
]

#: what a row's positive is: another view of itself, or a view of one of its nearest neighbours
CONTRASTIVE_POSITIVES = ("self", "nn")


#: P3's named NCL recipes (docs/PROTOCOL.md, stage A): ``views`` (``"feature"``: dropout + noise on the
#: cached vector; ``"dropout"``: cached encoder-level views, :func:`~hf_monosem.cached.text_view_features`),
#: ``positives`` and the NCL layer's settings; the SimCLR twin shares the views and positives.
NCL_RECIPES: dict[str, dict[str, Any]] = {
    "p2": {"views": "feature", "positives": "self", "nonneg_order": "plain", "nonneg_activation": "relu",
           "activation_loss_weight": 10.0},
    "authors": {"views": "dropout", "positives": "self", "nonneg_order": "authors",
                "nonneg_activation": "rep_relu", "activation_loss_weight": 1.0},
    "authors-nn": {"views": "dropout", "positives": "nn", "nonneg_order": "authors",
                   "nonneg_activation": "rep_relu", "activation_loss_weight": 1.0},
}  # fmt: skip


def ncl_recipe(name: str, kind: str) -> tuple[str, dict[str, Any]]:
    """``(views, fit_contrastive_projector keyword arguments)`` of recipe ``name`` for a ``kind`` layer
    (``"linear"``: the SimCLR twin, same positives; ``"nonneg"``: NCL).

    Example:
        >>> ncl_recipe("authors-nn", "linear")
        ('dropout', {'positives': 'nn'})
        >>> ncl_recipe("p3", "nonneg")
        Traceback (most recent call last):
        ...
        ValueError: recipe='p3' is not valid; allowed: 'p2', 'authors', 'authors-nn'
    """
    if name not in NCL_RECIPES:
        raise ValueError(f"recipe={name!r} is not valid; allowed: {', '.join(map(repr, NCL_RECIPES))}")
    recipe = dict(NCL_RECIPES[name])
    views = recipe.pop("views")
    return views, recipe if kind == "nonneg" else {"positives": recipe["positives"]}


@torch.no_grad()
def nearest_neighbors(features: torch.Tensor, k: int = 10, chunk: int = 2048) -> torch.Tensor:
    """``[N, k]``: the indices of each row's ``k`` nearest rows by cosine similarity, never the row itself.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> nearest_neighbors(x, k=1).flatten().tolist()
        [1, 0, 3, 2]
    """
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k={k!r} is not valid; allowed: an integer in [1, {n - 1}] (rows - 1)")
    unit = F.normalize(features.float(), dim=-1)
    out = []
    for start in range(0, n, chunk):
        sim = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + start] = -float("inf")  # never the row itself
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


@autocast_off  # a caller's autocast must not reach the fit (see .checks)
def fit_contrastive_projector(
    features: torch.Tensor | ShardedFeatures,
    *,
    feature_layer: str = "nonneg",
    feature_dim: int = 1536,
    projector_hidden_dim: int | None = 1536,
    nonneg_activation: str = "relu",
    nonneg_order: str = "plain",
    activation_loss_weight: float = 0.0,
    temperature: float = 0.2,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    view_dropout: float = 0.2,
    view_noise: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    views: torch.Tensor | None = None,
    positives: str = "self",
    num_neighbors: int = 10,
    split_processes: bool = False,
) -> tuple[LinearFeatures, dict[str, Any]]:
    """Train a SimCLR (``"linear"``) or NCL (``"nonneg"``) projector on cached pooled features.

    Args:
        features: ``[N, hidden]`` pooled backbone vectors (no labels needed): a tensor, or a
            :class:`~hf_monosem.cached.feature_shards.ShardedFeatures` (a matrix larger than memory), which
            is never read whole: its statistics come from one pass block by block, every batch is read
            from its files (on the CPU), and the fit equals the one in memory (tested with ``torch.equal``).
        feature_layer: ``"linear"`` (SimCLR baseline) or ``"nonneg"`` (NCL): a kind whose class has
            ``is_contrastive_projector``.
        feature_dim, projector_hidden_dim, nonneg_activation, activation_loss_weight: the layer's
            :class:`~hf_monosem.models.feature_layers.FeatureLayerSettings` (MLP when hidden is set;
            ``nonneg_activation="rep_relu"`` and ``activation_loss_weight > 0`` are NCL's anti-collapse
            pieces: the layer's weighted ``activation_loss`` is added to InfoNCE, over both views).
        temperature: InfoNCE temperature (0.2, the paper's).
        epochs, lr, batch_size, seed: Adam on shuffled mini-batches
            (:class:`~hf_monosem.cached.minibatch.MiniBatches`; ``torch.manual_seed(seed)`` first, for
            the initialisation and the views).
        view_dropout, view_noise: the feature-space augmentation making the two views (when ``views``
            is not given).
        nonneg_order: where NCL's non-negativity sits (``"authors"``: normalise -> activation ->
            normalise; see :data:`~hf_monosem.models.feature_layers.NONNEG_ORDERS`).
        views: ``[K >= 2, N, hidden]`` cached encoder-level views of the same rows (e.g.
            :func:`~hf_monosem.cached.text_view_features`, SimCSE dropout): each step a row's two views
            are two different ones of its ``K``, drawn at random; standardised like ``features``.
        positives: ``"self"`` (the other view is of the same row) or ``"nn"`` (a view of one of the
            row's ``num_neighbors`` nearest neighbours in the frozen, standardised ``features``, drawn
            per epoch: a label-free prior that two close posts share meaning; features in memory only:
            the neighbours compare every row with every other).
        split_processes: fit data-parallel across the processes of ``accelerate launch`` (below).

    With ``split_processes=True`` under ``accelerate launch --num_processes N`` (an initialised process
    group of ``N > 1``) the fit is data-parallel (:mod:`~hf_monosem.cached.data_parallel`; every process
    must then call it; off by default, like the extraction's): every process must pass the same
    ``features`` (checked) and options and draws the same views of the whole batch; each runs the
    projector on its contiguous block of the batch only, the outputs are gathered with their gradient
    path so that every row's negatives are all the batch's other views (the one-process InfoNCE), and
    the gradients are summed. The weights are the one-process weights up to float rounding.

    Returns:
        ``(layer, report)``: the trained feature layer (input: raw pooled vectors) and a report with
        the per-epoch ``loss`` history, the final ``zero_fraction`` of the outputs and ``positive_accuracy``
        (how often a view's nearest neighbour in the batch is its other view).

    Example:
        >>> x = torch.randn(512, 16)
        >>> layer, report = fit_contrastive_projector(x, feature_dim=64, projector_hidden_dim=64, epochs=2,
        ...                                           progress=False)
        >>> bool((layer(x)[0] >= 0).all()), len(report["loss"])
        (True, 2)
    """
    layer_class = feature_layer_class(feature_layer, is_contrastive_projector=True)
    source = FeatureRows(features)  # a tensor read in place, shards a batch at a time
    if len(features.shape) != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, hidden], got shape {tuple(features.shape)}")
    if not 0 <= view_dropout < 1 or view_noise < 0:
        raise ValueError(f"view_dropout={view_dropout} must be in [0, 1) and view_noise={view_noise} >= 0")
    # bool is an int and inf passes "> 0": both would train on constant logits (no gradient), silently
    if isinstance(temperature, bool) or not (
        isinstance(temperature, numbers.Real) and 0 < temperature < math.inf
    ):
        raise ValueError(f"temperature={temperature!r} is not valid; allowed: a finite number > 0")
    if positives not in CONTRASTIVE_POSITIVES:
        raise ValueError(
            f"positives={positives!r} is not valid; allowed: {', '.join(map(repr, CONTRASTIVE_POSITIVES))}"
        )
    if positives == "nn" and not source.in_memory:
        raise ValueError(
            "positives='nn' needs the features in memory (the neighbours compare every row with every "
            "other), got a ShardedFeatures; allowed: positives='self', or features as a tensor"
        )
    if views is not None and (views.dim() != 3 or views.shape[0] < 2 or views.shape[1:] != features.shape):
        raise ValueError(
            f"views must be [K >= 2, N, hidden] with [N, hidden] = {tuple(features.shape)}, got "
            f"{tuple(views.shape)}"
        )
    if views is not None:
        check_features(views, "views")
    settings = FeatureLayerSettings(
        feature_dim=feature_dim,
        projector_hidden_dim=projector_hidden_dim,
        nonneg_activation=nonneg_activation,
        nonneg_order=nonneg_order,
        activation_loss_weight=activation_loss_weight,
    )
    n = len(source)
    neighbors = (
        nearest_neighbors(standardize(features.float())[0], num_neighbors)
        if isinstance(features, torch.Tensor) and positives == "nn"
        else None
    )
    parallel = DataParallelFit(split_processes)
    # a batch of one row has no negatives: skipped
    batches = MiniBatches(
        n,
        batch_size,
        seed,
        epochs=epochs,
        device=source.device,
        min_size=2,
        progress=progress and parallel.rank == 0,  # one bar, not one per process
        desc=f"contrastive {feature_layer} projector",
    )

    torch.manual_seed(seed)
    # one pass over the matrix, block by block (each checked finite): the same bits in memory and from
    # shards; the std floored at 1e-6, as standardize does
    mean, std = streamed_feature_stats(block.float() for _, block in source.chunks())
    # in memory standardised once (a batch is one index operation); shards batch by batch, as read
    standardized = (features.float() - mean) / std if isinstance(features, torch.Tensor) else None
    if views is not None:
        views = (views.to(source.device).float() - mean) / std
    layer = layer_class(source.shape[1], settings).to(source.device)
    parallel.check_same_on_every_process(features, "features")
    if views is not None:
        parallel.check_same_on_every_process(views, "views")
    parallel.broadcast_parameters_(layer)  # the same start on every process, whatever each one seeded
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    history: list[float] = []

    def view(rows: torch.Tensor) -> torch.Tensor:
        # elementwise, so a batch standardised as it is read has the values of the standardised matrix
        x = standardized[rows] if standardized is not None else (source.gather(rows) - mean) / std
        return F.dropout(x + view_noise * torch.randn_like(x), view_dropout, training=True)

    layer.train()
    with batches:
        for epoch in batches:
            total, steps = 0.0, 0
            partner = torch.arange(n, device=source.device)
            if neighbors is not None:  # one of the row's nearest neighbours, drawn per epoch
                pick = torch.randint(num_neighbors, (n, 1), device=source.device)
                partner = neighbors.gather(1, pick).squeeze(1)
            for rows in epoch:
                if views is None:
                    x_a, x_b = view(rows), view(partner[rows])
                else:  # two different cached views: the second shifted by 1 .. K-1 from the first
                    k_a = torch.randint(views.shape[0], rows.shape, device=rows.device)
                    k_b = (k_a + 1 + torch.randint(views.shape[0] - 1, rows.shape, device=rows.device)) % len(
                        views
                    )
                    x_a, x_b = views[k_a, rows], views[k_b, partner[rows]]
                # every process drew the whole batch's views (the same random draws as one process);
                # the projector runs on this process's block of them only
                block, share = parallel.local_rows(torch.arange(rows.shape[0], device=rows.device))
                if parallel.active:
                    x_a, x_b = x_a[block], x_b[block]
                (z_a, aux_a), (z_b, aux_b) = layer(x_a), layer(x_b)
                # the whole batch's outputs (with the way back to the process that made them): the
                # negatives of one process's InfoNCE; each process's copy of the loss counts 1 / world
                z_a = parallel.gather_rows_with_grad(z_a, len(rows))
                z_b = parallel.gather_rows_with_grad(z_b, len(rows))
                loss = info_nce_loss(z_a, z_b, temperature, gather=False) / parallel.world
                aux = layer.weighted_aux_loss(aux_a) if block.numel() else None
                if aux is not None:  # the mean over both views' rows, as on the concatenated batch
                    loss = loss + share * 0.5 * (aux + layer.weighted_aux_loss(aux_b))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                parallel.sum_gradients_(layer.parameters())
                optimizer.step()
                total, steps = total + loss.detach().double(), steps + 1
            # this process's parts of the epoch's losses, summed: the one-process total
            total = parallel.all_reduce_sum_(torch.as_tensor(total, dtype=torch.float64))
            history.append(float(total) / max(steps, 1))
            batches.set_postfix(loss=f"{history[-1]:.4f}")

    parallel.broadcast_parameters_(layer)  # identical weights everywhere, whatever the reduction order
    _fold_standardization(layer, mean, std)
    layer.eval()
    with torch.no_grad():
        sample = source.head(4096).float()
        out_a, out_b = layer(sample)[0], layer(sample + view_noise * std * torch.randn_like(sample))[0]
        _, accuracy = info_nce_loss(out_a[:512], out_b[:512], temperature, gather=False, return_accuracy=True)
        zero_fraction = float((out_a == 0).float().mean())
    return layer, {"loss": history, "zero_fraction": zero_fraction, "positive_accuracy": float(accuracy)}


@torch.no_grad()
def _fold_standardization(layer: LinearFeatures, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``layer(raw)`` equal ``layer_before((raw - mean) / std)`` by rewriting its first linear map."""
    first = layer.project if isinstance(layer.project, nn.Linear) else layer.project[0]
    first.bias.sub_(first.weight @ (mean / std))
    first.weight.div_(std)
