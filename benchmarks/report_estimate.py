"""How far ``hf-monosem report``'s printed time estimate is from the stage times the same run measured.

Runs the command on up to three inputs, each in a fresh output folder (nothing cached): the tests' tiny
BERT on a csv of 90 texts and their tiny ViT on an image folder of 60 images (both built here, offline,
with ``tests/report/report_fixtures.py``; the tests' small budgets), and with ``--minilm`` the real
all-MiniLM-L6-v2 on the built-in ``tweets`` with ``--quick`` (the ``assets`` extra; minutes). For each
run it prints, per stage (extraction, fitting, probes, total), the estimate printed before the work
(``estimate_s`` in ``results.json``), the wall time the run measured (``timings_s``) and their ratio.

    python benchmarks/report_estimate.py --minilm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--quick", "--seeds", "2", "--sae_topk", "8", "--probe_epochs", "5", "--representation_epochs", "2"]


def stage_times(timings: dict[str, float]) -> dict[str, float]:
    """The run's measured seconds grouped as the estimate groups them."""
    out = {
        "extraction": timings.get("extract features", 0.0),
        "fitting": timings.get("fit representations", 0.0),
        "probes": sum(v for k, v in timings.items() if k.startswith("probe grid")),
    }
    out["total"] = sum(out.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minilm", action="store_true", help="also the real MiniLM on tweets (--quick)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: no network look-up
    sys.path[:0] = [str(ROOT / "tests" / "report"), str(ROOT / "tests")]
    from report_fixtures import BERT_REPO, VIT_REPO, make_hub_cache, make_image_folder, make_text_csv

    from hf_monosem.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = make_hub_cache(root)
        runs = {
            "tiny BERT, csv": [
                "--model_name_or_path", BERT_REPO, "--dataset_name", make_text_csv(root / "reviews.csv"),
                "--text_column", "review", "--label_column", "sentiment", "--cache_dir", cache, *SMALL,
            ],
            "tiny ViT, image folder": [
                "--model_name_or_path", VIT_REPO, "--dataset_name", make_image_folder(root / "images"),
                "--cache_dir", cache, *SMALL,
            ],
        }  # fmt: skip
        if args.minilm:
            from hf_monosem.data import minilm_path

            runs["MiniLM, tweets --quick"] = [
                "--model_name_or_path", minilm_path(), "--dataset_name", "tweets", "--quick",
                "--pooling", "mean",
            ]  # fmt: skip
        for name, argv in runs.items():
            out = root / name.split(",")[0].replace(" ", "_")
            start = time.perf_counter()
            assert cli(["report", *argv, "--output_dir", str(out)]) == 0
            wall = time.perf_counter() - start
            results = json.loads((out / "results.json").read_text())
            estimate, measured = results["estimate_s"], stage_times(results["timings_s"])
            print(f"\n{name} (whole command {wall:.0f} s)")
            for stage in ("extraction", "fitting", "probes", "total"):
                ratio = estimate[stage] / max(measured[stage], 1e-9)
                print(f"  {stage:<10} estimated {estimate[stage]:8.1f} s  measured {measured[stage]:8.1f} s  "
                      f"ratio {ratio:5.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
