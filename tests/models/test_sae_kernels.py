"""The fast TopK training kernel (``fit_forward``: sparse encode backward, sparse decode) computes what
the dense reference (``forward``, the layer the model runs) computes: the same codes, the same loss and
the same gradients; and the AuxK term matches its dense definition."""

import pytest
import torch
import torch.nn.functional as F

from hf_monosem.models.feature_layers import FeatureLayerSettings
from hf_monosem.models.sae import SparseAutoencoderFeatures, TopKSparseAutoencoderFeatures


def _layer(normalize_input=True, dim=24, width=96, k=6, seed=0):
    torch.manual_seed(seed)
    layer = TopKSparseAutoencoderFeatures(
        dim, FeatureLayerSettings(feature_dim=width, topk=k, sae_normalize_input=normalize_input)
    )
    with torch.no_grad():  # a layer in mid-training: nonzero biases, decoder columns not unit norm
        layer.pre_bias.normal_(0, 0.1)
        layer.encoder.bias.normal_(0, 0.1)
        layer.decoder.weight.mul_(torch.rand(width) + 0.5)
    return layer


def _grads(layer, loss):
    params = dict(layer.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


# the SAE computes in fp32 whatever its input (models/sae.py: prepare_input)
TOL = {"rtol": 1e-4, "atol": 1e-6}


@pytest.mark.parametrize("normalize_input", [True, False])
def test_fit_forward_gives_the_dense_codes_loss_and_gradients(normalize_input):
    layer = _layer(normalize_input)
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(1)) * 3
    codes, aux = layer(x)
    dense_grads = _grads(layer, aux["reconstruction_loss"])
    step = layer.fit_forward(x)
    assert sorted(step.aux_losses) == ["reconstruction_loss"]
    sparse_grads = _grads(layer, step.aux_losses["reconstruction_loss"])
    tol = TOL
    torch.testing.assert_close(step.aux_losses["reconstruction_loss"], aux["reconstruction_loss"], **tol)
    for name in dense_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], **tol, msg=name)
    # the codes: the sparse encoding scattered is the dense one, bit for bit
    with torch.no_grad():
        values, indices, _ = layer.sparse_encode(layer.prepare_input(x))
        assert torch.equal(torch.zeros_like(codes).scatter(-1, indices, values), codes)
        reconstruction = layer.decode(codes)
        torch.testing.assert_close(layer.sparse_decode(values, indices), reconstruction, **tol)
    assert torch.equal(step.fired, (codes != 0).any(0))
    assert int(step.active) == int((codes != 0).sum())
    prepared = layer.prepare_input(x)
    torch.testing.assert_close(step.squared_error, (reconstruction - prepared).pow(2).sum().detach(), **tol)


def test_fit_forward_of_the_relu_sae_is_its_forward():
    torch.manual_seed(0)
    layer = SparseAutoencoderFeatures(16, FeatureLayerSettings(feature_dim=48))
    x = torch.randn(20, 16)
    codes, aux = layer(x)
    step = layer.fit_forward(x)
    assert sorted(step.aux_losses) == sorted(aux) == ["reconstruction_loss", "sparsity_loss"]
    for name in aux:
        torch.testing.assert_close(step.aux_losses[name], aux[name])
    assert torch.equal(step.fired, (codes != 0).any(0))
    with pytest.raises(ValueError, match="apply to 'topk' only"):
        layer.fit_forward(x, dead=torch.ones(48, dtype=torch.bool))


@pytest.mark.parametrize("dead_count", [5, 60])  # fewer and more dead latents than k_aux = 24 // 2
def test_auxk_term_matches_its_dense_definition(dead_count):
    layer = _layer()
    x = torch.randn(32, 24, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(96, dtype=torch.bool)
    dead[torch.randperm(96, generator=torch.Generator().manual_seed(3))[:dead_count]] = True
    step = layer.fit_forward(x, dead=dead)
    assert sorted(step.aux_losses) == ["auxk_loss", "reconstruction_loss"]
    sparse_grads = _grads(layer, step.aux_losses["auxk_loss"])

    # dense AuxK: top k_aux of the dead latents' pre-activations (ReLU) reconstruct the detached residual
    prepared = layer.prepare_input(x)
    codes, _ = layer(x)
    residual = (prepared - layer.decode(codes)).detach()
    pre = layer.encode_preactivations(prepared)
    k_aux = min(12, dead_count)
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = masked.topk(k_aux, dim=-1)
    aux_codes = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
    error = (F.linear(aux_codes, layer.decoder.weight) - residual).pow(2).sum(-1)
    expected = min(dead_count / 12, 1.0) * (error / prepared.pow(2).sum(-1)).mean()
    dense_grads = _grads(layer, expected)
    torch.testing.assert_close(step.aux_losses["auxk_loss"], expected, **TOL)
    for name in dense_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], **TOL, msg=name)
    assert dense_grads["encoder.weight"][~dead].abs().max() == 0  # only dead latents are pushed
    assert "auxk_loss" not in layer.fit_forward(x, dead=torch.zeros(96, dtype=torch.bool)).aux_losses


def test_decoder_gradient_projection_keeps_unit_columns_to_first_order():
    layer = _layer()
    layer.normalize_decoder_()
    step = layer.fit_forward(torch.randn(16, 24))
    step.aux_losses["reconstruction_loss"].backward()
    layer.project_decoder_grad_()
    weight, grad = layer.decoder.weight, layer.decoder.weight.grad
    assert (grad * weight).sum(0).abs().max() < 1e-6


@pytest.mark.parametrize("weights", [(1.0, 1e-3), (1.0, 0.0), (0.0, 0.5)])
def test_relu_sae_forward_gives_the_autograd_loss_and_gradients(weights):
    """The ReLU SAE's fused decode + decoder-norm L1 node equals the plain autograd expression."""
    reconstruction_weight, sparsity_weight = weights
    torch.manual_seed(0)
    layer = SparseAutoencoderFeatures(
        24,
        FeatureLayerSettings(
            feature_dim=96, sparsity_weight=sparsity_weight, reconstruction_weight=reconstruction_weight
        ),
    )
    with torch.no_grad():
        layer.pre_bias.normal_(0, 0.1)
        layer.decoder.weight.mul_(torch.rand(96) + 0.5)
        layer.decoder.weight[:, 3] = 0.0  # a zero column: its norm is clamped, no gradient through it
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(1)) * 3
    head = torch.nn.Linear(96, 5)
    codes, aux = layer(x)
    loss = head(codes).sum() + layer.weighted_aux_loss(aux)
    grads = _grads(layer, loss)

    prepared = layer.prepare_input(x)
    ref_codes = F.relu(F.linear(prepared - layer.pre_bias, layer.encoder.weight, layer.encoder.bias))
    weight = layer.decoder.weight
    norms = (weight * weight).sum(0).clamp_min(1e-12).sqrt()
    reconstruction = F.linear(ref_codes, weight) + layer.pre_bias
    ref_aux = {
        "reconstruction_loss": SparseAutoencoderFeatures.normalized_mse(prepared, reconstruction),
        "sparsity_loss": (ref_codes * norms).sum(-1).mean(),
    }
    ref_loss = head(ref_codes).sum() + layer.weighted_aux_loss(ref_aux)
    ref_grads = _grads(layer, ref_loss)
    torch.testing.assert_close(codes, ref_codes)
    for name in aux:
        torch.testing.assert_close(aux[name], ref_aux[name], **TOL)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOL, msg=name)
