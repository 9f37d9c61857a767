"""Trainers: :class:`MonoSemanticTrainer` (task + feature-layer losses), :class:`ContrastiveTrainer`
(SimCLR vs NCL pretraining), their views and losses, checkpoint discovery for resume.
"""
from .views import IntensityJitterViews
from .contrastive import (
    CONTRASTIVE_METHODS,
    LABEL_KEYS,
    ContrastiveTrainer,
    ImageViews,
    TextViews,
    UnlabeledDataCollator,
)
from .losses import (
    LOSS_TYPES,
    gather_with_grad,
    generalized_cross_entropy,
    info_nce_loss,
    l1_sparsity_loss,
    nonnegativity_loss,
    robust_classification_loss,
    symmetric_cross_entropy,
)
from .checkpoints import (
    TRAINER_STATE_FILE,
    last_complete_checkpoint,
    read_json,
    resume_checkpoint,
    wants_resume,
    write_json,
)
from .trainer import (
    MonoSemanticTrainer,
    RunningTerms,
)

__all__ = [
    "CONTRASTIVE_METHODS",
    "IntensityJitterViews",
    "LOSS_TYPES",
    "gather_with_grad",
    "generalized_cross_entropy",
    "info_nce_loss",
    "l1_sparsity_loss",
    "nonnegativity_loss",
    "robust_classification_loss",
    "symmetric_cross_entropy",
    "MonoSemanticTrainer",
    "RunningTerms",
    "TRAINER_STATE_FILE",
    "last_complete_checkpoint",
    "read_json",
    "resume_checkpoint",
    "wants_resume",
    "write_json",
    "LABEL_KEYS",
    "ContrastiveTrainer",
    "ImageViews",
    "TextViews",
    "UnlabeledDataCollator",
]
