"""The checks MonoSemanticTrainer runs before the first step: the resume checkpoint and the datasets.

A mixin of :class:`~hf_monosem.training.trainer.MonoSemanticTrainer` (it reads the Trainer's
``args``, datasets and collators): bad input fails before any work, with an error naming it.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from ..data.validation import LABEL_KEYS, validate_classification_batch, validate_classification_dataset
from .checkpoints import TRAINER_STATE_FILE, last_complete_checkpoint

__all__ = ["TrainerChecksMixin"]

# the type checker sees the Trainer this mixin is mixed into; at run time it adds no base of its own
if TYPE_CHECKING:
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object

#: rows collated to check a dataset whose columns only exist after a transform.
_FIRST_BATCH_ROWS = 8


class TrainerChecksMixin(_TrainerBase):
    """``train()`` resolves the resume checkpoint and validates the datasets of a classifier first."""

    validate_datasets: bool

    # ---- checks before training -----------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train`` after the checks of :meth:`check_before_training`.

        ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint in ``output_dir``
        (:func:`last_complete_checkpoint`), skipping one cut off while being saved.
        """
        resume_from_checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        self.check_before_training()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _resolve_checkpoint(self, resume: str | bool | None) -> str | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint-* "
                    f"folder (one with {TRAINER_STATE_FILE}); start without resume_from_checkpoint"
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

    @staticmethod
    def last_checkpoint(folder: str | os.PathLike) -> str | None:
        """:func:`last_complete_checkpoint` (for scripts that import only the public classes)."""
        return last_complete_checkpoint(folder)

    def _classifier_config(self) -> Any:
        """The model's ``MonoSemanticConfig`` when it is a classifier (possibly peft-wrapped), else
        ``None``."""
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
