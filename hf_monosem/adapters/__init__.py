"""LoRA / MonoLoRA adapters on the backbone (peft), the feature layer and head trained fully."""

from . import lora
from .lora import *  # noqa: F403

__all__ = list(lora.__all__)
