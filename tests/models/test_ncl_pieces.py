"""NCL's anti-collapse pieces: rep_relu (ReLU forward, GELU's derivative backward) and the
activation term -mean_j mean_batch |z_j| on the L2-normalised output."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tiny_models import tiny_bert_config, tiny_resnet_config
from transformers import TrainingArguments

from hf_monosem import ContrastiveTrainer, ImageViews, MonoSemanticConfig, MonoSemanticModel
from hf_monosem.cached import fit_contrastive_projector
from hf_monosem.models.feature_layers import (
    FeatureLayerSettings,
    NonNegativeFeatures,
    activation_loss,
    rep_relu,
)

# negative, zero and positive inputs, including far tails where GELU' is tiny but not zero
X = torch.tensor([-6.0, -3.0, -1.0, -0.3, 0.0, 0.2, 1.0, 2.5, 7.0], dtype=torch.float64)


def test_rep_relu_forward_is_exactly_relu():
    x = torch.randn(1000, dtype=torch.float64)
    assert torch.equal(rep_relu(x), F.relu(x))
    assert torch.equal(rep_relu(X), F.relu(X))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rep_relu_gradient_is_gelus_derivative(dtype):
    x = X.to(dtype).requires_grad_(True)
    (grad,) = torch.autograd.grad(rep_relu(x).sum(), x)
    reference = X.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.gelu(reference).sum(), reference)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(grad.double(), expected, rtol=tolerance, atol=tolerance)
    # the point of it: negative inputs still get a (small) gradient, where ReLU gives exactly zero
    assert (grad[X < 0] != 0).all()


def test_rep_relu_grad_checks_against_finite_differences_away_from_zero():
    # forward is ReLU, so finite differences see ReLU; the backward is GELU' by design, so we check the
    # analytic value instead: Phi(x) + x phi(x)
    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rep_relu(x).sum(), x)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.cdf(X) + X * normal.log_prob(X).exp()
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_activation_loss_value_and_gradient_on_a_hand_made_batch():
    z = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    # unit rows: [.6, .8, 0] and [0, 0, 1]; mean |z| over the 6 entries = 2.4 / 6
    value = activation_loss(z)
    assert float(value.detach()) == pytest.approx(-0.4, abs=1e-12)
    (grad,) = torch.autograd.grad(value, z)
    # d/dz_i of -(1/(B F)) sum_j z_j / ||z|| (positive entries) = -(1/(B F)) (1/||z|| - z_i sum_j z_j /
    # ||z||^3)
    expected = torch.zeros_like(z)
    for row, norm, total in ((0, 5.0, 7.0), (1, 2.0, 2.0)):
        for i in range(3):
            zi = float(z[row, i])
            # |.| at 0 has gradient 0 in torch; the normalisation still passes a gradient through the others
            sign = 1.0 if zi > 0 else 0.0
            expected[row, i] = -(1 / 6) * (sign / norm - zi * total / norm**3)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_activation_loss_prefers_spread_codes_to_collapsed_ones():
    collapsed = torch.zeros(8, 16)
    collapsed[:, 0] = 1.0
    spread = torch.rand(8, 16) + 0.1
    assert float(activation_loss(spread)) < float(activation_loss(collapsed))


def test_nonneg_layer_adds_the_weighted_term_only_when_asked():
    x = torch.randn(5, 8)
    plain = NonNegativeFeatures(8, FeatureLayerSettings(feature_dim=12))
    assert plain(x)[1] == {} and "activation_loss" not in plain.loss_weights
    rewarded = NonNegativeFeatures(8, FeatureLayerSettings(feature_dim=12, activation_loss_weight=10.0))
    rewarded.load_state_dict(plain.state_dict())
    features, aux = rewarded(x)
    assert torch.equal(features, plain(x)[0])  # the term changes the loss, never the features
    assert float(aux["activation_loss"]) == pytest.approx(float(activation_loss(features)))
    assert float(rewarded.weighted_aux_loss(aux)) == pytest.approx(10.0 * float(aux["activation_loss"]))


def test_config_carries_the_anti_collapse_settings_through_a_checkpoint(tmp_path):
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(),
        feature_layer="nonneg",
        feature_dim=16,
        nonneg_activation="rep_relu",
        activation_loss_weight=10.0,
    )
    model = MonoSemanticModel(cfg)
    out = model(input_ids=torch.randint(1, 100, (3, 5)))
    assert float(out.loss) == pytest.approx(10.0 * float(out.aux_losses["activation_loss"]))
    model.save_pretrained(tmp_path)
    loaded = MonoSemanticModel.from_pretrained(tmp_path)
    assert loaded.config.nonneg_activation == "rep_relu" and loaded.config.activation_loss_weight == 10.0
    assert loaded.feature_layer.activation is rep_relu
    with pytest.raises(ValueError, match=r"activation_loss_weight=-1.*a number >= 0"):
        MonoSemanticConfig(backbone_config=tiny_bert_config(), activation_loss_weight=-1)


def test_contrastive_trainer_adds_and_logs_the_activation_term(tmp_path):
    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(
            backbone_config=tiny_resnet_config(),
            feature_layer="nonneg",
            feature_dim=16,
            activation_loss_weight=10.0,
        )
    )
    images = Dataset.from_dict({"pixel_values": torch.rand(8, 1, 12, 12).tolist()}).with_format("torch")
    args = TrainingArguments(
        str(tmp_path),
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = ContrastiveTrainer(
        model=model, args=args, train_dataset=images, image_views=ImageViews(size=(12, 12))
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    log = trainer.state.log_history[0]
    assert log["activation_loss"] < 0
    # total = InfoNCE + 10 * activation term (both logged as window means of the same single step)
    assert log["loss"] == pytest.approx(
        log["contrastive_loss"] + 10.0 * log["activation_loss"], rel=1e-3, abs=1e-3
    )


def test_projector_fitting_uses_the_activation_term():
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    common = dict(feature_layer="nonneg", feature_dim=32, projector_hidden_dim=32, epochs=3, progress=False)
    _, without = fit_contrastive_projector(x, **common)
    _, with_term = fit_contrastive_projector(x, activation_loss_weight=10.0, **common)
    # the reported loss is the total: the term (negative, about -0.1 x 10) pulls it well below InfoNCE alone
    assert with_term["loss"][-1] < without["loss"][-1] - 0.3
