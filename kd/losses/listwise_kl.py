"""Listwise KL distillation over a candidate list (sentence-transformers convention)."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_ndim, check_pair, check_temperature


class ListwiseKLLoss(nn.Module):
    """KL divergence from the teacher's to the student's distribution over n candidates::

        p_t = softmax(t_b / T),   p_s = softmax(s_b / T)      (over valid candidates only)
        L = T² · 1/B · Σ_b KL(p_t ‖ p_s) = T² · 1/B · Σ_b Σ_c p_t,c · (log p_t,c − log p_s,c)

    This is sentence-transformers' ``DistillKLDivLoss`` convention: ``KLDivLoss(reduction=
    "batchmean")`` (sum over candidates, mean over the batch), multiplied by T² so gradient
    magnitudes stay comparable across temperatures (Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a
    Neural Network", arXiv:1503.02531).

    ``forward(student_scores, teacher_scores, mask=None)``: float ``[B, n]`` tensors; ``mask``
    an optional bool ``[B, n]`` (True = valid candidate).  Masked candidates are excluded from
    both softmaxes and contribute nothing; every row needs at least one valid candidate.
    """

    name = "kl"
    kind = "listwise"
    requires_teacher = True

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(
        self,
        student_scores: torch.Tensor,
        teacher_scores: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_pair("student_scores", student_scores, "teacher_scores", teacher_scores)
        check_ndim("student_scores", student_scores, 2, "[B, n]")
        T = self.temperature
        s, t = student_scores / T, teacher_scores / T
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise TypeError(f"mask must be a bool tensor, got {got}")
            if mask.shape != student_scores.shape:
                raise ValueError(
                    f"mask and student_scores must have the same shape, "
                    f"got {tuple(mask.shape)} and {tuple(student_scores.shape)}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("mask leaves a row with no valid candidate")
            s = s.masked_fill(~mask, float("-inf"))
            t = t.masked_fill(~mask, float("-inf"))
        log_ps = torch.log_softmax(s, dim=1)
        log_pt = torch.log_softmax(t, dim=1)
        pt = log_pt.exp()
        # Masked entries have p_t = 0: set their term to exactly 0 (avoids 0 · (−inf − −inf) = NaN).
        terms = torch.where(pt > 0, pt * (log_pt - log_ps), torch.zeros_like(pt))
        return terms.sum(dim=1).mean() * T * T
