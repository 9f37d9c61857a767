import pytest
import torch
import torch.nn.functional as F

from hf_monosem.cached.probe_grid import train_probe_grid
from hf_monosem.cached.projector_fitting import fit_contrastive_projector


def single_probe(x, y, epochs, lr, batch_size, seed):
    """The reference: one probe, the same loop written plainly."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], int(y.max()) + 1, generator=g) * 0.02).requires_grad_(True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=0.0)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            loss = F.cross_entropy(x[idx] @ w + b, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


def test_grid_equals_separate_runs():
    torch.manual_seed(0)
    x = torch.randn(100, 6)
    y = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0).long(), torch.randint(0, 2, (100,))])
    grid = train_probe_grid(x, y, 2, epochs=3, lr=0.01, batch_size=32, seeds=[5, 6, 7])
    for p, seed in enumerate([5, 6, 7]):
        w, b = single_probe(x, y[p], 3, 0.01, 32, seed)
        torch.testing.assert_close(grid.weight[p], w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grid.bias[p], b, rtol=1e-4, atol=1e-5)


def test_rows_select_per_probe_subsets_and_bad_shapes_raise():
    x = torch.randn(50, 4)
    y = (x[:, 0] > 0).long().expand(2, -1).clone()
    rows = torch.stack([torch.arange(10), torch.arange(10, 20)])
    grid = train_probe_grid(x, y, 2, rows=rows, epochs=30, lr=0.05, batch_size=5)
    assert grid.accuracy(x, y[0]).min() > 0.7
    with pytest.raises(ValueError, match="labels must be"):
        train_probe_grid(x, y[:, :10], 2)
    with pytest.raises(ValueError, match="rows must be"):
        train_probe_grid(x, y, 2, rows=rows[:1])


def test_ncl_projector_is_sparser_than_simclr_and_learns_the_views():
    torch.manual_seed(0)
    centers = torch.randn(8, 16) * 3
    x = centers[torch.randint(0, 8, (1024,))] + torch.randn(1024, 16)
    kwargs = dict(feature_dim=64, projector_hidden_dim=64, epochs=8, batch_size=128, progress=False)
    ncl, ncl_report = fit_contrastive_projector(x, feature_layer="nonneg", **kwargs)
    simclr, simclr_report = fit_contrastive_projector(x, feature_layer="linear", **kwargs)
    assert ncl_report["loss"][-1] < ncl_report["loss"][0]
    assert (ncl(x)[0] >= 0).all()
    assert ncl_report["zero_fraction"] > simclr_report["zero_fraction"] + 0.3
    # the folded standardisation: the layer takes raw vectors
    assert ncl_report["positive_accuracy"] > 0.5
    with pytest.raises(ValueError, match="feature_layer='sae'"):
        fit_contrastive_projector(x, feature_layer="sae")
