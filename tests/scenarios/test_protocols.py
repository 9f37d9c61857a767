"""The two probe protocols (hf_monosem.scenarios.protocols) on a tiny track: what each one changes."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hf_monosem.cached import train_probe_grid
from hf_monosem.scenarios import grid
from hf_monosem.scenarios.protocols import (
    CONTROLLED_PROBE,
    PAPER_CIFAR_PROBE,
    PAPER_IN100_PROBE,
    PAPER_PROBE,
    ProbeProtocol,
    probe_protocol,
)
from tests.scenarios.test_scenario_grid import _track

QUICK = dict(epochs=6, batch_size=16)


def _accuracies(records, method):
    return [r["accuracy"] for r in records if r["method"] == method]


def test_controlled_equalises_scale_and_the_paper_protocol_keeps_it():
    """'mono' is 'poly' / 1000: the same information at another scale. Equal scale -> equal probes."""
    track = _track()
    track.features["mono"] = {k: x / 1000 for k, x in track.features["poly"].items()}
    controlled = CONTROLLED_PROBE.with_budget(lr_grid=(), **QUICK)
    records = grid.probe_records(track, [0.0, 0.4], [1], [0, 1], protocol=controlled).records
    assert _accuracies(records, "poly") == pytest.approx(_accuracies(records, "mono"), abs=1e-6)
    paper_probe = PAPER_PROBE.with_budget(**QUICK)
    paper = grid.probe_records(track, [0.0, 0.4], [1], [0, 1], protocol=paper_probe).records
    assert _accuracies(paper, "poly") != _accuracies(paper, "mono")
    assert {r["protocol"] for r in records} == {"controlled"} and {r["protocol"] for r in paper} == {"paper"}
    cifar = grid.probe_records(
        track, [0.0, 0.4], [1], [0, 1], protocol=PAPER_CIFAR_PROBE.with_budget(**QUICK)
    ).records
    assert {r["protocol"] for r in cifar} == {"paper_cifar"}  # P2's "paper" under its P3 name: same probes
    assert _accuracies(cifar, "mono") == _accuracies(paper, "mono")


def test_controlled_chooses_the_lr_on_held_out_noisy_training_rows_never_the_test_split():
    track = _track()
    protocol = CONTROLLED_PROBE.with_budget(lr_grid=(1e-5, 0.05), **QUICK)
    run = grid.probe_records(track, [0.0], [], [0, 1], protocol=protocol)
    records, chosen = run.records, run.selection
    for name, pick in chosen.items():
        scores = pick["held_out_accuracy"]
        assert set(scores) == {1e-5, 0.05} and pick["lr"] == max(scores, key=scores.get)
        assert {r["probe_lr"] for r in records if r["method"] == name} == {pick["lr"]}
    assert chosen["poly"]["lr"] == 0.05  # 6 epochs at 1e-5 leave a probe near its initialisation
    garbled = _track()
    g = torch.Generator().manual_seed(1)
    garbled.features = {
        n: {**f, grid.TEST: torch.randn(f[grid.TEST].shape, generator=g)} for n, f in garbled.features.items()
    }
    assert grid.probe_records(garbled, [0.0], [], [0, 1], protocol=protocol).selection == chosen


def test_the_paper_protocol_trains_on_the_tracks_augmented_views():
    track = _track()
    train = track.features["poly"][grid.TRAIN]
    # both views negate the features: a probe trained on them must get the test set (not negated) wrong
    track.train_views = {"poly": torch.stack([-train, -train])}
    paper = PAPER_PROBE.with_budget(**QUICK)
    with_views = grid.probe_records(track, [0.0], [], [0], protocol=paper).records
    without = grid.probe_records(_track(), [0.0], [], [0], protocol=paper).records
    trained_on_views = [
        r["accuracy"] for r in with_views if r["method"] == "poly" and not r["scenario"].startswith("domain")
    ]
    assert max(trained_on_views) < 0.5 < min(_accuracies(without, "poly"))  # domain probes: plain rows, 1.0
    assert _accuracies(with_views, "mono") == _accuracies(without, "mono")  # no views for it: plain rows
    controlled = CONTROLLED_PROBE.with_budget(lr_grid=(), **QUICK)  # augmented_views=False: ignored
    on_views = grid.probe_records(track, [0.0], [], [0], protocol=controlled).records
    plain = grid.probe_records(_track(), [0.0], [], [0], protocol=controlled).records
    assert _accuracies(on_views, "poly") == _accuracies(plain, "poly")


def test_bad_protocols_are_refused_with_the_allowed_values():
    with pytest.raises(
        ValueError,
        match="probe protocol 'adam' is not valid; allowed: 'paper_cifar', 'paper_in100', 'controlled', "
        "'paper'",
    ):
        probe_protocol("adam")
    with pytest.raises(ValueError, match="schedule='cosine' is not valid"):
        ProbeProtocol("x", schedule="cosine")
    with pytest.raises(ValueError, match="lr_grid"):
        ProbeProtocol("x", lr_grid=(0.1, -1))
    with pytest.raises(ValueError, match="warmup_epochs=60 is not valid"):
        ProbeProtocol("x", epochs=50, warmup_epochs=60)


def test_paper_in100_is_plain_sgd_a_hand_written_loop_gives_the_same_weights():
    """lr 1.5, no momentum, no weight decay, constant rate: the grid's probes equal plain SGD, step by
    step."""
    assert PAPER_IN100_PROBE.augmented_views and not PAPER_IN100_PROBE.equalize_scale
    protocol = PAPER_IN100_PROBE.with_budget(epochs=3, batch_size=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 6, generator=g)  # 70 rows: the last batch of each epoch is short (6 rows)
    y = torch.randint(0, 3, (70,), generator=g)
    seeds = [0, 5]
    probes = train_probe_grid(x, y.expand(2, -1), 3, seeds=seeds, **protocol.training_kwargs())
    for p, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        weight = (torch.randn(6, 3, generator=generator) * 0.02).requires_grad_(True)
        bias = torch.zeros(3, requires_grad=True)
        optimizer = torch.optim.SGD([weight, bias], lr=1.5, momentum=0.0, weight_decay=0.0)
        for _ in range(3):
            for rows in torch.randperm(70, generator=generator).split(16):
                optimizer.zero_grad()
                F.cross_entropy(x[rows] @ weight + bias, y[rows]).backward()
                optimizer.step()
        torch.testing.assert_close(probes.weight[p], weight.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(probes.bias[p], bias.detach(), atol=1e-5, rtol=1e-5)


def test_the_lr_grid_is_extended_downward_while_a_representation_picks_its_lowest_rate():
    """'mono' is 'poly' x 1e4, probed at its natural scale: rates 1 and 10 overshoot on it, so it picks the
    grid's lowest rate and the grid (every representation's) grows downward a decade at a time."""
    track = _track()
    protocol = CONTROLLED_PROBE.with_budget(lr_grid=(1.0, 10.0), equalize_scale=False, **QUICK)
    # features 1e4 x larger: lr 1 and 10 overshoot, smaller rates do better on the held-out rows
    track.features["mono"] = {k: x * 1e4 for k, x in track.features["poly"].items()}
    run = grid.probe_records(track, [0.0], [], [0, 1], protocol=protocol)
    records, chosen = run.records, run.selection
    extensions = chosen["mono"]["lr_grid_extensions"]
    assert extensions >= 1 and chosen["poly"]["lr_grid_extensions"] == extensions  # the grid is shared
    assert min(chosen["mono"]["held_out_accuracy"]) == pytest.approx(1.0 * 10.0**-extensions)
    assert chosen["mono"]["lr"] < 1.0  # a rate below the original grid
    assert extensions == grid.MAX_LR_GRID_EXTENSIONS or chosen["mono"]["lr"] > min(
        chosen["mono"]["held_out_accuracy"]
    )  # it stopped because nothing sat at the edge any more (or at the cap)
    assert {r["lr_grid_extensions"] for r in records} == {extensions}
    assert set(chosen["poly"]["held_out_accuracy"]) == set(chosen["mono"]["held_out_accuracy"])
    # a grid whose lowest rate nobody picks is not extended
    plain = grid.probe_records(
        _track(), [0.0], [], [0, 1], protocol=CONTROLLED_PROBE.with_budget(lr_grid=(1e-5, 0.05), **QUICK)
    )
    assert {pick["lr_grid_extensions"] for pick in plain.selection.values()} == {0}


def test_paper_is_p2s_name_of_paper_cifar_and_still_works_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paper = probe_protocol("paper")
    assert paper is PAPER_PROBE and paper == replace(PAPER_CIFAR_PROBE, name="paper")
    assert any(issubclass(w.category, DeprecationWarning) and "paper_cifar" in str(w.message) for w in caught)
    assert probe_protocol("paper_in100") is PAPER_IN100_PROBE
    assert CONTROLLED_PROBE.lr_grid == (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def test_select_lr_trains_every_rate_in_one_grid_and_scores_as_one_call_per_rate():
    """All unscored rates train in one call (rates x seeds, a rate per probe); in float64 the scores and
    the choice are those of one ``train_probe_grid`` call per rate, as selection ran before."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(150, 8, generator=g)
        noisy = ((x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()) % 3
        noisy[torch.randperm(150, generator=g)[:40]] = torch.randint(0, 3, (40,), generator=g)
        held_out = torch.randperm(150, generator=g)[:30]
        seeds = [0, 1, 2]
        rates = (1e-4, 1e-2, 0.1, 1.0, 3.0)
        protocol = ProbeProtocol("t", lr_grid=rates, epochs=4, batch_size=16, weight_decay=0.01)
        lr, scores = protocol.select_lr(x, noisy, 3, seeds, held_out)
        fit = torch.ones(150, dtype=torch.bool)
        fit[held_out] = False
        fit_rows = torch.arange(150)[fit].expand(len(seeds), -1)
        expected = {}
        for rate in protocol.lr_grid:  # the reference: one call per rate
            probes = train_probe_grid(x, noisy.expand(len(seeds), -1), 3, rows=fit_rows, seeds=seeds,
                                      **protocol.training_kwargs(rate))  # fmt: skip
            expected[rate] = float(probes.accuracy(x[held_out], noisy[held_out]).mean())
        assert scores == pytest.approx(expected, abs=1e-12)
        assert len(set(expected.values())) > 2  # the rates do differ: the comparison is not vacuous
        best = max(expected.values())
        assert lr == min(r for r, s in expected.items() if s == best)
        # rates already scored are kept, not trained again; the others still equal their own calls
        known = {1e-2: -1.0}
        lr_again, again = protocol.select_lr(x, noisy, 3, seeds, held_out, scores=known)
        assert again[1e-2] == -1.0 and again == pytest.approx({**expected, 1e-2: -1.0}, abs=1e-12)
    finally:
        torch.set_default_dtype(previous)
