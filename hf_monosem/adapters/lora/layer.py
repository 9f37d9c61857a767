"""The MonoLoRA layer: a peft ``lora.Linear`` whose LoRA variant puts a ReLU in the adapter branch."""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import LoraVariant
from torch import nn

__all__ = ["MonoLoraLinear", "MonoLoraMergeError", "MonoReLU"]


class MonoLoraMergeError(RuntimeError):
    """Raised when asked to merge a MonoLoRA adapter into the base weights (impossible, see module doc)."""


class MonoReLU(nn.Module):
    """``clamp(min=0)``: equal to ReLU, but with gradient 1 (not 0) at exactly 0.

    The intermediate MonoLoRA makes non-negative passes through this module, so forward hooks on it
    (see :class:`AdapterActivationMonitor`) see exactly the sparse values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)


def _ensure_mono_relu(module: nn.Module) -> nn.ModuleDict:
    # created lazily: peft builds the first adapter from inside the layer's constructor
    if "mono_relu" not in module._modules:
        module.mono_relu = nn.ModuleDict()
    return module.mono_relu


class MonoLoraVariant(LoraVariant):
    """The forward pass of one MonoLoRA adapter; merging is refused (the update is non-linear)."""

    def __init__(self, placement: str):
        self.placement = placement

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        _ensure_mono_relu(module)[adapter_name] = MonoReLU()

    @staticmethod
    def _refuse(module: LoraLayer, active_adapter: str, *args, **kwargs):
        placement = module.lora_variant[active_adapter].placement
        update = "relu(B A x)" if placement == "output" else "B relu(A x)"
        raise MonoLoraMergeError(
            f"cannot merge MonoLoRA adapter {active_adapter!r} ({update}) into the base weights: the update "
            f"is "
            "not a linear function of x, so no weight matrix reproduces it. Keep the adapter unmerged (run "
            "the PeftModel), or call unload() to drop the adapters and keep the trained feature layer and "
            "classifier."
        )

    merge_safe = _refuse
    merge_unsafe = _refuse
    unmerge = _refuse

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs
    ):
        lora_a = module.lora_A[active_adapter]
        lora_b = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        relu = module.mono_relu[active_adapter]
        if self.placement == "output":
            update = relu(lora_b(lora_a(dropout(x))) * scaling)
        else:
            update = lora_b(relu(lora_a(dropout(x)))) * scaling
        return result + update


class MonoLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose MonoLoRA adapters run :class:`MonoLoraVariant`.

    Built by peft's custom-module dispatch (``custom_cls(target, adapter_name, config=..., **kwargs)``);
    adapters whose config has ``monolora=None`` behave exactly like plain LoRA.
    """

    other_param_names = LoraLayer.other_param_names + ("mono_relu",)

    def __init__(self, base_layer, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        _ensure_mono_relu(self)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs) -> LoraVariant | None:
        placement = getattr(config, "monolora", None)
        if placement is None:
            return super().resolve_lora_variant(config=config, **kwargs)
        return MonoLoraVariant(placement)

    def __repr__(self) -> str:
        return "mono" + super().__repr__()
