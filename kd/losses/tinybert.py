"""Simplified TinyBERT: Chen, He, Hui, Sun, Sun (2020), "Simplified TinyBERT: Knowledge Distillation for Document
Retrieval", arXiv:2009.07531 (ECIR 2021) — TinyBERT's attention and hidden-state distillation (Jiao et al. (2020),
"TinyBERT: Distilling BERT for Natural Language Understanding", Findings of EMNLP) plus the soft and hard
prediction-layer losses, trained in one step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_float, check_length, check_ndim, check_pair, check_temperature
from .standard_kd import check_logits, hard_cross_entropy, soft_cross_entropy


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean()


class SimplifiedTinyBERTLoss(nn.Module):
    """Simplified TinyBERT loss: attention + hidden-state + prediction-layer distillation, one step::

        L     = L_att + L_hid + L_soft + L_hard                       (all weights 1)
        k     = N / M                    (teacher layers N, student layers M; must divide)
        L_att = Σ_{m=1..M} MSE(A_s^m ⊙ P, A_t^{m·k} ⊙ P)
        L_hid = Σ_{m=0..M} MSE(W_h · H_s^m, H_t^{m·k})
        L_soft, L_hard as in :class:`StandardKDLoss` (mean over batch and classes, no T²)

    * ``A^m`` are the **pre-softmax** attention scores ``[B, H, L, L]`` of layer m (1-based);
      student and teacher need the same head count H.  ``P_{b,i,j} = mask_{b,i} · mask_{b,j}``
      zeroes every entry whose query *or* key position is padding, in both tensors, before the
      MSE; MSE is the mean over all elements (zeroed ones included).
    * ``H^m`` are hidden states ``[B, L, d]``; m = 0 is the embedding output, so the student
      supplies M + 1 and the teacher N + 1 of them (HF ``output_hidden_states`` layout).
    * ``W_h = self.hidden_proj``, a learned ``nn.Linear(student_hidden, teacher_hidden)``; it
      belongs to this module, so put the loss's parameters into the optimizer.

    List indexing: student layer m ↦ ``student_attentions[m-1]``, teacher ``teacher_attentions[m·k-1]``;
    hidden states ``student_hidden_states[m]`` ↦ ``teacher_hidden_states[m·k]``.

    ``forward`` returns the scalar total and stores the detached components in
    ``self.last_components = {"att", "hid", "soft", "hard"}`` (floats) for logging.
    """

    name = "simplified_tinybert"
    kind = "tinybert"
    requires_teacher = True

    def __init__(
        self,
        student_layers: int,
        teacher_layers: int,
        student_hidden: int,
        teacher_hidden: int,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        for arg, value in (
            ("student_layers", student_layers),
            ("teacher_layers", teacher_layers),
            ("student_hidden", student_hidden),
            ("teacher_hidden", teacher_hidden),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if teacher_layers % student_layers:
            raise ValueError(
                f"teacher_layers ({teacher_layers}) must be divisible by student_layers ({student_layers})"
            )
        self.student_layers = student_layers
        self.teacher_layers = teacher_layers
        self.k = teacher_layers // student_layers
        self.temperature = check_temperature(temperature)
        self.hidden_proj = nn.Linear(student_hidden, teacher_hidden)
        self.last_components: dict[str, float] = {}

    def _attention_loss(self, student_attentions, teacher_attentions, attention_mask) -> torch.Tensor:
        total = 0.0
        for m in range(1, self.student_layers + 1):
            s_name, t_name = f"student_attentions[{m - 1}]", f"teacher_attentions[{m * self.k - 1}]"
            a_s, a_t = student_attentions[m - 1], teacher_attentions[m * self.k - 1]
            for name, a in ((s_name, a_s), (t_name, a_t)):
                check_float(name, a)
                check_ndim(name, a, 4, "[B, H, L, L]")
            if a_s.shape[1] != a_t.shape[1]:
                raise ValueError(
                    f"attention head counts differ: {s_name} has {a_s.shape[1]} heads, "
                    f"{t_name} has {a_t.shape[1]}; Simplified TinyBERT needs equal head counts"
                )
            check_pair(s_name, a_s, t_name, a_t)
            B, _, L, _ = a_s.shape
            if attention_mask.shape != (B, L):
                raise ValueError(
                    f"attention_mask must have shape [B, L] = ({B}, {L}), got {tuple(attention_mask.shape)}"
                )
            keep = attention_mask.to(a_s.dtype)
            pair = keep[:, None, :, None] * keep[:, None, None, :]  # [B, 1, L, L]
            total = total + _mse(a_s * pair, a_t * pair)
        return total

    def _hidden_loss(self, student_hidden_states, teacher_hidden_states) -> torch.Tensor:
        total = 0.0
        for m in range(0, self.student_layers + 1):
            s_name, t_name = f"student_hidden_states[{m}]", f"teacher_hidden_states[{m * self.k}]"
            h_s, h_t = student_hidden_states[m], teacher_hidden_states[m * self.k]
            check_float(s_name, h_s)
            check_float(t_name, h_t)
            if h_s.shape[-1] != self.hidden_proj.in_features:
                raise ValueError(
                    f"{s_name} has width {h_s.shape[-1]}, expected student_hidden = {self.hidden_proj.in_features}"
                )
            projected = self.hidden_proj(h_s)
            # Shape only: under autocast the projection may come out in a lower precision than
            # the teacher's LayerNorm output; the subtraction promotes.
            if projected.shape != h_t.shape:
                raise ValueError(
                    f"hidden_proj({s_name}) and {t_name} must have the same shape, "
                    f"got {tuple(projected.shape)} and {tuple(h_t.shape)}"
                )
            total = total + _mse(projected, h_t)
        return total

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor,
        student_attentions: Sequence[torch.Tensor],
        teacher_attentions: Sequence[torch.Tensor],
        student_hidden_states: Sequence[torch.Tensor],
        teacher_hidden_states: Sequence[torch.Tensor],
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        M, N = self.student_layers, self.teacher_layers
        check_logits(student_logits, teacher_logits, labels)
        check_length("student_attentions", student_attentions, M)
        check_length("teacher_attentions", teacher_attentions, N)
        check_length("student_hidden_states", student_hidden_states, M + 1)
        check_length("teacher_hidden_states", teacher_hidden_states, N + 1)
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")

        att = self._attention_loss(student_attentions, teacher_attentions, attention_mask)
        hid = self._hidden_loss(student_hidden_states, teacher_hidden_states)
        soft = soft_cross_entropy(student_logits, teacher_logits, self.temperature)
        hard = hard_cross_entropy(student_logits, labels)
        self.last_components = {
            "att": float(att.detach()),
            "hid": float(hid.detach()),
            "soft": float(soft.detach()),
            "hard": float(hard.detach()),
        }
        return att + hid + soft + hard
