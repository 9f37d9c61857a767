"""Dataset checks that were missing: float 0/1 labels (trained as multi-label), a one-class ClassLabel
(trained as regression with loss 0), negative token ids and sequences longer than the position table."""

from __future__ import annotations

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from tiny_models import tiny_bert_config

from hf_monosem import MonoSemanticConfig
from hf_monosem.data.validation import validate_classification_batch, validate_classification_dataset


def _config(**overrides):
    return MonoSemanticConfig(
        backbone_config=tiny_bert_config(max_position_embeddings=16), num_labels=2, **overrides
    )


def test_float_labels_are_refused_even_when_they_hold_whole_numbers():
    data = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "label": [0.0, 1.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="float labels train as multi-label classification"):
        validate_classification_dataset(data, _config())
    batch = {"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([1.0])}
    with pytest.raises(ValueError, match="float labels train as multi-label"):
        validate_classification_batch(batch, _config())


def test_a_one_class_label_column_is_refused():
    features = Features({"input_ids": Sequence(Value("int64")), "label": ClassLabel(names=["only"])})
    data = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "label": [0] * 4}, features=features)
    config = MonoSemanticConfig(backbone_config=tiny_bert_config(), num_labels=1)
    with pytest.raises(
        ValueError, match=r"ClassLabel with 1 class\(es\) \['only'\]; classification needs at least 2"
    ):
        validate_classification_dataset(data, config)


def test_negative_token_ids_and_too_long_sequences_are_named():
    negative = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, -1, 5]], "label": [0, 1]})
    with pytest.raises(ValueError, match="input_ids hold token id -1; token ids must be >= 0"):
        validate_classification_dataset(negative, _config())
    long = Dataset.from_dict({"input_ids": [[1] * 20, [2] * 5], "label": [0, 1]})
    with pytest.raises(
        ValueError, match=r"sequences of 20 tokens but the bert backbone has positions for 16"
    ):
        validate_classification_dataset(long, _config())
    with pytest.raises(ValueError, match=r"sequences of 20 tokens"):
        validate_classification_batch(
            {"input_ids": torch.ones(2, 20, dtype=torch.long), "labels": torch.tensor([0, 1])}, _config()
        )
    validate_classification_dataset(
        Dataset.from_dict({"input_ids": [[1] * 16], "label": [0]}), _config()
    )  # fits
