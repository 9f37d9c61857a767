"""The fast SAE fitting loop (sparsify's recipe): no evaluation pass, per-epoch numbers gathered from the
training batches, AuxK for dead TopK latents. (The kernel's equality with the dense layer is checked in
tests/models/test_sae_kernels.py; the speed itself by benchmarks/sae_throughput.py.)"""

import pytest
import torch
from training_toys import sparse_mixtures

from hf_monosem.cached.sae_fitting import train_sae_layer
from hf_monosem.models import FeatureLayerSettings, SparseAutoencoderFeatures, TopKSparseAutoencoderFeatures
from hf_monosem.models.sae import SparseAutoencoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _topk(width=64, k=4, seed=0):
    torch.manual_seed(seed)
    return TopKSparseAutoencoderFeatures(32, FeatureLayerSettings(feature_dim=width, topk=k))


def test_fitting_runs_no_evaluation_pass(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("train_sae_layer must not run an evaluation pass")

    monkeypatch.setattr(SparseAutoencoder, "explained_variance", forbidden)
    report = train_sae_layer(_topk(), sparse_mixtures(n=256), epochs=2, batch_size=64, progress=False)
    assert len(report["explained_variance"]) == 3 and report["dead_latents"] == "auxk"


def test_epoch_numbers_are_those_of_the_epochs_batches():
    """With lr=0 the weights stay put, so an epoch's numbers gathered batch by batch equal one pass."""
    layer, x = _topk(), sparse_mixtures(n=200)
    report = train_sae_layer(layer, x, epochs=1, lr=0.0, batch_size=64, progress=False)
    exact = layer.explained_variance(x)
    assert report["explained_variance"][1] == pytest.approx(exact["explained_variance"], abs=1e-5)
    assert (
        report["l0"][1] == pytest.approx(exact["l0"]) and report["dead_fraction"][1] == exact["dead_fraction"]
    )
    first = layer.explained_variance(x[torch.randperm(200, generator=torch.Generator().manual_seed(0))[:64]])
    assert report["l0"][0] == pytest.approx(first["l0"])  # entry 0: the first batch, before any step
    assert report["final_explained_variance"] == report["explained_variance"][-1]


def test_auxk_revives_topk_latents_that_never_win_the_top_k():
    x = sparse_mixtures(n=512)
    reports = {}
    for strategy in ("none", "auxk"):
        layer = _topk()
        with torch.no_grad():  # half the latents: a small constant pre-activation, never among the top k
            layer.encoder.weight[:32] = 0.0
            layer.encoder.bias[:32] = 1e-3
        reports[strategy] = train_sae_layer(
            layer,
            x,
            epochs=6,
            lr=3e-3,
            batch_size=64,
            seed=0,
            dead_latents=strategy,
            dead_after_steps=8,
            progress=False,
        )
    assert reports["none"]["final_dead_fraction"] == 0.5
    assert reports["auxk"]["final_dead_fraction"] < 0.3
    assert reports["auxk"]["final_explained_variance"] > reports["none"]["final_explained_variance"]
    # AuxK is a training term only: the fitted layer's codes are still its plain top-k codes
    codes, aux = layer(x)
    assert sorted(aux) == ["reconstruction_loss"] and ((codes != 0).sum(-1) <= 4).all()


def test_dead_latent_strategies_are_checked():
    relu = SparseAutoencoderFeatures(32, FeatureLayerSettings(feature_dim=64))
    x = sparse_mixtures(n=64)
    assert train_sae_layer(relu, x, epochs=1, progress=False)["dead_latents"] == "resample"
    with pytest.raises(ValueError, match="dead_latents='auxk' applies to 'topk' layers only"):
        train_sae_layer(relu, x, dead_latents="auxk", progress=False)
    with pytest.raises(
        ValueError, match=r"dead_latents='revive' is not valid; allowed: None, 'auxk', 'resample', 'none'"
    ):
        train_sae_layer(_topk(), x, dead_latents="revive", progress=False)
    with pytest.raises(ValueError, match="auxk_weight=-1 is not valid"):
        train_sae_layer(_topk(), x, auxk_weight=-1, progress=False)


def test_a_fit_on_the_latent_major_decoder_equals_one_on_the_row_major_decoder():
    """``init_for_fit_`` stores the TopK decoder column-major; torch's fused CPU Adam reads parameter,
    gradient and state as flat arrays, so a layout that differed between them would silently step the
    wrong entries. The same fit on the usual row-major decoder must give the same weights."""
    x = sparse_mixtures(n=256)
    latent_major, row_major = _topk(), _topk()
    # train_sae_layer starts the pre-bias (and the layout) with init_for_fit_; the other keeps row-major
    with torch.no_grad():
        row_major.pre_bias.copy_(latent_major.prepare_input(x).mean(0))
    options = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "seed": 0, "progress": False}
    train_sae_layer(latent_major, x, **options)
    train_sae_layer(row_major, x, init_pre_bias=False, **options)
    assert latent_major.decoder.weight.t().is_contiguous() and row_major.decoder.weight.is_contiguous()
    for name, param in row_major.named_parameters():
        torch.testing.assert_close(dict(latent_major.named_parameters())[name], param, rtol=1e-4, atol=1e-5)
