"""Putting LoRA / MonoLoRA adapters on a MonoSemantic model: targets, ``modules_to_save``, load."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .config import MONOLORA_PEFT_TYPE, MonoLoraConfig

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "add_lora",
    "default_target_modules",
    "is_monolora",
    "load_lora",
    "lora_config",
]

#: per-family LoRA targets (module-name suffixes inside the backbone) that peft's own table lacks or
#: that we choose differently; everything else falls back to peft's table, then to a name heuristic.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "vit": [
        "query",
        "value",
    ],  # transformers < 5.24 names; 5.24 uses q_proj / v_proj (found by the heuristic)
    "deit": ["query", "value"],
    "dinov2": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],  # the pointwise convolutions are nn.Linear
    "resnet": ["convolution"],  # nn.Conv2d: plain LoRA only (MonoLoRA needs nn.Linear targets)
}

# name pairs the heuristic looks for, in order, among the backbone's nn.Linear leaves
_HEURISTIC_TARGETS = (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("q", "v"))


def _backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The backbone module and its dotted name prefix inside ``model`` (e.g. ``monosemantic.backbone``)."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    for name, module in model.named_modules():
        if name.split(".")[-1] == "backbone" and hasattr(module, "config"):
            return module, name
    raise ValueError(
        f"{type(model).__name__} has no 'backbone' submodule: add_lora expects an hf_monosem model "
        "(MonoSemanticModel or a MonoSemantic*Classification head)"
    )


def default_target_modules(model: nn.Module) -> list[str]:
    """Per-family LoRA targets for the model's backbone (module-name suffixes).

    Candidates, first whose names all exist in the backbone wins: our table
    (:data:`DEFAULT_LORA_TARGETS`: BERT-family ``query``/``value``, Llama-family ``q_proj``/``v_proj``,
    ConvNeXt's pointwise ``nn.Linear`` layers, ResNet's convolutions), peft's per-model table, then
    the attention projections found by name (``q_proj``/``v_proj``, ``query``/``value``,
    ``q_lin``/``v_lin``, ``q``/``v``). Module names move between transformers versions (ViT's are
    ``query``/``value`` before 5.x and ``q_proj``/``v_proj`` in 5.24), hence the check.
    """
    backbone, _ = _backbone_of(model)
    model_type = getattr(backbone.config, "model_type", "")
    adaptable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    leaves = {
        name.split(".")[-1]
        for name, m in backbone.named_modules()
        if isinstance(m, adaptable) or type(m).__name__ == "Conv1D"
    }
    candidates = [
        DEFAULT_LORA_TARGETS.get(model_type),
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type),
        *(list(pair) for pair in _HEURISTIC_TARGETS),
    ]
    for names in candidates:
        if names and set(names) <= leaves:
            return list(names)
    raise ValueError(
        f"no default LoRA targets for backbone model_type={model_type!r}; pass target_modules=[...] "
        f"(its adaptable layers are named {sorted(leaves)})"
    )


def _backbone_regex(prefix: str, names: Iterable[str]) -> str:
    """A peft ``target_modules`` regex matching ``names`` inside the backbone only (never the head)."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names)))
    return rf"^{re.escape(prefix)}\.(?:.*\.)?(?:{alternatives})$"


def _default_modules_to_save(model: nn.Module) -> list[str]:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = {name.split(".")[-1] for name, _ in base.named_modules()}
    # a frozen feature layer (config.freeze_feature_layer) must stay frozen: peft would train a copy of it
    frozen = bool(getattr(getattr(base, "config", None), "freeze_feature_layer", False))
    return [
        n for n in ("feature_layer", "classifier") if n in names and not (frozen and n == "feature_layer")
    ]


def lora_config(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    target_modules: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    monolora: str | None = None,
    modules_to_save: Sequence[str] | None = None,
    **lora_kwargs: Any,
) -> LoraConfig:
    """The ``LoraConfig`` (or :class:`MonoLoraConfig`) that :func:`add_lora` applies to ``model``.

    ``target_modules``: module-name suffixes, matched inside the backbone only (default
    :func:`default_target_modules`), or a regex string passed to peft unchanged.
    """
    if getattr(getattr(model, "config", None), "freeze_backbone", False):
        raise ValueError(
            "the model has freeze_backbone=True, so its backbone runs under torch.no_grad() and LoRA "
            "adapters on it would never train; build it with freeze_backbone=False (peft freezes the base "
            "weights itself)"
        )
    _, prefix = _backbone_of(model)
    if isinstance(target_modules, str):
        targets = target_modules
    else:
        names = list(target_modules) if target_modules is not None else default_target_modules(model)
        if not names:
            raise ValueError("target_modules is empty")
        targets = _backbone_regex(prefix, names)
    if modules_to_save is None:
        modules_to_save = _default_modules_to_save(model)
    task_type = lora_kwargs.pop(
        "task_type", "SEQ_CLS" if type(model).__name__.endswith("SequenceClassification") else None
    )
    kwargs = dict(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=dropout,
        modules_to_save=list(modules_to_save),
        task_type=task_type,
        **lora_kwargs,
    )
    if monolora is None:
        return LoraConfig(**kwargs)
    return MonoLoraConfig(monolora=monolora, **kwargs)


def _check_monolora_targets(model: nn.Module, config: LoraConfig) -> None:
    if getattr(config, "monolora", None) is None:
        return
    bad = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, LoraLayer)) or not list(module.parameters(recurse=False)):
            continue
        if isinstance(config.target_modules, str) and re.fullmatch(config.target_modules, name):
            bad.append(f"{name} ({type(module).__name__})")
    if bad:
        raise ValueError(f"MonoLoRA supports nn.Linear targets only; these targets are not: {bad[:5]}")


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    target_modules: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    monolora: str | None = None,
    modules_to_save: Sequence[str] | None = None,
    adapter_name: str = "default",
    **lora_kwargs: Any,
) -> PeftModel:
    """Wrap ``model`` in a ``PeftModel``: LoRA (or MonoLoRA) on the backbone, head trained fully.

    Args:
        model: an hf_monosem model (``MonoSemanticModel`` or a classification head) with
            ``freeze_backbone=False``. Modified in place, as ``peft.get_peft_model`` does.
        r, alpha, dropout: LoRA rank, ``lora_alpha`` (scaling ``alpha / r``) and adapter dropout.
        target_modules: backbone module-name suffixes (default: per family, see
            :func:`default_target_modules`) or a peft regex string.
        monolora: ``None`` (plain LoRA), ``"output"`` (``relu(B A x)``) or ``"hidden"`` (``B relu(A x)``).
        modules_to_save: trained in full and saved with the adapter (default: ``feature_layer`` and
            ``classifier``, whichever exist).
        **lora_kwargs: any other ``LoraConfig`` field (``use_rslora``, ``task_type``, ...).

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        ...     feature_dim=64, num_labels=2)
        >>> peft_model = add_lora(MonoSemanticForSequenceClassification(cfg), r=4, monolora="hidden")
        >>> from hf_monosem.adapters.lora import MonoLoraLinear
        >>> sorted({n.split(".")[-1] for n, m in peft_model.named_modules() if isinstance(m, MonoLoraLinear)})
        ['query', 'value']
    """
    config = lora_config(
        model,
        r=r,
        alpha=alpha,
        target_modules=target_modules,
        dropout=dropout,
        monolora=monolora,
        modules_to_save=modules_to_save,
        **lora_kwargs,
    )
    _check_monolora_targets(model, config)
    return get_peft_model(model, config, adapter_name=adapter_name)


def _read_adapter_config(folder: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(folder), "adapter_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: not a peft adapter folder (save one with peft_model.save_pretrained)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_lora(
    model: nn.Module,
    folder: str | os.PathLike,
    is_trainable: bool = False,
    adapter_name: str = "default",
    **kwargs,
) -> PeftModel:
    """Load a LoRA or MonoLoRA adapter (+ its trained feature layer and classifier) onto ``model``.

    ``model`` must be the base the adapter was trained on (same backbone weights). Equivalent to
    ``PeftModel.from_pretrained(model, folder)`` once :mod:`hf_monosem` is imported; the config is
    read here explicitly so a MonoLoRA folder always gets its ReLU layers back.
    """
    saved = _read_adapter_config(folder)
    if saved.get("peft_type") == MONOLORA_PEFT_TYPE:
        config = MonoLoraConfig.from_pretrained(os.fspath(folder))
    else:
        config = LoraConfig.from_pretrained(os.fspath(folder))
    return PeftModel.from_pretrained(
        model,
        os.fspath(folder),
        adapter_name=adapter_name,
        is_trainable=is_trainable,
        config=config,
        **kwargs,
    )


def is_monolora(model: nn.Module) -> bool:
    """Whether any adapter of ``model`` is a MonoLoRA adapter."""
    configs = getattr(model, "peft_config", {}) or {}
    return any(getattr(c, "monolora", None) is not None for c in configs.values())
