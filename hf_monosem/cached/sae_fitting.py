"""Post-hoc sparse autoencoders: fit an SAE feature layer on a frozen backbone's cached features.

:func:`fit_sae` extracts the backbone's pooled features once (:func:`extract_pooled_features`, cached
on disk), trains the ``sae``/``topk`` feature layer on that matrix with a plain vectorised loop over
shuffled mini-batches (no backbone forward passes, no Trainer), and returns a
:class:`~hf_monosem.MonoSemanticModel` made of the frozen backbone and the fitted SAE, ready for
``save_pretrained`` and for training a head on top.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, set_seed

from .extraction import extract_pooled_features, resolve_base_model
from ..models.feature_layers import _SparseAutoencoderBase
from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel

__all__ = ["explained_variance", "fit_sae", "resample_dead_latents", "train_sae_layer"]

_SAE_KINDS = ("topk", "sae")
# rows of the cached matrix used to measure explained variance / L0 / dead latents, and to pick
# resampling targets; the whole matrix when smaller
_EVAL_ROWS = 16384
_RESAMPLE_ROWS = 8192
# Anthropic's resampling scales new encoder rows to this fraction of the mean alive encoder norm
_RESAMPLE_ENCODER_SCALE = 0.2


@torch.no_grad()
def explained_variance(
    layer: _SparseAutoencoderBase, features: torch.Tensor, batch_size: int = 4096
) -> dict[str, float]:
    """``1 - ||x - x_hat||^2 / ||x - mean(x)||^2`` over ``features`` (in the SAE's input space, i.e.
    after its optional L2 normalisation), plus ``l0`` (mean active latents per input) and
    ``dead_fraction`` (latents active on none of the inputs)."""
    err = torch.zeros((), dtype=torch.float64, device=features.device)
    total = torch.zeros((), dtype=torch.float64, device=features.device)
    active = torch.zeros((), dtype=torch.float64, device=features.device)
    fired = torch.zeros(layer.feature_dim, dtype=torch.bool, device=features.device)
    prepared = torch.cat([layer.prepare_input(chunk) for chunk in features.split(batch_size)])
    mean = prepared.mean(0, keepdim=True)
    for x in prepared.split(batch_size):
        codes = layer.encode(x)
        err += (layer.decode(codes) - x).pow(2).sum().double()
        total += (x - mean).pow(2).sum().double()
        nonzero = codes != 0
        active += nonzero.sum().double()
        fired |= nonzero.any(0)
    n = features.shape[0]
    return {
        "explained_variance": float(1.0 - err / total.clamp_min(1e-12)),
        "l0": float(active / n),
        "dead_fraction": float(1.0 - fired.float().mean()),
    }


@torch.no_grad()
def resample_dead_latents(
    layer: _SparseAutoencoderBase,
    dead: torch.Tensor,
    candidates: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Re-initialise ``dead`` latents toward inputs the SAE reconstructs badly (Anthropic, 2023).

    Following "Towards Monosemanticity" (Bricken et al., 2023, neuron resampling): each candidate
    input is drawn with probability proportional to its squared reconstruction loss; a dead latent's
    decoder column becomes the drawn input (centred by the pre-bias, unit norm), its encoder row the
    same direction scaled to 0.2 x the mean encoder-row norm of the live latents, its encoder bias
    zero, and the Adam moments of those rows/columns are reset so stale statistics do not undo the
    change. Returns how many latents were resampled.
    """
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    x = layer.prepare_input(candidates)
    err = (layer.decode(layer.encode(x)) - x).pow(2).sum(-1)
    weights = err.pow(2).double().cpu()
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    picks = torch.multinomial(
        weights, idx.numel(), replacement=idx.numel() > weights.numel(), generator=generator
    )
    directions = x[picks.to(x.device)] - layer.pre_bias
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    alive = ~dead
    enc_norm = layer.encoder.weight[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
    layer.decoder.weight[:, idx] = directions.t().to(layer.decoder.weight.dtype)
    layer.encoder.weight[idx] = (directions * enc_norm * _RESAMPLE_ENCODER_SCALE).to(
        layer.encoder.weight.dtype
    )
    layer.encoder.bias[idx] = 0.0
    for param, by_column in (
        (layer.encoder.weight, False),
        (layer.encoder.bias, False),
        (layer.decoder.weight, True),
    ):
        state = optimizer.state.get(param, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                _zero_rows(state[name], idx, column=by_column)
    return int(idx.numel())


def _zero_rows(tensor: torch.Tensor, idx: torch.Tensor, column: bool) -> None:
    if column:
        tensor[:, idx] = 0.0
    else:
        tensor[idx] = 0.0


@torch.no_grad()
def _normalize_decoder(layer: _SparseAutoencoderBase) -> None:
    norms = layer.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-8)
    layer.decoder.weight.div_(norms)


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

    Dead latents are resampled (:func:`resample_dead_latents`, Anthropic 2023) rather than revived
    with an auxiliary loss (OpenAI's AuxK): resampling works for both the ReLU and the TopK layer
    without changing their loss or forward pass (so the fitted layer is exactly the feature layer
    the model runs), and with the whole feature matrix cached, finding the badly reconstructed inputs
    it needs is one cheap batched pass.

    Returns:
        ``(model, report)``: a :class:`MonoSemanticModel` with ``freeze_backbone=True`` whose feature
        layer is the fitted SAE (saves and loads with ``save_pretrained``/``from_pretrained``), and
        a report with per-epoch histories ``explained_variance``, ``l0``, ``dead_fraction``, ``loss``
        (entry 0 of the first three: before training), ``resampled`` (latents resampled in total) and
        the final values ``final_explained_variance``, ``final_l0``, ``final_dead_fraction``.
    """
    if feature_layer not in _SAE_KINDS:
        raise ValueError(
            f"feature_layer={feature_layer!r} is not valid; allowed: {', '.join(map(repr, _SAE_KINDS))}"
        )
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

    set_seed(seed)
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
    layer: _SparseAutoencoderBase = model.feature_layer
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
    layer: _SparseAutoencoderBase,
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
    mini-batches, decoder columns renormalised to unit norm after every step, dead latents resampled.
    ``init_pre_bias`` starts the pre-bias at the data mean (turn off to continue a fit).
    """
    from tqdm.auto import tqdm

    device = features.device
    layer.to(device).train()
    n = features.shape[0]
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = steps_per_epoch * epochs
    dead_after_steps = dead_after_steps or steps_per_epoch
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

    start = explained_variance(layer, eval_rows)
    report: dict[str, Any] = {
        "explained_variance": [start["explained_variance"]],
        "l0": [start["l0"]],
        "dead_fraction": [start["dead_fraction"]],
        "loss": [],
        "resampled": 0,
    }
    since_fired = torch.zeros(layer.feature_dim, dtype=torch.long, device=device)
    step = 0
    bar = tqdm(total=total_steps, desc=f"fit_sae ({layer.kind})", disable=not progress)
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            epoch_loss = torch.zeros((), device=device)
            for rows in order.split(batch_size):
                codes, aux = layer(features[rows])
                loss = layer.weighted_aux_loss(aux)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                _normalize_decoder(layer)
                epoch_loss += loss.detach() * rows.numel()
                fired = (codes.detach() != 0).any(0)
                since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
                step += 1
                if step % resample_every == 0 and step <= last_resample_step and step < total_steps:
                    dead = since_fired >= dead_after_steps
                    candidates = features[torch.randperm(n, generator=generator)[:_RESAMPLE_ROWS].to(device)]
                    count = resample_dead_latents(layer, dead, candidates, optimizer, generator)
                    report["resampled"] += count
                    since_fired = since_fired.masked_fill(dead, 0)
                bar.update(1)
            stats = explained_variance(layer, eval_rows)
            for key in ("explained_variance", "l0", "dead_fraction"):
                report[key].append(stats[key])
            report["loss"].append(float(epoch_loss) / n)
            bar.set_postfix(
                ev=f"{stats['explained_variance']:.3f}",
                l0=f"{stats['l0']:.1f}",
                dead=f"{stats['dead_fraction']:.2f}",
            )
    finally:
        bar.close()
    layer.eval()
    report["final_explained_variance"] = report["explained_variance"][-1]
    report["final_l0"] = report["l0"][-1]
    report["final_dead_fraction"] = report["dead_fraction"][-1]
    return report
