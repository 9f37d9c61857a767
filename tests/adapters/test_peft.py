"""LoRA / MonoLoRA on the backbone under a monosemantic head: training, save/load, merge semantics,
sparsity."""

import json
import os

import pytest
import torch
from peft import PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lora import LoraLayer
from tiny_models import BACKBONES, make_inputs
from transformers import AutoModelForSequenceClassification

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    adapter_sparsity,
    add_lora,
    load_lora,
)
from hf_monosem.adapters.lora import (
    AdapterActivationMonitor,
    MonoLoraLinear,
    MonoLoraMergeError,
    default_target_modules,
)

LABELS = torch.tensor([0, 1, 2, 0])

# peft 0.21 calls a transformers method deprecated in 5.x on every get_peft_model
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def build(family="bert", kind="nonneg", **kwargs):
    make_config, input_kind = BACKBONES[family]
    cfg = MonoSemanticConfig(
        backbone_config=make_config(), feature_layer=kind, feature_dim=64, num_labels=3, **kwargs
    )
    torch.manual_seed(0)
    cls = (
        MonoSemanticForSequenceClassification if input_kind == "text" else MonoSemanticForImageClassification
    )
    return cls(cfg), make_inputs(input_kind)


def train(model, inputs, steps=4, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs, labels=LABELS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    "family,expected",
    [
        ("bert", ["query", "value"]),
        ("llama", ["q_proj", "v_proj"]),
        ("vit", ["q_proj", "v_proj"]),
        ("convnext", ["pwconv1", "pwconv2"]),
    ],
)
def test_default_targets_are_per_family_and_stay_inside_the_backbone(family, expected):
    model, _ = build(family)
    assert default_target_modules(model) == expected
    peft_model = add_lora(model, r=2)
    adapted = [n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    assert adapted and all(".backbone." in n and n.split(".")[-1] in expected for n in adapted)
    trainable = {
        n.split(".modules_to_save.")[0].split(".")[-1]
        for n, p in peft_model.named_parameters()
        if p.requires_grad and "lora_" not in n
    }
    assert trainable == {"feature_layer", "classifier"}  # head trained fully, backbone frozen apart from LoRA


def test_a_frozen_feature_layer_stays_frozen_under_lora():
    """peft trains a copy of every module in modules_to_save: a frozen projector must not be one of them."""
    model, _ = build("bert", freeze_feature_layer=True)
    peft_model = add_lora(model, r=2)
    trainable = {
        n.split(".modules_to_save.")[0].split(".")[-1]
        for n, p in peft_model.named_parameters()
        if p.requires_grad and "lora_" not in n
    }
    assert trainable == {"classifier"}
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "feature_layer" in n)


def test_lora_head_trains_round_trips_and_merges(tmp_path):
    model, inputs = build("bert", "sae")
    model.save_pretrained(tmp_path / "base")
    peft_model, losses = train(add_lora(model, r=4), inputs)
    assert losses[-1] < losses[0]
    assert adapter_sparsity(peft_model, inputs) < 0.01  # plain LoRA's update B A x has no zeros to speak of
    ref = logits(peft_model, inputs)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and set(saved["modules_to_save"]) >= {"feature_layer", "classifier"}
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, inputs), ref)
    # plain LoRA is linear in x: merging is exact and leaves an ordinary hf_monosem checkpoint
    merged = reloaded.merge_and_unload()
    assert type(merged) is MonoSemanticForSequenceClassification
    torch.testing.assert_close(logits(merged, inputs), ref, rtol=1e-4, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        logits(AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged"), inputs),
        ref,
        rtol=1e-4,
        atol=1e-5,
    )


def test_lora_on_a_decoder_lm_with_last_token_pooling(tmp_path):
    model, inputs = build("llama", "topk", topk=8)
    assert model.config.pooling == "last"
    model.save_pretrained(tmp_path / "base")
    peft_model, losses = train(add_lora(model, r=4, monolora="hidden"), inputs, steps=3)
    assert losses[-1] < losses[0]
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = load_lora(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    )
    torch.testing.assert_close(logits(reloaded, inputs), logits(peft_model, inputs))


@pytest.mark.parametrize("placement", ["output", "hidden"])
def test_monolora_intermediate_is_non_negative_sparse_and_trains(placement):
    model, inputs = build("bert")
    peft_model = add_lora(model, r=4, monolora=placement)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(isinstance(m, MonoLoraLinear) for m in layers)
    # LoRA starts at B = 0: the "output" pre-activation is exactly 0 there, yet gradients must flow
    peft_model.train()
    peft_model(**inputs, labels=LABELS).loss.backward()
    assert all(m.lora_B["default"].weight.grad.abs().sum() > 0 for m in layers)
    peft_model.zero_grad()
    peft_model, losses = train(peft_model, inputs)
    assert losses[-1] < losses[0]
    seen = []
    hooks = [
        m.mono_relu["default"].register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in layers
    ]
    with AdapterActivationMonitor(peft_model) as monitor, torch.no_grad():
        peft_model(**inputs)
    for h in hooks:
        h.remove()
    width = 4 if placement == "hidden" else 32
    assert len(seen) == len(layers) and all((t >= 0).all() and t.shape[-1] == width for t in seen)
    zeros = sum(int((t == 0).sum()) for t in seen) / sum(t.numel() for t in seen)
    assert 0 < zeros < 1 and monitor.sparsity == pytest.approx(zeros)
    assert adapter_sparsity(peft_model, inputs) == pytest.approx(zeros)
    assert set(monitor.per_layer()) == {f"{n}[default]" for n, m in peft_model.named_modules() if m in layers}


def test_monolora_round_trips_and_refuses_to_merge(tmp_path, monkeypatch):
    model, inputs = build("bert")
    model.save_pretrained(tmp_path / "base")
    peft_model, _ = train(add_lora(model, r=4, monolora="output"), inputs, steps=2)
    ref = logits(peft_model, inputs)
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MONOLORA" and saved["monolora"] == "output"

    def base():
        return AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")

    # plain peft API (hf_monosem is imported, so peft knows the MONOLORA config type) and our helper
    for reloaded in (
        PeftModel.from_pretrained(base(), tmp_path / "adapter"),
        load_lora(base(), tmp_path / "adapter"),
    ):
        reloaded.eval()
        assert any(isinstance(m, MonoLoraLinear) for m in reloaded.modules())
        torch.testing.assert_close(logits(reloaded, inputs), ref)
    # a true merge into W is impossible (the update is not linear in x): refused, model untouched
    with pytest.raises(MonoLoraMergeError, match="not a linear function"):
        reloaded.merge_and_unload()
    with pytest.raises(MonoLoraMergeError):
        reloaded.merge_adapter()
    torch.testing.assert_close(logits(reloaded, inputs), ref)
    # unload() drops the adapters and keeps the trained head
    unloaded = reloaded.unload()
    assert type(unloaded) is MonoSemanticForSequenceClassification
    assert not any(isinstance(m, LoraLayer) for m in unloaded.modules())
    torch.testing.assert_close(
        unloaded.classifier.weight, peft_model.base_model.model.classifier.modules_to_save["default"].weight
    )
    # where peft does not know MONOLORA (hf_monosem not imported), loading fails loudly, never as plain LoRA
    monkeypatch.delitem(PEFT_TYPE_TO_CONFIG_MAPPING, "MONOLORA")
    with pytest.raises(KeyError, match="MONOLORA"):
        PeftModel.from_pretrained(base(), tmp_path / "adapter")


def test_bad_setups_are_refused_with_reasons():
    model, _ = build("bert", freeze_backbone=True)
    with pytest.raises(ValueError, match="freeze_backbone"):
        add_lora(model)
    model, _ = build("bert")
    with pytest.raises(ValueError, match="monolora"):
        add_lora(model, monolora="input")
    model, _ = build("resnet")  # its targets are Conv2d
    with pytest.raises(ValueError, match="nn.Linear"):
        add_lora(model, monolora="hidden")
    with pytest.raises(ValueError, match="other LoRA variants"):
        add_lora(build("bert")[0], monolora="hidden", use_dora=True)


def test_lora_on_the_base_model_saves_only_the_feature_layer():
    model = MonoSemanticModel(MonoSemanticConfig(backbone_config=BACKBONES["vit"][0](), feature_dim=64))
    peft_model = add_lora(model, r=2)
    assert peft_model.peft_config["default"].modules_to_save == ["feature_layer"]
    out = peft_model(**make_inputs("image3x16"))
    assert out.features.shape == (4, 64)
