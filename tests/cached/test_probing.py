import copy

import pytest
import torch
from tiny_models import tiny_bert_config, tiny_resnet_config
from training_toys import toy_images, toy_text, training_args
from transformers import BertModel

from hf_monosem import (
    CachedFeatureDataset,
    FeatureProbe,
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticTrainer,
    extract_pooled_features,
    probe_on_features,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def frozen_classifier(kind="sae"):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_resnet_config(),
        feature_layer=kind,
        feature_dim=32,
        num_labels=3,
        freeze_backbone=True,
    )
    return MonoSemanticForImageClassification(cfg)


@pytest.mark.parametrize("kind", ["sae", "nonneg"])
def test_probing_cached_features_equals_training_the_frozen_model(tmp_path, kind):
    model = frozen_classifier(kind)
    layer, classifier = copy.deepcopy(model.feature_layer), copy.deepcopy(model.classifier)
    train = toy_images(n=40)
    pooled = extract_pooled_features(model, train, batch_size=16)
    hyper = dict(
        num_train_epochs=2, learning_rate=1e-2, weight_decay=0.01, per_device_train_batch_size=8, seed=0
    )

    # route 1: the full model, backbone frozen, trained by MonoSemanticTrainer on raw images
    full = MonoSemanticTrainer(
        model=model, args=training_args(tmp_path / "full", **hyper), train_dataset=train
    )
    full.train()

    # route 2: the same trainable tail on cached pooled features (no backbone passes)
    probe_classifier, metrics = probe_on_features(
        pooled,
        train["label"],
        feature_layer=layer,
        classifier=classifier,
        epochs=2,
        lr=1e-2,
        weight_decay=0.01,
        batch_size=8,
        seed=0,
        use_cpu=True,
    )
    assert torch.allclose(probe_classifier.weight, model.classifier.weight, atol=1e-5)
    assert torch.allclose(probe_classifier.bias, model.classifier.bias, atol=1e-5)
    for (name, a), b in zip(layer.named_parameters(), model.feature_layer.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert metrics["train_loss"] == pytest.approx(full.state.log_history[-1]["train_loss"], rel=1e-4)


def test_probe_on_features_learns_and_reports_metrics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    x_eval = torch.randn(64, 4, generator=g)
    y_eval = (x_eval[:, 0] + x_eval[:, 1] > 0).long()
    classifier, metrics = probe_on_features(
        x,
        y,
        epochs=10,
        lr=2e-2,
        batch_size=32,
        seed=0,
        eval_features=x_eval,
        eval_labels=y_eval,
        use_cpu=True,
    )
    assert isinstance(classifier, torch.nn.Linear) and classifier.weight.shape == (2, 4)
    assert metrics["train_accuracy"] > 0.9 and metrics["eval_accuracy"] > 0.85
    assert set(metrics) == {
        "train_loss",
        "train_accuracy",
        "train_active_fraction",
        "eval_loss",
        "eval_accuracy",
        "eval_active_fraction",
    }
    again, metrics_again = probe_on_features(
        x,
        y,
        epochs=10,
        lr=2e-2,
        batch_size=32,
        seed=0,
        eval_features=x_eval,
        eval_labels=y_eval,
        use_cpu=True,
    )
    assert metrics_again == metrics and torch.equal(again.weight, classifier.weight)
    # a robust loss is accepted like in MonoSemanticTrainer
    _, gce = probe_on_features(x, y, epochs=2, lr=5e-2, batch_size=32, loss_type="gce", use_cpu=True)
    assert gce["train_loss"] < 1.0


def test_feature_probe_from_model_and_dataset():
    model = frozen_classifier("topk")
    probe = FeatureProbe.from_model(model)
    assert probe.feature_layer is not model.feature_layer and probe.classifier is not model.classifier
    pooled = torch.randn(4, 16)
    out = probe(pooled, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and set(out.aux_losses) == {"reconstruction_loss"}
    assert torch.allclose(
        out.loss,
        torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 0]))
        + model.feature_layer.weighted_aux_loss(out.aux_losses),
    )
    dataset = CachedFeatureDataset(pooled, [0, 1, 2, 0])
    assert (
        len(dataset) == 4
        and set(dataset[1]) == {"features", "labels"}
        and dataset[1]["labels"].dtype == torch.long
    )
    with pytest.raises(ValueError, match="3 labels"):
        CachedFeatureDataset(pooled, [0, 1, 2])


def test_extract_pooled_features_caches_by_model_and_dataset(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config())
    ds = toy_text(n=12)
    first = extract_pooled_features(bert, ds, batch_size=5, cache_dir=tmp_path)
    assert first.shape == (12, 32) and first.dtype == torch.float32

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached matrix must not be recomputed")

    hook = bert.register_forward_pre_hook(no_forward)  # any forward of the backbone fails the test
    try:
        assert torch.equal(extract_pooled_features(bert, ds, batch_size=7, cache_dir=tmp_path), first)
    finally:
        hook.remove()
    # batched extraction gives each example's own pooled vector (padding masked out)
    assert bert.training  # the caller's train/eval mode is left as it was
    batch = ds.with_format("torch")[:3]
    bert.eval()
    with torch.no_grad():
        one = bert(
            input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1]
        ).last_hidden_state[:, 0]
    assert torch.allclose(first[:1], one, atol=1e-5)
    # other data, other pooling, other weights: other cache entries
    extract_pooled_features(bert, ds.select(range(6)), cache_dir=tmp_path)
    extract_pooled_features(bert, ds, cache_dir=tmp_path, pooling="mean")
    with torch.no_grad():
        bert.embeddings.word_embeddings.weight[1, 0] += 1.0  # token 1 starts every row
    changed = extract_pooled_features(bert, ds, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    assert not torch.equal(changed, first)
    # a MonoSemantic model's feature-layer output can be cached too, for probing on it
    model = frozen_classifier("nonneg")
    feats = extract_pooled_features(model, toy_images(n=6), output="features", cache_dir=tmp_path)
    assert feats.shape == (6, 32) and (feats >= 0).all()
    with pytest.raises(ValueError, match="output='features' needs a MonoSemantic model"):
        extract_pooled_features(bert, ds, output="features")
    with pytest.raises(ValueError, match="output='logits'"):
        extract_pooled_features(model, ds, output="logits")


def test_the_inference_loop_builds_no_autograd_graph():
    """collect_outputs runs under no_grad (a graph per batch would hold every activation of the backbone
    in memory for nothing: the outputs are detached anyway); its decorator once slid onto a helper."""
    from hf_monosem.cached import collect_outputs

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, pixel_values):
            seen.append(torch.is_grad_enabled())
            return {"features": self.linear(pixel_values)}

    rows = [{"pixel_values": torch.ones(2), "label": 0} for _ in range(3)]
    out = collect_outputs(Probe(), rows, batch_size=2, outputs=("features",))
    assert out["features"].shape == (3, 2) and seen == [False, False]
