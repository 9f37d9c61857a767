import pytest
import torch
from tiny_models import tiny_bert_config

from hf_monosem import FEATURE_LAYERS, MonoSemanticConfig, register_feature_layer
from hf_monosem.models.feature_layers import (
    FeatureLayerSettings,
    LinearFeatures,
    build_feature_layer,
    feature_layer_class,
    feature_layer_kinds,
)
from hf_monosem.models.sae import SparseAutoencoder


def _layer(kind, **kwargs):
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer=kind, feature_dim=64, **kwargs)
    torch.manual_seed(0)
    return build_feature_layer(cfg, input_dim=32)


@pytest.mark.parametrize("kind", ["linear", "nonneg", "sae", "topk"])
def test_shapes_and_aux_terms(kind):
    feats, aux = _layer(kind)(torch.randn(5, 32))
    assert feats.shape == (5, 64)
    expected = {
        "linear": set(),
        "nonneg": set(),
        "sae": {"reconstruction_loss", "sparsity_loss"},
        "topk": {"reconstruction_loss"},
    }[kind]
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


def test_topk_keeps_at_most_k_codes_the_positive_part_of_the_k_largest():
    """ReLU after the top-k: a row with fewer than k positive pre-activations keeps fewer than k codes."""
    layer, k = _layer("topk", topk=8), 8
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pre = layer.encode_preactivations(layer.prepare_input(x))
        # lower every pre-activation by the median k-th largest one: about half the rows keep < k positives
        layer.encoder.bias -= pre.topk(k, dim=-1).values[:, -1].median()
        pre = layer.encode_preactivations(layer.prepare_input(x))
        codes, _ = layer(x)
    active = (codes != 0).sum(-1)
    positive = (pre > 0).sum(-1)
    assert (positive < k).any() and (positive >= k).any()  # both cases are exercised
    assert torch.equal(active, positive.clamp(max=k)) and (active <= k).all() and (active < k).any()
    assert (codes >= 0).all()
    kept = codes != 0  # each kept code is its pre-activation, and one of the row's k largest
    assert torch.equal(codes[kept], pre[kept])
    assert (pre[kept] >= pre.topk(k, dim=-1).values[:, -1:].expand_as(pre)[kept]).all()
    with torch.no_grad():
        layer.encoder.bias -= 10.0  # every pre-activation negative: no code at all, finite loss
        codes, aux = layer(x)
    assert not codes.any() and torch.isfinite(aux["reconstruction_loss"])


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
            assert torch.isfinite(feats).all() or kind in (
                "linear",
                "nonneg",
            )  # a linear map of 1e30 overflows
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
        cfg = MonoSemanticConfig(
            backbone_config=tiny_bert_config(), feature_layer="gelu_test", feature_dim=16
        )
        assert build_feature_layer(cfg, 32)(torch.randn(2, 32))[0].shape == (2, 16)
        with pytest.raises(ValueError, match="already registered"):
            register_feature_layer("gelu_test")(GeluFeatures)
        # its kind attributes are inherited: it is a projector, so the cached projector fitting takes it
        assert feature_layer_kinds(is_contrastive_projector=True) == ["linear", "nonneg", "gelu_test"]
    finally:
        del FEATURE_LAYERS["gelu_test"]


def test_kinds_are_described_by_class_attributes():
    assert feature_layer_kinds() == ["linear", "nonneg", "sae", "topk", "gated", "jumprelu"]
    assert feature_layer_kinds(is_sparse_autoencoder=True) == ["sae", "topk", "gated", "jumprelu"]
    assert feature_layer_kinds(is_contrastive_projector=True) == ["linear", "nonneg"]
    assert feature_layer_kinds(is_sparse_autoencoder=False, is_contrastive_projector=False) == []
    for kind, cls in FEATURE_LAYERS.items():
        assert (
            cls.is_sparse_autoencoder
            == issubclass(cls, SparseAutoencoder)
            == (kind not in ("linear", "nonneg"))
        )
    assert feature_layer_class("sae", is_sparse_autoencoder=True) is FEATURE_LAYERS["sae"]
    with pytest.raises(ValueError, match=r"feature_layer='linear' is not valid; allowed: 'sae', 'topk'"):
        feature_layer_class("linear", is_sparse_autoencoder=True)
    with pytest.raises(ValueError, match=r"feature_layer='sparse' is not valid; allowed: 'linear', 'nonneg'"):
        build_feature_layer(FeatureLayerSettings(feature_dim=8), 4, kind="sparse")
    with pytest.raises(ValueError, match="is_sparse: not a FeatureLayer kind attribute"):
        feature_layer_kinds(is_sparse=True)


def test_the_sae_kinds_register_from_their_own_module():
    from hf_monosem.models import SparseAutoencoderFeatures as from_package
    from hf_monosem.models.sae import SparseAutoencoderFeatures, TopKSparseAutoencoderFeatures

    assert SparseAutoencoderFeatures is from_package is FEATURE_LAYERS["sae"]
    assert TopKSparseAutoencoderFeatures is FEATURE_LAYERS["topk"]
    assert issubclass(TopKSparseAutoencoderFeatures, SparseAutoencoder)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"feature_dim": 0}, "feature_dim=0"),
        ({"feature_dim": True}, "feature_dim=True"),
        ({"feature_dim": 8, "projector_hidden_dim": -1}, "projector_hidden_dim=-1"),
        ({"feature_dim": 8, "nonneg_activation": "gelu"}, "nonneg_activation='gelu'"),
        ({"feature_dim": 8, "topk": 9}, "topk=9"),
        ({"feature_dim": 8, "topk": 2.0}, "topk=2.0"),
        ({"feature_dim": 8, "sparsity_weight": -1.0}, "sparsity_weight=-1.0"),
        ({"feature_dim": 8, "reconstruction_weight": float("nan")}, "reconstruction_weight=nan"),
        ({"feature_dim": 8, "sae_normalize_input": "yes"}, "sae_normalize_input='yes'"),
    ],
)
def test_settings_are_validated_naming_the_bad_value(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        FeatureLayerSettings(**kwargs)
    assert fragment in str(err.value) and "allowed" in str(err.value)


def test_settings_from_a_config_or_directly_build_the_same_layer():
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(),
        feature_layer="sae",
        feature_dim=64,
        sparsity_weight=0.25,
        sae_normalize_input=False,
    )
    settings = FeatureLayerSettings.from_config(cfg)
    assert settings == FeatureLayerSettings(feature_dim=64, sparsity_weight=0.25, sae_normalize_input=False)
    assert FeatureLayerSettings.from_config(settings) is settings
    with pytest.raises(AttributeError):  # frozen: one validated value per field
        settings.feature_dim = 3
    torch.manual_seed(0)
    from_config = build_feature_layer(cfg, 32)
    torch.manual_seed(0)
    from_settings = build_feature_layer(settings, 32, kind="sae")
    assert from_config.settings == from_settings.settings == settings
    assert from_settings.loss_weights == {"reconstruction_loss": 1.0, "sparsity_loss": 0.25}
    assert not from_settings.normalize_input
    for key, value in from_config.state_dict().items():  # same parameter names, shapes and init
        assert torch.equal(value, from_settings.state_dict()[key])
    with pytest.raises(ValueError, match="pass kind="):
        build_feature_layer(settings, 32)
    # topk=None means the paper's feature_dim // 8
    assert build_feature_layer(FeatureLayerSettings(feature_dim=64), 32, kind="topk").k == 8


def test_a_kind_may_extend_the_settings_with_its_own_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class ScaledSettings(FeatureLayerSettings):
        scale: float = 2.0

    @register_feature_layer("scaled_test")
    class ScaledFeatures(LinearFeatures):
        settings_class = ScaledSettings

        def forward(self, x):
            return self.settings.scale * self.project(x), {}

    try:
        layer = build_feature_layer(FeatureLayerSettings(feature_dim=8), 4, kind="scaled_test")
        assert layer.settings == ScaledSettings(feature_dim=8, scale=2.0)
        assert (
            build_feature_layer(
                ScaledSettings(feature_dim=8, scale=3.0), 4, kind="scaled_test"
            ).settings.scale
            == 3.0
        )
    finally:
        del FEATURE_LAYERS["scaled_test"]


@pytest.mark.parametrize("kind", ["sae", "topk"])
def test_the_sae_keeps_its_decoder_unit_norm_itself(kind):
    layer = _layer(kind, topk=8)
    with torch.no_grad():
        layer.decoder.weight.mul_(torch.rand(64) * 5 + 0.1)
    before = layer.decoder.weight.detach().clone()
    layer.normalize_decoder_()
    assert torch.allclose(layer.decoder.weight.norm(dim=0), torch.ones(64), atol=1e-6)
    assert torch.allclose(layer.decoder.weight, before / before.norm(dim=0, keepdim=True))  # directions kept
