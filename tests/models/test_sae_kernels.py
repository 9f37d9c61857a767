"""The fast TopK training kernel (``fit_forward``: sparse encode backward, sparse decode) computes what
the dense reference (``forward``, the layer the model runs) computes: the same codes, the same loss and
the same gradients; and the AuxK term matches its dense definition."""

import pytest
import torch
import torch.nn.functional as F

from hf_monosem.models.feature_layers import FeatureLayerSettings
from hf_monosem.models.sae import SparseAutoencoderFeatures, TopKSparseAutoencoderFeatures
from hf_monosem.models.sae_kernels import TopKReconstruction


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


def _plain_topk_reconstruction(x, pre_bias, enc_weight, enc_bias, dec_weight, k):
    """The TopK step written plainly, for autograd: dense pre-activations, top-k, dense codes, GEMM decode."""
    pre = (x - pre_bias) @ enc_weight.t() + enc_bias
    values, indices = pre.topk(k, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
    return (codes @ dec_weight.t() + pre_bias - x).pow(2).sum(-1), pre


def _float64_operands(batch, dim, width, seed, latent_major=False):
    g = torch.Generator().manual_seed(seed)
    operands = [
        torch.randn(batch, dim, generator=g, dtype=torch.float64),  # x
        0.1 * torch.randn(dim, generator=g, dtype=torch.float64),  # pre_bias
        torch.randn(width, dim, generator=g, dtype=torch.float64) / dim**0.5,  # encoder weight
        0.1 * torch.randn(width, generator=g, dtype=torch.float64),  # encoder bias
        torch.randn(dim, width, generator=g, dtype=torch.float64),  # decoder weight [D, M]
    ]
    if latent_major:  # the layout init_for_fit_ gives the decoder (column-major [D, M])
        operands[4] = operands[4].t().contiguous().t()
    return [t.requires_grad_() for t in operands]


# (batch, dim, width, k): the two-stage top-k (16 k <= width < 64 k, width % 4 == 0) and torch's own
@pytest.mark.parametrize(
    "shape", [(40, 24, 96, 6), (33, 16, 90, 5), (64, 12, 256, 8), (17, 8, 40, 1), (8, 5, 12, 12)]
)
@pytest.mark.parametrize("latent_major", [False, True])
def test_fused_topk_step_gives_autograds_gradients_in_float64(shape, latent_major):
    batch, dim, width, k = shape
    operands = _float64_operands(batch, dim, width, seed=sum(shape), latent_major=latent_major)
    weights = torch.rand(batch, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    squared, values, indices, pre, centred, error = TopKReconstruction.apply(*operands, k)
    fused = torch.autograd.grad((weights * squared).sum(), operands)

    plain_squared, plain_pre = _plain_topk_reconstruction(*operands, k)
    # ties-free data: the k-th and (k+1)-th largest pre-activations of every row are apart
    if k < width:
        top = plain_pre.detach().topk(k + 1, dim=-1).values
        assert (top[:, k - 1] - top[:, k]).min() > 1e-9
    plain = torch.autograd.grad((weights * plain_squared).sum(), operands)
    torch.testing.assert_close(squared, plain_squared, rtol=1e-12, atol=1e-12)
    for name, got, expected in zip(("x", "pre_bias", "enc_weight", "enc_bias", "dec_weight"), fused, plain):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
    if latent_major:  # the decoder's gradient comes back in the decoder's layout: no copy to accumulate it
        assert fused[4].stride() == operands[4].stride()
    # the by-products: codes, pre-activations, centred input and error, as the plain step has them
    assert torch.equal(indices.sort(-1).values, plain_pre.topk(k, dim=-1).indices.sort(-1).values)
    torch.testing.assert_close(values, plain_pre.detach().gather(1, indices).relu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pre, plain_pre.detach(), rtol=1e-12, atol=1e-12)
    x, pre_bias = operands[0].detach(), operands[1].detach()
    torch.testing.assert_close(centred, x - pre_bias)
    assert not any(t.requires_grad for t in (values, pre, centred, error))


# fewer dead latents than k_aux (all of them in every row), more, and all (the AuxK entries then repeat
# the code's latents in every row)
@pytest.mark.parametrize("dead_count", [5, 60, 96])
def test_fit_step_with_auxk_gives_autograds_gradients_in_float64(dead_count):
    """The whole fitting loss (reconstruction + AuxK) of a float64 layer, fused, against the plain
    formulation's autograd: every parameter's gradient, to float64 precision."""
    layer = _layer(dim=24, width=96, k=6).double()
    layer.init_for_fit_(encoder_norm=None)  # the decoder stored latent-major, as a fit has it
    g = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(48, 24, generator=g, dtype=torch.float64), dim=-1)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[torch.randperm(96, generator=torch.Generator().manual_seed(5))[:dead_count]] = True
    step = layer.fit_forward(x, dead=dead, prepared=True)
    assert sorted(step.aux_losses) == ["auxk_loss", "reconstruction_loss"]
    loss = step.aux_losses["reconstruction_loss"] + 0.5 * step.aux_losses["auxk_loss"]
    fused = _grads(layer, loss)

    params = dict(layer.named_parameters())
    names = ("pre_bias", "encoder.weight", "encoder.bias", "decoder.weight")
    operands = [x, *(params[name] for name in names)]
    squared, pre = _plain_topk_reconstruction(*operands, layer.k)
    norms = x.pow(2).sum(-1)
    codes_pre = pre.topk(layer.k, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, codes_pre.indices, F.relu(codes_pre.values))
    residual = (x - (codes @ params["decoder.weight"].t() + params["pre_bias"])).detach()
    k_aux = min(12, dead_count)
    aux_pre = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
    aux_codes = torch.zeros_like(pre).scatter(-1, aux_pre.indices, F.relu(aux_pre.values))
    aux_error = (aux_codes @ params["decoder.weight"].t() - residual).pow(2).sum(-1)
    auxk = min(dead_count / 12, 1.0) * (aux_error / norms).mean()
    plain_loss = (squared / norms).mean() + 0.5 * auxk
    plain = _grads(layer, plain_loss)
    torch.testing.assert_close(step.aux_losses["auxk_loss"], auxk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-12, atol=1e-14)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-10, atol=1e-13, msg=name)
    assert fused["decoder.weight"].stride() == params["decoder.weight"].stride()


@pytest.mark.parametrize("width", [256, 384])  # groups of 4 (width < 40 k) and of 8
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_topk_indices_selects_the_rows_largest_entries_with_ties_and_nans(dtype, width):
    """The threshold selection behind the two-stage top-k: the set ``torch.topk`` keeps on untied rows;
    on a row tied at its k-th value (all zeros, a repeated maximum) or holding a NaN, still ``k``
    distinct positions whose values are the ``k`` largest (the exact fallback)."""
    from hf_monosem.models.sae_kernels import topk_indices

    k = 8  # 16 k <= width < 64 k: the two-stage path
    pre = torch.randn(6, width, generator=torch.Generator().manual_seed(0)).to(dtype)
    pre[1] = 0.0  # every entry tied
    pre[2, :20] = 5.0  # 20 entries tied at the top
    pre[3, 7] = float("nan")
    indices = topk_indices(pre, k)
    assert indices.shape == (6, k)
    for row in (0, 4, 5):
        expected = pre[row].float().topk(k).indices.sort().values
        assert torch.equal(indices[row].sort().values, expected), row
    for row in (1, 2):  # k distinct positions holding the k largest values
        assert indices[row].unique().numel() == k
        kept = pre[row, indices[row]].float().sort().values
        torch.testing.assert_close(kept, pre[row].float().topk(k).values.sort().values)
    # the NaN row: torch.topk's own answer (NaN counts as the largest)
    assert torch.equal(indices[3].sort().values, pre[3].topk(k).indices.sort().values)


def test_topk_indices_takes_the_threshold_path_on_untied_rows(monkeypatch):
    """Untied float rows never reach ``torch.topk`` (the slow (value, index) selection the two stages
    replace): a threshold that selects more or fewer than ``k`` positions would fall back to it."""
    from hf_monosem.models.sae_kernels import topk_indices

    pre = torch.randn(64, 1536, generator=torch.Generator().manual_seed(1))
    expected = pre.topk(32).indices.sort(-1).values

    def no_topk(*args, **kwargs):
        raise AssertionError("torch.topk called on untied rows")

    monkeypatch.setattr(torch.Tensor, "topk", no_topk)
    assert torch.equal(topk_indices(pre, 32).sort(-1).values, expected)
