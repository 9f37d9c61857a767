"""The fits on a matrix in shard files: the fit in memory, bit for bit, without the RAM.

* ``train_sae_layer`` (TopK with AuxK on; ReLU with resampling on), ``fit_sae`` and
  ``fit_contrastive_projector`` (NCL with the activation loss; SimCLR) on a ``ShardedFeatures`` give
  exactly (``torch.equal``) the weights and the report of the same fit on the same matrix in memory:
  the same batches, the same statistics, the same resampling candidates; so does the probe grid
  (``train_probe_grid``: seeds, per-probe rows and rates, AdamW and LARS). Shards of 37 rows and
  statistics blocks of 64, so batches and blocks cross shard borders. Under ``accelerate launch`` the
  same holds for the data-parallel fit (``tests/cached/test_distributed_fitting.py``).
* a child process fitting an SAE, a projector and a probe grid on a 164 MB matrix in shards (40,000 x
  1,024 float32, written a block at a time) grows its peak resident memory by under a quarter of the
  matrix's size (measured: 18.5 MB), where the same fits on the matrix in memory (the control, same
  child script) grow it by more than the matrix (858 MB): the measurement can tell the two apart.
"""

from __future__ import annotations

import pytest
import torch
from peak_memory import run_child
from test_distributed_fitting import features_and_views, sae_fit
from tiny_models import tiny_bert_config
from training_toys import write_shards
from transformers import BertModel

from hf_monosem import fit_sae
from hf_monosem.cached import fit_contrastive_projector, row_source, train_sae_layer
from hf_monosem.cached.probe_grid import train_probe_grid
from hf_monosem.cached.row_source import FeatureRows
from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def blocks_of_64_rows(monkeypatch):
    """The statistics pass in blocks of 64 rows of these 16-wide matrices (by default a block holds 2**20
    values: all 300 rows), so that it sums several blocks, across the shards' borders."""
    monkeypatch.setattr(row_source, "BLOCK_VALUES", 64 * 16)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.usefixtures("blocks_of_64_rows")
@pytest.mark.parametrize("kind", ["topk", "sae"])
def test_an_sae_fitted_on_shards_is_the_sae_fitted_in_memory(tmp_path, kind):
    x, _ = features_and_views()
    in_memory, on_disk = sae_fit(kind, x), sae_fit(kind, write_shards(tmp_path, x))
    assert_same_weights(on_disk[0], in_memory[0])
    assert on_disk[1] == in_memory[1]  # every history, every count
    if kind == "topk":  # dead latents, so AuxK ran
        assert in_memory[1]["dead_fraction"][1] > 0
    else:
        assert in_memory[1]["resampled"] > 0


def test_fit_sae_on_shards_is_fit_sae_in_memory(tmp_path):
    x = torch.cat([features_and_views()[0]] * 2, dim=1)  # BERT's 32 dims
    options = {"feature_dim": 64, "topk": 4, "epochs": 2, "batch_size": 64, "progress": False}
    bert = BertModel(tiny_bert_config())
    model, report = fit_sae(bert, features=x, **options)
    sharded_model, sharded_report = fit_sae(bert, features=write_shards(tmp_path, x), **options)
    assert_same_weights(sharded_model.feature_layer.state_dict(), model.feature_layer.state_dict())
    assert sharded_report == report


@pytest.mark.usefixtures("blocks_of_64_rows")
@pytest.mark.parametrize("kind", ["nonneg", "linear"])
def test_a_projector_fitted_on_shards_is_the_projector_fitted_in_memory(tmp_path, kind):
    x = features_and_views()[0]
    options = {"feature_layer": kind, "feature_dim": 32, "projector_hidden_dim": 32, "epochs": 2}
    options.update(batch_size=45, progress=False)
    if kind == "nonneg":
        options.update(nonneg_activation="rep_relu", activation_loss_weight=1.0)
    layer, report = fit_contrastive_projector(x, **options)
    sharded_layer, sharded_report = fit_contrastive_projector(write_shards(tmp_path, x), **options)
    assert_same_weights(sharded_layer.state_dict(), layer.state_dict())
    assert sharded_report == report


@pytest.mark.parametrize("optimizer", ["adam", "lars"])
def test_a_probe_grid_trained_on_shards_is_the_grid_trained_in_memory(tmp_path, optimizer):
    """Several seeds (their [S, B] batches gathered at once), per-probe rows and rates, two optimisers."""
    x, _ = features_and_views()
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 3, (300,), generator=g)
    labels = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0).long(), noise])
    rows = torch.stack([torch.randperm(300, generator=g)[:200] for _ in range(3)])
    options = {"epochs": 3, "batch_size": 45, "seeds": [0, 1, 1], "lr": [1e-2, 1e-2, 3e-2], "rows": rows}
    options.update(optimizer=optimizer, schedule="warmup_cosine" if optimizer == "lars" else "constant")
    grid = train_probe_grid(x, labels, 3, **options)
    sharded = train_probe_grid(write_shards(tmp_path, x), labels, 3, **options)
    assert torch.equal(sharded.weight, grid.weight) and torch.equal(sharded.bias, grid.bias)
    assert grid.accuracy(x, labels)[:2].min() > 0.8  # the probes learned: the comparison is not of zeros


def test_bad_input_on_shards_is_named_before_any_step(tmp_path):
    x = features_and_views()[0]
    x[200, 3] = float("nan")
    matrix = write_shards(tmp_path / "nan", x)
    sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=4), input_dim=16, kind="topk")
    with pytest.raises(ValueError, match="features hold nan at row 200, column 3"):
        train_sae_layer(sae, matrix, epochs=1, progress=False)
    with pytest.raises(ValueError, match="features hold nan at row 200, column 3"):
        fit_contrastive_projector(matrix, epochs=1, progress=False)
    with pytest.raises(ValueError, match="features hold nan at row 200, column 3"):
        train_probe_grid(matrix, torch.zeros(1, 300, dtype=torch.long), 2)
    clean = write_shards(tmp_path / "ok", features_and_views()[0])
    with pytest.raises(ValueError, match="positives='nn' needs the features in memory"):
        fit_contrastive_projector(clean, positives="nn", progress=False)
    with pytest.raises(ValueError, match="features of type ndarray are not valid; allowed: a torch.Tensor"):
        FeatureRows(x.numpy())  # type: ignore[arg-type]


CHILD = """
import json, sys
import torch
from hf_monosem.cached import fit_contrastive_projector, train_probe_grid, train_sae_layer
from hf_monosem.cached.feature_shards import ShardWriter, open_shards, write_manifest
from hf_monosem.models.feature_layers import FeatureLayerSettings, build_feature_layer

ROWS, WIDTH = 40_000, 1024
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
basis = torch.randn(32, WIDTH, generator=g)

def write(folder, rows):  # a block at a time: the matrix is never in this process's memory
    writer = ShardWriter(folder, rows_per_shard=4096)
    for _ in range(rows // 1000):
        writer.write(torch.randn(1000, 32, generator=g) @ basis + 0.3 * torch.randn(1000, WIDTH, generator=g))
    write_manifest(folder, [writer.close()], width=WIDTH, key="child")
    return open_shards(folder, key="child")

def fits(features):
    torch.manual_seed(0)  # the same SAE and projector to start from, on disk and in memory
    sae = build_feature_layer(FeatureLayerSettings(feature_dim=64, topk=8), input_dim=WIDTH, kind="topk")
    train_sae_layer(sae, features, epochs=1, batch_size=1024, progress=False)
    fit_contrastive_projector(features, feature_dim=16, projector_hidden_dim=16, epochs=1, batch_size=256,
                              progress=False)
    labels = torch.randint(0, 4, (2, len(features)), generator=torch.Generator().manual_seed(0))
    train_probe_grid(features, labels, 4, epochs=1, batch_size=1024, seeds=[0, 1])

small, matrix = write(sys.argv[1] + "-small", 3000), write(sys.argv[1], ROWS)
fits(small if sys.argv[2] == "shards" else small.to_tensor())  # every code path loaded once
before = peak()
fits(matrix if sys.argv[2] == "shards" else matrix.to_tensor())
print(json.dumps({"growth": peak() - before, "bytes": ROWS * WIDTH * 4}))
"""


@pytest.mark.slow  # two child processes writing and fitting on 164 MB: ~15 s each idle, longer under load
@pytest.mark.parametrize("route", ["shards", "in_memory"])
def test_fits_on_a_matrix_larger_than_the_memory_they_may_use_go_through_disk(tmp_path, route):
    report = run_child(CHILD, str(tmp_path / "cache"), route, workdir=tmp_path)
    if route == "shards":  # a batch and a block at a time: under a quarter of the matrix
        assert report["growth"] < report["bytes"] / 4, report
    else:  # the control: the same fits on the matrix in memory, which the measurement sees
        assert report["growth"] > report["bytes"], report
