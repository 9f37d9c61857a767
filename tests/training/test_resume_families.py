"""Resume is exact for every documented backbone family, on the installed transformers.

transformers 5.25 renamed ViT's modules (``layers.N.attention.q_proj``) but ``save_pretrained`` still
writes the legacy keys (``encoder.layer.N.attention.attention.query``); the Trainer's checkpoint reload
does not convert them, so a resumed ViT run went on from its *current* backbone weights with only a
logged warning (3.96e-2 from the uninterrupted run). ``MonoSemanticTrainer`` now reloads checkpoints the
way ``from_pretrained`` does; a checkpoint that does not fit the model stops with ``CheckpointLoadError``.
Each family trains 8 steps (checkpoint at 4) and is resumed from step 4 in a fresh folder.
"""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest
import torch
from datasets import Dataset
from tiny_models import (
    tiny_bert_config,
    tiny_convnext_config,
    tiny_llama_config,
    tiny_resnet_config,
    tiny_vit_config,
)
from training_toys import toy_images, toy_text, training_args

from hf_monosem import (
    ContrastiveTrainer,
    ImageViews,
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
)
from hf_monosem.training.checkpoints import CheckpointLoadError

STEPS, SAVE_EVERY = 8, 4


def _roberta():
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        pad_token_id=0, max_position_embeddings=40,
    )  # fmt: skip


def _qwen2():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip


# family -> (backbone config, data): text (ids < 100) or images (channels, size)
FAMILIES = {
    "bert": (tiny_bert_config, "text"),
    "roberta": (_roberta, "text"),
    "vit": (tiny_vit_config, (3, 16)),
    "resnet": (tiny_resnet_config, (1, 16)),
    "convnext": (lambda: tiny_convnext_config(image_size=16), (3, 16)),
    "llama": (tiny_llama_config, "text"),
    "qwen2": (_qwen2, "text"),
}


def _classifier_trainer(family: str, output_dir, feature_dim: int = 16) -> MonoSemanticTrainer:
    make_config, data = FAMILIES[family]
    torch.manual_seed(0)
    config = MonoSemanticConfig(
        backbone_config=make_config(), feature_layer="sae", feature_dim=feature_dim, num_labels=2
    )
    if data == "text":
        model, train = MonoSemanticForSequenceClassification(config), toy_text(n=32)
    else:
        channels, size = data
        model = MonoSemanticForImageClassification(config)
        train = toy_images(n=32, num_classes=2, channels=channels, size=size)
    args = training_args(
        output_dir, max_steps=STEPS, save_strategy="steps", save_steps=SAVE_EVERY,
        per_device_train_batch_size=4, logging_steps=1, seed=3,
    )  # fmt: skip
    return MonoSemanticTrainer(model=model, args=args, train_dataset=train)


def _run(trainer, resume=None) -> dict[str, torch.Tensor]:
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train(resume_from_checkpoint=resume)
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resumed_run_equals_the_uninterrupted_run_for_every_family(family, tmp_path):
    full = _run(_classifier_trainer(family, tmp_path / "full"))
    shutil.copytree(
        tmp_path / "full" / f"checkpoint-{SAVE_EVERY}", tmp_path / "resumed" / f"checkpoint-{SAVE_EVERY}"
    )
    resumed = _run(_classifier_trainer(family, tmp_path / "resumed"), resume=True)
    assert _max_difference(full, resumed) == 0.0


def test_contrastive_pretraining_of_a_vit_resumes_exactly(tmp_path):
    def trainer(output_dir):
        torch.manual_seed(0)
        model = MonoSemanticModel(
            MonoSemanticConfig(backbone_config=tiny_vit_config(), feature_layer="nonneg", feature_dim=16)
        )
        images = Dataset.from_dict(
            {"pixel_values": torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)).tolist()}
        ).with_format("torch")
        args = training_args(
            output_dir, max_steps=STEPS, save_strategy="steps", save_steps=SAVE_EVERY,
            per_device_train_batch_size=4, logging_steps=1, seed=3,
        )  # fmt: skip
        return ContrastiveTrainer(
            model=model, args=args, train_dataset=images, image_views=ImageViews(size=(16, 16))
        )

    full = _run(trainer(tmp_path / "full"))
    shutil.copytree(
        tmp_path / "full" / f"checkpoint-{SAVE_EVERY}", tmp_path / "resumed" / f"checkpoint-{SAVE_EVERY}"
    )
    assert _max_difference(full, _run(trainer(tmp_path / "resumed"), resume=True)) == 0.0


def test_a_checkpoint_that_does_not_fit_the_model_stops_the_resume(tmp_path):
    _run(_classifier_trainer("bert", tmp_path / "full"))
    shutil.copytree(
        tmp_path / "full" / f"checkpoint-{SAVE_EVERY}", tmp_path / "other" / f"checkpoint-{SAVE_EVERY}"
    )
    wider = _classifier_trainer("bert", tmp_path / "other", feature_dim=24)  # not the checkpoint's 16
    with pytest.raises(
        CheckpointLoadError, match=r"do not fit the model being resumed \(mismatched: .*feature_layer"
    ):
        _run(wider, resume=True)
    # another model type entirely (the Trainer only warned and went on with random weights)
    _run(_classifier_trainer("roberta", tmp_path / "roberta"))
    shutil.copytree(
        tmp_path / "roberta" / f"checkpoint-{SAVE_EVERY}", tmp_path / "mixed" / f"checkpoint-{SAVE_EVERY}"
    )
    with pytest.raises(CheckpointLoadError, match="position_embeddings"):
        _run(_classifier_trainer("bert", tmp_path / "mixed"), resume=True)


def test_a_checkpoint_whose_trainer_state_was_cut_off_is_not_resumed_from(tmp_path):
    from hf_monosem.training.checkpoints import last_complete_checkpoint, write_json

    for step in (4, 8):
        write_json(tmp_path / f"checkpoint-{step}" / "trainer_state.json", {"global_step": step})
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text(
        '{"global_step": 8, "log_hi'
    )  # killed mid-write
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("")  # emptied
    assert last_complete_checkpoint(tmp_path) is None
