"""Numerical safety of the feature layers: property tests over shapes, magnitudes and dtypes."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_bert_config

from hf_monosem import FEATURE_LAYERS, MonoSemanticConfig
from hf_monosem.models.feature_layers import build_feature_layer


def layer_for(kind, input_dim, feature_dim, topk=None):
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(hidden_size=input_dim if input_dim % 2 == 0 else input_dim + 1),
        feature_layer=kind,
        feature_dim=feature_dim,
        topk=topk,
    )
    torch.manual_seed(0)
    return build_feature_layer(cfg, input_dim)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(FEATURE_LAYERS)),
    batch=st.integers(1, 6),
    input_dim=st.integers(1, 24),
    feature_dim=st.integers(1, 48),
    log_scale=st.floats(-30, 30),
    zero=st.booleans(),
)
def test_no_nan_for_any_shape_or_magnitude(kind, batch, input_dim, feature_dim, log_scale, zero):
    topk = max(1, feature_dim // 4) if kind == "topk" else None
    layer = layer_for(kind, input_dim, feature_dim, topk)
    x = torch.zeros(batch, input_dim) if zero else torch.randn(batch, input_dim) * (10.0**log_scale)
    feats, aux = layer(x)
    assert feats.shape == (batch, feature_dim)
    assert not torch.isnan(feats).any()
    for value in aux.values():
        assert torch.isfinite(value)
    if kind in ("sae", "topk"):
        # SAEs read L2-normalised input, so their codes are finite at every input scale
        assert torch.isfinite(feats).all()
    if kind == "topk":
        assert ((feats != 0).sum(-1) <= topk).all()
    total = layer.weighted_aux_loss(aux)
    if total is not None:
        total.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("kind", ["sae", "topk"])
def test_sae_layers_are_stable_under_bf16_autocast(kind):
    layer = layer_for(kind, 32, 128, topk=16 if kind == "topk" else None)
    x = torch.randn(16, 32)
    ref_feats, ref_aux = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, aux = layer(x.bfloat16())
    # the SAE arithmetic runs in fp32 even under autocast, so only the bf16 input rounding differs
    assert feats.dtype == torch.float32 and aux["reconstruction_loss"].dtype == torch.float32
    torch.testing.assert_close(
        aux["reconstruction_loss"], ref_aux["reconstruction_loss"], rtol=0.05, atol=1e-3
    )
    both = (feats != 0) & (ref_feats != 0)
    torch.testing.assert_close(feats[both], ref_feats[both], rtol=0.05, atol=0.02)
    # bf16 rounding of the input may swap which code wins a near-tie at the TopK boundary; rarely
    agreement = ((feats != 0) == (ref_feats != 0)).float().mean()
    assert agreement > 0.99


# ---- losses: float32 under autocast, finite at any scale -------------------------------------------


def test_losses_compute_in_float32_under_bf16_autocast():
    from hf_monosem.training.losses import info_nce_loss, robust_classification_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    reference = info_nce_loss(a, b)
    logits, labels = 4 * torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same_inputs = info_nce_loss(a, b)
        bf16_inputs = info_nce_loss(a.bfloat16(), b.bfloat16())
        robust = {t: robust_classification_loss(t, logits.bfloat16(), labels) for t in ("ce", "gce", "sce")}
    # the similarity matmul is not autocast to bf16: fp32 inputs give the fp32 loss exactly
    assert same_inputs.dtype == torch.float32 and torch.equal(same_inputs, reference)
    assert bf16_inputs.dtype == torch.float32 and torch.isfinite(bf16_inputs)
    torch.testing.assert_close(bf16_inputs, reference, rtol=1e-2, atol=1e-2)
    for name, value in robust.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        torch.testing.assert_close(
            value, robust_classification_loss(name, logits, labels), rtol=2e-2, atol=2e-2
        )


@pytest.mark.parametrize("kind", sorted(FEATURE_LAYERS))
def test_classifier_loss_is_float32_and_finite_under_bf16_autocast(kind):
    from hf_monosem import MonoSemanticForSequenceClassification

    torch.manual_seed(0)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(), feature_layer=kind, feature_dim=64,
        topk=8 if kind == "topk" else None, num_labels=3,
    )  # fmt: skip
    model = MonoSemanticForSequenceClassification(cfg)
    ids = torch.randint(1, 100, (4, 7), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0]))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    for name, value in out.aux_losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    dim=st.integers(1, 16),
    log_scale=st.floats(-30, 30),
    nonneg=st.booleans(),
    zero_rows=st.integers(0, 2),
    temperature=st.sampled_from([0.05, 0.2, 1.0]),
)
def test_info_nce_is_finite_with_finite_gradients_at_any_scale(
    batch, dim, log_scale, nonneg, zero_rows, temperature
):
    from hf_monosem.training.losses import info_nce_loss

    g = torch.Generator().manual_seed(batch * 100 + dim)
    a, b = (torch.randn(batch, dim, generator=g) * 10.0**log_scale for _ in range(2))
    if nonneg:  # NCL: ReLU'd projector outputs, whole rows may be zero
        a, b = a.relu(), b.relu()
    a[:zero_rows] = 0
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss, accuracy = info_nce_loss(a, b, temperature, return_accuracy=True)
    assert torch.isfinite(loss) and loss >= 0 and 0 <= float(accuracy) <= 1
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@settings(max_examples=40, deadline=None)
@given(
    loss_type=st.sampled_from(["ce", "gce", "sce"]),
    batch=st.integers(1, 8),
    classes=st.integers(2, 12),
    log_scale=st.floats(-6, 4),
    ignored=st.integers(0, 3),
)
def test_robust_losses_are_finite_with_finite_gradients_for_extreme_logits(
    loss_type, batch, classes, log_scale, ignored
):
    from hf_monosem.training.losses import robust_classification_loss

    g = torch.Generator().manual_seed(batch * 13 + classes)
    logits = (torch.randn(batch, classes, generator=g) * 10.0**log_scale).requires_grad_(True)
    labels = torch.randint(0, classes, (batch,), generator=g)
    labels[: min(ignored, batch)] = -100  # all rows may be ignored
    loss = robust_classification_loss(loss_type, logits, labels)
    assert torch.isfinite(loss) and loss >= 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_property_based_tests_are_derandomized_on_ci():
    """conftest.py: under CI=true every hypothesis test draws the same examples on every run."""
    profile = settings.get_profile("ci")
    assert profile.derandomize and profile.deadline is None
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        assert settings.default.derandomize and settings.default.deadline is None
