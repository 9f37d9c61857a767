"""Half-precision backbones (issue #12): a backbone saved in bf16 / fp16 comes up in that dtype under
transformers 5 (``dtype="auto"``); the feature layer and head follow it, SAE layers stay fp32, and a
checkpoint loads back with each part in the dtype it was saved in.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tiny_models import tiny_llama_config, tiny_vit_config
from transformers import AutoModel, LlamaModel, TrainingArguments, ViTModel

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
)

KINDS = ["linear", "nonneg", "sae", "topk"]
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
SAE_KINDS = {"sae", "topk"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def half_backbones(tmp_path_factory):
    """Tiny Llama and ViT backbones saved in bf16 and in fp16: {(family, dtype name): folder}."""
    folders = {}
    for family, build in (
        ("llama", lambda: LlamaModel(tiny_llama_config())),
        ("vit", lambda: ViTModel(tiny_vit_config(), add_pooling_layer=False)),
    ):
        for name, dtype in HALF.items():
            torch.manual_seed(0)
            folder = tmp_path_factory.mktemp(f"{family}-{name}")
            build().to(dtype).save_pretrained(folder)
            folders[(family, name)] = str(folder)
    return folders


def classifier(folder, family, kind):
    torch.manual_seed(0)
    cls = MonoSemanticForSequenceClassification if family == "llama" else MonoSemanticForImageClassification
    return cls(MonoSemanticConfig(backbone=folder, feature_layer=kind, feature_dim=64, num_labels=3))


def inputs(family, n=4):
    g = torch.Generator().manual_seed(0)
    if family == "llama":
        ids = torch.randint(1, 100, (n, 6), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}  # fp32 pixels, as processors give them


def part_dtypes(model) -> dict[str, torch.dtype]:
    layer = model.feature_layer
    return {
        "backbone": model.backbone.dtype,
        "feature_layer": next(layer.parameters()).dtype,
        "classifier": model.classifier.weight.dtype,
    }


def test_transformers_loads_the_backbone_in_its_saved_dtype(half_backbones):
    # the premise of the issue: dtype="auto" is transformers 5's default
    assert AutoModel.from_pretrained(half_backbones[("llama", "bf16")]).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype_name", sorted(HALF))
@pytest.mark.parametrize("family", ["llama", "vit"])
def test_half_precision_backbone_every_feature_layer(tmp_path, half_backbones, family, dtype_name, kind):
    dtype = HALF[dtype_name]
    model = classifier(half_backbones[(family, dtype_name)], family, kind)
    expected = {
        "backbone": dtype,
        "feature_layer": torch.float32 if kind in SAE_KINDS else dtype,
        "classifier": dtype,
    }
    assert part_dtypes(model) == expected

    # forward, with labels, and the base model's features
    batch = inputs(family)
    out = model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    assert (
        out.logits.shape == (4, 3) and torch.isfinite(out.logits.float()).all() and torch.isfinite(out.loss)
    )

    # one Trainer step (bf16 mixed precision on a bf16 backbone: what --bf16 does)
    rows = {k: v.tolist() for k, v in inputs(family, n=8).items()}
    train = Dataset.from_dict({**rows, "label": [0, 1, 2, 0, 1, 2, 0, 1]})
    args = TrainingArguments(
        str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=dtype == torch.bfloat16,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    assert trainer.state.global_step == 1 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h
    )
    assert part_dtypes(model) == expected  # training kept every part's dtype

    # save / load: each part keeps its dtype, the logits are the same
    model = trainer.accelerator.unwrap_model(
        model, keep_fp32_wrapper=False
    )  # undo the mixed-precision forward
    model.save_pretrained(tmp_path / "ckpt")
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path / "ckpt").eval()
    assert part_dtypes(loaded) == expected
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        assert torch.isfinite(loaded(**batch).logits.float()).all()


@pytest.mark.parametrize("kind", ["nonneg", "topk"])
def test_base_model_on_a_bf16_backbone(half_backbones, kind):
    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone=half_backbones[("vit", "bf16")], feature_layer=kind, feature_dim=64)
    )
    out = model(**inputs("vit"))
    assert out.features.dtype == (torch.float32 if kind in SAE_KINDS else torch.bfloat16)
    assert torch.isfinite(out.features.float()).all()


def test_from_backbone_instance_follows_its_dtype(half_backbones):
    backbone = LlamaModel.from_pretrained(half_backbones[("llama", "bf16")])
    model = MonoSemanticForSequenceClassification.from_backbone(
        backbone, feature_layer="linear", feature_dim=64, num_labels=3
    )
    assert part_dtypes(model) == {
        "backbone": torch.bfloat16,
        "feature_layer": torch.bfloat16,
        "classifier": torch.bfloat16,
    }
    assert torch.isfinite(model(**inputs("llama")).logits.float()).all()


def test_dtype_argument_of_from_pretrained_reaches_every_part(tmp_path, half_backbones):
    model = classifier(half_backbones[("vit", "bf16")], "vit", "sae")
    model.save_pretrained(tmp_path / "ckpt")
    as_fp32 = MonoSemanticForImageClassification.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert set(part_dtypes(as_fp32).values()) == {torch.float32}
    assert as_fp32.config.backbone_config.dtype == torch.float32
    assert torch.isfinite(as_fp32(**inputs("vit")).logits).all()
