"""``hf-monosem report`` end to end, offline: a tiny BERT and a tiny ViT laid out in a real Hub cache, a csv
of texts and an image folder; resume after SIGKILL; every refusal before any work; the console entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from report_fixtures import BERT_REPO, RESNET_REPO, VIT_REPO, make_hub_cache, make_image_folder, make_text_csv

from hf_monosem.cli import main
from hf_monosem.evaluation.results import load_results, read_records
from hf_monosem.report.model_card import card_with_report
from hf_monosem.report.publish import save_report_for_hub

ROOT = Path(__file__).resolve().parents[2]
#: small budgets: the command's logic, not a result
SMALL = ["--quick", "--seeds", "2", "--sae_topk", "8", "--probe_epochs", "5", "--representation_epochs", "2"]
DOMAIN = ["--domain_column", "source", "--train_domains", "shop,web", "--shifted_domains", "phone"]
#: what the command's extraction progress bars say (on stderr) when they run
EXTRACTING = "extracting features"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_assets")
    return {
        "cache": make_hub_cache(root),
        "csv": make_text_csv(root / "reviews.csv"),
        "images": make_image_folder(root / "images"),
        "root": root,
    }


def text_argv(assets, output_dir, *extra):
    return [
        "report", "--model_name_or_path", BERT_REPO, "--dataset_name", assets["csv"],
        "--text_column", "review", "--label_column", "sentiment", "--cache_dir", assets["cache"],
        "--output_dir", str(output_dir), *SMALL, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def text_report(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("text_report")
    assert main(text_argv(assets, out, *DOMAIN, "--explain_features", "1")) == 0
    return out


def test_text_report_writes_verdicts_tables_plots_and_results(text_report):
    report = (text_report / "report.md").read_text()
    assert "- text: column 'review' holds the texts (--text_column); bert backbone, cls pooling" in report
    verdicts = report.split("## Verdicts")[1].split("##")[0]
    for scenario in ("label_noise", "typo_noise", "few_shot", "domain_shift_shifted"):
        assert f"**{scenario}**, simclr -> ncl: paper_cifar" in verdicts, scenario
    assert "controlled" in verdicts and "### Probe protocol: controlled" in report
    for family in ("label_noise", "input_noise", "few_shot", "domain_shift"):
        assert (text_report / f"gaps_{family}.png").stat().st_size > 0
    results = json.loads((text_report / "results.json").read_text())
    assert results["modality"] == "text" and results["dataset"] == "reviews.csv"
    records = read_records(text_report / "results.json")  # the package's one results schema
    assert {r["protocol"] for r in records} == {"paper_cifar", "controlled"}
    assert {r["method"] for r in records} == {"raw", "sae_k8", "simclr", "ncl", "simclr_sae_k8"}
    cells = load_results([r for r in records if r["protocol"] == "controlled"])
    assert {c["seeds"] for c in cells} == {2}
    rates = sorted({r["level"] for r in records if r["scenario"] == "label_noise"})
    assert rates == [0.0, 0.3, 0.6]  # --quick's rates, all below (3-1)/3
    assert results["explain"]["ncl"][0]["examples"][0]["label"] in ("negative", "neutral", "positive")
    assert results["monosemanticity"]["sae_k8"]["l0"] <= 8
    # the estimate printed first, per stage: the fits and probes from step times measured on this machine
    assert set(results["estimate_s"]) == {"extraction", "fitting", "probes", "total"}
    assert results["estimate_s"]["fitting"] > 0 and results["estimate_s"]["probes"] > 0


def cache_files(out: Path) -> dict[str, int]:
    """``{name: mtime_ns}`` of every file the command cached (a rewrite or a new file shows)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "cache").iterdir())}


def run_fresh(assets, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter (nothing shared with this process but the files), offline."""
    command = [sys.executable, "-m", "hf_monosem", *text_argv(assets, out, *extra)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=450)


@pytest.mark.timeout(600)
def test_a_rerun_in_a_fresh_process_extracts_nothing(assets, text_report, tmp_path):
    out = tmp_path / "report"
    shutil.copytree(text_report, out)  # copy2: the cached files keep their times
    before = cache_files(out)
    keys = 6  # train, test, the typo cell, the three domain splits
    assert sum(name.startswith("pooled-") for name in before) == keys
    rerun = run_fresh(assets, out, *DOMAIN, "--explain_features", "1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert EXTRACTING not in rerun.stderr and "text view" not in rerun.stderr
    assert rerun.stdout.count("loading cached features from") == keys
    estimate = next(line for line in rerun.stdout.splitlines() if "estimated time: about" in line)
    assert all(f"{stage} " in estimate for stage in ("extraction", "fitting", "probes"))  # printed first
    assert cache_files(out) == before  # nothing extracted, fitted or probed again: no file new or rewritten
    # nor the estimate's steps timed again: the first run's step times, to the bit
    estimates = [
        json.loads((folder / "results.json").read_text())["estimate_s"] for folder in (out, text_report)
    ]
    assert [(e["fitting"], e["probes"]) for e in estimates][0] == [
        (e["fitting"], e["probes"]) for e in estimates
    ][1]
    verdicts = [(folder / "report.md").read_text().split("## Verdicts")[1] for folder in (out, text_report)]
    assert verdicts[0].split("Wall time")[0] == verdicts[1].split("Wall time")[0]  # the same results


def test_domain_shift_from_a_second_csv(assets, tmp_path):
    shifted = make_text_csv(tmp_path / "other_shop.csv", rows=25, seed=1)  # same columns and classes
    out = tmp_path / "report"
    assert main(text_argv(assets, out, "--shifted_dataset_name", shifted)) == 0
    results = json.loads((out / "results.json").read_text())
    assert (
        "domain shift: train on 'train', test on 25 rows of 'other_shop.csv' (--shifted_dataset_name)"
        in (results["decisions"])
    )
    cells = [r for r in results["results"] if r["scenario"].startswith("domain_shift")]
    assert {r["scenario"] for r in cells} == {"domain_shift_in_domain", "domain_shift_shifted"}
    assert {r["method"] for r in cells} == {"raw", "sae_k8", "simclr", "ncl", "simclr_sae_k8"}
    shifted_accuracy = [r["accuracy"] * 25 for r in cells if r["scenario"] == "domain_shift_shifted"]
    assert all(abs(a - round(a)) < 1e-6 for a in shifted_accuracy)  # counted on the 25 rows, not the 18 test
    assert "**domain_shift_shifted**, raw -> sae_k8" in (out / "report.md").read_text()


def shifted_refusals(root: Path) -> dict[str, tuple[list[str], str]]:
    """Second data sets the command must refuse, and the message that names why."""
    renamed = ("negative", "meh", "great")  # 'neutral' and 'positive' renamed
    other_classes = make_text_csv(root / "other_classes.csv", rows=12, classes=renamed)
    header = ("body", "sentiment", "source")  # the texts under another name
    other_columns = make_text_csv(root / "other_columns.csv", rows=12, columns=header)
    return {
        "other class names": (
            ["--shifted_dataset_name", other_classes],
            "its classes differ from --dataset_name's (only in the shifted data: ['great', 'meh']; only in "
            "the main data: ['neutral', 'positive']); allowed: the same class names, ['negative', "
            "'neutral', 'positive']",
        ),
        "other column names": (
            ["--shifted_dataset_name", other_columns],
            "has no column 'review' (--text_column); allowed: data with the same column names as "
            "--dataset_name",
        ),
        "unknown split": (
            ["--shifted_dataset_name", other_columns, "--shifted_split", "dev"],
            "--shifted_split 'dev' is not a split of --shifted_dataset_name",
        ),
        "split without data": (
            ["--shifted_split", "test"],
            "--shifted_split 'test' without --shifted_dataset_name; allowed: them with "
            "--shifted_dataset_name",
        ),
        "both shift sources": (
            ["--shifted_dataset_name", other_classes, *DOMAIN],
            "and --domain_column 'source': allowed: one source of the shifted domain",
        ),
    }


SHIFTED_CASES = ["other class names", "other column names", "unknown split", "split without data",
                 "both shift sources"]  # fmt: skip


@pytest.mark.parametrize("case", SHIFTED_CASES)
def test_a_bad_second_data_set_is_refused_before_any_work(assets, tmp_path, capsys, case):
    extra, message = shifted_refusals(tmp_path)[case]
    out = tmp_path / "report"
    assert main(text_argv(assets, out, *extra)) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not out.exists()


def test_report_files_hold_no_machine_path(text_report):
    folder = str(text_report.parent)
    for name in ("report.md", "results.json"):
        text = (text_report / name).read_text()
        assert folder not in text and "/tmp" not in text, name


def test_push_prepares_a_dataset_card_offline(text_report):
    card = Path(save_report_for_hub(text_report)).read_text()
    assert card.startswith("---\ntags:\n- hf-monosem")
    assert "tiny-org/bert" in card and "**label_noise**" in card


def test_the_model_card_section_holds_the_real_verdicts_and_no_machine_path(text_report):
    results = json.loads((text_report / "results.json").read_text())
    card = card_with_report("# tiny-org/bert\n", results, report_repo_id="me/bert-report")
    assert all(line in card for line in results["verdicts"]) and len(results["verdicts"]) > 0
    assert "| ncl | " in card and str(text_report.parent) not in card


def test_image_folder_report(assets, tmp_path):
    argv = ["report", "--model_name_or_path", VIT_REPO, "--dataset_name", assets["images"], "--cache_dir",
            assets["cache"], "--output_dir", str(tmp_path), *SMALL, "--shots", "1,3",
            "--explain_features", "1"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["modality"] == "image" and results["decisions"][0].startswith("image: column 'image'")
    scenarios = {r["scenario"] for r in results["results"]}
    assert {"gaussian_noise", "uniform_noise", "label_noise", "few_shot"} <= scenarios
    assert [0.0] == sorted({r["level"] for r in results["results"] if r["scenario"] == "label_noise"})[:1]
    assert max(r["level"] for r in results["results"] if r["scenario"] == "label_noise") < 0.5  # 2 classes
    grid = results["explain"]["ncl"][0]["grid"]
    assert (tmp_path / grid).stat().st_size > 0 and not os.path.isabs(grid)


@pytest.mark.timeout(900)  # two fresh interpreters: about 2 min on loaded shared cores, minutes more at worst
def test_resume_after_sigkill_redoes_only_what_is_missing(assets, tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "hf_monosem", *text_argv(assets, out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:  # killed once the first protocol's probes are saved: the second protocol is still running
        deadline = time.monotonic() + 400
        while not list((out / "cache").glob("probes-paper_cifar-*.json")):
            assert first.poll() is None, "the first run ended before it could be killed"
            assert time.monotonic() < deadline, "no probe records after 400 s"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    extracted = {n: t for n, t in cache_files(out).items() if n.startswith(("pooled-", "views-"))}
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=450)
    assert second.returncode == 0, second.stderr[-3000:]
    assert EXTRACTING not in second.stderr and "text view" not in second.stderr  # the vectors were saved
    assert {n: t for n, t in cache_files(out).items() if n.startswith(("pooled-", "views-"))} == extracted
    assert "probe records of paper_cifar loaded from the cache" in second.stdout
    assert "probe records of controlled loaded" not in second.stdout  # it had not finished: run again
    assert "fit_sae" not in second.stderr  # the representations were saved before the kill: not refitted
    assert (out / "results.json").exists()


def one_class_csv(root: Path) -> str:
    path = root / "one_class.csv"
    path.write_text("review,sentiment\n" + "".join(f"w{i} w{i + 1},positive\n" for i in range(20)))
    return str(path)


REFUSALS = {
    "missing text column": (
        ["--text_column", "body"],
        "--text_column 'body' is not a column of the data; allowed:",
    ),
    "missing label column": (
        ["--label_column", "stars"],
        "--label_column 'stars' is not a column of the data",
    ),
    "rate at (C-1)/C": (
        ["--label_noise", "0,0.7"],
        "rates [0.7] are at or above (C-1)/C = 0.667 for 3 classes",
    ),
    "too few rows for the shots": (["--shots", "1,500"], "training rows; allowed: k <="),
    "one seed": (["--seeds", "1"], "--seeds 1 is not valid; allowed: an integer >= 2"),
    "unknown protocol": (["--probe_protocols", "paper_c10"], "allowed: paper_cifar, paper_in100, controlled"),
    "half the domain options": (["--domain_column", "source"], "allowed: all three or none"),
    "unknown domain": (
        ["--domain_column", "source", "--train_domains", "shop", "--shifted_domains", "fax"],
        "domains ['fax'] are not values of --domain_column 'source'; allowed: ['phone', 'shop', 'web']",
    ),
    "image backbone on text": (["--model_name_or_path", VIT_REPO], "reads images, but the data is text"),
    "SAE learning rate of 0": (["--sae_lr", "0"], "--sae_lr 0.0 is not valid; allowed: a number > 0"),
    "model card without --push_to_hub": (
        ["--model_card_repo_id", "me/encoder"],
        "--model_card_repo_id 'me/encoder' / --model_card_create_pr without --push_to_hub",
    ),
    "bad model card repo id": (
        ["--push_to_hub", "--model_card_repo_id", "me/my encoder"],
        "--model_card_repo_id 'me/my encoder' is not a Hub repository id; allowed: 'name' or ",
    ),
    "unknown NCL recipe": (
        ["--ncl_recipe", "p9"],
        "--ncl_recipe 'p9' is not valid; allowed: p2, authors, authors-nn",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_arguments_are_refused_before_any_work(assets, tmp_path, capsys, case):
    extra, message = REFUSALS[case]
    out = tmp_path / "report"
    argv = text_argv(assets, out)
    if "--model_name_or_path" in extra:  # replace the backbone, not add a second one
        argv[argv.index("--model_name_or_path") + 1] = extra[1]
        extra = []
    assert main([*argv, *extra]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not out.exists()  # nothing written: the refusal came first


def test_one_class_and_a_backbone_that_cannot_pool_are_refused(assets, tmp_path, capsys):
    out = tmp_path / "report"
    argv = text_argv(assets, out)
    argv[argv.index("--dataset_name") + 1] = one_class_csv(tmp_path)
    assert main(argv) == 2
    assert "has 1 class in the training rows; allowed: at least 2" in capsys.readouterr().err
    argv = ["report", "--model_name_or_path", RESNET_REPO, "--dataset_name", assets["images"], "--cache_dir",
            assets["cache"], "--output_dir", str(out), "--pooling", "cls"]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "cannot serve as a pooled backbone" in error and "pooling='cls' needs a token sequence" in error
    assert not out.exists()


def test_console_entry_point_is_the_cli_main(capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["hf-monosem"].partition(":")
    entry = getattr(__import__(module, fromlist=[name]), name)
    assert entry is main
    assert entry(["--help"]) == 0 and "report" in capsys.readouterr().out
    assert entry(["serve"]) == 2 and "unknown command 'serve'; allowed: report" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_minilm_on_a_builtin_dataset(tmp_path):
    from hf_monosem.data import minilm_path

    argv = ["report", "--model_name_or_path", minilm_path(), "--dataset_name", "tweets", "--quick",
            "--pooling", "mean", "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["modality"] == "text" and results["dataset"] == "tweets"
    assert "bert backbone, mean pooling of width 384" in results["decisions"][0]
    assert {"label_noise", "typo_noise", "few_shot"} <= {r["scenario"] for r in results["results"]}
    assert (tmp_path / "report.md").read_text().count("**label_noise**") == len(results["pairs"])


def test_readme_command_parses():
    import re
    import shlex

    from hf_monosem.report.arguments import parse_report_arguments

    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
    commands = [
        line.split("hf-monosem report", 1)[1]
        for line in text.splitlines()
        if line.startswith("hf-monosem report")
    ]
    assert commands, "the README shows no hf-monosem report command"
    for command in commands:
        args = parse_report_arguments(shlex.split(command))
        assert args.model_name_or_path and args.dataset_name
