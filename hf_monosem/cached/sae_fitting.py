"""Post-hoc sparse autoencoders: fit an SAE feature layer on a frozen backbone's cached features.

:func:`fit_sae` extracts the backbone's pooled features once (:func:`extract_pooled_features`, cached
on disk), trains the ``sae``/``topk`` feature layer on that matrix with a plain vectorised loop over
shuffled mini-batches (:class:`~hf_monosem.cached.minibatch.MiniBatches`; no backbone forward
passes, no Trainer), and returns a
:class:`~hf_monosem.MonoSemanticModel` made of the frozen backbone and the fitted SAE, ready for
``save_pretrained`` and for training a head on top.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..models.feature_layers import FeatureLayer, feature_layer_class, feature_layer_kinds
from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from ..models.sae import SparseAutoencoder
from .extraction import extract_pooled_features, resolve_base_model
from .minibatch import MiniBatches

__all__ = ["explained_variance", "fit_sae", "resample_dead_latents", "train_sae_layer"]

# rows of the cached matrix used to measure explained variance / L0 / dead latents, and to pick
# resampling targets; the whole matrix when smaller
_EVAL_ROWS = 16384
_RESAMPLE_ROWS = 8192


def explained_variance(layer: SparseAutoencoder, features: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """:meth:`SparseAutoencoder.explained_variance <hf_monosem.models.sae.SparseAutoencoder.explained_variance>`
    of ``layer`` on ``features``: ``explained_variance``, ``l0`` and ``dead_fraction``."""
    return _check_sae(layer).explained_variance(features, batch_size=batch_size)


def resample_dead_latents(
    layer: SparseAutoencoder,
    dead: torch.Tensor,
    candidates: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """:meth:`SparseAutoencoder.resample_dead_ <hf_monosem.models.sae.SparseAutoencoder.resample_dead_>`
    (Anthropic 2023 neuron resampling, Adam moments of the resampled latents reset); returns the count."""
    return _check_sae(layer).resample_dead_(dead, candidates, optimizer, generator)


def _check_sae(layer: FeatureLayer) -> SparseAutoencoder:
    if not getattr(layer, "is_sparse_autoencoder", False):
        raise ValueError(
            f"{type(layer).__name__} is not a sparse autoencoder; allowed: a layer of kind "
            f"{', '.join(map(repr, feature_layer_kinds(is_sparse_autoencoder=True)))}"
        )
    return layer


def fit_sae(
    backbone_or_model: nn.Module,
    dataset: Any = None,
    *,
    features: torch.Tensor | None = None,
    feature_layer: str = "topk",
    feature_dim: int | None = None,
    topk: int | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    sparsity_weight: float | None = None,
    sae_normalize_input: bool = True,
    dead_after_steps: int | None = None,
    resample_every: int | None = None,
    resample_until: float = 0.8,
    cache_dir: str | os.PathLike | None = None,
    extract_batch_size: int = 64,
    pooling: str | None = None,
    collate_fn: Callable | None = None,
    device: str | torch.device | None = None,
    copy_backbone: bool = True,
    progress: bool = True,
) -> tuple[MonoSemanticModel, dict[str, Any]]:
    """Fit a post-hoc SAE on a frozen backbone; return ``(model, report)``.

    Args:
        backbone_or_model: a transformers backbone, or a MonoSemantic model whose backbone (and pooling)
            is used. The backbone is deep-copied unless ``copy_backbone=False`` (the returned model
            freezes it, which would otherwise also freeze the caller's).
        dataset: the examples (see :func:`extract_pooled_features`); or give ``features`` instead.
        features: a precomputed ``[N, hidden]`` matrix of pooled backbone vectors.
        feature_layer: ``"topk"`` (the paper's post-hoc SAE: TopK, normalised MSE, no L1) or ``"sae"``
            (ReLU + L1 with ``sparsity_weight``).
        feature_dim, topk: SAE width and active latents (defaults as in :class:`MonoSemanticConfig`).
        epochs, lr, batch_size, seed: Adam on shuffled mini-batches of the cached matrix. Adam's steps
            have a fixed size, so features that barely vary around their mean (a randomly initialised
            backbone, say) need a smaller ``lr``; watch ``explained_variance`` in the report.
        sae_normalize_input: L2-normalise the SAE input (the paper's recipe).
        dead_after_steps: a latent that fired on no input for this many steps is dead (default: one
            epoch of steps).
        resample_every: check for dead latents every this many steps (default ``dead_after_steps``),
            during the first ``resample_until`` fraction of training only, so the SAE settles after
            the last resampling.
        cache_dir: cache of the extracted features (:func:`extract_pooled_features`).
        device: where to fit (default: the backbone's device).
        progress: show a tqdm bar (explained variance, L0 and dead fraction after every epoch).

    Dead latents are resampled (:meth:`~hf_monosem.models.sae.SparseAutoencoder.resample_dead_`,
    Anthropic 2023) rather than revived with an auxiliary loss (OpenAI's AuxK): resampling works for
    both the ReLU and the TopK layer without changing their loss or forward pass (so the fitted layer is exactly the feature layer
    the model runs), and with the whole feature matrix cached, finding the badly reconstructed inputs
    it needs is one cheap batched pass.

    Returns:
        ``(model, report)``: a :class:`MonoSemanticModel` with ``freeze_backbone=True`` whose feature
        layer is the fitted SAE (saves and loads with ``save_pretrained``/``from_pretrained``), and
        a report with per-epoch histories ``explained_variance``, ``l0``, ``dead_fraction``, ``loss``
        (entry 0 of the first three: before training), ``resampled`` (latents resampled in total) and
        the final values ``final_explained_variance``, ``final_l0``, ``final_dead_fraction``.
    """
    feature_layer_class(feature_layer, is_sparse_autoencoder=True)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs!r} and batch_size={batch_size!r} must be positive integers")
    if not 0 <= resample_until <= 1:
        raise ValueError(f"resample_until={resample_until!r} is not valid; allowed: a number in [0, 1]")

    source = (
        resolve_base_model(backbone_or_model, pooling)
        if isinstance(backbone_or_model, MonoSemanticPreTrainedModel)
        else None
    )
    backbone = source.backbone if source is not None else backbone_or_model
    if not isinstance(backbone, PreTrainedModel):
        raise ValueError(
            f"expected a transformers backbone or a MonoSemantic model, got {type(backbone_or_model).__name__}"
        )
    pooling = pooling or (source.config.pooling if source is not None else None)

    if features is None:
        if dataset is None:
            raise ValueError("give dataset (features are extracted and cached) or features")
        features = extract_pooled_features(
            source if source is not None else backbone,
            dataset,
            batch_size=extract_batch_size,
            cache_dir=cache_dir,
            pooling=pooling,
            collate_fn=collate_fn,
            device=device,
        )

    torch.manual_seed(seed)  # the SAE's initialisation (the seeding rule of .minibatch)
    config_kwargs: dict[str, Any] = {
        "feature_layer": feature_layer,
        "freeze_backbone": True,
        "sae_normalize_input": sae_normalize_input,
    }
    for name, value in (
        ("feature_dim", feature_dim),
        ("topk", topk),
        ("sparsity_weight", sparsity_weight),
        ("pooling", pooling),
    ):
        if value is not None:
            config_kwargs[name] = value
    model = MonoSemanticModel.from_backbone(
        copy.deepcopy(backbone) if copy_backbone else backbone, **config_kwargs
    )
    layer: SparseAutoencoder = model.feature_layer
    if features.dim() != 2 or features.shape[1] != layer.input_dim:
        raise ValueError(f"features must be [N, {layer.input_dim}], got {tuple(features.shape)}")

    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    report = train_sae_layer(
        layer,
        features.to(device, torch.float32),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        dead_after_steps=dead_after_steps,
        resample_every=resample_every,
        resample_until=resample_until,
        progress=progress,
    )
    model.to(device)
    model.eval()
    return model, report


def train_sae_layer(
    layer: SparseAutoencoder,
    features: torch.Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    dead_after_steps: int | None = None,
    resample_every: int | None = None,
    resample_until: float = 0.8,
    init_pre_bias: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train an ``sae``/``topk`` feature layer in place on a feature matrix (on ``features.device``).

    The loop behind :func:`fit_sae` (see there for the arguments and the report): Adam on shuffled
    mini-batches (:class:`~hf_monosem.cached.minibatch.MiniBatches`, whose generator seeded with
    ``seed`` also picks the evaluation rows and the resampling targets), decoder columns renormalised
    to unit norm after every step, dead latents resampled. ``init_pre_bias`` starts the pre-bias at
    the data mean (turn off to continue a fit).

    Example:
        >>> from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer
        >>> sae = build_feature_layer(FeatureLayerSettings(feature_dim=32, topk=4), input_dim=16, kind="topk")
        >>> report = train_sae_layer(sae, torch.randn(256, 16), epochs=2, batch_size=64, progress=False)
        >>> len(report["explained_variance"]), report["final_l0"]
        (3, 4.0)
    """
    _check_sae(layer)
    device = features.device
    layer.to(device).train()
    n = features.shape[0]
    batches = MiniBatches(
        n, batch_size, seed, epochs=epochs, device=device, progress=progress, desc=f"fit_sae ({layer.kind})"
    )
    generator = batches.generator
    total_steps = batches.total_steps
    dead_after_steps = dead_after_steps or batches.steps_per_epoch
    resample_every = resample_every or dead_after_steps
    last_resample_step = int(resample_until * total_steps)

    eval_rows = (
        features
        if n <= _EVAL_ROWS
        else features[torch.randperm(n, generator=generator)[:_EVAL_ROWS].to(device)]
    )
    if init_pre_bias:  # the data mean: a cheap stand-in for the geometric median
        with torch.no_grad():
            layer.pre_bias.copy_(torch.cat([layer.prepare_input(c) for c in features.split(4096)]).mean(0))
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)

    start = layer.explained_variance(eval_rows)
    report: dict[str, Any] = {
        "explained_variance": [start["explained_variance"]],
        "l0": [start["l0"]],
        "dead_fraction": [start["dead_fraction"]],
        "loss": [],
        "resampled": 0,
    }
    since_fired = torch.zeros(layer.feature_dim, dtype=torch.long, device=device)
    step = 0
    with batches:
        for epoch in batches:
            epoch_loss = torch.zeros((), device=device)
            for rows in epoch:
                codes, aux = layer(features[rows])
                loss = layer.weighted_aux_loss(aux)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                layer.normalize_decoder_()
                epoch_loss += loss.detach() * rows.numel()
                fired = (codes.detach() != 0).any(0)
                since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
                step += 1
                if step % resample_every == 0 and step <= last_resample_step and step < total_steps:
                    dead = since_fired >= dead_after_steps
                    candidates = features[torch.randperm(n, generator=generator)[:_RESAMPLE_ROWS].to(device)]
                    report["resampled"] += layer.resample_dead_(dead, candidates, optimizer, generator)
                    since_fired = since_fired.masked_fill(dead, 0)
            stats = layer.explained_variance(eval_rows)
            for key in ("explained_variance", "l0", "dead_fraction"):
                report[key].append(stats[key])
            report["loss"].append(float(epoch_loss) / n)
            batches.set_postfix(
                ev=f"{stats['explained_variance']:.3f}",
                l0=f"{stats['l0']:.1f}",
                dead=f"{stats['dead_fraction']:.2f}",
            )
    layer.eval()
    report["final_explained_variance"] = report["explained_variance"][-1]
    report["final_l0"] = report["l0"][-1]
    report["final_dead_fraction"] = report["dead_fraction"][-1]
    return report
