import math

import pytest
import torch
from tiny_models import tiny_bert_config, tiny_resnet_config, tiny_vit_config
from training_toys import (
    accelerate_launch,
    comparable,
    mild_views,
    toy_images,
    toy_smooth_images,
    toy_text,
    train_logs,
    training_args,
)

from hf_monosem import (
    ContrastiveTrainer,
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
)
from hf_monosem.training.contrastive import ImageViews, TextViews, UnlabeledDataCollator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def image_classifier(kind="sae", seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_resnet_config(), feature_layer=kind, feature_dim=32, num_labels=3, **kwargs
    )
    return MonoSemanticForImageClassification(cfg)


def run_classifier(tmp_path, loss_type="ce", kind="sae", **arg_overrides):
    trainer = MonoSemanticTrainer(
        model=image_classifier(kind),
        args=training_args(tmp_path, **arg_overrides),
        train_dataset=toy_images(),
        eval_dataset=toy_images(n=16, seed=1),
        loss_type=loss_type,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("loss_type", ["ce", "gce", "sce"])
def test_trainer_loss_falls_and_logs_every_term(tmp_path, loss_type):
    trainer = run_classifier(tmp_path, loss_type, num_train_epochs=3)
    logs = train_logs(trainer)
    assert len(logs) >= 4
    for entry in logs:
        for key in (
            "loss",
            "task_loss",
            "reconstruction_loss",
            "sparsity_loss",
            "active_fraction",
            "dead_fraction",
        ):
            assert key in entry and math.isfinite(entry[key]), (key, entry)
        assert 0 <= entry["active_fraction"] <= 1 and 0 <= entry["dead_fraction"] <= 1
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert logs[-1]["task_loss"] < logs[0]["task_loss"]
    # the logged loss is the task term plus the weighted auxiliary terms, averaged over the same window
    weights = trainer.model.feature_layer.loss_weights
    for entry in logs:
        total = entry["task_loss"] + sum(w * entry[name] for name, w in weights.items())
        assert entry["loss"] == pytest.approx(total, rel=1e-4, abs=1e-5)
    metrics = trainer.evaluate()
    for key in (
        "eval_loss",
        "eval_task_loss",
        "eval_reconstruction_loss",
        "eval_active_fraction",
        "eval_dead_fraction",
    ):
        assert math.isfinite(metrics[key])
    predictions = trainer.predict(toy_images(n=8, seed=2))
    assert predictions.predictions.shape == (8, 3)  # logits only: features/aux terms are not gathered


def test_robust_losses_replace_only_the_task_term(tmp_path):
    from hf_monosem.training.losses import generalized_cross_entropy

    model = image_classifier()
    trainer = MonoSemanticTrainer(model=model, args=training_args(tmp_path), loss_type="gce")
    batch = toy_images(n=6).with_format("torch")[:]
    inputs = {"pixel_values": batch["pixel_values"], "labels": batch["label"]}
    model.train()
    loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
    expected = generalized_cross_entropy(
        outputs.logits, inputs["labels"]
    ) + model.feature_layer.weighted_aux_loss(outputs.aux_losses)
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("loss_type", ["ce", "gce"])
def test_gradient_accumulation_equals_one_step_on_the_doubled_batch(tmp_path, loss_type):
    """Two accumulated half batches = one step on the whole batch, for the task term and the SAE's
    auxiliary terms alike (each a per-example mean). Plain SGD without clipping, so that a wrongly
    scaled gradient shows in the weights (Adam's first step and clipping would hide the scale)."""
    from transformers import BertConfig

    def model():
        torch.manual_seed(0)
        backbone = BertConfig(
            **{
                **tiny_bert_config().to_dict(),
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            }
        )  # no dropout: both runs see one function
        return MonoSemanticForSequenceClassification(
            MonoSemanticConfig(backbone_config=backbone, feature_layer="sae", feature_dim=32, num_labels=2)
        )

    def one_step(folder, batch, accumulation):
        args = training_args(
            folder,
            max_steps=1,
            per_device_train_batch_size=batch,
            logging_steps=1,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            max_grad_norm=0.0,
            lr_scheduler_type="constant",
        )
        trainer = MonoSemanticTrainer(
            model=model(), args=args, train_dataset=toy_text(n=8), loss_type=loss_type
        )
        trainer.train()
        return trainer

    whole, halves = one_step(tmp_path / "whole", 8, 1), one_step(tmp_path / "halves", 4, 2)
    (log_whole,), (log_halves,) = train_logs(whole), train_logs(halves)
    for key in ("loss", "task_loss", "reconstruction_loss", "sparsity_loss"):
        assert log_halves[key] == pytest.approx(log_whole[key], rel=1e-5), key
    initial = model()
    for (name, a), b in zip(halves.model.named_parameters(), whole.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(whole.model.feature_layer.encoder.weight, initial.feature_layer.encoder.weight)
    assert not torch.allclose(whole.model.classifier.weight, initial.classifier.weight)


@pytest.mark.parametrize(
    "loss_type, options",
    [("ce", {}), ("gce", {"gce_q": 0.4}), ("sce", {"sce_alpha": 0.5, "sce_beta": 2.0})],  # not the defaults
)
def test_logged_task_loss_is_the_library_loss_with_the_trainer_options(tmp_path, loss_type, options):
    import torch.nn.functional as F

    from hf_monosem.training.losses import generalized_cross_entropy, symmetric_cross_entropy

    reference = {
        "ce": F.cross_entropy,
        "gce": lambda logits, labels: generalized_cross_entropy(logits, labels, q=0.4),
        "sce": lambda logits, labels: symmetric_cross_entropy(logits, labels, alpha=0.5, beta=2.0),
    }[loss_type]
    model, data = image_classifier(), toy_images(n=8)
    batch = data.with_format("torch")[:]
    model.train()  # as in the training step (batch-norm statistics of the batch)
    with torch.no_grad():  # the model before its one step, on the one batch (the whole data set)
        out = model(pixel_values=batch["pixel_values"])
    task = float(reference(out.logits, batch["label"]))
    total = task + float(model.feature_layer.weighted_aux_loss(out.aux_losses))
    args = training_args(tmp_path, max_steps=1, logging_steps=1, per_device_train_batch_size=8)
    trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=data, loss_type=loss_type, **options)
    trainer.train()
    (log,) = train_logs(trainer)
    assert log["task_loss"] == pytest.approx(task, rel=1e-5)
    assert log["loss"] == pytest.approx(total, rel=1e-5)


def test_bad_loss_type_raises(tmp_path):
    with pytest.raises(ValueError, match=r"loss_type='mae'.*'ce', 'gce', 'sce'"):
        MonoSemanticTrainer(model=image_classifier(), args=training_args(tmp_path), loss_type="mae")


def test_same_seed_same_metrics(tmp_path):
    first = comparable(run_classifier(tmp_path / "a", "sce", num_train_epochs=1).state.log_history)
    second = comparable(run_classifier(tmp_path / "b", "sce", num_train_epochs=1).state.log_history)
    assert first == second


# ---- contrastive ---------------------------------------------------------------------------------


def contrastive_run(tmp_path, kind, seed=0, epochs=5, evaluate_first=False, **trainer_kwargs):
    """A trained ContrastiveTrainer; with ``evaluate_first`` its ``metrics_before`` are the evaluation
    of the untrained model (the evaluation views are fixed, so before and after see the same views)."""
    torch.manual_seed(seed)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_vit_config(), feature_layer=kind, feature_dim=64, projector_hidden_dim=64
    )
    trainer = ContrastiveTrainer(
        model=MonoSemanticModel(cfg),
        args=training_args(tmp_path, num_train_epochs=epochs, learning_rate=2e-3, seed=seed, logging_steps=4),
        train_dataset=toy_smooth_images(n=32),
        eval_dataset=toy_smooth_images(n=16, seed=1),
        image_views=mild_views(),
        **trainer_kwargs,
    )
    if evaluate_first:
        trainer.metrics_before = trainer.evaluate()
    trainer.train()
    return trainer


def test_ncl_training_makes_features_sparser_and_simclr_stays_dense(tmp_path):
    """NCL's sparsity is what training adds: a ReLU output is already about half zeros at initialisation,
    so the trained NCL features are compared with the same model before training, on the same views."""
    runs = {
        kind: contrastive_run(tmp_path / kind, kind, evaluate_first=True) for kind in ("linear", "nonneg")
    }
    after = {}
    for kind, trainer in runs.items():
        for entry in train_logs(trainer):
            for key in (
                "loss",
                "contrastive_loss",
                "contrastive_accuracy",
                "active_fraction",
                "dead_fraction",
            ):
                assert math.isfinite(entry[key]), (kind, key, entry)
        after[kind] = trainer.evaluate()
        # learned: the untrained model scores the held-out views at about log(2N - 1) = log(31) = 3.43
        # (all embeddings alike); a model that learned to match views scores clearly lower (2.7-2.9 here)
        assert after[kind]["eval_contrastive_loss"] < trainer.metrics_before["eval_contrastive_loss"] - 0.3, (
            kind
        )
    before_ncl = runs["nonneg"].metrics_before["eval_active_fraction"]
    assert 0.3 < before_ncl < 0.8  # a ReLU at initialisation: about half active
    # trained NCL features: clearly fewer active than at initialisation (0.58 -> 0.26 here)
    assert after["nonneg"]["eval_active_fraction"] < 0.75 * before_ncl
    assert (
        runs["linear"].metrics_before["eval_active_fraction"]
        == after["linear"]["eval_active_fraction"]
        == 1.0
    )
    pixels = toy_smooth_images(n=16, seed=3).with_format("torch")[:]["pixel_values"]
    with torch.no_grad():
        simclr = runs["linear"].model.eval()(pixel_values=pixels).features
        ncl = runs["nonneg"].model.eval()(pixel_values=pixels).features
    assert (ncl >= 0).all() and (simclr < 0).any()


class RecordingContrastiveTrainer(ContrastiveTrainer):
    """Keeps each training step's features (both views, from the one forward pass) and auxiliary terms."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            aux = {k: v.detach() for k, v in outputs.aux_losses.items()}
            self.steps.append((outputs.features.detach().clone(), aux))
        return (loss, outputs) if return_outputs else loss


@pytest.mark.parametrize(
    "temperature", [0.1, 0.5]
)  # neither is the config's 0.2: the trainer's value is used
def test_contrastive_logged_loss_is_info_nce_at_the_temperature_plus_the_weighted_aux_term(
    tmp_path, temperature
):
    from hf_monosem.training.losses import info_nce_loss

    torch.manual_seed(0)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_vit_config(), feature_layer="nonneg", feature_dim=32, activation_loss_weight=0.5
    )
    trainer = RecordingContrastiveTrainer(
        model=MonoSemanticModel(cfg), args=training_args(tmp_path, max_steps=3, logging_steps=1),
        train_dataset=toy_smooth_images(n=16), image_views=mild_views(), temperature=temperature,
    )  # fmt: skip
    trainer.steps = []
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == len(trainer.steps) == 3
    at_default = []
    for entry, (features, aux) in zip(logs, trainer.steps):
        z1, z2 = features.chunk(2)  # view 1 of every row, then view 2
        assert not torch.allclose(z1, z2)  # two different views of the batch
        expected = float(info_nce_loss(z1, z2, temperature))
        assert entry["contrastive_loss"] == pytest.approx(expected, rel=1e-5)
        assert entry["activation_loss"] == pytest.approx(float(aux["activation_loss"]), rel=1e-5)
        assert entry["loss"] == pytest.approx(expected + 0.5 * float(aux["activation_loss"]), rel=1e-5)
        at_default.append(float(info_nce_loss(z1, z2, 0.2)))
    # the temperature matters on these views: at 0.2 the same steps would have logged other values
    assert at_default != pytest.approx([e["contrastive_loss"] for e in logs], rel=1e-3)


def test_contrastive_same_seed_same_metrics(tmp_path):
    first = comparable(contrastive_run(tmp_path / "a", "nonneg", epochs=1).state.log_history)
    second = comparable(contrastive_run(tmp_path / "b", "nonneg", epochs=1).state.log_history)
    assert first == second


def test_contrastive_text_views_with_dropout_and_masking(tmp_path):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="nonneg", feature_dim=64)
    trainer = ContrastiveTrainer(
        model=MonoSemanticModel(cfg),
        args=training_args(tmp_path, num_train_epochs=4, learning_rate=2e-3),
        train_dataset=toy_text(n=32),
        mask_rate=0.15,
        mask_token_id=3,
        special_token_ids=[0, 1],
    )
    trainer.train()
    logs = train_logs(trainer)
    assert logs[-1]["contrastive_loss"] < logs[0]["contrastive_loss"]
    # masking: never padding or special tokens, about mask_rate of the rest
    batch = toy_text(n=32).with_format("torch")[:]
    views = trainer.make_views(
        {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
        torch.Generator().manual_seed(0),
    )
    ids, mask = views["input_ids"], views["attention_mask"]
    assert ids.shape[0] == 64 and torch.equal(mask, torch.cat([batch["attention_mask"]] * 2))
    masked = ids == 3
    assert not masked[mask == 0].any() and not masked[:, 0].any()
    assert 0.05 < masked[mask == 1].float().mean() < 0.3
    assert not torch.equal(ids[:32], ids[32:])  # the two views are masked independently


def test_text_views_validate_arguments():
    with pytest.raises(ValueError, match="mask_token_id"):
        TextViews(mask_rate=0.1)
    with pytest.raises(ValueError, match="mask_rate"):
        TextViews(mask_token_id=3, mask_rate=1.5)


def test_image_views_are_seeded_and_leave_global_rng_alone():
    views = ImageViews(crop_scale=(0.3, 1.0))
    pixels = torch.rand(6, 3, 16, 16)
    state = torch.random.get_rng_state()
    a = views(pixels, torch.Generator().manual_seed(5))
    b = views(pixels, torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == pixels.shape and not torch.equal(a, pixels)
    gray = ImageViews()(
        torch.rand(4, 1, 16, 16), torch.Generator().manual_seed(0)
    )  # no colour ops on 1 channel
    assert gray.shape == (4, 1, 16, 16)
    # normalised inputs are un-normalised for the colour ops and normalised again
    normalised = ImageViews(mean=[0.5] * 3, std=[0.5] * 3)(pixels * 2 - 1, torch.Generator().manual_seed(0))
    assert normalised.min() >= -1 - 1e-5 and normalised.max() <= 1 + 1e-5


def test_unlabeled_collator_drops_labels():
    collate = UnlabeledDataCollator()
    batch = collate(
        [
            {"pixel_values": torch.zeros(1, 2, 2), "label": 1},
            {"pixel_values": torch.ones(1, 2, 2), "label": 0},
        ]
    )
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape == (2, 1, 2, 2)


ACCELERATE_SCRIPT = """
import json, sys
import torch
sys.path[:0] = sys.argv[2].split("|")  # tests/ and tests/training/
import hf_monosem.training.losses as losses
from tiny_models import tiny_vit_config
from training_toys import mild_views, toy_smooth_images, training_args
from hf_monosem import ContrastiveTrainer, MonoSemanticConfig, MonoSemanticModel

gathered = []
original = losses.gather_with_grad
def recording(t):
    out = original(t)
    gathered.append([list(t.shape), list(out.shape)])
    return out
losses.gather_with_grad = recording

torch.manual_seed(0)
cfg = MonoSemanticConfig(backbone_config=tiny_vit_config(), feature_layer="nonneg", feature_dim=32)
trainer = ContrastiveTrainer(
    model=MonoSemanticModel(cfg),
    args=training_args(sys.argv[1], num_train_epochs=1, logging_steps=1, dataloader_drop_last=True),
    train_dataset=toy_smooth_images(n=32),
    image_views=mild_views(),
)
trainer.train()
with open(f"{sys.argv[1]}/rank{trainer.args.process_index}.json", "w") as f:
    json.dump({"world": trainer.args.world_size, "gathered": gathered, "logs": trainer.state.log_history}, f)
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
def test_contrastive_trainer_under_accelerate_launch_gathers_negatives(tmp_path):
    import json
    from pathlib import Path

    script = tmp_path / "run_contrastive.py"
    script.write_text(ACCELERATE_SCRIPT)
    tests_dir = str(Path(__file__).resolve().parents[1])  # tests/: tiny_models.py and training_toys.py
    result = accelerate_launch(script, tmp_path, tests_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for run in runs:
        assert run["world"] == 2
        # per-device batch 8 -> 16 local embeddings; the gather hands every process all 32
        assert run["gathered"] and all(
            local == [16, 32] and full == [32, 32] for local, full in run["gathered"]
        )
        assert all(math.isfinite(e["contrastive_loss"]) for e in train_logs_of(run["logs"]))
    # logged terms are reduced over the processes: both report the same numbers
    assert train_logs_of(runs[0]["logs"]) == train_logs_of(runs[1]["logs"])
    # at initialisation the loss is near log(2NW - 1): 30 negatives + 1 positive per anchor
    assert abs(train_logs_of(runs[0]["logs"])[0]["contrastive_loss"] - math.log(31)) < 0.3


def train_logs_of(history):
    return [e for e in history if "loss" in e]
