import pytest
import torch
from conftest import tiny_bert_config

from hf_monosem import FEATURE_LAYERS, MonoSemanticConfig, register_feature_layer
from hf_monosem.models.feature_layers import LinearFeatures, build_feature_layer


def _layer(kind, **kwargs):
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer=kind, feature_dim=64, **kwargs)
    torch.manual_seed(0)
    return build_feature_layer(cfg, input_dim=32)


@pytest.mark.parametrize("kind", ["linear", "nonneg", "sae", "topk"])
def test_shapes_and_aux_terms(kind):
    feats, aux = _layer(kind)(torch.randn(5, 32))
    assert feats.shape == (5, 64)
    expected = {"linear": set(), "nonneg": set(), "sae": {"reconstruction_loss", "sparsity_loss"},
                "topk": {"reconstruction_loss"}}[kind]
    assert set(aux) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in aux.values())


def test_linear_features_take_both_signs_and_nonneg_do_not():
    x = torch.randn(64, 32)
    assert (_layer("linear")(x)[0] < 0).any()
    for act in ("relu", "softplus", "abs"):
        assert (_layer("nonneg", nonneg_activation=act)(x)[0] >= 0).all()
    assert (_layer("sae")(x)[0] >= 0).all()


def test_topk_keeps_exactly_k_codes():
    codes, _ = _layer("topk", topk=8)(torch.randn(32, 32))
    assert ((codes != 0).sum(-1) == 8).all()
    assert (codes >= 0).all()


def test_sae_loss_weights_come_from_config():
    layer = _layer("sae", sparsity_weight=0.25, reconstruction_weight=2.0)
    _, aux = layer(torch.randn(4, 32))
    total = layer.weighted_aux_loss(aux)
    assert torch.allclose(total, 2.0 * aux["reconstruction_loss"] + 0.25 * aux["sparsity_loss"])


def test_zero_and_huge_inputs_stay_finite():
    for kind in FEATURE_LAYERS:
        layer = _layer(kind)
        for x in (torch.zeros(3, 32), torch.full((3, 32), 1e30)):
            feats, aux = layer(x)
            assert torch.isfinite(feats).all() or kind in ("linear", "nonneg")  # a linear map of 1e30 overflows
            assert all(torch.isfinite(v) for v in aux.values())


def test_projector_mlp_is_used_when_requested():
    layer = _layer("nonneg", projector_hidden_dim=128)
    assert isinstance(layer, LinearFeatures) and isinstance(layer.project, torch.nn.Sequential)
    assert layer(torch.randn(2, 32))[0].shape == (2, 64)


def test_a_fifth_kind_is_one_class_and_one_line():
    @register_feature_layer("gelu_test")
    class GeluFeatures(LinearFeatures):
        def forward(self, x):
            return torch.nn.functional.gelu(self.project(x)), {}

    try:
        cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="gelu_test", feature_dim=16)
        assert build_feature_layer(cfg, 32)(torch.randn(2, 32))[0].shape == (2, 16)
        with pytest.raises(ValueError, match="already registered"):
            register_feature_layer("gelu_test")(GeluFeatures)
    finally:
        del FEATURE_LAYERS["gelu_test"]
