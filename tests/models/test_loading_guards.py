"""A checkpoint without its feature layer's weights is refused (it was only logged, and the layer came up
random); ``from_pretrained(..., output_loading_info=True)`` works on our classes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_bert_config

from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification


def _saved(tmp_path):
    torch.manual_seed(0)
    model = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(
            backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=16, num_labels=2
        )
    )
    model.save_pretrained(tmp_path)
    return model


def test_missing_feature_layer_weights_are_an_error(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if "feature_layer" not in k}
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"holds no weights for the feature layer \(\['monosemantic\.feature_layer"
    ):
        MonoSemanticForSequenceClassification.from_pretrained(tmp_path)


def test_loading_info_is_returned_when_asked(tmp_path):
    model = _saved(tmp_path)
    loaded, info = MonoSemanticForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
