"""``from_pretrained`` options reach the backbone (issue #12): ``attn_implementation`` and ``dtype`` through
the config's nested backbone, and ``revision``, ``token``, ``trust_remote_code``, ``cache_dir``,
``attn_implementation``, ``dtype`` on the Hub-id path (a backbone named by its Hub id, here resolved from
a Hub cache laid out in a temporary folder, offline)."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from hub_cache import add_to_hub_cache
from tiny_models import tiny_llama_config
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, LlamaModel

from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def hub_backbone(tmp_path_factory):
    """A tiny Llama in a Hub cache with two commits (an old one, then main); returns (cache, old, main)."""
    cache = tmp_path_factory.mktemp("hub")
    commits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp(f"llama{seed}")
        LlamaModel(tiny_llama_config()).save_pretrained(folder)
        commits.append(add_to_hub_cache(cache, REPO, folder))
    return str(cache), commits[0], commits[1]


def embeddings(model):
    return model.backbone.get_input_embeddings().weight.detach().float()


def hub_weights(cache, revision):
    return (
        AutoModel.from_pretrained(REPO, cache_dir=cache, revision=revision)
        .get_input_embeddings()
        .weight.float()
    )


def classifier(**config_kwargs):
    torch.manual_seed(0)
    return MonoSemanticForSequenceClassification(
        MonoSemanticConfig(feature_layer="nonneg", feature_dim=64, num_labels=2, **config_kwargs)
    )


def test_from_pretrained_attn_implementation_reaches_the_backbone(tmp_path):
    model = classifier(backbone_config=tiny_llama_config())
    assert model.backbone.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path / "ckpt")
    eager = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt", attn_implementation="eager")
    assert eager.backbone.config._attn_implementation == "eager"
    assert eager.config.backbone_config._attn_implementation == "eager"
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt")
    assert again.backbone.config._attn_implementation == "sdpa"
    ids = torch.randint(1, 100, (2, 5))
    torch.testing.assert_close(eager.eval()(input_ids=ids).logits, again.eval()(input_ids=ids).logits)


def test_from_pretrained_dtype_reaches_the_nested_backbone(tmp_path):
    classifier(backbone_config=tiny_llama_config()).save_pretrained(tmp_path / "ckpt")
    half = MonoSemanticForSequenceClassification.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert half.backbone.dtype == half.classifier.weight.dtype == torch.bfloat16
    assert half.config.backbone_config.dtype == torch.bfloat16


def test_hub_id_backbone_gets_revision_cache_dir_attn_and_dtype(hub_backbone):
    cache, old, main = hub_backbone
    model = classifier(
        backbone=REPO,
        backbone_loading_kwargs={
            "revision": old,
            "cache_dir": cache,
            "attn_implementation": "eager",
            "dtype": "bfloat16",
        },
    )
    torch.testing.assert_close(embeddings(model), hub_weights(cache, old).bfloat16().float())
    assert not torch.equal(embeddings(model), hub_weights(cache, main).bfloat16().float())
    assert model.backbone.config._attn_implementation == "eager" and model.backbone.dtype == torch.bfloat16
    assert model.classifier.weight.dtype == torch.bfloat16
    # the default revision is main
    latest = classifier(backbone=REPO, backbone_loading_kwargs={"cache_dir": cache})
    torch.testing.assert_close(embeddings(latest), hub_weights(cache, main))
    assert latest.backbone.config._attn_implementation == "sdpa"


def test_token_and_trust_remote_code_reach_the_hub_calls_and_are_never_saved(tmp_path, hub_backbone):
    cache, old, _ = hub_backbone
    options = {"cache_dir": cache, "revision": old, "token": "hf_not_a_real_token", "trust_remote_code": True}
    with (
        mock.patch.object(AutoConfig, "from_pretrained", wraps=AutoConfig.from_pretrained) as read_config,
        mock.patch.object(AutoModel, "from_pretrained", wraps=AutoModel.from_pretrained) as read_model,
    ):
        model = classifier(backbone=REPO, backbone_loading_kwargs=options)
    for call in (read_config.call_args, read_model.call_args):
        assert call.args[0] == REPO and {k: call.kwargs.get(k) for k in options} == options
    assert model.config.backbone_loading_kwargs == options
    model.save_pretrained(tmp_path / "ckpt")
    saved = (tmp_path / "ckpt" / "config.json").read_text()
    assert "hf_not_a_real_token" not in saved and "backbone_loading_kwargs" not in saved
    assert json.loads(saved)["backbone"] == REPO


def test_from_backbone_with_a_hub_id_takes_the_loading_options(hub_backbone):
    cache, old, _ = hub_backbone
    model = MonoSemanticForSequenceClassification.from_backbone(
        REPO,
        revision=old,
        cache_dir=cache,
        attn_implementation="eager",
        dtype=torch.bfloat16,
        feature_layer="linear",
        feature_dim=64,
        num_labels=2,
    )
    torch.testing.assert_close(embeddings(model), hub_weights(cache, old).bfloat16().float())
    assert model.backbone.config._attn_implementation == "eager"
    assert model.backbone.dtype == model.feature_layer.project.weight.dtype == torch.bfloat16


def test_unknown_loading_option_is_named():
    with pytest.raises(ValueError, match="'revison'.*allowed: revision, token"):
        MonoSemanticConfig(backbone_config=tiny_llama_config(), backbone_loading_kwargs={"revison": "main"})
