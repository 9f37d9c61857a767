"""Finite and in-range checks at the entry of the cached route, autocast kept out of our own loops,
honest explained variance for degenerate inputs.

Before: one NaN/inf in the features gave NaN weights, NaN explained variance or a 0.60 probe, silently;
features x1e19 overflowed the L2 norm to 0 and reported explained variance 1.0 with every latent dead;
one row or all-zero rows reported 1.0; under ``torch.autocast("cpu", torch.bfloat16)`` the probe grid and
the projector kept training autocast's cached bf16 copy of their initial weights and the TopK SAE's
custom backward crashed (``NotImplementedError ... addmm_out_sparse_csr``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_resnet_config
from training_toys import sparse_mixtures, toy_images

from hf_monosem import extract_pooled_features
from hf_monosem.cached.probe_grid import train_probe_grid
from hf_monosem.cached.projector_fitting import fit_contrastive_projector
from hf_monosem.cached.sae_fitting import explained_variance, train_sae_layer
from hf_monosem.models import FeatureLayerSettings, build_feature_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _topk(input_dim=32, width=64, k=4):
    torch.manual_seed(0)
    return build_feature_layer(
        FeatureLayerSettings(feature_dim=width, topk=k, sae_normalize_input=True), input_dim, kind="topk"
    )


def _separable(n=200, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, 0] > 0).long()


def _with(x: torch.Tensor, row: int, column: int, value: float) -> torch.Tensor:
    x = x.clone()
    x[row, column] = value
    return x


BAD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e19]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_every_cached_fitter_names_the_first_bad_row(value):
    x, y = _separable()
    bad = _with(x, 37, 3, value)
    with pytest.raises(ValueError, match=r"features .* row 37, column 3"):
        train_sae_layer(_topk(8, 16, 2), bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"features .* row 37, column 3"):
        fit_contrastive_projector(bad, feature_dim=8, projector_hidden_dim=8, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"features .* row 37, column 3"):
        train_probe_grid(bad, y[None], 2, epochs=1)
    views = torch.stack([x, bad])  # [K, N, F]: the second view holds it
    with pytest.raises(ValueError, match=r"features .* view 1, row 37, column 3"):
        train_probe_grid(views, y[None], 2, epochs=1)


BAD_TEMPERATURES = [0, 0.0, -0.2, -1, float("nan"), float("inf"), "0.2", None, True, [0.2]]


@pytest.mark.parametrize("temperature", BAD_TEMPERATURES, ids=repr)
def test_projector_fitting_refuses_a_temperature_that_is_not_a_positive_number(temperature):
    """Issue 21: ``temperature <= 0`` was accepted (0 divides the similarities by zero: NaN/inf logits;
    a negative one rewards pushing the positive pair apart); inf or ``True`` trained silently on constant
    or unscaled logits. Refused before any work, naming the value and what is allowed."""
    x = sparse_mixtures(n=32, dim=8)
    with pytest.raises(ValueError, match=r"temperature=.* is not valid; allowed: a finite number > 0"):
        fit_contrastive_projector(
            x, feature_dim=8, projector_hidden_dim=8, epochs=1, progress=False, temperature=temperature
        )


@pytest.mark.parametrize("temperature", [0.2, 1, np.float32(0.5)], ids=repr)
def test_projector_fitting_takes_any_positive_real_temperature(temperature):
    x = sparse_mixtures(n=32, dim=8)
    _, report = fit_contrastive_projector(
        x, feature_dim=8, projector_hidden_dim=8, epochs=1, progress=False, temperature=temperature
    )
    assert all(math.isfinite(loss) for loss in report["loss"])


def test_probe_grid_labels_must_be_class_ids():
    x, y = _separable()
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 1\].*found 2 \(probe 0, row 5\)"):
        train_probe_grid(x, _with(y[None].float(), 0, 5, 2).long(), 2, epochs=1)


def test_extraction_names_the_dataset_row_whose_features_are_not_finite():
    import datasets

    images = toy_images(n=10, channels=1, size=16)
    pixels = torch.tensor(images["pixel_values"])
    pixels[6, 0, 3, 3] = float("nan")
    bad = datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "label": images["label"]})
    from hf_monosem import MonoSemanticConfig, MonoSemanticModel

    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_resnet_config(), feature_layer="linear")
    )
    with pytest.raises(ValueError, match=r"pooled features .* row 6"):
        extract_pooled_features(model, bad, batch_size=4)


@pytest.mark.parametrize("rows", ["one row", "all zero", "all equal"])
def test_explained_variance_of_inputs_without_variance_is_not_reported_as_one(rows):
    x = sparse_mixtures(n=64, dim=32)
    x = {"one row": x[:1], "all zero": torch.zeros(64, 32), "all equal": x[:1].expand(64, 32)}[rows]
    with pytest.raises(ValueError, match="no variance"):
        train_sae_layer(_topk(), x, epochs=1, progress=False)
    with pytest.warns(RuntimeWarning, match="undefined"):
        stats = explained_variance(_topk(), x)
    assert stats["explained_variance"] != stats["explained_variance"]  # NaN, not 1.0


def test_probe_grid_learns_the_same_under_bf16_autocast():
    x, y = _separable(400)
    plain = train_probe_grid(x, y[None], 2, epochs=5, lr=0.05, seeds=[3])
    with torch.autocast("cpu", torch.bfloat16):
        under = train_probe_grid(x, y[None], 2, epochs=5, lr=0.05, seeds=[3])
    assert torch.equal(under.weight, plain.weight) and torch.equal(under.bias, plain.bias)


def test_projector_fitting_is_the_same_under_bf16_autocast():
    x = sparse_mixtures(n=256, dim=16)
    kwargs = dict(feature_dim=16, projector_hidden_dim=16, epochs=2, progress=False, seed=1)
    layer, report = fit_contrastive_projector(x, **kwargs)
    with torch.autocast("cpu", torch.bfloat16):
        under, under_report = fit_contrastive_projector(x, **kwargs)
    assert under_report["loss"] == report["loss"]
    for (name, a), b in zip(layer.state_dict().items(), under.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["topk", "sae"])
def test_sae_fitting_runs_and_matches_under_bf16_autocast(kind):
    x = sparse_mixtures(n=256, dim=32)

    def fit():
        torch.manual_seed(0)
        layer = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=4), 32, kind=kind)
        return layer, train_sae_layer(layer, x, epochs=2, batch_size=64, progress=False)

    layer, report = fit()
    with torch.autocast("cpu", torch.bfloat16):
        under, under_report = fit()
    assert under_report["explained_variance"] == report["explained_variance"]
    for (name, a), b in zip(layer.state_dict().items(), under.state_dict().values()):
        assert torch.equal(a, b), name
