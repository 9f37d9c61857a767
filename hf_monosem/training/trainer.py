"""``MonoSemanticTrainer``: a ``transformers.Trainer`` that knows about feature layers.

What it adds to the plain Trainer:

* the loss is the model's own (task loss + weighted auxiliary terms of the feature layer), or a
  robust task loss (``loss_type="gce"`` / ``"sce"``, for noisy labels) plus the same auxiliary terms;
* every auxiliary term (``reconstruction_loss``, ``sparsity_loss``, ...) and the task term
  (``task_loss``) is logged under its own name next to ``loss``, averaged over the logging window
  exactly like ``loss``;
* feature statistics are logged too: ``active_fraction`` (mean L0 / width of the features) and
  ``dead_fraction`` (features active on no example since the previous log);
* evaluation reports the same terms with the evaluation prefix (``eval_reconstruction_loss``, ...)
  and keeps features / pooled vectors out of the gathered predictions (only logits are kept);
* bad input fails before the first step: ``train()`` validates the train and eval datasets of a
  classifier (:mod:`hf_monosem.data.validation`), refuses a resume checkpoint that is missing or
  incomplete, and a process launched as one of several that ended up training alone; a NaN/inf
  loss stops training with a ``FloatingPointError`` naming the step and the offending term;
* ``create_model_card`` (which ``push_to_hub`` calls) writes this package's card
  (:func:`hf_monosem.hub.make_model_card`: results in a ``model-index``, the recipe from the training
  arguments) instead of transformers' auto card; ``end_tracker_runs`` ends the experiment-tracker runs
  of one training, so a script that trains several models logs each to its own run.

Contrastive pretraining (:class:`~hf_monosem.training.contrastive.ContrastiveTrainer`), post-hoc SAE fitting
(:mod:`hf_monosem.cached.sae_fitting`) and linear probing on cached features (:mod:`hf_monosem.cached.probing`)
live in their own modules and reuse this trainer's logging.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainerState

from ..cached.checks import no_autocast
from ..data.validation import LABEL_KEYS, validate_classification_batch, validate_classification_dataset
from ..models.configuration import MonoSemanticConfig
from .checkpoints import TRAINER_STATE_FILE, last_complete_checkpoint, load_checkpoint_weights
from .losses import LOSS_TYPES, robust_classification_loss

__all__ = ["MonoSemanticTrainer", "RunningTerms", "last_complete_checkpoint"]

#: rows collated to check a dataset whose columns only exist after a transform.
_FIRST_BATCH_ROWS = 8


#: model output keys that are not predictions: never gathered during evaluation (the config's
#: ``keys_to_ignore_at_inference``, which a plain ``Trainer`` reads too).
NON_PREDICTION_KEYS = tuple(MonoSemanticConfig.keys_to_ignore_at_inference)


class RunningTerms:
    """Sums of scalar terms and feature activity over a logging window, kept on the device.

    Nothing here synchronises with the device until :meth:`summarize` (one ``.tolist()`` per log),
    so collecting the terms every step costs no host round trip.
    """

    def __init__(self, activation_threshold: float = 0.0):
        self.activation_threshold = float(activation_threshold)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.ever_active: torch.Tensor | None = None

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = (
            value.detach().float().reshape(())
            if isinstance(value, torch.Tensor)
            else torch.tensor(float(value))
        )
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def add_features(self, features: torch.Tensor) -> None:
        """Record ``active_fraction`` of this batch and which features fired at least once."""
        features = features.detach()
        active = features.abs() > self.activation_threshold
        self.add("active_fraction", active.float().mean())
        fired = active.reshape(-1, active.shape[-1]).any(dim=0)
        if self.ever_active is None or self.ever_active.shape != fired.shape:
            self.ever_active = fired
        else:
            self.ever_active = self.ever_active | fired

    def summarize(self, accelerator: Any = None) -> dict[str, float]:
        """Window means (summed over processes first when distributed), then reset.

        Must be called on every process when distributed (it is a collective).
        """
        names = sorted(self.sums)
        if not names and self.ever_active is None:
            return {}
        values = [self.sums[n] for n in names]
        device = values[0].device if values else self.ever_active.device
        packed = None
        if names:
            counts = [torch.tensor(float(self.counts[n]), device=device) for n in names]
            packed = torch.stack([v.to(device) for v in values] + counts)
        ever_active = self.ever_active
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            if packed is not None:
                packed = accelerator.reduce(packed, reduction="sum")
            if ever_active is not None:
                ever_active = accelerator.reduce(ever_active.float(), reduction="sum") > 0
        out: dict[str, float] = {}
        if packed is not None:
            flat = packed.tolist()
            for i, name in enumerate(names):
                out[name] = flat[i] / max(flat[len(names) + i], 1.0)
        if ever_active is not None:
            out["dead_fraction"] = 1.0 - float(ever_active.float().mean())
        self.reset()
        return out


class MonoSemanticTrainer(Trainer):
    """``transformers.Trainer`` for models with a feature layer, logging every loss term separately.

    Args:
        loss_type: task loss for classification models: ``"ce"`` (the model's own loss: cross-entropy,
            or MSE / BCE for regression / multi-label), ``"gce"`` (generalized cross-entropy, ``gce_q``)
            or ``"sce"`` (symmetric cross-entropy, ``sce_alpha`` / ``sce_beta``). The robust losses
            replace the task term only; the feature layer's weighted auxiliary terms are still added.
        gce_q: GCE exponent (0.7, Zhang & Sabuncu 2018).
        sce_alpha, sce_beta: SCE weights of CE and reverse CE (0.1 / 1.0, Wang et al. 2019).
        activation_threshold: a feature counts as active when ``|value| > activation_threshold``.
        stop_on_nonfinite_loss: raise ``FloatingPointError`` at the first training step whose loss is
            NaN/inf (naming the step and the term), instead of letting NaN gradients ruin the weights.
        validate_datasets: check the train / eval datasets of a classifier at the start of ``train()``.
        **kwargs: everything ``transformers.Trainer`` takes.

    A ``compute_loss_func`` or ``label_smoothing_factor`` given to the Trainer also replaces the task
    term only. Logged every ``logging_steps``: ``loss``, ``task_loss`` (when there are labels), each
    auxiliary term by name, ``active_fraction``, ``dead_fraction``.

    Example (the model returns its own loss; the trainer adds the logging):
        >>> import contextlib, io, tempfile, torch
        >>> from datasets import Dataset
        >>> from transformers import BertConfig, TrainingArguments
        >>> from hf_monosem import MonoSemanticConfig, MonoSemanticForSequenceClassification
        >>> model = MonoSemanticForSequenceClassification(MonoSemanticConfig(
        ...     backbone_config=BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...                                num_attention_heads=2, intermediate_size=20),
        ...     feature_layer="topk", feature_dim=32, topk=4, num_labels=2))
        >>> train = Dataset.from_dict({"input_ids": torch.randint(1, 50, (8, 6)).tolist(), "label": [0, 1] * 4})
        >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, logging_steps=1, per_device_train_batch_size=4,
        ...                          report_to=[], use_cpu=True, save_strategy="no")
        >>> trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=train, loss_type="gce")
        >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints each log line
        ...     _ = trainer.train()
        >>> sorted(k for k in trainer.state.log_history[0] if k.endswith(("_loss", "_fraction")))
        ['active_fraction', 'dead_fraction', 'reconstruction_loss', 'task_loss']
    """

    #: keys of the model output kept out of evaluation predictions (only logits are gathered).
    prediction_ignore_keys: tuple[str, ...] = NON_PREDICTION_KEYS
    #: what :meth:`create_model_card` builds the card with: ``hf_monosem.hub.make_model_card``, set by
    #: ``hf_monosem/__init__.py`` (training/ sits below hub/ in the package's data flow). ``None``:
    #: transformers' own card.
    model_card_builder: ClassVar[Callable[..., Any] | None] = None

    def __init__(
        self,
        *args,
        loss_type: str = "ce",
        gce_q: float = 0.7,
        sce_alpha: float = 0.1,
        sce_beta: float = 1.0,
        activation_threshold: float = 0.0,
        stop_on_nonfinite_loss: bool = True,
        validate_datasets: bool = True,
        **kwargs,
    ):
        if loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type={loss_type!r} is not valid; allowed: {', '.join(repr(t) for t in LOSS_TYPES)}"
            )
        if not 0 < gce_q <= 1:
            raise ValueError(f"gce_q={gce_q!r} is not valid; allowed: a number in (0, 1]")
        self.loss_type = loss_type
        self.gce_q = float(gce_q)
        self.sce_alpha = float(sce_alpha)
        self.sce_beta = float(sce_beta)
        self._train_terms = RunningTerms(activation_threshold)
        self._eval_terms = RunningTerms(activation_threshold)
        self.stop_on_nonfinite_loss = bool(stop_on_nonfinite_loss)
        self.validate_datasets = bool(validate_datasets)
        super().__init__(*args, **kwargs)
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1 and "LOCAL_RANK" in os.environ and self.args.world_size == 1:
            raise RuntimeError(
                f"this process was launched as one of WORLD_SIZE={launched} but the Trainer runs on a single "
                "process, so every process would train alone and overwrite the same output_dir. Without GPUs, "
                "pass --use_cpu (TrainingArguments(use_cpu=True)) or set ACCELERATE_USE_CPU=1 so that the "
                "processes join one gloo process group"
            )
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not getattr(
            self, "is_fsdp_enabled", True
        ):
            warnings.warn(
                "FSDP was asked for (accelerate launch with an FSDP config) but is off: accelerate enables FSDP "
                "only on GPU process groups, so on CPU every process holds the whole model (plain DDP)",
                stacklevel=2,
            )

    # ---- checks before training -----------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train`` after the checks of :meth:`check_before_training`.

        ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint in ``output_dir``
        (:func:`last_complete_checkpoint`), skipping one cut off while being saved.
        """
        resume_from_checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        self.check_before_training()
        caller_autocast = [kind for kind in ("cpu", "cuda") if torch.is_autocast_enabled(kind)]
        if not caller_autocast:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        # A torch.autocast block around train() caches a low-precision copy of each weight for its whole
        # length: every step would run the forward on the initial weights (the optimiser's updates unseen,
        # silently). It is turned off here; the Trainer's own mixed precision (bf16=True / fp16=True) still
        # applies per step, with the cache cleared at each step (training_step).
        warnings.warn(
            f"{type(self).__name__}.train() was called inside torch.autocast ({', '.join(caller_autocast)}): "
            "autocast is turned off for training (it would keep the initial weights in its cache); for mixed "
            "precision pass bf16=True (or fp16=True) in TrainingArguments",
            UserWarning,
            stacklevel=2,
        )
        with no_autocast(self.args.device):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def training_step(self, *args, **kwargs):
        # autocast's weight cache lives until the outermost autocast region ends; inside a caller's region
        # the Trainer's per-step autocast (bf16=True) would reuse the casts of the weights before the update
        torch.clear_autocast_cache()
        return super().training_step(*args, **kwargs)

    def _resolve_checkpoint(self, resume: str | bool | None) -> str | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint-* folder "
                    f"(one with {TRAINER_STATE_FILE}); start without resume_from_checkpoint"
                )
            return found
        resume = os.fspath(resume)
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"resume_from_checkpoint={resume!r} is not a folder")
        if not os.path.isfile(os.path.join(resume, TRAINER_STATE_FILE)):
            raise ValueError(
                f"{resume} has no {TRAINER_STATE_FILE}: the checkpoint is incomplete (cut off while saving?) "
                "or not a Trainer checkpoint; resume from an earlier checkpoint-* folder"
            )
        return resume

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # The Trainer's own reload skips from_pretrained's key conversion (a renamed backbone resumed with
        # random-then-trained weights and a logged warning); load through it whenever the folder holds
        # plain PreTrainedModel weights. FSDP / DeepSpeed / SageMaker / PEFT checkpoints keep the
        # Trainer's path (their own formats).
        model = self.model if model is None else model
        if self._plain_weights(resume_from_checkpoint, model):
            load_checkpoint_weights(model, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and self._plain_weights(best, self.model):
            load_checkpoint_weights(self.model, best)
            return
        super()._load_best_model()

    def _plain_weights(self, folder: str, model: nn.Module) -> bool:
        from transformers import PreTrainedModel

        special = self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(model, "peft_config")
        saved = any(
            os.path.isfile(os.path.join(folder, name))
            for name in ("model.safetensors", "model.safetensors.index.json")
        )
        return isinstance(model, PreTrainedModel) and saved and not special

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # transformers pickles the whole TrainingArguments next to the weights, hub_token and local
        # folders included; write them without secrets and with local folders by their last component
        if self.args.should_save:
            torch.save(
                _public_arguments(self.args),
                os.path.join(output_dir or self.args.output_dir, "training_args.bin"),
            )

    @staticmethod
    def last_checkpoint(folder: str | os.PathLike) -> str | None:
        """:func:`last_complete_checkpoint` (for scripts that import only the public classes)."""
        return last_complete_checkpoint(folder)

    def _classifier_config(self) -> Any:
        """The model's ``MonoSemanticConfig`` when it is a classifier (possibly peft-wrapped), else ``None``."""
        from ..models.configuration import MonoSemanticConfig

        model = self.accelerator.unwrap_model(self.model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        if not isinstance(config, MonoSemanticConfig) or not hasattr(base, "classifier"):
            return None
        return config

    def check_before_training(self) -> None:
        """Validate the train and eval datasets of a classifier before any step is taken.

        A ``datasets.Dataset`` with its label and input columns is checked whole
        (:func:`~hf_monosem.data.validation.validate_classification_dataset`: labels, image shape, NaN/inf,
        token ids). A dataset whose columns appear only later (``set_transform``, a tokenising
        collator) or any other map-style dataset is checked on its first collated rows
        (:func:`~hf_monosem.data.validation.validate_classification_batch`), with the random state restored
        so that random transforms do not shift the run. Skipped when ``validate_datasets=False``.
        """
        config = self._classifier_config() if self.validate_datasets else None
        if config is None:
            return
        if self.train_dataset is not None:
            self._validate(self.train_dataset, config, "train")
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval": self.eval_dataset}
        for name, dataset in evals.items():
            if dataset is not None:
                self._validate(dataset, config, name if name == "eval" else f"eval {name!r}")

    def _validate(self, dataset: Any, config: Any, split_name: str) -> None:
        if isinstance(dataset, datasets.Dataset):
            columns = dataset.column_names
            lazy = (dataset.format.get("type") == "custom") or not any(
                c in columns for c in ("pixel_values", "input_ids")
            )
            if not lazy:
                label = next((c for c in LABEL_KEYS if c in columns), "label")
                validate_classification_dataset(dataset, config, label_column=label, split_name=split_name)
                return
        elif isinstance(dataset, torch.utils.data.IterableDataset) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        ):
            return  # a stream: reading ahead would consume it
        if len(dataset) == 0:
            raise ValueError(f"the {split_name} dataset is empty (0 rows); nothing to train or evaluate on")
        collator = self.data_collator
        description = "training" if split_name == "train" else "evaluation"
        if isinstance(dataset, datasets.Dataset):  # as the Trainer's dataloaders do
            dataset = self._remove_unused_columns(dataset, description=description)
        else:
            collator = self._get_collator_with_removed_columns(collator, description=description)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                batch = collator([dataset[i] for i in range(min(_FIRST_BATCH_ROWS, len(dataset)))])
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
        if isinstance(batch, dict) or hasattr(batch, "keys"):
            validate_classification_batch(dict(batch), config, split_name=split_name)

    # ---- loss ---------------------------------------------------------------------------------
    def feature_layer_of(self, model: nn.Module) -> nn.Module | None:
        """The feature layer of a (possibly DDP / peft wrapped) model, or ``None``."""
        unwrapped = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
        return getattr(unwrapped, "feature_layer", None)

    def weighted_aux_loss(
        self, model: nn.Module, aux_losses: dict[str, torch.Tensor] | None
    ) -> torch.Tensor | None:
        layer = self.feature_layer_of(model)
        if not aux_losses or layer is None or not hasattr(layer, "weighted_aux_loss"):
            return None
        return layer.weighted_aux_loss(aux_losses)

    def _replaces_task_loss(self) -> bool:
        return self.loss_type != "ce" or self.compute_loss_func is not None or self.label_smoother is not None

    def task_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        """The task term when it is not the model's own (robust loss, custom function, smoothing)."""
        if self.compute_loss_func is not None:
            return self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        if self.loss_type != "ce":
            return robust_classification_loss(
                self.loss_type,
                logits,
                labels,
                gce_q=self.gce_q,
                sce_alpha=self.sce_alpha,
                sce_beta=self.sce_beta,
            )
        return self.label_smoother(outputs, labels)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.get("labels")
        replace = labels is not None and self._replaces_task_loss()
        if replace:
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
            if isinstance(getattr(self.accelerator.unwrap_model(model), "config", None), MonoSemanticConfig):
                # without labels our models return the feature layer's terms only when asked (or training)
                inputs["output_aux_losses"] = True
        outputs = model(**inputs)
        aux_losses = _get(outputs, "aux_losses") or {}
        weighted_aux = self.weighted_aux_loss(model, aux_losses)
        if replace:
            task = self.task_loss(outputs, labels, num_items_in_batch)
            loss = task if weighted_aux is None else task + weighted_aux
        else:
            loss = _get(outputs, "loss")
            if loss is None:
                raise ValueError(
                    f"{type(self.accelerator.unwrap_model(model)).__name__} returned no loss for inputs "
                    f"{sorted(inputs)}: pass labels, or use a feature layer with auxiliary losses"
                )
            task = None
            if labels is not None:
                task = loss.detach() - weighted_aux.detach() if weighted_aux is not None else loss.detach()
        if self.stop_on_nonfinite_loss and model.training and not bool(torch.isfinite(loss.detach()).all()):
            if not replace and labels is not None:  # loss - aux is NaN whenever an aux term is: recompute
                task = self._own_task_loss(model, outputs, labels)
            self.check_finite_loss(model, loss, {"task_loss": task, **aux_losses}, inputs)
        self.record_terms(model, aux_losses, features=_get(outputs, "features"), task_loss=task)
        return (loss, outputs) if return_outputs else loss

    def _own_task_loss(self, model: nn.Module, outputs: Any, labels: torch.Tensor) -> torch.Tensor | None:
        unwrapped = self.accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        logits = _get(outputs, "logits")
        if logits is None or not hasattr(base, "task_loss"):
            return None
        with torch.no_grad():
            return base.task_loss(logits.detach(), labels)

    def check_finite_loss(
        self, model: nn.Module, loss: torch.Tensor, terms: dict[str, Any], inputs: dict[str, Any]
    ) -> None:
        """Raise ``FloatingPointError`` when a training loss is NaN/inf, naming the step and the culprit.

        One ``isfinite`` on the total per training step (the Trainer already syncs on the loss every
        step for its own NaN filter); only a non-finite total looks at the terms, inputs and weights.
        """
        if not self.stop_on_nonfinite_loss or not model.training or bool(torch.isfinite(loss.detach()).all()):
            return
        bad_terms = [
            f"{name}={float(value.detach()):g}"
            for name, value in terms.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not torch.isfinite(value).all()
        ]
        causes = []
        bad_inputs = [
            name
            for name, value in inputs.items()
            if isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not torch.isfinite(value).all()
        ]
        if bad_inputs:
            causes.append(f"the batch's {bad_inputs} hold NaN/inf")
        bad_weights = [n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()][:3]
        if bad_weights:
            causes.append(
                f"the weights already hold NaN/inf (e.g. {bad_weights}): training diverged; lower the learning "
                "rate or keep max_grad_norm (gradient clipping) on"
            )
        if not causes:
            causes.append(
                "the inputs and weights are finite: the loss overflowed (lower the learning rate, use bf16 "
                "not fp16, or check the loss weights)"
            )
        raise FloatingPointError(
            f"non-finite loss {float(loss.detach()):g} at global step {self.state.global_step + 1} "
            f"(epoch {self.state.epoch or 0:.2f}); offending term(s): {', '.join(bad_terms) or 'the total only'}; "
            + "; ".join(causes)
        )

    def record_terms(
        self,
        model: nn.Module,
        terms: dict[str, torch.Tensor],
        features: torch.Tensor | None = None,
        task_loss: torch.Tensor | None = None,
    ) -> None:
        """Add this batch's terms (and feature activity) to the current train or eval window."""
        window = self._train_terms if model.training else self._eval_terms
        if task_loss is not None:
            window.add("task_loss", task_loss)
        for name, value in terms.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                window.add(name, value)
        if isinstance(features, torch.Tensor) and features.dim() >= 2:
            window.add_features(features)

    # ---- the Hub: model card, tracker runs ---------------------------------------------------------
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        results: Any = None,
        **card_kwargs: Any,
    ) -> None:
        """Write ``README.md`` in ``output_dir``: this package's model card, which ``push_to_hub`` uploads.

        The arguments are ``Trainer.create_model_card``'s (``finetuned_from``: the backbone's Hub id,
        the card's ``base_model``; ``dataset_tags``: the training datasets' Hub ids), plus ``results``:
        records of :mod:`hf_monosem.evaluation.results` for the card's ``model-index`` and results table
        (e.g. ``trainer.push_to_hub(results=records)``), and any other
        :func:`~hf_monosem.hub.make_model_card` argument. The recipe defaults to the training arguments.
        A model that is not an hf_monosem model (or a peft model) gets transformers' card.
        """
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        builder = type(self).model_card_builder
        from ..models.configuration import MonoSemanticConfig

        if (
            builder is None
            or hasattr(model, "peft_config")
            or not isinstance(getattr(model, "config", None), MonoSemanticConfig)
        ):
            return super().create_model_card(
                language=language,
                license=license,
                tags=tags,
                model_name=model_name,
                finetuned_from=finetuned_from,
                tasks=tasks,
                dataset_tags=dataset_tags,
                dataset=dataset,
                dataset_args=dataset_args,
            )
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        repo_id = self.hub_model_id or self.args.hub_model_id
        repo_id = repo_id if isinstance(repo_id, str) else None
        if model_name is None:  # as Trainer.push_to_hub names it
            model_name = (
                repo_id.split("/")[-1] if repo_id else os.path.basename(os.path.abspath(self.args.output_dir))
            )
        options = {
            "language": language,
            "license": license,
            "base_model": finetuned_from,
            "datasets": dataset_tags,
            "model_name": model_name,
        }
        options = {key: value for key, value in options.items() if value is not None}
        options.setdefault("recipe", self.training_recipe())
        card = builder(
            model,
            results,
            repo_id=repo_id,
            tags=[t for t in tags if t],
            has_preprocessor=self.processing_class is not None,
            **{**options, **card_kwargs},
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def training_recipe(self) -> dict[str, Any]:
        """How this trainer trains, for the model card: loss, optimiser, schedule, budget, precision, seed."""
        args = self.args
        loss = {
            "ce": "cross-entropy",
            "gce": f"generalized cross-entropy (q = {self.gce_q})",
            "sce": f"symmetric cross-entropy (alpha = {self.sce_alpha}, beta = {self.sce_beta})",
        }[self.loss_type]
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        precision = "bf16 mixed precision" if args.bf16 else "fp16 mixed precision" if args.fp16 else "fp32"
        state = self.state
        saved = os.path.join(args.output_dir, TRAINER_STATE_FILE)
        if not state.global_step and os.path.isfile(saved):  # a trainer made to publish a finished run
            state = TrainerState.load_from_json(saved)
        steps = state.global_step or args.max_steps
        epochs = state.epoch if state.global_step else args.num_train_epochs
        return {
            "trainer": "hf_monosem `MonoSemanticTrainer` (a transformers `Trainer`)",
            "task loss": f"{loss}, plus the feature layer's weighted auxiliary terms",
            "optimizer": f"{_plain(args.optim)}, learning rate {args.learning_rate:g}, weight decay "
            f"{args.weight_decay:g}, {_plain(args.lr_scheduler_type)} schedule"
            + (f", warmup {args.warmup_steps:g}" if args.warmup_steps else ""),
            "budget": f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
            + (f", {steps} steps" if steps and steps > 0 else "")
            + f", batch size {batch}",
            "precision": precision,
            "seed": args.seed,
        }

    def end_tracker_runs(self) -> None:
        """End the experiment-tracker runs this trainer logged to (call it when done with the trainer).

        Weights & Biases keeps its run open after ``train()`` so that a later ``evaluate()`` logs to it,
        and the next trainer of the process then logs into that same run; a script that trains one model
        per feature layer calls this after each. TensorBoard writers are closed too (they reopen in the
        same run folder if the trainer logs again).
        """
        from transformers.integrations import TensorBoardCallback, WandbCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, WandbCallback) and getattr(callback, "_initialized", False):
                wandb = getattr(callback, "_wandb", None) or sys.modules.get("wandb")
                if (
                    wandb is not None
                    and getattr(wandb, "run", None) is not None
                    and self.is_world_process_zero()
                ):
                    wandb.finish()
                callback._initialized = False
            elif isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.close()
                callback.tb_writer = None

    # ---- logging ------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the window means of every collected term
            logs = {**logs, **self._train_terms.summarize(self.accelerator)}
        elif "train_runtime" in logs:  # end of training: steps after the last log are not reported
            self._train_terms.reset()
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        self._eval_terms.reset()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        for name, value in self._eval_terms.summarize(self.accelerator).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or []) + list(
                self.prediction_ignore_keys
            )
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def _public_arguments(args: Any) -> Any:
    """A copy of ``TrainingArguments`` without secrets (``*token*`` fields) or local folder paths."""
    import copy
    import dataclasses

    from ..models.configuration import public_name

    public = copy.copy(args)
    for field in dataclasses.fields(args):
        value = getattr(args, field.name, None)
        if "token" in field.name and isinstance(value, str) and value:
            object.__setattr__(public, field.name, None)
        elif isinstance(value, str) and os.path.isabs(value):
            object.__setattr__(public, field.name, public_name(value))
    return public


def _plain(value: Any) -> Any:
    """An enum's value (``OptimizerNames.ADAMW_TORCH`` -> ``adamw_torch``), anything else as it is."""
    return getattr(value, "value", value)


def _get(outputs: Any, key: str) -> Any:
    if isinstance(outputs, dict):
        return outputs.get(key)
    return getattr(outputs, key, None)
