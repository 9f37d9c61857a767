"""Model cards, the publish folder, remote-code loading and the planned cards in model_cards/ (all
offline)."""

import importlib.util
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch
from fresh_process import run_without_hf_monosem
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from tiny_models import make_inputs, tiny_bert_config, tiny_resnet_config
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from hf_monosem import (
    MonoSemanticConfig,
    MonoSemanticForImageClassification,
    MonoSemanticForSequenceClassification,
    add_lora,
    enable_remote_code,
    make_model_card,
    push_to_hub_with_card,
    save_for_hub,
)
from hf_monosem.hub import MODEL_CARD_TEMPLATE, load_results, results_table
from hf_monosem.hub import publishing as hub_publishing

MODEL_CARDS = Path(__file__).resolve().parents[2] / "model_cards"

RESULTS = [
    {
        "task": "text-classification",
        "dataset": "tweets",
        "scenario": "clean",
        "level": None,
        "method": m,
        "metric": "accuracy",
        "value": v,
        "std": 0.01,
        "seeds": 3,
    }
    for m, v in (("linear", 0.80), ("nonneg", 0.81))
] + [
    {
        "dataset": "tweets",
        "scenario": "label_noise",
        "level": 0.4,
        "method": m,
        "metric": "accuracy",
        "value": v,
        "std": 0.02,
        "seeds": [0, 1, 2],
    }
    for m, v in (("linear", 0.70), ("nonneg", 0.75))
]


def text_model(kind="nonneg", **kwargs):
    torch.manual_seed(0)
    cfg = MonoSemanticConfig(
        backbone_config=tiny_bert_config(),
        feature_layer=kind,
        feature_dim=64,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        **kwargs,
    )
    return MonoSemanticForSequenceClassification(cfg).eval()


def tiny_tokenizer(tmp_path):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    words = ["what", "a", "lovely", "flight", "!"]
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"w{i}" for i in range(90)]])
    )
    return BertTokenizer(vocab_file=str(vocab))


def test_card_metadata_round_trips_and_holds_the_numbers():
    card = make_model_card(
        text_model(),
        RESULTS,
        base_model="org/tiny-bert",
        datasets=["org/tweets"],
        repo_id="me/tiny-nonneg",
        recipe={"epochs": 3},
    )
    parsed = ModelCard(str(card))  # parses its own output
    data = parsed.data
    assert data.library_name == "hf_monosem" and data.license == "apache-2.0"
    assert data.base_model == "org/tiny-bert" and data.datasets == ["org/tweets"]
    assert {"monosemantic", "feature-layer-nonneg", "bert"} <= set(data.tags)
    assert data.pipeline_tag == "text-classification"
    # model-index: this model's (nonneg) numbers only, one entry per scenario/level
    got = {(e.metric_config, e.metric_value) for e in data.eval_results}
    assert got == {("clean", 0.81), ("label_noise=0.4", 0.75)}
    noisy = next(e for e in data.eval_results if e.metric_config == "label_noise=0.4")
    assert noisy.metric_args == {"scenario": "label_noise", "level": 0.4, "std": 0.02, "seeds": 3}
    assert noisy.task_type == "text-classification" and noisy.dataset_type == "tweets"
    name, _ = model_index_to_eval_results(data.to_dict()["model-index"])
    assert name == "tiny-nonneg"
    # body: poly-vs-mono table, usage snippet, recipe
    assert (
        "| tweets (test) | label_noise=0.4 | accuracy | 0.700 ± 0.020 (3 seeds) | 0.750 ± 0.020 (3 seeds) | "
        "+0.050 |" in card.text
    )
    assert 'AutoModelForSequenceClassification.from_pretrained("me/tiny-nonneg")' in card.text
    assert "import hf_monosem" in card.text and "- **epochs**: 3" in card.text


def test_results_are_validated(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": RESULTS}))
    assert load_results(path) == load_results(RESULTS)
    with pytest.raises(ValueError, match="lacks"):
        load_results([{"dataset": "x", "scenario": "clean", "method": "nonneg", "value": 1.0}])
    with pytest.raises(ValueError, match="finite"):
        load_results([dict(RESULTS[0], value=float("nan"))])
    with pytest.raises(ValueError, match="methods present"):
        make_model_card(text_model("sae"), RESULTS)
    table = results_table(RESULTS, method="nonneg")
    assert table.splitlines()[0].startswith(
        "| dataset | scenario | metric | `linear` (poly) | `nonneg` (mono, this model)"
    )


def test_run_records_are_summarised_like_the_robustness_tables():
    from hf_monosem.evaluation import summarize_robustness

    runs = [
        {
            "dataset": "tweets",
            "method": m,
            "scenario": "label_noise",
            "level": 0.4,
            "seed": s,
            "accuracy": a + s / 100,
        }
        for m, a in (("linear", 0.70), ("nonneg", 0.75))
        for s in range(3)
    ]
    summary = summarize_robustness(runs).set_index("method")
    records = {r["method"]: r for r in load_results(runs)}
    for method, record in records.items():
        assert record["value"] == pytest.approx(summary.loc[method, "mean"])
        assert record["std"] == pytest.approx(summary.loc[method, "std"]) and record["seeds"] == 3
    card = make_model_card(text_model(), runs)
    assert {(e.metric_config, round(e.metric_value, 3)) for e in card.data.eval_results} == {
        ("label_noise=0.4", 0.76)
    }
    with pytest.raises(ValueError, match="lacks \\['dataset'\\]"):
        load_results([{k: v for k, v in r.items() if k != "dataset"} for r in runs])


def test_save_for_hub_writes_a_complete_folder_that_loads_back(tmp_path):
    model, tokenizer = text_model(), tiny_tokenizer(tmp_path)
    inputs = make_inputs("text")
    folder = tmp_path / "repo"
    save_for_hub(model, folder, RESULTS, tokenizer_or_processor=tokenizer, repo_id="me/tiny-nonneg")
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "README.md", "results.json", "tokenizer_config.json"} <= files
    assert not any(f.endswith(".py") for f in files)  # no code unless remote_code=True
    assert json.loads((folder / "results.json").read_text()) == load_results(RESULTS)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "hf_monosem" and len(card.data.eval_results) == 2
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(loaded) is MonoSemanticForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    assert (
        AutoTokenizer.from_pretrained(folder)("a lovely flight")["input_ids"]
        == tokenizer("a lovely flight")["input_ids"]
    )
    # the card's usage snippet runs as written, with the repo id pointing at the folder
    snippet = (
        re.search(r"```python\n(.*?)```", card.text, re.S).group(1).replace("me/tiny-nonneg", str(folder))
    )
    exec(compile(snippet, "card-usage", "exec"), {})


def test_save_for_hub_image_model_and_local_backbone_path(tmp_path):
    torch.manual_seed(0)
    backbone_dir = tmp_path / "local-resnet"
    from transformers import ResNetModel

    ResNetModel(tiny_resnet_config()).save_pretrained(backbone_dir)
    model = MonoSemanticForImageClassification(
        MonoSemanticConfig(backbone=str(backbone_dir), feature_layer="topk", feature_dim=64, num_labels=10)
    ).eval()
    card = save_for_hub(model, tmp_path / "repo", base_model="org/resnet-digits", image_size=28)
    saved = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert saved["backbone"] == "org/resnet-digits"  # not the publisher's local folder
    assert model.config.backbone == str(backbone_dir)  # the model itself is unchanged
    assert card.data.pipeline_tag == "image-classification" and card.data.eval_results is None
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "repo").eval()
    x = make_inputs("image1x28")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits)
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert "torch.randn(1, 1, 28, 28)" in snippet


_FRESH_LOAD = textwrap.dedent(
    """
    import json, sys
    try:
        import hf_monosem  # noqa: F401
        raise SystemExit("hf_monosem should not be importable here")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    folder = sys.argv[1]
    ref = torch.load(folder + "/../ref.pt")
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**ref["inputs"]).logits
        features = base(**ref["inputs"]).features
    print(json.dumps({
        "class": type(model).__module__ + "." + type(model).__name__,
        "logits_diff": float((logits - ref["logits"]).abs().max()),
        "features_diff": float((features - ref["features"]).abs().max()),
        "hf_monosem_loaded": [m for m in sys.modules if m.split(".")[0] == "hf_monosem"],
    }))
    """
)


def test_remote_code_checkpoint_loads_in_a_fresh_process_without_hf_monosem(tmp_path):
    model, inputs = text_model("topk", topk=8), make_inputs("text")
    folder = tmp_path / "repo"
    card = save_for_hub(model, folder, remote_code=True, repo_id="me/tiny-topk")
    files = set(os.listdir(folder))
    assert {"modeling.py", "configuration.py", "feature_layers.py"} <= files  # the relative-import chain
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "modeling.MonoSemanticForSequenceClassification"
    assert set(auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForSequenceClassification",
        "AutoModelForImageClassification",
    }
    assert "trust_remote_code=True" in card.text
    # no global state left behind: a plain save has no code and no auto_map
    assert type(model).is_remote_code() is False and "auto_map" not in model.config.__dict__
    with torch.no_grad():
        torch.save(
            {"inputs": inputs, "logits": model(**inputs).logits, "features": model(**inputs).features},
            tmp_path / "ref.pt",
        )
    report = run_without_hf_monosem(_FRESH_LOAD, str(folder), workdir=tmp_path)
    assert report["class"].startswith("transformers_modules.") and report["hf_monosem_loaded"] == []
    assert report["logits_diff"] < 1e-5 and report["features_diff"] < 1e-5
    # with hf_monosem imported the same folder loads with the library's own classes, no flag needed
    assert (
        type(AutoModelForSequenceClassification.from_pretrained(folder))
        is MonoSemanticForSequenceClassification
    )


def test_enable_remote_code_makes_plain_save_pretrained_carry_the_code(tmp_path, monkeypatch):
    model = text_model()
    for cls in (type(model), type(model.config)):
        monkeypatch.setattr(cls, "_auto_class", None)  # restored after the test
    enable_remote_code(model)
    model.save_pretrained(tmp_path)
    assert {"modeling.py", "configuration.py"} <= set(os.listdir(tmp_path))
    assert "AutoModel" in json.loads((tmp_path / "config.json").read_text())["auto_map"]


def test_push_to_hub_with_card_uploads_the_save_for_hub_folder(tmp_path, monkeypatch):
    from unittest import mock

    from huggingface_hub import HfApi

    # a mock with HfApi's own signatures: a call the real client would refuse (an unknown or positional
    # argument where it takes keywords only) fails here too
    api_class = mock.create_autospec(HfApi)
    api = api_class.return_value
    uploaded = {}

    def upload_folder(*, repo_id, folder_path, **kwargs):  # read the folder before it is deleted
        uploaded["files"] = sorted(os.listdir(folder_path))
        uploaded["card"] = ModelCard.load(os.path.join(folder_path, "README.md"))
        return "commit-info"

    api.upload_folder.side_effect = upload_folder
    monkeypatch.setattr(hub_publishing, "HfApi", api_class)
    out = push_to_hub_with_card(text_model(), "me/tiny-nonneg", RESULTS, token="hf_x", private=True)
    assert out == "commit-info"
    api_class.assert_called_once_with(token="hf_x")
    api.create_repo.assert_called_once_with("me/tiny-nonneg", private=True, exist_ok=True)
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/tiny-nonneg" and {
        "README.md",
        "config.json",
        "model.safetensors",
        "results.json",
    } <= set(uploaded["files"])
    assert kwargs["create_pr"] is False and "hf_monosem" in kwargs["commit_message"]
    assert 'from_pretrained("me/tiny-nonneg")' in uploaded["card"].text


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_models_are_refused_with_a_pointer(tmp_path):
    with pytest.raises(TypeError, match="merge_and_unload"):
        save_for_hub(add_lora(text_model(), r=2), tmp_path)


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_cards", MODEL_CARDS / "generate_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planned_cards_say_they_are_planned_and_are_up_to_date():
    assert (MODEL_CARDS / "TEMPLATE.md").read_text(encoding="utf-8") == MODEL_CARD_TEMPLATE
    expected = _load_generator().planned_cards()
    cards = sorted(p.name for p in MODEL_CARDS.glob("*.md") if p.name != "TEMPLATE.md")
    assert len(cards) == 3 and set(cards) | {"TEMPLATE.md"} == set(expected)
    for name in cards:
        text = (MODEL_CARDS / name).read_text(encoding="utf-8")
        assert text == expected[name], f"{name} is stale: run python model_cards/generate_cards.py"
        card = ModelCard(text)
        assert card.data.library_name == "hf_monosem" and "monosemantic" in card.data.tags
        assert card.data.eval_results is None  # no invented numbers
        assert "Not trained, not published yet" in card.text
        assert "examples/finetune_noisy.py" in card.text or "examples/pretrain_ncl.py" in card.text


def test_per_seed_result_records_give_one_model_index_entry_with_the_mean():
    per_seed = [
        {
            "dataset": "tweets",
            "scenario": "clean",
            "method": "nonneg",
            "metric": "accuracy",
            "value": v,
            "seed": s,
        }
        for s, v in enumerate((0.80, 0.82, 0.84))
    ]
    card = make_model_card(text_model(), per_seed)
    (entry,) = card.data.eval_results
    assert entry.metric_value == pytest.approx(0.82)
    assert entry.metric_args["std"] == pytest.approx(0.02) and entry.metric_args["seeds"] == 3
    assert "3 seeds" in entry.metric_name
    # the same as the summary of the run records holding these numbers
    runs = [
        {"dataset": "tweets", "scenario": "clean", "method": "nonneg", "seed": s, "accuracy": v}
        for s, v in enumerate((0.80, 0.82, 0.84))
    ]
    (merged,), (summarised,) = load_results(per_seed), load_results(runs)
    assert merged == {**summarised, "std": pytest.approx(summarised["std"])}
    with pytest.raises(ValueError, match=r"repeat 'accuracy'.*distinct 'seed'"):
        load_results([{k: v for k, v in r.items() if k != "seed"} for r in per_seed])


def test_card_recipe_states_a_head_input_scale_only_when_one_is_set():
    plain = MonoSemanticConfig(backbone_config=tiny_bert_config(), feature_layer="nonneg", num_labels=2)
    scaled = MonoSemanticConfig(
        backbone_config=tiny_bert_config(), feature_layer="nonneg", num_labels=2, classifier_input_scale=12.5
    )
    assert "classifier_input_scale" not in str(make_model_card(plain))
    assert "multiplied by a fixed 12.5 (`classifier_input_scale`)" in str(make_model_card(scaled))
