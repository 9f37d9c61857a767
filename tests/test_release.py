"""scripts/release.py end to end: the release folders are built (``--quick``, a tiny BERT from a real Hub
cache in place of MiniLM, a smaller budget), laid out in a Hub cache as their repositories, and downloaded
offline as a user would: the Auto classes after ``import hf_monosem``, ``pipeline``, remote code
(``trust_remote_code=True``) without the package, SAELens' and sparsify's own loaders; every number on each
card is measured again on the loaded weights and must print the same.

The real MiniLM build (``--quick``, every folder) is the slow test at the end.
"""

from __future__ import annotations

import importlib.util
import json
import string
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fresh_process import run_without_hf_monosem
from hub_cache import add_to_hub_cache
from tiny_models import tiny_bert_config

import hf_monosem  # noqa: F401  (registers the Auto classes, as a user's import does)
from hf_monosem import MonoSemanticModel

ROOT = Path(__file__).resolve().parents[1]
BERT = "tiny-org/char-bert"
NAMESPACE = "release-test"
# the --quick budget made smaller still, so that the whole module stays within seconds
TINY_BUDGET = (
    "text_train=64,text_test=40,max_length=24,sae_epochs=2,vision_train=256,vision_test=64,vision_width=32,"
    "probe_epochs=3,sae_text_train=64"
)


def load_release():
    spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["release"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


release = load_release()


def char_bert(folder: Path) -> None:
    """A tiny BERT whose WordPiece vocabulary spells any English word (letters, digits, punctuation), so 20
    Newsgroups posts become distinct token sequences."""
    from transformers import BertModel, BertTokenizerFast

    torch.manual_seed(0)
    chars = list(string.ascii_lowercase + string.digits)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars], *".,!?'-:()@"]
    config = tiny_bert_config(
        vocab_size=len(tokens), num_hidden_layers=2, initializer_range=0.5, max_position_embeddings=64
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}).save_pretrained(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The release folders, each also laid out in the Hub cache as ``release-test/<name>``."""
    root = tmp_path_factory.mktemp("release")
    cache = root / "hub"
    char_bert(root / "bert")
    add_to_hub_cache(cache, BERT, root / "bert")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        argv = [
            "--output_dir",
            str(root / "release"),
            "--quick",
            "--backbone",
            BERT,
            "--hidden_layer",
            "1",
            "--namespace",
            NAMESPACE,
            "--budget",
            TINY_BUDGET,
        ]
        folders = release.main(argv)
    for folder in folders:
        add_to_hub_cache(cache, f"{NAMESPACE}/{Path(folder).name}", folder)
    return {"root": root, "cache": cache, "folders": {Path(f).name: Path(f) for f in folders}}


@pytest.fixture
def hub(built, monkeypatch):
    """The Hub cache of ``built`` as the default cache of this process and of its children (offline)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(built["cache"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(built["cache"]))
    return built


def card_numbers(repo: str) -> dict[tuple, float]:
    """``{(metric, scenario label): value}`` of the card's ``model-index`` (the card from the Hub cache)."""
    card = huggingface_hub.ModelCard.load(repo)
    return {(r.metric_type, r.dataset_config): r.metric_value for r in card.data.eval_results}


def measured(records: list[dict], method: str) -> dict[tuple, float]:
    from hf_monosem.evaluation.results import load_results, scenario_label

    return {
        (r["metric"], scenario_label(r["scenario"], r["level"])): r["value"]
        for r in load_results(records)
        if r["method"] == method
    }


def assert_same_printed(card: dict, again: dict) -> None:
    """Every card number re-measured, equal at the card's printed precision (3 decimals)."""
    assert card and set(card) == set(again)
    for key, value in card.items():
        assert f"{again[key]:.3f}" == f"{value:.3f}", (key, value, again[key])


def test_every_release_folder_is_built_hub_ready(built):
    folders = built["folders"]
    assert set(folders) == set(release.CHECKPOINTS)
    for name, folder in folders.items():
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert {"README.md", "config.json", "model.safetensors", "results.json", "modeling.py"} <= files, name
        card = (folder / "README.md").read_text()
        assert "release.py --quick" in card and "not a result" in card  # a --quick build says so
        results = json.loads((folder / "results.json").read_text())
        assert results["quick"] is True and results["checkpoint"] == name and results["results"]
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".py"):
                assert str(built["root"]) not in path.read_text(), f"{path.name} holds a local path"
    for name in ("minilm-l6-sae-pooled", "minilm-l6-sae-hidden"):
        card = (folders[name] / "README.md").read_text()
        assert "sae_lens.SAE.load_from_disk" in card and "polysemantic twin" not in card
        assert (folders[name] / "saelens" / "sae_weights.safetensors").is_file()
        assert (folders[name] / "sparsify" / "sae.safetensors").is_file()
    for name in ("resnet-fmnist-simclr", "resnet-fmnist-ncl"):
        assert (folders[name] / "preprocessor_config.json").is_file()
    assert (folders["minilm-l6-20ng-linear"] / "tokenizer.json").is_file()


def test_text_classifiers_download_and_reproduce_their_cards(hub):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    budget = release.budget_with(release.QUICK, TINY_BUDGET)
    repos = {kind: f"{NAMESPACE}/{name}" for name, kind in release.TEXT_KINDS.items()}
    models = {kind: AutoModelForSequenceClassification.from_pretrained(repo) for kind, repo in repos.items()}
    tokenizer = AutoTokenizer.from_pretrained(repos["linear"])
    # the user's tokens: the tokenizer downloaded with the checkpoint, the same posts and seed as the build
    data, _ = release.load_dataset_by_name(
        "20newsgroups", max_train_samples=budget.text_train, max_eval_samples=budget.text_test, seed=0
    )
    tokens = data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=budget.max_length), batched=True
    )
    records, _ = release.evaluate_text_classifiers(
        models, tokens, tokenizer, data["train"].features["label"], budget
    )
    for kind, repo in repos.items():
        assert_same_printed(card_numbers(repo), measured(records[kind], kind))
        # the pipeline, batched, labels every test post as the card's accuracy says
        classify = pipeline("text-classification", model=repo)
        texts = list(data["test"]["text"])
        out = classify(texts, batch_size=8, truncation=True, max_length=budget.max_length)
        label2id = models[kind].config.label2id
        accuracy = np.mean([label2id[o["label"]] == y for o, y in zip(out, data["test"]["label"])])
        assert f"{accuracy:.3f}" == f"{card_numbers(repo)[('accuracy', 'clean')]:.3f}"


def test_classifiers_load_with_remote_code_without_the_package(hub, tmp_path):
    """One fresh process without hf_monosem loads the four classifiers with ``trust_remote_code=True``; their
    logits equal those of the package's classes."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    inputs = {
        "text": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        "image": {"pixel_values": pixels},
    }
    (tmp_path / "inputs.json").write_text(
        json.dumps({k: {n: t.tolist() for n, t in v.items()} for k, v in inputs.items()})
    )
    script = """
        import json, sys, torch
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
        given = json.load(open(sys.argv[2]))
        inputs = {k: {n: torch.tensor(t) for n, t in v.items()} for k, v in given.items()}
        out = {}
        for repo in sys.argv[1].split(","):
            kind = "image" if "resnet" in repo else "text"
            auto = AutoModelForImageClassification if kind == "image" else AutoModelForSequenceClassification
            model = auto.from_pretrained(repo, trust_remote_code=True).eval()
            assert "hf_monosem" not in sys.modules
            with torch.no_grad():
                out[repo] = model(**inputs[kind]).logits.tolist()
        print(json.dumps(out))
    """
    repos = {f"{NAMESPACE}/{name}": "text" for name in release.TEXT_KINDS}
    repos.update({f"{NAMESPACE}/{name}": "image" for name in release.RESNET_KINDS})
    remote = run_without_hf_monosem(script, ",".join(repos), str(tmp_path / "inputs.json"), workdir=tmp_path)
    for repo, kind in repos.items():
        auto = AutoModelForImageClassification if kind == "image" else AutoModelForSequenceClassification
        with torch.no_grad():
            ours = auto.from_pretrained(repo).eval()(**inputs[kind]).logits
        torch.testing.assert_close(torch.tensor(remote[repo]), ours)


def test_saes_download_into_saelens_and_sparsify_with_the_cards_numbers(hub):
    from sae_lens import SAE
    from sparsify import SparseCoder
    from transformers import AutoModel, AutoTokenizer

    budget = release.budget_with(release.QUICK, TINY_BUDGET)
    for name in ("minilm-l6-sae-pooled", "minilm-l6-sae-hidden"):
        repo = f"{NAMESPACE}/{name}"
        model = AutoModel.from_pretrained(repo).eval()  # the hf_monosem model: backbone + SAE
        tokenizer = AutoTokenizer.from_pretrained(repo)
        tokens, _, _ = release.text_data(budget, BERT, 0)
        held_back = release.sae_held_back(model, tokens, tokenizer)
        card = card_numbers(repo)
        assert_same_printed(card, measured(release.evaluate_sae(model, held_back), "topk"))
        # the same numbers from SAELens' own forward pass on the downloaded files
        snapshot = Path(huggingface_hub.snapshot_download(repo))
        sae = SAE.load_from_disk(str(snapshot / "saelens"), device="cpu")
        x = F.normalize(held_back, dim=-1)  # the card's FVU is on the SAE's L2-normalised input
        with torch.no_grad():
            codes = sae.encode(x)
            error = (sae.decode(codes) - x).pow(2).sum()  # SAELens decodes to the input's scale
        fvu = float(error / (x - x.mean(0)).pow(2).sum())
        active = codes != 0
        saelens = {
            ("fvu", "held_back"): fvu,
            ("l0", "held_back"): float(active.sum(-1).float().mean()),
            ("dead_fraction", "held_back"): float((active.sum(0) == 0).float().mean()),
        }
        assert_same_printed(card, saelens)
        # sparsify's coder picks the same latents with the same values
        coder = SparseCoder.load_from_disk(snapshot / "sparsify", device="cpu")
        with torch.no_grad():
            encoded = coder.encode(x)
        dense = torch.zeros_like(codes).scatter_(-1, encoded.top_indices, encoded.top_acts)
        torch.testing.assert_close(dense, codes, atol=1e-4, rtol=1e-4)
    assert model.config.hidden_layer == 1 and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_resnets_download_and_reproduce_their_cards(hub):
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    budget = release.budget_with(release.QUICK, TINY_BUDGET)
    repos = {kind: f"{NAMESPACE}/{name}" for name, kind in release.RESNET_KINDS.items()}
    names = {kind: name for name, kind in release.RESNET_KINDS.items()}
    models = {kind: AutoModelForImageClassification.from_pretrained(repo) for kind, repo in repos.items()}
    data, label_feature = release.fashion_data(budget, channels=3)
    records, _, _ = release.evaluate_resnets(models, data, label_feature, budget)
    pixels = data["test"]["pixel_values"][:6]
    # the images as a user has them: 8-bit grayscale, which the downloaded processor normalises
    raw = (pixels[:, 0] * release.FASHION_MNIST_STD + release.FASHION_MNIST_MEAN) * 255
    images = [Image.fromarray(a.round().clamp(0, 255).to(torch.uint8).numpy(), "L") for a in raw]
    for kind, repo in repos.items():
        name = names[kind]
        assert_same_printed(card_numbers(repo), measured(records[kind], kind))
        out = pipeline("image-classification", model=repo)(images, batch_size=4, top_k=1)
        with torch.no_grad():
            expected = models[kind].eval()(pixel_values=pixels).logits.argmax(-1)
        assert [o[0]["label"] for o in out] == [models[kind].config.id2label[int(i)] for i in expected]
        # the released 3-channel stem reads a gray image as RGB exactly as the pretrained gray encoder did
        pretrained = hub["root"] / "release" / ".work" / "resnets" / name / "model"  # the build's work files
        gray = MonoSemanticModel.from_pretrained(pretrained)
        with torch.no_grad():
            torch.testing.assert_close(
                models[kind].eval()(pixel_values=pixels).features,
                gray.eval()(pixel_values=pixels[:, :1]).features,
                atol=1e-5,
                rtol=1e-4,
            )


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    for argv, message in (
        (["--push"], "--push needs --namespace"),
        (["--only", "minilm-l6-20ng-linear,gpt"], "unknown ['gpt']; allowed: minilm-l6-20ng-linear"),
        (["--budget", "steps=3"], "'steps' is not a budget field; allowed: text_train"),
        (["--budget", "text_train=-4"], "text_train takes a positive int"),
        (["--namespace", "a/b"], "'a/b' is not a Hub user or organisation name"),
    ):
        with pytest.raises(SystemExit):
            release.main(["--output_dir", str(out), *argv])
        assert message in capsys.readouterr().err
        assert not out.exists()  # refused before anything was written


def test_push_uploads_each_folder_in_one_commit(built, monkeypatch):
    """``--push``'s upload step on the built folders, HfApi recording its calls (no Hub is reached)."""
    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(release, "HfApi", RecordingApi)
    folders = [str(f) for f in built["folders"].values()]
    release.push(folders, "my-org")
    repos = [f"my-org/{name}" for name in built["folders"]]
    assert [c[1] for c in calls if c[0] == "create_repo"] == repos
    assert all(c[2]["exist_ok"] for c in calls if c[0] == "create_repo")
    uploads = [c for c in calls if c[0] == "upload_folder"]
    assert [c[1] for c in uploads] == repos and [c[2]["folder_path"] for c in uploads] == folders


@pytest.mark.slow
def test_the_real_quick_release_builds_with_minilm(tmp_path):
    """The command the README prints, with the real all-MiniLM-L6-v2 (offline, from its package)."""
    from sae_lens import SAE

    folders = release.main(["--output_dir", str(tmp_path), "--quick"])
    assert sorted(Path(f).name for f in folders) == sorted(release.CHECKPOINTS)
    sae = SAE.load_from_disk(str(tmp_path / "minilm-l6-sae-hidden" / "saelens"), device="cpu")
    assert sae.cfg.d_in == 384 and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    config = json.loads((tmp_path / "minilm-l6-20ng-nonneg" / "config.json").read_text())
    assert config["backbone"] == release.MINILM  # the Hub id, not the package's local folder


def test_documented_release_commands_parse():
    """Every ``scripts/release.py`` command the README and the script's docstring print is accepted."""
    import re
    import shlex

    commands = []
    for text in ((ROOT / "README.md").read_text(), release.__doc__):
        for line in text.splitlines():
            match = re.search(r"scripts/release\.py(.*)", line)
            if match and "--output_dir" in match.group(1):
                commands.append(shlex.split(match.group(1).split("#")[0].split("`")[0]))
    assert len(commands) >= 6
    for argv in commands:
        args = release.parse_args(argv)
        assert args.output_dir == "release/"


def test_the_scripts_docstring_examples_run():
    """The suite's ``--doctest-modules`` reads hf_monosem/ only: the script's examples run here."""
    import doctest

    assert doctest.testmod(release, raise_on_error=False).failed == 0


def test_a_pooled_sae_takes_the_epochs_with_the_lowest_fvu_on_held_out_training_rows():
    """``choose_sae_epochs``: one fit on nine tenths of the rows is scored on the other tenth after each
    count up to the budget's; the lowest FVU wins, and the same draw gives the same choice."""
    from transformers import BertModel

    torch.manual_seed(0)
    backbone = BertModel(tiny_bert_config(num_hidden_layers=1))
    g = torch.Generator().manual_seed(0)
    width = backbone.config.hidden_size
    features = torch.randn(200, 4, generator=g) @ torch.randn(4, width, generator=g)  # low rank: learnable
    fit = release.SaeFitConfig(batch_size=32, seed=0, progress=False)
    sae = {"feature_dim": 2 * width, "topk": 4, "pooling": "mean"}
    epochs, text = release.choose_sae_epochs(backbone, features, fit, 4, **sae)
    scores = {int(e): float(v) for e, v in (item.split(": ") for item in text.split(", "))}
    assert sorted(scores) == [1, 2, 3]  # the choices up to 4
    assert epochs == min(scores, key=lambda e: (scores[e], e))
    assert release.choose_sae_epochs(backbone, features, fit, 4, **sae) == (epochs, text)
    assert release.choose_sae_epochs(backbone, features, fit, 1, **sae)[0] == 1
