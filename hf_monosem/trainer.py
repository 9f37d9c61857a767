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
  and keeps features / pooled vectors out of the gathered predictions (only logits are kept).

Contrastive pretraining (:class:`~hf_monosem.contrastive.ContrastiveTrainer`), post-hoc SAE fitting
(:mod:`hf_monosem.sae_fitting`) and linear probing on cached features (:mod:`hf_monosem.probing`)
live in their own modules and reuse this trainer's logging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .losses import LOSS_TYPES, robust_classification_loss

__all__ = ["MonoSemanticTrainer", "RunningTerms"]

#: model output keys that are not predictions: never gathered during evaluation.
NON_PREDICTION_KEYS = ("features", "pooled", "aux_losses", "hidden_states")


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
        **kwargs: everything ``transformers.Trainer`` takes.

    A ``compute_loss_func`` or ``label_smoothing_factor`` given to the Trainer also replaces the task
    term only. Logged every ``logging_steps``: ``loss``, ``task_loss`` (when there are labels), each
    auxiliary term by name, ``active_fraction``, ``dead_fraction``.

    Example (the model returns its own loss; the trainer adds the logging)::

        trainer = MonoSemanticTrainer(model=model, args=TrainingArguments("out", report_to=[]),
                                      train_dataset=train, loss_type="gce")
        trainer.train()
        trainer.state.log_history[-2]   # {'loss': ..., 'reconstruction_loss': ..., 'active_fraction': ...}
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
        super().__init__(*args, **kwargs)

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
        self.record_terms(model, aux_losses, features=_get(outputs, "features"), task_loss=task)
        return (loss, outputs) if return_outputs else loss

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


def _get(outputs: Any, key: str) -> Any:
    if isinstance(outputs, dict):
        return outputs.get(key)
    return getattr(outputs, key, None)
