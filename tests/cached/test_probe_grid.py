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
    grid = train_probe_grid(
        x, y, 3, rows=rows, epochs=4, lr=0.05, weight_decay=0.3, batch_size=8, seeds=[2, 3, 4]
    )
    for p, seed in enumerate([2, 3, 4]):
        w, b = single_probe(x, y[p], 4, 0.05, 8, seed, weight_decay=0.3, rows=rows[p], num_labels=3)
        torch.testing.assert_close(grid.weight[p], w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grid.bias[p], b, rtol=1e-4, atol=1e-5)


def test_rows_select_per_probe_subsets_and_bad_shapes_raise():
    # Its own generator and a margin around the rule's boundary: the data came from the global RNG, so it
    # depended on the tests run before (issue 21's flaky test: about 8% of RNG states gave a probe
    # trained on 10 rows 0.58-0.70 accuracy, below the 0.7 asserted; with the margin, 300 seeds: >= 0.80)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0] += x[:, 0].sign()
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
    x = torch.randn(
        129, 8, generator=torch.Generator().manual_seed(0)
    )  # 129 = 2 x 64 + 1: the one-row tail batch is skipped
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
    assert all(
        torch.equal(a, torch.cat(list(b))) for a, b in zip(epochs, MiniBatches(10, 3, seed=7, epochs=3))
    )
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
    assert [[len(rows) for rows in epoch] for epoch in batches] == [
        [4, 4],
        [4, 4],
    ]  # the 1-row tail is skipped
    assert batches.steps_per_epoch == 2 and batches.total_steps == 4
    assert MiniBatches(10, 4, seed=0, epochs=1, min_size=2).steps_per_epoch == 3
    assert MiniBatches(8, 4, seed=0, epochs=1).steps_per_epoch == 2
    for kwargs, fragment in (
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": -1}, "epochs=-1"),
        ({"n": 0}, "n=0"),
    ):
        with pytest.raises(ValueError, match=fragment):
            MiniBatches(**{"n": 9, "batch_size": 4, "seed": 0, "epochs": 1, **kwargs})


def single_probe_sgd(x, y, epochs, lr, batch_size, seed, *, weight_decay, lars, warmup_epochs, views=None):
    """Reference for the SGD / LARS + warmup-cosine recipe: one probe, solo-learn's LARS written plainly,
    and (with ``views``) the augmentation done on the fly: ``views(epoch_choice) -> [N, F]``."""
    import math

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], int(y.max()) + 1, generator=g) * 0.02
    b = torch.zeros(w.shape[1])
    mw, mb = None, None
    n = len(y)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warm = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        feats = x if views is None else views(torch.randint(views.k, (n,), generator=g))
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            wg, bg = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
            F.cross_entropy(feats[idx] @ wg + bg, y[idx]).backward()
            if step < warm:
                rate = 3e-5 + step * (lr - 3e-5) / (warm - 1)
            else:
                rate = 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
            dw, db = wg.grad, bg.grad
            if lars:
                trust = min(0.02 * w.norm() / (dw.norm() + w.norm() * weight_decay + 1e-8) / rate, 1.0)
                dw = (dw + weight_decay * w) * trust
            else:
                dw, db = dw + weight_decay * w, db + weight_decay * b  # torch's SGD decays every parameter
            mw = dw.clone() if mw is None else 0.9 * mw + dw
            mb = db.clone() if mb is None else 0.9 * mb + db
            w, b = w - rate * mw, b - rate * mb
            step += 1
    return w, b


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_sgd_and_lars_with_warmup_cosine_equal_the_plain_recipe(optimizer):
    torch.manual_seed(0)
    x = torch.randn(90, 6) * 3
    y = torch.stack([(x[:, 0] > 0).long() + (x[:, 1] > 0).long(), torch.randint(0, 3, (90,))])
    kwargs = dict(epochs=6, lr=0.4, batch_size=16, weight_decay=1e-4)
    grid = train_probe_grid(
        x, y, 3, seeds=[3, 4], optimizer=optimizer, schedule="warmup_cosine", warmup_epochs=2, **kwargs
    )
    for p, seed in enumerate([3, 4]):
        w, b = single_probe_sgd(x, y[p], seed=seed, lars=optimizer == "lars", warmup_epochs=2, **kwargs)
        torch.testing.assert_close(grid.weight[p], w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grid.bias[p], b, rtol=1e-4, atol=1e-5)


def test_k_view_cache_gives_the_probe_of_augmenting_on_the_fly():
    """The cached route (K augmented views extracted once, one drawn per image and epoch) trains the
    same probe as augmenting every epoch's batch again through the encoder with the same generators."""
    from hf_monosem.cached.augmented_views import augmented_view_features, view_generator
    from hf_monosem.training import ImageViews

    torch.manual_seed(0)
    images = torch.randn(40, 1, 8, 8)
    y = (images.mean((1, 2, 3)) > 0).long()
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.ReLU()).eval()
    views = ImageViews(crop_scale=(0.08, 1.0), hflip_p=0.5)
    k, block = 4, 16
    cache = augmented_view_features(encoder, images, views, k, seed=7, batch_size=block)
    assert cache.shape == (k, 40, 12) and not torch.allclose(cache[0], cache[1])  # the views differ

    def on_the_fly(choice):  # per image i, its view choice[i]: rebuilt from its block's generator
        out = torch.empty(40, 12)
        with torch.no_grad():
            for i in range(40):
                c = i // block
                augmented = views(images[c * block : (c + 1) * block], view_generator(7, int(choice[i]), c))
                out[i] = encoder(augmented[i - c * block : i - c * block + 1])[0]
        return out

    on_the_fly.k = k
    kwargs = dict(epochs=3, lr=0.4, batch_size=8, weight_decay=1e-4)
    grid = train_probe_grid(
        cache, y[None], 2, seeds=[5], optimizer="lars", schedule="warmup_cosine", warmup_epochs=1, **kwargs
    )
    w, b = single_probe_sgd(cache[0], y, seed=5, lars=True, warmup_epochs=1, views=on_the_fly, **kwargs)
    torch.testing.assert_close(grid.weight[0], w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grid.bias[0], b, rtol=1e-4, atol=1e-5)


def test_bad_optimizer_schedule_and_warmup_are_refused_before_training():
    x, y = torch.randn(10, 3), torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="optimizer='rmsprop' is not valid; allowed: 'adam', 'sgd', 'lars'"):
        train_probe_grid(x, y, 2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule='step' is not valid"):
        train_probe_grid(x, y, 2, schedule="step")
    with pytest.raises(ValueError, match="warmup_epochs=5 is not valid"):
        train_probe_grid(x, y, 2, epochs=5, warmup_epochs=5)


# --- probes of one (seed, rows) computed together, per-probe rates: the grid equals one call per probe ---


@pytest.fixture
def float64():
    """Weights follow the default dtype: float64 makes 'equal' mean equal up to rounding (1e-10)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def one_call_per_probe(features, labels, num_labels, seeds, rows=None, lr=0.05, **kwargs):
    """What a grid computed before its probes were grouped by seed: ``P`` independent runs."""
    lrs = [lr] * len(seeds) if isinstance(lr, float) else lr
    runs = [
        train_probe_grid(features, labels[p : p + 1], num_labels, seeds=[seed], lr=lrs[p],
                         rows=None if rows is None else rows[p : p + 1], **kwargs)
        for p, seed in enumerate(seeds)
    ]  # fmt: skip
    return torch.cat([r.weight for r in runs]), torch.cat([r.bias for r in runs])


# (name, seeds, rows kind): repeated seeds (the label-noise grid's rates x seeds), distinct seeds,
# unequal groups, per-probe rows (few-shot: same seed with other rows is another group), K views
CASES = {
    "repeated_seeds": ([0, 1, 2, 0, 1, 2, 0, 1, 2], "all", False),
    "distinct_seeds": ([5, 6, 7, 8], "all", False),
    "unequal_groups": ([3, 3, 3, 4, 5, 3, 4], "all", False),
    "skewed_groups": ([0, 0, 0, 0, 0, 1, 2, 3], "all", False),  # padding would double the work: a group each
    "per_probe_rows": ([1, 1, 1, 2, 2, 1], "few_shot", False),
    "k_views": ([0, 1, 0, 1, 0], "all", True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "optimizer,schedule", [("adam", "constant"), ("sgd", "warmup_cosine"), ("lars", "warmup_cosine"),
                           ("adam", "warmup_cosine"), ("lars", "constant")],
)  # fmt: skip
@pytest.mark.parametrize("per_probe_lr", [False, True])
def test_grouped_grid_equals_one_call_per_probe(float64, case, optimizer, schedule, per_probe_lr):
    seeds, rows_kind, views = CASES[case]
    g = torch.Generator().manual_seed(11)
    n, num_labels, p = 37, 3, len(seeds)
    features = torch.randn(3 if views else 1, n, 5, generator=g) * 2
    features = features if views else features[0]
    labels = torch.randint(0, num_labels, (p, n), generator=g)
    rows = None
    if rows_kind == "few_shot":  # probes 0, 2: same seed and rows (a group); probe 1: same seed, other rows
        subsets = [torch.randperm(n, generator=g)[:20] for _ in range(3)]
        rows = torch.stack([subsets[0], subsets[1], subsets[0], subsets[2], subsets[2], subsets[0]])
    lr = [0.02 * (1 + q % 4) for q in range(p)] if per_probe_lr else 0.05
    kwargs = dict(epochs=3, batch_size=8, weight_decay=1e-3, optimizer=optimizer, schedule=schedule,
                  warmup_epochs=1 if schedule == "warmup_cosine" else 0)  # fmt: skip
    grid = train_probe_grid(features, labels, num_labels, seeds=seeds, rows=rows, lr=lr, **kwargs)
    weight, bias = one_call_per_probe(features, labels, num_labels, seeds, rows=rows, lr=lr, **kwargs)
    assert grid.weight.dtype == torch.float64 and grid.weight.shape == (p, 5, num_labels)
    torch.testing.assert_close(grid.weight, weight, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grid.bias, bias, rtol=1e-10, atol=1e-10)
    # the probes of one group differ by their labels (and rate) only: they did train apart
    if seeds.count(seeds[0]) > 1:
        assert not torch.allclose(grid.weight[0], grid.weight[seeds.index(seeds[0], 1)])


def test_per_probe_rates_equal_torch_adamw_runs_in_float64(float64):
    """The vectorised AdamW, a rate per probe, against ``torch.optim.AdamW`` in the plain loop."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 6, generator=g)
    y = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0).long(), torch.randint(0, 2, (50,), generator=g)])
    y = torch.cat([y, y])
    seeds, lrs = [4, 4, 9, 4, 4, 9], [1e-3, 3e-2, 1e-2, 0.1, 3e-3, 0.3]
    grid = train_probe_grid(x, y, 2, epochs=4, lr=lrs, batch_size=16, weight_decay=0.05, seeds=seeds)
    for p, (seed, lr) in enumerate(zip(seeds, lrs)):
        w, b = single_probe(x, y[p], 4, lr, 16, seed, weight_decay=0.05)
        torch.testing.assert_close(grid.weight[p], w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grid.bias[p], b, rtol=1e-10, atol=1e-12)


def test_bad_learning_rates_are_refused_naming_the_value():
    x, y = torch.randn(10, 3), torch.zeros(3, 10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"lr has 2 rates for 3 probes; allowed: a number > 0 or 3 numbers"):
        train_probe_grid(x, y, 2, lr=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"holds -1.0\); allowed: finite numbers > 0"):
        train_probe_grid(x, y, 2, lr=[0.1, -1, 0.1])
    with pytest.raises(ValueError, match=r"lr=0 is not valid \(holds 0.0\)"):
        train_probe_grid(x, y, 2, lr=0)
    with pytest.raises(ValueError, match=r"lr='fast' is not valid"):
        train_probe_grid(x, y, 2, lr="fast")
