"""Two processes under ``accelerate launch`` (CPU, gloo) compute what one process computes.

* InfoNCE with negatives gathered across processes, through a real (tiny ViT) backbone under DDP:
  2 processes x 32 examples give the same loss and, after DDP's gradient averaging, the same
  gradients as 1 process x 64 examples (the two views are precomputed, so nothing random differs).
* ``MonoSemanticTrainer`` under 2 processes: the logged feature statistics are reduced over the
  processes (sums and counts added, "ever active" OR-ed), every process logs the same numbers, and
  only the main process writes checkpoint files (each process writes only its own RNG state).
* The example FSDP config (``examples/accelerate_configs/fsdp.yaml``): its wrap policy on our models
  (on CPU), and a real FSDP run where there are GPUs (accelerate does not enable FSDP on CPU).

The launch itself (``training_toys.accelerate_launch``) is the one documented in docs/RELIABILITY.md:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_vit_config
from training_toys import accelerate_launch

from hf_monosem import ImageViews, MonoSemanticConfig, MonoSemanticModel
from hf_monosem.training.losses import info_nce_loss

TESTS = Path(__file__).resolve().parents[1]  # tests/: where tiny_models.py and training_toys.py live
# what the launched scripts put on sys.path: tests/ and this folder (they import helpers of this module)
SEARCH_PATH = f"{TESTS}|{Path(__file__).resolve().parent}"
CONFIGS = TESTS.parent / "examples" / "accelerate_configs"
PER_PROCESS, WORLD = 32, 2


def contrastive_model() -> MonoSemanticModel:
    torch.manual_seed(0)  # the same initial weights in every process and in the reference
    cfg = MonoSemanticConfig(
        backbone_config=tiny_vit_config(), feature_layer="nonneg", feature_dim=32, projector_hidden_dim=32
    )
    return MonoSemanticModel(cfg)


INFO_NCE_SCRIPT = """
import sys
import torch
sys.path[:0] = sys.argv[2].split("|")  # tests/ and tests/training/
from accelerate import Accelerator, DistributedDataParallelKwargs
from test_distributed import PER_PROCESS, contrastive_model
from hf_monosem.training.losses import info_nce_loss

torch.set_num_threads(1)
# the ViT's pooler is unused (pooling="cls" reads the hidden states): without find_unused_parameters
# DDP would silently skip the gradient all-reduce of this first step (and fail at the next one);
# the Trainer sets find_unused_parameters=True for transformers models by itself
ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
accelerator = Accelerator(cpu=True, kwargs_handlers=[ddp])
model = accelerator.prepare(contrastive_model())  # DistributedDataParallel: averages gradients
model.train()
rank, world = accelerator.process_index, accelerator.num_processes
views = torch.load(f"{sys.argv[1]}/views.pt")
mine = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
features = model(pixel_values=torch.cat([views[0][mine], views[1][mine]])).features
z1, z2 = features.chunk(2)
loss = info_nce_loss(z1, z2, 0.2)  # 2 * 64 - 2 negatives per anchor: gathered from both processes
accelerator.backward(loss)
grads = {
    n: p.grad.clone() for n, p in accelerator.unwrap_model(model).named_parameters() if p.grad is not None
}
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
ended = not torch.distributed.is_initialized()
torch.save({"world": world, "loss": loss.detach(), "grads": grads, "group_ended": ended},
           f"{sys.argv[1]}/rank{rank}.pt")
"""


@pytest.mark.distributed
def test_gathered_info_nce_on_two_processes_equals_one_process_with_the_whole_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(PER_PROCESS * WORLD, 3, 16, 16, generator=g)
    views = ImageViews(crop_scale=(0.6, 1.0), grayscale_p=0.0)
    fixed = torch.stack([views(images, g), views(images, g)])  # [2 views, 64, 3, 16, 16], drawn once
    torch.save(fixed, tmp_path / "views.pt")
    script = tmp_path / "info_nce.py"
    script.write_text(INFO_NCE_SCRIPT)
    result = accelerate_launch(script, tmp_path, SEARCH_PATH)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert all(r["world"] == WORLD for r in ranks)
    assert all(r["group_ended"] for r in ranks)  # end_process_group left no gloo group alive at exit

    model = contrastive_model().train()
    features = model(pixel_values=torch.cat([fixed[0], fixed[1]])).features
    z1, z2 = features.chunk(2)
    full = info_nce_loss(z1, z2, 0.2)
    full.backward()
    # each process averages over its 64 anchors; the whole batch averages over all 128
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, full.detach(), rtol=1e-5, atol=1e-6)
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for r in ranks:  # DDP leaves the same averaged gradient in every process
        assert r["grads"].keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the gathered negatives matter: one process's 32 examples alone give another loss
    alone = info_nce_loss(z1[:PER_PROCESS], z2[:PER_PROCESS], 0.2)
    assert abs(float(alone.detach()) - float(ranks[0]["loss"])) > 1e-3


COMPILED_GATHER_SCRIPT = """
import sys
import warnings
import torch
warnings.simplefilter("error", FutureWarning)  # a deprecated collective fails here instead of warning
from accelerate import Accelerator
from hf_monosem.training.losses import gather_with_grad, info_nce_loss

torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
data = torch.load(f"{sys.argv[1]}/data.pt")
mine = slice(rank * 4, (rank + 1) * 4)


def weighted(x):  # one number from the gathered matrix: its gradient says where every row's gradient went
    return (gather_with_grad(x) * data["weights"]).sum()


out = {"world": world}
compiled = torch.compile(weighted, fullgraph=True, backend="aot_eager")
for name, fn in {"eager": weighted, "compiled": compiled}.items():
    x = data["x"][mine].clone().requires_grad_(True)
    fn(x).backward()
    out[name + "_grad"] = x.grad
loss = torch.compile(info_nce_loss, fullgraph=True, backend="aot_eager")
a, b = data["a"][mine].clone().requires_grad_(True), data["b"][mine]
out["info_nce"] = loss(a, b, 0.2).detach()
torch.save(out, f"{sys.argv[1]}/rank{rank}.pt")
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
def test_gather_with_grad_compiles_with_no_deprecated_collective(tmp_path):
    """``gather_with_grad`` under ``torch.compile(fullgraph=True)`` on two processes, FutureWarnings as
    errors: the gathered rows keep their gradients (each process gets the sum over processes of its own rows'
    gradient), and a compiled InfoNCE over the gathered negatives equals one process's loss on the whole
    batch's negatives."""
    g = torch.Generator().manual_seed(0)
    data = {k: torch.randn(8, 5, generator=g) for k in ("x", "weights", "a", "b")}
    torch.save(data, tmp_path / "data.pt")
    script = tmp_path / "compiled_gather.py"
    script.write_text(COMPILED_GATHER_SCRIPT)
    result = accelerate_launch(script, tmp_path, SEARCH_PATH)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["world"] == WORLD
        expected = (
            WORLD * data["weights"][rank * 4 : (rank + 1) * 4]
        )  # every process's loss reaches these rows
        torch.testing.assert_close(out["eager_grad"], expected)
        torch.testing.assert_close(out["compiled_grad"], expected)
        # rank r's anchors against all 16 embeddings, as in one process (the others' rows are its negatives)
        z = torch.nn.functional.normalize(
            torch.cat([data["a"][rank * 4 : (rank + 1) * 4], data["b"][rank * 4 : (rank + 1) * 4]]), dim=-1
        )
        everyone = torch.nn.functional.normalize(
            torch.cat(
                [
                    torch.cat([data["a"][r * 4 : (r + 1) * 4], data["b"][r * 4 : (r + 1) * 4]])
                    for r in range(WORLD)
                ]
            ),
            dim=-1,
        )
        logits = z @ everyone.t() / 0.2
        rows = torch.arange(8)
        logits[rows, rows + rank * 8] = float("-inf")
        positives = rank * 8 + (rows + 4) % 8
        torch.testing.assert_close(out["info_nce"], torch.nn.functional.cross_entropy(logits, positives))


TRAINER_SCRIPT = """
import json, os, sys
import torch
sys.path[:0] = sys.argv[2].split("|")  # tests/ and tests/training/
out = os.path.abspath(sys.argv[1])
written = set()

def audit(event, args):  # every file this process opens for writing under the output folder
    if event == "open" and isinstance(args[0], str) and args[1] and any(c in args[1] for c in "wax+"):
        path = os.path.abspath(args[0])
        if path.startswith(out + os.sep + "run"):
            written.add(os.path.relpath(path, out))

sys.addaudithook(audit)
import transformers.modeling_utils as modeling_utils
save_file = modeling_utils.safe_save_file  # safetensors writes from Rust: no "open" audit event

def recording_save_file(tensors, filename, *args, **kwargs):
    audit("open", (str(filename), "wb", 0))
    return save_file(tensors, filename, *args, **kwargs)

modeling_utils.safe_save_file = recording_save_file
torch_save = torch.save  # likewise torch.save, from C++, when given a path

def recording_torch_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        audit("open", (os.fspath(f), "wb", 0))
    return torch_save(obj, f, *args, **kwargs)

torch.save = recording_torch_save
from tiny_models import tiny_resnet_config
from training_toys import toy_images, training_args
import hf_monosem.training.trainer as trainer_module
from hf_monosem import MonoSemanticConfig, MonoSemanticForImageClassification, MonoSemanticTrainer

windows = []
summarize = trainer_module.RunningTerms.summarize
def recording(self, accelerator=None):
    local = {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts),
             "ever_active": None if self.ever_active is None else self.ever_active.int().tolist()}
    result = summarize(self, accelerator)
    windows.append({"local": local, "reduced": result})
    return result
trainer_module.RunningTerms.summarize = recording

torch.manual_seed(0)
cfg = MonoSemanticConfig(
    backbone_config=tiny_resnet_config(), feature_layer="sae", feature_dim=32, num_labels=3
)
args = training_args(f"{out}/run", num_train_epochs=2, logging_steps=1, save_strategy="steps", save_steps=2,
                     dataloader_drop_last=True, eval_strategy="epoch")
trainer = MonoSemanticTrainer(model=MonoSemanticForImageClassification(cfg), args=args,
                              train_dataset=toy_images(n=48, seed=3), eval_dataset=toy_images(n=32, seed=1))
trainer.train()
trainer.save_model()
metrics = trainer.evaluate()
rank = trainer.args.process_index
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"world": trainer.args.world_size, "windows": windows, "logs": trainer.state.log_history,
               "metrics": metrics, "written": sorted(written)}, f)
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


@pytest.mark.distributed
def test_trainer_under_two_processes_reduces_statistics_and_saves_once(tmp_path):
    script = tmp_path / "trainer_run.py"
    script.write_text(TRAINER_SCRIPT)
    result = accelerate_launch(script, tmp_path, SEARCH_PATH)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [run["world"] for run in runs] == [WORLD, WORLD]

    # every summary (train log windows and evaluations) is the reduction of both processes' windows
    assert len(runs[0]["windows"]) == len(runs[1]["windows"]) >= 6
    differed = False
    for w0, w1 in zip(runs[0]["windows"], runs[1]["windows"]):
        assert w0["reduced"] == w1["reduced"]
        l0, l1 = w0["local"], w1["local"]
        if not l0["sums"]:
            continue
        for name in l0["sums"]:
            expected = (l0["sums"][name] + l1["sums"][name]) / (l0["counts"][name] + l1["counts"][name])
            assert w0["reduced"][name] == pytest.approx(expected, rel=1e-6, abs=1e-7), name
            differed |= abs(l0["sums"][name] - l1["sums"][name]) > 1e-6
        fired = [a or b for a, b in zip(l0["ever_active"], l1["ever_active"])]
        assert w0["reduced"]["dead_fraction"] == pytest.approx(1 - sum(fired) / len(fired))
    assert differed, "the processes saw the same batches: the reduction was not exercised"
    # so both processes log and report the same numbers
    strip = [
        {k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in runs[0]["logs"]
    ]
    assert strip == [
        {k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in runs[1]["logs"]
    ]
    assert runs[0]["metrics"]["eval_active_fraction"] == runs[1]["metrics"]["eval_active_fraction"]

    # 48 rows / (8 x 2 processes) = 3 steps an epoch, 6 in all: checkpoints at steps 2, 4, 6
    main_files, other_files = set(runs[0]["written"]), set(runs[1]["written"])
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for name in checkpoints:
        assert {f"run/{name}/model.safetensors", f"run/{name}/trainer_state.json"} <= main_files
        assert f"run/{name}/rng_state_0.pth" in main_files and f"run/{name}/rng_state_1.pth" in other_files
    assert "run/model.safetensors" in main_files and "run/config.json" in main_files
    # the other process writes nothing but its own RNG state (needed to resume it)
    assert other_files and all(Path(f).name == "rng_state_1.pth" for f in other_files), sorted(other_files)


FSDP_SCRIPT = """
import json, sys
import torch
sys.path[:0] = sys.argv[2].split("|")  # tests/ and tests/training/
from tiny_models import tiny_bert_config
from training_toys import toy_text, training_args
from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification, MonoSemanticTrainer

torch.manual_seed(0)
cfg = MonoSemanticConfig(backbone_config=tiny_bert_config(num_hidden_layers=2), feature_layer="sae",
                         feature_dim=32, num_labels=2)
args = training_args(f"{sys.argv[1]}/run", num_train_epochs=1, logging_steps=1, learning_rate=1e-3,
                     dataloader_drop_last=True, use_cpu=False, bf16=True)
trainer = MonoSemanticTrainer(model=MonoSemanticForSequenceClassification(cfg), args=args,
                              train_dataset=toy_text(n=32))
trainer.train()
trainer.save_model()
wrapped = type(trainer.model_wrapped).__name__
with open(f"{sys.argv[1]}/rank{trainer.args.process_index}.json", "w") as f:
    json.dump({"world": trainer.args.world_size, "wrapped": wrapped, "fsdp": trainer.is_fsdp_enabled,
               "logs": trainer.state.log_history}, f)
from hf_monosem.cached.distributed import end_process_group

end_process_group()  # every launched script ends so: none aborts at exit (see its docstring)
"""


FSDP_ON_CPU = (
    "accelerate 1.15 enables FSDP only on GPU-type process groups: AcceleratorState turns "
    "ACCELERATE_USE_FSDP into DistributedType.FSDP only when the state is MULTI_GPU/NPU/XPU/..., so with "
    "ACCELERATE_USE_CPU=1 (MULTI_CPU, gloo) the FSDP config is ignored and the Trainer wraps the model in "
    "DDP; without it each process runs alone"
)


@pytest.mark.distributed
@pytest.mark.skipif(not torch.cuda.is_available(), reason=FSDP_ON_CPU)
def test_fsdp_config_trains_on_gpus(tmp_path):
    """The shipped FSDP config as is (FSDP2, transformer-block wrap, full shard, bf16), one process per
    GPU."""
    import yaml

    config = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    config["num_processes"] = torch.cuda.device_count()
    gpu_config = tmp_path / "fsdp.yaml"
    gpu_config.write_text(yaml.safe_dump(config))
    script = tmp_path / "fsdp_run.py"
    script.write_text(FSDP_SCRIPT)
    result = accelerate_launch(script, tmp_path, SEARCH_PATH, config_file=gpu_config, use_cpu=False)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert len(runs) == config["num_processes"] and all(run["fsdp"] for run in runs)
    losses = [[e["loss"] for e in run["logs"] if "loss" in e] for run in runs]
    assert all(x == x for x in losses[0]) and all(other == losses[0] for other in losses)
    assert (tmp_path / "run" / "model.safetensors").is_file()  # FULL_STATE_DICT: one loadable file
    from hf_monosem import MonoSemanticForSequenceClassification

    MonoSemanticForSequenceClassification.from_pretrained(tmp_path / "run")


@pytest.mark.parametrize("family", ["bert", "vit", "llama"])
def test_fsdp_config_wraps_each_transformer_block(family):
    """What the FSDP config does to our models, checked without launching (runs on CPU)."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from tiny_models import BACKBONES

    from hf_monosem import MonoSemanticForImageClassification, MonoSemanticForSequenceClassification

    fsdp = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"], auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
        cpu_ram_efficient_loading=fsdp["fsdp_cpu_ram_efficient_loading"], mixed_precision_policy="bf16",
    )  # fmt: skip
    make_config, kind = BACKBONES[family]
    cls = MonoSemanticForSequenceClassification if kind == "text" else MonoSemanticForImageClassification
    model = cls(
        MonoSemanticConfig(backbone_config=make_config(), feature_layer="sae", feature_dim=32, num_labels=2)
    )
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(m).__name__ for m in model.modules() if policy(m)}
    blocks = {"bert": "BertLayer", "vit": "ViTLayer", "llama": "LlamaDecoderLayer"}[family]
    assert blocks in wrapped  # one FSDP unit per transformer block, from the backbone's _no_split_modules
    assert not wrapped & {type(model.feature_layer).__name__, "Linear"}  # feature layer + head: the root unit
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16


def test_shipped_accelerate_configs_parse():
    import yaml

    configs = {p.name: yaml.safe_load(p.read_text()) for p in CONFIGS.glob("*.yaml")}
    assert {"cpu_2proc.yaml", "ddp_gpu.yaml", "fsdp.yaml"} <= configs.keys()
    assert configs["fsdp.yaml"]["distributed_type"] == "FSDP"
    fsdp = configs["fsdp.yaml"]["fsdp_config"]
    assert (
        fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        and configs["fsdp.yaml"]["mixed_precision"] == "bf16"
    )
    assert configs["cpu_2proc.yaml"]["num_processes"] == 2 and configs["cpu_2proc.yaml"]["use_cpu"] is True


# ---- the launch helper: a port taken between accelerate's pick and torchrun's bind ---------------------


def test_a_launch_whose_port_was_taken_is_started_again_and_other_failures_are_not(monkeypatch, tmp_path):
    import subprocess

    taken = (
        "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
        "address. port: 41234, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use"
    )
    outcomes = [(1, taken), (0, "")]
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        code, err = outcomes[len(calls) - 1]
        return subprocess.CompletedProcess(command, code, "", err)

    monkeypatch.setattr(subprocess, "run", run)
    assert accelerate_launch(tmp_path / "script.py").returncode == 0 and len(calls) == 2
    assert all(c[c.index("--main_process_port") + 1] == "0" for c in calls)  # accelerate picks the port
    calls.clear()
    outcomes[:] = [(1, "ValueError: a real failure")]
    assert accelerate_launch(tmp_path / "script.py").returncode == 1 and len(calls) == 1  # not retried
    calls.clear()
    outcomes[:] = [(1, taken)] * 3
    assert accelerate_launch(tmp_path / "script.py", attempts=3).returncode == 1 and len(calls) == 3
