"""MonoLoraConfig: a peft ``LoraConfig`` with one more field, ``monolora`` (the ReLU placement)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from peft import LoraConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch import nn

from .layer import MonoLoraLinear

__all__ = ["MONOLORA_PEFT_TYPE", "MONOLORA_PLACEMENTS", "MonoLoraConfig", "register_with_peft"]

#: where MonoLoRA puts the ReLU: ``relu(B A x)`` or ``B relu(A x)``.
MONOLORA_PLACEMENTS = ("output", "hidden")

#: ``peft_type`` written to a MonoLoRA ``adapter_config.json`` (in memory the config is plain LoRA).
MONOLORA_PEFT_TYPE = "MONOLORA"


# ----------------------------------------------------------------------------------------- config
@dataclass
class MonoLoraConfig(LoraConfig):
    """A ``LoraConfig`` plus ``monolora``: the ReLU placement (``"output"`` or ``"hidden"``).

    With ``monolora=None`` it is plain LoRA. Otherwise it registers :class:`MonoLoraLinear` for
    ``nn.Linear`` targets, and targets of other types fail loudly when the adapter is built.

    Example:
        >>> cfg = MonoLoraConfig(r=4, lora_alpha=8, target_modules=["query"], monolora="hidden")
        >>> cfg.peft_type.value, cfg.to_dict()["peft_type"], cfg.to_dict()["monolora"]
        ('LORA', 'MONOLORA', 'hidden')
    """

    monolora: str | None = field(
        default=None,
        metadata={
            "help": "MonoLoRA ReLU placement: 'output' = relu(B A x), 'hidden' = B relu(A x); None = plain "
            "LoRA.",
            "is_lora_variant": True,
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.monolora is None:
            return
        if self.monolora not in MONOLORA_PLACEMENTS:
            raise ValueError(f"monolora={self.monolora!r} is not valid; allowed: None, 'output', 'hidden'")
        others = [
            f.name
            for f in dataclasses.fields(self)
            if f.metadata.get("is_lora_variant") and f.name != "monolora" and getattr(self, f.name)
        ]
        init_variants = dataclasses.fields(LoraConfig)
        init_field = next(f for f in init_variants if f.name == "init_lora_weights")
        if self.init_lora_weights in init_field.metadata.get("lora_variants", ()):
            others.append(f"init_lora_weights={self.init_lora_weights!r}")
        if others:
            raise ValueError(f"MonoLoRA cannot be combined with other LoRA variants: {others}")
        if self.lora_bias:
            raise ValueError("MonoLoRA does not support lora_bias=True")
        self._register_custom_module({nn.Linear: MonoLoraLinear})

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.monolora is not None:
            d["peft_type"] = MONOLORA_PEFT_TYPE
        return d


def register_with_peft() -> None:
    """Let ``PeftConfig``/``PeftModel.from_pretrained`` read MonoLoRA adapter folders.

    Adds the string key ``"MONOLORA"`` to peft's type -> config-class lookup (a key no peft adapter
    uses); the in-memory ``peft_type`` stays ``LORA``, so peft runs it with its LoRA tuner.
    """
    PEFT_TYPE_TO_CONFIG_MAPPING.setdefault(MONOLORA_PEFT_TYPE, MonoLoraConfig)
