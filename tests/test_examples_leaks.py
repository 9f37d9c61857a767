"""No example writes a secret or a local path: every file a run writes is grepped for the token given on
the command line and for the run's temporary folder.

Before: ``--token hf_...`` (and ``--hub_token``) landed in results.json's ``"command"``; a local backbone
folder was written into ``config.json`` (``backbone``, ``backbone_config._name_or_path``) and into an
exported SAE's ``cfg.json``; the benchmark wrote local paths into results.json / results.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_examples import TRAIN_FAST, launch, tiny_text_backbone  # noqa: F401 (a fixture)

from hf_monosem import MonoSemanticForSequenceClassification, MonoSemanticModel
from hf_monosem.models.configuration import public_name
from hf_monosem.models.sae_formats import save_sae
from hf_monosem.training.checkpoints import recorded_command

TOKEN = "hf_LeakCanaryLeakCanaryLeakCanary00"


def _leaks(folder: Path, *secrets: str) -> list[str]:
    """``file: secret`` for every file under ``folder`` that holds one of ``secrets`` (bytes, any format)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {s}" for s in secrets if s.encode() in data]
    return found


def test_recorded_command_hides_tokens_and_local_paths(tmp_path):
    argv = ["--token", TOKEN, f"--hub_token={TOKEN}", "--model_name_or_path", str(tmp_path / "bert"),
            f"--output_dir={tmp_path}/out", "--feature_layers", "linear,nonneg", "--model_name_or_path", "org/model"]  # fmt: skip
    command = recorded_command("/somewhere/examples/finetune_noisy.py", argv)
    assert TOKEN not in command and str(tmp_path) not in command
    assert command == (
        "finetune_noisy.py --token *** --hub_token=*** --model_name_or_path bert --output_dir=out "
        "--feature_layers linear,nonneg --model_name_or_path org/model"
    )
    assert public_name("org/model") == "org/model" and public_name("./models/bert") == "bert"


def test_saved_config_and_sae_cfg_hold_no_local_path(tmp_path, tiny_text_backbone):  # noqa: F811
    model = MonoSemanticForSequenceClassification.from_backbone(
        tiny_text_backbone, feature_layer="topk", feature_dim=64, topk=4, num_labels=2
    )
    assert model.config.backbone == tiny_text_backbone  # in memory the path stays usable
    model.save_pretrained(tmp_path / "saved")
    save_sae(model.monosemantic, tmp_path / "sae")
    base = MonoSemanticModel.from_backbone(tiny_text_backbone, feature_layer="linear", feature_dim=8)
    base.save_pretrained(tmp_path / "base")
    for folder in ("saved", "sae", "base"):
        assert _leaks(tmp_path / folder, str(Path(tiny_text_backbone).parent)) == []
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["backbone"] == Path(tiny_text_backbone).name
    # the checkpoint still loads (its weights are in it: the backbone name is not read)
    again = MonoSemanticForSequenceClassification.from_pretrained(tmp_path / "saved")
    ids = torch.tensor([[1, 5, 7, 2]])
    model.eval(), again.eval()
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


SMALL_TEXT = ["--max_train_samples", "32", "--max_eval_samples", "16", *TRAIN_FAST]
RUNS = {
    "finetune_fewshot": ["--shots", "2", "--token", TOKEN, *SMALL_TEXT],
    "finetune_domain_shift": ["--feature_layers", "linear", "--token", TOKEN, *SMALL_TEXT],
    "finetune_noisy": ["--feature_layers", "linear", "--token", TOKEN, "--dataset_name", "tweets", *SMALL_TEXT],
    "train_sae": ["--max_train_samples", "32", "--max_eval_samples", "16", "--feature_dim", "32", "--topk", "4",
                  "--sae_epochs", "1", "--probe_epochs", "1", "--probe_seeds", "1", "--disable_tqdm", "true"],
    "pretrain_ncl": ["--dataset_name", "digits", "--max_train_samples", "32", "--max_eval_samples", "16", "--num_train_epochs", "1",
                     "--per_device_train_batch_size", "16", "--probe_epochs", "1", "--probe_seeds", "1",
                     "--feature_dim", "16", "--projector_hidden_dim", "16", "--disable_tqdm", "true"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("script", list(RUNS))
def test_no_example_writes_the_token_or_the_temp_folder(script, tmp_path, tiny_text_backbone):  # noqa: F811
    out = tmp_path / "run"
    backbone = (
        [] if script == "pretrain_ncl" else ["--model_name_or_path", tiny_text_backbone]
    )  # digits: a ResNet
    argv = [*backbone, "--hub_token", TOKEN, "--output_dir", str(out), *RUNS[script]]
    launch(script, argv, tmp_path, accelerate=False)
    assert (out / "results.json").is_file()
    assert _leaks(out, TOKEN, str(tmp_path), str(Path(tiny_text_backbone).parent)) == []
