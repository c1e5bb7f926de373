"""RankNet (Burges et al. (2005), "Learning to Rank using Gradient Descent", ICML): the no-teacher pairwise baseline
that Hofstätter, Althammer, Schröder, Sertkan, Hanbury (2020), "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation", arXiv:2010.02666, compare Margin-MSE students against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_pair


class RankNetLoss(nn.Module):
    """RankNet pairwise loss on the student alone (no teacher)::

        L = 1/B · Σ_b BCEWithLogits(s⁺_b − s⁻_b, 1) = 1/B · Σ_b log(1 + exp(−(s⁺_b − s⁻_b)))

    ``forward(student_pos, student_neg, teacher_pos=None, teacher_neg=None)``: the teacher
    arguments are accepted and ignored, so a training loop can call every pairwise loss the
    same way.  Student tensors: float, identical shape ``[B]``; returns a scalar.
    """

    name = "ranknet"
    kind = "pairwise"
    requires_teacher = False

    def forward(
        self,
        student_pos: torch.Tensor,
        student_neg: torch.Tensor,
        teacher_pos: torch.Tensor | None = None,
        teacher_neg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_pair("student_pos", student_pos, "student_neg", student_neg)
        margin = student_pos - student_neg
        return F.binary_cross_entropy_with_logits(margin, torch.ones_like(margin))
