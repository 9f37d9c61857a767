"""The gated sparse autoencoder (``gated``): SAELens' ``gated`` architecture (Rajamanoharan et al. 2024,
"Improving Dictionary Learning with Gated Sparse Autoencoders").

Which latents fire and how strongly are two paths over one encoder matrix ``W``: a gate
``W (x - pre_bias) + b_gate > 0`` (our ``encoder``) and a magnitude ``relu(exp(r_mag) * W (x - pre_bias)
+ b_mag)``; ``codes = gate * magnitude``. These are the codes of SAELens' ``GatedSAE.encode``, so its
checkpoints load as this layer (:mod:`.sae_formats`).

Fitting adds the paper's two gate terms, which the codes cannot give (the gate is a step): the
decoder-norm-weighted L1 of ``relu(gate pre-activations)`` (``sparsity_loss``, weight
``sparsity_weight``) and the reconstruction from those alone (``gate_reconstruction_loss``, normalised
like ``reconstruction_loss`` and weighted like it), as SAELens' ``GatedTrainingSAE`` computes them.

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init

from .feature_layers import FeatureLayerSettings, register_feature_layer
from .sae import SparseAutoencoder

__all__ = ["GatedSparseAutoencoderFeatures"]


@register_feature_layer("gated")
class GatedSparseAutoencoderFeatures(SparseAutoencoder):
    """Gated sparse autoencoder: a gate path decides which latents fire, a magnitude path how strongly.

    Example:
        >>> sae = GatedSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=64))
        >>> codes, aux = sae(torch.randn(2, 16))
        >>> sorted(aux), bool((codes >= 0).all())
        (['gate_reconstruction_loss', 'reconstruction_loss', 'sparsity_loss'], True)
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        # the magnitude path: W scaled per latent by exp(r_mag), its own bias (both zero at the start)
        self.r_mag = nn.Parameter(torch.zeros(self.feature_dim))
        self.b_mag = nn.Parameter(torch.zeros(self.feature_dim))
        self.loss_weights["sparsity_loss"] = float(self.settings.sparsity_weight)
        self.loss_weights["gate_reconstruction_loss"] = float(self.settings.reconstruction_weight)

    @torch.no_grad()
    def reset_parameters_like_sae(self) -> None:
        super().reset_parameters_like_sae()
        hf_init.zeros_(self.r_mag)
        hf_init.zeros_(self.b_mag)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - self.pre_bias
        weight = self.encoder.weight.float()
        gate = F.linear(centered, weight, self.encoder.bias.float()) > 0
        magnitude = F.linear(centered, weight * self.r_mag.float().exp().unsqueeze(-1), self.b_mag.float())
        return gate * F.relu(magnitude)

    def input_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        gate = F.relu(self.encode_preactivations(x))
        weight = self.decoder.weight.float()
        decoder_norms = (weight * weight).sum(0).clamp_min(1e-12).sqrt()
        return {
            "sparsity_loss": (gate * decoder_norms).sum(-1).mean(),
            "gate_reconstruction_loss": self.normalized_mse(x, self.decode(gate)),
        }
