"""Feature layers: the one place that knows what "linear", "nonneg", "sae" and "topk" mean.

A feature layer maps the backbone's pooled vector ``x`` of shape ``[batch, input_dim]`` to the
features a head reads, ``[batch, feature_dim]``, and returns the auxiliary loss terms it wants
minimised next to the task loss (unweighted; the layer's ``loss_weights`` say how to weight them).
Every layer is built from one typed, validated :class:`FeatureLayerSettings`, whose defaults are the
only ones (:class:`~.configuration.MonoSemanticConfig` takes its feature-layer defaults from it).

What a kind *is* lives on its class, not in lists elsewhere: ``is_sparse_autoencoder`` (``sae``,
``topk``: the classes in :mod:`.sae`, which also own their decoder renormalisation and dead-latent
resampling; ``jumprelu`` and ``gated`` in :mod:`.jumprelu_sae` and :mod:`.gated_sae`) and
``is_contrastive_projector`` (``linear``, ``nonneg``); :func:`feature_layer_kinds`
lists the registered kinds with given attributes and :func:`feature_layer_class` checks one.

Adding a fifth kind takes one class and one registry line::

    @register_feature_layer("gelu")
    class GeluFeatures(LinearFeatures):
        def forward(self, x):
            return torch.nn.functional.gelu(self.project(x)), {}

This module imports nothing else from the package, not even :mod:`.sae`: every kind registers itself
one way, with :func:`register_feature_layer` where its class is defined, and the modules that read the
registry (:mod:`.configuration`, :mod:`.modeling`) import :mod:`.sae` so that ``"sae"`` and ``"topk"``
are there. The config validates ``feature_layer`` against :data:`FEATURE_LAYERS`, and the models build
layers through :func:`build_feature_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FEATURE_LAYERS",
    "NONNEG_ACTIVATIONS",
    "SAE_INPUT_NORMALIZATIONS",
    "FeatureLayer",
    "FeatureLayerSettings",
    "NONNEG_ORDERS",
    "LinearFeatures",
    "NonNegativeFeatures",
    "activation_loss",
    "build_feature_layer",
    "feature_layer_class",
    "feature_layer_kinds",
    "register_feature_layer",
    "rep_relu",
]

#: name -> class; filled by :func:`register_feature_layer`.
FEATURE_LAYERS: dict[str, type[FeatureLayer]] = {}


class _RepReLU(torch.autograd.Function):
    """ReLU forward, GELU's derivative backward (the NCL authors' "reparameterised ReLU")."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.relu(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # d/dx [x * Phi(x)] = Phi(x) + x * phi(x): the exact (erf) GELU, as F.gelu's default
        xf = x if x.dtype == torch.float64 else x.float()  # half precision: compute in fp32
        cdf = 0.5 * (1.0 + torch.erf(xf * 0.7071067811865476))
        pdf = torch.exp(-0.5 * xf * xf) * 0.3989422804014327
        return grad_output * (cdf + xf * pdf).to(grad_output.dtype)


def rep_relu(x: torch.Tensor) -> torch.Tensor:
    """Exact ReLU outputs (non-negative, sparse) with the gradient of GELU.

    A unit whose pre-activation is negative for every input gets no gradient through a ReLU and stays
    dead; GELU's derivative is small but not zero there, so the unit can come back. This is the
    default non-negativity of the NCL authors' CIFAR configs (``non_neg=rep_relu`` in PKU-ML/non_neg).

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 1.5], requires_grad=True)
        >>> y = rep_relu(x)
        >>> torch.equal(y, torch.relu(x)), bool((torch.autograd.grad(y.sum(), x)[0] != 0).all())
        (True, True)
    """
    return _RepReLU.apply(x)


#: non-negativity functions for ``nonneg`` (NCL uses ``relu``; ``rep_relu``: ReLU with GELU's gradient).
NONNEG_ACTIVATIONS: dict[str, Any] = {
    "relu": F.relu,
    "rep_relu": rep_relu,
    "softplus": F.softplus,
    "abs": torch.abs,
}

#: when an SAE L2-normalises its input: while fitting and encoding, only while fitting, or never
SAE_INPUT_NORMALIZATIONS = ("always", "fit", "never")

#: where ``nonneg``'s non-negativity sits: ``"plain"`` on the projector output (P2's order);
#: ``"authors"`` between two L2 normalisations, normalise -> activation -> normalise (the order of
#: PKU-ML/Beyond_Interpretability's NCL: with ``rep_relu`` each coordinate sits near ``1/sqrt(F)``,
#: where GELU's slope is ~0.5, so units whose pre-activation turned negative still learn)
NONNEG_ORDERS = ("plain", "authors")

# Denominators below this are treated as zero (all-zero inputs must not produce NaN).
EPS = 1e-8


def invalid_value(name: str, value: Any, allowed: str) -> ValueError:
    """The one wording of a bad setting: its name, the value given and what is allowed."""
    return ValueError(f"{name}={value!r} is not valid; allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class FeatureLayerSettings:
    """The typed, validated settings a feature layer is built from, and the one set of their defaults.

    :class:`~.configuration.MonoSemanticConfig` takes the defaults of its fields of the same names
    from here and hands its values over with :meth:`from_config`; code that builds a layer without a
    model config (the cached route) makes the settings directly.

    Args:
        feature_dim: width of the feature layer's output.
        projector_hidden_dim: if set, ``linear``/``nonneg`` use a two-layer MLP projector
            ``input -> projector_hidden_dim -> feature_dim`` (SimCLR/NCL).
        nonneg_activation: the non-negativity of ``nonneg``, a key of :data:`NONNEG_ACTIVATIONS`.
        nonneg_order: where ``nonneg`` applies it, one of :data:`NONNEG_ORDERS` (``"authors"``:
            ``normalize(activation(normalize(projector(x))))``, unit-norm outputs).
        topk: active latents per input of ``topk`` (``None``: :meth:`default_topk`).
        sparsity_weight: weight of the L1 term of ``sae``.
        reconstruction_weight: weight of the reconstruction term of ``sae``/``topk``.
        sae_normalize_input: when ``sae``/``topk`` L2-normalise their input, one of
            :data:`SAE_INPUT_NORMALIZATIONS`: ``"always"`` (fitting and encoding; ``True`` means this,
            the default, so older checkpoints load unchanged), ``"fit"`` (only while fitting: the
            reconstruction loss, the fitting kernel, dead-latent resampling and explained variance
            read the normalised vector, but the codes a head reads encode the *raw* vector, so they
            scale with its norm -- the Beyond-Interpretability authors' probe, which trains the SAE on
            ``F.normalize(z)`` and encodes the un-normalised projector output) or ``"never"``
            (``False`` means this).
        activation_loss_weight: weight of ``nonneg``'s ``activation_loss`` term,
            ``-mean_j mean_batch |z_j|`` on the L2-normalised output: a reward for active units against
            NCL's collapse onto a few of them (the Beyond-Interpretability authors' NCL adds it with
            weight 1; ``0`` leaves the term out).

    Example:
        >>> settings = FeatureLayerSettings(feature_dim=64)
        >>> settings.resolved_topk, build_feature_layer(settings, input_dim=16, kind="topk").k
        (8, 8)
        >>> FeatureLayerSettings(feature_dim=64, nonneg_activation="gelu")
        Traceback (most recent call last):
        ...
        ValueError: nonneg_activation='gelu' is not valid; allowed: 'relu', 'rep_relu', 'softplus', 'abs'
    """

    feature_dim: int
    projector_hidden_dim: int | None = None
    nonneg_activation: str = "relu"
    nonneg_order: str = "plain"
    topk: int | None = None
    sparsity_weight: float = 1e-3
    reconstruction_weight: float = 1.0
    sae_normalize_input: bool | str = True
    activation_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.feature_dim) or self.feature_dim <= 0:
            raise invalid_value("feature_dim", self.feature_dim, "a positive integer")
        if self.projector_hidden_dim is not None and (
            not _is_int(self.projector_hidden_dim) or self.projector_hidden_dim <= 0
        ):
            raise invalid_value(
                "projector_hidden_dim", self.projector_hidden_dim, "None or a positive integer"
            )
        if not isinstance(self.nonneg_activation, str) or self.nonneg_activation not in NONNEG_ACTIVATIONS:
            raise invalid_value(
                "nonneg_activation", self.nonneg_activation, ", ".join(map(repr, NONNEG_ACTIVATIONS))
            )
        if not isinstance(self.nonneg_order, str) or self.nonneg_order not in NONNEG_ORDERS:
            raise invalid_value("nonneg_order", self.nonneg_order, ", ".join(map(repr, NONNEG_ORDERS)))
        if self.topk is not None and (not _is_int(self.topk) or not 1 <= self.topk <= self.feature_dim):
            raise invalid_value("topk", self.topk, f"an integer in [1, feature_dim={self.feature_dim}]")
        for name in ("sparsity_weight", "reconstruction_weight", "activation_loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:
                raise invalid_value(name, value, "a number >= 0")
        if not isinstance(self.sae_normalize_input, bool) and self.sae_normalize_input not in (
            SAE_INPUT_NORMALIZATIONS
        ):
            raise invalid_value(
                "sae_normalize_input",
                self.sae_normalize_input,
                f"True, False, {', '.join(map(repr, SAE_INPUT_NORMALIZATIONS))}",
            )

    @classmethod
    def from_config(cls, config: Any) -> FeatureLayerSettings:
        """The settings held by ``config``: a :class:`~.configuration.MonoSemanticConfig` (or any object
        with these attributes; those it lacks take the defaults above). Settings pass through.

        Example:
            >>> from hf_monosem import MonoSemanticConfig
            >>> from transformers import BertConfig
            >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(hidden_size=32, num_hidden_layers=1,
            ...     num_attention_heads=2, intermediate_size=37), feature_layer="sae", sparsity_weight=0.01)
            >>> s = FeatureLayerSettings.from_config(cfg)
            >>> s.feature_dim, s.sparsity_weight, s.reconstruction_weight
            (128, 0.01, 1.0)
        """
        if isinstance(config, cls):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})

    @property
    def sae_input_normalization(self) -> str:
        """``sae_normalize_input`` as one of :data:`SAE_INPUT_NORMALIZATIONS` (``True`` -> ``"always"``,
        ``False`` -> ``"never"``).

        Example:
            >>> FeatureLayerSettings(feature_dim=8).sae_input_normalization
            'always'
            >>> FeatureLayerSettings(feature_dim=8, sae_normalize_input="fit").sae_input_normalization
            'fit'
        """
        value = self.sae_normalize_input
        if isinstance(value, bool):
            return "always" if value else "never"
        return value

    @staticmethod
    def default_topk(feature_dim: int) -> int:
        """The paper's ratio: ``feature_dim // 8`` active latents (at least one)."""
        return max(1, int(feature_dim) // 8)

    @property
    def resolved_topk(self) -> int:
        """``topk``, or :meth:`default_topk` of ``feature_dim`` when it is ``None``."""
        return self.topk if self.topk is not None else self.default_topk(self.feature_dim)


def register_feature_layer(name: str):
    """Class decorator that makes a :class:`FeatureLayer` available as ``feature_layer=name``."""

    def decorator(cls: type[FeatureLayer]) -> type[FeatureLayer]:
        if name in FEATURE_LAYERS:
            raise ValueError(
                f"feature layer {name!r} is already registered by {FEATURE_LAYERS[name].__name__}"
            )
        cls.kind = name
        FEATURE_LAYERS[name] = cls
        return cls

    return decorator


def feature_layer_kinds(**attributes: bool) -> list[str]:
    """The registered kinds whose classes have the given ``is_...`` attributes, in registration order.

    Example:
        >>> (feature_layer_kinds(is_sparse_autoencoder=True),
        ...  feature_layer_kinds(is_contrastive_projector=True))
        (['sae', 'topk', 'gated', 'jumprelu'], ['linear', 'nonneg'])
    """
    unknown = [name for name in attributes if not name.startswith("is_") or not hasattr(FeatureLayer, name)]
    if unknown:
        flags = sorted(name for name in dir(FeatureLayer) if name.startswith("is_"))
        raise ValueError(
            f"{', '.join(unknown)}: not a FeatureLayer kind attribute; allowed: {', '.join(flags)}"
        )
    return [
        kind
        for kind, cls in FEATURE_LAYERS.items()
        if all(getattr(cls, name) == value for name, value in attributes.items())
    ]


def feature_layer_class(kind: str, **attributes: bool) -> type[FeatureLayer]:
    """The registered class of ``kind``, which must have the given ``is_...`` attributes.

    Example:
        >>> feature_layer_class("topk", is_sparse_autoencoder=True).__name__
        'TopKSparseAutoencoderFeatures'
        >>> feature_layer_class("nonneg", is_sparse_autoencoder=True)
        Traceback (most recent call last):
        ...
        ValueError: feature_layer='nonneg' is not valid; allowed: 'sae', 'topk', 'gated', 'jumprelu' (the kinds with is_sparse_autoencoder=True)
    """  # noqa: E501
    allowed = feature_layer_kinds(**attributes)
    if not isinstance(kind, str) or kind not in allowed:
        which = ", ".join(f"{name}={value}" for name, value in attributes.items())
        raise invalid_value(
            "feature_layer",
            kind,
            ", ".join(map(repr, allowed)) + (f" (the kinds with {which})" if which else ""),
        )
    return FEATURE_LAYERS[kind]


def build_feature_layer(config: Any, input_dim: int, kind: str | None = None) -> FeatureLayer:
    """Build a feature layer for inputs of width ``input_dim``.

    ``config`` is a :class:`~.configuration.MonoSemanticConfig` (the layer is its ``feature_layer``)
    or a :class:`FeatureLayerSettings` (then say which ``kind``; it also overrides the config's).

    Example:
        >>> from hf_monosem import MonoSemanticConfig
        >>> from transformers import BertConfig
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(hidden_size=32, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=37), feature_layer="topk", feature_dim=64, topk=8)
        >>> layer = build_feature_layer(cfg, input_dim=32)
        >>> feats, aux = layer(torch.randn(4, 32))
        >>> feats.shape, sorted(aux)
        (torch.Size([4, 64]), ['reconstruction_loss'])
        >>> type(build_feature_layer(FeatureLayerSettings(feature_dim=64), 32, kind="nonneg")).__name__
        'NonNegativeFeatures'
    """
    kind = kind if kind is not None else getattr(config, "feature_layer", None)
    if kind is None:
        raise ValueError(
            f"{type(config).__name__} names no feature layer: pass kind=, one of "
            f"{', '.join(map(repr, FEATURE_LAYERS))}"
        )
    cls = feature_layer_class(kind)
    return cls(input_dim, cls.settings_class.from_config(config))


class FeatureLayer(nn.Module):
    """Base class. Subclasses implement ``forward(x) -> (features, aux_losses)``.

    ``loss_weights`` maps each auxiliary term's name to its weight in the total loss. The class
    attributes below describe the kind, so that code elsewhere asks the class instead of keeping lists.
    """

    kind: ClassVar[str] = ""
    #: a sparse autoencoder (codes = features, reconstruction loss): what ``fit_sae`` fits post hoc
    is_sparse_autoencoder: ClassVar[bool] = False
    #: a projection ``self.project`` of the input: what ``fit_contrastive_projector`` trains (SimCLR/NCL)
    is_contrastive_projector: ClassVar[bool] = False
    #: what :func:`build_feature_layer` makes from a config (a kind may extend it with its own fields)
    settings_class: ClassVar[type[FeatureLayerSettings]] = FeatureLayerSettings

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__()
        # anything else (a MonoSemanticConfig, ...) is read into settings, i.e. validated, here
        self.settings = self.settings_class.from_config(settings)
        self.input_dim = int(input_dim)
        self.feature_dim = self.settings.feature_dim
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
        >>> layer = LinearFeatures(16, FeatureLayerSettings(feature_dim=64))
        >>> layer(torch.randn(2, 16))[0].shape
        torch.Size([2, 64])
    """

    is_contrastive_projector = True

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.project = _projector(input_dim, self.feature_dim, self.settings.projector_hidden_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.project(x), {}


@register_feature_layer("nonneg")
class NonNegativeFeatures(LinearFeatures):
    """The same projection followed by a non-negativity (NCL): sparse, near one-class-per-dimension.

    Example:
        >>> settings = FeatureLayerSettings(feature_dim=64, nonneg_activation="softplus")
        >>> bool((NonNegativeFeatures(16, settings)(torch.randn(2, 16))[0] >= 0).all())
        True
    """

    def __init__(self, input_dim: int, settings: FeatureLayerSettings):
        super().__init__(input_dim, settings)
        self.activation_name = self.settings.nonneg_activation
        self.activation = NONNEG_ACTIVATIONS[self.activation_name]
        if self.settings.activation_loss_weight:
            self.loss_weights["activation_loss"] = float(self.settings.activation_loss_weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.settings.nonneg_order == "authors":
            features = F.normalize(self.activation(F.normalize(self.project(x), dim=-1)), dim=-1)
        else:
            features = self.activation(self.project(x))
        if not self.settings.activation_loss_weight:
            return features, {}
        return features, {"activation_loss": activation_loss(features)}


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """``-mean_j mean_batch |z_j|`` of the L2-normalised features: lower when more units are active.

    Unit-norm rows have ``sum_j z_j^2 = 1``, so the mean absolute value is largest when the mass is
    spread over many units (``1/sqrt(F)`` each) and smallest when it sits on one (``1/F``).

    Example:
        >>> one_hot, spread = torch.eye(4)[:1], torch.ones(1, 4)
        >>> float(activation_loss(one_hot)), float(activation_loss(spread))
        (-0.25, -0.5)
    """
    z = features if features.dtype == torch.float64 else features.float()
    return -F.normalize(z, dim=-1).abs().mean()
