import dataclasses

import pytest
from tiny_models import tiny_bert_config, tiny_llama_config, tiny_resnet_config, tiny_vit_config

from hf_monosem import MonoSemanticConfig, MonoSemanticModel
from hf_monosem.models.feature_layers import FeatureLayerSettings


def test_defaults_follow_backbone_family():
    assert MonoSemanticConfig(backbone_config=tiny_bert_config()).pooling == "cls"
    assert MonoSemanticConfig(backbone_config=tiny_vit_config()).pooling == "cls"
    assert MonoSemanticConfig(backbone_config=tiny_resnet_config()).pooling == "mean"
    assert MonoSemanticConfig(backbone_config=tiny_llama_config()).pooling == "last"
    # default width is 4x the backbone's
    assert MonoSemanticConfig(backbone_config=tiny_bert_config()).feature_dim == 4 * 32
    assert MonoSemanticConfig(backbone_config=tiny_resnet_config()).feature_dim == 4 * 16
    # topk defaults to the paper's 1/8 of the width
    assert (
        MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=64).topk == 8
    )


def test_roundtrip_through_json(tmp_path):
    cfg = MonoSemanticConfig(
        backbone_config=tiny_vit_config(),
        feature_layer="sae",
        feature_dim=48,
        sparsity_weight=0.01,
        num_labels=5,
        id2label={i: f"c{i}" for i in range(5)},
    )
    cfg.save_pretrained(tmp_path)
    loaded = MonoSemanticConfig.from_pretrained(tmp_path)
    assert type(loaded.backbone_config).__name__ == "ViTConfig"
    assert loaded.backbone_config.hidden_size == 32
    assert (loaded.feature_layer, loaded.feature_dim, loaded.sparsity_weight) == ("sae", 48, 0.01)
    assert loaded.num_labels == 5 and loaded.id2label[3] == "c3"


def test_backbone_dict_is_turned_into_a_config():
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config().to_dict())
    assert type(cfg.backbone_config).__name__ == "BertConfig"


def test_backbone_folder_config_is_read(tmp_path):
    tiny_bert_config().save_pretrained(tmp_path)
    cfg = MonoSemanticConfig(backbone=str(tmp_path))
    assert cfg.backbone_config.hidden_size == 32


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"feature_layer": "sparse"}, "feature_layer='sparse'"),
        ({"feature_dim": 0}, "feature_dim=0"),
        ({"feature_dim": -3}, "feature_dim=-3"),
        ({"feature_layer": "topk", "feature_dim": 16, "topk": 17}, "topk=17"),
        ({"feature_layer": "topk", "topk": 0}, "topk=0"),
        ({"sparsity_weight": -1.0}, "sparsity_weight=-1.0"),
        ({"reconstruction_weight": -0.5}, "reconstruction_weight=-0.5"),
        ({"nonneg_activation": "gelu"}, "nonneg_activation='gelu'"),
        ({"pooling": "median"}, "pooling='median'"),
        ({"classifier_dropout": 1.5}, "classifier_dropout=1.5"),
        ({"classifier_input_scale": 0.0}, "classifier_input_scale=0.0"),
        ({"classifier_input_scale": float("nan")}, "classifier_input_scale=nan"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"projector_hidden_dim": 0}, "projector_hidden_dim=0"),
        ({"sae_normalize_input": "no"}, "sae_normalize_input='no'"),
    ],
)
def test_bad_values_name_the_value_and_the_choices(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        MonoSemanticConfig(backbone_config=tiny_bert_config(), **kwargs)
    assert fragment in str(err.value)
    assert "allowed" in str(err.value)


def test_missing_backbone_and_incompatible_pooling():
    # a config builds with no arguments (transformers' convention); the model built from it is refused
    with pytest.raises(ValueError, match="give either backbone"):
        MonoSemanticModel(MonoSemanticConfig())
    with pytest.raises(ValueError, match="pooling='cls'"):
        MonoSemanticConfig(backbone_config=tiny_resnet_config(), pooling="cls")
    with pytest.raises(ValueError, match="model_type='not-a-model'"):
        MonoSemanticConfig(backbone_config={"model_type": "not-a-model"})


def test_feature_layer_defaults_have_one_source():
    """The config's feature-layer fields default to FeatureLayerSettings' values (and say so)."""
    config_fields = {f.name: f for f in dataclasses.fields(MonoSemanticConfig)}
    for field in dataclasses.fields(FeatureLayerSettings):
        assert field.name in config_fields, field.name
        if field.default is not dataclasses.MISSING:
            assert config_fields[field.name].default == field.default, field.name
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config())
    assert FeatureLayerSettings.from_config(cfg) == FeatureLayerSettings(feature_dim=cfg.feature_dim)


def test_the_config_fills_topk_from_the_settings_rule():
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=40)
    assert cfg.topk == FeatureLayerSettings.default_topk(40) == 5
    assert (
        MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=4).topk == 1
    )
    assert MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="sae").topk is None
