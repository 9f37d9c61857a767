"""Feature layers: the one place that knows what "linear", "nonneg", "sae" and "topk" mean.

A feature layer maps the backbone's pooled vector ``x`` of shape ``[batch, input_dim]`` to the
features a head reads, ``[batch, feature_dim]``, and returns the auxiliary loss terms it wants
minimised next to the task loss (unweighted; the layer's ``loss_weights`` say how to weight them).

Adding a fifth kind takes one class and one registry line::

    @register_feature_layer("gelu")
    class GeluFeatures(LinearFeatures):
        def forward(self, x):
            return torch.nn.functional.gelu(self.project(x)), {}

This module imports nothing else from the package: the config validates ``feature_layer`` against
:data:`FEATURE_LAYERS`, and the models build layers through :func:`build_feature_layer`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init

__all__ = [
    "FEATURE_LAYERS",
    "NONNEG_ACTIVATIONS",
    "FeatureLayer",
    "LinearFeatures",
    "NonNegativeFeatures",
    "SparseAutoencoderFeatures",
    "TopKSparseAutoencoderFeatures",
    "build_feature_layer",
    "register_feature_layer",
]

#: name -> class; filled by :func:`register_feature_layer`.
FEATURE_LAYERS: dict[str, type[FeatureLayer]] = {}

#: non-negativity functions for ``nonneg`` (NCL uses ``relu``).
NONNEG_ACTIVATIONS: dict[str, Any] = {"relu": F.relu, "softplus": F.softplus, "abs": torch.abs}

# Denominators below this are treated as zero (all-zero inputs must not produce NaN).
_EPS = 1e-8


def register_feature_layer(name: str):
    """Class decorator that makes a :class:`FeatureLayer` available as ``feature_layer=name``."""

    def decorator(cls: type[FeatureLayer]) -> type[FeatureLayer]:
        if name in FEATURE_LAYERS:
            raise ValueError(f"feature layer {name!r} is already registered by {FEATURE_LAYERS[name].__name__}")
        cls.kind = name
        FEATURE_LAYERS[name] = cls
        return cls

    return decorator


def build_feature_layer(config: Any, input_dim: int) -> FeatureLayer:
    """Build the layer named by ``config.feature_layer`` for inputs of width ``input_dim``.

    Example:
        >>> from hf_monosem import MonoSemanticConfig
        >>> from transformers import BertConfig
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=37), feature_layer="topk", feature_dim=64, topk=8)
        >>> layer = build_feature_layer(cfg, input_dim=32)
        >>> feats, aux = layer(torch.randn(4, 32))
        >>> feats.shape, sorted(aux)
        (torch.Size([4, 64]), ['reconstruction_loss'])
    """
    try:
        cls = FEATURE_LAYERS[config.feature_layer]
    except KeyError:
        raise ValueError(
            f"feature_layer={config.feature_layer!r} is not one of the registered kinds {sorted(FEATURE_LAYERS)}"
        ) from None
    return cls(input_dim=input_dim, config=config)


class FeatureLayer(nn.Module):
    """Base class. Subclasses implement ``forward(x) -> (features, aux_losses)``.

    ``loss_weights`` maps each auxiliary term's name to its weight in the total loss.
    """

    kind: ClassVar[str] = ""

    def __init__(self, input_dim: int, config: Any):
        super().__init__()
        self.input_dim = int(input_dim)
        self.feature_dim = int(config.feature_dim)
        self.loss_weights: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def weighted_aux_loss(self, aux_losses: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Sum of the auxiliary terms times their weights (``None`` when there are none)."""
        total = None
        for name, value in aux_losses.items():
            weight = self.loss_weights.get(name, 0.0)
            if weight:
                total = weight * value if total is None else total + weight * value
        return total

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, input_dim={self.input_dim}, feature_dim={self.feature_dim}"


def _projector(input_dim: int, feature_dim: int, hidden_dim: int | None) -> nn.Module:
    """A linear map, or the SimCLR-style two-layer MLP projector when ``hidden_dim`` is set.

    The paper's heads read the *projector output* (512 -> 16384 -> 2048 on ResNet-18). We omit the
    projector's BatchNorm so a feature never depends on the other samples in its batch (batch-size
    1 inference and multi-process training then need no SyncBatchNorm).
    """
    if not hidden_dim:
        return nn.Linear(input_dim, feature_dim)
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim))


@register_feature_layer("linear")
class LinearFeatures(FeatureLayer):
    """The polysemantic baseline: a width-``feature_dim`` projection, nothing else.

    Example:
        >>> from types import SimpleNamespace
        >>> layer = LinearFeatures(16, SimpleNamespace(feature_dim=64, projector_hidden_dim=None))
        >>> layer(torch.randn(2, 16))[0].shape
        torch.Size([2, 64])
    """

    def __init__(self, input_dim: int, config: Any):
        super().__init__(input_dim, config)
        self.project = _projector(input_dim, self.feature_dim, getattr(config, "projector_hidden_dim", None))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.project(x), {}


@register_feature_layer("nonneg")
class NonNegativeFeatures(LinearFeatures):
    """The same projection followed by a non-negativity (NCL): sparse, near one-class-per-dimension.

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(feature_dim=64, projector_hidden_dim=None, nonneg_activation="relu")
        >>> bool((NonNegativeFeatures(16, cfg)(torch.randn(2, 16))[0] >= 0).all())
        True
    """

    def __init__(self, input_dim: int, config: Any):
        super().__init__(input_dim, config)
        self.activation_name = getattr(config, "nonneg_activation", "relu")
        self.activation = NONNEG_ACTIVATIONS[self.activation_name]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.activation(self.project(x)), {}


class _SparseAutoencoderBase(FeatureLayer):
    """Shared parts of the ReLU and TopK SAEs: pre-bias, encoder, unit-norm decoder, reconstruction.

    The codes are the features. Inputs are optionally L2-normalised first (the paper's post-hoc
    SAE reads the normalised projector output), which also makes the losses scale-free.
    """

    def __init__(self, input_dim: int, config: Any):
        super().__init__(input_dim, config)
        self.normalize_input = bool(getattr(config, "sae_normalize_input", True))
        self.pre_bias = nn.Parameter(torch.zeros(input_dim))
        self.encoder = nn.Linear(input_dim, self.feature_dim)
        self.decoder = nn.Linear(self.feature_dim, input_dim, bias=False)
        self.loss_weights = {"reconstruction_loss": float(getattr(config, "reconstruction_weight", 1.0))}

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


@register_feature_layer("sae")
class SparseAutoencoderFeatures(_SparseAutoencoderBase):
    """ReLU sparse autoencoder with an L1 penalty; its non-negative codes are the features.

    The L1 term weights each code by its decoder column's norm, so the penalty cannot be dodged by
    shrinking codes and growing the decoder.

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(feature_dim=64, sparsity_weight=1e-3, reconstruction_weight=1.0)
        >>> codes, aux = SparseAutoencoderFeatures(16, cfg)(torch.randn(2, 16))
        >>> bool((codes >= 0).all()), sorted(aux)
        (True, ['reconstruction_loss', 'sparsity_loss'])
    """

    def __init__(self, input_dim: int, config: Any):
        super().__init__(input_dim, config)
        self.loss_weights["sparsity_loss"] = float(getattr(config, "sparsity_weight", 1e-3))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encode_preactivations(x))

    def extra_losses(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.decoder.weight.float()
        # same value as weight.norm(dim=0), about 3x cheaper forward+backward on CPU
        decoder_norms = (weight * weight).sum(0).clamp_min(1e-12).sqrt()
        return {"sparsity_loss": (codes * decoder_norms).sum(-1).mean()}


@register_feature_layer("topk")
class TopKSparseAutoencoderFeatures(_SparseAutoencoderBase):
    """TopK sparse autoencoder: keep the ``topk`` largest pre-activations (then ReLU), zero the rest.

    Sparsity is set by construction, so there is no L1 term (as in the paper's post-hoc SAE:
    k = 256 of 2048 latents, normalised-MSE loss).

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(feature_dim=64, topk=8, reconstruction_weight=1.0)
        >>> codes, _ = TopKSparseAutoencoderFeatures(16, cfg)(torch.randn(2, 16))
        >>> bool(((codes != 0).sum(-1) <= 8).all())
        True
    """

    def __init__(self, input_dim: int, config: Any):
        super().__init__(input_dim, config)
        self.k = int(config.topk)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.encode_preactivations(x)
        values, indices = pre.topk(self.k, dim=-1)
        # scatter keeps the op vectorised and differentiable w.r.t. the kept values
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
