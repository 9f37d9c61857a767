"""Community SAEs loaded where they were trained: SAE folders written by the real sae-lens (``jumprelu``,
``gated``, ``standard``, ``topk``) and sparsify packages, laid out in a real Hub cache and read offline,
put by ``from_sae`` on the layer their hook names, with codes equal to the library's own ``encode`` of
that layer's output, token by token, pooled over the real tokens. Tiny real Llama and BERT backbones."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hub_cache import add_to_hub_cache
from tiny_models import make_inputs, tiny_bert_config, tiny_llama_config
from transformers import BertModel, LlamaModel

from hf_monosem import MonoSemanticForSequenceClassification, MonoSemanticModel, load_sae, save_sae

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
sae_lens = pytest.importorskip("sae_lens", reason="pip install -e '.[interop]' (scripts/setup.sh does)")
sparsify = pytest.importorskip("sparsify", reason="pip install -e '.[interop]' (scripts/setup.sh does)")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

DIM, WIDTH, K, LAYERS = 32, 128, 8, 3
BACKBONES = {"llama": (LlamaModel, tiny_llama_config), "bert": (BertModel, tiny_bert_config)}
SAELENS = {  # architecture: (config class, SAE class, the layer its hook names)
    "jumprelu": ("JumpReLUSAEConfig", "JumpReLUSAE", 0),
    "gated": ("GatedSAEConfig", "GatedSAE", 1),
    "standard": ("StandardSAEConfig", "StandardSAE", 0),
    "topk": ("TopKSAEConfig", "TopKSAE", 1),
}


def _backbone(family):
    model_class, make_config = BACKBONES[family]
    torch.manual_seed(0)
    return model_class(make_config(hidden_size=DIM, num_hidden_layers=LAYERS)).eval()


def _pooled_mean(codes, mask):
    """The reference pooling, written out: the mean over the real tokens."""
    weights = mask.unsqueeze(-1).float()
    return (codes * weights).sum(1) / weights.sum(1)


def _layer_output(backbone, inputs, layer):
    """transformers' hidden_states[layer + 1]: the output of layer ``layer`` (not the last one here)."""
    with torch.no_grad():
        return backbone(**inputs, output_hidden_states=True).hidden_states[layer + 1]


def _saelens_sae(architecture, hook_name, seed=0):
    config_name, class_name, _ = SAELENS[architecture]
    torch.manual_seed(seed)
    config = getattr(sae_lens, config_name)(
        d_in=DIM,
        d_sae=WIDTH,
        **({"k": K} if architecture == "topk" else {}),
        metadata=SAEMetadata(hook_name=hook_name, model_name="tiny"),
    )
    sae = getattr(sae_lens, class_name)(config)
    with torch.no_grad():  # a trained-looking SAE: every bias and gate parameter set, thresholds > 0
        for name, parameter in sae.named_parameters():
            if name not in ("W_enc", "W_dec"):
                parameter.normal_(0, 0.3)
        if architecture == "jumprelu":
            sae.threshold.abs_()
    return sae.eval()


def _sparsify_coder(backbone, inputs, layer, seed=0):
    """A SparseCoder after a few of its own training steps on that layer's output."""
    torch.manual_seed(seed)
    coder = sparsify.SparseCoder(DIM, sparsify.SparseCoderConfig(num_latents=WIDTH, k=K))
    tokens = _layer_output(backbone, inputs, layer)[inputs["attention_mask"].bool()]
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-2)
    coder.b_dec.data = tokens.mean(0)
    for _ in range(3):
        coder.set_decoder_norm_to_unit_norm()
        coder(tokens).fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
    return coder.eval()


@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_saelens_and_sparsify_saes_from_a_hub_cache_load_on_their_layer(tmp_path, monkeypatch, family):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone, inputs = _backbone(family), make_inputs("text")
    # the repository: one folder per SAE, named by its hook as SAELens releases and sparsify's trainer do
    repo, theirs = tmp_path / "repo", {}
    for architecture, (_, _, layer) in SAELENS.items():
        hook = f"blocks.{layer}.hook_resid_post"
        theirs[architecture] = _saelens_sae(architecture, hook)
        theirs[architecture].save_model(repo / "saelens" / architecture / hook)
    layer_list = sparsify.utils.get_layer_list(backbone)[0]  # "layers" (Llama), "encoder.layer" (BERT)
    coder = _sparsify_coder(backbone, inputs, 0)
    coder.save_to_disk(repo / "sparsify" / f"{layer_list}.0")
    add_to_hub_cache(tmp_path / "cache", "someone/tiny-saes", repo)
    mask = inputs["attention_mask"]

    for architecture, (_, _, layer) in SAELENS.items():
        model = MonoSemanticModel.from_sae(
            backbone,
            "someone/tiny-saes",
            subfolder=f"saelens/{architecture}/blocks.{layer}.hook_resid_post",
            cache_dir=tmp_path / "cache",
            pooling="mean",
        )
        assert model.config.hidden_layer == layer and model.config.feature_layer == {"standard": "sae"}.get(
            architecture, architecture
        )
        with torch.no_grad():
            expected = _pooled_mean(theirs[architecture].encode(_layer_output(backbone, inputs, layer)), mask)
            torch.testing.assert_close(model(**inputs).features, expected, atol=1e-5, rtol=1e-5)

    model = MonoSemanticModel.from_sae(
        backbone,
        "someone/tiny-saes",
        subfolder=f"sparsify/{layer_list}.0",
        cache_dir=tmp_path / "cache",
        pooling="mean",
    )
    assert model.config.hidden_layer == 0 and model.config.feature_layer == "topk"
    with torch.no_grad():
        hidden = _layer_output(backbone, inputs, 0)
        encoded = coder.encode(hidden.flatten(0, 1))
        codes = torch.zeros(encoded.top_acts.shape[0], WIDTH).scatter(
            -1, encoded.top_indices, encoded.top_acts
        )
        expected = _pooled_mean(codes.view(*hidden.shape[:2], WIDTH), mask)
        torch.testing.assert_close(model(**inputs).features, expected, atol=1e-5, rtol=1e-5)


def test_a_gemma_scope_folder_loads_as_saelens_own_loader_reads_it(tmp_path, monkeypatch):
    """Gemma Scope's layout (``layer_N/width_16k/average_l0_M/params.npz`` in a ``-res`` repository), read
    from the Hub cache by us and by SAELens' own Gemma Scope loader (sizes overridden to the tiny ones)."""
    import huggingface_hub
    from sae_lens.loading.pretrained_sae_loaders import (
        gemma_2_sae_huggingface_loader,
        handle_config_defaulting,
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    generator = np.random.default_rng(0)
    folder = "layer_1/width_16k/average_l0_71"
    params = {  # DeepMind's names and shapes ([d_in, d_sae] encoder), float32 as released
        "W_enc": generator.normal(0, 0.3, (DIM, WIDTH)),
        "W_dec": generator.normal(0, 0.3, (WIDTH, DIM)),
        "b_enc": generator.normal(0, 0.3, WIDTH),
        "b_dec": generator.normal(0, 0.3, DIM),
        "threshold": np.abs(generator.normal(0, 0.3, WIDTH)),
    }
    (tmp_path / "repo" / folder).mkdir(parents=True)
    np.savez(
        tmp_path / "repo" / folder / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()}
    )
    add_to_hub_cache(tmp_path / "cache", "google/gemma-scope-2b-pt-res", tmp_path / "repo")

    config, state, _ = gemma_2_sae_huggingface_loader(
        "google/gemma-scope-2b-pt-res", folder, cfg_overrides={"d_in": DIM, "d_sae": WIDTH}
    )
    assert config["hook_name"] == "blocks.1.hook_resid_post" and not config["apply_b_dec_to_input"]
    # what SAELens' SAE.from_pretrained does with the loader's output
    theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig.from_dict(handle_config_defaulting(config)))
    theirs.load_state_dict(state)
    backbone, inputs = _backbone("llama"), make_inputs("text")
    model = MonoSemanticModel.from_sae(
        backbone, "google/gemma-scope-2b-pt-res", subfolder=folder, pooling="mean"
    )
    assert model.config.hidden_layer == 1 and model.config.feature_layer == "jumprelu"
    with torch.no_grad():
        expected = _pooled_mean(theirs.encode(_layer_output(backbone, inputs, 1)), inputs["attention_mask"])
        torch.testing.assert_close(model(**inputs).features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["jumprelu", "gated"])
def test_our_jumprelu_and_gated_layers_export_to_saelens_on_their_hook(tmp_path, kind):
    backbone, inputs = _backbone("bert"), make_inputs("text")
    model = MonoSemanticModel.from_sae(backbone, _saved(tmp_path / "in", kind, "blocks.1.hook_resid_post"))
    save_sae(model, tmp_path / "out", format="saelens")
    config = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert config["architecture"] == kind and config["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "out")
    hidden = _layer_output(backbone, inputs, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            theirs.encode(hidden), model.feature_layer(hidden)[0], atol=1e-5, rtol=1e-5
        )
    again = MonoSemanticForSequenceClassification.from_sae(backbone, tmp_path / "out", num_labels=2)
    assert again.config.hidden_layer == 1 and again.config.feature_layer == kind


def _saved(folder, architecture, hook):
    _saelens_sae(architecture, hook).save_model(folder)
    return folder


def test_hooks_that_are_not_a_layer_output_are_named(tmp_path):
    llama = _backbone("llama")
    with pytest.raises(ValueError, match="hook 'blocks.0.hook_mlp_out' is not the output of a layer"):
        MonoSemanticModel.from_sae(llama, _saved(tmp_path / "mlp", "jumprelu", "blocks.0.hook_mlp_out"))
    coder = sparsify.SparseCoder(DIM, sparsify.SparseCoderConfig(num_latents=WIDTH, k=K))
    coder.save_to_disk(tmp_path / "h.0")  # GPT-2's layer list, not this Llama's
    with pytest.raises(ValueError, match=r"hook 'h.0' is not the output of a layer; allowed: .*'layers.N'"):
        MonoSemanticModel.from_sae(llama, tmp_path / "h.0")
    # the checkpoint's placement is overridden by hidden_layer=
    model = MonoSemanticModel.from_sae(llama, tmp_path / "h.0", hidden_layer=2)
    assert model.config.hidden_layer == 2
    layer, info = load_sae(tmp_path / "h.0")
    assert info["hook_name"] == "h.0" and layer.kind == "topk"


def test_the_readme_gemma_scope_command(tmp_path, monkeypatch):
    """The README's Gemma Scope command, as printed, on a tiny Gemma 2 (21 layers of width 32, a word-level
    tokenizer) and a Gemma-Scope-shaped ``params.npz`` laid out under the same Hub ids in a Hub cache."""
    import re
    from pathlib import Path

    import huggingface_hub
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    config = Gemma2Config(
        vocab_size=16, hidden_size=DIM, intermediate_size=64, num_hidden_layers=21, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    Gemma2Model(config).save_pretrained(tmp_path / "gemma")
    words = "The Eiffel Tower is in Paris".split()
    tokenizer = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(tmp_path / "gemma")
    add_to_hub_cache(tmp_path / "cache", "google/gemma-2-2b", tmp_path / "gemma")
    folder = tmp_path / "scope" / "layer_20" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    np.savez(
        folder / "params.npz",
        W_enc=generator.normal(0, 0.3, (DIM, WIDTH)).astype(np.float32),
        W_dec=generator.normal(0, 0.3, (WIDTH, DIM)).astype(np.float32),
        b_enc=np.zeros(WIDTH, np.float32),
        b_dec=np.zeros(DIM, np.float32),
        threshold=np.full(WIDTH, 0.05, np.float32),
    )
    add_to_hub_cache(tmp_path / "cache", "google/gemma-scope-2b-pt-res", tmp_path / "scope")

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Community SAEs, loaded where they were trained", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    model, codes = namespace["model"], namespace["codes"]
    assert (model.config.hidden_layer, model.config.feature_layer) == (20, "jumprelu")
    assert codes.shape == (1, WIDTH) and bool((codes > 0).any())
