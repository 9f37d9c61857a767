"""``hf-monosem report``'s time estimate: the planned steps of every fit and probe grid x step times measured
on this machine by the real fitting functions. No timing ratio is asserted (shared CPUs make it flaky):
what is tested is that the estimate multiplies what was measured by what the plan implies."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hf_monosem.report.estimate import STAGES, estimate_line, estimate_seconds, measure_work, planned_work
from hf_monosem.report.tracks import RepresentationPlan
from hf_monosem.scenarios.protocols import CONTROLLED_PROBE, PAPER_CIFAR_PROBE

pytestmark = pytest.mark.usefixtures("one_thread")

PROTOCOLS = [
    PAPER_CIFAR_PROBE.with_budget(epochs=2),
    CONTROLLED_PROBE.with_budget(epochs=2, lr_grid=(0.01, 0.1)),
]


def plan(epochs: int = 2) -> RepresentationPlan:
    return RepresentationPlan(sae_topk=(4,), sae_overcomplete=0, epochs=epochs, projector_width=16)


def work_of(p: RepresentationPlan, protocols=PROTOCOLS, **kwargs):
    settings = {"views_for_probes": True, "domain_rows": 0, **kwargs}
    return planned_work(300, 8, p, 2, protocols, [0.0, 0.3], [2], [0, 1], 3, **settings)


def test_the_plan_implies_every_fit_and_probe_grid_and_twice_the_epochs_twice_the_steps():
    work = work_of(plan())
    kinds = [(w.stage, w.kind) for w in work]
    # the SAE on the raw vectors, SimCLR, NCL, the SAE on the SimCLR output
    assert kinds[:4] == [
        ("fitting", "sae"),
        ("fitting", "projector"),
        ("fitting", "projector"),
        ("fitting", "sae"),
    ]
    # 300 rows in batches of 256: 2 steps an epoch, 2 epochs
    assert [w.steps for w in work[:4]] == [4, 4, 4, 4]
    probes = [w for w in work if w.stage == "probes"]
    # per protocol, a label-noise grid and a few-shot grid per representation (2 of width 8: raw, sae_k4;
    # 3 of width 16: simclr, ncl, simclr_sae_k4), plus the lr selection of the protocol with an lr grid
    assert sum(w.calls for w in probes) == 2 * 2 * (2 + 3) + (2 + 3)
    views = {w.shape[0]: w.shape[4] for w in probes}
    assert views == {"paper_cifar": 2, "controlled": 0}  # augmented views where the protocol uses them
    twice = work_of(plan(epochs=4), [p.with_budget(epochs=4) for p in PROTOCOLS])
    assert [w.steps for w in twice] == [2 * w.steps for w in work]
    assert [(w.kind, w.shape, w.calls) for w in twice] == [(w.kind, w.shape, w.calls) for w in work]
    with_domain = work_of(plan(), domain_rows=40)
    assert len(with_domain) == len(work) + 4  # a domain grid per protocol and width


def test_the_estimate_is_the_measured_step_times_times_the_planned_steps():
    p = plan()
    work = work_of(p)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    timing = measure_work(work, p, PROTOCOLS)
    # measuring draws random rows and runs real fits: the run's random state is left as it was
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert set(timing) == {(w.kind, w.shape) for w in work}  # every distinct shape, timed once
    assert all(per_call >= 0 and per_step >= 0 for per_call, per_step in timing.values())
    assert any(per_step > 0 for _, per_step in timing.values())
    estimate = estimate_seconds(0.5, work, timing)
    for stage in ("fitting", "probes"):
        expected = sum(w.calls * (timing[(w.kind, w.shape)][0] + timing[(w.kind, w.shape)][1] * w.steps)
                       for w in work if w.stage == stage)  # fmt: skip
        assert estimate[stage] == pytest.approx(expected, abs=2e-3)
    # the same step times, twice the epochs: the part spent in steps doubles
    twice = work_of(plan(epochs=4), [q.with_budget(epochs=4) for q in PROTOCOLS])
    doubled = estimate_seconds(0.5, twice, timing)
    outside = sum(w.calls * timing[(w.kind, w.shape)][0] for w in work if w.stage == "fitting")
    assert doubled["fitting"] - outside == pytest.approx(2 * (estimate["fitting"] - outside), abs=5e-3)
    assert estimate["extraction"] == 0.5 and estimate["total"] == pytest.approx(
        sum(estimate[s] for s in STAGES)
    )


def test_the_printed_line_names_every_stage():
    line = estimate_line({"extraction": 1.2, "fitting": 30.4, "probes": 7.0, "total": 38.6})
    assert line.startswith("[hf-monosem report] estimated time: about 39 s")
    for stage, seconds in (("extraction", 1), ("fitting", 30), ("probes", 7)):
        assert f"{stage} {seconds} s" in line
