"""What MonoSemanticTrainer writes for the Hub: the model card with its recipe, and tracker-run shutdown.

A mixin of :class:`~hf_monosem.training.trainer.MonoSemanticTrainer`; the card itself is built by
``hf_monosem.hub.make_model_card``, handed over by ``hf_monosem/__init__.py`` as
``model_card_builder`` (training/ sits below hub/ in the package's data flow).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from transformers import TrainerState

from .checkpoints import TRAINER_STATE_FILE

__all__ = ["TrainerHubMixin"]

# the type checker sees the Trainer this mixin is mixed into; at run time it adds no base of its own
if TYPE_CHECKING:
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object


class TrainerHubMixin(_TrainerBase):
    """``create_model_card`` (which ``push_to_hub`` calls), ``training_recipe`` and ``end_tracker_runs``."""

    #: what :meth:`create_model_card` builds the card with: ``hf_monosem.hub.make_model_card``, set by
    #: ``hf_monosem/__init__.py`` (training/ sits below hub/ in the package's data flow). ``None``:
    #: transformers' own card.
    model_card_builder: ClassVar[Callable[..., Any] | None] = None

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


def _plain(value: Any) -> Any:
    """An enum's value (``OptimizerNames.ADAMW_TORCH`` -> ``adamw_torch``), anything else as it is."""
    return getattr(value, "value", value)
