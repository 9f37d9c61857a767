"""The GPU-scale command of ``examples/pretrain_ncl.py`` (issue #15, item 9), dry-run on CPU.

The command in the script's docstring (ResNet-18's architecture pretrained from scratch with SimCLR
and NCL on CIFAR-100 from the Hub, 200 epochs, both probe protocols, label noise up to 90%) is parsed
from that docstring and run through ``accelerate launch`` with its own flags, only the sizes made tiny:
a tiny ResNet stands in for ``microsoft/resnet-18`` in a Hub cache, and a CIFAR-100-shaped dataset
(100 classes, so that 90% noise is a valid rate) for ``uoft-cs/cifar100`` in a datasets cache, both
laid out as a download leaves them, under a temporary ``HF_HOME``. Fast tests check the new options'
errors (before any training) and the probe protocols on synthetic features.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_cache import add_to_hub_cache

import hf_monosem  # noqa: F401 - registers the Auto classes the checkpoints load with

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPT = EXAMPLES / "pretrain_ncl.py"
# accelerate 1.15: one local CPU process, no config file needed (mixed precision comes from --bf16)
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--cpu",
          "--dynamo_backend", "no"]  # fmt: skip
CIFAR_CLASSES = 100


@pytest.fixture(scope="module")
def pretrain_ncl():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import importlib

        yield importlib.import_module("pretrain_ncl")
    finally:
        sys.path.remove(str(EXAMPLES))


def gpu_scale_command() -> list[str]:
    """The GPU-scale command of pretrain_ncl's docstring, as argv (after the script's path)."""
    doc = ast.get_docstring(ast.parse(SCRIPT.read_text()))
    text = re.sub(r"\\\n\s*", " ", doc)
    lines = [
        line
        for line in text.splitlines()
        if "accelerate launch examples/pretrain_ncl.py" in line and "uoft-cs/cifar100" in line
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("examples/pretrain_ncl.py", 1)[1])


def with_values(argv: list[str], **values: str) -> list[str]:
    """``argv`` with ``--name value`` set for every keyword: replaced in place where the flag is there, else added."""
    argv = list(argv)
    for name, value in values.items():
        flag = f"--{name}"
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """A temporary HF_HOME holding, as downloads leave them: a tiny ResNet (basic blocks, widths 8 and 16)
    with a ConvNext image processor as ``microsoft/resnet-18`` in the Hub cache, and ``uoft-cs/cifar100``
    (its ``img`` / ``fine_label`` / ``coarse_label`` columns, 100 classes, 200 train and 60 test 32x32
    images) prepared in the datasets cache, which is where ``load_dataset`` finds a Hub dataset offline."""
    from datasets import ClassLabel, Dataset, Features, Image
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet
    from PIL import Image as PILImage
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    home = tmp_path_factory.mktemp("hf_home")
    resnet = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(resnet)
    ConvNextImageProcessor(
        size={"shortest_edge": 16}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(resnet)
    add_to_hub_cache(home / "hub", "microsoft/resnet-18", resnet)

    rng = np.random.default_rng(0)
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(num_classes=CIFAR_CLASSES),
            "coarse_label": ClassLabel(num_classes=20),
        }
    )
    repo = tmp_path_factory.mktemp("cifar100-repo")
    for split, n in (("train", 200), ("test", 60)):
        labels = rng.integers(0, CIFAR_CLASSES, size=n)
        images = [PILImage.fromarray(rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8)) for _ in labels]
        (repo / "cifar100").mkdir(exist_ok=True)
        Dataset.from_dict(
            {"img": images, "fine_label": labels, "coarse_label": labels // 5}, features=features
        ).to_parquet(str(repo / "cifar100" / f"{split}-00000-of-00001.parquet"))
    # what load_dataset("uoft-cs/cifar100") leaves in the datasets cache: <namespace>___<name>/<config>/<version>/<hash>
    files = DataFilesDict.from_patterns(
        {"train": ["cifar100/train-*"], "test": ["cifar100/test-*"]}, base_path=str(repo)
    )
    builder = Parquet(
        cache_dir=str(home / "staging"),
        dataset_name="cifar100",
        config_name="cifar100",
        data_files=files,
        hash="0" * 40,
    )
    builder.download_and_prepare()
    target = home / "datasets" / "uoft-cs___cifar100" / "cifar100" / "0.0.0"
    target.mkdir(parents=True)
    shutil.move(builder.cache_dir, target / ("0" * 40))
    shutil.rmtree(home / "staging")
    return home


# ------------------------------------------------------------------------------------------ fast
BAD_ARGUMENTS = [
    (
        ["--probe_protocols", "paper,lbfgs"],
        ["'lbfgs'", "allowed ['fixed', 'paper_cifar', 'paper_in100', 'controlled', 'paper']"],
    ),
    (
        ["--probe_protocols", "paper,paper"],
        ["'paper,paper'", "allowed ['fixed', 'paper_cifar', 'paper_in100', 'controlled', 'paper']"],
    ),
    (["--probe_protocols", ","], ["--probe_protocols ','", "allowed"]),
    (["--probe_views", "0"], ["--probe_views 0", "allowed: a positive integer"]),
    (["--probe_views", "-3"], ["--probe_views -3", "allowed: a positive integer"]),
    (["--label_noise", "0.1,lots"], ["'0.1,lots'", "[0, 1)"]),
    (["--label_noise", "0,0.3,1.5"], ["rate 1.5", "[0, 1)"]),
    (["--label_noise", "0,-0.1"], ["rate -0.1", "[0, 1)"]),
    (["--label_noise", "1.01"], ["rate 1.01", "[0, 1)"]),  # a single rate, as before
    (["--label_noise", ""], ["--label_noise ''", "[0, 1)"]),
]


@pytest.mark.parametrize("argv,named", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_probe_arguments_exit_nonzero_naming_the_value_and_the_allowed_ones(
    pretrain_ncl, capsys, argv, named
):
    with pytest.raises(SystemExit) as info:
        pretrain_ncl.parse_args(argv)
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert all(part in err for part in named), err


def test_label_noise_takes_one_rate_or_a_list_and_always_probes_clean_labels(pretrain_ncl):
    probe_args = pretrain_ncl.parse_args(["--label_noise", "0.4"])[1]
    assert probe_args.rates == [0.0, 0.4] and probe_args.protocols == ["fixed"]  # the offline default
    probe_args = pretrain_ncl.parse_args(
        ["--label_noise", "0,0.1,0.3,0.6,0.9", "--probe_protocols", "paper,controlled"]
    )[1]
    assert probe_args.rates == [0.0, 0.1, 0.3, 0.6, 0.9] and probe_args.protocols == ["paper", "controlled"]
    assert [pretrain_ncl.cell_name(r) for r in probe_args.rates[:2]] == ["clean", "label_noise_0.1"]


def test_a_rate_at_or_above_c_minus_1_over_c_is_refused_before_any_training(
    pretrain_ncl, tmp_path, monkeypatch
):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b", "c"])})
    split = Dataset.from_dict({"text": ["x y", "y z", "z x"] * 4, "label": [0, 1, 2] * 4}, features=features)
    folder = tmp_path / "three_classes"
    DatasetDict(train=split, test=split).save_to_disk(str(folder))

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the label-noise rates were checked")

    monkeypatch.setattr(pretrain_ncl, "ContrastiveTrainer", no_training)
    monkeypatch.setattr(pretrain_ncl, "backbone_source", no_training)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        pretrain_ncl.main(
            ["--dataset_name", str(folder), "--label_noise", "0.3,0.7", "--output_dir", str(out)]
        )
    message = str(info.value.code)
    assert "rate 0.7" in message and "3 classes" in message and "allowed: rates in [0, 0.667)" in message, (
        message
    )
    assert not out.exists()
    # CIFAR-100's 100 classes allow the authors' 90%; 10 classes do not
    probe_args = pretrain_ncl.parse_args(["--label_noise", "0,0.1,0.3,0.6,0.9"])[1]
    pretrain_ncl.check_rates(probe_args, CIFAR_CLASSES, "uoft-cs/cifar100")
    with pytest.raises(SystemExit, match=r"rate 0.9 is not valid for 'fashion_mnist' with 10 classes"):
        pretrain_ncl.check_rates(probe_args, 10, "fashion_mnist")


def test_the_gpu_scale_command_is_the_paper_setting_and_parses(pretrain_ncl):
    argv = gpu_scale_command()
    pre_args, probe_args, data_args, training_args, methods = pretrain_ncl.parse_args(
        [*argv, "--use_cpu", "true"]
    )
    assert (data_args.dataset_name, data_args.image_column, data_args.label_column) == (
        "uoft-cs/cifar100",
        "img",
        "fine_label",
    )
    assert (
        data_args.max_train_samples is None and data_args.max_eval_samples is None
    )  # every row of CIFAR-100
    assert pre_args.model_name_or_path == "microsoft/resnet-18" and not pre_args.use_pretrained_backbone
    assert (pre_args.projector_hidden_dim, pre_args.feature_dim) == (
        16384,
        2048,
    )  # the authors' CIFAR projector
    assert training_args.num_train_epochs == 200 and training_args.per_device_train_batch_size == 256
    assert training_args.bf16 and methods == ["simclr", "ncl"]
    assert probe_args.protocols == ["paper", "controlled"] and probe_args.probe_views == 8
    assert probe_args.rates == [0.0, 0.1, 0.3, 0.6, 0.9]


def test_every_command_of_the_docstring_parses(pretrain_ncl):
    text = re.sub(r"\\\n\s*", " ", ast.get_docstring(ast.parse(SCRIPT.read_text())))
    commands = [
        line.split("examples/pretrain_ncl.py", 1)[1].split("#")[0]
        for line in text.splitlines()
        if line.strip().startswith("accelerate launch examples/pretrain_ncl.py")
    ]
    assert len(commands) >= 4, commands
    for command in commands:
        argv = shlex.split(command)
        pretrain_ncl.parse_args([*argv, "--use_cpu", "true"] if "--bf16" in argv else argv)


def _synthetic(num_rows=240, dim=16, classes=4, views=3):
    """Separable training / test features for two methods (NCL's 10x smaller), and augmented training
    views that are pure noise: a probe that trains on them cannot learn the task."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(num_rows) % classes
    features = {}
    for method, scale in (("simclr", 1.0), ("ncl", 0.1)):
        features[method] = {
            key: scale * (centres[y] + 0.3 * torch.randn(num_rows, dim, generator=g))
            for key in ("train", "test")
        }
    noise = {method: torch.randn(views, num_rows, dim, generator=g) for method in features}
    return features, noise, y


def test_each_protocol_probes_as_documented(pretrain_ncl):
    from datasets import ClassLabel

    features, noise_views, y = _synthetic()
    probe_args = pretrain_ncl.parse_args(
        ["--label_noise", "0.3", "--probe_epochs", "10", "--probe_seeds", "2", "--probe_batch_size", "32"]
    )[1]
    label_feature = ClassLabel(num_classes=4)
    runs = {
        name: pretrain_ncl.probe(
            pretrain_ncl.protocol_for(name, probe_args),
            features,
            noise_views,
            y,
            y,
            label_feature,
            4,
            probe_args,
            "cpu",
        )
        for name in ("fixed", "paper", "controlled")
    }
    for name, by_method in runs.items():
        for method, result in by_method.items():
            assert set(result["cells"]) == {"clean", "label_noise_0.3"}, (name, method)
            assert all(
                0 <= c["test_accuracy"] <= 1 and len(c["per_seed"]) == 2 for c in result["cells"].values()
            )
    paper, controlled, fixed = runs["paper"], runs["controlled"], runs["fixed"]
    # paper: LARS 0.4, natural scale, trained on the K views (noise here: near chance on the clean test labels)
    assert all(
        r["probe_lr"] == 0.4 and r["input_scale"] == 1.0 and r["augmented_views"] == 3 for r in paper.values()
    )
    assert all(r["cells"]["clean"]["test_accuracy"] < 0.5 for r in paper.values()), paper
    # controlled and fixed train on the features themselves (no views) and learn the task
    assert all(
        r["augmented_views"] == 0 and r["cells"]["clean"]["test_accuracy"] > 0.9
        for r in (*controlled.values(), *fixed.values())
    ), (controlled, fixed)
    # controlled: NCL rescaled to SimCLR's mean norm, the rate chosen per method from the grid on held-out rows
    assert controlled["simclr"]["input_scale"] == 1.0 and controlled["ncl"]["input_scale"] == pytest.approx(
        10, rel=1e-3
    )
    grid = pretrain_ncl.probe_protocol("controlled").lr_grid
    for r in controlled.values():
        assert r["probe_lr"] in grid and len(r["lr_selection"]) == len(grid)
    assert all(r["probe_lr"] == probe_args.probe_lr and r["lr_selection"] == {} for r in fixed.values())


# ------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_the_gpu_scale_command_on_cpu_with_tiny_sizes_probes_under_both_protocols(tmp_path, hf_home):
    """Exactly the documented command's flags, the sizes made tiny (1 epoch, a 32 -> 16 projector, 3 probe
    epochs, 2 probe seeds, no data-loader workers), through accelerate launch on CPU, fully offline."""
    from transformers import AutoModel

    command = gpu_scale_command()
    out = tmp_path / "run"
    argv = with_values(command, num_train_epochs="1", per_device_train_batch_size="16",
                       per_device_eval_batch_size="64", projector_hidden_dim="32", feature_dim="16", probe_epochs="3",
                       probe_seeds="2", dataloader_num_workers="0", output_dir=str(out), use_cpu="true",
                       disable_tqdm="true", logging_steps="4")  # fmt: skip
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")
    }
    env.update(
        {
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )
    start = time.perf_counter()
    done = subprocess.run(
        [*LAUNCH, str(SCRIPT), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    print(f"pretrain_ncl GPU-scale command, tiny: {elapsed:.1f}s")
    payload = json.loads((out / "results.json").read_text())
    assert payload["dataset"] == "uoft-cs/cifar100" and payload["backbone"] == "microsoft/resnet-18"
    assert (payload["num_labels"], payload["train_rows"], payload["test_rows"]) == (CIFAR_CLASSES, 200, 60)
    rates = [0.0, 0.1, 0.3, 0.6, 0.9]
    assert payload["label_noise_rates"] == rates
    settings = payload["probe_protocols"]
    assert list(settings) == ["paper", "controlled"]
    paper, controlled = settings["paper"], settings["controlled"]
    assert (paper["optimizer"], paper["lr"], paper["schedule"], paper["epochs"]) == (
        "lars",
        0.4,
        "warmup_cosine",
        3,
    )
    assert paper["inputs"] == "natural scale" and paper["probe_views"] == 8  # the command's --probe_views
    assert paper["probe_lr"] == {"simclr": 0.4, "ncl": 0.4} and set(paper["input_scale"].values()) == {1.0}
    assert (controlled["optimizer"], controlled["equalize_scale"], controlled["probe_views"]) == (
        "adam",
        True,
        0,
    )
    assert controlled["input_scale"]["simclr"] == 1.0 and controlled["input_scale"]["ncl"] > 0
    for method in ("simclr", "ncl"):
        assert controlled["probe_lr"][method] in controlled["lr_grid"]
        assert all(0 <= s <= 1 for s in controlled["lr_selection"][method].values())
    cells = ["clean", "label_noise_0.1", "label_noise_0.3", "label_noise_0.6", "label_noise_0.9"]
    for method, r in payload["results"].items():
        assert set(r["probe"]) == {"paper", "controlled"}, method
        for protocol, probes in r["probe"].items():
            assert list(probes) == cells, (method, protocol)
            for cell in probes.values():
                assert len(cell["per_seed"]) == 2 and all(
                    math.isfinite(a) and 0 <= a <= 1 for a in cell["per_seed"]
                )
                assert math.isfinite(cell["test_accuracy"])
    assert len(payload["records"]) == 2 * 2 * len(rates)
    assert {(r["protocol"], r["level"]) for r in payload["records"]} == {
        (p, x) for p in settings for x in rates
    }
    from hf_monosem.evaluation.results import load_results

    loaded = load_results(payload["records"])  # valid result records, one per method, protocol and rate
    assert len({(r["method"], r["metric"], r["level"]) for r in loaded}) == len(loaded) == 2 * 2 * len(rates)
    assert {r["metric"] for r in loaded} == {
        "linear_probe_accuracy_paper",
        "linear_probe_accuracy_controlled",
    }
    assert "probe protocol paper: lars" in done.stdout and "probe protocol controlled: adam" in done.stdout
    assert (out / "results.png").is_file()
    for method, kind in (("simclr", "linear"), ("ncl", "nonneg")):
        model = AutoModel.from_pretrained(out / method)
        assert model.config.feature_layer == kind and model.config.feature_dim == 16
        assert model.config.projector_hidden_dim == 32 and model.backbone.config.hidden_sizes == [8, 16]
    assert elapsed < 120, f"{elapsed:.0f}s"
