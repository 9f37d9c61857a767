"""``freeze_feature_layer``: the backbone and head train *through* a fixed feature layer (the paper's "NCE"
fine-tuning of a pretrained projector), with the real transformers Trainer; the flag survives a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from tiny_models import make_inputs, tiny_bert_config
from torch import nn
from transformers import AutoModelForSequenceClassification, TrainingArguments

from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, MonoSemanticTrainer

KINDS = ["linear", "nonneg", "topk"]


def build(kind: str, **kwargs) -> MonoSemanticForSequenceClassification:
    # linear / nonneg as the paper's SimCLR / NCL projector: a two-layer MLP (with its ReLU) before the head
    extra = {"projector_hidden_dim": 48} if kind in ("linear", "nonneg") else {}
    config = MonoSemanticConfig(
        backbone_config=tiny_bert_config(),
        feature_layer=kind,
        feature_dim=64,
        num_labels=3,
        **extra,
        **kwargs,
    )
    torch.manual_seed(0)
    return MonoSemanticForSequenceClassification(config)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(p.detach(), before[name])}


def one_trainer_step(model, tmp_path) -> MonoSemanticTrainer:
    g = torch.Generator().manual_seed(0)
    train = Dataset.from_dict(
        {"input_ids": torch.randint(1, 100, (8, 7), generator=g).tolist(), "label": [0, 1, 2, 0] * 2}
    )
    args = TrainingArguments(
        str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    return trainer


@pytest.mark.parametrize("kind", KINDS)
def test_one_trainer_step_keeps_the_feature_layer_and_trains_backbone_and_head(kind, tmp_path):
    model = build(kind, freeze_feature_layer=True)
    assert not model.config.freeze_backbone
    layer, backbone, head = (
        snapshot(model.feature_layer),
        snapshot(model.backbone),
        snapshot(model.classifier),
    )
    trainer = one_trainer_step(model, tmp_path)
    # the Trainer's optimizer holds no feature-layer parameter, and the layer's weights are bit-identical
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.feature_layer.parameters()}
    assert changed(layer, model.feature_layer) == set()
    # ... while the backbone (trained through the frozen layer) and the classifier moved
    assert changed(head, model.classifier) == {"weight", "bias"}
    moved = changed(backbone, model.backbone)
    assert (
        "encoder.layer.0.attention.self.query.weight" in moved
        and "embeddings.word_embeddings.weight" in moved
    )
    assert len(moved) > len(backbone) // 2


@pytest.mark.parametrize("kind", KINDS)
def test_without_the_flag_the_same_step_moves_the_feature_layer(kind, tmp_path):
    """The control: the step above would have changed the layer (so its being unchanged is the flag's
    doing)."""
    model = build(kind)
    assert all(p.requires_grad for p in model.feature_layer.parameters())
    layer = snapshot(model.feature_layer)
    one_trainer_step(model, tmp_path)
    assert changed(layer, model.feature_layer)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_backbone_through_the_frozen_layer(kind):
    model = build(kind, freeze_feature_layer=True)
    model.train()
    assert model.feature_layer.training and model.backbone.training  # train() leaves both in train mode
    out = model(**make_inputs("text"), labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.feature_layer.parameters())
    assert model.classifier.weight.grad.abs().sum() > 0
    query = model.backbone.encoder.layer[0].attention.self.query.weight
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert (
        sum(int(p.grad is not None and bool(p.grad.abs().sum() > 0)) for p in model.backbone.parameters()) > 5
    )


def test_feature_layers_have_nothing_that_needs_eval_mode():
    """No dropout, no BatchNorm in any feature layer: a frozen layer computes the same in train and eval
    mode."""
    for kind in ("linear", "nonneg", "sae", "topk"):
        model = build(kind, freeze_feature_layer=True)
        kinds = {type(m) for m in model.feature_layer.modules()}
        assert not any(
            issubclass(k, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)) for k in kinds
        )
        pooled = torch.randn(4, 32)
        train_out = model.feature_layer.train()(pooled)[0]
        torch.testing.assert_close(model.feature_layer.eval()(pooled)[0], train_out, rtol=0, atol=0)


def test_train_eval_toggles_keep_the_layer_frozen():
    model = build("nonneg", freeze_feature_layer=True)
    for mode in (True, False, True):
        model.train(mode)
        assert not any(p.requires_grad for p in model.feature_layer.parameters())
        assert all(p.requires_grad for p in model.backbone.parameters())
        assert all(p.requires_grad for p in model.classifier.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_the_flag_round_trips_through_save_and_from_pretrained(kind, tmp_path):
    model = build(kind, freeze_feature_layer=True)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["freeze_feature_layer"] is True
    assert MonoSemanticConfig.from_pretrained(tmp_path).freeze_feature_layer is True
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded) is MonoSemanticForSequenceClassification and loaded.config.freeze_feature_layer
    assert not any(p.requires_grad for p in loaded.feature_layer.parameters())
    assert all(p.requires_grad for p in loaded.backbone.parameters())
    assert all(p.requires_grad for p in loaded.classifier.parameters())
    for name, p in loaded.feature_layer.named_parameters():
        assert torch.equal(p, dict(model.feature_layer.named_parameters())[name])


def test_the_default_is_off_and_old_configs_load_with_it_off(tmp_path):
    model = build("nonneg")
    assert model.config.freeze_feature_layer is False
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["freeze_feature_layer"]  # a checkpoint written before the flag existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.freeze_feature_layer is False
    assert all(p.requires_grad for p in loaded.feature_layer.parameters())


def test_with_freeze_backbone_too_only_the_head_trains(tmp_path):
    model = build("nonneg", freeze_feature_layer=True, freeze_backbone=True)
    layer, backbone, head = (
        snapshot(model.feature_layer),
        snapshot(model.backbone),
        snapshot(model.classifier),
    )
    one_trainer_step(model, tmp_path)
    assert changed(layer, model.feature_layer) == set() and changed(backbone, model.backbone) == set()
    assert changed(head, model.classifier) == {"weight", "bias"}


def test_from_backbone_passes_the_flag_on():
    from transformers import BertModel

    model = MonoSemanticForSequenceClassification.from_backbone(
        BertModel(tiny_bert_config()), feature_dim=64, num_labels=2, freeze_feature_layer=True
    )
    assert not any(p.requires_grad for p in model.feature_layer.parameters())
    assert all(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_non_bool_flag_is_refused_naming_the_value(value):
    with pytest.raises(
        ValueError, match=rf"freeze_feature_layer={value!r} is not valid; allowed: True or False"
    ):
        MonoSemanticConfig(backbone_config=tiny_bert_config(), freeze_feature_layer=value)


def test_classifier_input_scale_multiplies_the_head_input_and_round_trips(tmp_path):
    # the paper route's scale: logits of a scaled model = head(scale * features), features unchanged
    plain = build("nonneg", freeze_feature_layer=True)
    scaled = build("nonneg", freeze_feature_layer=True, classifier_input_scale=7.5)
    scaled.load_state_dict(plain.state_dict())
    inputs = make_inputs("text")
    plain.eval(), scaled.eval()
    with torch.no_grad():
        features = plain.monosemantic(**inputs).features
        expected = scaled.classifier(7.5 * features)
        torch.testing.assert_close(scaled(**inputs).logits, expected)
        assert not torch.allclose(plain(**inputs).logits, expected)
    scaled.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.classifier_input_scale == 7.5
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, expected)
