"""``hf-monosem report``'s work, in order, each stage resumable: checks, estimate, extraction, fits, probes.

Every stage keeps what it made under ``<output_dir>/cache``: the backbone's vectors and views
(:func:`~hf_monosem.extract_pooled_features` and its twins: keyed by the model's weights and the rows),
the fitted representations (:func:`~hf_monosem.report.tracks.fit_representations`) and each probe
protocol's records (one JSON file per protocol, keyed by everything the probes read), each written
atomically. A run killed at any point (even by SIGKILL) redoes only the stages whose file is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoTokenizer, DataCollatorWithPadding

from ..cached import augmented_view_features, load_tensors, save_tensors, tensors_sha256
from ..cached.distributed import barrier, process_world
from ..cached.feature_cache import extract_pooled_features, model_fingerprint, text_view_features
from ..models.configuration import public_name
from ..models.modeling import MonoSemanticModel
from ..scenarios import add_text_noise, perturb_images
from ..scenarios.grid import DOMAIN_TRAIN, TEST, TRAIN, ProbeResults, TensorRows, Timer, Track, probe_records
from ..scenarios.protocols import ProbeProtocol, probe_protocol
from ..training.checkpoints import read_json, write_json
from ..training.views import ImageViews
from .arguments import ReportArguments, list_of, numbers_of
from .estimate import Work, estimate_line, estimate_seconds, measure_work, planned_work
from .inputs import ReportInputs, load_report_inputs
from .tracks import RepresentationPlan, build_track, fit_representations

__all__ = ["join_launched_processes", "run_report"]

logger = logging.getLogger(__name__)


def _key(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _fetch_options(args: ReportArguments) -> dict[str, Any]:
    """The loading options a tokenizer / image processor takes (dtype and attention are the model's)."""
    fetch = ("revision", "token", "trust_remote_code", "cache_dir")
    return {k: v for k, v in args.loading_kwargs().items() if k in fetch}


def _rows_key(rows: Any) -> str:
    """A key of tokenised rows from their token ids: the same in every process (a ``datasets.map``
    fingerprint is not: it hashes the tokenizer object, which can differ between interpreters, and a
    resumed run would extract everything again)."""
    digest = hashlib.sha256()
    for column in ("input_ids", "attention_mask", "token_type_ids"):
        if column in rows.column_names:
            digest.update(json.dumps(rows[column][:]).encode())
    return digest.hexdigest()


def _text_rows(args: ReportArguments, inputs: ReportInputs):
    """Tokenised rows of every key (typo cells: perturbed copies of the test texts) and the collator."""
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, **_fetch_options(args))
    if tokenizer.pad_token is None:  # decoder LMs ship none; the attention mask keeps pads out of the pooling
        tokenizer.pad_token = tokenizer.eos_token
    texts = dict(inputs.splits)
    cells = []
    for rate in numbers_of("typo_rates", args.typo_rates):
        key = f"typo{rate:g}"
        texts[key] = add_text_noise(
            inputs.splits[TEST], kind="typo", rate=rate, seed=0, text_column=inputs.column
        )
        cells.append(("typo_noise", rate, key))

    def tokenize(batch):
        return tokenizer(batch[inputs.column], truncation=True, max_length=args.max_length)

    rows = {key: ds.map(tokenize, batched=True, desc=f"tokenizing {key}") for key, ds in texts.items()}
    return rows, DataCollatorWithPadding(tokenizer), cells


def _tokens(rows: Any) -> int:
    """The tokens of tokenised rows (summed in Arrow: no Python list per row)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(rows.with_format("arrow")["input_ids"])).as_py() or 0)


def _pixels(inputs: ReportInputs, processor: Any, split) -> torch.Tensor:
    """``[N, C, H, W]`` model-ready pixels of a split (resized and normalised by the backbone's image
    processor; ``pixel_values`` tensors of the built-ins kept as they are)."""
    if processor is None:
        return torch.as_tensor(split.with_format("torch")["pixel_values"][:]).float()
    out = []
    for start in range(0, len(split), 256):
        images = [image.convert("RGB") for image in split[start : start + 256][inputs.column]]
        out.append(processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(out).float()


def _image_rows(args: ReportArguments, inputs: ReportInputs):
    """Pixels of every key, Gaussian / uniform noise cells on the normalised test pixels (the paper's), and
    the processor (``None`` for ready tensors)."""
    processor = None
    if inputs.column != "pixel_values":
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path, **_fetch_options(args))
    pixels = {key: _pixels(inputs, processor, split) for key, split in inputs.splits.items()}
    generator = torch.Generator().manual_seed(1234)
    cells = []
    for s in numbers_of("pixel_noise", args.pixel_noise):
        for kind in ("gaussian", "uniform"):
            key = f"{kind}{s:g}"
            pixels[key] = perturb_images(pixels[TEST], kind, s, generator=generator)
            cells.append((f"{kind}_noise", s, key))
    return pixels, cells, processor


def _image_views(
    model: MonoSemanticModel, pixels: torch.Tensor, num_views: int, processor: Any, cache_dir: str
) -> torch.Tensor:
    """``[K, N, F]`` pooled vectors of K augmented copies of every training image (the authors' probe
    augmentation: random resized crop 0.08-1 and flips, no colour change), cached like the plain vectors."""
    key = _key(model_fingerprint(model.backbone), tensors_sha256({"pixels": pixels}), num_views, "views-v1")
    path = os.path.join(cache_dir, f"image-views-{key}.safetensors")
    cached = load_tensors(path, {"key": key})
    if cached is not None:
        logger.info("loading cached image views from the cache")
        return cached["views"]

    def encode(images: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images).pooled

    # the processor's normalisation undone for the crops (none for ready tensors)
    scale = {} if processor is None else {"mean": processor.image_mean, "std": processor.image_std}
    augment = ImageViews(crop_scale=(0.08, 1.0), hflip_p=0.5, color_jitter_p=0.0, grayscale_p=0.0, **scale)
    with torch.no_grad():
        # under accelerate launch each process augments its blocks of images, gathered in order: the
        # per-block generators give every process the views one process computes (the key is unchanged)
        views = augmented_view_features(
            encode, pixels, augment, num_views, seed=0, progress=True, split_processes=True
        )
    if process_world()[1] == 0:  # every process holds the same views: one writes them
        save_tensors(path, {"views": views}, {"key": key})
    barrier()  # the file is complete before any process goes on
    return views


def _silent(line: str) -> None:
    """What the other processes of ``accelerate launch`` say: nothing (process 0 speaks)."""


def join_launched_processes() -> tuple[int, int]:
    """``(world size, rank)``, after joining the process group when launched by ``accelerate launch`` /
    ``torchrun`` with more than one process (``WORLD_SIZE > 1``; accelerate's ``PartialState``: gloo on
    CPUs, NCCL on GPUs), so that the extraction and the label-free fits split the work; ``(1, 0)`` alone.

    Example:
        >>> join_launched_processes()  # not launched
        (1, 0)
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState()
    world, rank = process_world()
    return world, rank


def _step_timing(
    work: list[Work], plan: RepresentationPlan, protocols: list[ProbeProtocol], cache_dir: str, rank: int
) -> dict[tuple, tuple[float, float]]:
    """:func:`~.estimate.measure_work`'s step times, from the file an earlier run of the same shapes wrote
    (a resumed run, whose stages load from the cache, starts at once instead of timing every shape again);
    measured and saved by process 0 otherwise."""
    shapes = sorted({(item.kind, item.shape) for item in work}, key=repr)
    path = os.path.join(cache_dir, f"step-timing-{_key(shapes)}.json")
    if os.path.exists(path):  # JSON keeps the shapes' str / int / float / None: the same keys back
        return {
            (kind, tuple(shape)): (per_call, per_step) for kind, shape, per_call, per_step in read_json(path)
        }
    timing = measure_work(work, plan, protocols)
    if rank == 0:
        write_json(path, [[kind, list(shape), *seconds] for (kind, shape), seconds in timing.items()])
    return timing


def _protocol_records(
    track: Track,
    protocol: ProbeProtocol,
    rates: list[float],
    shots: list[int],
    seeds: list[int],
    key: str,
    cache_dir: str,
) -> ProbeResults:
    """One protocol's probe records and rate selection: from its file when a run made them for the same
    inputs, else run and saved atomically (the unit a resumed run skips)."""
    path = os.path.join(
        cache_dir, f"probes-{protocol.name}-{_key(key, protocol.to_dict(), rates, shots, seeds)}.json"
    )
    if os.path.exists(path):
        saved = read_json(path)
        logger.info("probe records of %s loaded from the cache", protocol.name)
        return ProbeResults(records=saved["records"], selection=saved["selection"])
    run = probe_records(track, rates, shots, seeds, protocol=protocol)
    selection = json.loads(json.dumps(run.selection, default=str))
    write_json(path, {"records": run.records, "selection": selection})
    return run


def run_report(
    args: ReportArguments, inputs: ReportInputs | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Check, estimate, extract, fit, probe, write: the whole ``hf-monosem report`` (returns the content of
    ``results.json``). ``inputs``: :func:`~hf_monosem.report.inputs.load_report_inputs` of ``args`` (loaded
    here when ``None``); every refusal comes from it, before the backbone's weights are read."""
    from .writing import write_report  # the report's writer is the last stage

    inputs = inputs or load_report_inputs(args)
    # under accelerate launch: each process extracts its block of rows, the fits split every batch;
    # process 0 alone speaks, probes and writes (the probe grid takes seconds)
    _, rank = join_launched_processes()
    if rank != 0:
        say = _silent  # one process speaks
    protocols = [
        probe_protocol(p).with_budget(epochs=args.probe_epochs) for p in list_of(args.probe_protocols)
    ]
    for line in inputs.decisions:
        say(f"[hf-monosem report] {line}")
    cache_dir = os.path.join(args.output_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    timer = Timer()
    with torch.random.fork_rng(devices=[]):
        # weights the checkpoint lacks (e.g. BERT's pooler, unused by the pooling) are drawn alike in every
        # process: the feature caches are keyed by the weights, and a resumed run must find them
        torch.manual_seed(0)
        model = MonoSemanticModel(inputs.config).eval()
    seeds = list(range(args.seeds))
    width = inputs.config.backbone_hidden_size
    projector_width = args.feature_dim or 4 * width
    plan = RepresentationPlan(
        sae_topk=tuple(int(k) for k in numbers_of("sae_topk", args.sae_topk)),
        sae_overcomplete=0,
        epochs=args.representation_epochs,
        projector_width=projector_width,
        ncl_recipe=args.ncl_recipe,
        sae_lr=args.sae_lr,
    )
    if inputs.modality == "text":
        rows, collator, cells = _text_rows(args, inputs)
        sample = rows[TRAIN].select(range(min(args.batch_size, len(rows[TRAIN]))))
        batch = collator([{k: r[k] for k in ("input_ids", "attention_mask") if k in r} for r in sample])
    else:
        rows, cells, processor = _image_rows(args, inputs)
        batch = {"pixel_values": rows[TRAIN][: args.batch_size]}
    with torch.no_grad():
        model(**batch)  # a first call pays one-off costs (allocation, kernel choice): not timed
        start = time.perf_counter()
        model(**batch)
    seconds = time.perf_counter() - start
    if (
        inputs.modality == "text"
    ):  # per token: the length-sorted batches are padded to about their rows' length
        tokens = sum(_tokens(r) for r in rows.values()) + args.num_views * _tokens(rows[TRAIN])
        extraction = seconds / batch["input_ids"].numel() * tokens
    else:
        images = sum(len(r) for r in rows.values()) + args.num_views * len(rows[TRAIN])
        extraction = seconds / len(batch["pixel_values"]) * images
    # every fit and probe grid the plan implies, each kind of step timed here on random rows of its width
    work = planned_work(
        len(rows[TRAIN]),
        width,
        plan,
        args.num_views,
        protocols,
        inputs.rates,
        inputs.shots,
        seeds,
        inputs.label_feature.num_classes,
        views_for_probes=inputs.modality == "image",
        domain_rows=len(rows[DOMAIN_TRAIN]) if DOMAIN_TRAIN in rows else 0,
    )
    estimate = estimate_seconds(extraction, work, _step_timing(work, plan, protocols, cache_dir, rank))
    say(estimate_line(estimate))
    labels = {key: torch.tensor(split["label"][:]) for key, split in inputs.splits.items()}
    with timer("extract features"):
        if inputs.modality == "text":
            vectors = {
                key: extract_pooled_features(
                    model,
                    ds,
                    batch_size=args.batch_size,
                    cache_dir=cache_dir,
                    collate_fn=collator,
                    cache_key=_rows_key(ds),
                    progress=rank == 0,
                    split_processes=True,
                    sort_by_length=True,  # no forward pass over padding
                )
                for key, ds in rows.items()
            }
            views = text_view_features(
                model,
                rows[TRAIN],
                args.num_views,
                seed=0,
                collate_fn=collator,
                cache_dir=cache_dir,
                cache_key=_rows_key(rows[TRAIN]),
                batch_size=args.batch_size,
                progress=rank == 0,
                split_processes=True,  # each process its blocks of rows, gathered in order
                sort_by_length=True,  # no forward pass over padding
            )
        else:
            vectors = {
                key: extract_pooled_features(
                    model,
                    TensorRows(pixel_values=x),
                    batch_size=args.batch_size,
                    cache_dir=cache_dir,
                    cache_key=tensors_sha256({"pixels": x}),
                    progress=rank == 0,
                    split_processes=True,
                )
                for key, x in rows.items()
            }
            views = _image_views(model, rows[TRAIN], args.num_views, processor, cache_dir)
    for _, _, key in cells:
        labels[key] = labels[TEST]
    with timer("fit representations"):
        # every process fits (data-parallel under accelerate launch); the track is built from the layers
        fitted = fit_representations(
            vectors[TRAIN], plan, cache_dir, views=views, progress=rank == 0, split_processes=True
        )
        track, fits = build_track(
            "report",
            f"{public_name(args.model_name_or_path)} on {public_name(args.dataset_name)}",  # no local path
            vectors,
            labels,
            inputs.label_feature,
            plan,
            cache_dir,
            noise_cells=cells,
            views=views,
            views_for_probes=inputs.modality == "image",
            fitted=fitted,
        )
    if rank != 0:  # the fits were the last collective: the probes and every file are process 0's
        return {}
    key = _key(tensors_sha256(vectors), tensors_sha256({"views": views}), plan, "probes-v1")
    records: list[dict] = []
    selection: dict[str, dict[str, Any]] = {}  # per protocol: the probe rate chosen per representation
    for protocol in protocols:
        with timer(f"probe grid ({protocol.name})"):
            say(f"[hf-monosem report] probe grid under the {protocol.name} protocol")
            run = _protocol_records(track, protocol, inputs.rates, inputs.shots, seeds, key, cache_dir)
        records += run.records
        selection[protocol.name] = run.selection
    return write_report(args, inputs, track, fits, records, selection, protocols, timer, estimate, rows, say)
