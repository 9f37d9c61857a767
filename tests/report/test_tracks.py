"""The track builder's representation plan: its SAE learning rate reaches every SAE fit and the cache key;
the benchmark pins the rate its committed records were made with."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hf_monosem.cached import SaeFitConfig
from hf_monosem.report.tracks import RepresentationPlan, fit_representations

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_plans_sae_lr_reaches_every_sae_fit_and_the_cache_key(tmp_path):
    train = torch.randn(96, 16, generator=torch.Generator().manual_seed(0))
    plan = RepresentationPlan(sae_topk=(4,), sae_overcomplete=2, epochs=1, projector_width=8)
    default = fit_representations(train, plan, tmp_path, progress=False)
    pinned = fit_representations(train, RepresentationPlan(**{**vars(plan), "sae_lr": 1e-3}), tmp_path,
                                 progress=False)  # fmt: skip
    saes = ("sae_k4", "sae_x2_k32", "simclr_sae_k4")
    assert set(saes) <= set(default)
    for name in saes:
        width = default[name][0].feature_dim
        assert default[name][1]["lr"] == pytest.approx(SaeFitConfig().resolved_lr(width))  # fit_sae's own
        assert pinned[name][1]["lr"] == 1e-3
    assert not torch.equal(default["sae_k4"][0].encoder.weight, pinned["sae_k4"][0].encoder.weight)
    assert len(list(tmp_path.glob("representations-*.safetensors"))) == 2  # one cache file per rate


@pytest.mark.parametrize("bad", [0, -1e-3, float("inf"), "1e-3", True])
def test_a_bad_sae_lr_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=rf"sae_lr={bad!r} is not valid; allowed: None .* or a number > 0"):
        RepresentationPlan(sae_lr=bad)


def test_the_benchmark_pins_the_sae_lr_of_its_committed_records():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import robustness_benchmark as benchmark
    finally:
        sys.path.remove(str(EXAMPLES))
    plan = benchmark.representation_plan(benchmark.parse([]), projector_width=None)
    assert plan.sae_lr == 1e-3
