"""Models: any transformers backbone -> pooling -> feature layer (-> linear classifier).

One generic wrapper serves every backbone family through ``AutoModel``; the family only decides
the pooling (see :func:`hf_monosem.models.configuration.default_pooling`).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import ModelOutput

from .configuration import BACKBONE_LOADING_OPTIONS, MonoSemanticConfig
from .feature_layers import FeatureLayer, build_feature_layer
from .hidden_layers import find_layer_list, pool_tokens, run_to_layer
from .loading import check_checkpoint_folder, check_hub_checkpoint
from .sae import SparseAutoencoder

__all__ = [
    "MonoSemanticClassifierOutput",
    "MonoSemanticForImageClassification",
    "MonoSemanticForSequenceClassification",
    "MonoSemanticModel",
    "MonoSemanticModelOutput",
    "MonoSemanticPreTrainedModel",
]

#: the transformers output flags a backbone takes through ``**kwargs`` when its signature does not name them.
_OUTPUT_FLAGS = ("output_hidden_states", "output_attentions")

# Set while ``from_pretrained`` builds a model: the checkpoint holds the backbone's weights, so the
# model must not also download/load them from ``config.backbone``.
_LOADING_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "_LOADING_CHECKPOINT", default=False
)


@dataclass
class MonoSemanticModelOutput(ModelOutput):
    """Output of :class:`MonoSemanticModel`.

    ``features`` comes first, as ``last_hidden_state`` does in transformers' base-model outputs:
    the feature-extraction pipelines read ``outputs[0]`` (and a tuple output starts with it).

    Attributes:
        features: feature-layer output ``[batch, feature_dim]`` (with ``config.hidden_layer``: the codes of
            the tokens, pooled).
        pooled: pooled backbone vector fed to the feature layer ``[batch, hidden]`` (with
            ``config.hidden_layer``: that layer's output pooled the same way; the feature layer read its
            tokens).
        loss: weighted sum of the feature layer's auxiliary terms (``None`` if it has none, or at inference).
        aux_losses: the feature layer's unweighted auxiliary terms by name: in training mode or when asked
            with ``output_aux_losses=True`` (``None`` at inference, which a batching pipeline needs: it
            splits every output per example).
        hidden_states: the backbone's hidden states when requested (``output_hidden_states=True``).
        attentions: the backbone's attention weights when requested (``output_attentions=True``).
    """

    features: torch.FloatTensor | None = None
    pooled: torch.FloatTensor | None = None
    loss: torch.FloatTensor | None = None
    aux_losses: dict[str, torch.Tensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MonoSemanticClassifierOutput(ModelOutput):
    """Output of the classification models: ``loss`` = task loss + weighted auxiliary terms.

    ``aux_losses`` comes with ``labels``, in training mode or with ``output_aux_losses=True``; the other
    fields are those of :class:`MonoSemanticModelOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    pooled: torch.FloatTensor | None = None
    aux_losses: dict[str, torch.Tensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MonoSemanticPreTrainedModel(PreTrainedModel):
    """Shared plumbing: config class, weight init, checkpoint loading, backbone / feature-layer freezing."""

    config_class = MonoSemanticConfig
    base_model_prefix = "monosemantic"
    supports_gradient_checkpointing = True
    # Our loss is mean-reduced inside forward; the Trainer must not rescale it for grad accumulation.
    accepts_loss_kwargs = False
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) and os.path.isdir(
            pretrained_model_name_or_path
        ):
            subfolder = kwargs.get("subfolder") or ""
            check_checkpoint_folder(os.path.join(pretrained_model_name_or_path, subfolder))
        elif isinstance(pretrained_model_name_or_path, str) and kwargs.get("config") is None:
            check_hub_checkpoint(pretrained_model_name_or_path, **kwargs)
        wants_info = bool(kwargs.pop("output_loading_info", False))
        token = _LOADING_CHECKPOINT.set(True)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        finally:
            _LOADING_CHECKPOINT.reset(token)
        # transformers only logs missing weights; a feature layer left at its random initialisation
        # would silently change every result (a head may be missing: loading a base model into a classifier)
        missing = sorted(k for k in info.get("missing_keys", ()) if "feature_layer." in k)
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds no weights for the feature layer ({missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}): it would be randomly initialised. The checkpoint "
                f"was saved with another feature layer (this config has "
                f"feature_layer={model.config.feature_layer!r})"
                " or is damaged"
            )
        model._apply_backbone_freezing()
        return (model, info) if wants_info else model

    @classmethod
    def from_backbone(cls, backbone: str | PreTrainedModel, **config_kwargs) -> MonoSemanticPreTrainedModel:
        """Wrap an already-pretrained backbone (a model instance, Hub id or folder), keeping its weights.

        A Hub id or folder is loaded with ``AutoModel.from_pretrained``; the keyword arguments named in
        :data:`~.configuration.BACKBONE_LOADING_OPTIONS` (``revision``, ``token``, ``trust_remote_code``,
        ``cache_dir``, ``attn_implementation``, ``dtype``) go to it, the others to
        :class:`MonoSemanticConfig`. The feature layer and head take the backbone's dtype (SAE layers stay
        fp32).

        Example:
            >>> from transformers import BertConfig, BertModel
            >>> from hf_monosem import MonoSemanticForSequenceClassification
            >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            ...                             intermediate_size=37))
            >>> model = MonoSemanticForSequenceClassification.from_backbone(
            ...     bert, feature_dim=64, num_labels=2)
            >>> torch.equal(model.backbone.embeddings.word_embeddings.weight,
            ...             bert.embeddings.word_embeddings.weight)
            True
        """
        backbone = cls._backbone_model(backbone, config_kwargs)
        config_kwargs.setdefault("backbone", backbone.config.name_or_path or None)
        config = MonoSemanticConfig(
            backbone_config=backbone.config, use_pretrained_backbone=False, **config_kwargs
        )
        return cls(config, backbone=backbone)

    @staticmethod
    def _backbone_model(
        backbone: str | os.PathLike | PreTrainedModel, config_kwargs: dict
    ) -> PreTrainedModel:
        """``backbone`` as a model: a Hub id or folder loaded with ``AutoModel.from_pretrained`` and the
        loading options popped from ``config_kwargs``; a model passes through (with no loading options)."""
        loading = {key: config_kwargs.pop(key) for key in BACKBONE_LOADING_OPTIONS if key in config_kwargs}
        if isinstance(backbone, (str, os.PathLike)):
            options = {key: value for key, value in loading.items() if value is not None}
            return AutoModel.from_pretrained(os.fspath(backbone), **options)
        if loading:
            raise ValueError(
                f"{sorted(loading)} say how a backbone is loaded, but this {type(backbone).__name__} is "
                f"loaded already"
            )
        if not isinstance(backbone, PreTrainedModel):
            raise ValueError(
                f"backbone must be a Hub id, a folder or a transformers PreTrainedModel, got "
                f"{type(backbone).__name__}"
            )
        return backbone

    @classmethod
    def from_sae(
        cls, backbone: str | PreTrainedModel, sae: str | os.PathLike, **kwargs
    ) -> MonoSemanticPreTrainedModel:
        """:meth:`from_backbone` with a SAELens, sparsify or Gemma Scope checkpoint as the feature layer
        (``topk``, ``sae``, ``jumprelu`` or ``gated``), placed where it was trained.

        ``sae`` is a folder or a Hub id (downloaded with ``huggingface_hub``, the cache used offline);
        ``subfolder=``, ``sae_revision=``, ``local_files_only=`` and ``normalize_input=`` (override the
        checkpoint's input normalisation) say how to read it; the other keyword arguments go to
        :meth:`from_backbone` (``freeze_backbone`` defaults to ``True``; ``pooling`` to the one the checkpoint
        names). The layer it reads (``hidden_layer``) comes from the checkpoint's hook: SAELens'
        ``blocks.N.hook_resid_post``, sparsify's hookpoint folder ``layers.N``, Gemma Scope's ``layer_N``
        (see :func:`~.hidden_layers.layer_of_hook`); a checkpoint of a pooled vector (``pooled.<pooling>``,
        or no hook) goes on the pooled output, and ``hidden_layer=`` overrides what the checkpoint says.
        See :mod:`hf_monosem.models.sae_formats` for the mapping.

        Example:
            >>> import tempfile
            >>> from transformers import BertConfig, BertModel
            >>> from hf_monosem import MonoSemanticModel, save_sae
            >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            ...                             intermediate_size=37))
            >>> fitted = MonoSemanticModel.from_backbone(bert, feature_layer="topk", feature_dim=64, topk=8)
            >>> folder = save_sae(fitted, tempfile.mkdtemp(), format="sparsify")
            >>> model = MonoSemanticModel.from_sae(bert, folder)
            >>> model.config.feature_layer, model.config.topk, model.config.freeze_backbone
            ('topk', 8, True)
        """
        from .sae_formats import model_from_sae

        return model_from_sae(cls, backbone, sae, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone is a PreTrainedModel: transformers dispatches its own _init_weights to it.
        std = self.config.initializer_range
        if isinstance(module, SparseAutoencoder):
            module.reset_parameters_like_sae()
        elif isinstance(module, nn.Linear):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)

    def _apply_backbone_freezing(self) -> None:
        """``freeze_backbone`` and ``freeze_feature_layer``: those parts get ``requires_grad=False``
        (run at construction and again after ``from_pretrained``, which may hand in new parameters)."""
        base = getattr(self, self.base_model_prefix, self)
        if self.config.freeze_backbone:
            base.backbone.requires_grad_(False)
            base.backbone.eval()
        if self.config.freeze_feature_layer:
            # no eval() needed: feature layers have no dropout / BatchNorm; the backbone and head still
            # train through the fixed layer (the backbone is not run under no_grad for this flag)
            base.feature_layer.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen backbone is a fixed feature extractor: keep dropout off and BatchNorm stats fixed.
        base = getattr(self, self.base_model_prefix, self)
        if self.config.freeze_backbone and hasattr(base, "backbone"):
            base.backbone.eval()
        return self

    def _wants_dict(self, return_dict: bool | None) -> bool:
        # as in transformers: the argument, else the config's ``return_dict`` (a tuple when False)
        return return_dict if return_dict is not None else getattr(self.config, "return_dict", True)

    def get_input_embeddings(self):
        return getattr(self, self.base_model_prefix, self).backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        getattr(self, self.base_model_prefix, self).backbone.set_input_embeddings(value)


class MonoSemanticModel(MonoSemanticPreTrainedModel):
    """Backbone + pooling + feature layer -> ``features``.

    Example:
        >>> import torch
        >>> from transformers import ViTConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticModel
        >>> cfg = MonoSemanticConfig(backbone_config=ViTConfig(image_size=16, patch_size=8, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37), feature_layer="sae",
        ...     feature_dim=64)
        >>> out = MonoSemanticModel(cfg)(pixel_values=torch.randn(2, 3, 16, 16))
        >>> out.features.shape, sorted(out.aux_losses)
        (torch.Size([2, 64]), ['reconstruction_loss', 'sparsity_loss'])
    """

    base_model_prefix = "monosemantic"

    def __init__(self, config: MonoSemanticConfig, backbone: PreTrainedModel | None = None):
        if backbone is None:
            config.validate_for_model()  # a config made with no arguments has no backbone yet
        super().__init__(config)
        load_pretrained = backbone is None and self._should_load_pretrained_backbone(config)
        # Build from config first; pretrained weights are swapped in after post_init so that weight
        # initialisation can never touch them.
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        self.main_input_name = self.backbone.main_input_name  # pixel_values or input_ids
        self.feature_layer = build_feature_layer(config, config.backbone_hidden_size)
        if self.feature_layer.is_sparse_autoencoder:  # SAE numerics stay fp32 whatever the checkpoint's dtype
            self._keep_in_fp32_modules_strict = ["feature_layer"]
        self._follow_backbone_dtype()
        parameters = inspect.signature(self.backbone.forward).parameters
        self._backbone_arguments = set(parameters)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            # transformers 5 backbones (BERT, ViT, Llama, ...) take the output flags through **kwargs
            self._backbone_arguments |= set(_OUTPUT_FLAGS)
        self._check_pooling_is_possible()
        # the path of the backbone's layer list when the feature layer reads one of its layers (a path, not
        # the module: a second reference would be saved as shared weights; the backbone may be replaced)
        self._layer_list_path = None if config.hidden_layer is None else find_layer_list(self.backbone)[0]
        self.post_init()
        if load_pretrained:
            loading = config.backbone_loading_kwargs
            self.backbone = AutoModel.from_pretrained(
                config.backbone, config=config.backbone_config, **loading
            )
            config.backbone_config = (
                self.backbone.config
            )  # the config the weights were loaded with (dtype, ...)
            self._follow_backbone_dtype()
        self._apply_backbone_freezing()

    @property
    def backbone_dtype(self) -> torch.dtype:
        """The dtype of the backbone's floating-point weights (what the feature layer and head follow)."""
        return next(
            (p.dtype for p in self.backbone.parameters() if p.is_floating_point()), torch.get_default_dtype()
        )

    def _follow_backbone_dtype(self) -> None:
        # transformers 5 loads a backbone in its saved dtype (dtype="auto"): a bf16 checkpoint comes up bf16.
        # The feature layer follows it, as every head of a transformers model does; an SAE stays fp32.
        self.feature_layer.to(
            torch.float32 if self.feature_layer.is_sparse_autoencoder else self.backbone_dtype
        )

    @staticmethod
    def _should_load_pretrained_backbone(config: MonoSemanticConfig) -> bool:
        return bool(config.backbone) and config.use_pretrained_backbone and not _LOADING_CHECKPOINT.get()

    def _check_pooling_is_possible(self) -> None:
        if self.config.pooling == "pooler" and getattr(self.backbone, "pooler", None) is None:
            raise ValueError(
                f"pooling='pooler' but the {type(self.backbone).__name__} backbone has no pooler; "
                "use one of 'cls', 'mean', 'last', 'max'"
            )

    def pool(self, backbone_output: ModelOutput, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """One vector per input from the backbone output, according to ``config.pooling``."""
        pooling = self.config.pooling
        if pooling == "pooler":
            pooled = backbone_output.pooler_output
            return pooled.flatten(1)  # conv nets return [B, C, 1, 1]
        hidden = backbone_output.last_hidden_state
        if hidden.dim() == 4:  # feature maps [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        return pool_tokens(hidden, attention_mask, pooling)

    def _layer_features(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``hidden_layer``: the feature layer on every non-pad token of ``hidden`` (``[B, T, H]``), its
        codes pooled over the tokens; returns ``(features, pooled hidden, aux losses)``.

        Only the non-pad tokens go through the feature layer, so its loss terms (an SAE's reconstruction)
        average over real tokens; pad positions get zero codes and are masked out of the pooling.
        """
        batch, length = hidden.shape[:2]
        keep = (
            attention_mask.to(torch.bool)
            if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
        )
        tokens = hidden[keep]
        layer_dtype = next((p.dtype for p in self.feature_layer.parameters()), tokens.dtype)
        codes, aux_losses = self.feature_layer(
            tokens if tokens.dtype == layer_dtype else tokens.to(layer_dtype)
        )
        per_token = codes.new_zeros(batch, length, codes.shape[-1])
        per_token[keep] = codes
        pooling = self.config.pooling
        return (
            pool_tokens(per_token, attention_mask, pooling),
            pool_tokens(hidden, attention_mask, pooling),
            aux_losses,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_aux_losses: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MonoSemanticModelOutput | tuple:
        r"""Features of a batch; ``output_aux_losses`` (default: in training mode) returns the feature layer's
        auxiliary terms and their weighted sum as ``loss``; ``return_dict`` defaults to
        ``config.return_dict``."""
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "pixel_values": pixel_values,
            "inputs_embeds": inputs_embeds,
            "output_hidden_states": output_hidden_states,
            "output_attentions": output_attentions,
            **kwargs,
        }
        backbone_inputs = {k: v for k, v in given.items() if v is not None and k in self._backbone_arguments}
        unusable = sorted(k for k, v in given.items() if v is not None and k not in self._backbone_arguments)
        if unusable:
            raise ValueError(
                f"{type(self.backbone).__name__} does not accept {unusable}; it takes "
                f"{sorted(self._backbone_arguments - {'kwargs', 'args'})}"
            )
        if not any(k in backbone_inputs for k in ("input_ids", "pixel_values", "inputs_embeds")):
            raise ValueError("no model input given: pass pixel_values, input_ids or inputs_embeds")
        backbone_inputs["return_dict"] = True
        dtype = self.backbone_dtype
        for name in (
            "pixel_values",
            "inputs_embeds",
        ):  # fp32 pixels from a processor into a bf16/fp16 backbone
            value = backbone_inputs.get(name)
            if value is not None and value.is_floating_point() and value.dtype != dtype:
                backbone_inputs[name] = value.to(dtype)

        with torch.no_grad() if self.config.freeze_backbone else contextlib.nullcontext():
            if self._layer_list_path is None:
                backbone_output = self.backbone(**backbone_inputs)
            else:
                # the backbone stops after the layer read, unless its hidden states / attentions are asked for
                asked = any(backbone_inputs.get(flag) for flag in _OUTPUT_FLAGS)
                hidden, backbone_output = run_to_layer(
                    self.backbone,
                    self.backbone.get_submodule(self._layer_list_path),
                    self.config.hidden_layer,
                    backbone_inputs,
                    stop=not asked,
                )

        if self._layer_list_path is None:
            pooled = self.pool(backbone_output, attention_mask)
            layer_dtype = next((p.dtype for p in self.feature_layer.parameters()), pooled.dtype)
            features, aux_losses = self.feature_layer(
                pooled if pooled.dtype == layer_dtype else pooled.to(layer_dtype)
            )
        else:
            features, pooled, aux_losses = self._layer_features(hidden, attention_mask)
        if output_aux_losses is None:
            output_aux_losses = self.training
        output = MonoSemanticModelOutput(
            features=features,
            pooled=pooled,
            loss=self.feature_layer.weighted_aux_loss(aux_losses) if output_aux_losses else None,
            aux_losses=aux_losses if output_aux_losses else None,
            hidden_states=getattr(backbone_output, "hidden_states", None),
            attentions=getattr(backbone_output, "attentions", None),
        )
        return output if self._wants_dict(return_dict) else output.to_tuple()


class _MonoSemanticClassifier(MonoSemanticPreTrainedModel):
    """MonoSemanticModel + dropout + a linear classifier on the features."""

    #: the modality of the class ("image" or "text"), checked against the backbone's main input.
    modality: str | None = None

    def __init__(self, config: MonoSemanticConfig, backbone: PreTrainedModel | None = None):
        if backbone is None:
            config.validate_for_model()
        self._check_modality(
            backbone.main_input_name if backbone is not None else _main_input_name(config.backbone_config),
            (backbone.config if backbone is not None else config.backbone_config).model_type,
        )
        super().__init__(config)
        self.num_labels = config.num_labels
        self.monosemantic = MonoSemanticModel(config, backbone=backbone)
        self.dropout = nn.Dropout(config.classifier_dropout)
        # the head follows the backbone's dtype, like the feature layer (a bf16 checkpoint stays bf16)
        self.classifier = nn.Linear(config.feature_dim, config.num_labels).to(
            self.monosemantic.backbone_dtype
        )
        self.post_init()

    @classmethod
    def _check_modality(cls, main_input: str | None, model_type: str) -> None:
        # as transformers' Auto classes do: a text checkpoint never loads as an image classifier, or back
        if cls.modality is None or main_input is None:
            return
        is_image = main_input == "pixel_values"
        if is_image == (cls.modality == "image"):
            return
        right = "Image" if is_image else "Sequence"
        raise ValueError(
            f"{cls.__name__} needs a{'n image' if cls.modality == 'image' else ' text'} backbone, but "
            f"{model_type!r} is a{'n image' if is_image else ' text'} model (main input {main_input!r}); "
            f"load it with AutoModelFor{right}Classification (MonoSemanticFor{right}Classification)"
        )

    @property
    def backbone(self) -> PreTrainedModel:
        return self.monosemantic.backbone

    @property
    def feature_layer(self) -> FeatureLayer:
        return self.monosemantic.feature_layer

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for class ids, MSE for regression, BCE for multi-label (as in transformers)."""
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        labels = labels.view(-1)
        if labels.numel() and (labels.min() < -100 or labels.max() >= self.num_labels):
            raise ValueError(
                f"labels must be class ids in [0, {self.num_labels - 1}] (or -100 to ignore); "
                f"got min {int(labels.min())}, max {int(labels.max())}"
            )
        return F.cross_entropy(logits.float().view(-1, self.num_labels), labels)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_aux_losses: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MonoSemanticClassifierOutput | tuple:
        r"""Logits of a batch, and ``loss`` when ``labels`` are given; ``output_aux_losses`` defaults to
        ``labels is not None or self.training``; ``return_dict`` to ``config.return_dict``."""
        base = self.monosemantic(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            pixel_values=pixel_values,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_aux_losses=True,  # the loss needs them; dropped below when not asked for
            return_dict=True,
            **kwargs,
        )
        if output_aux_losses is None:
            output_aux_losses = labels is not None or self.training
        features = base.features
        if self.config.classifier_input_scale != 1.0:  # the head's input scale (see the config)
            features = features * self.config.classifier_input_scale
        logits = self.classifier(self.dropout(features).to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            loss = self.task_loss(logits, labels)
            if base.loss is not None:
                loss = loss + base.loss
        output = MonoSemanticClassifierOutput(
            loss=loss,
            logits=logits,
            features=base.features,
            pooled=base.pooled,
            aux_losses=base.aux_losses if output_aux_losses else None,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return output if self._wants_dict(return_dict) else output.to_tuple()


class MonoSemanticForImageClassification(_MonoSemanticClassifier):
    """A vision backbone (ViT, ResNet, ConvNeXt, ...) with a feature layer and a linear classifier.

    Example:
        >>> import torch
        >>> from transformers import ResNetConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForImageClassification
        >>> cfg = MonoSemanticConfig(backbone_config=ResNetConfig(num_channels=1, embedding_size=8,
        ...     hidden_sizes=[8, 16], depths=[1, 1]), feature_layer="nonneg", feature_dim=64, num_labels=10)
        >>> model = MonoSemanticForImageClassification(cfg)
        >>> out = model(pixel_values=torch.randn(4, 1, 28, 28), labels=torch.tensor([0, 1, 2, 3]))
        >>> out.logits.shape, bool((out.features >= 0).all())
        (torch.Size([4, 10]), True)
    """

    main_input_name = "pixel_values"
    modality = "image"


class MonoSemanticForSequenceClassification(_MonoSemanticClassifier):
    """A text backbone (BERT-family encoder or decoder LM) with a feature layer and a linear classifier.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        ...     feature_layer="topk", feature_dim=64, topk=8, num_labels=3)
        >>> model = MonoSemanticForSequenceClassification(cfg)
        >>> out = model(input_ids=torch.randint(0, 100, (2, 7)), labels=torch.tensor([0, 2]))
        >>> out.logits.shape, int((out.features != 0).sum(-1).max()) <= 8
        (torch.Size([2, 3]), True)
    """

    modality = "text"


def _main_input_name(backbone_config) -> str | None:
    """The main input of the transformers model class a backbone config builds (``None`` if unknown)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return getattr(MODEL_MAPPING[type(backbone_config)], "main_input_name", None)
    except (KeyError, ValueError):  # a remote-code backbone: not in transformers' mapping
        return None
