"""``MonoSemanticConfig``: backbone + feature layer + head, validated at construction."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .feature_layers import FeatureLayerSettings, feature_layer_class, invalid_value
from .gated_sae import GatedSparseAutoencoderFeatures  # noqa: F401  (defines and registers "gated")
from .jumprelu_sae import JumpReLUSparseAutoencoderFeatures  # noqa: F401  (defines and registers "jumprelu")
from .sae import SparseAutoencoder  # noqa: F401  (defines and registers the "sae" and "topk" kinds)

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # earlier transformers 5 releases: sub-configs are a plain class attribute
    SubConfigSpec = None

__all__ = [
    "BACKBONE_LOADING_OPTIONS",
    "POOLING_CHOICES",
    "MonoSemanticConfig",
    "backbone_hidden_size",
    "default_pooling",
    "public_name",
]

#: how the backbone's output (or, with ``hidden_layer``, the feature layer's per-token codes) becomes one
#: vector per input.
POOLING_CHOICES = ("cls", "mean", "last", "pooler", "max")

#: ``from_pretrained`` arguments that say how a Hub backbone is fetched and built. The first four also
#: fetch its config; none of them is saved with a checkpoint (a token must never land in config.json).
BACKBONE_LOADING_OPTIONS = (
    "revision",
    "token",
    "trust_remote_code",
    "cache_dir",
    "attn_implementation",
    "dtype",
)
_CONFIG_LOADING_OPTIONS = ("revision", "token", "trust_remote_code", "cache_dir")


def backbone_hidden_size(config: PreTrainedConfig) -> int:
    """Width of the vector the backbone hands to the feature layer (before pooling changes nothing)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "d_model", "n_embd", "embed_dim"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    sizes = getattr(config, "hidden_sizes", None)  # ResNet, ConvNeXt, ... : channels of the last stage
    if sizes:
        return int(sizes[-1])
    raise ValueError(
        f"cannot tell the output width of backbone config {type(config).__name__}: it has none of "
        "hidden_size / d_model / n_embd / embed_dim / hidden_sizes"
    )


def _is_decoder_lm(model_type: str) -> bool:
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def default_pooling(config: PreTrainedConfig) -> str:
    """Per-family pooling: mean over feature maps for conv nets, last non-pad token for decoder LMs,
    the first ([CLS]) token for BERT-like encoders and ViTs."""
    if getattr(config, "hidden_sizes", None) and not hasattr(config, "hidden_size"):
        return "mean"
    if _is_decoder_lm(getattr(config, "model_type", "")):
        return "last"
    return "cls"


def public_name(name_or_path: Any) -> Any:
    """A Hub id unchanged; a local folder or file (absolute, ``./``/``../``/``~`` relative, or existing)
    by its last component, so that saved files never hold a machine path.

    Example:
        >>> public_name("sentence-transformers/all-MiniLM-L6-v2"), public_name("/home/me/models/minilm/")
        ('sentence-transformers/all-MiniLM-L6-v2', 'minilm')
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        return name_or_path
    text = os.path.expanduser(name_or_path)
    if os.path.isabs(text) or name_or_path.startswith((".", "~")) or os.path.exists(text):
        return os.path.basename(os.path.normpath(text))
    return name_or_path


def scrub_local_paths(value: Any) -> Any:
    """``value`` (a config as JSON data) with every backbone path and ``_name_or_path`` of a local folder
    replaced by :func:`public_name` (its last component), recursively; Hub ids are kept.

    Used for every JSON we write next to weights (``config.json`` here, SAE ``cfg.json`` in
    :mod:`.sae_formats`), so no machine path leaves the machine."""
    if isinstance(value, dict):
        return {
            key: public_name(item)
            if key in ("backbone", "_name_or_path", "name_or_path")
            else scrub_local_paths(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [scrub_local_paths(item) for item in value]
    return value


class MonoSemanticConfig(PreTrainedConfig):
    r"""Configuration of a backbone with a (mono- or polysemantic) feature layer and a linear head.

    Poly vs mono differ in ``feature_layer`` only: every kind has the same width and head.

    Args:
        backbone: Hub id or local folder of a transformers backbone. Its config is read at
            construction (from the local Hub cache when offline) and stored in ``backbone_config``;
            its weights are loaded when the model is built, unless ``use_pretrained_backbone=False``.
        backbone_config: a transformers config (or its dict) for a randomly initialised backbone.
        use_pretrained_backbone: load ``backbone``'s weights when building a fresh model.
        backbone_loading_kwargs: how ``backbone`` (a Hub id) is fetched and built, as for
            ``AutoModel.from_pretrained``: any of :data:`BACKBONE_LOADING_OPTIONS` (``revision``,
            ``token``, ``trust_remote_code``, ``cache_dir`` also fetch its config; ``attn_implementation``
            and ``dtype`` choose how it is built). Kept for building the model, never saved.
        feature_layer: one of ``"linear"`` (polysemantic baseline), ``"nonneg"`` (NCL-style
            non-negative projection), ``"sae"`` (ReLU SAE + L1), ``"topk"`` (TopK SAE), ``"jumprelu"``
            (JumpReLU SAE, Gemma Scope's), ``"gated"`` (gated SAE).
        feature_dim: width of the feature layer (default: 4x the backbone width).
        projector_hidden_dim, nonneg_activation, nonneg_order, topk, sparsity_weight, reconstruction_weight,
            sae_normalize_input, activation_loss_weight: the feature layer's settings; meaning, defaults and
            validation are those of :class:`~.feature_layers.FeatureLayerSettings` (``topk`` of a ``topk``
            layer is filled in here: ``feature_dim // 8``, the paper's ratio).
        pooling: ``"cls"``, ``"mean"``, ``"last"``, ``"max"`` (over the non-pad tokens) or ``"pooler"``;
            default chosen per backbone family. With ``hidden_layer`` set it pools the feature layer's codes
            over the tokens (``"pooler"`` is then not available).
        hidden_layer: where the feature layer reads. ``None`` (the default, and what checkpoints without the
            field mean): the backbone's final output, pooled. ``N``: the output of the backbone's layer ``N``
            (0-based) at every token -- transformers' ``hidden_states[N + 1]``, SAELens'
            ``blocks.N.hook_resid_post``, sparsify's ``layers.N`` -- with the codes pooled over the tokens
            afterwards and the backbone stopped after that layer (see :mod:`.hidden_layers`).
        freeze_backbone: train only the feature layer and head (linear probing).
        freeze_feature_layer: keep the feature layer's weights fixed (``requires_grad=False``, so the
            Trainer's optimizer skips them) while the backbone and head train *through* it: the paper's
            "NCE" fine-tuning of a pretrained SimCLR/NCL projector (its ReLU included) with the classifier
            on top. Gradients still flow through the frozen layer to the backbone, and its auxiliary loss
            terms (if any) still reach the backbone. Feature layers have no dropout or BatchNorm, so the
            layer needs no eval mode. With ``freeze_backbone`` too only the head trains.
        classifier_dropout: dropout on the features before the classifier.
        classifier_input_scale: a fixed factor (not trained) on the features before the classifier; 1.0
            (the default, and what checkpoints without the field mean) leaves them as they are. A head's
            training speed at a given learning rate grows with the square of its input's scale, so two
            frozen projectors whose outputs differ in scale (a SimCLR projector, mean norm ~40, and an NCL
            one normalised to 1) would compare their scales, not their features; the paper route of
            ``examples/finetune_noisy.py`` sets it per side so that both heads read one scale.
        temperature: InfoNCE temperature for contrastive pretraining (0.2, as in the paper).

    Example:
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig
        >>> cfg = MonoSemanticConfig(
        ...     backbone_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                intermediate_size=37),
        ...     feature_layer="nonneg", feature_dim=128, num_labels=3)
        >>> cfg.pooling, cfg.feature_dim
        ('cls', 128)
        >>> MonoSemanticConfig(backbone_config=cfg.backbone_config, feature_layer="sparse")
        Traceback (most recent call last):
        ...
        ValueError: feature_layer='sparse' is not valid; allowed: 'linear', 'nonneg', 'sae', 'topk', ...

    The nested ``backbone_config`` is a sub-config in transformers' sense, so what ``from_pretrained``
    sets on a whole model (``attn_implementation``, ``dtype``) reaches the backbone too:

        >>> cfg = MonoSemanticConfig(backbone_config=cfg.backbone_config, attn_implementation="eager")
        >>> cfg.backbone_config._attn_implementation
        'eager'
    """

    model_type = "monosemantic"
    # outputs that are not predictions: a plain ``Trainer`` leaves them out of what it gathers at evaluation,
    # so ``eval_pred`` holds the logits alone (the tutorials' ``logits, labels = eval_pred``) and the
    # feature vectors of a whole evaluation set are never kept in memory
    keys_to_ignore_at_inference = ["features", "pooled", "aux_losses", "hidden_states", "attentions"]
    # a sub-config: transformers hands attn_implementation / dtype of the whole model down to it
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "backbone_config": SubConfigSpec(config_class=PreTrainedConfig, optional=True)
        }
    else:  # pragma: no cover - older transformers 5
        sub_configs = {"backbone_config": AutoConfig}

    backbone: str | None = None
    backbone_config: dict | PreTrainedConfig | None = None
    use_pretrained_backbone: bool = True
    feature_layer: str = "nonneg"
    feature_dim: int | None = None
    # the feature layer's settings: defaults from FeatureLayerSettings, their one source
    projector_hidden_dim: int | None = FeatureLayerSettings.projector_hidden_dim
    nonneg_activation: str = FeatureLayerSettings.nonneg_activation
    nonneg_order: str = FeatureLayerSettings.nonneg_order
    topk: int | None = FeatureLayerSettings.topk
    sparsity_weight: float = FeatureLayerSettings.sparsity_weight
    reconstruction_weight: float = FeatureLayerSettings.reconstruction_weight
    sae_normalize_input: bool | str = FeatureLayerSettings.sae_normalize_input
    activation_loss_weight: float = FeatureLayerSettings.activation_loss_weight
    pooling: str | None = None
    hidden_layer: int | None = None
    freeze_backbone: bool = False
    freeze_feature_layer: bool = False
    classifier_dropout: float = 0.0
    classifier_input_scale: float = 1.0
    temperature: float = 0.2
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        loading = kwargs.pop("backbone_loading_kwargs", None)
        self._backbone_loading_kwargs = self._checked_loading_kwargs(loading)
        # transformers' convention: every config builds with no arguments (``AutoConfig.for_model``); what
        # needs a backbone is filled in and checked when a model is built (:meth:`validate_for_model`)
        backbone_config = None if self._has_no_backbone() else self._resolve_backbone_config()
        attn_implementation = kwargs.get("attn_implementation")
        # PreTrainedConfig.__post_init__ sets attn_implementation (None unless given) on every sub-config:
        # keep the backbone's own (it may be shared with a live backbone model) unless one is asked for
        self.backbone_config = None
        super().__post_init__(**kwargs)
        self.backbone_config = backbone_config
        if attn_implementation is not None:
            self._attn_implementation = attn_implementation
        if backbone_config is None:
            self._validate_backbone_free_fields()
        else:
            self._validate_and_fill_defaults()

    def _has_no_backbone(self) -> bool:
        return self.backbone_config is None and not self.backbone

    def validate_for_model(self) -> None:
        """Check that a model can be built from this config and fill in its backbone-dependent defaults.

        Models call it first: a config made with no arguments is valid, a model from it is not.

        Example:
            >>> MonoSemanticConfig().validate_for_model()
            Traceback (most recent call last):
            ...
            ValueError: give either backbone (a Hub id or folder) or backbone_config (a transformers config)
        """
        self.backbone_config = self._resolve_backbone_config()  # a config object passes through
        self._validate_and_fill_defaults()

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The backbone's text config: what ``resize_token_embeddings`` updates (``vocab_size``) must land in
        ``backbone_config``, which builds the backbone when the checkpoint is reloaded."""
        if not isinstance(self.backbone_config, PreTrainedConfig):
            return self
        return self.backbone_config.get_text_config(decoder=decoder, encoder=encoder)

    @staticmethod
    def _checked_loading_kwargs(loading: Any) -> dict[str, Any]:
        if loading is None:
            return {}
        if not isinstance(loading, dict):
            raise ValueError(f"backbone_loading_kwargs must be a dict, got {type(loading).__name__}")
        unknown = sorted(set(loading) - set(BACKBONE_LOADING_OPTIONS))
        if unknown:
            raise ValueError(
                f"backbone_loading_kwargs has {unknown}; allowed: {', '.join(BACKBONE_LOADING_OPTIONS)}"
            )
        return {key: value for key, value in loading.items() if value is not None}

    @property
    def backbone_loading_kwargs(self) -> dict[str, Any]:
        """How ``backbone`` is fetched and built (``AutoModel.from_pretrained`` keyword arguments); never
        saved."""
        return dict(self.__dict__.get("_backbone_loading_kwargs") or {})

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_backbone_loading_kwargs", None)  # may hold a token: not part of the checkpoint
        return output

    def to_json_string(self, use_diff: bool = True) -> str:
        """The JSON ``save_pretrained`` writes, with local folders named by their last component
        (``backbone`` and every ``_name_or_path``): a checkpoint must not carry the saver's machine
        paths. The weights are in the checkpoint, so loading it never reads ``backbone``."""
        return (
            json.dumps(
                scrub_local_paths(json.loads(super().to_json_string(use_diff))), indent=2, sort_keys=True
            )
            + "\n"
        )

    def _resolve_backbone_config(self) -> PreTrainedConfig:
        config = self.backbone_config
        if isinstance(config, PreTrainedConfig):
            return config
        if isinstance(config, dict):
            config = dict(config)
            model_type = config.pop("model_type", None)
            if model_type not in CONFIG_MAPPING:
                raise ValueError(
                    f"backbone_config has model_type={model_type!r}, which transformers does not know; "
                    "pass a config object or a dict with a registered model_type"
                )
            config.pop("transformers_version", None)
            return CONFIG_MAPPING[model_type].from_dict(config)
        if config is not None:
            raise ValueError(
                f"backbone_config must be a transformers config or a dict, got {type(config).__name__}"
            )
        if not self.backbone:
            raise ValueError(
                "give either backbone (a Hub id or folder) or backbone_config (a transformers config)"
            )
        if not isinstance(self.backbone, str):
            raise ValueError(f"backbone={self.backbone!r} must be a Hub id or a folder path (str)")
        loading = self.backbone_loading_kwargs
        config = AutoConfig.from_pretrained(
            self.backbone, **{key: loading[key] for key in _CONFIG_LOADING_OPTIONS if key in loading}
        )
        if loading.get("attn_implementation") is not None:
            config._attn_implementation = loading["attn_implementation"]
        return config

    def _validate_backbone_free_fields(self) -> None:
        feature_layer_class(self.feature_layer)  # the name is checked even without a backbone
        self._validate_head_fields()
        if self.pooling is not None and self.pooling not in POOLING_CHOICES:
            raise invalid_value("pooling", self.pooling, ", ".join(repr(k) for k in POOLING_CHOICES))
        self._validate_hidden_layer(None)

    def _validate_head_fields(self) -> None:
        if not isinstance(self.freeze_feature_layer, bool):
            raise invalid_value("freeze_feature_layer", self.freeze_feature_layer, "True or False")
        if not isinstance(self.classifier_dropout, (int, float)) or not 0 <= self.classifier_dropout < 1:
            raise invalid_value("classifier_dropout", self.classifier_dropout, "a number in [0, 1)")
        scale = self.classifier_input_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise invalid_value("classifier_input_scale", scale, "a finite number > 0")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise invalid_value("temperature", self.temperature, "a number > 0")
        if self.num_labels is None or self.num_labels < 1:
            raise invalid_value("num_labels", self.num_labels, "a positive integer")

    def _validate_and_fill_defaults(self) -> None:
        if self.backbone_config.model_type == self.model_type:
            raise ValueError("backbone_config is itself a MonoSemanticConfig; nest a plain backbone config")
        layer_class = feature_layer_class(self.feature_layer)
        if self.feature_dim is None:
            self.feature_dim = 4 * backbone_hidden_size(self.backbone_config)
        settings = layer_class.settings_class.from_config(self)  # validates the feature layer's fields
        if self.topk is None and self.feature_layer == "topk":
            self.topk = settings.resolved_topk
        self._validate_head_fields()
        if self.pooling is None:
            self.pooling = default_pooling(self.backbone_config)
        if self.pooling not in POOLING_CHOICES:
            raise invalid_value("pooling", self.pooling, ", ".join(repr(k) for k in POOLING_CHOICES))
        self._validate_hidden_layer(self.backbone_config)
        if (
            self.pooling == "cls"
            and getattr(self.backbone_config, "hidden_sizes", None)
            and not hasattr(self.backbone_config, "hidden_size")
        ):
            raise ValueError(
                f"pooling='cls' needs a token sequence, but {self.backbone_config.model_type!r} outputs "
                "feature maps; use 'mean' or 'pooler'"
            )

    def _validate_hidden_layer(self, backbone_config: PreTrainedConfig | None) -> None:
        value = self.hidden_layer
        if value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid_value("hidden_layer", value, "None or an integer >= 0 (a layer of the backbone)")
        if backbone_config is None:
            return
        text_config = backbone_config.get_text_config()
        count = getattr(text_config, "num_hidden_layers", None)
        if not isinstance(count, int) or not hasattr(text_config, "hidden_size"):
            raise ValueError(
                f"hidden_layer={value} needs a backbone whose layers output token sequences "
                f"(num_hidden_layers and hidden_size in its config); {backbone_config.model_type!r} has "
                "none: use hidden_layer=None"
            )
        if value >= count:
            raise invalid_value(
                "hidden_layer",
                value,
                f"None or an integer in [0, {count - 1}] (the backbone has {count} layers)",
            )
        if self.pooling == "pooler":
            raise ValueError(
                f"pooling='pooler' reads the backbone's final output, but hidden_layer={value} pools the "
                "codes of the tokens; use one of 'cls', 'mean', 'max', 'last'"
            )

    @property
    def backbone_hidden_size(self) -> int:
        """Width of the pooled backbone vector (the feature layer's input)."""
        return backbone_hidden_size(self.backbone_config)
