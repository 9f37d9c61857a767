"""P3's text NCL pieces: encoder-level text views (cached), the authors' order of operations
(normalise -> activation -> normalise) and nearest-neighbour positives, and the toy where P2's recipe
collapses and the authors' order with neighbour positives does not."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tiny_models import tiny_bert_config
from transformers import BertModel

from hf_monosem import MonoSemanticConfig, MonoSemanticModel
from hf_monosem.cached import (
    feature_cache,
    feature_stats,
    fit_contrastive_projector,
    nearest_neighbors,
    standardize,
    text_view_features,
)
from hf_monosem.evaluation import monosemanticity_report
from hf_monosem.models.feature_layers import FeatureLayerSettings, NonNegativeFeatures

pytestmark = pytest.mark.usefixtures("one_thread")


def _bert_and_rows(n: int = 6) -> tuple[BertModel, Dataset]:
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    ids = torch.randint(5, 100, (n, 7), generator=torch.Generator().manual_seed(1))
    return bert.eval(), Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 7] * n})


# ----------------------------------------------------------------------------------- text views
def test_dropout_views_are_k_distinct_views_fixed_by_the_seed():
    bert, rows = _bert_and_rows()
    views = text_view_features(bert, rows, 3, seed=0, batch_size=4)
    assert views.shape == (3, 6, 32)
    for a in range(3):
        for b in range(a + 1, 3):  # every pair of views differs on every row
            assert (views[a] - views[b]).abs().amax(1).min() > 1e-4
    again = text_view_features(bert, rows, 3, seed=0, batch_size=4)
    assert torch.equal(views, again)
    assert not torch.allclose(views, text_view_features(bert, rows, 3, seed=1, batch_size=4))
    # dropout on during extraction only: the model's modes are restored, eval-mode vectors are not a view
    assert not bert.training and not any(m.training for m in bert.modules())
    plain = feature_cache.extract_pooled_features(bert, rows, batch_size=4)
    assert (views[0] - plain).abs().amax() > 1e-4
    # a view is a dropout pass: close to the eval-mode vector, as SimCSE's
    assert F.cosine_similarity(views[0], plain).min() > 0.8


def test_masked_views_replace_inner_tokens_only_and_need_a_mask_token():
    bert, rows = _bert_and_rows()
    views = text_view_features(bert, rows, 2, kind="mask", mask_rate=0.5, mask_token_id=3, seed=0)
    assert (views[0] - views[1]).abs().amax() > 1e-4
    batch = {
        "input_ids": torch.arange(10, 20).repeat(4, 1),
        "attention_mask": torch.ones(4, 10, dtype=torch.long),
    }
    batch["attention_mask"][0, 6:] = 0
    masked = feature_cache.mask_tokens(dict(batch), 0.99, 3, torch.Generator().manual_seed(0))["input_ids"]
    hit = masked == 3
    assert not hit[:, 0].any() and not hit[0, 5:].any() and not hit[1:, 9].any()  # CLS, SEP, padding kept
    assert hit[:, 1:5].all()
    with pytest.raises(ValueError, match="mask_token_id"):
        text_view_features(bert, rows, 2, kind="mask")
    with pytest.raises(ValueError, match=r"kind='crop' is not valid; allowed: 'dropout', 'mask'"):
        text_view_features(bert, rows, 2, kind="crop")
    with pytest.raises(ValueError, match="num_views=0"):
        text_view_features(bert, rows, 0)


def test_text_views_cache_hits_and_misses(tmp_path, monkeypatch):
    bert, rows = _bert_and_rows()
    passes = []
    real = feature_cache.collect_outputs

    def counting(*args, **kwargs):
        passes.append(kwargs.get("dropout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "collect_outputs", counting)
    first = text_view_features(bert, rows, 2, cache_dir=tmp_path, cache_key="rows")
    assert passes == [True, True] and len(list(tmp_path.iterdir())) == 1
    hit = text_view_features(bert, rows, 2, cache_dir=tmp_path, cache_key="rows")
    assert torch.equal(first, hit) and len(passes) == 2  # loaded: the model did not run
    text_view_features(bert, rows, 2, seed=1, cache_dir=tmp_path, cache_key="rows")  # another seed: a miss
    text_view_features(bert, rows, 3, cache_dir=tmp_path, cache_key="rows")  # another K: a miss
    assert len(passes) == 7 and len(list(tmp_path.iterdir())) == 3


# ------------------------------------------------------------------------- the authors' order
def _identity_layer(order: str, activation: str = "relu") -> NonNegativeFeatures:
    layer = NonNegativeFeatures(
        3, FeatureLayerSettings(feature_dim=3, nonneg_order=order, nonneg_activation=activation)
    )
    with torch.no_grad():
        layer.project.weight.copy_(torch.eye(3))
        layer.project.bias.zero_()
    return layer


def test_authors_order_forward_values_on_a_hand_made_batch():
    x = torch.tensor([[3.0, -4.0, 0.0], [1.0, 1.0, -2.0], [-1.0, -2.0, -3.0]])
    out = _identity_layer("authors")(x)[0]
    # [3,-4,0] -> [.6,-.8,0] -> [.6,0,0] -> [1,0,0]; [1,1,-2] -> [1,1,0]/sqrt2; all negative -> zeros
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5**0.5, 0.5**0.5, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(_identity_layer("plain")(x)[0], F.relu(x))  # P2's order: ReLU on the output


def test_rep_relu_under_the_authors_order_gives_a_negative_unit_gradient():
    x = torch.tensor([[3.0, -4.0, 0.5]])
    grads = {}
    for activation in ("relu", "rep_relu"):
        layer = _identity_layer("authors", activation)
        layer(x)[0][:, 1].sum().backward()  # the unit whose pre-activation is negative
        grads[activation] = layer.project.weight.grad[1].clone()
    assert torch.equal(grads["relu"], torch.zeros(3))  # a ReLU unit below zero gets nothing
    assert grads["rep_relu"].abs().sum() > 1e-3  # rep_relu's GELU gradient reaches it


def test_nonneg_order_is_validated_saved_and_loaded(tmp_path):
    with pytest.raises(ValueError, match=r"nonneg_order='after' is not valid; allowed: 'plain', 'authors'"):
        FeatureLayerSettings(feature_dim=4, nonneg_order="after")
    config = MonoSemanticConfig(
        backbone_config=tiny_bert_config(), feature_layer="nonneg", feature_dim=16, nonneg_order="authors"
    )
    model = MonoSemanticModel(config).eval()
    model.save_pretrained(tmp_path)
    loaded = MonoSemanticModel.from_pretrained(tmp_path).eval()
    assert loaded.config.nonneg_order == "authors" and loaded.feature_layer.settings.nonneg_order == "authors"
    ids = torch.randint(5, 100, (2, 6))
    features = loaded(input_ids=ids).features
    torch.testing.assert_close(features, model(input_ids=ids).features)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))  # the authors' order: unit rows


# ------------------------------------------------------------------- nearest-neighbour positives
def test_nearest_neighbors_are_the_exact_top_k_and_never_the_row_itself():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    x[1] = x[0]  # a duplicate: its neighbour is the other copy, not itself
    neighbors = nearest_neighbors(x, k=10, chunk=64)  # several chunks
    unit = F.normalize(x, dim=-1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float("inf"))
    brute = sim.topk(10, dim=1).indices
    assert neighbors.shape == (300, 10)
    assert (neighbors != torch.arange(300)[:, None]).all()
    assert neighbors[0, 0] == 1 and neighbors[1, 0] == 0
    picked = sim.gather(1, neighbors)
    torch.testing.assert_close(picked.sort(1).values, sim.gather(1, brute).sort(1).values)
    with pytest.raises(ValueError, match=r"k=300 is not valid; allowed: an integer in \[1, 299\]"):
        nearest_neighbors(x, k=300)


def test_nn_positives_are_drawn_among_the_neighbours(monkeypatch):
    import hf_monosem.cached.projector_fitting as fitting

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    neighbors = nearest_neighbors(standardize(x)[0], 10)
    seen = []
    real_layer_class = fitting.feature_layer_class

    def recording_class(*args, **kwargs):
        cls = real_layer_class(*args, **kwargs)

        class Recording(cls):
            def forward(self, inputs):
                seen.append(inputs.detach().clone())
                return super().forward(inputs)

        return Recording

    monkeypatch.setattr(fitting, "feature_layer_class", recording_class)
    views = x + 0.01 * torch.randn(2, 64, 8)
    fit_contrastive_projector(
        x, views=views, positives="nn", feature_dim=8, projector_hidden_dim=None, epochs=2, batch_size=64,
        progress=False,
    )  # fmt: skip
    mean, std = feature_stats(x)
    cached = (views - mean) / std  # [2, 64, 8]
    for anchor, positive in zip(seen[0:4:2], seen[1:4:2]):  # (a, b) pairs of each training step
        # each input is a cached view of some row: find which row, then check b's row neighbours a's
        row_a = (cached.unsqueeze(2) - anchor).abs().amax(-1).amin(0).argmin(0)
        row_b = (cached.unsqueeze(2) - positive).abs().amax(-1).amin(0).argmin(0)
        assert (row_a != row_b).all()
        assert (neighbors[row_a] == row_b[:, None]).any(1).all()
    with pytest.raises(ValueError, match=r"positives='labels' is not valid; allowed: 'self', 'nn'"):
        fit_contrastive_projector(x, positives="labels")
    with pytest.raises(ValueError, match="views must be"):
        fit_contrastive_projector(x, views=views[:1])


# --------------------------------------------------------------------------------- the toy
def test_authors_order_with_nn_positives_does_not_collapse_where_p2_does():
    """DESIGN.md "Why text NCL collapses": points far apart (each its own cluster under small feature-space
    views); P2's recipe leaves most units dead, the authors' order + neighbour positives almost none."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 20
    x = torch.randn(20, 128, generator=g)[labels] + torch.randn(2000, 128, generator=g)
    common = dict(feature_dim=1024, projector_hidden_dim=1024, epochs=20, batch_size=256, progress=False)
    p2, _ = fit_contrastive_projector(x, activation_loss_weight=10.0, **common)
    authors_nn, _ = fit_contrastive_projector(
        x, nonneg_order="authors", nonneg_activation="rep_relu", activation_loss_weight=1.0, positives="nn",
        **common,
    )  # fmt: skip
    with torch.no_grad():
        before = monosemanticity_report(p2(x)[0], labels)
        after = monosemanticity_report(authors_nn(x)[0], labels)
    assert before["dead_fraction"] >= 0.3
    assert after["dead_fraction"] <= 0.10
    assert after["l0"] > 2 * before["l0"]


# ----------------------------------------------------------------------- stage A's decision rule
def _selection_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "select_ncl_recipe.py"
    spec = importlib.util.spec_from_file_location("select_ncl_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_a_decision_rule_applies_every_gate_and_then_the_accuracy():
    decide = _selection_script().decide

    def rec(candidate, method, dead, l0, consistency, acc):
        return [{"candidate": candidate, "method": method, "seed": s, "dead_fraction": dead, "l0": l0,
                 "class_consistency": consistency, "mean_val_accuracy": acc} for s in (0, 1)]  # fmt: skip

    width = 1000  # L0 gate: [10, 250]
    records = [
        *rec("p2", "ncl", 0.70, 5, 0.60, 0.90), *rec("p2", "simclr", 0.0, 1000, 0.30, 0.70),  # dead, L0 fail
        *rec("authors", "ncl", 0.05, 50, 0.40, 0.80), *rec("authors", "simclr", 0.0, 1000, 0.30, 0.81),
        *rec("authors-nn", "ncl", 0.00, 100, 0.42, 0.75), *rec("authors-nn", "simclr", 0.0, 1000, 0.36, 0.78),
    ]  # fmt: skip
    chosen, rows = decide(records, width)
    assert [r["qualifies"] for r in rows] == [False, True, True]
    assert chosen == "authors"  # both qualify; the higher NCL mean accuracy wins
    # consistency 0.40 < 0.36 + 0.05: authors fails that gate
    records = [r if r["candidate"] != "authors" or r["method"] != "simclr"
               else {**r, "class_consistency": 0.36} for r in records]  # fmt: skip
    chosen, rows = decide(records, width)
    assert chosen == "authors-nn" and not rows[1]["gates"]["consistency >= SimCLR + 0.05"]
    assert decide(rec("p2", "ncl", 0.5, 5, 0.6, 0.9) + rec("p2", "simclr", 0, 9, 0.1, 0.9), width)[0] is None


def test_stage_a_vision_refuses_text_only_choices_before_any_work(capsys):
    parse = _selection_script().parse_args
    for argv, named in (
        (["--track", "audio"], "--track 'audio'"),
        (["--track", "vision", "--candidates", "authors-nn"], "authors-nn"),  # a text prior
        (["--track", "vision", "--check_r52"], "--check_r52"),
    ):
        with pytest.raises(SystemExit):
            parse(argv)
        assert named in capsys.readouterr().err
    assert parse(["--track", "vision"]).candidates == ["p2", "authors"]
    assert parse(["--track", "vision"]).width == 512 and parse([]).width == 1536


def test_stage_a_vision_trains_one_simclr_twin_per_seed_and_keeps_no_test_image(tmp_path, capsys):
    """The vision track of stage A: every candidate's NCL beside one SimCLR per seed (it does not depend on
    the NCL layer's settings), on Fashion-MNIST training rows only; the page and JSON are written."""
    script = _selection_script()
    script.main(["--track", "vision", "--rows", "600", "--validation_rows", "200", "--pretrain_epochs", "1",
                 "--probe_epochs", "2", "--width", "16", "--pretrain_seeds", "0",
                 "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    result = json.loads((tmp_path / "out" / "p3_ncl_selection_vision.json").read_text())
    twins = [r for r in result["records"] if r["method"] == "simclr"]
    assert [r["candidate"] for r in twins] == ["p2", "authors"]
    assert twins[0]["val_accuracy"] == twins[1]["val_accuracy"]  # the same SimCLR, probed once
    runs = sorted(p.name.split("-")[2] for p in (tmp_path / "cache").iterdir())
    assert runs == ["linear", "nonneg", "nonneg"]  # one SimCLR, one NCL per candidate
    ncl = {r["candidate"]: r for r in result["records"] if r["method"] == "ncl"}
    assert ncl["p2"]["val_accuracy"] != ncl["authors"]["val_accuracy"]  # the candidates' layers differ
    page = (tmp_path / "out" / "p3_ncl_selection_vision.md").read_text()
    assert "no test image is kept" in page and "vision track" in page
    assert (
        len(
            script.vision_rows(
                script.parse_args(["--track", "vision", "--rows", "50", "--validation_rows", "10"])
            )[1]
        )
        == 50
    )
