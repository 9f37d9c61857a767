"""The fine-tuning examples with real Hub models and real Hub workflows (issue #12), offline.

Fast tests check the scripts' arguments and the package functions they call: transformers' loading
options reach the backbone, sample sizes follow transformers' ``run_*.py`` (a named dataset keeps every
row), a decoder LM without a padding token pads with its eos token, a text dataset whose text column is
missing is named as such, training images are augmented, preprocessing runs under
``main_process_first`` and only the final summary is printed. Slow tests run the scripts end to end:
a decoder LM (no pad token) on a text folder with TensorBoard logging, W&B offline with one run per
feature layer, and the README's GPU-scale command on a tiny ViT laid out in a Hub cache, pushing to a
mocked Hub.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_cache import add_to_hub_cache
from tiny_models import tiny_llama_config

import hf_monosem  # noqa: F401 - registers the Auto classes the checkpoints load with

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FINETUNE_SCRIPTS = ("finetune_noisy", "finetune_fewshot", "finetune_domain_shift")
WORDS = [
    "<unk>",
    "<s>",
    "</s>",
    "great",
    "good",
    "lovely",
    "awful",
    "bad",
    "late",
    "flight",
    "crew",
    "seat",
    "the",
    "was",
    "very",
    "a",
    "delayed",
    "friendly",
    "rude",
    "on",
    "time",
]
LLAMA_REPO = "tiny-org/tiny-llama-no-pad"

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()


@pytest.fixture(scope="module")
def ex():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import importlib

        yield {name: importlib.import_module(name) for name in (*FINETUNE_SCRIPTS, "example_utils")}
    finally:
        sys.path.remove(str(EXAMPLES))


# ------------------------------------------------------------------------------------------ fixtures
def no_pad_tokenizer():
    """A Llama-3-style tokenizer built offline: word-level, with bos/eos and no padding token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_without_pad(tmp_path_factory):
    """A tiny Llama (no pad_token_id) with a tokenizer that has no padding token, as a folder."""
    from transformers import LlamaModel

    folder = tmp_path_factory.mktemp("llama-no-pad")
    torch.manual_seed(0)
    LlamaModel(tiny_llama_config(vocab_size=len(WORDS), pad_token_id=None)).save_pretrained(folder)
    tokenizer = no_pad_tokenizer()
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def sentence_folder(tmp_path_factory):
    """A text DatasetDict saved to disk whose text column is ``sentence`` (as GLUE's SST-2 has it)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rng = np.random.default_rng(0)
    positive, negative = ["great", "good", "lovely", "friendly"], ["awful", "bad", "late", "rude", "delayed"]

    def split(n):
        labels = np.arange(n) % 2
        rows = [
            " ".join(
                ["the", "flight", "was", *rng.choice(positive if y else negative, size=rng.integers(1, 4))]
            )
            for y in labels
        ]
        features = Features(
            {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
        )
        return Dataset.from_dict({"sentence": rows, "label": labels}, features=features)

    folder = tmp_path_factory.mktemp("sentences") / "data"
    DatasetDict(train=split(32), test=split(16)).save_to_disk(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def cifar100_folder(tmp_path_factory):
    """A CIFAR-100-shaped DatasetDict saved to disk: ``img`` (32x32 PIL images), ``fine_label`` (the 100
    ClassLabel names) and ``coarse_label``, train and test splits."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    rng = np.random.default_rng(0)
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=CIFAR100_NAMES),
            "coarse_label": ClassLabel(num_classes=20),
        }
    )

    def split(n):
        from PIL import Image as PILImage

        labels = rng.integers(0, 100, size=n)
        images = [PILImage.fromarray(rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8)) for _ in labels]
        return Dataset.from_dict(
            {"img": images, "fine_label": labels, "coarse_label": labels // 5}, features=features
        )

    folder = tmp_path_factory.mktemp("cifar100-shaped") / "cifar100"
    DatasetDict(train=split(40), test=split(20)).save_to_disk(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, llama_without_pad):
    """A Hub cache holding a tiny ViT as ``google/vit-base-patch16-224-in21k`` (with its image processor)
    and the pad-less Llama as LLAMA_REPO, as downloads leave them (blobs, snapshots, refs/main)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    vit = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
        ),
        add_pooling_layer=False,
    ).save_pretrained(vit)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(vit)
    add_to_hub_cache(cache, "google/vit-base-patch16-224-in21k", vit)
    commit = add_to_hub_cache(cache, LLAMA_REPO, llama_without_pad)
    return {"cache": str(cache), "llama_commit": commit}


# ------------------------------------------------------------------------------------------ fast
@pytest.mark.parametrize("script", FINETUNE_SCRIPTS)
def test_backbone_loading_options_reach_the_backbone(ex, hub_cache, script):
    from hf_monosem.data import backbone_source, build_classifier

    argv = [
        "--model_name_or_path",
        LLAMA_REPO,
        "--model_revision",
        hub_cache["llama_commit"],
        "--cache_dir",
        hub_cache["cache"],
        "--attn_implementation",
        "eager",
        "--dtype",
        "bfloat16",
        "--token",
        "hf_not_real",
        "--trust_remote_code",
        "true",
    ]
    model_args = ex[script].parse_args(argv)[0]
    source = backbone_source(model_args.model_name_or_path, "text", **model_args.loading_options)
    assert source["backbone_loading_kwargs"] == {
        "revision": hub_cache["llama_commit"],
        "cache_dir": hub_cache["cache"],
        "attn_implementation": "eager",
        "dtype": "bfloat16",
        "token": "hf_not_real",
        "trust_remote_code": True,
    }
    model = build_classifier("nonneg", ["negative", "positive"], "text", source, feature_dim=32)
    assert model.backbone.config._attn_implementation == "eager"
    assert model.backbone.dtype == model.classifier.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("script,builtin,defaults", [
    ("finetune_noisy", "tweets", (1000, 500)),
    ("finetune_fewshot", "tweets", (0, 1000)),
    ("finetune_domain_shift", "tweets", (1000, 500)),
])  # fmt: skip
def test_named_datasets_keep_every_row_builtins_keep_their_small_defaults(
    ex, sentence_folder, script, builtin, defaults
):
    parse = ex[script].parse_args
    data_args = parse(["--dataset_name", sentence_folder])[1]
    assert (data_args.max_train_samples, data_args.max_eval_samples) == (None, None)  # every row
    data_args = parse(["--dataset_name", builtin])[1]
    assert (data_args.max_train_samples, data_args.max_eval_samples) == defaults
    data_args = parse(["--dataset_name", builtin, "--max_train_samples", "7"])[1]
    assert data_args.max_train_samples == 7


def test_a_text_dataset_without_the_text_column_is_named(ex, sentence_folder):
    from hf_monosem.data import load_dataset_by_name

    data_args = ex["finetune_noisy"].parse_args(["--dataset_name", sentence_folder])[1]
    with pytest.raises(ValueError, match=r"no text column 'text'.*--text_column.*\['sentence'\]"):
        load_dataset_by_name(data_args.dataset_name, **data_args.loading_options)
    data_args = ex["finetune_noisy"].parse_args(
        ["--dataset_name", sentence_folder, "--text_column", "sentence"]
    )[1]
    assert load_dataset_by_name(data_args.dataset_name, **data_args.loading_options)[1] == "text"


def test_a_tokenizer_without_pad_token_pads_with_eos_and_last_token_pooling_ignores_the_side(
    llama_without_pad, sentence_folder
):
    from datasets import load_from_disk
    from transformers import DataCollatorWithPadding

    from hf_monosem import MonoSemanticConfig, MonoSemanticModel
    from hf_monosem.data import preprocess

    data = load_from_disk(sentence_folder)
    with pytest.warns(UserWarning, match="no padding token: padding with its end-of-sequence token '</s>'"):
        tokens, tokenizer = preprocess(data, "text", llama_without_pad, text_column="sentence")
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == WORDS.index("</s>")
    rows = [{"input_ids": tokens["train"][i]["input_ids"]} for i in range(6)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the batch needs padding
    torch.manual_seed(0)
    model = MonoSemanticModel(
        MonoSemanticConfig(backbone=llama_without_pad, feature_layer="nonneg", feature_dim=32)
    ).eval()
    assert model.config.pooling == "last"
    features = {}
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = DataCollatorWithPadding(tokenizer)(rows)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        with torch.no_grad():
            features[side] = model(**batch).features
    torch.testing.assert_close(features["left"], features["right"], atol=1e-5, rtol=1e-4)
    for i, row in enumerate(rows):  # and each equals the row alone, unpadded
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row["input_ids"]])).features[0]
        torch.testing.assert_close(features["left"][i], alone, atol=1e-5, rtol=1e-4)


def test_a_tokenizer_with_neither_pad_nor_eos_is_refused():
    from types import SimpleNamespace

    from hf_monosem.data import ensure_padding_token

    with pytest.raises(ValueError, match="neither a padding token nor an end-of-sequence token"):
        ensure_padding_token(SimpleNamespace(pad_token=None, eos_token=None, name_or_path="org/odd"))
    has_pad = SimpleNamespace(pad_token="[PAD]", eos_token=None)
    assert ensure_padding_token(has_pad) is has_pad and has_pad.pad_token == "[PAD]"


def test_training_images_are_augmented_test_images_are_not(hub_cache, cifar100_folder):
    from datasets import load_from_disk

    from hf_monosem.data import preprocess

    model_dir = next(Path(hub_cache["cache"]).glob("models--google--vit-base-patch16-224-in21k/snapshots/*"))
    data, processor = preprocess(
        load_from_disk(cifar100_folder), "image", str(model_dir), augment_split="train"
    )
    torch.manual_seed(0)
    first, again = data["train"][0]["pixel_values"], data["train"][0]["pixel_values"]
    assert first.shape == again.shape == (3, 16, 16) and not torch.equal(first, again)  # random crop + flip
    assert torch.equal(data["test"][0]["pixel_values"], data["test"][0]["pixel_values"])
    plain, _ = preprocess(load_from_disk(cifar100_folder), "image", str(model_dir))
    assert torch.equal(plain["train"][0]["pixel_values"], plain["train"][0]["pixel_values"])
    torch.testing.assert_close(plain["test"][0]["pixel_values"], data["test"][0]["pixel_values"])


def _main_of(script: str) -> ast.FunctionDef:
    tree = ast.parse((EXAMPLES / f"{script}.py").read_text())
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")


@pytest.mark.parametrize("script", FINETUNE_SCRIPTS)
def test_preprocessing_runs_main_process_first(script):
    guarded = set()
    for node in ast.walk(_main_of(script)):
        if isinstance(node, ast.With) and any(
            "main_process_first" in ast.unparse(item.context_expr) for item in node.items
        ):
            guarded |= {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}
    assert "preprocess" in guarded and ("load_dataset_by_name" in guarded or "shifted_data" in guarded)


@pytest.mark.parametrize("script", FINETUNE_SCRIPTS)
def test_only_the_final_summary_is_printed_on_the_main_process(script):
    """Everything else goes through transformers.logging (honouring --log_level)."""
    tree = ast.parse((EXAMPLES / f"{script}.py").read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    prints = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert prints
    for call in prints:
        node, guards = call, []
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.If):
                guards.append(ast.unparse(node.test))
            if isinstance(node, ast.FunctionDef):
                assert node.name == "main", f"{script}: print in {node.name}()"
                break
        assert "main_process" in guards, f"{script}: print at line {call.lineno} outside `if main_process:`"
    # logging: the script's own transformers logger, set up by the shared helper (tested below) before any
    # work
    assert "transformers.utils.logging.get_logger(__name__)" in ast.unparse(tree)
    shared = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "example_utils"
        for alias in node.names
    }
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "setup_logging" in shared and "setup_logging" not in own, (
        f"{script}: not example_utils.setup_logging"
    )
    calls = [ast.unparse(node) for node in ast.walk(_main_of(script)) if isinstance(node, ast.Call)]
    assert "setup_logging(training_args, logger)" in calls, f"{script}: main() does not set up its logging"
    assert "use_available_cores()" in calls, f"{script}: main() keeps accelerate's one CPU thread"


@pytest.fixture
def restored_library_logging():
    """transformers' and datasets' verbosity and format put back after the test."""
    import datasets
    import transformers

    levels = transformers.utils.logging.get_verbosity(), datasets.utils.logging.get_verbosity()
    yield
    transformers.utils.logging.set_verbosity(levels[0])
    transformers.utils.logging.reset_format()
    datasets.utils.logging.set_verbosity(levels[1])


@pytest.mark.parametrize("main_process", [True, False], ids=["main", "replica"])
def test_setup_logging_gives_replicas_log_level_replica(
    ex, caplog, monkeypatch, restored_library_logging, main_process
):
    """The helper every fine-tune script calls first: ``--log_level`` on the main process,
    ``--log_level_replica`` on the others, for the script's logger, transformers and datasets alike."""
    import logging

    import datasets
    import transformers
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "should_log", property(lambda self: main_process))
    args = TrainingArguments(
        output_dir="unused", log_level="info", log_level_replica="error", report_to="none", use_cpu=True
    )
    logger = transformers.utils.logging.get_logger("finetune_example_under_test")
    expected = logging.INFO if main_process else logging.ERROR
    assert ex["example_utils"].setup_logging(args, logger) == expected
    assert (
        logger.level
        == transformers.utils.logging.get_verbosity()
        == datasets.utils.logging.get_verbosity()
        == expected
    )
    logger.info("progress")
    logger.error("failure")
    messages = [
        record.getMessage() for record in caplog.records if record.name == "finetune_example_under_test"
    ]
    assert messages == (["progress", "failure"] if main_process else ["failure"])


@pytest.mark.parametrize("script", FINETUNE_SCRIPTS)
def test_training_and_evaluation_metrics_are_saved(script):
    calls = {ast.unparse(node) for node in ast.walk(_main_of(script)) if isinstance(node, ast.Call)}
    assert any(c.startswith("trainer.save_metrics('train'") for c in calls)
    assert any(c.startswith("trainer.save_metrics('eval'") for c in calls)
    assert any(c.startswith("trainer.end_tracker_runs(") for c in calls)


@pytest.mark.parametrize("script", FINETUNE_SCRIPTS)
def test_hub_model_id_naming_a_wrong_number_of_repositories_is_refused(ex, capsys, script):
    with pytest.raises(SystemExit) as info:
        ex[script].parse_args(["--feature_layers", "linear,nonneg", "--hub_model_id", "me/a,me/b,me/c"])
    assert info.value.code not in (0, None) and "--hub_model_id" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ slow
def run_script(
    script: str,
    args: list[str],
    cwd: Path,
    env: dict | None = None,
    driver: str | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    command = [sys.executable, *(["-c", driver] if driver else []), str(EXAMPLES / f"{script}.py"), *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    print(f"{script}: {time.perf_counter() - start:.1f}s")
    assert done.returncode == 0, (
        f"{' '.join(command[-len(args) - 1 :])}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done


FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]


def _event_file_data(run_dir: Path) -> tuple[set[str], str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags, args_text = set(), ""
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
        if "args/text_summary" in accumulator.Tags()["tensors"]:
            args_text = accumulator.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    return tags, args_text


@pytest.mark.slow
def test_decoder_lm_without_pad_token_on_a_sentence_dataset_with_tensorboard(
    tmp_path, llama_without_pad, sentence_folder
):
    """A Llama-3-style backbone (no pad token) fine-tuned on a text folder whose column is ``sentence``,
    logged to TensorBoard: each feature layer writes its own run with its own training and evaluation logs."""
    out = tmp_path / "run"
    done = run_script(
        "finetune_noisy",
        [
            "--model_name_or_path",
            llama_without_pad,
            "--dataset_name",
            sentence_folder,
            "--text_column",
            "sentence",
            "--feature_dim",
            "32",
            "--output_dir",
            str(out),
            "--report_to",
            "tensorboard",
            "--run_name",
            "llama-noisy",
            "--logging_steps",
            "1",
            "--log_level",
            "info",
            "--label_noise",
            "0.4",
            *FAST,
        ],
        tmp_path,
    )  # two classes: a symmetric rate must stay below 0.5
    assert "padding with its end-of-sequence token" in done.stderr
    assert (
        "linear: fine-tuning into" in done.stdout and "nonneg: fine-tuning into" in done.stdout
    )  # --log_level info
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["results"]) == {"linear", "nonneg"} and payload["modality"] == "text"
    for kind in ("linear", "nonneg"):
        runs = sorted((out / kind / "runs").iterdir())
        assert len(runs) == 1, runs
        tags, args_text = _event_file_data(runs[0])
        assert {"train/loss", "train/task_loss", "eval/accuracy"} <= tags
        assert json.loads(args_text)["run_name"] == f"llama-noisy-{kind}"
        assert {"train_results.json", "eval_results.json", "README.md"} <= set(os.listdir(out / kind))
        assert "eval_accuracy" in json.loads((out / kind / "eval_results.json").read_text())
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(out / kind).eval()
        tokenizer = AutoTokenizer.from_pretrained(out / kind)
        assert tokenizer.pad_token == "</s>"  # saved with the checkpoint: it pads as it was trained
        batch = tokenizer(
            ["the flight was great", "the flight was very very late"], padding=True, return_tensors="pt"
        )
        assert model(**batch).logits.shape == (2, 2)
        assert model.config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.slow
def test_wandb_offline_logs_each_feature_layer_to_its_own_run(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    run_script(
        "finetune_noisy",
        [
            "--dataset_name",
            "digits",
            "--max_train_samples",
            "48",
            "--max_eval_samples",
            "32",
            "--output_dir",
            str(out),
            "--report_to",
            "wandb",
            "--logging_steps",
            "2",
            *FAST,
        ],
        tmp_path,
        env={
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp_path),
            "WANDB_SILENT": "true",
            "WANDB_PROJECT": "hf-monosem-test",
        },
    )
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs  # one per feature layer, not the second logging into the first
    names = []
    for run in runs:
        data = next(run.glob("*.wandb")).read_bytes()
        names.append(next(kind for kind in ("run-linear", "run-nonneg") if kind.encode() in data))
    assert sorted(names) == ["run-linear", "run-nonneg"]


# The driver of the GPU-scale command: HfApi mocked with create_autospec, every upload copied as it is
# at that moment (minus the ignore patterns), so the test sees exactly what would be uploaded.
PUSH_DRIVER = textwrap.dedent("""
    import fnmatch, json, os, runpy, shutil, sys
    from pathlib import Path
    from unittest import mock
    from huggingface_hub import HfApi, RepoUrl

    record = Path(os.environ["UPLOAD_RECORD"])
    uploads = []
    api = mock.create_autospec(HfApi, instance=True)

    def create_repo(repo_id, **kwargs):
        return RepoUrl("https://huggingface.co/" + (repo_id if "/" in repo_id else "me/" + repo_id))

    def upload_folder(*, repo_id, folder_path, ignore_patterns=None, path_in_repo=None, **kwargs):
        root = Path(folder_path)
        kept = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                      and not any(fnmatch.fnmatch(str(p.relative_to(root)), pat)
                                  or fnmatch.fnmatch(p.relative_to(root).parts[0], pat)
                                  for pat in ignore_patterns or ()))
        copy = record.parent / "uploads" / str(len(uploads))
        for name in kept:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, copy / name)
        uploads.append({"repo_id": repo_id, "files": kept, "copy": str(copy), "path_in_repo": path_in_repo,
                        "repo_type": kwargs.get("repo_type"), "commit_message": kwargs.get("commit_message")})
        return mock.MagicMock()

    api.create_repo.side_effect = create_repo
    api.upload_folder.side_effect = upload_folder
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    try:
        with mock.patch("transformers.trainer.hf_api", return_value=api), \\
                mock.patch("hf_monosem.hub.publishing.HfApi", return_value=api):
            runpy.run_path(script, run_name="__main__")
    finally:
        repos = [[c.args, c.kwargs] for c in api.create_repo.call_args_list]
        record.write_text(json.dumps({"uploads": uploads, "create_repo": repos}))
""")


def readme_gpu_command() -> list[str]:
    """The README's GPU-scale command of the main job, as argv."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    lines = [
        line
        for line in text.splitlines()
        if "examples/finetune_noisy.py" in line and "google/vit-base-patch16-224-in21k" in line
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("examples/finetune_noisy.py", 1)[1])


@pytest.mark.slow
def test_the_readme_gpu_command_on_cpu_pushes_one_repo_per_feature_layer_with_its_card(
    tmp_path, hub_cache, cifar100_folder
):
    """The README's GPU-scale command, with tiny sizes added and the dataset replaced by a CIFAR-100-shaped
    folder: the backbone resolves offline from the Hub cache, each feature layer is pushed (to a mocked Hub)
    with our card, one model-index result per scenario, the labels by name, and the label-noise draw as a
    dataset."""
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import AutoModelForImageClassification

    argv = readme_gpu_command()
    assert {"--push_to_hub", "--hub_model_id", "--bf16", "--scenario_hub_id"} <= set(argv)
    hub_id = argv[argv.index("--hub_model_id") + 1]
    argv[argv.index("--dataset_name") + 1] = cifar100_folder
    out = tmp_path / "run"
    argv += [
        "--output_dir",
        str(out),
        "--use_cpu",
        "true",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]
    record = tmp_path / "uploads.json"
    start = time.perf_counter()
    run_script(
        "finetune_noisy",
        argv,
        tmp_path,
        driver=PUSH_DRIVER,
        timeout=600,
        env={"HF_HUB_CACHE": hub_cache["cache"], "UPLOAD_RECORD": str(record)},
    )
    elapsed = time.perf_counter() - start
    log = json.loads(record.read_text())
    kinds = argv[argv.index("--feature_layers") + 1].split(",")
    assert kinds == ["linear", "nonneg"]
    levels = argv[argv.index("--eval_input_noise") + 1].split(",")
    for kind in kinds:
        repo = f"{hub_id}-{kind}"
        final = [
            u for u in log["uploads"] if u["repo_id"] == repo and u["commit_message"] == "End of training"
        ]
        assert len(final) == 1, [u["repo_id"] for u in log["uploads"]]
        upload = final[0]
        assert {
            "README.md",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "training_args.bin",
            "train_results.json",
            "eval_results.json",
        } <= set(upload["files"])
        assert not any(f.startswith("checkpoint-") for f in upload["files"])
        card = ModelCard.load(Path(upload["copy"]) / "README.md")
        assert (
            card.data.library_name == "hf_monosem"
            and card.data.base_model == "google/vit-base-patch16-224-in21k"
        )
        assert card.data.pipeline_tag == "image-classification" and f"feature-layer-{kind}" in card.data.tags
        configs = sorted(r["dataset"]["config"] for r in card.data.to_dict()["model-index"][0]["results"])
        assert configs == sorted(["label_noise=0.4", *[f"gaussian_noise={float(s)}" for s in levels]])
        assert {e.metric_type for e in card.data.eval_results} == {"accuracy", "macro_f1"}
        assert (
            "100 classes (0: apple, 1: aquarium_fish" in card.text
            and f'from_pretrained("{repo}")' in card.text
        )
        assert "`linear` (poly" in card.text and "`nonneg` (mono" in card.text  # both layers' numbers
        assert "| cifar100 (test) | label_noise=0.4 | accuracy |" in card.text
        model = AutoModelForImageClassification.from_pretrained(upload["copy"])
        assert model.config.id2label[99] == "worm" and model.config.feature_layer == kind
        assert model(pixel_values=torch.randn(1, 3, 16, 16)).logits.shape == (1, 100)
    assert {args[0] for args, _ in log["create_repo"]} >= {f"{hub_id}-linear", f"{hub_id}-nonneg"}
    dataset_id = argv[argv.index("--scenario_hub_id") + 1]
    scenario = [u for u in log["uploads"] if u["repo_id"] == dataset_id]
    assert len(scenario) == 1 and scenario[0]["repo_type"] == "dataset"
    assert scenario[0]["files"] == ["README.md", "scenario.json"]
    assert "label-noise" in DatasetCard.load(Path(scenario[0]["copy"]) / "README.md").data.tags
    stored = json.loads((Path(scenario[0]["copy"]) / "scenario.json").read_text())
    assert stored["label_column"] == "fine_label" and len(stored["labels"]) == 40
    assert elapsed < 60, f"{elapsed:.0f}s"
