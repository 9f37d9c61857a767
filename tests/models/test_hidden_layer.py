"""A feature layer on a hidden layer of the backbone (``config.hidden_layer``): per-token codes pooled over
the non-pad tokens, the backbone stopped after that layer, save / load / remote code / dtypes as for the
pooled route. Real tiny Llama, BERT and ViT models built from configs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from fresh_process import run_without_hf_monosem
from tiny_models import make_inputs, tiny_bert_config, tiny_llama_config, tiny_resnet_config, tiny_vit_config
from transformers import AutoModel, AutoModelForSequenceClassification, LlamaModel

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    save_for_hub,
)
from hf_monosem.models.hidden_layers import find_layer_list, pool_tokens

LAYERS = 4
FAMILIES = {
    "llama": (tiny_llama_config, "text"),
    "bert": (tiny_bert_config, "text"),
    "vit": (tiny_vit_config, "image3x16"),
}


def _model(family, kind="topk", hidden_layer=1, pooling="mean", head=False, **kwargs):
    make_config, _ = FAMILIES[family]
    config = MonoSemanticConfig(
        backbone_config=make_config(num_hidden_layers=LAYERS),
        feature_layer=kind,
        feature_dim=64,
        topk=8 if kind == "topk" else None,
        hidden_layer=hidden_layer,
        pooling=pooling,
        num_labels=3,
        **kwargs,
    )
    torch.manual_seed(0)
    return (MonoSemanticForSequenceClassification if head else MonoSemanticModel)(config).eval()


def _expected(model, inputs, layer):
    """The feature layer applied by hand to transformers' ``hidden_states[layer + 1]``, token by token,
    then pooled over the non-pad tokens."""
    with torch.no_grad():
        hidden = model.backbone(**inputs, output_hidden_states=True).hidden_states[layer + 1]
        codes = model.feature_layer(hidden.flatten(0, 1))[0].view(*hidden.shape[:2], -1)
    return pool_tokens(codes, inputs.get("attention_mask"), model.config.pooling), hidden


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("pooling", ["mean", "max", "last", "cls"])
def test_codes_of_a_hidden_layer_are_pooled_over_the_real_tokens(family, pooling):
    model = _model(family, hidden_layer=1, pooling=pooling)
    inputs = make_inputs(FAMILIES[family][1])
    expected, hidden = _expected(model, inputs, 1)
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, pool_tokens(hidden, inputs.get("attention_mask"), pooling))
    assert out.features.shape == (4, 64) and out.hidden_states is None
    if "attention_mask" in inputs and pooling in ("mean", "max"):
        # the pad tokens are masked: other ids at the padded positions leave the codes unchanged
        # (row 0 is right-padded: the real tokens never attend to the pads)
        other = dict(inputs, input_ids=inputs["input_ids"].clone())
        other["input_ids"][0, -2:] = 7
        with torch.no_grad():
            torch.testing.assert_close(model(**other).features, out.features)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_backbone_stops_after_the_layer_read(family):
    model = _model(family, hidden_layer=1)
    calls = []
    _, layers = find_layer_list(model.backbone)
    for index, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    inputs = make_inputs(FAMILIES[family][1])
    with torch.no_grad():
        stopped = model(**inputs)
        assert calls == [0, 1]  # a probe on layer 1 of 4 runs 2 layers
        calls.clear()
        full = model(**inputs, output_hidden_states=True)  # asked for: the whole backbone runs
    assert calls == [0, 1, 2, 3] and len(full.hidden_states) == LAYERS + 1
    torch.testing.assert_close(full.features, stopped.features)
    calls.clear()
    with torch.no_grad():  # the stop lives for one call: the backbone on its own runs whole afterwards
        assert model.backbone(**inputs).last_hidden_state is not None and calls == [0, 1, 2, 3]


def test_the_last_layer_is_read_before_the_final_norm():
    """transformers ties Llama's hidden_states[-1] to the normed output; SAEs read the layer's own output."""
    model = _model("llama", hidden_layer=LAYERS - 1, pooling="last")
    inputs = make_inputs("text")
    kept = []
    layers = find_layer_list(model.backbone)[1]
    layers[-1].register_forward_hook(lambda module, args, output: kept.append(output))
    with torch.no_grad():
        out = model(**inputs)
        normed = model.backbone(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out.pooled, pool_tokens(kept[0], inputs["attention_mask"], "last"))
    assert not torch.allclose(out.pooled, pool_tokens(normed, inputs["attention_mask"], "last"), atol=1e-3)


def test_save_and_load_keep_the_layer_and_the_whole_backbone(tmp_path):
    model = _model("llama", kind="sae", hidden_layer=2, pooling="max", head=True)
    inputs = make_inputs("text")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hidden_layer"] == 2 and saved["backbone_config"]["num_hidden_layers"] == LAYERS
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.hidden_layer == 2 and loaded.feature_layer.encoder.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, model(**inputs).logits)


def test_bad_hidden_layers_are_named_before_any_work():
    llama = tiny_llama_config(num_hidden_layers=LAYERS)
    for bad, allowed in [
        (
            4,
            r"hidden_layer=4 is not valid; allowed: None or an integer in \[0, 3\] "
            r"\(the backbone has 4 layers\)",
        ),
        (-1, r"hidden_layer=-1 is not valid; allowed: None or an integer >= 0"),
        (True, r"hidden_layer=True is not valid"),
        ("2", r"hidden_layer='2' is not valid"),
    ]:
        with pytest.raises(ValueError, match=allowed):
            MonoSemanticConfig(backbone_config=llama, hidden_layer=bad)
    with pytest.raises(ValueError, match="hidden_layer=-1 is not valid"):
        MonoSemanticConfig(hidden_layer=-1)  # checked without a backbone too
    with pytest.raises(ValueError, match="needs a backbone whose layers output token sequences"):
        MonoSemanticConfig(backbone_config=tiny_resnet_config(), hidden_layer=0)
    with pytest.raises(ValueError, match="pooling='pooler' reads the backbone's final output"):
        MonoSemanticConfig(backbone_config=tiny_bert_config(), hidden_layer=0, pooling="pooler")
    assert MonoSemanticConfig(backbone_config=llama).hidden_layer is None  # today's route by default


def test_training_reaches_the_layers_up_to_the_one_read_with_gradient_checkpointing():
    model = _model("bert", kind="sae", hidden_layer=1, head=True).train()
    model.backbone.activation_checkpointing_enable()
    out = model(**make_inputs("text"), labels=torch.tensor([0, 1, 2, 0]))
    assert set(out.aux_losses) == {"reconstruction_loss", "sparsity_loss"}
    out.loss.backward()
    layers = find_layer_list(model.backbone)[1]
    assert all(p.grad is not None for p in layers[1].parameters())
    assert all(p.grad is None for p in layers[2].parameters())  # never ran


def test_a_bf16_backbone_feeds_an_fp32_sae_per_token():
    backbone = LlamaModel(tiny_llama_config(num_hidden_layers=2)).to(torch.bfloat16)
    model = MonoSemanticModel.from_backbone(
        backbone, feature_layer="topk", feature_dim=64, topk=8, hidden_layer=0
    ).eval()
    with torch.no_grad():
        out = model(**make_inputs("text"))
    assert model.feature_layer.encoder.weight.dtype == torch.float32
    assert out.features.dtype == torch.float32 and out.pooled.dtype == torch.bfloat16
    assert torch.isfinite(out.features).all()


_FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModel
ref = torch.load(sys.argv[1] + "/../ref.pt")
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    features = model(**ref["inputs"]).features
diff = float((features - ref["features"]).abs().max())
print(json.dumps({"diff": diff, "hidden_layer": model.config.hidden_layer}))
"""


def test_remote_code_carries_the_hidden_layer_route(tmp_path):
    model = _model("llama", hidden_layer=1)
    inputs = make_inputs("text")
    save_for_hub(model, tmp_path / "repo", remote_code=True, repo_id="me/tiny-layer-1")
    assert "hidden_layers.py" in os.listdir(tmp_path / "repo")
    with torch.no_grad():
        torch.save({"inputs": inputs, "features": model(**inputs).features}, tmp_path / "ref.pt")
    report = run_without_hf_monosem(_FRESH_LOAD, str(tmp_path / "repo"), workdir=tmp_path)
    assert report == {"diff": 0.0, "hidden_layer": 1}
    assert type(AutoModel.from_pretrained(tmp_path / "repo")) is MonoSemanticModel
