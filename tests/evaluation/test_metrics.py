"""Tests for hf_monosem.evaluation.metrics (feature metrics, evaluate scripts, Trainer glue) and reporting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from hf_monosem.evaluation.metrics import (
    METRIC_SCRIPTS_DIR,
    activation_sparsity,
    class_consistency,
    classification_metrics,
    dead_features,
    extract_features,
    feature_label_mutual_information,
    load_metric_script,
    make_compute_metrics,
    monosemanticity_report,
)
from hf_monosem.evaluation.reporting import plot_robustness, robustness_markdown_table, summarize_robustness


def _one_hot_code(
    n_per_class: int = 30, num_classes: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class has its own feature, with random positive magnitudes; zeros elsewhere."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat(n_per_class)
    feats = torch.nn.functional.one_hot(labels, num_classes).float() * (
        0.5 + torch.rand(len(labels), 1, generator=g)
    )
    return feats, labels


# ---------------------------------------------------------------------------------------------
# feature metrics
# ---------------------------------------------------------------------------------------------
def test_activation_sparsity_and_dead_features():
    x = np.array([[1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 3.0]])
    assert activation_sparsity(x) == {"l0": 1.5, "zero_fraction": 0.625, "active_fraction": 0.375}
    assert activation_sparsity(torch.tensor(x), threshold=2.5)["l0"] == 0.5
    dead = dead_features(x)
    assert dead["num_dead"] == 2 and dead["dead_indices"].tolist() == [1, 2] and dead["dead_fraction"] == 0.5


def test_class_consistency_one_hot_is_one():
    feats, labels = _one_hot_code()
    assert class_consistency(feats, labels) == 1.0
    assert class_consistency(feats, labels, top_m=100) == 1.0  # more than a class: zeros do not count
    assert class_consistency(feats.numpy(), labels.numpy() + 7) == 1.0  # any integer ids
    dead_extra = torch.cat([feats, torch.zeros(len(feats), 3)], dim=1)
    per_feature = class_consistency(dead_extra, labels, reduction="none")
    assert torch.isnan(per_feature[-3:]).all() and class_consistency(dead_extra, labels) == 1.0


@pytest.mark.parametrize("num_classes", [2, 5])
def test_class_consistency_random_is_chance(num_classes):
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(20000, 16, generator=g)
    labels = torch.randint(0, num_classes, (20000,), generator=g)
    score = class_consistency(feats, labels, top_m=2000)
    assert abs(score - 1 / num_classes) < 0.03
    relu_random = torch.relu(torch.randn(20000, 16, generator=g))  # sparse but meaningless
    assert abs(class_consistency(relu_random, labels, top_m=2000) - 1 / num_classes) < 0.03


def test_mutual_information_binary_and_quantile():
    feats, labels = _one_hot_code(n_per_class=50, num_classes=2)
    assert feature_label_mutual_information(feats, labels) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(4000, 8, generator=g)
    random_labels = torch.randint(0, 2, (4000,), generator=g)
    assert feature_label_mutual_information(noise, random_labels, bins=4) < 0.01
    informative = random_labels[:, None].float() + 0.3 * torch.randn(4000, 8, generator=g)
    per_feature = feature_label_mutual_information(informative, random_labels, bins=8, reduction="none")
    assert per_feature.shape == (8,) and bool((per_feature > 0.5).all())


def test_monosemanticity_report_keys_and_values():
    feats, labels = _one_hot_code()
    report = monosemanticity_report(feats, labels)
    assert set(report) == {
        "l0",
        "zero_fraction",
        "active_fraction",
        "dead_fraction",
        "num_dead",
        "class_consistency",
        "mutual_information",
        "num_features",
        "num_examples",
    }
    assert report["l0"] == 1.0 and report["class_consistency"] == 1.0 and report["dead_fraction"] == 0.0
    assert all(isinstance(v, float) for v in report.values())


# ---------------------------------------------------------------------------------------------
# accuracy / F1 through the offline metric scripts
# ---------------------------------------------------------------------------------------------
def test_metric_scripts_load_offline_by_path_in_process(monkeypatch):
    import socket

    import evaluate
    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    accuracy = evaluate.load(str(METRIC_SCRIPTS_DIR / "accuracy.py"), keep_in_memory=True)
    f1 = evaluate.load(str(METRIC_SCRIPTS_DIR / "f1.py"), keep_in_memory=True)
    assert accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"] == pytest.approx(2 / 3)
    assert f1.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2])["f1"] == pytest.approx(7 / 9)
    assert f1.compute(predictions=[0, 1], references=[0, 0], average=None)["f1"] == pytest.approx(
        [2 / 3, 0.0]
    )


@pytest.mark.slow
def test_metric_scripts_load_offline_by_path_fresh_process():
    code = (
        "import evaluate, sys; d = sys.argv[1];"
        "a = evaluate.load(d + '/accuracy.py', keep_in_memory=True);"
        "f = evaluate.load(d + '/f1.py', keep_in_memory=True);"
        "print(a.compute(predictions=[0, 1, 1], references=[0, 1, 0])['accuracy'],"
        " f.compute(predictions=[0, 1, 1], references=[0, 1, 0])['f1'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(METRIC_SCRIPTS_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy, f1 = map(float, done.stdout.split()[-2:])
    assert accuracy == pytest.approx(2 / 3) and f1 == pytest.approx(2 / 3)


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 4)), rng.integers(0, 4, 200)
    preds = logits.argmax(1)
    expected = {
        "accuracy": accuracy_score(labels, preds),
        "macro_f1": f1_score(labels, preds, average="macro"),
    }
    via_evaluate = classification_metrics(torch.tensor(logits), labels)
    assert via_evaluate == pytest.approx(expected)
    assert classification_metrics(preds, labels, use_evaluate=False) == pytest.approx(expected)
    assert load_metric_script("accuracy") is load_metric_script("accuracy")  # cached


def test_a_failing_metric_script_raises_instead_of_falling_back(tmp_path, monkeypatch):
    """A broken metric script (here one whose compute raises) must surface: the old code logged a warning and
    returned scikit-learn's numbers, hiding the failure."""
    from hf_monosem.evaluation import classification

    broken = (METRIC_SCRIPTS_DIR / "accuracy.py").read_text()
    broken = re.sub(
        r"def _compute\(self[^)]*\):",
        "def _compute(self, predictions, references, **kwargs):\n"
        "        raise RuntimeError('broken accuracy script')",
        broken,
        count=1,
    )
    assert "broken accuracy script" in broken
    (tmp_path / "accuracy.py").write_text(broken)
    (tmp_path / "f1.py").write_text((METRIC_SCRIPTS_DIR / "f1.py").read_text())
    monkeypatch.setattr(classification, "METRIC_SCRIPTS_DIR", tmp_path)
    classification.load_metric_script.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="broken accuracy script"):
            classification_metrics([[0.1, 0.9], [0.8, 0.2]], [1, 0])
        # scikit-learn only when asked (or when evaluate is not installed)
        assert classification_metrics([[0.1, 0.9], [0.8, 0.2]], [1, 0], use_evaluate=False)["accuracy"] == 1.0
    finally:
        classification.load_metric_script.cache_clear()


def test_compute_metrics_handles_tuple_logits_and_dict():
    feats, labels = _one_hot_code(n_per_class=10, num_classes=3)
    logits = feats.numpy() * 2
    compute = make_compute_metrics()
    full = compute(
        EvalPrediction(predictions=(logits, feats.numpy(), np.zeros((30, 2))), label_ids=labels.numpy())
    )
    assert full["accuracy"] == 1.0 and full["macro_f1"] == 1.0
    assert full["class_consistency"] == 1.0 and full["l0"] == 1.0 and full["dead_fraction"] == 0.0
    only_logits = compute(EvalPrediction(predictions=logits, label_ids=labels.numpy()))
    assert set(only_logits) == {"accuracy", "macro_f1"}
    as_dict = compute(({"logits": logits, "features": feats.numpy()}, labels.numpy()))
    assert as_dict["class_consistency"] == 1.0
    plain = make_compute_metrics(with_monosemanticity=False)
    assert set(plain(EvalPrediction(predictions=(logits, feats.numpy()), label_ids=labels.numpy()))) == {
        "accuracy",
        "macro_f1",
    }


def test_compute_metrics_full_report_with_prefix_and_kept_features():
    from hf_monosem.evaluation import KEEP_FEATURES
    from hf_monosem.training.trainer import NON_PREDICTION_KEYS

    assert "features" not in KEEP_FEATURES and set(KEEP_FEATURES) | {"features"} == set(NON_PREDICTION_KEYS)
    feats, labels = _one_hot_code(n_per_class=10, num_classes=3)
    label_ids = labels.numpy().copy()
    label_ids[0] = -100  # ignore index: dropped from every metric
    full = make_compute_metrics(full_report=True, prefix="features_")(
        EvalPrediction(predictions=(feats.numpy(), feats.numpy()), label_ids=label_ids)
    )
    expected = monosemanticity_report(feats[1:], labels[1:])
    assert {k[len("features_") :]: v for k, v in full.items() if k.startswith("features_")} == expected
    assert full["accuracy"] == 1.0 and full["features_num_examples"] == 29.0


class _TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None):
        x = pixel_values.flatten(1) if pixel_values is not None else input_ids.float()[:, :4]
        pooled = x
        return types.SimpleNamespace(features=torch.relu(self.proj(pooled)), pooled=pooled, logits=None)


def test_extract_features_batches_in_order_and_restores_mode():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(13, 1, 2, 2)).astype(np.float32)
    ds = Dataset.from_dict({"pixel_values": pixels.tolist(), "label": list(range(13)), "name": ["a"] * 13})
    model = _TinyModel().train()
    feats, pooled, labels = extract_features(model, ds, batch_size=4, progress=False)
    assert model.training
    assert feats.shape == (13, 6) and pooled.shape == (13, 4) and labels.tolist() == list(range(13))
    with torch.no_grad():
        expected = torch.relu(model.proj(torch.tensor(pixels).flatten(1)))
    assert torch.allclose(feats, expected, atol=1e-6)
    with pytest.raises(ValueError, match="'input_ids'"):
        extract_features(model, ds, columns=["input_ids"], progress=False)
    model.proj.eval()  # a submodule in eval inside a training model keeps its own mode
    extract_features(model, ds, batch_size=4, progress=False)
    assert model.training and not model.proj.training


def test_extract_features_pads_text_with_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sat"]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    texts = Dataset.from_dict({"text": ["a cat sat", "dog", "a dog sat a cat"], "label": [0, 1, 0]})
    encoded = texts.map(lambda batch: tokenizer(batch["text"]), batched=True)

    class LengthModel(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None):
            return types.SimpleNamespace(features=attention_mask.sum(1, keepdim=True).float())

    feats, pooled, labels = extract_features(
        LengthModel(), encoded, batch_size=2, tokenizer=tokenizer, progress=False
    )
    lengths = [len(ids) for ids in encoded["input_ids"][:]]
    assert feats.flatten().tolist() == lengths and pooled is None and labels.tolist() == [0, 1, 0]


# ---------------------------------------------------------------------------------------------
# robustness summaries
# ---------------------------------------------------------------------------------------------
def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for level in (0.0, 0.4, 0.8):
        for method, drop in (("linear", 0.5), ("nonneg", 0.2), ("sae", 0.49)):
            for seed in range(3):
                accuracy = 0.9 - drop * level + rng.normal(scale=0.01)
                records.append(
                    {
                        "method": method,
                        "scenario": "label_noise",
                        "level": level,
                        "seed": seed,
                        "accuracy": accuracy,
                        "class_consistency": 0.5,
                    }
                )
    records.append({"method": "linear", "scenario": "clean", "seed": 0, "accuracy": 0.9})
    return records


def test_summarize_robustness_mean_std():
    records = _records()
    df = summarize_robustness(records)
    assert list(df.columns) == ["scenario", "level", "method", "metric", "mean", "std", "n"]
    row = df[
        (df.scenario == "label_noise")
        & (df.level == 0.4)
        & (df.method == "nonneg")
        & (df.metric == "accuracy")
    ]
    values = [r["accuracy"] for r in records if r["method"] == "nonneg" and r["level"] == 0.4]
    assert row["mean"].item() == pytest.approx(np.mean(values)) and row["std"].item() == pytest.approx(
        np.std(values, ddof=1)
    )
    assert row["n"].item() == 3
    clean = df[df.scenario == "clean"]
    assert clean["level"].item() == 0.0 and np.isnan(clean["std"].item())


def test_markdown_table_marks_significant_gaps():
    table = robustness_markdown_table(summarize_robustness(_records()), poly="linear", mono=("nonneg", "sae"))
    lines = table.splitlines()
    assert lines[0] == "| scenario | level | linear | nonneg | Δ nonneg | sae | Δ sae |"
    row = next(line for line in lines if line.startswith("| label_noise | 0.8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "±" in cells[2]
    assert cells[4].startswith("**+") and cells[4].endswith("**")  # nonneg: +0.24, far beyond noise
    assert not cells[6].startswith("**")  # sae: +0.008, within noise
    clean_row = next(line for line in lines if line.startswith("| clean |"))
    assert "—" in clean_row  # no mono run for the clean scenario
    with pytest.raises(ValueError, match="'ncl'"):
        robustness_markdown_table(_records(), mono="ncl")
    with pytest.raises(ValueError, match="'f1'"):
        robustness_markdown_table(_records(), metric="f1")


def test_plot_robustness_writes_files(tmp_path):
    paths = plot_robustness(summarize_robustness(_records()), tmp_path / "plots")
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"robustness_clean_accuracy.png", "robustness_label_noise_accuracy.png"}
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert pd.DataFrame(numbers).shape[0] == len(summarize_robustness(_records()))


# ---------------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------------
BAD_CALLS = [
    ("(3,)", lambda: activation_sparsity(np.zeros(3))),
    ("threshold=-1", lambda: dead_features(np.zeros((2, 2)), threshold=-1)),
    ("top_m=0", lambda: class_consistency(np.zeros((4, 2)), [0, 1, 0, 1], top_m=0)),
    ("3 entries", lambda: class_consistency(np.zeros((4, 2)), [0, 1, 0])),
    ("non-integer", lambda: class_consistency(np.zeros((2, 2)), [0.5, 1.0])),
    ("bins=1", lambda: feature_label_mutual_information(np.zeros((4, 2)), [0, 1, 0, 1], bins=1)),
    ("reduction='sum'", lambda: class_consistency(np.zeros((4, 2)), [0, 1, 0, 1], reduction="sum")),
    ("'precision'", lambda: load_metric_script("precision")),
    ("(2, 2, 2)", lambda: classification_metrics(np.zeros((2, 2, 2)), [0, 1])),
    ("'method'", lambda: summarize_robustness([{"scenario": "x", "accuracy": 1.0}])),
    (
        "level='high'",
        lambda: summarize_robustness([{"method": "m", "scenario": "x", "level": "high", "accuracy": 1.0}]),
    ),
    ("0 rows", lambda: extract_features(_TinyModel(), [], progress=False)),
]


@pytest.mark.parametrize(("expected", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_value_error_naming_value(expected, call):
    with pytest.raises(ValueError, match=re.escape(expected)):
        call()


def test_old_import_paths_keep_every_name():
    import warnings

    import hf_monosem.evaluation.metrics as old

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import hf_monosem.metrics as deprecated
    for name in old.__all__:
        assert getattr(deprecated, name) is getattr(old, name)
    assert old.METRIC_SCRIPTS_DIR.is_dir() and {"accuracy.py", "f1.py"} <= {
        p.name for p in old.METRIC_SCRIPTS_DIR.iterdir()
    }
    assert callable(old._features) and callable(deprecated._labels)  # private helpers of the old module
