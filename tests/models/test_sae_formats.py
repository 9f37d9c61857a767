"""SAEs to and from SAELens and sparsify, checked against the real libraries (the ``interop`` extra,
installed by scripts/setup.sh): the same codes on the same inputs both ways, and export -> import is
the identity. Also the Hub route of ``from_sae`` (a repository in the local Hub cache, offline)."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from hub_cache import add_to_hub_cache
from tiny_models import tiny_bert_config
from transformers import BertModel

from hf_monosem import MonoSemanticForSequenceClassification, MonoSemanticModel, load_sae, save_sae
from hf_monosem.models import FeatureLayerSettings, SparseAutoencoderFeatures, TopKSparseAutoencoderFeatures

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sae_lens = pytest.importorskip("sae_lens", reason="pip install -e '.[interop]' (scripts/setup.sh does)")
sparsify = pytest.importorskip("sparsify", reason="pip install -e '.[interop]' (scripts/setup.sh does)")

DIM, WIDTH, K = 32, 128, 8
ATOL = 1e-5


def _layer(kind="topk", normalize_input=True, seed=0):
    torch.manual_seed(seed)
    settings = FeatureLayerSettings(
        feature_dim=WIDTH, topk=K, sae_normalize_input=normalize_input, sparsity_weight=0.01
    )
    layer = (TopKSparseAutoencoderFeatures if kind == "topk" else SparseAutoencoderFeatures)(DIM, settings)
    with torch.no_grad():  # a fitted-looking layer: biases set, decoder columns not all unit norm
        layer.pre_bias.normal_(0, 0.05)
        layer.encoder.bias.normal_(0, 0.05)
        layer.decoder.weight.mul_(torch.rand(WIDTH) + 0.5)
    return layer.eval()


def _inputs(n=64, seed=1):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)) * 4 + 1


def _dense(values, indices):
    return torch.zeros(values.shape[0], WIDTH).scatter(-1, indices, values.float())


@pytest.mark.parametrize("kind", ["topk", "sae"])
@pytest.mark.parametrize("normalize_input", [True, False, "fit"])
def test_saelens_reads_our_sae_with_the_same_codes(tmp_path, kind, normalize_input):
    layer = _layer(kind, normalize_input)
    folder = save_sae(layer, tmp_path / "sae", format="saelens", backbone="org/encoder", pooling="mean")
    config = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert config["architecture"] == {"topk": "topk", "sae": "standard"}[kind]
    # "fit" (normalised while fitting only) encodes the raw vector: SAELens' "none"
    assert config["normalize_activations"] == ("constant_norm_rescale" if normalize_input is True else "none")
    assert config["metadata"]["hf_monosem"]["normalize_input"] == normalize_input
    assert (
        config["metadata"]["model_name"] == "org/encoder" and config["metadata"]["hook_name"] == "pooled.mean"
    )

    theirs = sae_lens.SAE.load_from_disk(folder)
    assert type(theirs).__name__ == {"topk": "TopKSAE", "sae": "StandardSAE"}[kind]
    assert theirs.cfg.metadata.model_name == "org/encoder"
    x = _inputs()
    with torch.no_grad():
        ours, _ = layer(x)
        codes = theirs.encode(x)
        torch.testing.assert_close(codes, ours, atol=ATOL, rtol=1e-5)
        # their reconstruction is ours, in the input's scale (ours lives in the normalised space)
        reconstruction = layer.decode(ours)
        scale = x.norm(dim=-1, keepdim=True) if normalize_input is True else 1.0
        torch.testing.assert_close(theirs(x), reconstruction * scale, atol=1e-4, rtol=1e-4)
    if kind == "topk":
        assert ((codes != 0).sum(-1) <= K).all()


@pytest.mark.parametrize("normalize_input", [True, False, "fit"])
def test_sparsify_reads_our_topk_sae_with_the_same_codes(tmp_path, normalize_input):
    layer = _layer("topk", normalize_input)
    folder = save_sae(layer, tmp_path / "sae", format="sparsify")
    coder = sparsify.SparseCoder.load_from_disk(folder)
    assert coder.cfg.k == K and coder.num_latents == WIDTH and coder.d_in == DIM
    x = _inputs()
    with torch.no_grad():
        ours, _ = layer(x)
        # sparsify has no input normalisation: it reads the normalised vector (cfg.json says so)
        fed = F.normalize(x, dim=-1) if normalize_input is True else x
        encoded = coder.encode(fed)
        torch.testing.assert_close(_dense(encoded.top_acts, encoded.top_indices), ours, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(coder(fed).sae_out, layer.decode(ours), atol=1e-4, rtol=1e-4)
    assert (
        json.loads((tmp_path / "sae" / "cfg.json").read_text())["hf_monosem"]["normalize_input"]
        == normalize_input
    )


def test_relu_sae_has_no_sparsify_format(tmp_path):
    with pytest.raises(ValueError, match="sparsify has TopK sparse coders only"):
        save_sae(_layer("sae"), tmp_path, format="sparsify")
    with pytest.raises(ValueError, match="format='onnx' is not valid"):
        save_sae(_layer("topk"), tmp_path, format="onnx")
    with pytest.raises(ValueError, match="is not a sparse autoencoder"):
        save_sae(torch.nn.Linear(2, 2), tmp_path)


def _sparsify_trained(seed=0, steps=3):
    """A sparsify SparseCoder after a few of its own training steps (biases and decoder moved)."""
    torch.manual_seed(seed)
    coder = sparsify.SparseCoder(DIM, sparsify.SparseCoderConfig(num_latents=WIDTH, k=K))
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-2)
    x = _inputs(128, seed=5)
    coder.b_dec.data = x.mean(0)
    for _ in range(steps):
        coder.set_decoder_norm_to_unit_norm()
        coder(x).fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
    return coder


def test_a_sparsify_coder_becomes_a_feature_layer_with_the_same_codes(tmp_path):
    coder = _sparsify_trained()
    coder.save_to_disk(tmp_path / "coder")
    bert = BertModel(tiny_bert_config(hidden_size=DIM)).eval()
    model = MonoSemanticModel.from_sae(bert, tmp_path / "coder", pooling="mean")
    layer = model.feature_layer
    assert (layer.kind, layer.k, layer.feature_dim, layer.normalize_input) == ("topk", K, WIDTH, False)
    assert model.config.freeze_backbone and model.config.pooling == "mean"
    x = _inputs()
    ids = torch.randint(5, 100, (4, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoded = coder.encode(x)
        torch.testing.assert_close(
            layer(x)[0], _dense(encoded.top_acts, encoded.top_indices), atol=ATOL, rtol=1e-5
        )
        out = model(input_ids=ids)  # end to end: backbone -> pooled vector -> the coder's codes
        encoded = coder.encode(out.pooled)
        torch.testing.assert_close(
            out.features, _dense(encoded.top_acts, encoded.top_indices), atol=ATOL, rtol=1e-5
        )


@pytest.mark.parametrize("normalization", ["none", "constant_norm_rescale"])
def test_a_saelens_topk_sae_becomes_a_feature_layer_with_the_same_codes(tmp_path, normalization):
    """SAELens' own files, with the options the mapping folds into the weights."""
    torch.manual_seed(0)
    cfg = sae_lens.TopKSAEConfig(
        d_in=DIM,
        d_sae=WIDTH,
        k=K,
        normalize_activations=normalization,
        apply_b_dec_to_input=False,
        rescale_acts_by_decoder_norm=True,
    )
    theirs = sae_lens.TopKSAE(cfg)
    with torch.no_grad():
        theirs.b_enc.normal_(0, 0.1)
        theirs.b_dec.normal_(0, 0.5)
        theirs.W_dec.mul_(torch.rand(WIDTH, 1) + 0.5)
    theirs.save_model(tmp_path / "theirs")
    layer, info = load_sae(tmp_path / "theirs")
    assert (
        info["format"] == "saelens"
        and layer.kind == "topk"
        and layer.normalize_input is (normalization != "none")
    )
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], theirs.encode(x), atol=ATOL, rtol=1e-5)


def test_a_saelens_standard_sae_becomes_an_sae_layer(tmp_path):
    torch.manual_seed(0)
    theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=DIM, d_sae=WIDTH))
    with torch.no_grad():
        theirs.b_enc.normal_(0, 0.1)
        theirs.b_dec.normal_(0, 0.5)
    theirs.save_model(tmp_path / "theirs")
    bert = BertModel(tiny_bert_config(hidden_size=DIM))
    model = MonoSemanticForSequenceClassification.from_sae(bert, tmp_path / "theirs", num_labels=3)
    assert model.config.feature_layer == "sae" and model.config.num_labels == 3
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.feature_layer(x)[0], theirs.encode(x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("format", ["saelens", "sparsify"])
@pytest.mark.parametrize("normalize_input", [True, False, "fit"])
def test_export_then_import_is_the_identity(tmp_path, format, normalize_input):
    bert = BertModel(tiny_bert_config(hidden_size=DIM))
    fitted = MonoSemanticModel.from_backbone(
        bert,
        feature_layer="topk",
        feature_dim=WIDTH,
        topk=K,
        sae_normalize_input=normalize_input,
        pooling="cls",
    )
    with torch.no_grad():
        fitted.feature_layer.load_state_dict(_layer("topk", normalize_input).state_dict())
    save_sae(fitted, tmp_path / "sae", format=format)
    model = MonoSemanticModel.from_sae(bert, tmp_path / "sae")
    assert model.config.pooling == "cls" and model.config.topk == K
    assert model.config.sae_normalize_input == normalize_input
    assert model.feature_layer.input_normalization == fitted.feature_layer.input_normalization
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.feature_layer(x)[0], fitted.feature_layer(x)[0], atol=1e-5, rtol=1e-5
        )
    for name, tensor in fitted.feature_layer.state_dict().items():
        torch.testing.assert_close(
            model.feature_layer.state_dict()[name], tensor, atol=1e-6, rtol=1e-6, msg=name
        )


def test_relu_export_then_import_keeps_the_loss_weights(tmp_path):
    layer = _layer("sae", normalize_input=False)
    save_sae(layer, tmp_path, format="saelens")
    loaded, _ = load_sae(tmp_path)
    assert loaded.kind == "sae" and loaded.settings.sparsity_weight == 0.01 and not loaded.normalize_input
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], layer(x)[0], atol=1e-6)


def test_from_sae_reads_a_hub_repository_offline(tmp_path, monkeypatch):
    """A Hub id with the SAE in a subfolder, resolved from the local Hub cache (HF_HUB_OFFLINE=1)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    coder = _sparsify_trained(seed=1)
    coder.save_to_disk(tmp_path / "repo" / "layers.0")
    (tmp_path / "repo" / "README.md").write_text("sparse coders\n")
    add_to_hub_cache(tmp_path / "cache", "someone/minilm-saes", tmp_path / "repo")
    bert = BertModel(tiny_bert_config(hidden_size=DIM))
    # "layers.0" is a Llama hookpoint, not one of this BERT's layers: hidden_layer=None puts it on the pooled
    # vector (from_sae would refuse the hook otherwise, see test_community_saes.py)
    model = MonoSemanticModel.from_sae(
        bert,
        "someone/minilm-saes",
        subfolder="layers.0",
        cache_dir=tmp_path / "cache",
        normalize_input=True,
        hidden_layer=None,
    )
    assert model.feature_layer.normalize_input  # the override
    x = _inputs()
    with torch.no_grad():
        encoded = coder.encode(F.normalize(x, dim=-1))
        torch.testing.assert_close(
            model.feature_layer(x)[0], _dense(encoded.top_acts, encoded.top_indices), atol=ATOL, rtol=1e-5
        )
    with pytest.raises(FileNotFoundError, match="pass subfolder="):
        MonoSemanticModel.from_sae(bert, "someone/minilm-saes", cache_dir=tmp_path / "cache")


def test_from_sae_checks_the_backbone_width_and_its_own_arguments(tmp_path):
    save_sae(_layer("topk"), tmp_path, format="saelens")
    with pytest.raises(ValueError, match="reads 32-d vectors, but this backbone's pooled vector is 48-d"):
        MonoSemanticModel.from_sae(BertModel(tiny_bert_config(hidden_size=48)), tmp_path)
    with pytest.raises(ValueError, match=r"\['topk'\] are set by the SAE checkpoint"):
        MonoSemanticModel.from_sae(BertModel(tiny_bert_config(hidden_size=DIM)), tmp_path, topk=3)


def test_the_readme_example_runs():
    """The README's "SAEs from and to SAELens / sparsify" snippet, as printed."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## SAEs from and to SAELens / sparsify", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(snippet, "README.md", "exec"), {})
