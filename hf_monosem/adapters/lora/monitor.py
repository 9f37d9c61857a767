"""Adapter sparsity: how many exact zeros the adapters' intermediates hold (MonoLoRA vs plain LoRA)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

__all__ = ["AdapterActivationMonitor", "adapter_sparsity"]


class AdapterActivationMonitor:
    """Context manager counting exact zeros of each adapter's intermediate, via forward hooks.

    For MonoLoRA layers it watches the ReLU'd intermediate (``relu(s B A x)`` of width ``out`` for
    ``"output"``, ``relu(A x)`` of width ``r`` for ``"hidden"``); for plain LoRA layers, where there is
    no ReLU, the update ``B A x`` (normally no exact zeros), so the two can be compared.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        ...     feature_dim=64, num_labels=2)
        >>> peft_model = add_lora(MonoSemanticForSequenceClassification(cfg), r=4, monolora="output")
        >>> with AdapterActivationMonitor(peft_model) as monitor:
        ...     _ = peft_model(input_ids=torch.randint(0, 100, (2, 7)))
        >>> 0.0 <= monitor.sparsity <= 1.0, sorted(monitor.per_layer())[:1]
        (True, ['base_model.model.monosemantic.backbone.encoder.layer.0.attention.self.query[default]'])
    """

    def __init__(self, model: nn.Module, adapter_name: str | None = None):
        self.model = model
        self.adapter_name = adapter_name
        self.zeros: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self._handles: list[Any] = []

    def _watch(self, name: str, module: nn.Module) -> None:
        def hook(_module, _inputs, output):
            self.zeros[name] = self.zeros.get(name, 0) + int((output == 0).sum())
            self.total[name] = self.total.get(name, 0) + output.numel()

        self._handles.append(module.register_forward_hook(hook))

    def __enter__(self) -> AdapterActivationMonitor:
        for name, layer in self.model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            adapters = [self.adapter_name] if self.adapter_name else list(layer.lora_A.keys())
            for adapter in adapters:
                if adapter not in layer.lora_A:
                    continue
                relu = getattr(layer, "mono_relu", {})
                if adapter in relu:
                    self._watch(f"{name}[{adapter}]", relu[adapter])
                else:
                    self._watch(f"{name}[{adapter}]", layer.lora_B[adapter])
        if not self._handles:
            raise ValueError("the model has no LoRA layers to watch")
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros over every watched value seen so far (NaN before any forward)."""
        total = sum(self.total.values())
        return sum(self.zeros.values()) / total if total else float("nan")

    def per_layer(self) -> dict[str, float]:
        return {name: self.zeros[name] / self.total[name] for name in self.total if self.total[name]}


@torch.no_grad()
def adapter_sparsity(
    model: nn.Module,
    batches: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    adapter_name: str | None = None,
) -> float:
    """Fraction of zeros in the adapters' intermediate over one batch (a dict) or several (an iterable).

    MonoLoRA: zeros of the ReLU'd intermediate; plain LoRA: zeros of ``B A x`` (see
    :class:`AdapterActivationMonitor`). Runs the model in eval mode and restores its mode.

    Example:
        >>> import torch
        >>> from transformers import BertConfig
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, add_lora
        >>> cfg = MonoSemanticConfig(backbone_config=BertConfig(vocab_size=100, hidden_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
        ...     feature_dim=64, num_labels=2)
        >>> batch = {"input_ids": torch.randint(0, 100, (2, 7))}
        >>> lora = add_lora(MonoSemanticForSequenceClassification(cfg), r=4)
        >>> adapter_sparsity(lora, batch)  # plain LoRA: B A x has no exact zeros (B starts at 0: all zero)
        1.0
    """
    if isinstance(batches, Mapping):
        batches = [batches]
    was_training = model.training
    model.eval()
    try:
        with AdapterActivationMonitor(model, adapter_name) as monitor:
            for batch in batches:
                model(**batch)
    finally:
        model.train(was_training)
    return monitor.sparsity
