"""The paper's toys (hf_monosem.scenarios.paper_toy): closed forms against Monte Carlo, the data
generators, superposition where Elhage et al. find it, crossovers, and seeded reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from hf_monosem.scenarios.paper_toy import (
    argmax_task,
    block_probes,
    crossover,
    features_represented,
    fisher_ratio,
    gap_minus_k_sd,
    k_for_crossing,
    monte_carlo_moments,
    sparse_features,
    train_superposition_toys,
    two_feature_moments,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "noise,level,mean_tol,var_rel_tol",
    [("label", 0.0, 0.015, 0.05), ("label", 0.25, 0.015, 0.05), ("label", 0.4, 0.015, 0.05),
     ("gaussian", 0.55, 0.03, 0.05), ("gaussian", 1.0, 0.03, 0.05)],
)  # fmt: skip
def test_closed_forms_match_monte_carlo(noise, level, mean_tol, var_rel_tol):
    # 40,000 draws: a mean's standard error is <= 0.007 (4 of them <= 0.03), and every tolerance is far below
    # the error of a wrong formula (e.g. label noise without its mixing term: 0.02 off at eta 0.25, 35% rel.)
    mc = monte_carlo_moments(noise, level, 40_000, seed=3)
    closed = two_feature_moments(noise, [level])
    for feature in ("mono", "poly"):
        want, got = closed[feature][0], mc[feature]
        assert (got[:2] - want[:2]).abs().max() < mean_tol, (feature, got, want)
        assert ((got[2:] - want[2:]).abs() / want[2:]).max() < var_rel_tol, (feature, got, want)


def test_fisher_ratio_favours_poly_everywhere_and_the_scale_dependent_family_crosses():
    eta = torch.linspace(0, 0.49, 50)
    m = two_feature_moments("label", eta)
    assert bool((fisher_ratio(m["poly"]) > fisher_ratio(m["mono"])).all())
    k = k_for_crossing(*(two_feature_moments("label", [0.25])[f][0] for f in ("mono", "poly")))
    diff = gap_minus_k_sd(m["mono"], k) - gap_minus_k_sd(m["poly"], k)
    kind, at = crossover(eta, diff)
    assert kind == "crosses" and abs(at - 0.25) < 1e-6


def test_crossover_rule():
    assert crossover([0, 1, 2], [-1.0, -0.5, 1.5]) == ("crosses", 1.25)
    assert crossover([0, 1], [0.0, 1.0]) == ("crosses", 0.0)  # a tie at the start is not "mono ahead"
    assert crossover([0, 1], [0.5, -1.0]) == ("mono_ahead_from_start", 0.0)
    kind, at = crossover([0, 1], [-1.0, 0.0])
    assert kind == "none" and math.isnan(at)
    with pytest.raises(ValueError, match="one length"):
        crossover([0, 1], [0.0])


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_sparse_features_sparsity_and_values(sparsity):
    x = sparse_features((20_000, 8), sparsity, torch.Generator().manual_seed(0))
    assert abs(float((x == 0).float().mean()) - sparsity) < 0.01
    active = x[x > 0]
    assert abs(float(active.mean()) - 0.5) < 0.01 and float(active.max()) <= 1.0  # U[0, 1] where active


def test_argmax_task_has_an_active_feature_in_every_row():
    x, y = argmax_task(3000, 40, 0.98, torch.Generator().manual_seed(1))  # 45% of raw rows are all zero
    assert x.shape == (3000, 40) and bool((x.amax(1) > 0).all()) and bool((y == x.argmax(1)).all())
    assert len(y.unique()) == 40


@pytest.fixture(scope="module")
def toys():
    # n = 8 features in m = 4 dimensions, dense vs sparse, importance 0.8^i: small enough for a unit test
    # one thread while it trains, restored after (it set 1 for good: harmless while the root conftest.py runs
    # the suite on one thread, order-dependent otherwise; tests/conftest.py now checks every test for that)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_superposition_toys([0.0, 0.9], [0.8], [0], num_features=8, hidden_dims=4, steps=1500,
                                        batch_size=128, lr=3e-3)  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_dense_features_are_not_superposed_and_the_most_important_ones_are_kept(toys):
    weight = toys.weight[0, 0, 0]  # dense
    represented = features_represented(weight)
    assert float(represented["frobenius"]) < 4.5  # at most ~m features: no superposition
    norms = weight.norm(dim=0)
    assert bool((norms[:3] > 0.8).all()) and bool((norms[5:] < 0.3).all()), norms  # importance decides which


def test_sparse_features_reach_superposition(toys):
    represented = features_represented(toys.weight[0, 1, 0])  # S = 0.9
    assert float(represented["frobenius"]) > 5.5 and int(represented["count"]) > 4  # more features than dims


def test_toy_training_is_seeded():
    def run(seed):
        return train_superposition_toys([0.9], [1.0], [seed], num_features=6, hidden_dims=3, steps=30).weight

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_block_probes_train_each_probe_on_its_own_block_and_are_seeded():
    x = torch.randn(2, 300, 1, generator=torch.Generator().manual_seed(0))
    y = torch.stack([(x[0, :, 0] > 0).long(), (x[1, :, 0] < 0).long()])  # block 1's rule is the opposite
    kwargs = {"epochs": 15, "lr": 0.1, "batch_size": 32}
    grid, block = block_probes(x, y, [0.0, 0.3], [4, 5], 2, **kwargs)
    assert block.tolist() == [0, 1, 0, 1]
    assert bool((grid.accuracy(x[block], y[block]) > 0.85).all())  # each probe learned its own block's rule
    again, _ = block_probes(x, y, [0.0, 0.3], [4, 5], 2, **kwargs)
    assert torch.equal(grid.weight, again.weight)
    with pytest.raises(ValueError, match="one seed per block"):
        block_probes(x, y, [0.0], [4], 2, **kwargs)
