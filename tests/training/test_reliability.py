"""MonoSemanticTrainer refuses bad input before the first step, and stops at the first NaN loss.

Every case here is a row of docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_models import tiny_bert_config, tiny_resnet_config
from training_toys import comparable, toy_images, toy_text, training_args
from transformers import TrainerCallback

from hf_monosem import (
    ContrastiveTrainer,
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def classifier(kind="sae", num_labels=3):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_resnet_config(), feature_layer=kind, feature_dim=32, num_labels=num_labels
    )
    return MonoSemanticForImageClassification(cfg)


def trainer_for(tmp_path, train, eval_dataset=None, **kwargs):
    args = training_args(tmp_path, num_train_epochs=1, **kwargs.pop("args", {}))
    return MonoSemanticTrainer(
        model=kwargs.pop("model", None) or classifier(), args=args, train_dataset=train,
        eval_dataset=eval_dataset, **kwargs,
    )  # fmt: skip


def relabel(dataset, labels):
    return dataset.remove_columns("label").add_column("label", labels)


# ---- datasets are checked at the start of train() -------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: relabel(toy_images(n=12), [0, 1, 2] * 3 + [0, 1, 7]),
            "train labels must be class ids in [0, 2]",
        ),
        (lambda: relabel(toy_images(n=12), [0.5] * 12), "must be integer class ids"),
        (
            lambda: toy_images(n=12).rename_column("label", "target"),
            "label column 'label' not in the train dataset",
        ),
        (lambda: toy_images(n=12, channels=3), "3 channel(s)"),
        (lambda: toy_images(n=12).select([]), "empty"),
    ],
    ids=["label-out-of-range", "float-labels", "no-label-column", "wrong-channels", "empty"],
)
def test_train_refuses_a_bad_train_dataset_before_any_step(tmp_path, make, message):
    trainer = trainer_for(tmp_path, make())
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert message in str(err.value)
    assert trainer.state.global_step == 0 and not any(tmp_path.iterdir())


def test_train_checks_the_eval_datasets_too(tmp_path):
    bad = relabel(toy_images(n=8, seed=1), [0, 1, 2, 3, 0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"^eval labels must be class ids"):
        trainer_for(tmp_path, toy_images(n=12), bad).train()
    with pytest.raises(ValueError, match=r"^eval 'shifted' labels must be class ids"):
        trainer_for(tmp_path, toy_images(n=12), {"clean": toy_images(n=8), "shifted": bad}).train()


def test_nan_pixels_are_found_before_training(tmp_path):
    data = toy_images(n=12).with_format("numpy")[:]
    data["pixel_values"][5, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        trainer_for(tmp_path, Dataset.from_dict(data)).train()


def test_token_ids_beyond_the_vocabulary_are_found_before_training(tmp_path):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(vocab_size=50), feature_dim=16, num_labels=2)
    model = MonoSemanticForSequenceClassification(cfg)
    with pytest.raises(ValueError, match="token id 9[0-9] but the bert backbone has vocab_size=50"):
        trainer_for(tmp_path, toy_text(n=8), model=model).train()  # toy_text draws ids up to 99


def random_flip_transform(batch):
    """A lazily produced column (set_transform) with a random augmentation, as with Hub image datasets."""
    pixels = torch.tensor(np.asarray(batch["image"], dtype=np.float32))
    flip = torch.rand(len(pixels)) < 0.5  # torch's global generator, like torchvision transforms
    pixels[flip] = pixels[flip].flip(-1)
    return {"pixel_values": pixels, "label": batch["label"]}


def lazy_images(n=24, labels=None):
    data = toy_images(n=n).with_format("numpy")[:]
    ds = Dataset.from_dict(
        {"image": data["pixel_values"], "label": labels if labels is not None else data["label"]}
    )
    ds.set_transform(random_flip_transform)
    return ds


def test_lazy_datasets_are_checked_on_their_first_batch_without_shifting_the_run(tmp_path):
    args = {"remove_unused_columns": False, "logging_steps": 1}
    with pytest.raises(ValueError, match="train labels must be class ids in \\[0, 2\\].*found 9"):
        trainer_for(tmp_path / "bad", lazy_images(labels=[9] + [0] * 23), args=args).train()
    # the check reads rows through the random transform under a forked RNG: the run is unchanged
    checked = trainer_for(tmp_path / "a", lazy_images(), args=args)
    checked.train()
    unchecked = trainer_for(tmp_path / "b", lazy_images(), args=args, validate_datasets=False)
    unchecked.train()
    assert comparable(checked.state.log_history) == comparable(unchecked.state.log_history)


def test_raw_text_with_a_tokenising_collator_is_checked_on_its_first_batch(tmp_path):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_dim=16, num_labels=2)

    def collate(rows):  # "tokenises" each text into ids from its characters
        ids = torch.tensor([[1] + [10 + ord(c) % 80 for c in r["text"][:6].ljust(6)] for r in rows])
        return {"input_ids": ids, "labels": torch.tensor([r["label"] for r in rows])}

    texts = Dataset.from_dict({"text": ["good film", "bad film", "fine", "awful"], "label": [1, 0, 1, 5]})
    trainer = trainer_for(
        tmp_path, texts, model=MonoSemanticForSequenceClassification(cfg), data_collator=collate,
        args={"remove_unused_columns": False},
    )  # fmt: skip
    with pytest.raises(ValueError, match="found 5"):
        trainer.train()


def test_contrastive_and_feature_models_skip_the_label_checks(tmp_path):
    from training_toys import toy_smooth_images

    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_resnet_config(num_channels=3), feature_dim=16)
    )
    trainer = ContrastiveTrainer(
        model=model, args=training_args(tmp_path, max_steps=1), train_dataset=toy_smooth_images(8)
    )
    assert trainer.validate_datasets is False
    trainer.train()


# ---- NaN / inf loss during training ----------------------------------------------------------------


class PoisonAt(TrainerCallback):
    """After optimizer step ``step``, put a NaN into one weight (as a diverging update would)."""

    def __init__(self, step, parameter):
        self.step, self.parameter = step, parameter

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                dict(model.named_parameters())[self.parameter][0, 0] = float("nan")


def test_nan_loss_stops_training_naming_the_step_and_the_term(tmp_path):
    trainer = trainer_for(tmp_path, toy_images(n=48), args={"logging_steps": 1})
    trainer.add_callback(PoisonAt(2, "monosemantic.feature_layer.decoder.weight"))
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    message = str(err.value)
    assert "non-finite loss" in message and "global step 3" in message
    assert "reconstruction_loss=nan" in message and "task_loss" not in message  # the decoder feeds only that
    assert "monosemantic.feature_layer.decoder.weight" in message and "learning rate" in message
    assert trainer.state.global_step == 2


def test_contrastive_training_stops_at_a_nan_loss_too(tmp_path):
    from training_toys import mild_views, toy_smooth_images

    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone_config=tiny_resnet_config(num_channels=3), feature_dim=16)
    )
    trainer = ContrastiveTrainer(
        model=model, args=training_args(tmp_path, max_steps=3), train_dataset=toy_smooth_images(16),
        image_views=mild_views(),
    )  # fmt: skip
    trainer.add_callback(PoisonAt(1, "feature_layer.project.weight"))
    with pytest.raises(FloatingPointError, match=r"global step 2 .*contrastive_loss=nan"):
        trainer.train()


def test_nan_inputs_are_named_when_the_checks_are_off(tmp_path):
    data = toy_images(n=16).with_format("numpy")[:]
    data["pixel_values"][9] = np.inf
    trainer = trainer_for(tmp_path, Dataset.from_dict(data), validate_datasets=False, args={"max_steps": 2})
    with pytest.raises(
        FloatingPointError, match=r"global step [12] .*task_loss=(nan|inf).*\['pixel_values'\] hold NaN/inf"
    ):
        trainer.train()


def test_nan_check_can_be_turned_off(tmp_path):
    data = toy_images(n=8).with_format("numpy")[:]
    data["pixel_values"][0] = np.nan
    trainer = trainer_for(
        tmp_path,
        Dataset.from_dict(data),
        validate_datasets=False,
        stop_on_nonfinite_loss=False,
        args={"max_steps": 1},
    )
    trainer.train()  # no FloatingPointError: the step is taken
    # the transformers behaviour (docs/RELIABILITY.md): the NaN step is hidden from the logs only, the
    # optimizer still steps on its NaN gradients, so the weights are ruined; the default check prevents that
    assert trainer.state.global_step == 1
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert any(not torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_the_gradient_norm_is_clipped_unless_turned_off(tmp_path, max_grad_norm):
    """docs/RELIABILITY.md: MonoSemanticTrainer clips the total gradient (task + weighted auxiliary terms)
    to norm 1.0 unless ``max_grad_norm=0``. One plain SGD step of learning rate 1 moves the weights by
    exactly the (clipped) gradient, so the size of the step shows the norm that was applied."""
    kwargs = {"max_steps": 1, "logging_steps": 1, "optim": "sgd", "learning_rate": 1.0,
              "lr_scheduler_type": "constant"}  # fmt: skip
    if max_grad_norm == 0.0:
        kwargs["max_grad_norm"] = 0.0
    torch.manual_seed(0)
    model = MonoSemanticForImageClassification(
        MonoSemanticConfig(  # a large auxiliary term: gradient norm >> 1
            backbone_config=tiny_resnet_config(),
            feature_layer="sae",
            feature_dim=32,
            num_labels=3,
            reconstruction_weight=50.0,
        )
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = trainer_for(tmp_path, toy_images(n=8), model=model, args=kwargs)
    trainer.train()
    step = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.named_parameters()))
    grad_norm = trainer.state.log_history[0]["grad_norm"]  # before clipping
    assert grad_norm > 2.0
    expected = min(grad_norm, max_grad_norm) if max_grad_norm else grad_norm
    assert float(step) == pytest.approx(expected, rel=1e-3)


# ---- resuming --------------------------------------------------------------------------------------


def test_resume_from_a_missing_or_incomplete_checkpoint_is_refused(tmp_path):
    trainer = trainer_for(tmp_path, toy_images(n=12))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))
    cut = tmp_path / "checkpoint-4"
    cut.mkdir()
    (cut / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ValueError, match="no trainer_state.json: the checkpoint is incomplete"):
        trainer.train(resume_from_checkpoint=str(cut))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)  # the cut-off folder is not a resume point


# ---- distributed launch mistakes ---------------------------------------------------------------------


def test_a_process_launched_as_one_of_several_that_trains_alone_is_refused(tmp_path, monkeypatch):
    args = training_args(tmp_path)
    assert args.world_size == 1  # the process state exists already: the variables below cannot change it
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 .*ACCELERATE_USE_CPU=1"):
        MonoSemanticTrainer(model=classifier(), args=args)


def test_fsdp_asked_for_but_off_is_reported(tmp_path, monkeypatch):
    args = training_args(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="FSDP was asked for .* but is off"):
        MonoSemanticTrainer(model=classifier(), args=args)


# ---- the example's scenario and command line ---------------------------------------------------------


@pytest.fixture
def finetune_noisy(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import finetune_noisy

    return finetune_noisy


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--feature_layers", "linear,sparse"], "unknown ['sparse']"),
        (["--loss_type", "mae"], "--loss_type 'mae' is not one of"),
        (["--label_noise", "1.5"], "--label_noise 1.5 must be in [0, 1]"),
        (["--label_noise_kind", "pairflip"], "allowed symmetric, asymmetric"),
        (["--eval_input_noise", "0.1,lots"], "must be comma-separated numbers"),
        (["--num_train_epochs", "many"], "invalid float value: 'many'"),
    ],
)
def test_example_cli_refuses_bad_arguments(finetune_noisy, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        finetune_noisy.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_example_refuses_a_stored_scenario_from_another_run(finetune_noisy, tmp_path):
    model_args, data_args, scenario_args, train_args, _, _ = finetune_noisy.parse_args(
        ["--output_dir", str(tmp_path), "--label_noise", "0.4", "--use_cpu"]
    )
    train = toy_images(n=12)
    first = finetune_noisy.noisy_train_split(train, scenario_args, train_args, data_args, 3)
    stored = json.loads((tmp_path / "scenario.json").read_text())
    assert stored["labels"] == np.asarray(first["label"]).tolist()
    again = finetune_noisy.noisy_train_split(train, scenario_args, train_args, data_args, 3)  # reused
    assert again.column_names == first.column_names and np.array_equal(again["label"], first["label"])
    scenario_args.label_noise = 0.6
    with pytest.raises(ValueError, match="scenario.json was written for .*'label_noise': 0.4"):
        finetune_noisy.noisy_train_split(train, scenario_args, train_args, data_args, 3)


# ----------------------------------------------------------------------------- a caller's bf16 autocast
def _weights_after_training(tmp_path, contrastive, autocast, **args):
    """4 steps of a tiny model (TopK SAE classifier on a tiny BERT, or NCL pretraining of a tiny ResNet)."""
    torch.manual_seed(0)
    if contrastive:
        from training_toys import mild_views, toy_smooth_images

        config = tiny_resnet_config(num_channels=3)
        model = MonoSemanticModel(
            MonoSemanticConfig(backbone_config=config, feature_layer="nonneg", feature_dim=16)
        )
        trainer = ContrastiveTrainer(
            model=model,
            args=training_args(tmp_path, max_steps=4, **args),
            train_dataset=toy_smooth_images(16),
            image_views=mild_views(),
        )  # fmt: skip
    else:
        config = MonoSemanticConfig(
            backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=32, topk=4, num_labels=2
        )
        model = MonoSemanticForSequenceClassification(config)
        trainer = MonoSemanticTrainer(
            model=model, args=training_args(tmp_path, max_steps=4, **args), train_dataset=toy_text(32)
        )
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with (
        warnings.catch_warnings(record=True) as caught,
        torch.autocast("cpu", torch.bfloat16, enabled=autocast),
    ):
        warnings.simplefilter("always")
        trainer.train()
    final = model.state_dict()
    assert any(not torch.equal(initial[k], final[k]) for k in final)  # it trained
    said = [str(w.message) for w in caught if "inside torch.autocast" in str(w.message)]
    return final, [e["loss"] for e in trainer.state.log_history if "loss" in e], said


@pytest.mark.parametrize("contrastive", [False, True], ids=["topk-classifier", "ncl-contrastive"])
def test_training_inside_a_callers_bf16_autocast_equals_training_without_it(tmp_path, contrastive):
    """Issue 21: ``trainer.train()`` inside ``torch.autocast("cpu", torch.bfloat16)`` ran every step on
    autocast's cached bf16 copy of the *initial* weights (the region never ended, so its cache was never
    cleared): weights 0.04 (classifier) / 0.38 (NCL) from the run without autocast after 4 steps, no
    error. The trainers now turn the caller's autocast off for training, with a warning pointing to
    ``bf16=True``; the TopK SAE's custom backward runs too (autocast off inside it)."""
    plain, plain_losses, said = _weights_after_training(tmp_path / "plain", contrastive, autocast=False)
    assert said == []
    under, under_losses, said = _weights_after_training(tmp_path / "under", contrastive, autocast=True)
    assert under_losses == plain_losses
    for name, weight in plain.items():
        assert torch.equal(under[name], weight), name
    assert len(said) == 1 and "pass bf16=True" in said[0]


def test_the_trainers_own_bf16_inside_a_callers_autocast_sees_every_update(tmp_path):
    """``bf16=True`` nests the Trainer's per-step autocast inside the caller's region, whose weight cache
    would then live across steps: the cache is cleared at each step, so the run equals ``bf16=True``
    alone."""
    alone, alone_losses, _ = _weights_after_training(tmp_path / "alone", False, autocast=False, bf16=True)
    under, under_losses, _ = _weights_after_training(tmp_path / "under", False, autocast=True, bf16=True)
    assert under_losses == alone_losses
    for name, weight in alone.items():
        assert torch.equal(under[name], weight), name
