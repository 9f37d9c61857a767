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
(:mod:`hf_monosem.cached.sae_fitting`) and linear probing on cached features
(:mod:`hf_monosem.cached.probing`) live in their own modules and reuse this trainer's logging.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..models.configuration import MonoSemanticConfig
from .checkpoints import (
    TRAINER_STATE_FILE,  # noqa: F401  (kept at its old import path)
    last_complete_checkpoint,
    load_checkpoint_weights,
)
from .losses import LOSS_TYPES, robust_classification_loss
from .model_card import TrainerHubMixin
from .nan_guard import NonFiniteLossGuardMixin
from .precision import no_autocast
from .running_terms import RunningTerms
from .trainer_checks import TrainerChecksMixin

__all__ = ["MonoSemanticTrainer", "RunningTerms", "last_complete_checkpoint"]  # the last two: their old home


#: model output keys that are not predictions: never gathered during evaluation (the config's
#: ``keys_to_ignore_at_inference``, which a plain ``Trainer`` reads too).
NON_PREDICTION_KEYS = tuple(MonoSemanticConfig.keys_to_ignore_at_inference)


class MonoSemanticTrainer(TrainerChecksMixin, NonFiniteLossGuardMixin, TrainerHubMixin, Trainer):
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
        >>> train = Dataset.from_dict(
        ...     {"input_ids": torch.randint(1, 50, (8, 6)).tolist(), "label": [0, 1] * 4})
        >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, logging_steps=1,
        ...                          per_device_train_batch_size=4, report_to=[], use_cpu=True,
        ...                          save_strategy="no")
        >>> trainer = MonoSemanticTrainer(model=model, args=args, train_dataset=train, loss_type="gce")
        >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints each log line
        ...     _ = trainer.train()
        >>> sorted(k for k in trainer.state.log_history[0] if k.endswith(("_loss", "_fraction")))
        ['active_fraction', 'dead_fraction', 'reconstruction_loss', 'task_loss']
    """

    #: keys of the model output kept out of evaluation predictions (only logits are gathered).
    prediction_ignore_keys: tuple[str, ...] = NON_PREDICTION_KEYS

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
                "process, so every process would train alone and overwrite the same output_dir. Without "
                "GPUs, pass --use_cpu (TrainingArguments(use_cpu=True)) or set ACCELERATE_USE_CPU=1 so that "
                "the processes join one gloo process group"
            )
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not getattr(
            self, "is_fsdp_enabled", True
        ):
            warnings.warn(
                "FSDP was asked for (accelerate launch with an FSDP config) but is off: accelerate enables "
                "FSDP "
                "only on GPU process groups, so on CPU every process holds the whole model (plain DDP)",
                stacklevel=2,
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train`` (after the checks of :class:`TrainerChecksMixin`), out of a caller's autocast."""
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


def _get(outputs: Any, key: str) -> Any:
    if isinstance(outputs, dict):
        return outputs.get(key)
    return getattr(outputs, key, None)
