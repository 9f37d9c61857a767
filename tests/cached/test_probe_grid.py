import pytest
import torch
import torch.nn.functional as F

from hf_monosem.cached import MiniBatches
from hf_monosem.cached.probe_grid import train_probe_grid
from hf_monosem.cached.projector_fitting import fit_contrastive_projector


def single_probe(x, y, epochs, lr, batch_size, seed, weight_decay=0.0, rows=None, num_labels=None):
    """The reference: one probe, the same loop written plainly (on ``x[rows]`` when rows are given)."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], num_labels or int(y.max()) + 1, generator=g) * 0.02).requires_grad_(True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    rows = torch.arange(len(y)) if rows is None else rows
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=g)
        for s in range(0, len(rows), batch_size):
            idx = rows[order[s : s + batch_size]]
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


def test_grid_with_rows_and_weight_decay_equals_separate_runs():
    """Per-probe row subsets (few-shot / domain subsets) and weight decay: still the separate runs."""
    torch.manual_seed(1)
    x = torch.randn(60, 5)
    y = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0).long() * 2, torch.randint(0, 3, (60,))])
    rows = torch.stack([torch.arange(0, 22), torch.arange(30, 52), torch.randperm(60)[:22]])
    grid = train_probe_grid(x, y, 3, rows=rows, epochs=4, lr=0.05, weight_decay=0.3, batch_size=8, seeds=[2, 3, 4])
    for p, seed in enumerate([2, 3, 4]):
        w, b = single_probe(x, y[p], 4, 0.05, 8, seed, weight_decay=0.3, rows=rows[p], num_labels=3)
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


def test_ncl_projector_training_adds_sparsity_and_learns_the_views():
    """Compared with the same fit at a learning rate of ~0 (the projector as initialised): a ReLU output
    is already about half zeros at initialisation, so NCL's sparsity is what training adds on top."""
    torch.manual_seed(0)
    centers = torch.randn(8, 16) * 3
    x = centers[torch.randint(0, 8, (1024,))] + torch.randn(1024, 16)
    kwargs = dict(feature_dim=64, projector_hidden_dim=64, batch_size=128, progress=False)
    ncl, ncl_report = fit_contrastive_projector(x, feature_layer="nonneg", epochs=8, **kwargs)
    _, untrained = fit_contrastive_projector(x, feature_layer="nonneg", epochs=1, lr=1e-12, **kwargs)
    _, simclr_report = fit_contrastive_projector(x, feature_layer="linear", epochs=8, **kwargs)
    assert (ncl(x)[0] >= 0).all() and simclr_report["zero_fraction"] == 0.0
    assert 0.3 < untrained["zero_fraction"] < 0.7  # a ReLU at initialisation (0.55 here)
    assert ncl_report["zero_fraction"] > untrained["zero_fraction"] + 0.15  # trained: 0.80 here
    # learned the views: the last epoch's InfoNCE is clearly below the untrained projector's on the same
    # kind of views (4.23 -> 3.41 here; log(2 x 128 - 1) = 5.54 would be no matching at all)
    assert ncl_report["loss"][-1] < untrained["loss"][0] - 0.4
    assert ncl_report["positive_accuracy"] > 0.9  # two views of one input are each other's nearest
    # the folded standardisation: the layer takes raw vectors, so a fit on rescaled and shifted vectors
    # (the same standardised ones) is the same function of the raw vectors it was given
    short = {**kwargs, "epochs": 2}
    plain, _ = fit_contrastive_projector(x, **short)
    shift = torch.linspace(-5, 5, 16)
    moved, _ = fit_contrastive_projector(4 * x + shift, **short)
    torch.testing.assert_close(moved(4 * x + shift)[0], plain(x)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"feature_layer='sae' is not valid; allowed: 'linear', 'nonneg'"):
        fit_contrastive_projector(x, feature_layer="sae")
    with pytest.raises(ValueError, match="nonneg_activation='gelu'"):
        fit_contrastive_projector(x, nonneg_activation="gelu")


def test_same_seed_same_projector():
    x = torch.randn(129, 8)  # 129 = 2 x 64 + 1: the one-row tail batch is skipped
    kwargs = dict(feature_dim=16, projector_hidden_dim=16, epochs=2, batch_size=64, seed=4, progress=False)
    (a, report_a), (b, report_b) = (fit_contrastive_projector(x, **kwargs) for _ in range(2))
    assert report_a == report_b
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_minibatches_follow_one_seeding_rule():
    # an epoch is one randperm of the run's own generator, seeded once: the global RNG plays no part
    torch.manual_seed(123)
    epochs = [torch.cat(list(epoch)) for epoch in MiniBatches(10, 3, seed=7, epochs=3)]
    reference = torch.Generator().manual_seed(7)
    for order in epochs:
        assert torch.equal(order, torch.randperm(10, generator=reference))
    torch.manual_seed(0)
    assert all(torch.equal(a, torch.cat(list(b))) for a, b in zip(epochs, MiniBatches(10, 3, seed=7, epochs=3)))
    # draws from .generator between epochs shift later epochs exactly as they would in a plain loop
    batches = MiniBatches(10, 3, seed=7, epochs=2)
    reference = torch.Generator().manual_seed(7)
    extra = torch.randperm(5, generator=batches.generator)
    assert torch.equal(extra, torch.randperm(5, generator=reference))
    for epoch in batches:
        assert torch.equal(torch.cat(list(epoch)), torch.randperm(10, generator=reference))


def test_minibatches_of_many_seeds_are_the_single_runs_side_by_side():
    grid = [torch.cat(list(epoch), dim=1) for epoch in MiniBatches(9, 4, seed=[3, 4], epochs=2)]
    for p, seed in enumerate([3, 4]):
        single = [torch.cat(list(epoch)) for epoch in MiniBatches(9, 4, seed=seed, epochs=2)]
        assert all(torch.equal(g[p], s) for g, s in zip(grid, single))
    with pytest.raises(ValueError, match="use .generators"):
        _ = MiniBatches(9, 4, seed=[3, 4], epochs=1).generator


def test_minibatches_sizes_skipping_and_validation():
    batches = MiniBatches(9, 4, seed=0, epochs=2, min_size=2)
    assert [[len(rows) for rows in epoch] for epoch in batches] == [[4, 4], [4, 4]]  # the 1-row tail is skipped
    assert batches.steps_per_epoch == 2 and batches.total_steps == 4
    assert MiniBatches(10, 4, seed=0, epochs=1, min_size=2).steps_per_epoch == 3
    assert MiniBatches(8, 4, seed=0, epochs=1).steps_per_epoch == 2
    for kwargs, fragment in (({"batch_size": 0}, "batch_size=0"), ({"epochs": -1}, "epochs=-1"), ({"n": 0}, "n=0")):
        with pytest.raises(ValueError, match=fragment):
            MiniBatches(**{"n": 9, "batch_size": 4, "seed": 0, "epochs": 1, **kwargs})
