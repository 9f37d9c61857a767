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
    MonoSemanticModel,
    MonoSemanticTrainer,
)
from hf_monosem.training.contrastive import ImageViews, TextViews, UnlabeledDataCollator


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models gain nothing from a second thread, and lose a lot when the cores are shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_bad_loss_type_raises(tmp_path):
    with pytest.raises(ValueError, match=r"loss_type='mae'.*'ce', 'gce', 'sce'"):
        MonoSemanticTrainer(model=image_classifier(), args=training_args(tmp_path), loss_type="mae")


def test_same_seed_same_metrics(tmp_path):
    first = comparable(run_classifier(tmp_path / "a", "sce", num_train_epochs=1).state.log_history)
    second = comparable(run_classifier(tmp_path / "b", "sce", num_train_epochs=1).state.log_history)
    assert first == second


# ---- contrastive ---------------------------------------------------------------------------------


def contrastive_run(tmp_path, kind, seed=0, epochs=5, **trainer_kwargs):
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
    trainer.train()
    return trainer


def test_ncl_is_nonnegative_and_sparser_than_simclr(tmp_path):
    runs = {kind: contrastive_run(tmp_path / kind, kind) for kind in ("linear", "nonneg")}
    for trainer in runs.values():
        logs = train_logs(trainer)
        for entry in logs:
            for key in (
                "loss",
                "contrastive_loss",
                "contrastive_accuracy",
                "active_fraction",
                "dead_fraction",
            ):
                assert math.isfinite(entry[key])
        assert logs[-1]["contrastive_loss"] < logs[0]["contrastive_loss"]
        metrics = trainer.evaluate()
        assert math.isfinite(metrics["eval_loss"]) and "eval_contrastive_loss" in metrics
    pixels = toy_smooth_images(n=16, seed=3).with_format("torch")[:]["pixel_values"]
    with torch.no_grad():
        simclr = runs["linear"].model.eval()(pixel_values=pixels).features
        ncl = runs["nonneg"].model.eval()(pixel_values=pixels).features
    assert (ncl >= 0).all() and (simclr < 0).any()
    ncl_active = (ncl > 0).float().mean()
    assert ncl_active < 0.9 * (simclr != 0).float().mean()
    assert (
        train_logs(runs["nonneg"])[-1]["active_fraction"] < train_logs(runs["linear"])[-1]["active_fraction"]
    )


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
        assert run["gathered"] and all(local == [16, 32] and full == [32, 32] for local, full in run["gathered"])
        assert all(math.isfinite(e["contrastive_loss"]) for e in train_logs_of(run["logs"]))
    # logged terms are reduced over the processes: both report the same numbers
    assert train_logs_of(runs[0]["logs"]) == train_logs_of(runs[1]["logs"])
    # at initialisation the loss is near log(2NW - 1): 30 negatives + 1 positive per anchor
    assert abs(train_logs_of(runs[0]["logs"])[0]["contrastive_loss"] - math.log(31)) < 0.3


def train_logs_of(history):
    return [e for e in history if "loss" in e]
