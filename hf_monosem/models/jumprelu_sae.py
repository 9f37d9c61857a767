"""The JumpReLU sparse autoencoder (``jumprelu``): SAELens' ``jumprelu`` architecture, Gemma Scope's SAEs.

A latent fires when its pre-activation clears its own learned threshold, and then passes it unchanged:
``codes = relu(pre) * (pre > threshold)``, ``pre = W (x - pre_bias) + b`` (Rajamanoharan et al. 2024,
"Jumping Ahead"). The codes are those of SAELens' ``JumpReLUSAE.encode``, so its checkpoints load as
this layer (:mod:`.sae_formats`).

Fitting follows DeepMind's recipe as SAELens implements it: the step function gets a straight-through
gradient with a rectangle kernel of width :data:`BANDWIDTH` (to the threshold only), and the sparsity
term (``sparsity_loss``, weight ``sparsity_weight``) is the L0 of the codes through the same estimator.

Same-folder imports only (remote-code export copies this folder next to the weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as hf_init

from .feature_layers import FeatureLayerSettings, register_feature_layer
from .sae import SparseAutoencoder

__all__ = ["JumpReLUSparseAutoencoderFeatures"]

#: width of the straight-through estimator's rectangle kernel, and the threshold a fresh layer starts
#: from: SAELens' defaults (``jumprelu_bandwidth``, ``jumprelu_init_threshold``)
BANDWIDTH = 0.05
INIT_THRESHOLD = 0.01


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """``relu(pre) * (pre > threshold)`` (SAELens' order: equal to ``pre * (pre > threshold)`` for a
    threshold >= 0, and still non-negative for a negative one); the threshold's gradient through the
    rectangle kernel."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        return pre.clamp_min(0) * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre, threshold = ctx.saved_tensors
        kernel = _rectangle((pre - threshold) / BANDWIDTH)
        grad_threshold = -(threshold / BANDWIDTH * kernel * grad).reshape(-1, pre.shape[-1]).sum(0)
        return ((pre > threshold) & (pre > 0)) * grad, grad_threshold


class _Step(torch.autograd.Function):
    """``pre > threshold`` as 0/1; the threshold's gradient through the rectangle kernel."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        pre, threshold = ctx.saved_tensors
        kernel = _rectangle((pre - threshold) / BANDWIDTH)
        return None, -(kernel * grad / BANDWIDTH).reshape(-1, pre.shape[-1]).sum(0)


@register_feature_layer("jumprelu")
class JumpReLUSparseAutoencoderFeatures(SparseAutoencoder):
    """JumpReLU sparse autoencoder: a latent passes its pre-activation when it clears its threshold.

    Example:
        >>> sae = JumpReLUSparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=64))
        >>> codes, aux = sae(torch.randn(2, 16))
        >>> sorted(aux), bool(((codes == 0) | (codes > sae.threshold)).all())
        (['reconstruction_loss', 'sparsity_loss'], True)
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.threshold = nn.Parameter(torch.full((self.feature_dim,), INIT_THRESHOLD))
        self.loss_weights["sparsity_loss"] = float(self.settings.sparsity_weight)

    @torch.no_grad()
    def reset_parameters_like_sae(self) -> None:
        super().reset_parameters_like_sae()
        hf_init.constant_(self.threshold, INIT_THRESHOLD)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return _JumpReLU.apply(self.encode_preactivations(x), self.threshold.float())

    def input_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # the L0 of the codes, through the step's straight-through estimator (DeepMind's "step" mode)
        fired = _Step.apply(self.encode_preactivations(x), self.threshold.float())
        return {"sparsity_loss": fired.sum(-1).mean()}
