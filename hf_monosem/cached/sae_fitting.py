"""Post-hoc sparse autoencoders: fit an SAE feature layer on a frozen backbone's cached features.

:func:`fit_sae` extracts the backbone's pooled features once (:func:`extract_pooled_features`, cached
on disk), trains the ``sae``/``topk`` feature layer on that matrix with a plain vectorised loop over
shuffled mini-batches (:class:`~hf_monosem.cached.minibatch.MiniBatches`; no backbone forward
passes, no Trainer), and returns a
:class:`~hf_monosem.MonoSemanticModel` made of the frozen backbone and the fitted SAE, ready for
``save_pretrained`` and for training a head on top.

The loop is sparsify's (EleutherAI): a TopK step decodes only the ``k`` active latents and its
backward touches only their rows (:meth:`~hf_monosem.models.sae.SparseAutoencoder.fit_forward`, with
the dense layer's exact loss and gradients), the decoder gradient is made orthogonal to the decoder
columns before each (fused) Adam step, dead TopK latents get the AuxK loss, and the per-epoch numbers
are gathered from the training batches themselves (no evaluation pass).
``python benchmarks/sae_throughput.py`` times it against sparsify on the same data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..models.feature_layers import FeatureLayer, feature_layer_class, feature_layer_kinds
from ..models.modeling import MonoSemanticModel, MonoSemanticPreTrainedModel
from ..models.sae import ENCODER_INIT_NORM, SparseAutoencoder
from .checks import autocast_off
from .data_parallel import DataParallelFit
from .extraction import resolve_base_model
from .feature_cache import extract_pooled_features
from .feature_shards import ShardedFeatures
from .minibatch import MiniBatches
from .row_source import FeatureRows
from .sae_rows import SaeInputRows

__all__ = [
    "SaeFitConfig",
    "explained_variance",
    "fit_sae",
    "resample_dead_latents",
    "sae_optimizer",
    "train_sae_layer",
]

# rows of the cached matrix from which resampling targets are picked; the whole matrix when smaller
_RESAMPLE_ROWS = 8192
#: what happens to latents that stopped firing (``dead_latents=``); ``None`` picks per kind
DEAD_LATENT_STRATEGIES = ("auxk", "resample", "none")
_DEFAULT_DEAD_LATENTS = {"topk": "auxk", "sae": "resample"}
# OpenAI's AuxK weight (Gao et al. 2024: alpha = 1/32)
_AUXK_WEIGHT = 1 / 32
#: ``on_epoch_end(epoch, layer)`` of :func:`train_sae_layer` and :func:`fit_sae`
EpochCallback = Callable[[int, SparseAutoencoder], None]
# the default Adam learning rate at 2**14 latents, scaled by 1 / sqrt(width / 2**14) for other widths
# (sparsify's width rule). 3x sparsify's 2e-4: a cached-route fit is short (tens to hundreds of steps,
# sparsify's runs are ~1e5) and gets further at the larger step: held-back FVU 0.301 at width 1536
# (lr 1.96e-3) vs 0.334 at 1e-3 (the former default) and 0.369 at sparsify's 6.5e-4 (low rank + noise,
# 20k x 384, k 32, 3 epochs, batch 1024, seed 0; benchmarks/sae_throughput.py)
_DEFAULT_LR_AT_16K = 6e-4


@dataclasses.dataclass(frozen=True)
class SaeFitConfig:
    """How an SAE is fitted: the options :func:`fit_sae` and :func:`train_sae_layer` share (as
    sparsify's ``TrainConfig`` beside its ``SparseCoderConfig``; the layer's own settings, width and
    ``k``, stay in :class:`~hf_monosem.models.FeatureLayerSettings`).

    Attributes:
        epochs, batch_size, seed: Adam on shuffled mini-batches of the cached matrix
            (:class:`~hf_monosem.cached.minibatch.MiniBatches`, seeded with ``seed``).
        lr: Adam's learning rate; ``None`` scales it with the width as sparsify does, at 3x its
            constant: ``6e-4 / sqrt(feature_dim / 2**14)`` (:meth:`resolved_lr`). Adam's steps have a
            fixed size, so features that barely vary around their mean (a randomly initialised backbone,
            say) need a smaller one; watch ``explained_variance`` in the report.
        dead_latents: what to do with latents that stopped firing: ``"auxk"`` (OpenAI's AuxK loss,
            Gao et al. 2024: the dead latents' largest pre-activations learn to reconstruct the
            residual, weighted ``auxk_weight``; ``topk`` only), ``"resample"`` (Anthropic 2023,
            :meth:`~hf_monosem.models.sae.SparseAutoencoder.resample_dead_`, every ``resample_every``
            steps during the first ``resample_until`` of training) or ``"none"``. ``None``: ``"auxk"``
            for ``topk``, ``"resample"`` for ``sae``. Neither changes the forward pass.
        auxk_weight: weight of the AuxK term (1/32, as in the paper).
        dead_after_steps: a latent that fired on no input for this many steps is dead (``None``: one
            epoch of steps).
        resample_every: check for dead latents every this many steps (``None``: ``dead_after_steps``),
            during the first ``resample_until`` fraction of training only, so the SAE settles after
            the last resampling.
        lr_decay: the last fraction of the steps over which the learning rate decays linearly to 0
            (sparsify's Trainer decays over the whole run). Off by default: at the shapes of
            ``benchmarks/sae_throughput.py`` it bought nothing (held-back FVU 0.3035 with 0.3 vs 0.3013
            without, low rank + noise, lr 2e-3, seed 0).
        progress: show a tqdm bar (explained variance, L0 and dead fraction after every epoch).
        split_processes: under ``accelerate launch --num_processes N``, fit data-parallel: every process
            takes its block of each batch (:func:`train_sae_layer`); every process must then fit. Off by
            default, like the extraction's, so that code fitting on the main process only keeps working.

    Example:
        >>> config = SaeFitConfig(epochs=3, batch_size=1024)
        >>> round(config.resolved_lr(16384), 6), round(config.resolved_lr(1536), 6)
        (0.0006, 0.00196)
        >>> SaeFitConfig(epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: epochs=0 is not valid; allowed: a positive integer
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float | None = None
    seed: int = 0
    dead_latents: str | None = None
    auxk_weight: float = _AUXK_WEIGHT
    dead_after_steps: int | None = None
    resample_every: int | None = None
    resample_until: float = 0.8
    lr_decay: float = 0.0
    progress: bool = True
    split_processes: bool = False

    def __post_init__(self) -> None:
        # bad options fail here, before any extraction or step
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; allowed: a positive integer")
        for name in ("dead_after_steps", "resample_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r} is not valid; allowed: None or a positive integer")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr >= 0):
            raise ValueError(f"lr={self.lr!r} is not valid; allowed: None (scaled with the width) or >= 0")
        if self.dead_latents is not None and self.dead_latents not in DEAD_LATENT_STRATEGIES:
            raise ValueError(
                f"dead_latents={self.dead_latents!r} is not valid; allowed: None, "
                f"{', '.join(map(repr, DEAD_LATENT_STRATEGIES))}"
            )
        if not (isinstance(self.auxk_weight, (int, float)) and self.auxk_weight >= 0):
            raise ValueError(f"auxk_weight={self.auxk_weight!r} is not valid; allowed: a number >= 0")
        if not 0 <= self.lr_decay <= 1:
            raise ValueError(f"lr_decay={self.lr_decay!r} is not valid; allowed: a number in [0, 1]")
        if not 0 <= self.resample_until <= 1:
            raise ValueError(
                f"resample_until={self.resample_until!r} is not valid; allowed: a number in [0, 1]"
            )

    def resolved_lr(self, feature_dim: int) -> float:
        """``lr``, or the width-scaled default ``6e-4 / sqrt(feature_dim / 2**14)`` when ``None``."""
        return float(self.lr) if self.lr is not None else _DEFAULT_LR_AT_16K / math.sqrt(feature_dim / 2**14)

    def with_options(self, **options: Any) -> SaeFitConfig:
        """A copy with the options that are not ``None`` replaced (how the keyword arguments of
        :func:`fit_sae` and :func:`train_sae_layer` fill a config)."""
        given = {name: value for name, value in options.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self


def _fit_config(config: SaeFitConfig | None, arguments: dict[str, Any]) -> SaeFitConfig:
    """``config`` (default ``SaeFitConfig()``) with the fields that a function's keyword arguments of
    the same name give (not ``None``) replaced: how :func:`fit_sae` and :func:`train_sae_layer` keep
    their keywords."""
    fields = {field.name for field in dataclasses.fields(SaeFitConfig)}
    return (config or SaeFitConfig()).with_options(**{k: v for k, v in arguments.items() if k in fields})


def explained_variance(
    layer: SparseAutoencoder, features: torch.Tensor, batch_size: int = 4096
) -> dict[str, float]:
    """:meth:`SparseAutoencoder.explained_variance
    <hf_monosem.models.sae.SparseAutoencoder.explained_variance>` of ``layer`` on ``features``:
    ``explained_variance``, ``l0`` and ``dead_fraction``."""
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
    config: SaeFitConfig | None = None,
    features: torch.Tensor | ShardedFeatures | None = None,
    feature_layer: str = "topk",
    feature_dim: int | None = None,
    topk: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    sparsity_weight: float | None = None,
    sae_normalize_input: bool | str = True,
    dead_latents: str | None = None,
    auxk_weight: float | None = None,
    dead_after_steps: int | None = None,
    resample_every: int | None = None,
    resample_until: float | None = None,
    split_processes: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    extract_batch_size: int = 64,
    pooling: str | None = None,
    collate_fn: Callable | None = None,
    device: str | torch.device | None = None,
    copy_backbone: bool = True,
    progress: bool | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> tuple[MonoSemanticModel, dict[str, Any]]:
    """Fit a post-hoc SAE on a frozen backbone; return ``(model, report)``.

    The model is built once (backbone, pooling, the SAE): the pooled vectors are extracted from it
    (or given as ``features``), its SAE starts from :meth:`SparseAutoencoder.init_for_fit_
    <hf_monosem.models.sae.SparseAutoencoder.init_for_fit_>` and is trained in place by
    :func:`train_sae_layer`.

    Args:
        backbone_or_model: a transformers backbone, or a MonoSemantic model whose backbone (and pooling)
            is used. The backbone is deep-copied unless ``copy_backbone=False`` (the returned model
            freezes it, which would otherwise also freeze the caller's).
        dataset: the examples (see :func:`extract_pooled_features`); or give ``features`` instead.
        config: the fitting options (:class:`SaeFitConfig`: epochs, batch size, learning rate, seed,
            dead-latent handling, progress bar); default ``SaeFitConfig()``.
        features: a precomputed ``[N, hidden]`` matrix of pooled backbone vectors: a tensor, or a
            :class:`~hf_monosem.cached.feature_shards.ShardedFeatures` (``extract_pooled_features(...,
            memory_map=True)``), whose rows are read from its files a batch at a time (the same fit).
        feature_layer: ``"topk"`` (the paper's post-hoc SAE: TopK, normalised MSE, no L1) or ``"sae"``
            (ReLU + L1 with ``sparsity_weight``).
        feature_dim, topk: SAE width and active latents (defaults as in :class:`MonoSemanticConfig`).
        epochs, lr, batch_size, seed, dead_latents, auxk_weight, dead_after_steps, resample_every,
            resample_until, split_processes, progress: the fields of :class:`SaeFitConfig` (see there);
            those given (not ``None``) replace the ``config``'s.
        sae_normalize_input: when the SAE L2-normalises its input: True / "always" (fitting and codes, the
            default), "fit" (fitting only: the codes encode the raw vector, as the authors' probe does) or
            False / "never" (see :class:`~hf_monosem.models.FeatureLayerSettings`).
        cache_dir: cache of the extracted features (:func:`extract_pooled_features`).
        device: where to fit (default: the backbone's device).
        on_epoch_end: called after every epoch with the epoch number and the SAE (see
            :func:`train_sae_layer`).

    Returns:
        ``(model, report)``: a :class:`MonoSemanticModel` with ``freeze_backbone=True`` whose feature
        layer is the fitted SAE (saves and loads with ``save_pretrained``/``from_pretrained``), and
        a report with per-epoch histories ``explained_variance``, ``l0``, ``dead_fraction``, ``loss``
        and the final values ``final_explained_variance``, ``final_l0``, ``final_dead_fraction`` (see
        :func:`train_sae_layer` for how they are measured), ``resampled`` (latents resampled in
        total), ``dead_latents`` (the strategy used) and ``lr`` (the learning rate used).
    """
    feature_layer_class(feature_layer, is_sparse_autoencoder=True)
    # every option is checked here, before the backbone is copied or a row extracted
    config = _fit_config(config, locals())

    source = (
        resolve_base_model(backbone_or_model, pooling)
        if isinstance(backbone_or_model, MonoSemanticPreTrainedModel)
        else None
    )
    if source is not None and source.config.hidden_layer is not None:
        # the SAE would be fitted on (and placed at) the pooled final output, not where this model reads
        raise ValueError(
            f"fit_sae fits on the backbone's pooled output vectors, but this model's feature layer reads "
            f"hidden layer {source.config.hidden_layer} token by token (config.hidden_layer="
            f"{source.config.hidden_layer}); fitting there needs per-token activations, which fit_sae does "
            "not extract. Allowed: a transformers backbone or a MonoSemantic model with hidden_layer=None; "
            "for a hidden layer, load an SAE trained there with MonoSemanticModel.from_sae"
        )
    backbone = source.backbone if source is not None else backbone_or_model
    if not isinstance(backbone, PreTrainedModel):
        raise ValueError(
            f"expected a transformers backbone or a MonoSemantic model, got "
            f"{type(backbone_or_model).__name__}"
        )
    pooling = pooling or (source.config.pooling if source is not None else None)
    if features is None and dataset is None:
        raise ValueError("give dataset (features are extracted and cached) or features")

    torch.manual_seed(config.seed)  # the SAE's initialisation (the seeding rule of .minibatch)
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
    # the one model: the pooled vectors come from it (the cache key reads its backbone and pooling
    # only), so what the SAE is fitted on is exactly what the returned model feeds it
    model = MonoSemanticModel.from_backbone(
        copy.deepcopy(backbone) if copy_backbone else backbone, **config_kwargs
    )
    if features is None:
        features = extract_pooled_features(
            model,
            dataset,
            batch_size=extract_batch_size,
            cache_dir=cache_dir,
            collate_fn=collate_fn,
            device=device,
        )
    layer: SparseAutoencoder = model.feature_layer
    if len(features.shape) != 2 or features.shape[1] != layer.input_dim:
        raise ValueError(f"features must be [N, {layer.input_dim}], got {tuple(features.shape)}")
    layer.init_for_fit_(encoder_norm=ENCODER_INIT_NORM)  # the pre-bias: by train_sae_layer, from the data

    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    if isinstance(features, torch.Tensor):
        features = features.to(device, torch.float32)
    else:  # shards stay on disk; train_sae_layer reads each batch to the layer's device
        layer.to(device)
    report = train_sae_layer(layer, features, config=config, on_epoch_end=on_epoch_end)
    model.to(device)
    model.eval()
    return model, report


@autocast_off  # a caller's autocast must not reach the fit (see .checks)
def train_sae_layer(
    layer: SparseAutoencoder,
    features: torch.Tensor | ShardedFeatures,
    *,
    config: SaeFitConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    dead_latents: str | None = None,
    auxk_weight: float | None = None,
    dead_after_steps: int | None = None,
    resample_every: int | None = None,
    resample_until: float | None = None,
    split_processes: bool | None = None,
    init_pre_bias: bool = True,
    progress: bool | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train an ``sae``/``topk`` feature layer in place on a feature matrix (on ``features.device``; a
    :class:`~hf_monosem.cached.feature_shards.ShardedFeatures` on the layer's device).

    The loop behind :func:`fit_sae` (see there for the arguments): Adam (fused where torch has it)
    on shuffled mini-batches (:class:`~hf_monosem.cached.minibatch.MiniBatches`, whose generator
    seeded with ``seed`` also picks the resampling targets); each step runs
    :meth:`~hf_monosem.models.sae.SparseAutoencoder.fit_forward` (sparse for ``topk``: the dense
    layer's loss and gradients at a fraction of the cost), removes the decoder gradient's part along
    the decoder columns, steps, and renormalises the columns to unit norm. ``init_pre_bias`` starts
    the pre-bias at the data mean (turn off to continue a fit).

    A ``ShardedFeatures`` (a matrix larger than memory) is never read whole: the statistics the fit
    needs up front (the mean, the variance check) come from one pass over it block by block, every
    batch and the resampling candidates are read from the shard files
    (:class:`~hf_monosem.cached.row_source.FeatureRows`). The batches are the same, so are the weights
    and the report: the fit equals the one on the same matrix in memory (tested with ``torch.equal``).

    With ``split_processes=True`` under ``accelerate launch --num_processes N`` (an initialised process
    group of ``N > 1``) the fit is data-parallel (:mod:`~hf_monosem.cached.data_parallel`; off by
    default, like the extraction's): every process must call it with the same ``features`` (checked)
    and the same options; each runs the forward and backward pass of its
    contiguous block of every batch, the gradients are summed (every loss term is a mean over the
    batch's rows, weighted by the block's share), and the statistics that steer the fit are global:
    the pre-bias is the mean of all rows, which latents fired (hence AuxK's dead latents and
    resampling) is summed over the blocks, the decoder columns are renormalised after the common
    step. The weights are the one-process weights up to float rounding (tested with 2 CPU processes).

    The report's histories ``explained_variance``, ``l0`` and ``dead_fraction`` are measured on the
    training batches themselves, each in its own forward pass just before its step (as sparsify and
    SAELens log them), so they cost nothing: entry 0 is the first batch before any step, entry ``e``
    is epoch ``e`` (explained variance ``1 - sum ||x - x_hat||^2 / sum ||x - mean||^2`` over the
    epoch's batches; dead fraction: latents that fired in none of them). ``loss`` is each epoch's
    mean loss, ``final_*`` are the last entries. For numbers of the final weights on held-out rows,
    call :func:`explained_variance`.

    ``on_epoch_end(epoch, layer)`` is called after each epoch (``epoch`` counts from 1), under
    ``torch.no_grad``, to read the SAE between epochs (it must not change it). Without a learning-rate
    decay (``lr_decay=0``) and without resampling, whose schedules depend on the total, the layer after
    epoch ``e`` is exactly the result of a fit of ``e`` epochs (the epochs' orders come from one
    generator in turn): one fit scores several epoch counts (tested with ``torch.equal``).

    Example:
        >>> from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer
        >>> sae = build_feature_layer(FeatureLayerSettings(feature_dim=32, topk=4), input_dim=16, kind="topk")
        >>> report = train_sae_layer(sae, torch.randn(256, 16), epochs=2, batch_size=64, progress=False)
        >>> len(report["explained_variance"]), report["final_l0"], report["dead_latents"]
        (3, 4.0, 'auxk')
        >>> held_out = torch.randn(64, 16)
        >>> fvu = {}
        >>> def score(epoch, layer):
        ...     fvu[epoch] = 1 - layer.explained_variance(held_out)["explained_variance"]
        >>> _ = train_sae_layer(
        ...     sae, torch.randn(256, 16), epochs=3, batch_size=64, progress=False, on_epoch_end=score
        ... )
        >>> sorted(fvu)
        [1, 2, 3]
    """
    _check_sae(layer)
    config = _fit_config(config, locals())
    strategy = config.dead_latents or _DEFAULT_DEAD_LATENTS.get(layer.kind, "resample")
    if strategy == "auxk" and layer.kind != "topk":
        raise ValueError(
            f"dead_latents='auxk' applies to 'topk' layers only, not {layer.kind!r}; use 'resample'"
        )
    # a tensor is read where it is, shards to the layer's device (checked finite block by block below)
    source = FeatureRows(features, device=next(layer.parameters()).device)
    parallel = DataParallelFit(config.split_processes)
    parallel.check_same_on_every_process(features, "features")
    device = source.device
    layer.to(device).train()
    parallel.broadcast_parameters_(layer)  # the same start on every process, whatever each one seeded
    n = features.shape[0]
    batches = MiniBatches(
        n,
        config.batch_size,
        config.seed,
        epochs=config.epochs,
        device=device,
        progress=config.progress and parallel.rank == 0,  # one bar, not one per process
        desc=f"fit_sae ({layer.kind})",
    )
    generator = batches.generator
    total_steps = batches.total_steps
    dead_after_steps = config.dead_after_steps or batches.steps_per_epoch
    resample_every = config.resample_every or dead_after_steps
    last_resample_step = int(config.resample_until * total_steps)
    auxk_weight = config.auxk_weight
    lr = config.resolved_lr(layer.feature_dim)
    decay_steps = round(config.lr_decay * total_steps)

    # the input of the fitting objective and the statistics of the fit, in one pass over the matrix (in
    # memory or in shard files); every batch below is read through it
    inputs = SaeInputRows(layer, source)
    # every process holds all rows, so this mean is the global one (the same pre-bias everywhere)
    if init_pre_bias:  # the data mean: a cheap stand-in for the geometric median
        layer.init_for_fit_(inputs.mean, encoder_norm=None)
    optimizer, share_gradients = sae_optimizer(layer, lr)

    report: dict[str, Any] = {
        "explained_variance": [],
        "l0": [],
        "dead_fraction": [],
        "loss": [],
        "resampled": 0,
        "dead_latents": strategy,
        "lr": lr,
    }
    since_fired = torch.zeros(layer.feature_dim, dtype=torch.long, device=device)
    step = 0
    with batches:
        for epoch in batches:
            totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss*rows, error, spread, active
            fired_in_epoch = torch.zeros(layer.feature_dim, dtype=torch.bool, device=device)
            for rows in epoch:
                dead = since_fired >= dead_after_steps if strategy == "auxk" and step > 0 else None
                # this process's block of the batch (all of it in one process) and its share of the rows
                block, share = parallel.local_rows(rows)
                layer.zero_grad(set_to_none=True)
                if block.numel():
                    x, spread = inputs.batch(block)
                    out = layer.fit_forward(x, dead=dead, prepared=True)
                    loss = layer.weighted_aux_loss(out.aux_losses)
                    if "auxk_loss" in out.aux_losses and auxk_weight:
                        loss = loss + auxk_weight * out.aux_losses["auxk_loss"]
                    assert loss is not None  # an SAE always has its reconstruction term
                    (loss * share if share != 1.0 else loss).backward()
                    # loss x rows, squared error, spread, active latents: sums over the block's rows
                    batch_stats = torch.stack(
                        [
                            loss.detach() * block.numel(),
                            out.squared_error,
                            spread.sum(),
                            out.active.to(spread.dtype),
                        ]
                    ).double()
                    fired = out.fired
                else:  # fewer rows than processes: this one only takes part in the collectives
                    batch_stats = torch.zeros(4, dtype=torch.float64, device=device)
                    fired = torch.zeros(layer.feature_dim, dtype=torch.bool, device=device)
                if parallel.active:  # the batch's sums over all blocks: the gradients, the statistics
                    parallel.sum_gradients_(layer.parameters())
                    summed = parallel.all_reduce_sum_(torch.cat([batch_stats, fired.double()]))
                    batch_stats, fired = summed[:4], summed[4:] > 0
                layer.project_decoder_grad_()
                share_gradients()
                optimizer.step()
                layer.normalize_decoder_()
                if decay_steps:  # linear decay to 0 over the last decay_steps steps
                    optimizer.param_groups[0]["lr"] = lr * min(1.0, (total_steps - step - 1) / decay_steps)

                if step == 0:  # before any step: the first batch
                    _append_stats(report, batch_stats, fired, rows.numel())
                totals += batch_stats
                fired_in_epoch |= fired
                since_fired.add_(1).masked_fill_(fired, 0)  # in place: two kernels, no new tensor
                step += 1
                if (
                    strategy == "resample"
                    and step % resample_every == 0
                    and step <= last_resample_step
                    and step < total_steps
                ):
                    dead_now = since_fired >= dead_after_steps
                    candidates = source.gather(
                        torch.randperm(n, generator=generator)[:_RESAMPLE_ROWS].to(device)
                    )
                    report["resampled"] += layer.resample_dead_(dead_now, candidates, optimizer, generator)
                    since_fired = since_fired.masked_fill(dead_now, 0)
                    # the same candidates and draws everywhere; process 0's result is the one kept
                    parallel.broadcast_parameters_(layer)
            _append_stats(report, totals, fired_in_epoch, n)
            report["loss"].append(float(totals[0]) / n)
            if on_epoch_end is not None:
                with torch.no_grad():  # the callback reads the SAE (no graph); the fit goes on in train mode
                    on_epoch_end(len(report["loss"]), layer)
                layer.train()
            batches.set_postfix(
                ev=f"{report['explained_variance'][-1]:.3f}",
                l0=f"{report['l0'][-1]:.1f}",
                dead=f"{report['dead_fraction'][-1]:.2f}",
            )
    parallel.broadcast_parameters_(layer)  # identical weights everywhere, whatever the reduction order
    layer.eval()
    report["final_explained_variance"] = report["explained_variance"][-1]
    report["final_l0"] = report["l0"][-1]
    report["final_dead_fraction"] = report["dead_fraction"][-1]
    return report


def _append_stats(report: dict[str, Any], totals: torch.Tensor, fired: torch.Tensor, rows: int) -> None:
    _, error, spread, active = totals.tolist()
    report["explained_variance"].append(1.0 - error / spread if spread > 0 else float("nan"))
    report["l0"].append(active / rows)
    report["dead_fraction"].append(1.0 - float(fired.float().mean()))


def sae_optimizer(layer: SparseAutoencoder, lr: float) -> tuple[torch.optim.Optimizer, Callable[[], None]]:
    """Adam (fused where torch has it) over an SAE layer's parameters, and the function to call before
    each of its steps: what :func:`train_sae_layer` steps with, for a fitting loop of your own.

    A latent-major decoder (:meth:`~hf_monosem.models.sae.SparseAutoencoder.init_for_fit_`, column-major
    ``[D, M]``) is handed to Adam as its transpose, a contiguous ``[M, D]`` parameter on the same
    storage: torch's fused CPU Adam copies a non-contiguous parameter to a contiguous one and back on
    every step (~0.6 ms of a ~20 ms step at width 1536, 2 threads). Adam's in-place update of that
    view is the decoder's update; the returned function points the view's gradient at the decoder's
    (a transposed view, no copy). The loop must clear gradients with ``layer.zero_grad``, which the
    optimizer no longer covers for the decoder.

    Example:
        >>> from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer
        >>> sae = build_feature_layer(FeatureLayerSettings(feature_dim=32, topk=4), input_dim=16, kind="topk")
        >>> sae.init_for_fit_()  # latent-major decoder
        >>> optimizer, before_step = sae_optimizer(sae, 1e-3)
        >>> sae.zero_grad(set_to_none=True)
        >>> sae.weighted_aux_loss(sae.fit_forward(torch.randn(8, 16)).aux_losses).backward()
        >>> before = sae.decoder.weight.detach().clone()
        >>> before_step(); optimizer.step()
        >>> bool((sae.decoder.weight != before).any())  # Adam's step on the view moved the decoder
        True
    """
    decoder = layer.decoder.weight
    view = decoder.detach().t()
    if decoder.is_contiguous() or not view.is_contiguous():
        return _adam(layer.parameters(), lr), lambda: None
    latent_major = nn.Parameter(view)  # shares the decoder's storage
    optimizer = _adam([latent_major if p is decoder else p for p in layer.parameters()], lr)

    def share_gradients() -> None:
        latent_major.grad = None if decoder.grad is None else decoder.grad.t()

    return optimizer, share_gradients


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where torch has a fused kernel for the parameters' device (CPU and CUDA: ~10x
    faster on CPU than the default for-each version); the plain one elsewhere."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # pragma: no cover - devices without the kernel
        return torch.optim.Adam(params, lr=lr)
