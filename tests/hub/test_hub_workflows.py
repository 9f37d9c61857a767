"""Real Hub workflows on hf_monosem models (issue #12), offline: transformers' pipelines, the Trainer's
push (``HfApi`` mocked with ``create_autospec``, the uploaded folder checked file by file), our card in
place of transformers' auto card, a ``model-index`` whose results huggingface_hub keeps apart, one
repository per feature layer, and the noisy-label draw as a dataset repository."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from datasets import Dataset
from huggingface_hub import DatasetCard, HfApi, ModelCard, RepoUrl
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from tiny_models import tiny_bert_config, tiny_vit_config
from transformers import BertTokenizerFast, TrainingArguments, ViTImageProcessor, pipeline

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    MonoSemanticModel,
    MonoSemanticTrainer,
    make_model_card,
    save_for_hub,
)

KINDS = ["linear", "nonneg", "sae", "topk"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
COLOURS = {0: "red", 1: "green", 2: "blue"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    words = ["what", "a", "lovely", "flight", "!"]
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"w{i}" for i in range(90)]])
    )
    return BertTokenizerFast(vocab_file=str(vocab))


@pytest.fixture(scope="module")
def processor():
    return ViTImageProcessor(size={"height": 16, "width": 16})


def image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3)).astype(np.uint8))


def build(cls, backbone_config, kind="nonneg", **kwargs):
    torch.manual_seed(0)
    return cls(
        MonoSemanticConfig(backbone_config=backbone_config, feature_layer=kind, feature_dim=64, **kwargs)
    ).eval()


# ------------------------------------------------------------------------------------------ pipelines
@pytest.mark.parametrize("kind", KINDS)
def test_feature_extraction_pipeline_returns_the_features(tokenizer, kind):
    model = build(MonoSemanticModel, tiny_bert_config(), kind)
    extractor = pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    got = torch.tensor(extractor("what a lovely flight"))
    with torch.no_grad():
        expected = model(**tokenizer(["what a lovely flight"], return_tensors="pt")).features
    assert got.shape == (1, 64)  # one feature vector per text, not the auxiliary loss
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_image_feature_extraction_pipeline_returns_the_features(processor, kind):
    model = build(MonoSemanticModel, tiny_vit_config(), kind)
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
    got = torch.tensor(extractor(image()))
    with torch.no_grad():
        expected = model(**processor(image(), return_tensors="pt")).features
    assert got.shape == (1, 64)
    torch.testing.assert_close(got, expected)


def test_tuple_outputs_start_with_the_features():
    model = build(MonoSemanticModel, tiny_vit_config(), "sae")
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 16, 16), return_dict=False)
    assert out[0].shape == (2, 64)


@pytest.mark.parametrize("kind", ["linear", "topk"])
def test_classification_pipelines_name_the_labels(tokenizer, processor, kind):
    text = build(
        MonoSemanticForSequenceClassification, tiny_bert_config(), kind, num_labels=3, id2label=LABELS
    )
    top = pipeline("text-classification", model=text, tokenizer=tokenizer)("what a lovely flight")
    with torch.no_grad():
        logits = text(**tokenizer(["what a lovely flight"], return_tensors="pt")).logits[0]
    assert top[0]["label"] == LABELS[int(logits.argmax())]
    assert top[0]["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)
    vision = build(
        MonoSemanticForImageClassification, tiny_vit_config(), kind, num_labels=3, id2label=COLOURS
    )
    ranked = pipeline("image-classification", model=vision, image_processor=processor)(image())
    assert sorted(r["label"] for r in ranked) == sorted(COLOURS.values())
    assert ranked[0]["score"] >= ranked[-1]["score"]


CARD_PIPELINES = [
    (MonoSemanticForSequenceClassification, "text", "text-classification"),
    (MonoSemanticForImageClassification, "image", "image-classification"),
    (MonoSemanticModel, "text", "feature-extraction"),
    (MonoSemanticModel, "image", "image-feature-extraction"),
]


@pytest.mark.parametrize(
    "cls,modality,tag", CARD_PIPELINES, ids=[f"{c.__name__}-{m}" for c, m, _ in CARD_PIPELINES]
)
def test_the_cards_pipeline_tag_is_a_pipeline_that_works_on_the_published_folder(
    tmp_path, tokenizer, processor, cls, modality, tag
):
    labels = {"num_labels": 3, "id2label": LABELS if modality == "text" else COLOURS}
    model = build(
        cls,
        tiny_bert_config() if modality == "text" else tiny_vit_config(),
        "topk",
        **(labels if cls is not MonoSemanticModel else {}),
    )
    card = save_for_hub(
        model,
        tmp_path / "repo",
        tokenizer_or_processor=tokenizer if modality == "text" else processor,
        repo_id="me/tiny",
    )
    assert card.data.pipeline_tag == tag
    assert ModelCard.load(tmp_path / "repo" / "README.md").data.pipeline_tag == tag
    out = pipeline(card.data.pipeline_tag, model=str(tmp_path / "repo"))(
        "what a lovely flight" if modality == "text" else image()
    )
    if cls is MonoSemanticModel:
        assert np.asarray(out).shape == (1, 64)
    else:
        assert out[0]["label"] in labels["id2label"].values()


# ----------------------------------------------------------------------------------------- model-index
SCENARIO_RECORDS = [
    {
        "dataset": "cifar100",
        "scenario": "label_noise",
        "level": 0.4,
        "method": "nonneg",
        "metric": "accuracy",
        "value": 0.61,
    },
    {
        "dataset": "cifar100",
        "scenario": "label_noise",
        "level": 0.4,
        "method": "nonneg",
        "metric": "macro_f1",
        "value": 0.58,
    },
    {
        "dataset": "cifar100",
        "scenario": "label_noise",
        "level": 0.8,
        "method": "nonneg",
        "metric": "accuracy",
        "value": 0.31,
    },
    {
        "dataset": "cifar100",
        "scenario": "gaussian_noise",
        "level": 0.1,
        "method": "nonneg",
        "metric": "accuracy",
        "value": 0.55,
    },
    {
        "dataset": "cifar100",
        "scenario": "clean",
        "level": None,
        "method": "nonneg",
        "metric": "accuracy",
        "value": 0.70,
    },
]


def model_index_results(card_text: str) -> list[dict]:
    return ModelCard(card_text).data.to_dict()["model-index"][0]["results"]


def test_model_index_keeps_one_result_per_scenario_and_level():
    model = build(MonoSemanticForImageClassification, tiny_vit_config(), num_labels=3, id2label=COLOURS)
    card = make_model_card(model, SCENARIO_RECORDS, repo_id="me/vit-nonneg")
    results = model_index_results(str(card))
    # huggingface_hub merges results with the same (task, dataset type, config, split, revision)
    assert len(results) == 4
    assert sorted(r["dataset"]["config"] for r in results) == [
        "clean",
        "gaussian_noise=0.1",
        "label_noise=0.4",
        "label_noise=0.8",
    ]
    by_config = {r["dataset"]["config"]: r for r in results}
    assert [m["type"] for m in by_config["label_noise=0.4"]["metrics"]] == ["accuracy", "macro_f1"]
    name, parsed = model_index_to_eval_results(ModelCard(str(card)).data.to_dict()["model-index"])
    assert name == "vit-nonneg" and len({e.unique_identifier for e in parsed}) == 4 and len(parsed) == 5


# ------------------------------------------------------------------------------ the Trainer's push
def fake_hub():
    """``HfApi`` mocked with create_autospec: create_repo names repos under the user ``me``, and every
    upload records the files its folder holds at that moment (minus ``ignore_patterns``) and its card."""
    import fnmatch

    api = mock.create_autospec(HfApi, instance=True)
    api.uploads = []

    def create_repo(repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def upload_folder(*, repo_id, folder_path, ignore_patterns=(), path_in_repo=None, **kwargs):
        root = Path(folder_path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        kept = [
            f
            for f in files
            if not any(
                fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(f.split("/")[0], pat)
                for pat in ignore_patterns or ()
            )
        ]
        card = (root / "README.md").read_text() if (root / "README.md").is_file() else None
        api.uploads.append(
            {
                "repo_id": repo_id,
                "folder": str(root),
                "files": kept,
                "card": card,
                "path_in_repo": path_in_repo,
                **kwargs,
            }
        )
        return mock.MagicMock(done=mock.MagicMock(return_value=True))

    api.create_repo.side_effect = create_repo
    api.upload_folder.side_effect = upload_folder
    return api


def toy_train(n=12):
    g = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {"pixel_values": torch.randn(n, 3, 16, 16, generator=g).numpy(), "label": [i % 3 for i in range(n)]}
    )


def test_trainer_push_to_hub_uploads_our_card_with_one_result_per_scenario(tmp_path, processor):
    model = build(MonoSemanticForImageClassification, tiny_vit_config(), num_labels=3, id2label=COLOURS)
    api = fake_hub()
    args = TrainingArguments(
        str(tmp_path / "nonneg"),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        push_to_hub=True,
        hub_model_id="me/vit-cifar100-nonneg",
    )
    with mock.patch("transformers.trainer.hf_api", return_value=api):
        trainer = MonoSemanticTrainer(
            model=model, args=args, train_dataset=toy_train(), processing_class=processor
        )
        trainer.train()
        trainer.push_to_hub(
            results=SCENARIO_RECORDS,
            dataset_tags="uoft-cs/cifar100",
            finetuned_from="google/vit-base-patch16-224-in21k",
        )
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.args[0] == "me/vit-cifar100-nonneg"
    upload = api.uploads[-1]
    assert upload["repo_id"] == "me/vit-cifar100-nonneg" and upload["folder"] == args.output_dir
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(
        upload["files"]
    )
    card = ModelCard(upload["card"])
    assert card.data.library_name == "hf_monosem"  # ours, not transformers' auto card
    assert card.data.base_model == "google/vit-base-patch16-224-in21k" and card.data.datasets == [
        "uoft-cs/cifar100"
    ]
    assert card.data.pipeline_tag == "image-classification" and "feature-layer-nonneg" in card.data.tags
    assert len(model_index_results(upload["card"])) == 4
    assert "0: red, 1: green, 2: blue" in card.text  # the labels, by name
    assert 'from_pretrained("me/vit-cifar100-nonneg")' in card.text
    assert "learning rate" in card.text  # the recipe comes from the Trainer's arguments


def test_trainer_create_model_card_without_push_writes_our_card(tmp_path):
    model = build(
        MonoSemanticForImageClassification, tiny_vit_config(), "sae", num_labels=3, id2label=COLOURS
    )
    args = TrainingArguments(
        str(tmp_path / "sae"),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=toy_train())
    trainer.train()
    trainer.create_model_card(results=SCENARIO_RECORDS[:1] and [dict(SCENARIO_RECORDS[0], method="sae")])
    card = ModelCard.load(tmp_path / "sae" / "README.md")
    assert card.data.library_name == "hf_monosem" and card.data.eval_results[0].metric_value == 0.61


def test_one_repository_per_feature_layer():
    from hf_monosem.hub import feature_layer_repo_ids

    kinds = ["linear", "nonneg"]
    assert feature_layer_repo_ids(None, kinds, "runs/finetune_noisy") == {
        "linear": "finetune_noisy-linear",
        "nonneg": "finetune_noisy-nonneg",
    }
    assert feature_layer_repo_ids("me/vit-cifar100", kinds, "out") == {
        "linear": "me/vit-cifar100-linear",
        "nonneg": "me/vit-cifar100-nonneg",
    }
    assert feature_layer_repo_ids("me/vit-{feature_layer}-c100", kinds, "out") == {
        "linear": "me/vit-linear-c100",
        "nonneg": "me/vit-nonneg-c100",
    }
    assert feature_layer_repo_ids("me/poly,me/mono", kinds, "out") == {
        "linear": "me/poly",
        "nonneg": "me/mono",
    }
    assert feature_layer_repo_ids("me/exact", ["topk"], "out") == {"topk": "me/exact"}
    with pytest.raises(ValueError, match="3 ids for 2 feature layers"):
        feature_layer_repo_ids("me/a,me/b,me/c", kinds, "out")
    with pytest.raises(ValueError, match="twice"):
        feature_layer_repo_ids("me/a,me/a", kinds, "out")


# --------------------------------------------------------------------------- the noisy-label draw
SCENARIO = {
    "dataset": "cifar100",
    "label_column": "fine_label",
    "label_noise": 0.4,
    "kind": "symmetric",
    "seed": 0,
    "num_rows": 6,
    "labels": [3, 1, 4, 1, 5, 9],
}


def test_the_noisy_label_draw_is_a_dataset_repository_with_a_card(tmp_path):
    from hf_monosem.hub import push_scenario_to_hub, save_scenario_for_hub

    (tmp_path / "scenario.json").write_text(json.dumps(SCENARIO))
    card = save_scenario_for_hub(
        tmp_path / "scenario.json", tmp_path / "repo", repo_id="me/cifar100-noise40", modality="image"
    )
    assert sorted(os.listdir(tmp_path / "repo")) == ["README.md", "scenario.json"]
    assert json.loads((tmp_path / "repo" / "scenario.json").read_text()) == SCENARIO
    loaded = DatasetCard.load(tmp_path / "repo" / "README.md")
    assert loaded.data.task_categories == ["image-classification"] and "label-noise" in loaded.data.tags
    assert "40%" in loaded.text and "fine_label" in loaded.text and "me/cifar100-noise40" in loaded.text
    assert card.data.to_dict() == loaded.data.to_dict()

    api = fake_hub()
    with mock.patch("hf_monosem.hub.publishing.HfApi", return_value=api):
        push_scenario_to_hub(
            tmp_path / "scenario.json", "me/cifar100-noise40", token="hf_x", modality="image"
        )
    assert api.create_repo.call_args.kwargs["repo_type"] == "dataset"
    upload = api.uploads[-1]
    assert upload["repo_id"] == "me/cifar100-noise40" and upload["repo_type"] == "dataset"
    assert upload["files"] == ["README.md", "scenario.json"] and "label-noise" in upload["card"]
