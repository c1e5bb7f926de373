"""Margin-MSE, the loss of Hofstätter, Althammer, Schröder, Sertkan, Hanbury (2020), "Improving Efficient Neural
Ranking Models with Cross-Architecture Knowledge Distillation", arXiv:2010.02666: MSE between the student's and the
teacher's score margins (signed; teacher scores raw)."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_same


class MarginMSELoss(nn.Module):
    """Margin-MSE between student and teacher score margins.

    For a batch of B triples (q, p⁺, p⁻) with student scores s and teacher scores t::

        L = 1/B · Σ_b [ (s⁺_b − s⁻_b) − (t⁺_b − t⁻_b) ]²

    The margin is **signed** (no absolute value): a student that ranks the pair the wrong
    way round is penalised even if its margin has the right size.  Teacher scores are used
    raw — never squashed by a sigmoid/softmax — so the student learns the teacher's scale.

    ``forward(student_pos, student_neg, teacher_pos, teacher_neg)``: four float tensors of
    identical shape ``[B]``; returns a scalar.
    """

    name = "margin_mse"
    kind = "pairwise"
    requires_teacher = True

    def forward(
        self,
        student_pos: torch.Tensor,
        student_neg: torch.Tensor,
        teacher_pos: torch.Tensor,
        teacher_neg: torch.Tensor,
    ) -> torch.Tensor:
        check_same(
            ("student_pos", "student_neg", "teacher_pos", "teacher_neg"),
            (student_pos, student_neg, teacher_pos, teacher_neg),
        )
        diff = (student_pos - student_neg) - (teacher_pos - teacher_neg)
        return diff.pow(2).mean()
