"""ContrastiveTrainer resume: a run resumed from a checkpoint draws the same views as the uninterrupted
run and ends with the same weights; the resumed process really starts at the checkpoint's step."""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import pytest
import torch
from datasets import Dataset
from tiny_models import tiny_resnet_config
from transformers import TrainingArguments

from hf_monosem import ContrastiveTrainer, ImageViews, MonoSemanticConfig, MonoSemanticModel
from hf_monosem.training.contrastive import VIEW_GENERATOR_FILE

STEPS, SAVE_EVERY = 8, 4


class CountingTrainer(ContrastiveTrainer):
    """Counts training steps this process computed (a silent restart would compute all of them)."""

    steps_computed = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.steps_computed += 1
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _trainer(output_dir: str) -> CountingTrainer:
    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_resnet_config(), feature_layer="nonneg", feature_dim=16)
    )
    images = Dataset.from_dict(
        {"pixel_values": torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1)).tolist()}
    ).with_format("torch")
    args = TrainingArguments(
        output_dir,
        max_steps=STEPS,
        save_steps=SAVE_EVERY,
        per_device_train_batch_size=4,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=3,
    )
    return CountingTrainer(
        model=model, args=args, train_dataset=images, image_views=ImageViews(size=(12, 12))
    )


def _train(trainer: CountingTrainer, resume: str | None = None) -> dict[str, torch.Tensor]:
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train(resume_from_checkpoint=resume)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("full"))
    trainer = _trainer(folder)
    return folder, _train(trainer), trainer.state.log_history


def test_checkpoint_holds_the_view_generator_state(uninterrupted):
    folder, _, _ = uninterrupted
    assert os.path.isfile(
        os.path.join(folder, f"checkpoint-{SAVE_EVERY}", VIEW_GENERATOR_FILE.format(process=0))
    )


def test_resumed_pretraining_equals_uninterrupted_and_skips_the_done_steps(uninterrupted, tmp_path):
    folder, weights, history = uninterrupted
    resumed_dir = str(tmp_path / "resumed")
    shutil.copytree(
        os.path.join(folder, f"checkpoint-{SAVE_EVERY}"),
        os.path.join(resumed_dir, f"checkpoint-{SAVE_EVERY}"),
    )
    trainer = _trainer(resumed_dir)
    resumed = _train(trainer, resume=True)
    # the resumed process computed only the steps after the checkpoint (a restart would compute all 8)
    assert trainer.steps_computed == STEPS - SAVE_EVERY
    assert trainer.state.global_step == STEPS
    # the same views, hence the same losses after the checkpoint and the same final weights
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    resumed_losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert [resumed_losses[s] for s in range(SAVE_EVERY + 1, STEPS + 1)] == pytest.approx(
        [losses[s] for s in range(SAVE_EVERY + 1, STEPS + 1)], rel=1e-5, abs=1e-6
    )
    for name, value in weights.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resuming_a_checkpoint_without_view_state_warns(uninterrupted, tmp_path):
    folder, _, _ = uninterrupted
    old = tmp_path / f"checkpoint-{SAVE_EVERY}"
    shutil.copytree(os.path.join(folder, f"checkpoint-{SAVE_EVERY}"), old)
    os.remove(old / VIEW_GENERATOR_FILE.format(process=0))
    trainer = _trainer(str(tmp_path))
    with pytest.warns(UserWarning, match="no view_generator_state_0.pt"):
        _train(trainer, resume=str(old))
