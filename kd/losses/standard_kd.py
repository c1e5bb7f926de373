"""Standard KD on 2-class cross-encoder logits: Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531, in the form Chen, He, Hui, Sun, Sun (2020), "Simplified TinyBERT: Knowledge Distillation
for Document Retrieval", arXiv:2009.07531 (ECIR 2021) use as their baseline: α·L_soft + (1−α)·L_hard, α = 0.5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_labels, check_ndim, check_pair, check_temperature


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Validate ``[B, C]`` float logits of equal shape/dtype and ``[B]`` integer labels."""
    check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_ndim("student_logits", student_logits, 2, "[B, C]")
    check_labels("labels", labels, student_logits.shape[0])


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``L_soft = mean_{b,c} −softmax(z_t/T)_c · log softmax(z_s/T)_c`` (mean over batch *and* classes, no T²)."""
    p_t = torch.softmax(teacher_logits / temperature, dim=-1)
    log_p_s = torch.log_softmax(student_logits / temperature, dim=-1)
    return (-p_t * log_p_s).mean()


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``L_hard = CE(z_s, y)``, mean over the batch."""
    return F.cross_entropy(student_logits, labels.long())


class StandardKDLoss(nn.Module):
    """Standard knowledge distillation on cross-encoder logits z ∈ R^C (C = 2 for relevance)::

        L_soft = 1/(B·C) · Σ_b Σ_c −softmax(z_t,b / T)_c · log softmax(z_s,b / T)_c
        L_hard = 1/B · Σ_b −log softmax(z_s,b)_{y_b}
        L      = α · L_soft + (1 − α) · L_hard

    Exactly as the Simplified TinyBERT public code: ``L_soft`` is averaged over batch **and**
    classes and has **no** T² factor.  Defaults α = 0.5, T = 1.

    ``forward(student_logits, teacher_logits, labels)``: float ``[B, C]`` logits of equal shape,
    integer ``[B]`` labels; returns a scalar.
    """

    name = "standard_kd"
    kind = "logits"
    requires_teacher = True

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = alpha
        self.temperature = check_temperature(temperature)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        check_logits(student_logits, teacher_logits, labels)
        soft = soft_cross_entropy(student_logits, teacher_logits, self.temperature)
        hard = hard_cross_entropy(student_logits, labels)
        return self.alpha * soft + (1.0 - self.alpha) * hard
