"""``hf-monosem report`` under ``accelerate launch --num_processes 2`` (CPU, gloo) fits what one process fits.

The launched command joins the process group, extracts each process's block of rows, fits the SAE and the
SimCLR / NCL projectors data-parallel (:mod:`hf_monosem.cached.data_parallel`), and leaves the probes and
every report file to process 0. Compared with the same command in one process on the same csv and tiny
BERT: the same fitted representations (their fit numbers to float rounding, see
``tests/cached/test_distributed_fitting.py`` for the weights), the same probe cells, one set of files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from report_fixtures import BERT_REPO, make_hub_cache, make_text_csv

from hf_monosem.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: training_toys
from training_toys import accelerate_launch  # noqa: E402

SMALL = ["--quick", "--seeds", "2", "--sae_topk", "8", "--probe_epochs", "5", "--representation_epochs", "2"]


@pytest.mark.distributed
@pytest.mark.slow
def test_launched_report_fits_what_one_process_fits_and_process_0_writes(tmp_path):
    cache, csv = make_hub_cache(tmp_path), make_text_csv(tmp_path / "reviews.csv")

    def argv(out: Path) -> list[str]:
        return [
            "report", "--model_name_or_path", BERT_REPO, "--dataset_name", csv, "--text_column", "review",
            "--label_column", "sentiment", "--cache_dir", cache, "--output_dir", str(out), *SMALL,
        ]  # fmt: skip

    # the README's form: accelerate launch ... -m hf_monosem report ...
    launched = accelerate_launch("-m", "hf_monosem", *argv(tmp_path / "two"), timeout=400)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("[hf-monosem report] wrote report.md") == 1  # process 0 speaks
    assert main(argv(tmp_path / "one")) == 0

    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert set(two["representation_fits"]) == set(one["representation_fits"])
    for name, fit in one["representation_fits"].items():
        for key, value in fit.items():
            launched_value = two["representation_fits"][name][key]
            assert launched_value == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
    cell = ("protocol", "scenario", "level", "method", "seed")
    assert sorted(tuple(r[k] for k in cell) for r in two["results"]) == sorted(
        tuple(r[k] for k in cell) for r in one["results"]
    )
    # one representation file, written once (by process 0), and no temporary file left behind
    assert len(list((tmp_path / "two" / "cache").glob("representations-*.safetensors"))) == 1
    assert not list((tmp_path / "two").glob("**/.*.tmp"))
