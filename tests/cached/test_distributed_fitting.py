"""The label-free fits under ``accelerate launch --num_processes 2`` (CPU, gloo) equal one process's.

Both processes hold the same feature matrix and walk the same batches; each fits on its block of every
batch (batches of 45 rows: blocks of 23 and 22, so the weighting by share is exercised), the gradients
and the fit statistics are summed. Compared with a one-process fit in this process on the same features:
the TopK SAE with AuxK (dead latents declared after 2 steps, so the term is on), the ReLU SAE with
resampling, the NCL projector on cached views with nearest-neighbour positives and the activation loss,
and the SimCLR projector on feature-space views (dropout + noise drawn for the whole batch).

Tolerance 1e-5 on every weight: the two runs differ only in float32 rounding (half-batch matmuls, a sum
of two partial gradients instead of one full-batch reduction); measured, the largest difference over all
weights of these fits is 1.2e-7 (decoder of the ReLU SAE), so 1e-5 leaves 80x room for other CPUs'
kernels, while a wrong weighting or a local statistic (a half-batch mean, local dead latents, local
negatives) moves weights at the scale of one Adam step (lr = 1e-3 .. 2e-3) from the first step on. The
TopK SAE's codes of every row are compared too (the same support: no near tie flipped).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_toys import launch_and_load, write_shards

from hf_monosem.cached import fit_contrastive_projector, train_sae_layer
from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer

TESTS = Path(__file__).resolve().parents[1]
SEARCH_PATH = f"{TESTS}|{Path(__file__).resolve().parent}"
WORLD, ROWS, BATCH = 2, 300, 45
ATOL = 1e-5


def features_and_views() -> tuple[torch.Tensor, torch.Tensor]:
    """300 rows of low rank + noise in 16 dims and 3 noisy views of each (fixed by a seed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 4, generator=g) @ torch.randn(4, 16, generator=g)
    x = x + 0.3 * torch.randn(ROWS, 16, generator=g)
    views = x + 0.1 * torch.randn(3, ROWS, 16, generator=g)
    return x, views


def sae_fit(kind: str, features, split_processes: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The SAE fit of the comparison from its seeded start: ``topk`` with AuxK on (dead after 2 steps),
    ``sae`` with resampling on (8 latents that never fire); ``(state_dict, report)``."""
    options = (
        {"dead_latents": "auxk", "dead_after_steps": 2}
        if kind == "topk"
        else {"dead_latents": "resample", "dead_after_steps": 2, "resample_every": 3}
    )
    torch.manual_seed(0)
    sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=4), input_dim=16, kind=kind)
    if kind == "sae":  # latents that never fire, so that resampling runs
        sae.encoder.bias.data[:8] = -10.0
    report = train_sae_layer(sae, features, epochs=3, batch_size=BATCH, lr=2e-3, progress=False,
                             split_processes=split_processes, **options)  # fmt: skip
    return sae.state_dict(), report


def fits(split_processes: bool = True) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    """Every fit of the comparison, each from its own seeded start: ``{name: (state_dict, report)}``
    (``split_processes`` does nothing in one process)."""
    x, views = features_and_views()
    out = {kind: sae_fit(kind, x, split_processes) for kind in ("topk", "sae")}
    common = {"feature_dim": 32, "projector_hidden_dim": 32, "epochs": 2, "batch_size": BATCH}
    common.update(progress=False, split_processes=split_processes)
    ncl, report = fit_contrastive_projector(
        x, feature_layer="nonneg", views=views, positives="nn", nonneg_order="authors",
        nonneg_activation="rep_relu", activation_loss_weight=1.0, **common,
    )  # fmt: skip
    out["ncl"] = (ncl.state_dict(), report)
    simclr, report = fit_contrastive_projector(x, feature_layer="linear", **common)
    out["simclr"] = (simclr.state_dict(), report)
    return out


SCRIPT = """
import sys
import torch
sys.path[:0] = sys.argv[2].split("|")
from accelerate import Accelerator
from test_distributed_fitting import fits

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)  # joins the gloo process group (ACCELERATE_USE_CPU=1)
out = f"{sys.argv[1]}/rank{accelerator.process_index}.pt"
split = fits()
# not asked to split: a fit on the main process alone runs no collective (the other process is not there)
alone = fits(split_processes=False) if accelerator.process_index == 0 else None
# different features on the two processes: refused on both, before any step
from hf_monosem.cached import train_sae_layer
from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer
from test_distributed_fitting import features_and_views
sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=4), input_dim=16, kind="topk")
try:
    train_sae_layer(sae, features_and_views()[0] + accelerator.process_index, split_processes=True)
    refused = None
except ValueError as error:
    refused = str(error)
# the same fit on the matrix in shard files (written by the test): the in-memory split fit's weights; and
# different shards on the two processes are refused from their manifests
from hf_monosem.cached.feature_shards import open_shards
from test_distributed_fitting import sae_fit
on_disk = sae_fit("topk", open_shards(f"{sys.argv[1]}/shards"))
try:
    sae_fit("topk", open_shards(f"{sys.argv[1]}/{'shards' if accelerator.process_index == 0 else 'other'}"))
    refused_shards = None
except ValueError as error:
    refused_shards = str(error)
torch.save({"world": accelerator.num_processes, "fits": split, "alone": alone, "refused": refused,
            "on_disk": on_disk, "refused_shards": refused_shards}, out)
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
def test_two_processes_fit_the_weights_one_process_fits(tmp_path):
    x, _ = features_and_views()
    write_shards(tmp_path / "shards", x)
    write_shards(tmp_path / "other", x + 1)
    ranks = launch_and_load(tmp_path, SCRIPT, SEARCH_PATH, WORLD)
    assert [r["world"] for r in ranks] == [WORLD, WORLD]

    torch.set_num_threads(1)
    reference = fits()
    for name, (state, report) in reference.items():
        for r in ranks:
            other_state, other_report = r["fits"][name]
            for key, value in state.items():  # the weights
                torch.testing.assert_close(other_state[key], value, atol=ATOL, rtol=0, msg=f"{name}.{key}")
            for key in ("loss", "explained_variance", "l0", "dead_fraction", "resampled"):
                if key in report:  # the statistics are global: the one-process numbers
                    assert other_report[key] == pytest.approx(report[key], rel=1e-4, abs=1e-5), (name, key)
        for key in state:  # and identical on both processes
            assert torch.equal(ranks[0]["fits"][name][0][key], ranks[1]["fits"][name][0][key]), (name, key)
    # without split_processes the main process fitted on its own: the one-process fits, bit for bit
    for name, (state, _) in reference.items():
        for key, value in state.items():
            assert torch.equal(ranks[0]["alone"][name][0][key], value), (name, key)
    for rank, r in enumerate(ranks):
        expected = f"features differs between the 2 processes (process {rank}: shape (300, 16))"
        for refused in (r["refused"], r["refused_shards"]):
            assert refused.startswith(expected)
            assert "allowed: the same matrix on every process" in refused
        # split across the processes, the fit on shards is the fit in memory, bit for bit
        assert r["on_disk"][1] == r["fits"]["topk"][1]
        for key, value in r["fits"]["topk"][0].items():
            assert torch.equal(r["on_disk"][0][key], value), key
    # the fits did what the comparison is meant to cover
    assert reference["sae"][1]["resampled"] > 0
    assert reference["topk"][1]["dead_fraction"][1] > 0  # dead latents, so AuxK ran
    # the SAE codes of every row: the same support and values
    sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=4), input_dim=16, kind="topk")
    sae.load_state_dict(reference["topk"][0])
    codes = sae(x)[0]
    sae.load_state_dict(ranks[1]["fits"]["topk"][0])
    torch.testing.assert_close(sae(x)[0], codes, atol=10 * ATOL, rtol=0)
