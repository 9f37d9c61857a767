"""Sparse autoencoder feature layers (``sae``: ReLU + L1, ``topk``: TopK) and their upkeep.

The codes are the features. :class:`SparseAutoencoder` holds what both kinds share: the pre-bias,
encoder, unit-norm decoder and normalised-MSE reconstruction, and the maintenance a fitting loop
needs between optimiser steps (:meth:`~SparseAutoencoder.normalize_decoder_`,
:meth:`~SparseAutoencoder.resample_dead_`, :meth:`~SparseAutoencoder.explained_variance`), so that
no code outside the class writes its weights.

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init

from .feature_layers import _EPS, FeatureLayer, FeatureLayerSettings, register_feature_layer

__all__ = ["SparseAutoencoder", "SparseAutoencoderFeatures", "TopKSparseAutoencoderFeatures"]

# Anthropic's resampling scales new encoder rows to this fraction of the mean alive encoder norm
_RESAMPLE_ENCODER_SCALE = 0.2


class SparseAutoencoder(FeatureLayer):
    """Shared parts of the ReLU and TopK SAEs: pre-bias, encoder, unit-norm decoder, reconstruction.

    Inputs are optionally L2-normalised first (the paper's post-hoc SAE reads the normalised
    projector output), which also makes the losses scale-free. Subclasses implement :meth:`encode`.
    """

    is_sparse_autoencoder = True

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.normalize_input = self.settings.sae_normalize_input
        self.pre_bias = nn.Parameter(torch.zeros(input_dim))
        self.encoder = nn.Linear(input_dim, self.feature_dim)
        self.decoder = nn.Linear(self.feature_dim, input_dim, bias=False)
        self.loss_weights = {"reconstruction_loss": float(self.settings.reconstruction_weight)}

    @torch.no_grad()
    def reset_parameters_like_sae(self) -> None:
        """Decoder columns of unit norm, encoder = decoder transpose (a standard SAE initialisation).

        Uses ``transformers.initialization`` so that weights already loaded from a checkpoint are
        left alone when ``from_pretrained`` initialises missing keys.
        """
        decoder = torch.randn_like(self.decoder.weight, device="cpu" if self.decoder.weight.is_meta else None)
        decoder = decoder / decoder.norm(dim=0, keepdim=True).clamp_min(_EPS)
        hf_init.copy_(self.decoder.weight, decoder)
        hf_init.copy_(self.encoder.weight, decoder.t().contiguous())
        hf_init.zeros_(self.encoder.bias)
        hf_init.zeros_(self.pre_bias)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # SAE arithmetic in fp32: reconstruction errors are small differences of large numbers.
        x = x.float()
        if self.normalize_input:
            x = F.normalize(x, dim=-1, eps=_EPS)
        return x

    def encode_preactivations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x - self.pre_bias, self.encoder.weight.float(), self.encoder.bias.float())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.linear(codes, self.decoder.weight.float()) + self.pre_bias

    @staticmethod
    def normalized_mse(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-example squared error divided by the example's squared norm, averaged."""
        err = (reconstruction - x).pow(2).sum(-1)
        return (err / x.pow(2).sum(-1).clamp_min(_EPS)).mean()

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Autocast would run the encoder/decoder matmuls in bf16/fp16; keep the SAE in fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.prepare_input(x)
            codes = self.encode(x)
            aux = {"reconstruction_loss": self.normalized_mse(x, self.decode(codes))}
            aux.update(self.extra_losses(codes))
        return codes, aux

    def extra_losses(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    # -- upkeep during fitting -------------------------------------------------------------------

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder column to unit norm, in place (after each optimiser step).

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> sae.normalize_decoder_()
            >>> torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(32))
            True
        """
        norms = self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(_EPS)
        self.decoder.weight.div_(norms)

    @torch.no_grad()
    def resample_dead_(
        self,
        dead: torch.Tensor,
        candidates: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> int:
        """Re-initialise the ``dead`` latents toward inputs the SAE reconstructs badly (Anthropic, 2023).

        Following "Towards Monosemanticity" (Bricken et al., 2023, neuron resampling): each of the
        ``candidates`` (raw inputs) is drawn with probability proportional to its squared
        reconstruction loss (with ``generator``); a dead latent's decoder column becomes the drawn
        input (centred by the pre-bias, unit norm), its encoder row the same direction scaled to
        0.2 x the mean encoder-row norm of the live latents, its encoder bias zero. With the
        ``optimizer`` given, the Adam moments (``exp_avg``, ``exp_avg_sq``) of those rows/columns are
        reset too, so stale statistics do not undo the change. Returns how many latents were resampled.

        Example:
            >>> sae = SparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32))
            >>> dead = torch.zeros(32, dtype=torch.bool); dead[:3] = True
            >>> sae.resample_dead_(dead, torch.randn(64, 16), generator=torch.Generator().manual_seed(0))
            3
        """
        idx = dead.nonzero().flatten()
        if idx.numel() == 0:
            return 0
        x = self.prepare_input(candidates)
        err = (self.decode(self.encode(x)) - x).pow(2).sum(-1)
        weights = err.pow(2).double().cpu()
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            weights = torch.ones_like(weights)
        picks = torch.multinomial(
            weights, idx.numel(), replacement=idx.numel() > weights.numel(), generator=generator
        )
        directions = x[picks.to(x.device)] - self.pre_bias
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(_EPS)

        alive = ~dead
        enc_norm = self.encoder.weight[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
        self.decoder.weight[:, idx] = directions.t().to(self.decoder.weight.dtype)
        self.encoder.weight[idx] = (directions * enc_norm * _RESAMPLE_ENCODER_SCALE).to(self.encoder.weight.dtype)
        self.encoder.bias[idx] = 0.0
        if optimizer is not None:
            for param, latent_dim in ((self.encoder.weight, 0), (self.encoder.bias, 0), (self.decoder.weight, 1)):
                state = optimizer.state.get(param, {})
                for name in ("exp_avg", "exp_avg_sq"):
                    if name in state:
                        state[name].index_fill_(latent_dim, idx.to(state[name].device), 0.0)
        return int(idx.numel())

    @torch.no_grad()
    def explained_variance(self, features: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
        """``1 - ||x - x_hat||^2 / ||x - mean(x)||^2`` over ``features`` (in the SAE's input space, i.e.
        after its optional L2 normalisation), plus ``l0`` (mean active latents per input) and
        ``dead_fraction`` (latents active on none of the inputs); computed in chunks of ``batch_size``.

        Example:
            >>> sae = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=32, topk=4))
            >>> stats = sae.explained_variance(torch.randn(100, 16))
            >>> sorted(stats), stats["l0"]
            (['dead_fraction', 'explained_variance', 'l0'], 4.0)
        """
        device = features.device
        err = torch.zeros((), dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        active = torch.zeros((), dtype=torch.float64, device=device)
        fired = torch.zeros(self.feature_dim, dtype=torch.bool, device=device)
        prepared = torch.cat([self.prepare_input(chunk) for chunk in features.split(batch_size)])
        mean = prepared.mean(0, keepdim=True)
        for x in prepared.split(batch_size):
            codes = self.encode(x)
            err += (self.decode(codes) - x).pow(2).sum().double()
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


#: the name this base had before it became public (kept for old imports)
_SparseAutoencoderBase = SparseAutoencoder


@register_feature_layer("sae")
class SparseAutoencoderFeatures(SparseAutoencoder):
    """ReLU sparse autoencoder with an L1 penalty; its non-negative codes are the features.

    The L1 term weights each code by its decoder column's norm, so the penalty cannot be dodged by
    shrinking codes and growing the decoder.

    Example:
        >>> settings = FeatureLayerSettings(feature_dim=64, sparsity_weight=1e-3)
        >>> codes, aux = SparseAutoencoderFeatures(16, settings)(torch.randn(2, 16))
        >>> bool((codes >= 0).all()), sorted(aux)
        (True, ['reconstruction_loss', 'sparsity_loss'])
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.loss_weights["sparsity_loss"] = float(self.settings.sparsity_weight)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encode_preactivations(x))

    def extra_losses(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.decoder.weight.float()
        # same value as weight.norm(dim=0), about 3x cheaper forward+backward on CPU
        decoder_norms = (weight * weight).sum(0).clamp_min(1e-12).sqrt()
        return {"sparsity_loss": (codes * decoder_norms).sum(-1).mean()}


@register_feature_layer("topk")
class TopKSparseAutoencoderFeatures(SparseAutoencoder):
    """TopK sparse autoencoder: keep the ``topk`` largest pre-activations (then ReLU), zero the rest.

    Sparsity is set by construction, so there is no L1 term (as in the paper's post-hoc SAE:
    k = 256 of 2048 latents, normalised-MSE loss). ``topk=None`` means ``feature_dim // 8``.

    Example:
        >>> codes, _ = TopKSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=64, topk=8))(torch.randn(2, 16))
        >>> bool(((codes != 0).sum(-1) <= 8).all())
        True
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.k = self.settings.resolved_topk

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encode_preactivations(x)
        values, indices = pre.topk(self.k, dim=-1)
        # scatter keeps the op vectorised and differentiable w.r.t. the kept values
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
