"""Pointwise score regression onto the teacher."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_pair


class PointwiseMSELoss(nn.Module):
    """Mean squared error between student and teacher scores::

        L = 1/n · Σ_i (s_i − t_i)²      (mean over every element)

    ``forward(student_scores, teacher_scores)``: float tensors of identical (any) shape;
    returns a scalar.  Teacher scores are used raw (no squashing).
    """

    name = "mse"
    kind = "pointwise"
    requires_teacher = True

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        check_pair("student_scores", student_scores, "teacher_scores", teacher_scores)
        return (student_scores - teacher_scores).pow(2).mean()
