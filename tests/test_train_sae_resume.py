"""``examples/train_sae.py`` resume: the same seed gives the same run, and a resume reuses the saved SAE
only when it was fitted for the same options and the same training features.

Before: the backbone was built unseeded (two runs with one seed differed, so a killed-and-resumed run
did too), and a resume reused the saved SAE whatever the options (``--feature_dim 64`` reused a
32-wide SAE while results.json said 64; another backbone got the old SAE).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_examples import launch

DIGITS = ["--dataset_name", "digits", "--max_train_samples", "64", "--max_eval_samples", "32", "--topk", "4",
          "--sae_epochs", "2", "--probe_epochs", "1", "--probe_seeds", "1",
          "--disable_tqdm", "true"]  # fmt: skip


def _run(out, *extra):
    stdout, _ = launch("train_sae", [*DIGITS, "--output_dir", str(out), *extra], out.parent, accelerate=False)
    return (
        stdout,
        json.loads((out / "sae_report.json").read_text()),
        json.loads((out / "results.json").read_text()),
    )


@pytest.mark.slow
@pytest.mark.timeout(600)  # four runs of the example
def test_train_sae_is_seeded_and_resumes_only_a_matching_sae(tmp_path):
    # same seed, fresh folder: the same run. The two runs share nothing on disk and each uses one thread,
    # so they run side by side (one wall-clock run less on 2 cores).
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_run, tmp_path / folder, "--feature_dim", "32") for folder in ("a", "b")]
        (_, first, results), (_, second, _) = (run.result() for run in runs)
    assert second["fit"] == first["fit"] and second["features_sha256"] == first["features_sha256"]

    stdout, again, _ = _run(tmp_path / "a", "--feature_dim", "32", "--resume_from_checkpoint", "True")
    assert "reusing the SAE fitted before" in stdout and again == first

    stdout, wider, results = _run(tmp_path / "a", "--feature_dim", "64", "--resume_from_checkpoint", "True")
    assert "not reusing the SAE" in stdout and "--feature_dim: 32 -> 64" in stdout
    assert wider["sae"]["feature_dim"] == 64
    config = json.loads((tmp_path / "a" / "sae_model" / "config.json").read_text())
    assert config["feature_dim"] == 64
