"""Query-encoder distillation by embedding alignment: Wang, Hong (2023), "Query Encoder Distillation via Embedding
Alignment is a Strong Baseline Method to Boost Dense Retriever Online Efficiency", SustaiNLP 2023 (ACL workshop),
pp. 290–298 — MSE between the student's and the frozen teacher's query embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_ndim, check_pair


class EmbeddingAlignmentLoss(nn.Module):
    """MSE between student and teacher query embeddings, over batch × dimensions::

        L = 1/(B·d) · Σ_b ‖f_s(q_b) − f_t(q_b)‖²

    ``forward(student_emb, teacher_emb)``: float tensors of identical shape ``[B, d]``
    (the student's output must already be projected to the teacher's width); returns a scalar.
    """

    name = "embedding_alignment"
    kind = "embedding"
    requires_teacher = True

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        check_pair("student_emb", student_emb, "teacher_emb", teacher_emb)
        check_ndim("student_emb", student_emb, 2, "[B, d]")
        return (student_emb - teacher_emb).pow(2).mean()
