"""LoRA / MonoLoRA adapters on the backbone (peft), the feature layer and head trained fully.
"""
from .lora import (
    DEFAULT_LORA_TARGETS,
    MONOLORA_PEFT_TYPE,
    MONOLORA_PLACEMENTS,
    AdapterActivationMonitor,
    MonoLoraConfig,
    MonoLoraLinear,
    MonoLoraMergeError,
    MonoReLU,
    adapter_sparsity,
    add_lora,
    default_target_modules,
    is_monolora,
    load_lora,
    lora_config,
)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "MONOLORA_PEFT_TYPE",
    "MONOLORA_PLACEMENTS",
    "AdapterActivationMonitor",
    "MonoLoraConfig",
    "MonoLoraLinear",
    "MonoLoraMergeError",
    "MonoReLU",
    "adapter_sparsity",
    "add_lora",
    "default_target_modules",
    "is_monolora",
    "load_lora",
    "lora_config",
]
