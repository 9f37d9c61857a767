"""Bad input gets a clear error naming the value, before any work is done."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_models import tiny_bert_config, tiny_resnet_config, tiny_vit_config
from transformers import AutoModelForImageClassification, BertModel

from hf_monosem import MonoSemanticConfig, MonoSemanticForImageClassification
from hf_monosem.data.validation import validate_classification_dataset
from hf_monosem.models.loading import check_checkpoint_folder


def images(n=6, channels=1, size=28, labels=None):
    x = np.random.default_rng(0).normal(size=(n, channels, size, size)).astype("float32")
    return Dataset.from_dict(
        {"pixel_values": x, "label": labels if labels is not None else [i % 3 for i in range(n)]}
    )


RESNET = MonoSemanticConfig(backbone_config=tiny_resnet_config(), feature_dim=16, num_labels=3)


def test_good_dataset_passes():
    validate_classification_dataset(images(), RESNET)


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        (images().select([]), {}, "empty"),
        (images(), {"label_column": "target"}, "label column 'target' not in"),
        (images(labels=[0, 1, 2, 3, 0, 1]), {}, "found 3"),
        (images(labels=[0, -1, 2, 1, 0, 1]), {}, "found -1"),
        (images(labels=[0.5, 1, 2, 1, 0, 1]), {}, "integer class ids"),
        (images(labels=["a", "b", "c", "a", "b", "c"]), {}, "integer class ids"),
        (images(channels=3), {}, "3 channel(s)"),
        (Dataset.from_dict({"text": ["hi"], "label": [0]}), {}, "no model input column"),
    ],
)
def test_bad_datasets_are_named(dataset, kwargs, message):
    with pytest.raises(ValueError) as err:
        validate_classification_dataset(dataset, RESNET, **kwargs)
    assert message in str(err.value)


def test_nan_and_inf_pixels_are_found_with_their_row():
    x = np.zeros((5, 1, 28, 28), dtype="float32")
    x[3, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        validate_classification_dataset(Dataset.from_dict({"pixel_values": x, "label": [0] * 5}), RESNET)
    x[3, 0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        validate_classification_dataset(Dataset.from_dict({"pixel_values": x, "label": [0] * 5}), RESNET)


def test_wrong_image_size_for_vit():
    vit = MonoSemanticConfig(backbone_config=tiny_vit_config(), feature_dim=16, num_labels=3)
    with pytest.raises(ValueError, match="image_size=16"):
        validate_classification_dataset(images(channels=3, size=32), vit)


def test_checkpoint_folder_problems(tmp_path):
    model = MonoSemanticForImageClassification(RESNET)
    good = tmp_path / "good"
    model.save_pretrained(good)
    check_checkpoint_folder(good)

    missing_weights = tmp_path / "noweights"
    missing_weights.mkdir()
    (missing_weights / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        AutoModelForImageClassification.from_pretrained(missing_weights)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((good / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        MonoSemanticForImageClassification.from_pretrained(corrupt)

    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MonoSemanticForImageClassification.from_pretrained(bad_json)

    with pytest.raises(FileNotFoundError, match="no config.json"):
        MonoSemanticForImageClassification.from_pretrained(tmp_path / "nothing-here" if False else tmp_path)


def test_config_of_another_model_type_is_refused(tmp_path):
    BertModel(tiny_bert_config()).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
    with pytest.raises(ValueError, match="model_type='bert'.*from_backbone"):
        MonoSemanticForImageClassification.from_pretrained(tmp_path)


def test_model_refuses_out_of_range_labels_at_forward():
    model = MonoSemanticForImageClassification(RESNET)
    with pytest.raises(ValueError, match=r"\[0, 2\].*max 5"):
        model(pixel_values=torch.zeros(2, 1, 28, 28), labels=torch.tensor([0, 5]))


def test_token_ids_must_fit_the_vocabulary():
    bert = MonoSemanticConfig(backbone_config=tiny_bert_config(vocab_size=100), feature_dim=16, num_labels=2)
    good = Dataset.from_dict({"input_ids": [[1, 99], [5, 6, 7]], "label": [0, 1]})
    validate_classification_dataset(good, bert)
    bad = Dataset.from_dict({"input_ids": [[1, 2], [5, 30522, 7]], "label": [0, 1]})
    with pytest.raises(ValueError, match="token id 30522 but the bert backbone has vocab_size=100"):
        validate_classification_dataset(bad, bert)


def test_ignored_labels_regression_and_multilabel_are_not_class_id_errors():
    validate_classification_dataset(images(labels=[0, -100, 2, 1, 0, 1]), RESNET)  # -100: skipped by the loss
    regression = MonoSemanticConfig(backbone_config=tiny_resnet_config(), feature_dim=16, num_labels=1)
    validate_classification_dataset(images(labels=[0.5, 1.7, -2.0, 3.1, 0.0, 1.0]), regression)
    multi = MonoSemanticConfig(
        backbone_config=tiny_resnet_config(),
        feature_dim=16,
        num_labels=2,
        problem_type="multi_label_classification",
    )
    validate_classification_dataset(images(labels=[[0.0, 1.0]] * 6), multi)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"pixel_values": torch.zeros(2, 1, 28, 28), "labels": torch.tensor([0, 3])}, "found 3"),
        (
            {"pixel_values": torch.zeros(2, 1, 28, 28), "labels": torch.tensor([0.5, 1.0])},
            "integer class ids",
        ),
        ({"pixel_values": torch.zeros(2, 3, 28, 28), "labels": torch.tensor([0, 1])}, "3 channel(s)"),
        (
            {"pixel_values": torch.zeros(2, 28, 28), "labels": torch.tensor([0, 1])},
            "[channels, height, width]",
        ),
        (
            {"pixel_values": torch.full((2, 1, 28, 28), float("nan")), "labels": torch.tensor([0, 1])},
            "NaN or inf",
        ),
        ({"pixel_values": torch.zeros(2, 1, 28, 28)}, "no labels"),
        ({"text": ["a"], "labels": torch.tensor([0])}, "no model input"),
    ],
)
def test_first_batch_checks(batch, message):
    from hf_monosem.data.validation import validate_classification_batch

    with pytest.raises(ValueError) as err:
        validate_classification_batch(batch, RESNET)
    assert message in str(err.value)
    validate_classification_batch(
        {"pixel_values": torch.zeros(2, 1, 28, 28), "labels": torch.tensor([0, 2])}, RESNET
    )
