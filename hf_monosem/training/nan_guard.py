"""The NaN guard: stop training at the first non-finite loss, naming the step, the term and the cause."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

__all__ = ["NonFiniteLossGuardMixin"]

# the type checker sees the Trainer this mixin is mixed into; at run time it adds no base of its own
if TYPE_CHECKING:
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object


class NonFiniteLossGuardMixin(_TrainerBase):
    """``check_finite_loss``, shared by MonoSemanticTrainer and ContrastiveTrainer."""

    stop_on_nonfinite_loss: bool

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
                f"the weights already hold NaN/inf (e.g. {bad_weights}): training diverged; lower the "
                f"learning "
                "rate or keep max_grad_norm (gradient clipping) on"
            )
        if not causes:
            causes.append(
                "the inputs and weights are finite: the loss overflowed (lower the learning rate, use bf16 "
                "not fp16, or check the loss weights)"
            )
        raise FloatingPointError(
            f"non-finite loss {float(loss.detach()):g} at global step {self.state.global_step + 1} "
            f"(epoch {self.state.epoch or 0:.2f}); offending term(s): "
            f"{', '.join(bad_terms) or 'the total only'}; " + "; ".join(causes)
        )
