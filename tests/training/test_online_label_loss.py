"""The label leak as a named variant (``ContrastiveTrainer(online_label_loss=True)``): the authors'
non-detached online classifier adds label cross-entropy to the contrastive loss, so labels reach the
backbone's gradient; without the flag, pretraining is label-free and the labels change nothing."""

from __future__ import annotations

import contextlib
import io
import os

import pytest
import torch
from datasets import Dataset
from tiny_models import tiny_resnet_config
from transformers import TrainingArguments

from hf_monosem import ContrastiveTrainer, ImageViews, MonoSemanticConfig, MonoSemanticModel
from hf_monosem.training.contrastive import ONLINE_CLASSIFIER_FILE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IMAGES = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def _trainer(output_dir, online_label_loss: bool, labels=None, **extra) -> ContrastiveTrainer:
    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_resnet_config(), feature_layer="nonneg", feature_dim=16)
    )
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]) if labels is None else labels
    data = Dataset.from_dict({"pixel_values": IMAGES.tolist(), "label": labels.tolist()}).with_format("torch")
    args = TrainingArguments(
        output_dir, max_steps=2, save_steps=2, per_device_train_batch_size=8, logging_steps=1,
        learning_rate=1e-2, report_to=[], use_cpu=True, seed=3,
    )  # fmt: skip
    return ContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=data,
        image_views=ImageViews(size=(12, 12)),
        online_label_loss=online_label_loss,
        **{"num_labels": 3 if online_label_loss else None, **extra},
    )


def _backbone_grad(trainer: ContrastiveTrainer, labels: torch.Tensor) -> torch.Tensor:
    """The backbone's gradient of the training loss on one batch of IMAGES with these labels."""
    model = trainer.model.train()
    model.zero_grad()
    batch = trainer.data_collator(
        [{"pixel_values": x, "label": y} for x, y in zip(IMAGES, labels)]
    )  # the trainer's own collator: it keeps (or drops) the labels
    trainer._view_generator.manual_seed(0)  # the same views for every call
    trainer.compute_loss(model, batch).backward()
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None])


@pytest.mark.parametrize("online_label_loss", [True, False])
def test_label_cross_entropy_reaches_the_backbone_only_with_the_flag(tmp_path, online_label_loss):
    trainer = _trainer(tmp_path, online_label_loss)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    grads = [_backbone_grad(trainer, y) for y in (labels, labels.flip(0), (labels + 1) % 3)]
    assert grads[0].abs().sum() > 0
    if online_label_loss:  # other labels, another gradient: the label term is not detached
        assert not torch.allclose(grads[0], grads[1]) and not torch.allclose(grads[0], grads[2])
    else:  # label-free: the labels are dropped before the loss
        assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_the_online_classifier_trains_logs_and_is_saved_with_the_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, True)
    before = trainer.online_classifier.weight.detach().clone()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    assert not torch.equal(before, trainer.online_classifier.weight)  # it is in the optimiser
    logged = trainer.state.log_history[0]
    assert "online_class_loss" in logged and "online_class_accuracy" in logged
    saved = torch.load(os.path.join(tmp_path, "checkpoint-2", ONLINE_CLASSIFIER_FILE), weights_only=True)
    torch.testing.assert_close(saved["weight"], trainer.online_classifier.weight.detach())
    assert not any("online" in k for k in trainer.model.state_dict())  # not part of the model


def test_the_flag_needs_num_labels_and_labelled_batches(tmp_path):
    with pytest.raises(ValueError, match="num_labels=None is not valid with online_label_loss=True"):
        _trainer(tmp_path, True, num_labels=None)
    trainer = _trainer(tmp_path, True)
    with pytest.raises(ValueError, match="needs labels in every batch"):
        trainer.compute_loss(trainer.model, {"pixel_values": IMAGES})
