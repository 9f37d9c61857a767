import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import BACKBONES, make_inputs, tiny_bert_config, tiny_llama_config
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertModel,
)

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
)

KINDS = ["linear", "nonneg", "sae", "topk"]


def build(family, kind="nonneg", head=True, **kwargs):
    make_config, input_kind = BACKBONES[family]
    cfg = MonoSemanticConfig(
        backbone_config=make_config(), feature_layer=kind, feature_dim=64, num_labels=3, **kwargs
    )
    torch.manual_seed(0)
    cls = MonoSemanticModel
    if head:
        cls = (
            MonoSemanticForSequenceClassification
            if input_kind == "text"
            else MonoSemanticForImageClassification
        )
    return cls(cfg), make_inputs(input_kind)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_shapes_every_family(backbone_family, kind):
    model, inputs = build(backbone_family, kind)
    labels = torch.tensor([0, 1, 2, 0])
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (4, 3)
    assert out.features.shape == (4, 64)
    assert out.pooled.shape[0] == 4 and out.pooled.dim() == 2
    assert torch.isfinite(out.loss)
    if kind in ("nonneg", "sae", "topk"):
        assert (out.features >= 0).all()
    if kind == "topk":
        assert ((out.features != 0).sum(-1) == 8).all()
    # loss = cross-entropy + weighted auxiliary terms
    ce = torch.nn.functional.cross_entropy(out.logits, labels)
    aux = model.feature_layer.weighted_aux_loss(out.aux_losses)
    assert torch.allclose(out.loss, ce + (aux if aux is not None else 0.0), atol=1e-6)


def test_base_model_returns_features_and_aux_loss():
    model, inputs = build("vit", "sae", head=False, reconstruction_weight=2.0, sparsity_weight=0.25)
    out = model(**inputs)
    assert out.features.shape == (4, 64) and set(out.aux_losses) == {"reconstruction_loss", "sparsity_loss"}
    # the base model's loss is the config-weighted sum of the auxiliary terms, and it trains the layer
    aux = out.aux_losses
    torch.testing.assert_close(out.loss, 2.0 * aux["reconstruction_loss"] + 0.25 * aux["sparsity_loss"])
    out.loss.backward()
    assert model.feature_layer.encoder.weight.grad.abs().sum() > 0
    plain, inputs = build("vit", "linear", head=False)
    assert plain(**inputs).loss is None  # no auxiliary term, no loss


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_reach_the_backbone_unless_frozen(freeze):
    model, inputs = build("bert", "sae", freeze_backbone=freeze)
    model.train()
    out = model(**inputs, labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    backbone_grads = [p.grad for p in model.backbone.parameters()]
    assert model.classifier.weight.grad is not None and model.feature_layer.encoder.weight.grad is not None
    if freeze:
        assert all(g is None for g in backbone_grads)
        assert not model.backbone.training  # dropout off in a frozen backbone
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)


def test_last_token_pooling_handles_left_and_right_padding():
    model, _ = build("llama", "linear", head=False)
    model.eval()
    ids = torch.randint(1, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    pad = torch.zeros(1, 2, dtype=torch.long)
    plain = model(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert model.config.pooling == "last"
    # one batch: row 0 padded on the right, row 1 on the left (as decoder tokenizers pad); RoPE positions
    # are relative and the pads are masked, so both rows' last real token is the unpadded one
    both = model(
        input_ids=torch.cat([torch.cat([ids, pad], 1), torch.cat([pad, ids], 1)]),
        attention_mask=torch.tensor([[1] * 5 + [0] * 2, [0] * 2 + [1] * 5]),
    )
    torch.testing.assert_close(both.pooled[0], plain.pooled[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both.pooled[1], plain.pooled[0], rtol=1e-4, atol=1e-5)
    # the pooled vector of the left-padded row is the hidden state at the sequence's end, not at index 4
    hidden = model.backbone(
        input_ids=torch.cat([pad, ids], 1), attention_mask=torch.tensor([[0] * 2 + [1] * 5])
    ).last_hidden_state
    torch.testing.assert_close(both.pooled[1], hidden[0, -1], rtol=1e-4, atol=1e-5)


def test_mean_pooling_ignores_padding():
    model, _ = build("bert", "linear", head=False, pooling="mean")
    model.eval()
    ids = torch.randint(1, 100, (1, 5))
    padded = model(
        input_ids=torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
        attention_mask=torch.tensor([[1] * 5 + [0] * 3]),
    )
    hidden = model.backbone(input_ids=ids).last_hidden_state
    # BERT attends only to the unmasked tokens, so the masked mean equals the unpadded mean
    assert torch.allclose(padded.pooled, hidden.mean(1), atol=1e-5)


@pytest.mark.parametrize(
    "family,auto_cls",
    [("bert", AutoModelForSequenceClassification), ("resnet", AutoModelForImageClassification)],
)
def test_save_and_auto_load_give_the_same_logits(tmp_path, family, auto_cls):
    model, inputs = build(family, "topk")
    model.eval()
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "monosemantic"
    loaded = auto_cls.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    loaded.eval()
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, MonoSemanticModel)
    torch.testing.assert_close(base(**inputs).features, model(**inputs).features)


def test_freeze_survives_checkpoint_loading(tmp_path):
    model, _ = build("resnet", "nonneg", freeze_backbone=True)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())
    assert all(p.requires_grad for p in loaded.classifier.parameters())


def test_backbone_weights_are_loaded_from_a_folder_and_from_an_instance(tmp_path):
    torch.manual_seed(1)
    bert = BertModel(tiny_bert_config())
    bert.save_pretrained(tmp_path)
    ref = bert.embeddings.word_embeddings.weight
    from_folder = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(backbone=str(tmp_path), feature_dim=32, num_labels=2)
    )
    assert torch.equal(from_folder.backbone.embeddings.word_embeddings.weight, ref)
    from_instance = MonoSemanticForSequenceClassification.from_backbone(bert, feature_dim=32, num_labels=2)
    assert torch.equal(from_instance.backbone.embeddings.word_embeddings.weight, ref)
    from_id = MonoSemanticModel.from_backbone(str(tmp_path), feature_layer="sae", feature_dim=32)
    assert torch.equal(from_id.backbone.embeddings.word_embeddings.weight, ref)
    # the wrapped checkpoint holds the backbone; reloading it must not re-read the original folder
    from_folder.save_pretrained(tmp_path / "wrapped")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "wrapped")
    assert torch.equal(reloaded.backbone.embeddings.word_embeddings.weight, ref)


def test_bad_inputs_are_named():
    model, _ = build("resnet", "linear")
    with pytest.raises(ValueError, match="no model input"):
        model(labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        model(**make_inputs("image1x28"), labels=torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="pooler"):
        MonoSemanticModel(MonoSemanticConfig(backbone_config=tiny_llama_config(), pooling="pooler"))


def test_resnet_pooler_pooling_matches_mean_pooling():
    model, inputs = build("resnet", "linear", head=False, pooling="pooler")
    model.eval()
    pooled = model(**inputs).pooled
    maps = model.backbone(**inputs).last_hidden_state
    torch.testing.assert_close(pooled, maps.mean(dim=(2, 3)))


def test_hub_id_loads_offline_from_the_real_cache_layout(tmp_path):
    """Lay out models--org--name/{blobs,refs,snapshots} like huggingface_hub does, then load by id."""
    model, inputs = build("resnet", "nonneg")
    model.eval()
    src = tmp_path / "src"
    model.save_pretrained(src)
    repo = tmp_path / "cache" / "models--hf-monosem--tiny-resnet-nonneg"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    import hashlib

    for name in ("config.json", "model.safetensors"):
        data = (src / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    expected = model(**inputs).logits
    torch.save({"x": inputs["pixel_values"], "logits": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, hf_monosem
        from transformers import AutoModelForImageClassification
        io = torch.load({str(tmp_path / "io.pt")!r})
        m = AutoModelForImageClassification.from_pretrained("hf-monosem/tiny-resnet-nonneg").eval()
        assert type(m).__name__ == "MonoSemanticForImageClassification", type(m)
        torch.testing.assert_close(m(pixel_values=io["x"]).logits, io["logits"])
        print("OK")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_public_classes_have_their_docstring():
    import hf_monosem.models as models

    for name in models.__all__:
        obj = getattr(models, name)
        if isinstance(obj, type):
            assert obj.__dict__.get("__doc__"), f"{name} has no docstring of its own"
    assert MonoSemanticForImageClassification.__doc__.startswith("A vision backbone")
    assert MonoSemanticForImageClassification.main_input_name == "pixel_values"


def test_sae_layers_are_initialised_like_saes_in_the_model():
    model, _ = build("bert", "topk", head=False)
    layer = model.feature_layer
    assert torch.allclose(layer.decoder.weight.norm(dim=0), torch.ones(64), atol=1e-5)
    assert torch.equal(layer.encoder.weight, layer.decoder.weight.t()) and not layer.pre_bias.any()
