"""The paths a transformers user takes, on tiny real backbones saved and reloaded: batched pipelines, the
plain ``Trainer`` with the tutorial's ``compute_metrics``, resized vocabularies, hidden states and attentions,
``return_dict=False``, configs built with no arguments, modality checks and plain Hub checkpoints.

Each test compares with what a stock transformers model does on the same input where there is one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hub_cache import add_to_hub_cache
from tiny_models import tiny_bert_config, tiny_llama_config, tiny_resnet_config, tiny_vit_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    LlamaModel,
    Trainer,
    TrainingArguments,
    ViTImageProcessor,
    pipeline,
)

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = {0: "negative", 1: "positive"}


def _tokenizer(folder):
    vocab = folder / "vocab.txt"
    words = ["a", "b", "c", "d", "e", "f", "g", "good", "bad"]
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"w{i}" for i in range(86)]])
    )
    return BertTokenizerFast(vocab_file=str(vocab))


def _saved_classifier(tmp_path, modality, feature_layer="sae"):
    """A tiny BERT (text) or ViT (image) classifier saved with its tokenizer / image processor in one folder,
    as a user's fine-tuned checkpoint is."""
    folder = tmp_path / modality
    text = modality == "text"
    config = MonoSemanticConfig(
        backbone_config=tiny_bert_config() if text else tiny_vit_config(),
        feature_layer=feature_layer,
        feature_dim=64,
        num_labels=2,
        id2label=LABELS,
    )
    torch.manual_seed(0)
    (MonoSemanticForSequenceClassification if text else MonoSemanticForImageClassification)(
        config
    ).save_pretrained(folder)
    processor = _tokenizer(tmp_path) if text else ViTImageProcessor(size={"height": 16, "width": 16})
    processor.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------- 1. batched pipelines
@pytest.mark.parametrize("feature_layer", ["sae", "topk", "nonneg"])
def test_text_classification_pipeline_batches_like_one_by_one(tmp_path, feature_layer):
    folder = _saved_classifier(tmp_path, "text", feature_layer)
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    texts = ["a b c", "d e f g", "good", "bad bad a"]
    one_by_one = [classify(text)[0] for text in texts]
    batched = classify(texts, batch_size=2)
    assert [r["label"] for r in batched] == [r["label"] for r in one_by_one]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in one_by_one], abs=1e-5)
    assert {r["label"] for r in batched} <= set(LABELS.values())


def test_image_classification_pipeline_batches(tmp_path):
    from PIL import Image

    folder = _saved_classifier(tmp_path, "image")
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    one_by_one = [classify(image, top_k=2) for image in images]
    batched = classify(images, batch_size=2, top_k=2)
    assert len(batched) == 3
    for single, batch in zip(one_by_one, batched):
        assert [r["label"] for r in batch] == [r["label"] for r in single]
        assert [r["score"] for r in batch] == pytest.approx([r["score"] for r in single], abs=1e-5)


def test_feature_extraction_pipeline_batches_on_the_base_model(tmp_path):
    folder = tmp_path / "base"
    config = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="sae", feature_dim=64)
    MonoSemanticModel(config).save_pretrained(folder)
    _tokenizer(tmp_path).save_pretrained(folder)
    extract = pipeline("feature-extraction", model=str(folder), device="cpu")
    texts = ["a b c", "d e f g", "good"]
    one_by_one = [np.asarray(extract(text)) for text in texts]
    batched = [np.asarray(out) for out in extract(texts, batch_size=2)]
    assert [b.shape for b in batched] == [(1, 64)] * 3  # one feature vector per text
    for single, batch in zip(one_by_one, batched):
        np.testing.assert_allclose(batch, single, atol=1e-5)


def test_auxiliary_terms_still_come_with_labels_training_or_when_asked():
    model = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(
            backbone_config=tiny_bert_config(), feature_layer="sae", feature_dim=64, num_labels=2
        )
    ).eval()
    ids = torch.randint(5, 100, (2, 6))
    assert model(input_ids=ids).aux_losses is None  # inference: what a pipeline sees
    with_labels = model(input_ids=ids, labels=torch.tensor([0, 1]))
    assert sorted(with_labels.aux_losses) == ["reconstruction_loss", "sparsity_loss"]
    asked = model(input_ids=ids, output_aux_losses=True)
    torch.testing.assert_close(asked.aux_losses, with_labels.aux_losses)
    assert sorted(model.train()(input_ids=ids).aux_losses) == ["reconstruction_loss", "sparsity_loss"]


# ------------------------------------------------------------------------ 2. the plain Trainer
def test_plain_trainer_with_the_tutorial_compute_metrics(tmp_path):
    import datasets

    tokenizer = _tokenizer(tmp_path)
    rows = {
        "text": ["a b c", "good", "bad d", "e f g a", "good good", "bad"] * 2,
        "label": [0, 1, 0, 1, 1, 0] * 2,
    }
    data = datasets.Dataset.from_dict(rows).map(
        lambda b: tokenizer(b["text"], padding="max_length", max_length=8), batched=True
    )
    model = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(
            backbone_config=tiny_bert_config(), feature_layer="topk", feature_dim=64, num_labels=2
        )
    )

    def compute_metrics(eval_pred):  # the transformers tutorial's, verbatim
        logits, labels = eval_pred
        predictions = np.argmax(logits, axis=-1)
        return {"accuracy": float((predictions == labels).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_eval_batch_size=4, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args, eval_dataset=data, compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    prediction = trainer.predict(data)
    assert isinstance(prediction.predictions, np.ndarray) and prediction.predictions.shape == (12, 2)


# -------------------------------------------------------------------- 3. resized vocabularies
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_resized_vocabulary_saves_and_reloads(tmp_path, family):
    backbone = tiny_bert_config() if family == "bert" else tiny_llama_config()
    model = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(backbone_config=backbone, feature_layer="nonneg", feature_dim=64, num_labels=2)
    )
    model.resize_token_embeddings(120)
    assert model.config.backbone_config.vocab_size == 120
    assert model.config.get_text_config() is model.config.backbone_config
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.get_input_embeddings().weight.shape[0] == 120
    ids = torch.tensor([[119, 3, 7]])
    torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


# ---------------------------------------------------------- 4. hidden states and attentions
@pytest.mark.parametrize("family", ["bert", "vit", "resnet"])
def test_hidden_states_and_attentions_are_the_backbones(family):
    backbone_config = {"bert": tiny_bert_config, "vit": tiny_vit_config, "resnet": tiny_resnet_config}[
        family
    ]()
    backbone_config._attn_implementation = "eager"  # attentions need the eager kernel, as in transformers
    model = MonoSemanticForSequenceClassification if family == "bert" else MonoSemanticForImageClassification
    model = model(MonoSemanticConfig(backbone_config=backbone_config, feature_dim=64, num_labels=2)).eval()
    if family == "bert":
        inputs = {"input_ids": torch.randint(5, 100, (2, 6))}
    else:
        inputs = {"pixel_values": torch.randn(2, backbone_config.num_channels, 16, 16)}
    out = model(**inputs, output_hidden_states=True)
    reference = model.backbone(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == len(reference.hidden_states) > 1
    torch.testing.assert_close(out.hidden_states[-1], reference.hidden_states[-1])
    if family != "resnet":  # conv nets have no attention
        out = model(**inputs, output_attentions=True)
        assert len(out.attentions) == backbone_config.num_hidden_layers
        assert out.attentions[0].shape[:2] == (2, backbone_config.num_attention_heads)


def test_an_unknown_argument_is_still_refused_by_name():
    model = MonoSemanticForSequenceClassification(
        MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_dim=64, num_labels=2)
    )
    with pytest.raises(ValueError, match=r"\['pixel_mask'\]"):
        model(input_ids=torch.randint(5, 100, (2, 6)), pixel_mask=torch.ones(2, 6))


# ----------------------------------------------------------------------- 7. return_dict=False
def test_return_dict_false_gives_a_tuple_as_bert_does(tmp_path):
    config = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_dim=64, num_labels=2)
    model = MonoSemanticForSequenceClassification(config).eval()
    ids, labels = torch.randint(5, 100, (2, 6)), torch.tensor([0, 1])
    out = model(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[1], model(input_ids=ids).logits)  # (loss, logits, ...) as BERT's
    model.config.return_dict = False
    assert isinstance(model(input_ids=ids), tuple)
    assert isinstance(model.monosemantic(input_ids=ids), tuple)
    assert isinstance(model(input_ids=ids, return_dict=True).logits, torch.Tensor)


# ---------------------------------------------------------------- 8. configs with no arguments
def test_config_builds_with_no_arguments_and_the_model_says_what_is_missing():
    config = MonoSemanticConfig()
    assert config.backbone_config is None and config.feature_layer == "nonneg"
    assert AutoConfig.for_model("monosemantic").model_type == "monosemantic"
    assert MonoSemanticConfig.from_dict(config.to_dict()).backbone_config is None
    with pytest.raises(ValueError, match="backbone"):
        MonoSemanticModel(config)
    with pytest.raises(ValueError, match="feature_layer='sparse'"):  # what needs no backbone is still checked
        MonoSemanticConfig(feature_layer="sparse")


# ----------------------------------------------------------------------- 9. modality checks
def test_a_text_checkpoint_is_refused_by_the_image_auto_class_and_back(tmp_path):
    text = _saved_classifier(tmp_path, "text", "linear")
    with pytest.raises(ValueError, match="text.*AutoModelForSequenceClassification"):
        AutoModelForImageClassification.from_pretrained(text)
    image = _saved_classifier(tmp_path, "image", "linear")
    with pytest.raises(ValueError, match="image.*AutoModelForImageClassification"):
        AutoModelForSequenceClassification.from_pretrained(image)
    # the right classes and the modality-free base model still load both
    assert type(AutoModelForImageClassification.from_pretrained(image)) is MonoSemanticForImageClassification
    assert type(AutoModel.from_pretrained(text)) is MonoSemanticModel


# ------------------------------------------------------- 5. a plain Hub checkpoint by its id
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_plain_hub_checkpoint_gets_the_from_backbone_advice(tmp_path, family):
    plain = tmp_path / "plain"
    (BertModel(tiny_bert_config()) if family == "bert" else LlamaModel(tiny_llama_config())).save_pretrained(
        plain
    )
    cache = tmp_path / "cache"
    add_to_hub_cache(cache, f"org/tiny-{family}", plain)
    with pytest.raises(ValueError, match=rf"org/tiny-{family}.*model_type='{family}'.*from_backbone"):
        MonoSemanticForSequenceClassification.from_pretrained(f"org/tiny-{family}", cache_dir=str(cache))
    # what the message advises works, from the same cache
    model = MonoSemanticForSequenceClassification.from_backbone(
        f"org/tiny-{family}", cache_dir=str(cache), feature_dim=64, num_labels=2
    )
    assert model.config.backbone == f"org/tiny-{family}"


# ------------------------------------- what already worked, kept proven (the README's Compatibility table)
def _bert_classifier(**backbone_overrides):
    torch.manual_seed(0)
    config = MonoSemanticConfig(
        backbone_config=tiny_bert_config(**backbone_overrides),
        feature_layer="sae",
        feature_dim=64,
        num_labels=2,
    )
    return MonoSemanticForSequenceClassification(config)


def test_device_map_and_sharded_checkpoints_load_like_transformers(tmp_path):
    model = _bert_classifier().eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(
        list(tmp_path.glob("*.safetensors"))
    ) > 1
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, device_map="cpu")
    ids = torch.randint(5, 100, (2, 6))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert {p.device.type for p in reloaded.parameters()} == {"cpu"}


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = {"input_ids": torch.randint(5, 100, (4, 6)), "labels": torch.tensor([0, 1, 1, 0])}
    grads = []
    for checkpointing in (False, True):
        model = _bert_classifier(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.backbone.is_gradient_checkpointing
        model(**inputs).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_torch_compile_and_export_give_the_eager_logits():
    model = _bert_classifier().eval()
    ids = torch.randint(5, 100, (2, 6))
    eager = model(input_ids=ids).logits
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(input_ids=ids).logits, eager)
    exported = torch.export.export(model, args=(), kwargs={"input_ids": ids})
    torch.testing.assert_close(exported.module()(input_ids=ids).logits, eager)
