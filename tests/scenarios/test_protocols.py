"""The two probe protocols (hf_monosem.scenarios.protocols) on a tiny track: what each one changes."""

from __future__ import annotations

import pytest
import torch

from hf_monosem.scenarios import grid
from hf_monosem.scenarios.protocols import CONTROLLED_PROBE, PAPER_PROBE, ProbeProtocol, probe_protocol
from tests.scenarios.test_scenario_grid import _track

QUICK = dict(epochs=6, batch_size=16)


def _accuracies(records, method):
    return [r["accuracy"] for r in records if r["method"] == method]


def test_controlled_equalises_scale_and_the_paper_protocol_keeps_it():
    """'mono' is 'poly' / 1000: the same information at another scale. Equal scale -> equal probes."""
    track = _track()
    track.features["mono"] = {k: x / 1000 for k, x in track.features["poly"].items()}
    controlled = CONTROLLED_PROBE.with_budget(lr_grid=(), **QUICK)
    records = grid.probe_records(track, [0.0, 0.4], [1], [0, 1], protocol=controlled)
    assert _accuracies(records, "poly") == pytest.approx(_accuracies(records, "mono"), abs=1e-6)
    paper = grid.probe_records(track, [0.0, 0.4], [1], [0, 1], protocol=PAPER_PROBE.with_budget(**QUICK))
    assert _accuracies(paper, "poly") != _accuracies(paper, "mono")
    assert {r["protocol"] for r in records} == {"controlled"} and {r["protocol"] for r in paper} == {"paper"}


def test_controlled_chooses_the_lr_on_held_out_noisy_training_rows_never_the_test_split():
    track = _track()
    protocol = CONTROLLED_PROBE.with_budget(lr_grid=(1e-5, 0.05), **QUICK)
    records = grid.probe_records(track, [0.0], [], [0, 1], protocol=protocol)
    chosen = track.probe_selection["controlled"]
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
    grid.probe_records(garbled, [0.0], [], [0, 1], protocol=protocol)
    assert garbled.probe_selection["controlled"] == chosen


def test_the_paper_protocol_trains_on_the_tracks_augmented_views():
    track = _track()
    train = track.features["poly"][grid.TRAIN]
    # both views negate the features: a probe trained on them must get the test set (not negated) wrong
    track.train_views = {"poly": torch.stack([-train, -train])}
    paper = PAPER_PROBE.with_budget(**QUICK)
    with_views = grid.probe_records(track, [0.0], [], [0], protocol=paper)
    without = grid.probe_records(_track(), [0.0], [], [0], protocol=paper)
    trained_on_views = [
        r["accuracy"] for r in with_views if r["method"] == "poly" and not r["scenario"].startswith("domain")
    ]
    assert max(trained_on_views) < 0.5 < min(_accuracies(without, "poly"))  # domain probes: plain rows, 1.0
    assert _accuracies(with_views, "mono") == _accuracies(without, "mono")  # no views for it: plain rows
    controlled = CONTROLLED_PROBE.with_budget(lr_grid=(), **QUICK)  # augmented_views=False: ignored
    assert _accuracies(grid.probe_records(track, [0.0], [], [0], protocol=controlled), "poly") == _accuracies(
        grid.probe_records(_track(), [0.0], [], [0], protocol=controlled), "poly"
    )


def test_bad_protocols_are_refused_with_the_allowed_values():
    with pytest.raises(
        ValueError, match="probe protocol 'adam' is not valid; allowed: 'paper', 'controlled'"
    ):
        probe_protocol("adam")
    with pytest.raises(ValueError, match="schedule='cosine' is not valid"):
        ProbeProtocol("x", schedule="cosine")
    with pytest.raises(ValueError, match="lr_grid"):
        ProbeProtocol("x", lr_grid=(0.1, -1))
    with pytest.raises(ValueError, match="warmup_epochs=60 is not valid"):
        ProbeProtocol("x", epochs=50, warmup_epochs=60)
