"""Tiny real transformers backbone configs (built from configs, random weights) and matching inputs.

Imported by the tests as ``from tiny_models import ...`` (``tests/`` is on ``sys.path`` through its
conftest), never through ``conftest`` itself: several conftest modules share that name.
"""

from __future__ import annotations

import torch


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_vit_config(**overrides):
    from transformers import ViTConfig

    kwargs = dict(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def tiny_resnet_config(**overrides):
    from transformers import ResNetConfig

    kwargs = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    kwargs.update(overrides)
    return ResNetConfig(**kwargs)


def tiny_convnext_config(**overrides):
    from transformers import ConvNextConfig

    kwargs = dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    kwargs.update(overrides)
    return ConvNextConfig(**kwargs)


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


BACKBONES = {
    "bert": (tiny_bert_config, "text"),
    "vit": (tiny_vit_config, "image3x16"),
    "resnet": (tiny_resnet_config, "image1x28"),
    "convnext": (tiny_convnext_config, "image3x16"),
    "llama": (tiny_llama_config, "text"),
}


def make_inputs(kind: str, batch: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        ids = torch.randint(1, 100, (batch, 7), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0  # one padded row
        return {"input_ids": ids, "attention_mask": mask}
    if kind == "image1x28":
        return {"pixel_values": torch.randn(batch, 1, 28, 28, generator=g)}
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
